//! A stronger model as teacher and judge (Self-Instruct, Alpaca, Vicuna, MT-bench).
//! - [`client`]: any OpenAI-compatible endpoint, with retries and a resumable on-disk cache.
//! - [`rouge`]: ROUGE-L on tokens that work for English and Chinese alike.
//! - [`instructions`] + [`self_instruct`]: Self-Instruct's prompt, list parse, pool filters, the job.
//! - [`distill`]: a teacher's answers to a prompt set, optionally multi-turn.
//! - [`judge`]: pairwise verdicts, both orders, win/tie/loss with an interval.
//! - [`rank`]: listwise K-way rankings by a judge (RLAIF), shuffled and re-asked for consistency.
//! - [`testing`]: a scripted OpenAI-compatible server for tests.

pub mod client;
pub mod distill;
pub mod instructions;
pub mod judge;
pub mod rank;
pub mod rouge;
pub mod self_instruct;
pub mod testing;

pub use client::{ChatMessage, ChatRequest, ChatResponse, Client, ClientConfig};
pub use instructions::{FilterConfig, InstructionPool, Verdict};
pub use rouge::{rouge_l, tokens};


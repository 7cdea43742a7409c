//! A stronger model as teacher and judge (Self-Instruct, Alpaca, Vicuna). [`client`] talks to any
//! OpenAI-compatible endpoint with retries and a resumable cache; [`rouge`] measures overlap between instructions in English and Chinese alike; [`instructions`]
//! builds Self-Instruct's task-generation prompt, parses the teacher's numbered list, and filters
//! new tasks against the pool with a count per reason.

pub mod client;
pub mod instructions;
pub mod rouge;
pub mod self_instruct;
pub mod testing;

pub use client::{ChatMessage, ChatRequest, ChatResponse, Client, ClientConfig};
pub use instructions::{FilterConfig, InstructionPool, Verdict};
pub use rouge::{rouge_l, tokens};

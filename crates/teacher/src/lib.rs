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

/// Writes `text` to `path` through a temporary file and a rename, so a killed job never leaves a
/// half-written file.
pub(crate) fn write_atomic(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Unique per call: two threads may write the same path (identical requests in flight).
    static WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = std::path::PathBuf::from(format!("{}.tmp{}-{n}", path.display(), std::process::id()));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

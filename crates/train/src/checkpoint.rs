//! Atomic checkpoints: each trained module with its optimizer (a [`Checkpointed`] part, under its
//! name) plus the stage's state, written to `step-N.tmp/` and renamed to `step-N/`, so a kill during
//! a write never leaves a checkpoint that loads wrong.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::step::Checkpointed;

/// Where training stands. The data order and every random draw are pure functions of
/// (`seed`, `step`), so these two numbers are the data cursor and the RNG state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    pub seed: u64,
    /// Training examples consumed so far.
    pub examples_seen: usize,
}


/// Bytes of the files directly in `dir` (a checkpoint's size).
pub fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| entries.filter_map(|e| e.ok()?.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
}

/// `1.5 MB`, `820 kB`, `12 B`.
pub fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GB", b as f64 / 1e9),
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / 1e6),
        b if b >= 1 << 10 => format!("{:.0} kB", b as f64 / 1e3),
        b => format!("{b} B"),
    }
}

/// Where checkpoint `step` of `run` lives.
pub fn step_dir(run: &Path, step: usize) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step:08}"))
}

/// Complete checkpoints of a run, oldest first.
pub fn list_checkpoints(run: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(run.join("checkpoints")) else { return vec![] };
    let mut found: Vec<(usize, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix("step-")?.parse().ok()?; // `step-N.tmp` does not parse
            e.path().join("state.json").exists().then_some((step, e.path()))
        })
        .collect();
    found.sort();
    found
}

pub fn latest_checkpoint(run: &Path) -> Option<PathBuf> {
    list_checkpoints(run).pop().map(|(_, p)| p)
}

/// Writes checkpoint `step` of `run`: every part (a module with its optimizer, under its name)
/// into a temporary folder, then `state.json` last, then the folder is renamed into place; all but
/// the newest `keep` checkpoints are removed. Every stage saves through this (PPO with two parts).
pub fn save_checkpoint(run: &Path, step: usize, state: &impl Serialize, keep: usize, parts: &[&dyn Checkpointed]) -> Result<PathBuf> {
    let dir = step_dir(run, step);
    rlhf_files::write_dir_with(&dir, |tmp| -> Result<()> {
        for part in parts {
            part.save_into(tmp)?;
        }
        let json = serde_json::to_string_pretty(state).expect("state serialises");
        Ok(rlhf_files::write_atomic(&tmp.join("state.json"), json)?)
    })?;
    let all = list_checkpoints(run);
    for (_, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        std::fs::remove_dir_all(old).map_err(|e| TrainError::io(old, e))?;
    }
    Ok(dir)
}

/// Loads a checkpoint written by [`save_checkpoint`] into `parts` (built the same way as when it was
/// saved) and returns its state.
pub fn load_checkpoint<S: DeserializeOwned>(dir: &Path, parts: &mut [&mut dyn Checkpointed]) -> Result<S> {
    for part in parts.iter_mut() {
        part.load_from(dir)?;
    }
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint { path, message: e.to_string() })
}

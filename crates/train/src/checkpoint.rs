//! Atomic checkpoints: model + optimizer records + training state, written to `step-N.tmp/` and
//! renamed to `step-N/`, so a kill during a write never leaves a checkpoint that loads wrong.

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

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

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = rlhf_model::hf::sibling(path, "tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::new()
}

fn step_dir(run: &Path, step: usize) -> PathBuf {
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

/// Writes checkpoint `step` of `run`: `write` fills a temporary folder (models, optimizer states),
/// `state.json` is added last, and the folder is renamed into place; all but the newest `keep`
/// checkpoints are then removed. Stages with several models (PPO) call this directly.
pub fn save_checkpoint_with(run: &Path, step: usize, state_json: &str, keep: usize, write: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let dir = step_dir(run, step);
    let tmp = rlhf_model::hf::sibling(&dir, "tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    write(&tmp)?;
    write_atomic(&tmp.join("state.json"), state_json.as_bytes())?;
    rlhf_model::hf::replace_dir(&tmp, &dir)?;
    let all = list_checkpoints(run);
    for (_, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        std::fs::remove_dir_all(old).map_err(|e| TrainError::io(old, e))?;
    }
    Ok(dir)
}

/// Records a module and its optimizer as `DIR/<name>.mpk` and `DIR/<name>_optim.mpk`.
pub fn record_trainable<B, M, O>(dir: &Path, name: &str, model: &M, optim: &O) -> Result<()>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    let ck = |e: burn::record::RecorderError| TrainError::Checkpoint { path: dir.to_path_buf(), message: e.to_string() };
    Recorder::<B>::record(&recorder(), model.clone().into_record(), dir.join(name)).map_err(ck)?;
    Recorder::<B>::record(&recorder(), optim.to_record(), dir.join(format!("{name}_optim"))).map_err(ck)
}

/// Loads what [`record_trainable`] wrote into `model` and `optim` (built the same way as when saved).
pub fn load_trainable<B, M, O>(dir: &Path, name: &str, model: M, optim: O, device: &B::Device) -> Result<(M, O)>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    let ck = |e: burn::record::RecorderError| TrainError::Checkpoint { path: dir.to_path_buf(), message: e.to_string() };
    let model = model.load_record(Recorder::<B>::load(&recorder(), dir.join(name), device).map_err(ck)?);
    let optim = optim.load_record(Recorder::<B>::load(&recorder(), dir.join(format!("{name}_optim")), device).map_err(ck)?);
    Ok((model, optim))
}

/// Reads a checkpoint's `state.json`.
pub fn load_state<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<T> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint { path, message: e.to_string() })
}

/// Saves a single-model checkpoint and removes all but the newest `keep`.
pub fn save_checkpoint<B, M, O>(run: &Path, state: &TrainState, model: &M, optim: &O, keep: usize) -> Result<PathBuf>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    let json = serde_json::to_string_pretty(state).expect("state serialises");
    save_checkpoint_with(run, state.step, &json, keep, |tmp| record_trainable(tmp, "model", model, optim))
}

/// Loads a single-model checkpoint into `model` and `optim` (built the same way as when it was saved).
pub fn load_checkpoint<B, M, O>(dir: &Path, model: M, optim: O, device: &B::Device) -> Result<(M, O, TrainState)>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    let (model, optim) = load_trainable(dir, "model", model, optim, device)?;
    Ok((model, optim, load_state(dir)?))
}

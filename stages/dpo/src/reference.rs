//! The frozen reference: which model it is, and its log-probabilities computed once before
//! training and kept in `OUT/reference_logps.json`, reused by `--resume` and by a rerun into the
//! same folder when neither the reference model nor the data changed.
//!
//! The key is a CRC-64 of what the numbers are a function of: every sequence the loss reads (its
//! token ids and where its response starts, train and eval, in order), the reference model (its
//! folder's canonical path and each file's name, size and modification time — the weights are not
//! hashed, which for a 7B model would take longer than the pass), whether it is a LoRA base, and
//! the precision it ran in.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::objective::Example;

pub const REFERENCE_LOGPS_FILE: &str = "reference_logps.json";

/// Which model the reference is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferenceSource {
    /// The policy as it starts: the starting model itself (full training), or with LoRA its frozen
    /// base with the adapters off — the same weights, never loaded twice.
    StartingPolicy,
    /// Another folder (`model.reference`).
    Folder(PathBuf),
}

/// The stored pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceCache {
    pub key: String,
    /// Σ log π_ref of each sequence of each example (its K responses, then KTO's mismatched one).
    pub train: Vec<Vec<f32>>,
    pub eval: Vec<Vec<f32>>,
}

/// `name:size:mtime` of every file of `dir`, sorted, after its canonical path.
fn folder_identity(dir: &Path) -> anyhow::Result<String> {
    let canonical = dir.canonicalize().with_context(|| format!("reading {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&canonical).with_context(|| format!("reading {}", canonical.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() {
            let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
            files.push(format!("{}:{}:{modified}", entry.file_name().to_string_lossy(), meta.len()));
        }
    }
    files.sort();
    Ok(format!("{}|{}", canonical.display(), files.join("|")))
}

/// The key of a reference pass over `train` and `eval` with the model in `model_dir`.
pub fn cache_key(model_dir: &Path, lora_base: bool, precision: rlhf_runtime::Precision, train: &[Example], eval: &[Example]) -> anyhow::Result<String> {
    const CRC: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_ECMA_182);
    let mut digest = CRC.digest();
    digest.update(b"rlhf-dpo reference log-probs v1\0");
    digest.update(folder_identity(model_dir)?.as_bytes());
    digest.update(format!("|lora base {lora_base}|{precision}|").as_bytes());
    for (split, examples) in [("train", train), ("eval", eval)] {
        digest.update(split.as_bytes());
        digest.update(&(examples.len() as u64).to_le_bytes());
        for e in examples {
            digest.update(&(e.ranking.prompt_len as u64).to_le_bytes());
            for seq in e.sequences() {
                digest.update(&(seq.len() as u64).to_le_bytes());
                for t in seq {
                    digest.update(&t.to_le_bytes());
                }
            }
        }
    }
    Ok(format!("{:016x}", digest.finalize()))
}

/// The stored pass in `out` when its key is `key`.
pub fn load_cache(out: &Path, key: &str) -> anyhow::Result<Option<ReferenceCache>> {
    let path = out.join(REFERENCE_LOGPS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    match serde_json::from_str::<ReferenceCache>(&text) {
        Ok(cache) if cache.key == key => Ok(Some(cache)),
        Ok(_) => {
            eprintln!("dpo: {} is for another model or data; computing the reference log-probs again", path.display());
            Ok(None)
        }
        Err(e) => {
            eprintln!("dpo: {} is not a reference pass ({e}); computing it again", path.display());
            Ok(None)
        }
    }
}

pub fn save_cache(out: &Path, cache: &ReferenceCache) -> anyhow::Result<()> {
    // Every rank computed the same pass; rank 0 keeps it.
    if !rlhf_dist::world().is_writer() {
        return Ok(());
    }
    Ok(rlhf_files::write_atomic(&out.join(REFERENCE_LOGPS_FILE), serde_json::to_string(cache)?.as_bytes())?)
}

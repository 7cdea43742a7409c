//! The `[data]` section the training stages share: which files, how to read them, how long sequences
//! may be, and how the held-out split is made.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::batch::train_eval_split;
use crate::encode::BuiltinTemplate;
use crate::formats::{Format, Kind};
use crate::prepare::PrepareOptions;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataFiles {
    /// Training records, in any supported format of the stage's kind.
    pub train: PathBuf,
    /// A separate held-out file; otherwise `eval_fraction` of `train` is held out.
    #[serde(default)]
    pub eval: Option<PathBuf>,
    #[serde(default = "default_eval_fraction")]
    pub eval_fraction: f64,
    #[serde(default)]
    pub format: Format,
    /// Skip malformed records (reported with their lines) instead of stopping at the first.
    #[serde(default)]
    pub skip_invalid: bool,
    /// Tokens per sequence (longer samples are truncated; pretraining text is packed to this length).
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// A built-in chat template, for tokenizers without one.
    #[serde(default)]
    pub template: Option<BuiltinTemplate>,
}

fn default_eval_fraction() -> f64 {
    0.05
}
fn default_max_len() -> usize {
    512
}

impl DataFiles {
    /// How `prepare` reads this section's files as `kind` records.
    pub fn prepare_options(&self, kind: Kind) -> PrepareOptions {
        PrepareOptions { kind, format: self.format, skip_invalid: self.skip_invalid, max_len: self.max_len }
    }

    /// Train and eval examples: `eval` read with `read` when a file is named, otherwise a seeded
    /// `eval_fraction` of `train` (so the split is the same on every run with this seed).
    pub fn split<T, E>(&self, train: Vec<T>, seed: u64, read: impl FnOnce(&Path) -> Result<Vec<T>, E>) -> Result<(Vec<T>, Vec<T>), E> {
        if let Some(path) = &self.eval {
            return Ok((train, read(path)?));
        }
        let (tr, ev) = train_eval_split(train.len(), self.eval_fraction, seed);
        let mut all: Vec<Option<T>> = train.into_iter().map(Some).collect();
        let mut take = |idx: &[usize]| idx.iter().filter_map(|&i| all[i].take()).collect::<Vec<T>>();
        let eval = take(&ev);
        Ok((take(&tr), eval))
    }
}

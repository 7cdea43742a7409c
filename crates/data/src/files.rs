//! The `[data]` section the training stages share: which files, how to read them, how long sequences
//! may be, and how the held-out split is made.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::batch::train_eval_split;
use crate::encode::{BuiltinTemplate, ChatFormat};
use crate::error::DataError;
use crate::formats::{Format, Kind};
use crate::prepare::{prepare, Example, PrepareOptions};
use crate::tokenizer::Tokenizer;

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

    /// The train and held-out examples of `kind`, split as [`split`](Self::split) splits them, each
    /// file's summary printed, sequences cut to `max_len` but never past `context` (the model's
    /// positions). Also returns the length they were cut to.
    pub fn prepare_split<T: Example>(&self, kind: Kind, context: usize, seed: u64, tok: &Tokenizer, fmt: &ChatFormat) -> Result<(Vec<T>, Vec<T>, usize), DataError> {
        let max_len = self.max_len.min(context);
        let opts = PrepareOptions { max_len, ..self.prepare_options(kind) };
        let read = |path: &Path| -> Result<Vec<T>, DataError> {
            let prepared = prepare::<T>(path, &opts, tok, fmt)?;
            eprintln!("{}", prepared.summary(max_len));
            Ok(prepared.examples)
        };
        let (train, eval) = self.split(read(&self.train)?, seed, read)?;
        Ok((train, eval, max_len))
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

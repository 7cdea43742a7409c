//! Errors of the training machinery.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A config file or `--set` override is invalid; the message names the key.
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    /// A loss or gradient norm went NaN/inf: training stops before the step (the module is left
    /// as it was), and the last good checkpoint is kept.
    #[error("{module}: {what} is {value} at step {step}; stopped. Last good checkpoint: {last_checkpoint}")]
    NonFinite { module: &'static str, what: &'static str, value: f64, step: usize, last_checkpoint: String },
    #[error(transparent)]
    Model(#[from] rlhf_model::ModelError),
    #[error(transparent)]
    Data(#[from] rlhf_data::DataError),
    #[error("{0}")]
    Other(String),
}

impl From<rlhf_files::FileError> for TrainError {
    fn from(e: rlhf_files::FileError) -> Self {
        TrainError::Io { path: e.path, cause: e.cause }
    }
}

impl TrainError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io { path: path.into(), cause: source }
    }
}

pub type Result<T> = std::result::Result<T, TrainError>;

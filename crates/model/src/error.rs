//! Errors of the model crate: every variant names the file or tensor at fault.

use std::path::PathBuf;

/// Anything that can go wrong loading, running or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// `config.json` (or the index of a sharded checkpoint) is not what we expect.
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    /// The checkpoint is for an architecture we do not implement.
    #[error("{path}: unsupported architecture {found:?} (supported: llama, mistral, qwen2, gpt2)")]
    UnsupportedArchitecture { path: PathBuf, found: String },
    /// A safetensors file is malformed (bad header, offsets past the end, unknown dtype…).
    #[error("{path}: invalid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    /// A tensor the architecture needs is absent from the checkpoint.
    #[error("missing tensor {name:?} (expected shape {expected:?})")]
    MissingTensor { name: String, expected: Vec<usize> },
    /// A tensor is present with the wrong shape.
    #[error("tensor {name:?}: expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// The checkpoint holds tensors the architecture has no place for.
    #[error("unexpected tensor(s) in checkpoint: {names:?}")]
    UnexpectedTensors { names: Vec<String> },
    /// Caller error: inputs with inconsistent shapes, a full KV cache, ids out of range…
    #[error("{0}")]
    Invalid(String),
}

impl From<rlhf_files::FileError> for ModelError {
    fn from(e: rlhf_files::FileError) -> Self {
        ModelError::Io { path: e.path, cause: e.cause }
    }
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io { path: path.into(), cause: source }
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;

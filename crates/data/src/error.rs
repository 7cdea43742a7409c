//! Errors of the data crate. Record errors carry file, line and field, so a message reads
//! `data.jsonl:17: messages[2].role: expected "user" or "assistant"`.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// `tokenizer.json` / `tokenizer_config.json` missing or unreadable, or encoding failed.
    #[error("{path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    /// A bad record: `FILE:LINE: field: what was expected`.
    #[error("{path}:{line}: {message}")]
    Record { path: PathBuf, line: usize, message: String },
    /// A chat template failed to parse or render.
    #[error("{message}")]
    Template { message: String },
}

impl From<rlhf_files::FileError> for DataError {
    fn from(e: rlhf_files::FileError) -> Self {
        DataError::Io { path: e.path, cause: e.cause }
    }
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io { path: path.into(), cause: source }
    }
}

pub type Result<T> = std::result::Result<T, DataError>;

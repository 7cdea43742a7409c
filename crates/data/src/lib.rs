//! The data layer: tokenizer and chat templates, and the record formats users bring.

pub mod batch;
pub mod bpe;
pub mod demo;
pub mod encode;
pub mod error;
pub mod files;
pub mod formats;
pub mod prepare;
pub mod reader;
pub mod tokenizer;
pub mod word_problems;

pub use error::{DataError, Result};
pub use tokenizer::{last_user_text, Message, Tokenizer};
pub use formats::{load, Format, Kind, LoadOptions, Loaded, Ranking, Record, SkipReport};
pub use encode::{BuiltinTemplate, ChatFormat, Encoded};
pub use files::DataFiles;
pub use prepare::{prepare, Example, PrepareOptions, Prepared, Prompt};

//! The data layer: tokenizer and chat templates, and the record formats users bring.

pub mod error;
pub mod tokenizer;

pub use error::{DataError, Result};
pub use tokenizer::{Message, Tokenizer};

//! Integration tests, one module per feature (ripgrep's layout).

mod cli;
mod common;
mod data;
#[cfg(feature = "cuda")]
mod cuda;
mod model;
mod pipeline;
mod ppo;
mod reward;
mod sft;

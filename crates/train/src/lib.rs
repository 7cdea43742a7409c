//! The training machinery every stage shares, written once: TOML config with overrides, the LR
//! schedule, AdamW with global-norm clipping and averaged accumulation, atomic checkpoints and
//! resume, metrics (JSONL + TensorBoard), and the one training loop.

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod error;
pub mod metrics;
pub mod ops;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use error::{Result, TrainError};
pub use trainer::{train, Objective, TrainConfig};

//! The training machinery every stage shares, written once: TOML config with overrides, the LR
//! schedule, the one update path ([`Trainable`]: averaged accumulation, non-finite check,
//! global-norm clipping, AdamW), batches as tensors and the losses on them, atomic checkpoints and
//! resume, metrics (JSONL + TensorBoard), and the one training loop.

pub mod batch;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data_parallel;
pub mod error;
pub mod memory;
pub mod metrics;
pub mod optim;
pub mod schedule;
pub mod step;
pub mod trainer;

pub use error::{Result, TrainError};
pub use step::{Checkpointed, StepReport, Trainable};
pub use trainer::{train, Objective, TrainConfig};
/// The runtime layer, re-exported for the stage binaries' `main` (see [`stage_binary!`]).
pub use rlhf_runtime as runtime;

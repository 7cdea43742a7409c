//! Integration tests, one module per feature (ripgrep's layout).

mod checkpointing;
mod cli;
mod common;
mod data;
#[cfg(feature = "mpi")]
mod distributed;
mod dpo;
mod docs;
mod grpo;
mod layout;
mod lora;
mod memory;
#[cfg(feature = "cuda")]
mod cuda;
mod model;
mod pipeline;
mod ppo;
mod precision;
mod quant;
mod reward;
mod serve;
mod sft;
mod teacher;
mod vote;

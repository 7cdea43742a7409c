//! One decoder for every stage: LLaMA-family and GPT-2 transformers on burn, generic over the
//! backend, loaded from and saved to Hugging Face folders, with batched KV-cache generation.
//!
//! The body ([`Transformer`]) returns hidden states; [`CausalLm`] adds the unembedding and
//! [`RewardModel`] a scalar head.

pub mod adapters;
pub mod cache;
pub mod config;
pub mod error;
pub mod generate;
pub mod heads;
pub mod hf;
pub mod lora;
pub mod ops;
pub mod peft;
pub mod precision;
pub mod proj;
pub mod reward_info;
pub mod rope;
pub mod sampling;
pub mod setup;
pub mod transformer;

pub use cache::KvCache;
pub use config::{Arch, HfConfig, TransformerConfig};
pub use error::{ModelError, Result};
pub use generate::{generate, generate_n, generate_rows, GenerateConfig, Generation, GenerationBatch, Progress, RowSampling, RowsConfig};
pub use heads::{at_last_token, CausalLm, RewardModel, ScalarHead};
pub use hf::WeightDtype;
pub use adapters::Adapted;
pub use lora::{LoraConfig, LoraSpec};
pub use reward_info::RewardInfo;
pub use sampling::Sampler;
pub use setup::{export, Export, StageModel, TrainingSetup};
pub use transformer::Transformer;

/// The backend unit tests run on.
#[cfg(test)]
pub type TestBackend = burn::backend::Flex<f32>;

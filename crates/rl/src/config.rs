//! The config sections every stage-3 trainer shares: the prompt data and the sampling settings.

use std::path::PathBuf;

use anyhow::bail;
use rlhf_data::{prepare, BuiltinTemplate, ChatFormat, Format, Kind, PrepareOptions, Prompt, Tokenizer};
use rlhf_model::Sampler;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptData {
    /// Prompts (`prompt`, `instruction`, `messages` or `question` records: InstructionWild,
    /// ColossalChat, GSM8K…); every field of a record reaches the rewards (`answer`, `tests`…).
    pub prompts: PathBuf,
    #[serde(default)]
    pub format: Format,
    /// Skip malformed records (counted and reported with their lines).
    #[serde(default)]
    pub skip_invalid: bool,
    /// Prompts longer than this (in tokens, after the chat template) are dropped.
    #[serde(default = "default_prompt_len")]
    pub max_prompt_len: usize,
    #[serde(default)]
    pub template: Option<BuiltinTemplate>,
}

impl PromptData {
    /// The prompts, encoded through the chat template; refuses a prompt budget plus `max_new_tokens`
    /// beyond the `model`'s `positions`, and a file with no prompts left.
    pub fn load(&self, tok: &Tokenizer, fmt: &ChatFormat, max_new_tokens: usize, positions: usize, model: &str) -> anyhow::Result<Vec<Prompt>> {
        if self.max_prompt_len + max_new_tokens > positions {
            bail!("data.max_prompt_len ({}) + generate.max_new_tokens ({max_new_tokens}) exceeds the {model}'s {positions} positions", self.max_prompt_len);
        }
        let opts = PrepareOptions { kind: Kind::Prompt, format: self.format, skip_invalid: self.skip_invalid, max_len: self.max_prompt_len };
        let prepared = prepare::<Prompt>(&self.prompts, &opts, tok, fmt)?;
        eprintln!("{}", prepared.summary(self.max_prompt_len));
        if prepared.examples.is_empty() {
            bail!("{}: no prompts to train on", self.prompts.display());
        }
        Ok(prepared.examples)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    #[serde(default = "one_f")]
    pub temperature: f64,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Responses generated together (default: the whole rollout batch; with `n` samples per prompt,
    /// rounded down to whole groups, at least one). Smaller batches bound the KV cache's memory;
    /// each stops as soon as its own rows have.
    #[serde(default)]
    pub batch_size: Option<usize>,
}

impl GenerationConfig {
    pub fn sampler(&self) -> Sampler {
        Sampler::Sample { temperature: self.temperature, top_k: self.top_k, top_p: self.top_p }
    }

    /// Checks that need no model.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_new_tokens == 0 {
            bail!("generate.max_new_tokens must be at least 1");
        }
        if self.batch_size == Some(0) {
            bail!("generate.batch_size must be at least 1");
        }
        if self.temperature.is_nan() || self.temperature <= 0.0 {
            bail!("generate.temperature must be > 0");
        }
        Ok(())
    }
}

fn default_prompt_len() -> usize {
    256
}
fn one_f() -> f64 {
    1.0
}

//! The PPO stage's TOML config.

use std::path::PathBuf;

use anyhow::bail;
use rlhf_data::Format;
use rlhf_model::LoraConfig;
pub use rlhf_rl::config::{GenerationConfig, PromptData};
use rlhf_train::optim::OptimConfig;
use rlhf_train::schedule::LrSchedule;
use serde::{Deserialize, Serialize};

use crate::objective::{KlEstimator, PtxMode};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PpoConfig {
    #[serde(default)]
    pub seed: u64,
    /// "f32", or "bf16": mixed precision for the actor and critic (f32 masters, bf16 matmuls); the
    /// frozen reference and reward model, and generation, fully in bf16.
    #[serde(default)]
    pub precision: rlhf_runtime::Precision,
    /// Dtype of the exported actor in `final/`: "float32", "bfloat16" or "float16". By default the
    /// dtype of the model it starts from (the actor's folder). Checkpoints stay f32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_dtype: Option<rlhf_model::WeightDtype>,
    pub model: PpoModels,
    pub data: PromptData,
    /// The pretraining mix (PPO-ptx); without it, plain PPO.
    #[serde(default)]
    pub ptx: Option<PtxConfig>,
    pub generate: GenerationConfig,
    pub ppo: PpoTrainConfig,
    /// Reward sources beside the reward model (`[[rewards]]`, as rlhf-grpo reads them: verifiers,
    /// a user's program, another reward model): each response's final-token score is the reward
    /// model's (normalised, clipped) plus Σ weight · score of the sources that apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rewards: Vec<rlhf_rl::RewardSpec>,
}

/// The four models. `reference` defaults to `actor` and `critic` to `reward_model`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PpoModels {
    /// The SFT model (`final/` of stage 1): the policy that is trained.
    pub actor: PathBuf,
    /// The frozen policy the KL penalty is measured against (default: `actor`).
    #[serde(default)]
    pub reference: Option<PathBuf>,
    /// The frozen reward model (`final/` of stage 2).
    pub reward_model: PathBuf,
    /// The value model's starting point (default: `reward_model`).
    #[serde(default)]
    pub critic: Option<PathBuf>,
}

/// What the pretraining loss is computed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PtxKind {
    /// Plain text (`text` records), every token a target.
    #[default]
    Pretrain,
    /// Conversations (SFT records), assistant tokens only — ColossalChat's `ptx_dataset`.
    Sft,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PtxConfig {
    pub data: PathBuf,
    #[serde(default)]
    pub kind: PtxKind,
    #[serde(default)]
    pub format: Format,
    #[serde(default)]
    pub skip_invalid: bool,
    /// γ (accumulate) or c (convex).
    pub coef: f64,
    #[serde(default)]
    pub mode: PtxMode,
    /// Pretraining sequences per actor step.
    pub batch_size: usize,
    #[serde(default = "default_ptx_len")]
    pub max_len: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PpoTrainConfig {
    pub iterations: usize,
    /// Recompute each decoder block of the actor and critic in backward instead of keeping its
    /// activations.
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// Prompts sampled (one response each) per iteration.
    pub rollout_batch_size: usize,
    /// Responses per optimizer step.
    pub minibatch_size: usize,
    /// Responses per forward/backward (gradients of a minibatch's micro-batches are summed).
    pub micro_batch_size: usize,
    #[serde(default = "one")]
    pub ppo_epochs: usize,
    pub actor_lr: f64,
    pub critic_lr: f64,
    #[serde(default)]
    pub warmup_updates: usize,
    /// LR floor as a fraction of the peak at the last update (1.0: constant after warmup).
    #[serde(default = "one_f")]
    pub min_lr_ratio: f64,
    #[serde(default)]
    pub optim: OptimConfig,
    /// β: weight of the per-token KL penalty.
    pub kl_coef: f64,
    #[serde(default)]
    pub kl_estimator: KlEstimator,
    /// Adaptive KL controller: the KL per response to steer β towards (off when absent).
    #[serde(default)]
    pub target_kl: Option<f64>,
    #[serde(default = "default_horizon")]
    pub kl_horizon: f64,
    #[serde(default = "one_f")]
    pub gamma: f64,
    #[serde(default = "default_lam")]
    pub lam: f64,
    #[serde(default = "default_clip")]
    pub clip_eps: f64,
    /// ε_v of the clipped value loss (0: unclipped).
    #[serde(default = "default_clip")]
    pub value_clip: f64,
    #[serde(default)]
    pub entropy_coef: f64,
    #[serde(default = "yes")]
    pub whiten_advantages: bool,
    /// Divide RM scores by the reference std in the RM's `reward.json`.
    #[serde(default = "yes")]
    pub normalize_score: bool,
    /// Clip (normalised) RM scores to ±this (0: no clipping).
    #[serde(default = "default_score_clip")]
    pub score_clip: f64,
    #[serde(default = "one")]
    pub log_every: usize,
    /// Checkpoint every N iterations (0: only at the end).
    #[serde(default)]
    pub save_every: usize,
    #[serde(default = "two")]
    pub keep_checkpoints: usize,
    /// Write prompt/response samples to `samples.jsonl` every N iterations (0: never).
    #[serde(default = "ten")]
    pub sample_every: usize,
    #[serde(default = "three")]
    pub samples_per_log: usize,
    /// Stop after this iteration as if interrupted (time-boxed runs; resume tests).
    #[serde(default)]
    pub halt_after: Option<usize>,
    /// LoRA adapters on the actor. The reference is then the actor's own frozen base with the
    /// adapters off (one base in memory for both).
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// LoRA adapters on the critic (its scalar head trains in full). When the critic starts from the
    /// reward model, the reward model is the critic's frozen base with its original head.
    #[serde(default)]
    pub critic_lora: Option<LoraConfig>,
}

impl PpoTrainConfig {
    pub fn actor_schedule(&self) -> LrSchedule {
        LrSchedule { lr: self.actor_lr, warmup_steps: self.warmup_updates, min_lr_ratio: self.min_lr_ratio }
    }
    pub fn critic_schedule(&self) -> LrSchedule {
        LrSchedule { lr: self.critic_lr, warmup_steps: self.warmup_updates, min_lr_ratio: self.min_lr_ratio }
    }
}

fn default_ptx_len() -> usize {
    512
}
fn default_horizon() -> f64 {
    10_000.0
}
fn default_lam() -> f64 {
    0.95
}
fn default_clip() -> f64 {
    0.2
}
fn default_score_clip() -> f64 {
    5.0
}
fn one() -> usize {
    1
}
fn two() -> usize {
    2
}
fn three() -> usize {
    3
}
fn ten() -> usize {
    10
}
fn one_f() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}

impl PpoConfig {
    /// Checks that need no data or models.
    pub fn validate(&self) -> anyhow::Result<()> {
        let p = &self.ppo;
        let positive = [
            ("ppo.iterations", p.iterations),
            ("ppo.rollout_batch_size", p.rollout_batch_size),
            ("ppo.minibatch_size", p.minibatch_size),
            ("ppo.micro_batch_size", p.micro_batch_size),
            ("ppo.ppo_epochs", p.ppo_epochs),
            ("ppo.log_every", p.log_every),
            ("generate.max_new_tokens", self.generate.max_new_tokens),
        ];
        for (name, v) in positive {
            if v == 0 {
                bail!("{name} must be at least 1");
            }
        }
        for (name, lr) in [("ppo.actor_lr", p.actor_lr), ("ppo.critic_lr", p.critic_lr)] {
            if !(lr > 0.0 && lr.is_finite()) {
                bail!("{name} must be a positive number, found {lr}");
            }
        }
        self.generate.validate()?;
        rlhf_rl::rewards::validate(&self.rewards, "rewards")?;
        if p.kl_coef < 0.0 || !(0.0..=1.0).contains(&p.gamma) || !(0.0..=1.0).contains(&p.lam) || p.clip_eps <= 0.0 {
            bail!("ppo: kl_coef ≥ 0, gamma and lam in [0, 1], clip_eps > 0 are required");
        }
        if p.target_kl.is_some_and(|t| t <= 0.0) || p.kl_horizon <= 0.0 {
            bail!("ppo.target_kl and ppo.kl_horizon must be positive");
        }
        if let Some(x) = &self.ptx {
            if x.coef < 0.0 || (x.mode == PtxMode::Convex && x.coef > 1.0) {
                bail!("ptx.coef must be ≥ 0 (and ≤ 1 with mode = \"convex\")");
            }
            if x.batch_size == 0 {
                bail!("ptx.batch_size must be at least 1");
            }
        }
        Ok(())
    }
}

impl rlhf_train::cli::StageConfig for PpoConfig {
    fn precision(&self) -> rlhf_runtime::Precision {
        self.precision
    }
}

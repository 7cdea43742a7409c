//! The critic-free stage's TOML config.

use std::path::PathBuf;

use anyhow::bail;
use rlhf_model::LoraConfig;
use rlhf_rl::{GenerationConfig, KlEstimator, LossAggregation, PromptData, RewardSpec, ScaleRewards};
use rlhf_train::optim::OptimConfig;
use rlhf_train::schedule::LrSchedule;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpoConfig {
    #[serde(default)]
    pub seed: u64,
    /// "f32", or "bf16": mixed precision for the policy (f32 masters, bf16 matmuls); the frozen
    /// reference, reward models and generation fully in bf16.
    #[serde(default)]
    pub precision: rlhf_runtime::Precision,
    /// Dtype of the exported policy in `final/` (default: the dtype of the model it starts from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_dtype: Option<rlhf_model::WeightDtype>,
    pub model: GrpoModels,
    pub data: PromptData,
    pub generate: GenerationConfig,
    pub grpo: GrpoTrainConfig,
    /// The reward sources, combined with their weights (at least one).
    pub rewards: Vec<RewardSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpoModels {
    /// The model trained (SFT's `final/`, or any Hugging Face causal LM folder).
    pub policy: PathBuf,
    /// The frozen model the KL term is measured against (default: `policy`; with LoRA, the policy's
    /// own base with the adapters off). Not loaded when `kl_coef` = 0 or `kl = "none"`.
    #[serde(default)]
    pub reference: Option<PathBuf>,
}

/// How a response's advantage is made from the rewards of its group (the `n` responses to its
/// prompt). Module docs of `rlhf_rl::advantages` work each one by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Estimator {
    /// (r − mean_group) / (std_group + 1e-6), std unbiased; `scale_rewards` picks the std.
    #[default]
    Grpo,
    /// r − mean_group, no std; with the constant normaliser of Dr. GRPO (`seq_mean_token_sum_norm`)
    /// as its default aggregation.
    DrGrpo,
    /// r − mean of the group's other rewards.
    Rloo,
    /// REINFORCE++: per-token reward (score on the last token − β·k1 per token), returns to go,
    /// whitened over the whole batch.
    ReinforcePp,
    /// REINFORCE++ with the group mean subtracted from the score first.
    ReinforcePpBaseline,
    /// ReMax: r − the reward of one greedy response to the same prompt.
    Remax,
}

/// Where the KL to the reference goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlPlacement {
    /// Nowhere: no reference model is loaded.
    None,
    /// A loss term β·kl_t per token (GRPO; `kl_estimator` k1, k2 or k3).
    #[default]
    Loss,
    /// −β·k1 in the reward: per token for REINFORCE++, summed over the response for the
    /// sequence-level estimators.
    Reward,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpoTrainConfig {
    pub iterations: usize,
    /// Prompts per iteration (each answered `samples_per_prompt` times).
    pub prompts_per_iteration: usize,
    /// n: responses per prompt (a group; at least 2 for the group estimators).
    pub samples_per_prompt: usize,
    /// Responses per optimizer step (default: the whole rollout, one step per iteration).
    #[serde(default)]
    pub minibatch_size: Option<usize>,
    /// Responses per forward/backward (gradients of a minibatch's micro-batches are summed).
    pub micro_batch_size: usize,
    /// μ: passes over each rollout (old log-probs are computed once when μ > 1 or there are several
    /// minibatches; otherwise the ratio is 1 and π_old is the policy itself, detached).
    #[serde(default = "one")]
    pub epochs: usize,
    pub lr: f64,
    #[serde(default)]
    pub warmup_updates: usize,
    /// LR floor as a fraction of the peak at the last update (1.0: constant after warmup).
    #[serde(default = "one_f")]
    pub min_lr_ratio: f64,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub estimator: Estimator,
    /// GRPO's std: per group (default), over the batch, or none.
    #[serde(default)]
    pub scale_rewards: ScaleRewards,
    /// Default: `seq_mean_token_sum_norm` for Dr. GRPO, `token_mean` otherwise.
    #[serde(default)]
    pub loss_aggregation: Option<LossAggregation>,
    #[serde(default = "default_clip")]
    pub clip_eps_low: f64,
    /// DAPO's clip-higher raises this above `clip_eps_low` (e.g. 0.28).
    #[serde(default = "default_clip")]
    pub clip_eps_high: f64,
    /// c > 1: negative-advantage tokens' objective is bounded below by c·A (dual clip).
    #[serde(default)]
    pub dual_clip: Option<f64>,
    /// β.
    #[serde(default)]
    pub kl_coef: f64,
    #[serde(default)]
    pub kl: KlPlacement,
    /// The estimator of the loss placement (default k3, as GRPO; its gradient is biased —
    /// docs/grpo.md). The reward placement always uses k1 (the unbiased value).
    #[serde(default = "k3")]
    pub kl_estimator: KlEstimator,
    /// Weight the loss-placed KL by the (detached) ratio π/π_old, which makes k3's gradient the
    /// one of the KL at the sampling policy's tokens under π.
    #[serde(default)]
    pub kl_importance_weighted: bool,
    #[serde(default)]
    pub entropy_coef: f64,
    /// DAPO's dynamic sampling: drop groups whose rewards are all equal (no signal) and sample more
    /// prompts until the batch has `prompts_per_iteration` groups, at most `max_sampling_rounds`
    /// rounds.
    #[serde(default)]
    pub dynamic_sampling: bool,
    #[serde(default = "three")]
    pub max_sampling_rounds: usize,
    /// Leave responses cut off by `generate.max_new_tokens` out of the loss (DAPO's overlong
    /// filtering); their rewards still count in their group's baseline.
    #[serde(default)]
    pub mask_truncated: bool,
    #[serde(default)]
    pub gradient_checkpointing: bool,
    #[serde(default)]
    pub lora: Option<LoraConfig>,
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
    #[serde(default = "four")]
    pub samples_per_log: usize,
    /// Stop after this iteration as if interrupted (time-boxed runs; resume tests).
    #[serde(default)]
    pub halt_after: Option<usize>,
}

impl GrpoTrainConfig {
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule { lr: self.lr, warmup_steps: self.warmup_updates, min_lr_ratio: self.min_lr_ratio }
    }

    pub fn aggregation(&self) -> LossAggregation {
        self.loss_aggregation.unwrap_or(match self.estimator {
            Estimator::DrGrpo => LossAggregation::SeqMeanTokenSumNorm,
            _ => LossAggregation::TokenMean,
        })
    }

    /// Whether the reference model is needed at all.
    pub fn uses_reference(&self) -> bool {
        self.kl != KlPlacement::None && self.kl_coef > 0.0
    }

    /// Responses sampled per round.
    pub fn rollout_rows(&self) -> usize {
        self.prompts_per_iteration * self.samples_per_prompt
    }

    pub fn minibatch(&self) -> usize {
        self.minibatch_size.unwrap_or(self.rollout_rows())
    }
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
fn four() -> usize {
    4
}
fn ten() -> usize {
    10
}
fn one_f() -> f64 {
    1.0
}
fn default_clip() -> f64 {
    0.2
}
fn k3() -> KlEstimator {
    KlEstimator::K3
}

impl GrpoConfig {
    /// Checks that need no data or models.
    pub fn validate(&self) -> anyhow::Result<()> {
        let g = &self.grpo;
        let positive = [
            ("grpo.iterations", g.iterations),
            ("grpo.prompts_per_iteration", g.prompts_per_iteration),
            ("grpo.samples_per_prompt", g.samples_per_prompt),
            ("grpo.micro_batch_size", g.micro_batch_size),
            ("grpo.epochs", g.epochs),
            ("grpo.log_every", g.log_every),
            ("grpo.max_sampling_rounds", g.max_sampling_rounds),
            ("grpo.minibatch_size", g.minibatch()),
        ];
        for (name, v) in positive {
            if v == 0 {
                bail!("{name} must be at least 1");
            }
        }
        self.generate.validate()?;
        if !(g.lr > 0.0 && g.lr.is_finite()) {
            bail!("grpo.lr must be a positive number, found {}", g.lr);
        }
        let group = matches!(g.estimator, Estimator::Grpo | Estimator::DrGrpo | Estimator::Rloo | Estimator::ReinforcePpBaseline);
        if group && g.samples_per_prompt < 2 {
            bail!("grpo.estimator = {:?} compares a prompt's responses: grpo.samples_per_prompt must be at least 2", g.estimator);
        }
        if !(g.clip_eps_low > 0.0 && g.clip_eps_low < 1.0 && g.clip_eps_high > 0.0) {
            bail!("grpo: clip_eps_low in (0, 1) and clip_eps_high > 0 are required");
        }
        if g.dual_clip.is_some_and(|c| c <= 1.0) {
            bail!("grpo.dual_clip must be > 1");
        }
        if g.kl_coef < 0.0 || !g.kl_coef.is_finite() {
            bail!("grpo.kl_coef must be ≥ 0");
        }
        if self.rewards.is_empty() {
            bail!("at least one [[rewards]] entry is required (math_answer, format, program, reward_model, …)");
        }
        rlhf_rl::rewards::validate(&self.rewards, "rewards")?;
        Ok(())
    }
}

impl rlhf_train::cli::StageConfig for GrpoConfig {
    fn precision(&self) -> rlhf_runtime::Precision {
        self.precision
    }
}

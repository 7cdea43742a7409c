//! The stage's config: the model (and an optional separate reference), preference data as the
//! reward stage reads it, `[dpo]` (the loss and its knobs), `[train]` and an optional `[lora]`.

use std::path::PathBuf;

use rlhf_data::DataFiles;
use rlhf_model::LoraConfig;
use rlhf_train::TrainConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpoConfig {
    #[serde(default)]
    pub seed: u64,
    /// "f32", or "bf16": mixed precision (f32 master weights, bf16 matmuls).
    #[serde(default)]
    pub precision: rlhf_runtime::Precision,
    /// Dtype of the exported model in `final/`; by default the starting model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_dtype: Option<rlhf_model::WeightDtype>,
    pub model: ModelConfig,
    /// Rankings: ColossalChat / TRL preference pairs or K-way rankings (K ≤ 9).
    pub data: DataFiles,
    #[serde(default)]
    pub dpo: DpoSettings,
    pub train: TrainConfig,
    /// Train LoRA adapters on the frozen model; the reference is then that base with the adapters
    /// off (no second model).
    #[serde(default)]
    pub lora: Option<LoraConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The policy's starting point: the SFT model (`final/` of stage 1, or any Hugging Face folder).
    pub from: PathBuf,
    /// A different frozen reference (default: the starting model itself).
    #[serde(default)]
    pub reference: Option<PathBuf>,
}

/// The preference loss (formulas: `loss.rs`, docs/dpo.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    /// DPO's −log σ(β·margin); with `label_smoothing`, conservative DPO.
    #[default]
    Sigmoid,
    /// Robust DPO: unbiased under label noise `label_smoothing`.
    Robust,
    /// SLiC's hinge max(0, 1 − β·margin).
    Hinge,
    /// IPO's squared distance to the margin 1/(2β).
    Ipo,
    /// SimPO: length-normalised log-probabilities, margin γ, no reference.
    Simpo,
    /// ORPO: NLL of the chosen response + β × the odds-ratio term, no reference.
    Orpo,
    /// KTO: single responses, desirable (best-ranked) or undesirable (worst-ranked).
    Kto,
}

impl Loss {
    pub fn uses_reference(self) -> bool {
        !matches!(self, Loss::Simpo | Loss::Orpo)
    }

    pub fn name(self) -> &'static str {
        match self {
            Loss::Sigmoid => "sigmoid",
            Loss::Robust => "robust",
            Loss::Hinge => "hinge",
            Loss::Ipo => "ipo",
            Loss::Simpo => "simpo",
            Loss::Orpo => "orpo",
            Loss::Kto => "kto",
        }
    }
}

/// How a K-way ranking becomes a loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RankingLoss {
    /// The mean of the pairwise loss over the prompt's untied pairs.
    #[default]
    AllPairs,
    /// The listwise DPO loss (sigmoid only).
    PlackettLuce,
}

/// What IPO's log-probabilities are: per-token means (TRL) or sums (OpenRLHF).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IpoNormalize {
    #[default]
    TokenMean,
    Sum,
}

/// Where the reference log-probabilities come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReferenceMode {
    /// One pass before training, stored in `OUT/reference_logps.json` and reused when the
    /// reference model and the data are unchanged.
    #[default]
    Precomputed,
    /// The frozen reference run beside the policy on every micro-batch.
    Online,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpoSettings {
    #[serde(default)]
    pub loss: Loss,
    /// β: the strength of the KL constraint (DPO, IPO, KTO), the reward scale (SimPO), or ORPO's λ.
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// ε: the assumed share of flipped labels (sigmoid: cDPO; robust; simpo).
    #[serde(default)]
    pub label_smoothing: f64,
    #[serde(default)]
    pub ipo_normalize: IpoNormalize,
    /// SimPO's target margin γ.
    #[serde(default = "default_simpo_gamma")]
    pub simpo_gamma: f64,
    /// KTO's λ_D and λ_U.
    #[serde(default = "one")]
    pub desirable_weight: f64,
    #[serde(default = "one")]
    pub undesirable_weight: f64,
    /// Weight of an NLL term on each prompt's best-ranked response (RPO; keeps the chosen
    /// likelihood from falling with the rejected one).
    #[serde(default)]
    pub nll_coef: f64,
    #[serde(default)]
    pub ranking_loss: RankingLoss,
    #[serde(default)]
    pub reference: ReferenceMode,
}

fn default_beta() -> f64 {
    0.1
}
fn default_simpo_gamma() -> f64 {
    0.5
}
fn one() -> f64 {
    1.0
}

impl Default for DpoSettings {
    fn default() -> Self {
        Self {
            loss: Loss::default(),
            beta: default_beta(),
            label_smoothing: 0.0,
            ipo_normalize: IpoNormalize::default(),
            simpo_gamma: default_simpo_gamma(),
            desirable_weight: 1.0,
            undesirable_weight: 1.0,
            nll_coef: 0.0,
            ranking_loss: RankingLoss::default(),
            reference: ReferenceMode::default(),
        }
    }
}

impl DpoConfig {
    /// Checks that need no data or model, so a bad config fails before anything is loaded.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.train.validate()?;
        let s = &self.dpo;
        let finite_positive = |x: f64| x > 0.0 && x.is_finite();
        if !finite_positive(s.beta) {
            anyhow::bail!("dpo.beta must be a positive number, found {}", s.beta);
        }
        let max_smoothing = if s.loss == Loss::Robust { "below 0.5" } else { "at most 0.5" };
        if !(0.0..=0.5).contains(&s.label_smoothing) || (s.loss == Loss::Robust && s.label_smoothing >= 0.5) {
            anyhow::bail!("dpo.label_smoothing must be between 0 and {max_smoothing}, found {}", s.label_smoothing);
        }
        if s.label_smoothing > 0.0 && !matches!(s.loss, Loss::Sigmoid | Loss::Robust | Loss::Simpo) {
            anyhow::bail!("dpo.label_smoothing applies to the sigmoid, robust and simpo losses, not `{}`", s.loss.name());
        }
        if !(s.nll_coef >= 0.0 && s.nll_coef.is_finite()) || !(s.desirable_weight >= 0.0 && s.undesirable_weight >= 0.0) {
            anyhow::bail!("dpo.nll_coef, dpo.desirable_weight and dpo.undesirable_weight must be non-negative numbers");
        }
        if s.ranking_loss == RankingLoss::PlackettLuce && (s.loss != Loss::Sigmoid || s.label_smoothing != 0.0) {
            anyhow::bail!(
                "dpo.ranking_loss = \"plackett_luce\" is the listwise form of the sigmoid loss: set dpo.loss = \"sigmoid\" without label_smoothing (found `{}`)",
                s.loss.name()
            );
        }
        if !s.loss.uses_reference() && self.model.reference.is_some() {
            anyhow::bail!("dpo.loss = \"{}\" uses no reference model: remove model.reference", s.loss.name());
        }
        Ok(())
    }
}

impl rlhf_train::cli::StageConfig for DpoConfig {
    fn precision(&self) -> rlhf_runtime::Precision {
        self.precision
    }
}

//! The pipeline config's shape: one section per stage (each exactly the stage binary's config), the
//! embedded demo set, the report, and the stages they name, in pipeline order. A leaf module: the
//! stage registry (`stages.rs`) and the runner (`pipeline.rs`) both read it.

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use rlhf_dpo::DpoConfig;
use rlhf_eval::EvalConfig;
use rlhf_grpo::GrpoConfig;
use rlhf_ppo::PpoConfig;
use rlhf_reward::RewardConfig;
use rlhf_sft::SftConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Data,
    Pretrain,
    Sft,
    Reward,
    Dpo,
    Grpo,
    Ppo,
    Eval,
    Report,
}

impl Stage {
    /// Every stage, in pipeline order (the enum's).
    pub(crate) fn all() -> impl Iterator<Item = Stage> {
        <Stage as ValueEnum>::value_variants().iter().copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            Stage::Data => "data",
            Stage::Pretrain => "pretrain",
            Stage::Sft => "sft",
            Stage::Reward => "reward",
            Stage::Dpo => "dpo",
            Stage::Grpo => "grpo",
            Stage::Ppo => "ppo",
            Stage::Eval => "eval",
            Stage::Report => "report",
        }
    }

    /// What this stage leaves behind, and the file whose presence means it finished.
    pub(crate) fn output(self, out: &Path) -> (PathBuf, PathBuf) {
        match self {
            Stage::Data => (out.join("data"), out.join("data/manifest.json")),
            Stage::Eval => (out.join("eval.json"), out.join("eval.json")),
            Stage::Report => (out.join("report.md"), out.join("report.md")),
            s => (out.join(s.name()), out.join(s.name()).join("final/config.json")),
        }
    }
}

/// The embedded demo data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoData {
    #[serde(default)]
    pub seed: u64,
    pub pretrain_docs: usize,
    pub sft: usize,
    pub rankings: usize,
    pub prompts: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// Sample responses (SFT vs PPO) shown in the report.
    #[serde(default = "six")]
    pub samples: usize,
}

fn six() -> usize {
    6
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Stages to run, in order (default: every stage with a section, then eval and report).
    #[serde(default)]
    pub stages: Option<Vec<Stage>>,
    #[serde(default)]
    pub data: Option<DemoData>,
    #[serde(default)]
    pub pretrain: Option<SftConfig>,
    #[serde(default)]
    pub sft: Option<SftConfig>,
    #[serde(default)]
    pub reward: Option<RewardConfig>,
    #[serde(default)]
    pub dpo: Option<DpoConfig>,
    #[serde(default)]
    pub grpo: Option<GrpoConfig>,
    #[serde(default)]
    pub ppo: Option<PpoConfig>,
    #[serde(default)]
    pub eval: Option<EvalConfig>,
    #[serde(default)]
    pub report: Option<ReportConfig>,
}

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
    #[serde(rename = "self_improve")]
    #[value(name = "self_improve")]
    SelfImprove,
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
            Stage::SelfImprove => "self_improve",
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

/// Arithmetic word problems with answers (`rlhf_data::word_problems`): `prompts` to train on,
/// `heldout` distinct held-out ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WordProblemsData {
    #[serde(default)]
    pub seed: u64,
    pub prompts: usize,
    pub heldout: usize,
}

/// `[data]`: what the data stage writes into `DIR/data/` — the embedded demo set (the default),
/// or `set = "word_problems"`.
#[derive(Debug, Clone, PartialEq)]
pub enum DataSection {
    Demo(DemoData),
    WordProblems(WordProblemsData),
}

impl<'de> Deserialize<'de> for DataSection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let set = match table.remove("set") {
            None => "demo".to_string(),
            Some(toml::Value::String(s)) => s,
            Some(other) => return Err(D::Error::custom(format!("[data] set must be \"demo\" or \"word_problems\", found {other}"))),
        };
        let value = toml::Value::Table(table);
        match set.as_str() {
            "demo" => value.try_into().map(DataSection::Demo).map_err(D::Error::custom),
            "word_problems" => value.try_into().map(DataSection::WordProblems).map_err(D::Error::custom),
            other => Err(D::Error::custom(format!("[data] set = {other:?}: expected \"demo\" or \"word_problems\""))),
        }
    }
}

impl Serialize for DataSection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let (set, value) = match self {
            DataSection::Demo(d) => ("demo", toml::Value::try_from(d)),
            DataSection::WordProblems(w) => ("word_problems", toml::Value::try_from(w)),
        };
        let mut value = value.map_err(S::Error::custom)?;
        if let Some(t) = value.as_table_mut() {
            t.insert("set".into(), toml::Value::String(set.into()));
        }
        value.serialize(s)
    }
}

impl DataSection {
    /// Writes the set into `dir`; returns a one-line summary.
    pub fn write(&self, dir: &Path) -> anyhow::Result<String> {
        Ok(match self {
            DataSection::Demo(d) => {
                let sizes = rlhf_data::demo::DemoSizes { pretrain_docs: d.pretrain_docs, sft: d.sft, rankings: d.rankings, prompts: d.prompts };
                rlhf_data::demo::write_demo(dir, d.seed, sizes)?;
                format!("demo set: {} pretraining documents, {} demonstrations, {} K=4 rankings, {} prompts", d.pretrain_docs, d.sft, d.rankings, d.prompts)
            }
            DataSection::WordProblems(w) => {
                rlhf_data::word_problems::write_word_problems(dir, w.seed, w.prompts, w.heldout)?;
                format!("word problems: {} prompts, {} held-out", w.prompts, w.heldout)
            }
        })
    }
}

/// `[self_improve]`: the model of `[self_improve.sft.model] from` answers `[self_improve.vote]`'s
/// questions K times each; the reasoning paths that reach a clear majority are written to
/// `DIR/self_improve/voted.jsonl` (ColossalChat SFT data), and `[self_improve.sft]` — the SFT
/// stage's config, its `data.train` that file — trains the same model on them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfImproveSection {
    pub vote: rlhf_eval::SelfImproveConfig,
    pub sft: SftConfig,
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
    pub data: Option<DataSection>,
    #[serde(default)]
    pub pretrain: Option<SftConfig>,
    #[serde(default)]
    pub sft: Option<SftConfig>,
    #[serde(default)]
    pub self_improve: Option<SelfImproveSection>,
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

//! The training stages the pipeline chains, each registered once: an impl of [`TrainingStage`]
//! (its config section, memory plan, output shape and run) and one arm of [`Stage::training`].
//! Everything the pipeline does with a training stage — defaults, `--precision`, plans, shapes of
//! outputs not written yet, running it — goes through these, so a new stage is one entry the
//! compiler checks (an arm missing from the match does not build).

use std::path::Path;

use rlhf_model::TransformerConfig;
use rlhf_runtime::{AutodiffBackend, Precision};
use rlhf_train::memory::{MemoryPlan, ShapeOf};

use crate::sections::{PipelineConfig, Stage};

/// A training stage of the pipeline.
pub trait TrainingStage {
    type Config;
    /// Its section of the pipeline config.
    fn section(cfg: &PipelineConfig) -> Option<&Self::Config>;
    fn precision(c: &Self::Config) -> Precision;
    fn memory_plan(c: &Self::Config, shape_of: ShapeOf) -> anyhow::Result<MemoryPlan>;
    /// The shape its `final/` will have (a stage's output keeps its input's shape).
    fn output_shape(c: &Self::Config, shape_of: ShapeOf) -> anyhow::Result<TransformerConfig>;
    /// Runs it into `dir`; returns the summary line.
    fn run<B: AutodiffBackend>(c: &Self::Config, dir: &Path, resume: bool, device: &B::Device) -> anyhow::Result<String>;
}

/// Something done with one training stage, whichever it is.
pub trait Visit {
    type Out;
    fn visit<S: TrainingStage>(self) -> Self::Out;
}

impl Stage {
    /// `visit` applied to the training stage `self` is; None for data, eval and report.
    pub fn training<V: Visit>(self, visit: V) -> Option<V::Out> {
        Some(match self {
            Stage::Pretrain => visit.visit::<Pretrain>(),
            Stage::Sft => visit.visit::<Sft>(),
            Stage::SelfImprove => visit.visit::<SelfImprove>(),
            Stage::Reward => visit.visit::<Reward>(),
            Stage::Dpo => visit.visit::<Dpo>(),
            Stage::Grpo => visit.visit::<Grpo>(),
            Stage::Ppo => visit.visit::<Ppo>(),
            Stage::Data | Stage::Eval | Stage::Report => return None,
        })
    }

    pub fn is_training(self) -> bool {
        struct Is;
        impl Visit for Is {
            type Out = ();
            fn visit<S: TrainingStage>(self) {}
        }
        self.training(Is).is_some()
    }
}

impl PipelineConfig {
    /// The stages to run, in order: `stages` as listed, or every stage with a section, then the report.
    pub(crate) fn stages(&self) -> Vec<Stage> {
        if let Some(s) = &self.stages {
            return s.clone();
        }
        Stage::all().filter(|&s| self.has_section(s)).collect()
    }

    /// Whether the config has the stage's section (the report needs none).
    pub fn has_section(&self, stage: Stage) -> bool {
        match stage {
            Stage::Data => self.data.is_some(),
            Stage::Eval => self.eval.is_some(),
            Stage::Report => true,
            s => s.training(HasSection(self)).unwrap_or(false),
        }
    }
}

fn last_metric(run: &Path, key: &str) -> Option<f64> {
    rlhf_train::metrics::last_value(&rlhf_train::metrics::read_metrics(&run.join("metrics.jsonl")).ok()?, key)
}

fn first_metric(run: &Path, key: &str) -> Option<f64> {
    rlhf_train::metrics::first_value(&rlhf_train::metrics::read_metrics(&run.join("metrics.jsonl")).ok()?, key)
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |x| format!("{x:.3}"))
}

pub struct Pretrain;
pub struct Sft;
pub struct SelfImprove;
pub struct Reward;
pub struct Dpo;
pub struct Grpo;
pub struct Ppo;

/// Stages 0 and 1 are the SFT binary's code, each on its own section.
macro_rules! sft_stage {
    ($stage:ident, $section:ident) => {
        impl TrainingStage for $stage {
            type Config = rlhf_sft::SftConfig;
            fn section(cfg: &PipelineConfig) -> Option<&Self::Config> {
                cfg.$section.as_ref()
            }
            fn precision(c: &Self::Config) -> Precision {
                c.precision
            }
            fn memory_plan(c: &Self::Config, shape_of: ShapeOf) -> anyhow::Result<MemoryPlan> {
                rlhf_sft::memory_plan(c, shape_of)
            }
            fn output_shape(c: &Self::Config, shape_of: ShapeOf) -> anyhow::Result<TransformerConfig> {
                rlhf_sft::starting_shape(c, shape_of)
            }
            fn run<B: AutodiffBackend>(c: &Self::Config, dir: &Path, resume: bool, device: &B::Device) -> anyhow::Result<String> {
                rlhf_sft::run::<B>(c, dir, resume, device)?;
                Ok(format!("loss {} eval_loss {}", fmt_opt(last_metric(dir, "loss")), fmt_opt(last_metric(dir, "eval_loss"))))
            }
        }
    };
}

sft_stage!(Pretrain, pretrain);
sft_stage!(Sft, sft);

/// Self-improvement: the SFT binary's code, on the paths the model's own majority vote chose.
impl TrainingStage for SelfImprove {
    type Config = crate::sections::SelfImproveSection;
    fn section(cfg: &PipelineConfig) -> Option<&Self::Config> {
        cfg.self_improve.as_ref()
    }
    fn precision(c: &Self::Config) -> Precision {
        c.sft.precision
    }
    fn memory_plan(c: &Self::Config, shape_of: ShapeOf) -> anyhow::Result<MemoryPlan> {
        rlhf_sft::memory_plan(&c.sft, shape_of)
    }
    fn output_shape(c: &Self::Config, shape_of: ShapeOf) -> anyhow::Result<TransformerConfig> {
        rlhf_sft::starting_shape(&c.sft, shape_of)
    }
    fn run<B: AutodiffBackend>(c: &Self::Config, dir: &Path, resume: bool, device: &B::Device) -> anyhow::Result<String> {
        let model = c.sft.model.from.as_ref().ok_or_else(|| anyhow::anyhow!("[self_improve.sft.model] from: the model that votes and is then trained on its votes"))?;
        let voted = dir.join("voted.jsonl");
        if c.sft.data.train != voted {
            anyhow::bail!("[self_improve.sft.data] train = {:?}: it must be {:?}, the voted paths this stage writes", c.sft.data.train, voted);
        }
        let summary = rlhf_eval::self_improve::<B::InnerBackend>(model, &c.vote, c.sft.precision, &voted, device)?;
        if summary.paths == 0 {
            anyhow::bail!("no question reached min_agreement {}: nothing to train on ({})", c.vote.min_agreement, rlhf_eval::self_improve::summary_line(&summary));
        }
        rlhf_sft::run::<B>(&c.sft, dir, resume, device)?;
        Ok(format!("{}; SFT loss {}", rlhf_eval::self_improve::summary_line(&summary), fmt_opt(last_metric(dir, "loss"))))
    }
}

impl TrainingStage for Reward {
    type Config = rlhf_reward::RewardConfig;
    fn section(cfg: &PipelineConfig) -> Option<&Self::Config> {
        cfg.reward.as_ref()
    }
    fn precision(c: &Self::Config) -> Precision {
        c.precision
    }
    fn memory_plan(c: &Self::Config, shape_of: ShapeOf) -> anyhow::Result<MemoryPlan> {
        rlhf_reward::memory_plan(c, shape_of)
    }
    fn output_shape(c: &Self::Config, shape_of: ShapeOf) -> anyhow::Result<TransformerConfig> {
        shape_of(&c.model.from)
    }
    fn run<B: AutodiffBackend>(c: &Self::Config, dir: &Path, resume: bool, device: &B::Device) -> anyhow::Result<String> {
        rlhf_reward::run::<B>(c, dir, resume, device)?;
        Ok(format!("held-out pairwise accuracy {} top-1 {}", fmt_opt(last_metric(dir, "eval_pairwise_acc")), fmt_opt(last_metric(dir, "eval_top1_acc"))))
    }
}

impl TrainingStage for Dpo {
    type Config = rlhf_dpo::DpoConfig;
    fn section(cfg: &PipelineConfig) -> Option<&Self::Config> {
        cfg.dpo.as_ref()
    }
    fn precision(c: &Self::Config) -> Precision {
        c.precision
    }
    fn memory_plan(c: &Self::Config, shape_of: ShapeOf) -> anyhow::Result<MemoryPlan> {
        rlhf_dpo::memory_plan(c, shape_of)
    }
    fn output_shape(c: &Self::Config, shape_of: ShapeOf) -> anyhow::Result<TransformerConfig> {
        shape_of(&c.model.from)
    }
    fn run<B: AutodiffBackend>(c: &Self::Config, dir: &Path, resume: bool, device: &B::Device) -> anyhow::Result<String> {
        rlhf_dpo::run::<B>(c, dir, resume, device)?;
        Ok(format!(
            "rewards/margins {} → {}; held-out accuracy {} margin {}",
            fmt_opt(first_metric(dir, "rewards/margins")),
            fmt_opt(last_metric(dir, "rewards/margins")),
            fmt_opt(last_metric(dir, "eval_rewards/accuracies")),
            fmt_opt(last_metric(dir, "eval_rewards/margins"))
        ))
    }
}

impl TrainingStage for Grpo {
    type Config = rlhf_grpo::GrpoConfig;
    fn section(cfg: &PipelineConfig) -> Option<&Self::Config> {
        cfg.grpo.as_ref()
    }
    fn precision(c: &Self::Config) -> Precision {
        c.precision
    }
    fn memory_plan(c: &Self::Config, shape_of: ShapeOf) -> anyhow::Result<MemoryPlan> {
        rlhf_grpo::memory_plan(c, shape_of)
    }
    fn output_shape(c: &Self::Config, shape_of: ShapeOf) -> anyhow::Result<TransformerConfig> {
        shape_of(&c.model.policy)
    }
    fn run<B: AutodiffBackend>(c: &Self::Config, dir: &Path, resume: bool, device: &B::Device) -> anyhow::Result<String> {
        rlhf_grpo::run::<B>(c, dir, resume, device)?;
        Ok(format!("reward {} → {}, frac_reward_zero_std {}", fmt_opt(first_metric(dir, "reward")), fmt_opt(last_metric(dir, "reward")), fmt_opt(last_metric(dir, "frac_reward_zero_std"))))
    }
}

impl TrainingStage for Ppo {
    type Config = rlhf_ppo::PpoConfig;
    fn section(cfg: &PipelineConfig) -> Option<&Self::Config> {
        cfg.ppo.as_ref()
    }
    fn precision(c: &Self::Config) -> Precision {
        c.precision
    }
    fn memory_plan(c: &Self::Config, shape_of: ShapeOf) -> anyhow::Result<MemoryPlan> {
        rlhf_ppo::memory_plan(c, shape_of)
    }
    fn output_shape(c: &Self::Config, shape_of: ShapeOf) -> anyhow::Result<TransformerConfig> {
        shape_of(&c.model.actor)
    }
    fn run<B: AutodiffBackend>(c: &Self::Config, dir: &Path, resume: bool, device: &B::Device) -> anyhow::Result<String> {
        rlhf_ppo::run::<B>(c, dir, resume, device)?;
        Ok(format!("rm_score {} → {}, kl {}", fmt_opt(first_metric(dir, "rm_score")), fmt_opt(last_metric(dir, "rm_score")), fmt_opt(last_metric(dir, "kl"))))
    }
}

/// Whether the pipeline config has the stage's section.
pub struct HasSection<'a>(pub &'a PipelineConfig);

impl Visit for HasSection<'_> {
    type Out = bool;
    fn visit<S: TrainingStage>(self) -> bool {
        S::section(self.0).is_some()
    }
}

/// The stage's precision, when it has a section.
pub struct PrecisionOf<'a>(pub &'a PipelineConfig);

impl Visit for PrecisionOf<'_> {
    type Out = Option<Precision>;
    fn visit<S: TrainingStage>(self) -> Option<Precision> {
        S::section(self.0).map(S::precision)
    }
}

/// The stage's memory plan, when it has a section.
pub struct PlanOf<'a>(pub &'a PipelineConfig, pub ShapeOf<'a>);

impl Visit for PlanOf<'_> {
    type Out = Option<anyhow::Result<MemoryPlan>>;
    fn visit<S: TrainingStage>(self) -> Self::Out {
        S::section(self.0).map(|c| S::memory_plan(c, self.1))
    }
}

/// The shape of the stage's output, when it has a section.
pub struct OutputShape<'a>(pub &'a PipelineConfig, pub ShapeOf<'a>);

impl Visit for OutputShape<'_> {
    type Out = Option<anyhow::Result<TransformerConfig>>;
    fn visit<S: TrainingStage>(self) -> Self::Out {
        S::section(self.0).map(|c| S::output_shape(c, self.1))
    }
}

/// Runs the stage into `dir`.
pub struct RunStage<'a, B: AutodiffBackend> {
    pub cfg: &'a PipelineConfig,
    pub dir: &'a Path,
    pub resume: bool,
    pub device: &'a B::Device,
}

impl<B: AutodiffBackend> Visit for RunStage<'_, B> {
    type Out = anyhow::Result<String>;
    fn visit<S: TrainingStage>(self) -> Self::Out {
        let c = S::section(self.cfg).ok_or_else(|| anyhow::anyhow!("the stage has no section (checked when the config loads)"))?;
        S::run::<B>(c, self.dir, self.resume, self.device)
    }
}

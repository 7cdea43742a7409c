//! One way to set up a model a stage trains, and one way to export what it trained — shared by the
//! stages and `rlhf bench`, so adapters, a quantized base, precision and checkpointing are put on a
//! model in the same order everywhere, and `final/` is always written the same way.

use std::path::Path;

use rlhf_runtime::{Backend, Precision};

use crate::adapters::Adapted;
use crate::error::Result;
use crate::heads::{CausalLm, RewardModel};
use crate::hf::{HostTensor, WeightDtype, REWARD_HEAD_FILE};
use crate::lora::{LoraConfig, LoraSpec};
use crate::transformer::Transformer;

/// A model a stage trains: a causal LM (SFT, PPO's actor) or a reward model (stage 2, PPO's critic).
pub trait StageModel<B: Backend>: Adapted<B> + Sized {
    /// PEFT's `task_type` of the model's adapter folder.
    const TASK_TYPE: Option<&'static str>;

    fn body(&self) -> &Transformer<B>;
    fn attach_lora(self, cfg: &LoraConfig, seed: u64, device: &B::Device) -> Result<(Self, LoraSpec)>;
    fn in_precision(self, precision: Precision) -> Self;
    fn with_gradient_checkpointing(self, on: bool) -> Result<Self>;
    fn merge_lora(self) -> Self;
    /// The model's adapters (and fully trained head) on its frozen base read again from `dir`, in
    /// the folder's own precision: what the export merges into when training held the base
    /// quantized or in bf16 (QLoRA's practice), so `final/` is the original model plus what
    /// training learned rather than a rounded copy of it.
    fn on_base_from(self, dir: &Path) -> Result<Self>;
    /// Writes the model's folder files (config, weights in `dtype`, tokenizer files, `extra` text
    /// files) into `dir`.
    fn write_model_files(&self, dir: &Path, tokenizer_from: &Path, extra: &[(&str, String)], dtype: WeightDtype) -> Result<()>;
    /// Files the adapter folder carries besides the adapters (kept f32).
    fn adapter_extras(&self) -> Vec<(&'static str, Vec<(String, HostTensor)>)>;
}

impl<B: Backend> StageModel<B> for CausalLm<B> {
    const TASK_TYPE: Option<&'static str> = Some("CAUSAL_LM");

    fn body(&self) -> &Transformer<B> {
        &self.model
    }
    fn attach_lora(self, cfg: &LoraConfig, seed: u64, device: &B::Device) -> Result<(Self, LoraSpec)> {
        CausalLm::attach_lora(self, cfg, seed, device)
    }
    fn in_precision(self, precision: Precision) -> Self {
        CausalLm::in_precision(self, precision)
    }
    fn with_gradient_checkpointing(self, on: bool) -> Result<Self> {
        CausalLm::with_gradient_checkpointing(self, on)
    }
    fn merge_lora(self) -> Self {
        CausalLm::merge_lora(self)
    }
    fn on_base_from(self, dir: &Path) -> Result<Self> {
        let state = self.adapter_state();
        let base = CausalLm::<B>::from_hf_dir(dir, &device_of(&self))?;
        let base = CausalLm { model: base.model.with_precision(self.model.precision), ..base };
        Ok(match state {
            Some(state) => base.with_adapter_state(state),
            None => base,
        })
    }
    fn write_model_files(&self, dir: &Path, tokenizer_from: &Path, extra: &[(&str, String)], dtype: WeightDtype) -> Result<()> {
        self.write_hf_files(dir, Some(tokenizer_from), dtype)?;
        for (name, text) in extra {
            rlhf_files::write_atomic(&dir.join(name), text)?;
        }
        Ok(())
    }
    fn adapter_extras(&self) -> Vec<(&'static str, Vec<(String, HostTensor)>)> {
        vec![]
    }
}

impl<B: Backend> StageModel<B> for RewardModel<B> {
    /// PEFT has no task type for a scalar-head model.
    const TASK_TYPE: Option<&'static str> = None;

    fn body(&self) -> &Transformer<B> {
        &self.model
    }
    fn attach_lora(self, cfg: &LoraConfig, seed: u64, device: &B::Device) -> Result<(Self, LoraSpec)> {
        RewardModel::attach_lora(self, cfg, seed, device)
    }
    fn in_precision(self, precision: Precision) -> Self {
        RewardModel::in_precision(self, precision)
    }
    fn with_gradient_checkpointing(self, on: bool) -> Result<Self> {
        RewardModel::with_gradient_checkpointing(self, on)
    }
    fn merge_lora(self) -> Self {
        RewardModel::merge_lora(self)
    }
    fn on_base_from(self, dir: &Path) -> Result<Self> {
        let body = Transformer::<B>::from_hf_dir(dir, &device_of(&self))?.with_precision(self.model.precision);
        let state = self.adapter_state();
        let model = RewardModel { model: body, head: self.head };
        Ok(match state {
            Some(state) => model.with_adapter_state(state),
            None => model,
        })
    }
    fn write_model_files(&self, dir: &Path, tokenizer_from: &Path, extra: &[(&str, String)], dtype: WeightDtype) -> Result<()> {
        self.write_files(dir, Some(tokenizer_from), extra, dtype)
    }
    /// The (trained, normalised) head travels with the body's adapters.
    fn adapter_extras(&self) -> Vec<(&'static str, Vec<(String, HostTensor)>)> {
        vec![(REWARD_HEAD_FILE, self.head_tensors())]
    }
}

fn device_of<B: Backend, M: burn::module::Module<B>>(model: &M) -> B::Device {
    model.devices().into_iter().next().unwrap_or_default()
}

/// How a stage sets up the model it trains.
#[derive(Debug, Clone, Copy)]
pub struct TrainingSetup<'a> {
    /// The stage's `[lora]` section: adapters (and a quantized base) on a frozen body.
    pub lora: Option<&'a LoraConfig>,
    /// What matmuls compute in; frozen weight matrices are stored in it.
    pub precision: Precision,
    pub gradient_checkpointing: bool,
}

impl TrainingSetup<'_> {
    /// `model` as the stage trains it, in this order: adapters drawn from `seed` (or loaded) on a
    /// frozen, possibly quantized body; then precision; then checkpointing (refused with adapter
    /// dropout). `who` names the model in the log line.
    pub fn apply<B: Backend, M: StageModel<B>>(&self, model: M, seed: u64, who: &str, device: &B::Device) -> Result<(M, Option<LoraSpec>)> {
        let (model, spec) = match self.lora {
            None => (model, None),
            Some(cfg) => {
                let (model, spec) = model.attach_lora(cfg, seed, device)?;
                eprintln!("{who}: {}", spec.describe(&model, model.body().config.arch));
                (model, Some(spec))
            }
        };
        let model = model.in_precision(self.precision).with_gradient_checkpointing(self.gradient_checkpointing)?;
        Ok((model, spec))
    }
}

/// What a stage's `final/` holds and where it came from.
#[derive(Debug, Clone, Copy)]
pub struct Export<'a> {
    pub dtype: WeightDtype,
    /// The folder the model started from: its tokenizer files are copied, and an adapter folder
    /// names it as its base model.
    pub source: &'a Path,
    /// The trained adapters, when the model has them: `final/` gets the merged weights.
    pub lora: Option<&'a LoraSpec>,
    /// Also write the adapters alone, in PEFT's layout, to `final/adapter/`.
    pub export_adapter: bool,
    /// Text files written beside the weights (a reward model's `reward.json`).
    pub extra_files: &'a [(&'a str, String)],
}

/// Writes `out` (a stage's `final/`) as one folder renamed into place — the merged model, and its
/// adapter folder when asked — and returns the model as exported (adapters merged).
pub fn export<B: Backend, M: StageModel<B>>(model: M, out: &Path, e: &Export) -> Result<M> {
    let Some(spec) = e.lora else {
        rlhf_files::write_dir_with(out, |dir| model.write_model_files(dir, e.source, e.extra_files, e.dtype))?;
        return Ok(model);
    };
    let merged = if model.body().base_is_exact() { model.clone() } else { model.clone().on_base_from(e.source)? }.merge_lora();
    rlhf_files::write_dir_with(out, |dir| -> Result<()> {
        merged.write_model_files(dir, e.source, e.extra_files, e.dtype)?;
        if e.export_adapter {
            let base = e.source.display().to_string();
            model.body().save_lora_dir(&dir.join("adapter"), spec, &base, M::TASK_TYPE, &model.adapter_extras(), e.dtype)?;
        }
        Ok(())
    })?;
    Ok(merged)
}

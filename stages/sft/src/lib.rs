//! Stage 1: supervised fine-tuning on demonstrations (loss on assistant tokens only), or
//! pretraining on plain text (`mode = "pretrain"`, every token), starting from a Hugging Face folder.
//!
//! `run` writes `OUT/config.toml`, `OUT/metrics.jsonl`, TensorBoard events, `OUT/checkpoints/` and
//! the final model as a Hugging Face folder in `OUT/final/`.

pub mod objective;

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use rlhf_data::batch::{pad_flags_right, pad_right, shuffled, train_eval_split};
use rlhf_data::encode::{encode_sft, pack_pretrain, SftSample};
use rlhf_data::{load, BuiltinTemplate, ChatFormat, Encoded, Format, Kind, LoadOptions, Record, Tokenizer};
use rlhf_model::CausalLm;
use rlhf_train::{Objective, TrainConfig};
use serde::{Deserialize, Serialize};

pub use objective::sft_loss;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Assistant-only loss on conversations.
    #[default]
    Sft,
    /// Every token of plain text.
    Pretrain,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub mode: Mode,
    pub model: ModelConfig,
    pub data: DataConfig,
    pub train: TrainConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A Hugging Face folder (config.json, model.safetensors, tokenizer.json).
    pub from: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Conversations (`mode = "sft"`) or text (`mode = "pretrain"`), any supported format.
    pub train: PathBuf,
    /// A separate held-out file; otherwise `eval_fraction` of `train` is held out.
    #[serde(default)]
    pub eval: Option<PathBuf>,
    #[serde(default = "default_eval_fraction")]
    pub eval_fraction: f64,
    #[serde(default)]
    pub format: Format,
    #[serde(default)]
    pub skip_invalid: bool,
    /// Tokens per sequence (longer samples are truncated; pretraining text is packed to this length).
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// A built-in chat template, for tokenizers without one.
    #[serde(default)]
    pub template: Option<BuiltinTemplate>,
}

fn default_eval_fraction() -> f64 {
    0.05
}
fn default_max_len() -> usize {
    512
}

/// Encoded examples and what happened to the rest.
#[derive(Debug, Default)]
pub struct Prepared {
    pub samples: Vec<SftSample>,
    pub truncated: usize,
    pub dropped: usize,
    pub skipped: usize,
}

/// Reads and encodes one data file for `mode`.
pub fn prepare(path: &Path, cfg: &DataConfig, mode: Mode, tok: &Tokenizer, fmt: &ChatFormat) -> anyhow::Result<Prepared> {
    let kind = if mode == Mode::Sft { Kind::Sft } else { Kind::Pretrain };
    let loaded = load(path, LoadOptions { kind, format: cfg.format, skip_invalid: cfg.skip_invalid })?;
    let mut out = Prepared { skipped: loaded.skipped.count(), ..Default::default() };
    if out.skipped > 0 {
        eprintln!("{}: {}", path.display(), loaded.skipped);
    }
    match mode {
        Mode::Sft => {
            for (line, r) in &loaded.records {
                let Record::Sft(msgs) = r else { continue };
                match encode_sft(tok, fmt, msgs, cfg.max_len).with_context(|| format!("{}:{line}", path.display()))? {
                    Encoded::Kept(s) => out.samples.push(s),
                    Encoded::Truncated(s) => {
                        out.truncated += 1;
                        out.samples.push(s)
                    }
                    Encoded::Dropped => out.dropped += 1,
                }
            }
        }
        Mode::Pretrain => {
            let docs: Vec<String> =
                loaded.records.into_iter().filter_map(|(_, r)| if let Record::Pretrain(t) = r { Some(t) } else { None }).collect();
            out.samples = pack_pretrain(tok, &docs, cfg.max_len)?
                .into_iter()
                .map(|ids| SftSample { loss_mask: vec![true; ids.len()], ids })
                .collect();
        }
    }
    Ok(out)
}

/// Samples as micro-batches, drawn in a seeded order that is a pure function of the step.
pub struct SftObjective<B: AutodiffBackend> {
    pub train: Vec<SftSample>,
    pub eval: Vec<SftSample>,
    pub batch_size: usize,
    pub micro_batch_size: usize,
    pub seed: u64,
    pub pad_id: u32,
    pub device: B::Device,
    /// The current epoch's order (recomputed when the epoch changes).
    order: RefCell<(u64, Vec<usize>)>,
}

impl<B: AutodiffBackend> SftObjective<B> {
    pub fn new(train: Vec<SftSample>, eval: Vec<SftSample>, cfg: &TrainConfig, seed: u64, pad_id: u32, device: B::Device) -> Self {
        Self {
            train,
            eval,
            batch_size: cfg.batch_size,
            micro_batch_size: cfg.micro_batch_size,
            seed,
            pad_id,
            device,
            order: RefCell::new((u64::MAX, Vec::new())),
        }
    }

    fn sample_at(&self, global_index: usize) -> &SftSample {
        let n = self.train.len();
        let epoch = (global_index / n) as u64;
        let mut order = self.order.borrow_mut();
        if order.0 != epoch {
            *order = (epoch, shuffled(n, self.seed, epoch));
        }
        &self.train[order.1[global_index % n]]
    }

    /// Padded tensors of a micro-batch: ids, attention mask, loss mask, all [batch, len].
    fn tensors<BB: burn::tensor::backend::Backend>(
        &self,
        samples: &[&SftSample],
        device: &BB::Device,
    ) -> (Tensor<BB, 2, Int>, Tensor<BB, 2, Int>, Tensor<BB, 2>) {
        let ids: Vec<Vec<u32>> = samples.iter().map(|s| s.ids.clone()).collect();
        let padded = pad_right(&ids, self.pad_id);
        let flags: Vec<Vec<bool>> = samples.iter().map(|s| s.loss_mask.clone()).collect();
        let shape = [padded.batch, padded.len];
        (
            Tensor::from_data(TensorData::new(padded.ids, shape), device),
            Tensor::from_data(TensorData::new(padded.mask, shape), device),
            Tensor::from_data(TensorData::new(pad_flags_right(&flags, padded.len), shape), device),
        )
    }
}

/// Next-token loss of `model` on padded tensors, divided by `normalizer`.
fn batch_loss<BB: burn::tensor::backend::Backend>(
    model: &CausalLm<BB>,
    ids: Tensor<BB, 2, Int>,
    attention: Tensor<BB, 2, Int>,
    loss_mask: Tensor<BB, 2>,
    normalizer: f64,
) -> anyhow::Result<Tensor<BB, 1>> {
    let [b, t] = ids.dims();
    let (inputs, targets, target_mask) = rlhf_train::ops::shift_for_next_token(ids, loss_mask);
    let logits = model.forward(inputs, attention.slice([0..b, 0..t - 1]), None)?;
    Ok(sft_loss(logits, targets, target_mask, normalizer))
}

/// Target tokens of a sample (the first token is never a target).
fn targets(s: &SftSample) -> usize {
    s.loss_mask.iter().skip(1).filter(|&&m| m).count()
}

impl<B: AutodiffBackend> Objective<B, CausalLm<B>> for SftObjective<B> {
    type Batch = Vec<usize>;

    fn step_batches(&self, step: usize) -> Vec<Vec<usize>> {
        let start = step * self.batch_size;
        let idx: Vec<usize> = (start..start + self.batch_size).collect();
        idx.chunks(self.micro_batch_size).map(<[usize]>::to_vec).collect()
    }

    fn normalizer(&self, batches: &[Vec<usize>]) -> f64 {
        batches.iter().flatten().map(|&i| targets(self.sample_at(i))).sum::<usize>().max(1) as f64
    }

    fn tokens(&self, batch: &Vec<usize>) -> usize {
        batch.iter().map(|&i| self.sample_at(i).ids.len()).sum()
    }

    fn loss(&self, model: &CausalLm<B>, batch: &Vec<usize>, normalizer: f64) -> rlhf_train::Result<(Tensor<B, 1>, Vec<(&'static str, f64)>)> {
        let samples: Vec<&SftSample> = batch.iter().map(|&i| self.sample_at(i)).collect();
        let (ids, attention, mask) = self.tensors::<B>(&samples, &self.device);
        let loss = batch_loss(model, ids, attention, mask, normalizer).map_err(|e| rlhf_train::TrainError::Other(format!("{e:#}")))?;
        Ok((loss, vec![]))
    }

    fn evaluate(&self, model: &CausalLm<B::InnerBackend>) -> rlhf_train::Result<Vec<(String, f64)>> {
        if self.eval.is_empty() {
            return Ok(vec![]);
        }
        let total = self.eval.iter().map(targets).sum::<usize>().max(1) as f64;
        let mut loss = 0.0;
        for chunk in self.eval.chunks(self.micro_batch_size) {
            let refs: Vec<&SftSample> = chunk.iter().collect();
            let (ids, attention, mask) = self.tensors::<B::InnerBackend>(&refs, &self.device);
            let l = batch_loss(model, ids, attention, mask, total).map_err(|e| rlhf_train::TrainError::Other(format!("{e:#}")))?;
            loss += l.into_scalar().to_f64();
        }
        Ok(vec![("eval_loss".into(), loss)])
    }
}

trait ToF64 {
    fn to_f64(self) -> f64;
}

impl<E: burn::tensor::ElementConversion> ToF64 for E {
    fn to_f64(self) -> f64 {
        self.elem::<f64>()
    }
}

/// Runs stage 1 into `out`.
pub fn run<B: AutodiffBackend>(cfg: &SftConfig, out: &Path, resume: bool, device: &B::Device) -> anyhow::Result<CausalLm<B::InnerBackend>> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    rlhf_train::config::write_resolved(out, cfg)?;
    B::seed(device, cfg.seed);
    let tok = Tokenizer::from_dir(&cfg.model.from)?;
    let fmt = match cfg.mode {
        Mode::Sft => ChatFormat::resolve(&tok, cfg.data.template)?,
        // Pretraining needs no template; any format will do.
        Mode::Pretrain => ChatFormat::builtin(BuiltinTemplate::Chatml, tok.eos_token().unwrap_or("")),
    };
    let mut train = prepare(&cfg.data.train, &cfg.data, cfg.mode, &tok, &fmt)?;
    let eval = match &cfg.data.eval {
        Some(p) => prepare(p, &cfg.data, cfg.mode, &tok, &fmt)?.samples,
        None => {
            let (tr, ev) = train_eval_split(train.samples.len(), cfg.data.eval_fraction, cfg.seed);
            let mut all: Vec<Option<SftSample>> = std::mem::take(&mut train.samples).into_iter().map(Some).collect();
            let eval = ev.iter().filter_map(|&i| all[i].take()).collect();
            train.samples = tr.iter().filter_map(|&i| all[i].take()).collect();
            eval
        }
    };
    if train.samples.is_empty() {
        bail!("{}: no training examples left (dropped {}, skipped {})", cfg.data.train.display(), train.dropped, train.skipped);
    }
    eprintln!(
        "sft: {} train / {} eval examples; {} truncated, {} dropped (no target left after truncation to {} tokens)",
        train.samples.len(),
        eval.len(),
        train.truncated,
        train.dropped,
        cfg.data.max_len
    );
    let model = CausalLm::<B>::from_hf_dir(&cfg.model.from, device)?;
    let model_cfg = model.config().clone();
    let pad_id = model_cfg.pad_token_id.or(tok.pad_id()).or(tok.eos_id()).unwrap_or(0);
    let objective = SftObjective::<B>::new(train.samples, eval, &cfg.train, cfg.seed, pad_id, device.clone());
    let model = rlhf_train::train(model, &objective, &cfg.train, cfg.seed, out, resume, device)?;
    let model = model.valid();
    if cfg.train.halt_after.is_none_or(|h| h >= cfg.train.steps) {
        model.save_hf_dir(&out.join("final"), Some(&cfg.model.from))?;
    }
    Ok(model)
}

//! Stage 1: supervised fine-tuning on demonstrations (loss on assistant tokens only), or
//! pretraining on plain text (`mode = "pretrain"`, every token), starting from a Hugging Face folder.
//!
//! `run` writes `OUT/config.toml`, `OUT/metrics.jsonl`, TensorBoard events, `OUT/checkpoints/` and
//! the final model as a Hugging Face folder in `OUT/final/`.

pub mod objective;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use rlhf_data::batch::{pad_flags_right, pad_right, EpochOrder};
use rlhf_data::encode::{encode_sft, pack_pretrain, SftSample};
use rlhf_data::{load, BuiltinTemplate, ChatFormat, DataFiles, Encoded, Kind, LoadOptions, Record, Tokenizer};
use rlhf_model::{Arch, CausalLm, TransformerConfig};
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
    pub data: DataFiles,
    pub train: TrainConfig,
}

/// Where the model comes from: a Hugging Face folder (`from`) or a fresh initialisation (`init`,
/// with a tokenizer taken from a folder or trained on the data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A Hugging Face folder (config.json, model.safetensors, tokenizer.json).
    #[serde(default)]
    pub from: Option<PathBuf>,
    /// Architecture and sizes of a model trained from scratch.
    #[serde(default)]
    pub init: Option<InitConfig>,
    /// Tokenizer of a model trained from scratch.
    #[serde(default)]
    pub tokenizer: Option<TokenizerConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitConfig {
    #[serde(default = "default_arch")]
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    /// Defaults to `num_heads` (no grouping).
    #[serde(default)]
    pub num_kv_heads: Option<usize>,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerConfig {
    /// Use this folder's tokenizer.json / tokenizer_config.json…
    #[serde(default)]
    pub from: Option<PathBuf>,
    /// …or train a byte-level BPE of this size on `data.train` plus `train_on`.
    #[serde(default)]
    pub vocab_size: Option<usize>,
    #[serde(default)]
    pub train_on: Vec<PathBuf>,
}

fn default_arch() -> Arch {
    Arch::Llama
}
fn default_true() -> bool {
    true
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_positions() -> usize {
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
pub fn prepare(path: &Path, cfg: &DataFiles, mode: Mode, tok: &Tokenizer, fmt: &ChatFormat) -> anyhow::Result<Prepared> {
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
    order: EpochOrder,
}

impl<B: AutodiffBackend> SftObjective<B> {
    pub fn new(train: Vec<SftSample>, eval: Vec<SftSample>, cfg: &TrainConfig, seed: u64, pad_id: u32, device: B::Device) -> Self {
        Self {
            order: EpochOrder::new(train.len(), seed),
            train,
            eval,
            batch_size: cfg.batch_size,
            micro_batch_size: cfg.micro_batch_size,
            seed,
            pad_id,
            device,
        }
    }

    fn sample_at(&self, position: usize) -> &SftSample {
        &self.train[self.order.at(position)]
    }
}

/// Padded tensors of a batch of samples: ids, attention mask, loss mask, all [batch, len].
pub fn padded_batch<B: burn::tensor::backend::Backend>(
    samples: &[&SftSample],
    pad_id: u32,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>, Tensor<B, 2>) {
    let ids: Vec<Vec<u32>> = samples.iter().map(|s| s.ids.clone()).collect();
    let padded = pad_right(&ids, pad_id);
    let flags: Vec<Vec<bool>> = samples.iter().map(|s| s.loss_mask.clone()).collect();
    let shape = [padded.batch, padded.len];
    (
        Tensor::from_data(TensorData::new(padded.ids, shape), device),
        Tensor::from_data(TensorData::new(padded.mask, shape), device),
        Tensor::from_data(TensorData::new(pad_flags_right(&flags, padded.len), shape), device),
    )
}

/// Next-token loss of `model` on `samples` (targets where their loss mask is set), divided by
/// `normalizer`: the SFT objective, and PPO-ptx's pretraining term.
pub fn lm_loss<B: burn::tensor::backend::Backend>(
    model: &CausalLm<B>,
    samples: &[&SftSample],
    pad_id: u32,
    normalizer: f64,
    device: &B::Device,
) -> anyhow::Result<Tensor<B, 1>> {
    let (ids, attention, mask) = padded_batch::<B>(samples, pad_id, device);
    batch_loss(model, ids, attention, mask, normalizer)
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
pub fn targets(s: &SftSample) -> usize {
    s.loss_mask.iter().skip(1).filter(|&&m| m).count()
}

impl<B: AutodiffBackend> Objective<B, CausalLm<B>> for SftObjective<B> {
    type Batch = Vec<usize>;

    fn step_batches(&self, step: usize) -> Vec<Vec<usize>> {
        EpochOrder::step_positions(step, self.batch_size, self.micro_batch_size)
    }

    fn normalizer(&self, batches: &[Vec<usize>]) -> f64 {
        batches.iter().flatten().map(|&i| targets(self.sample_at(i))).sum::<usize>().max(1) as f64
    }

    fn tokens(&self, batch: &Vec<usize>) -> usize {
        batch.iter().map(|&i| self.sample_at(i).ids.len()).sum()
    }

    fn loss(&self, model: &CausalLm<B>, batch: &Vec<usize>, normalizer: f64) -> rlhf_train::Result<(Tensor<B, 1>, Vec<(&'static str, f64)>)> {
        let samples: Vec<&SftSample> = batch.iter().map(|&i| self.sample_at(i)).collect();
        let loss = lm_loss(model, &samples, self.pad_id, normalizer, &self.device).map_err(|e| rlhf_train::TrainError::Other(format!("{e:#}")))?;
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
            let l = lm_loss(model, &refs, self.pad_id, total, &self.device).map_err(|e| rlhf_train::TrainError::Other(format!("{e:#}")))?;
            loss += l.into_scalar().elem::<f64>();
        }
        Ok(vec![("eval_loss".into(), loss)])
    }
}

/// The tokenizer folder and the starting model: loaded from `model.from`, or initialised from
/// `model.init` with a tokenizer copied or trained into `OUT/tokenizer/`.
pub fn starting_model<B: burn::tensor::backend::Backend>(cfg: &SftConfig, out: &Path, device: &B::Device) -> anyhow::Result<(PathBuf, CausalLm<B>)> {
    match (&cfg.model.from, &cfg.model.init) {
        (Some(dir), None) => Ok((dir.clone(), CausalLm::<B>::from_hf_dir(dir, device)?)),
        (None, Some(init)) => {
            let tok_dir = out.join("tokenizer");
            let tok_cfg = cfg.model.tokenizer.as_ref().context("model.init needs a [model.tokenizer] section")?;
            let tok = match (&tok_cfg.from, tok_cfg.vocab_size) {
                (Some(src), None) => {
                    std::fs::create_dir_all(&tok_dir)?;
                    for f in rlhf_model::hf::TOKENIZER_FILES {
                        if src.join(f).exists() {
                            std::fs::copy(src.join(f), tok_dir.join(f))?;
                        }
                    }
                    Tokenizer::from_dir(&tok_dir)?
                }
                (None, Some(vocab)) => {
                    let mut files: Vec<&Path> = vec![cfg.data.train.as_path()];
                    files.extend(tok_cfg.train_on.iter().map(PathBuf::as_path));
                    let corpus = rlhf_data::bpe::corpus(&files)?;
                    rlhf_data::bpe::train_bpe(&corpus, vocab, &tok_dir)?
                }
                _ => bail!("[model.tokenizer]: set exactly one of `from` and `vocab_size`"),
            };
            let heads = init.num_heads;
            let model_cfg = TransformerConfig {
                arch: init.arch,
                vocab_size: tok.vocab_size(),
                hidden_size: init.hidden_size,
                intermediate_size: init.intermediate_size,
                num_layers: init.num_layers,
                num_heads: heads,
                num_kv_heads: init.num_kv_heads.unwrap_or(heads),
                head_dim: init.hidden_size / heads,
                max_position_embeddings: init.max_position_embeddings,
                norm_eps: if init.arch == Arch::Gpt2 { 1e-5 } else { 1e-6 },
                rope_theta: init.rope_theta,
                rope_scaling: None,
                qkv_bias: init.arch != Arch::Llama,
                out_bias: init.arch == Arch::Gpt2,
                tie_word_embeddings: init.tie_word_embeddings || init.arch == Arch::Gpt2,
                bos_token_id: tok.token_id(rlhf_data::bpe::SPECIAL_TOKENS[0]),
                eos_token_ids: tok.eos_id().into_iter().collect(),
                pad_token_id: tok.pad_id(),
            };
            if init.hidden_size % heads != 0 {
                bail!("model.init: hidden_size {} is not a multiple of num_heads {heads}", init.hidden_size);
            }
            let lm_head = (!model_cfg.tie_word_embeddings).then(|| {
                burn::module::Param::from_tensor(Tensor::random(
                    [model_cfg.vocab_size, model_cfg.hidden_size],
                    burn::tensor::Distribution::Normal(0.0, 0.02),
                    device,
                ))
            });
            Ok((tok_dir, CausalLm { model: model_cfg.init::<B>(device), lm_head }))
        }
        _ => bail!("[model]: set exactly one of `from` (a Hugging Face folder) and `init` (train from scratch)"),
    }
}

/// Runs stage 1 into `out`.
pub fn run<B: AutodiffBackend>(cfg: &SftConfig, out: &Path, resume: bool, device: &B::Device) -> anyhow::Result<CausalLm<B::InnerBackend>> {
    cfg.train.validate()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    rlhf_train::config::write_resolved(out, cfg)?;
    B::seed(device, cfg.seed);
    let (tok_dir, model) = starting_model::<B>(cfg, out, device)?;
    let tok = Tokenizer::from_dir(&tok_dir)?;
    let fmt = match cfg.mode {
        Mode::Sft => ChatFormat::resolve(&tok, cfg.data.template)?,
        // Pretraining needs no template; any format will do.
        Mode::Pretrain => ChatFormat::builtin(BuiltinTemplate::Chatml, tok.eos_token().unwrap_or("")),
    };
    let mut train = prepare(&cfg.data.train, &cfg.data, cfg.mode, &tok, &fmt)?;
    let (train_samples, eval) =
        cfg.data.split(std::mem::take(&mut train.samples), cfg.seed, |p| Ok::<_, anyhow::Error>(prepare(p, &cfg.data, cfg.mode, &tok, &fmt)?.samples))?;
    train.samples = train_samples;
    if train.samples.is_empty() {
        bail!("{}: no training examples left (dropped {}, skipped {})", cfg.data.train.display(), train.dropped, train.skipped);
    }
    eprintln!(
        "{}: {:.2}M-parameter {:?}; {} train / {} eval examples; {} truncated, {} dropped (no target left after truncation to {} tokens)",
        if cfg.mode == Mode::Sft { "sft" } else { "pretrain" },
        model.config().num_params() as f64 / 1e6,
        model.config().arch,
        train.samples.len(),
        eval.len(),
        train.truncated,
        train.dropped,
        cfg.data.max_len
    );
    let pad_id = tok.pad_id_for(model.config().pad_token_id);
    let objective = SftObjective::<B>::new(train.samples, eval, &cfg.train, cfg.seed, pad_id, device.clone());
    let model = rlhf_train::train(model, &objective, &cfg.train, cfg.seed, out, resume, device)?;
    let model = model.valid();
    if cfg.train.halt_after.is_none_or(|h| h >= cfg.train.steps) {
        model.save_hf_dir(&out.join("final"), Some(&tok_dir))?;
        eprintln!("{}: final model in {}", if cfg.mode == Mode::Sft { "sft" } else { "pretrain" }, out.join("final").display());
    }
    Ok(model)
}

//! Stage 1: supervised fine-tuning on demonstrations (loss on assistant tokens only), or
//! pretraining on plain text (`mode = "pretrain"`, every token), starting from a Hugging Face folder.
//!
//! `run` writes `OUT/config.toml`, `OUT/metrics.jsonl`, TensorBoard events, `OUT/checkpoints/` and
//! the final model as a Hugging Face folder in `OUT/final/`.

pub mod objective;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use burn::module::AutodiffModule;
use rlhf_runtime::AutodiffBackend;
use burn::tensor::Tensor;
use rlhf_data::encode::SftSample;
use rlhf_data::{prepare, BuiltinTemplate, ChatFormat, DataFiles, Kind, Tokenizer};
use rlhf_model::{Arch, CausalLm, Export, LoraConfig, TrainingSetup, TransformerConfig};
use rlhf_train::memory::{compute_knobs, lora_knob, resident_rows, update_rows, MemoryPlan, PlannedModel, ShapeOf, Training, LM_LOSS_COPIES};
use rlhf_runtime::Precision;
use rlhf_train::TrainConfig;
use serde::{Deserialize, Serialize};

pub use objective::SftObjective;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Assistant-only loss on conversations.
    #[default]
    Sft,
    /// Every token of plain text.
    Pretrain,
}

impl Mode {
    /// The kind of record the mode trains on.
    pub fn kind(self) -> Kind {
        match self {
            Mode::Sft => Kind::Sft,
            Mode::Pretrain => Kind::Pretrain,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub mode: Mode,
    /// "f32", or "bf16": mixed precision (f32 master weights, bf16 matmuls).
    #[serde(default)]
    pub precision: Precision,
    /// Dtype of the exported model in `final/`: "float32", "bfloat16" or "float16". By default the
    /// dtype of the model it starts from (float32 for one trained from scratch). Checkpoints stay f32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_dtype: Option<rlhf_model::WeightDtype>,
    pub model: ModelConfig,
    pub data: DataFiles,
    pub train: TrainConfig,
    /// Train LoRA adapters on the frozen model instead of every weight.
    #[serde(default)]
    pub lora: Option<LoraConfig>,
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


/// The tokenizer folder and the starting model: loaded from `model.from`, or initialised from
/// `model.init` with a tokenizer copied or trained into `OUT/tokenizer/`.
pub fn starting_model<B: rlhf_runtime::Backend>(cfg: &SftConfig, out: &Path, device: &B::Device) -> anyhow::Result<(PathBuf, CausalLm<B>)> {
    match (&cfg.model.from, &cfg.model.init) {
        (Some(dir), None) => Ok((dir.clone(), CausalLm::<B>::from_hf_dir(dir, device)?)),
        (None, Some(init)) => {
            let tok_dir = out.join("tokenizer");
            let tok_cfg = cfg.model.tokenizer.as_ref().context("model.init needs a [model.tokenizer] section")?;
            // Rank 0 writes the tokenizer; the others read what it wrote.
            let world = rlhf_dist::world();
            let made = world.writer_first(|| make_tokenizer(cfg, tok_cfg, &tok_dir))?;
            let tok = match made {
                Some(tok) => tok,
                None => Tokenizer::from_dir(&tok_dir)?,
            };
            let model_cfg = TransformerConfig {
                bos_token_id: tok.token_id(rlhf_data::bpe::SPECIAL_TOKENS[0]),
                eos_token_ids: tok.eos_id().into_iter().collect(),
                pad_token_id: tok.pad_id(),
                ..init_shape(init, tok.vocab_size())?
            };
            let lm_head = (!model_cfg.tie_word_embeddings).then(|| {
                burn::module::Param::from_tensor(Tensor::random(
                    [model_cfg.vocab_size, model_cfg.hidden_size],
                    burn::tensor::Distribution::Normal(0.0, 0.02),
                    device,
                ))
            });
            Ok((tok_dir, CausalLm { model: model_cfg.init::<B>(device), lm_head, lm_head_codes: None }))
        }
        _ => bail!("[model]: set exactly one of `from` (a Hugging Face folder) and `init` (train from scratch)"),
    }
}

/// Copies `[model.tokenizer] from` into `tok_dir`, or trains a BPE tokenizer there.
fn make_tokenizer(cfg: &SftConfig, tok_cfg: &TokenizerConfig, tok_dir: &Path) -> anyhow::Result<Tokenizer> {
    match (&tok_cfg.from, tok_cfg.vocab_size) {
        (Some(src), None) => {
            std::fs::create_dir_all(tok_dir)?;
            for f in rlhf_model::hf::TOKENIZER_FILES {
                if src.join(f).exists() {
                    std::fs::copy(src.join(f), tok_dir.join(f))?;
                }
            }
            Ok(Tokenizer::from_dir(tok_dir)?)
        }
        (None, Some(vocab)) => {
            let mut files: Vec<&Path> = vec![cfg.data.train.as_path()];
            files.extend(tok_cfg.train_on.iter().map(PathBuf::as_path));
            let corpus = rlhf_data::bpe::corpus(&files)?;
            Ok(rlhf_data::bpe::train_bpe(&corpus, vocab, tok_dir)?)
        }
        _ => bail!("[model.tokenizer]: set exactly one of `from` and `vocab_size`"),
    }
}

/// The shape of a model trained from scratch with a vocabulary of `vocab`.
pub fn init_shape(init: &InitConfig, vocab: usize) -> anyhow::Result<TransformerConfig> {
    let heads = init.num_heads;
    if heads == 0 || !init.hidden_size.is_multiple_of(heads) {
        bail!("model.init: hidden_size {} is not a multiple of num_heads {heads}", init.hidden_size);
    }
    Ok(TransformerConfig {
        arch: init.arch,
        vocab_size: vocab,
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
        bos_token_id: None,
        eos_token_ids: vec![],
        pad_token_id: None,
    })
}

/// The shape of the model stage 1 starts from, read from config.json (or the tokenizer's size for
/// a model trained from scratch) through `shape_of`, which the pipeline points at earlier stages'
/// outputs before they exist.
pub fn starting_shape(cfg: &SftConfig, shape_of: ShapeOf) -> anyhow::Result<TransformerConfig> {
    match (&cfg.model.from, &cfg.model.init, &cfg.model.tokenizer) {
        (Some(dir), None, _) => shape_of(dir),
        (None, Some(init), Some(TokenizerConfig { from: Some(dir), .. })) => init_shape(init, Tokenizer::from_dir(dir)?.vocab_size()),
        (None, Some(init), Some(TokenizerConfig { vocab_size: Some(v), .. })) => init_shape(init, *v),
        _ => bail!("[model]: set exactly one of `from` (a Hugging Face folder) and `init` (with a [model.tokenizer])"),
    }
}

/// Stage 1's memory plan: the policy, its gradients and AdamW moments, and one micro-batch's
/// activations and logits at `data.max_len`.
pub fn memory_plan(cfg: &SftConfig, shape_of: ShapeOf) -> anyhow::Result<MemoryPlan> {
    let shape = starting_shape(cfg, shape_of)?;
    let training = Training::of(cfg.lora.as_ref(), shape.arch)?;
    let (precision, checkpointing) = (cfg.precision, cfg.train.gradient_checkpointing);
    let policy = PlannedModel { name: "policy".into(), training, cfg: shape, lm_head: true, precision, checkpointing };
    let (micro, len) = (cfg.train.micro_batch_size, cfg.data.max_len);
    Ok(MemoryPlan {
        stage: if cfg.mode == Mode::Sft { "sft" } else { "pretrain" }.into(),
        phases: vec![("training step".into(), update_rows(&policy, micro, len, LM_LOSS_COPIES))],
        knobs: [format!("train.micro_batch_size (now {micro})"), format!("data.max_len (now {len})")]
            .into_iter()
            .chain(compute_knobs(precision, checkpointing, "train"))
            .chain([lora_knob(cfg.lora.as_ref(), "lora")])
            .collect(),
        resident: resident_rows(&[(policy, None)]),
    })
}

/// Runs stage 1 into `out`.
pub fn run<B: AutodiffBackend>(cfg: &SftConfig, out: &Path, resume: bool, device: &B::Device) -> anyhow::Result<CausalLm<B::InnerBackend>> {
    cfg.train.validate()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    rlhf_train::config::write_resolved(out, cfg)?;
    B::seed(device, cfg.seed);
    let (tok_dir, model) = starting_model::<B>(cfg, out, device)?;
    if cfg.lora.is_some() && cfg.model.from.is_none() {
        bail!("[lora] needs a pretrained model (model.from); a model trained from scratch trains every weight");
    }
    let setup = TrainingSetup { lora: cfg.lora.as_ref(), precision: cfg.precision, gradient_checkpointing: cfg.train.gradient_checkpointing };
    let (model, lora) = setup.apply(model, cfg.seed, "sft", device)?;
    let tok = Tokenizer::from_dir(&tok_dir)?;
    let fmt = match cfg.mode {
        Mode::Sft => ChatFormat::resolve(&tok, cfg.data.template)?,
        // Pretraining needs no template; any format will do.
        Mode::Pretrain => ChatFormat::builtin(BuiltinTemplate::Chatml, tok.eos_token().unwrap_or("")),
    };
    let opts = cfg.data.prepare_options(cfg.mode.kind());
    let read = |path: &Path| prepare::<SftSample>(path, &opts, &tok, &fmt);
    let mut train = read(&cfg.data.train)?;
    eprintln!("{}", train.summary(cfg.data.max_len));
    let (train_samples, eval) = cfg.data.split(std::mem::take(&mut train.examples), cfg.seed, |p| read(p).map(|e| e.examples))?;
    if train_samples.is_empty() {
        bail!("{}: no training examples left (dropped {}, skipped {})", cfg.data.train.display(), train.dropped, train.skipped.count());
    }
    eprintln!(
        "{}: {:.2}M-parameter {:?}; {} train / {} eval examples",
        if cfg.mode == Mode::Sft { "sft" } else { "pretrain" },
        model.config().num_params() as f64 / 1e6,
        model.config().arch,
        train_samples.len(),
        eval.len(),
    );
    let pad_id = tok.pad_id_for(model.config().pad_token_id);
    let objective = SftObjective::<B>::new(train_samples, eval, &cfg.train, cfg.seed, pad_id, device.clone());
    let model = rlhf_train::train(model, &objective, &cfg.train, cfg.seed, out, resume, device)?;
    let model = model.valid();
    if cfg.train.halt_after.is_some_and(|h| h < cfg.train.steps) {
        return Ok(model);
    }
    let dtype = rlhf_model::WeightDtype::for_export(cfg.export_dtype, cfg.model.from.as_deref())?;
    let export_adapter = cfg.lora.as_ref().is_some_and(|l| l.export_adapter);
    let model = rlhf_train::data_parallel::export_final(model, &out.join("final"), &Export { dtype, source: &tok_dir, lora: lora.as_ref(), export_adapter, extra_files: &[] })?;
    eprintln!("{}: final model ({dtype}) in {}", if cfg.mode == Mode::Sft { "sft" } else { "pretrain" }, out.join("final").display());
    Ok(model)
}

impl rlhf_train::cli::StageConfig for SftConfig {
    fn precision(&self) -> rlhf_runtime::Precision {
        self.precision
    }
}

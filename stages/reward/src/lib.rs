//! Stage 2: the reward model — the SFT body without its unembedding, plus a scalar head read at the
//! last real token — trained on K-way rankings with all C(K,2) pairs of a prompt in one batch
//! element (InstructGPT §3.5). K = 2 preference pairs are the same code path.

pub mod objective;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use burn::module::{AutodiffModule, Param};
use rlhf_runtime::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use rlhf_data::batch::EpochOrder;
use rlhf_data::encode::{ranking_pairs, Pair, RankingSample, SftSample};
use rlhf_data::{prepare, ChatFormat, DataFiles, Format, Kind, PrepareOptions, Tokenizer};
use rlhf_eval::{ranking_stats, RankingStats};
use rlhf_model::reward_info::{Normalization, REWARD_INFO_FILE};
use rlhf_model::{Export, LoraConfig, RewardInfo, RewardModel, ScalarHead, TrainingSetup, Transformer};
use rlhf_train::batch::score_sequences;
use rlhf_train::memory::{compute_knobs, lora_knob, resident_rows, update_rows, MemoryPlan, PlannedModel, ShapeOf, Training};
use rlhf_train::{Objective, TrainConfig, TrainError};
use serde::{Deserialize, Serialize};

pub use objective::ranking_loss;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardConfig {
    #[serde(default)]
    pub seed: u64,
    /// "f32", or "bf16": mixed precision (f32 master weights, bf16 matmuls).
    #[serde(default)]
    pub precision: rlhf_runtime::Precision,
    /// Dtype of the exported body in `final/`: "float32", "bfloat16" or "float16". By default the
    /// dtype of the model it starts from (the SFT folder's); the scalar head is always f32. Checkpoints stay f32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_dtype: Option<rlhf_model::WeightDtype>,
    pub model: ModelConfig,
    /// Rankings: ColossalChat / TRL preference pairs or K-way rankings (K ≤ 9).
    pub data: DataFiles,
    /// SFT demonstrations whose mean score is set to 0 after training (InstructGPT). Without it,
    /// the best-ranked responses of the training rankings are the reference.
    #[serde(default)]
    pub reference: Option<PathBuf>,
    /// Required score gap: −log σ(r_w − r_l − margin).
    #[serde(default)]
    pub margin: f64,
    pub train: TrainConfig,
    /// Train LoRA adapters on the frozen SFT body (the scalar head trains in full).
    #[serde(default)]
    pub lora: Option<LoraConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The SFT model (`final/` of stage 1, or any Hugging Face folder); its LM head is dropped.
    pub from: PathBuf,
}


/// Scores of every response of `samples` (flat, in order) and the pairs between them.
fn score_samples<B: Backend>(model: &RewardModel<B>, samples: &[&RankingSample], pad_id: u32, device: &B::Device) -> anyhow::Result<(Tensor<B, 1>, Vec<Pair>)> {
    let mut seqs = Vec::new();
    let mut pairs = Vec::new();
    for s in samples {
        pairs.extend(ranking_pairs(&s.ranks, seqs.len()));
        seqs.extend(s.sequences.iter().cloned());
    }
    Ok((score_sequences(model, &seqs, pad_id, device)?, pairs))
}

pub struct RewardObjective<B: AutodiffBackend> {
    pub train: Vec<RankingSample>,
    pub eval: Vec<RankingSample>,
    pub batch_size: usize,
    pub micro_batch_size: usize,
    pub pad_id: u32,
    pub margin: f64,
    pub device: B::Device,
    order: EpochOrder,
}

impl<B: AutodiffBackend> RewardObjective<B> {
    fn sample_at(&self, position: usize) -> &RankingSample {
        &self.train[self.order.at(position)]
    }

    fn has_pairs(s: &RankingSample) -> bool {
        s.has_preference()
    }
}

fn stats_metrics(st: &RankingStats, normalizer: f64) -> Vec<(&'static str, f64)> {
    vec![
        ("pairwise_acc", st.pairwise_acc / normalizer),
        ("top1_acc", st.top1_acc / normalizer),
        ("chosen_score", st.chosen_score / normalizer),
        ("rejected_score", st.rejected_score / normalizer),
        ("margin", (st.chosen_score - st.rejected_score) / normalizer),
    ]
}

fn other(e: anyhow::Error) -> TrainError {
    TrainError::Other(format!("{e:#}"))
}

impl<B: AutodiffBackend> Objective<B, RewardModel<B>> for RewardObjective<B> {
    /// Global indices of the prompts of a micro-batch.
    type Batch = Vec<usize>;

    fn step_batches(&self, step: usize) -> Vec<Vec<usize>> {
        EpochOrder::step_positions(step, self.batch_size, self.micro_batch_size)
    }

    /// The batch size counts prompts (those with at least one untied pair).
    fn normalizer(&self, batches: &[Vec<usize>]) -> f64 {
        batches.iter().flatten().filter(|&&i| Self::has_pairs(self.sample_at(i))).count().max(1) as f64
    }

    fn tokens(&self, batch: &Vec<usize>) -> usize {
        batch.iter().map(|&i| self.sample_at(i).sequences.iter().map(Vec::len).sum::<usize>()).sum()
    }

    fn loss(&self, model: &RewardModel<B>, batch: &Vec<usize>, normalizer: f64) -> rlhf_train::Result<(Tensor<B, 1>, Vec<(&'static str, f64)>)> {
        let samples: Vec<&RankingSample> = batch.iter().map(|&i| self.sample_at(i)).collect();
        let (scores, pairs) = score_samples(model, &samples, self.pad_id, &self.device).map_err(other)?;
        let host = scores.clone().into_data().convert::<f32>().to_vec::<f32>().expect("f32");
        let st = ranking_stats(&host, &samples);
        if pairs.is_empty() {
            return Ok(((scores * 0.0).sum(), stats_metrics(&st, normalizer)));
        }
        Ok((ranking_loss(scores, &pairs, self.margin, normalizer), stats_metrics(&st, normalizer)))
    }

    fn evaluate(&self, model: &RewardModel<B::InnerBackend>) -> rlhf_train::Result<Vec<(String, f64)>> {
        if self.eval.is_empty() {
            return Ok(vec![]);
        }
        let n = self.eval.iter().filter(|s| Self::has_pairs(s)).count().max(1) as f64;
        let (mut loss, mut total) = (0.0, RankingStats::default());
        for chunk in self.eval.chunks(self.micro_batch_size) {
            let refs: Vec<&RankingSample> = chunk.iter().collect();
            let (scores, pairs) = score_samples(model, &refs, self.pad_id, &self.device).map_err(other)?;
            let host = scores.clone().into_data().convert::<f32>().to_vec::<f32>().expect("f32");
            if !pairs.is_empty() {
                loss += ranking_loss(scores, &pairs, self.margin, n).into_scalar().elem::<f64>();
            }
            total.add(&ranking_stats(&host, &refs));
        }
        Ok(vec![
            ("eval_loss".into(), loss),
            ("eval_pairwise_acc".into(), total.pairwise_acc / n),
            ("eval_top1_acc".into(), total.top1_acc / n),
        ])
    }
}

/// Sequences whose mean score is set to 0 after training: the SFT demonstrations (whole
/// conversations), or the best-ranked responses of the training rankings.
fn reference_sequences(reference: Option<&Path>, max_len: usize, tok: &Tokenizer, fmt: &ChatFormat, train: &[RankingSample]) -> anyhow::Result<(String, Vec<Vec<u32>>)> {
    match reference {
        Some(path) => {
            let opts = PrepareOptions { kind: Kind::Sft, format: Format::Auto, skip_invalid: true, max_len };
            let prepared = prepare::<SftSample>(path, &opts, tok, fmt)?;
            if prepared.skipped.count() > 0 {
                eprintln!("reference {}: {}", path.display(), prepared.skipped);
            }
            Ok((path.display().to_string(), prepared.examples.into_iter().map(|s| s.ids).collect()))
        }
        None => {
            let seqs = train
                .iter()
                .map(|s| {
                    s.sequences[s.best_response()].clone()
                })
                .collect();
            Ok(("best-ranked training responses".into(), seqs))
        }
    }
}

/// Mean and standard deviation of the model's scores on `seqs`.
pub fn score_stats<B: Backend>(model: &RewardModel<B>, seqs: &[Vec<u32>], pad_id: u32, chunk: usize, device: &B::Device) -> anyhow::Result<(f64, f64)> {
    let mut all = Vec::new();
    for c in seqs.chunks(chunk.max(1)) {
        all.extend(score_sequences(model, c, pad_id, device)?.into_data().convert::<f64>().to_vec::<f64>().expect("f64"));
    }
    let n = all.len().max(1) as f64;
    let mean = all.iter().sum::<f64>() / n;
    let var = all.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    Ok((mean, var.sqrt()))
}

/// Stage 2's memory plan: the reward model (SFT body + scalar head), its gradients and AdamW
/// moments, and one micro-batch of rankings — K sequences each, K read from the data (9, the
/// most we accept, when the file does not exist yet).
pub fn memory_plan(cfg: &RewardConfig, shape_of: ShapeOf) -> anyhow::Result<MemoryPlan> {
    let shape = shape_of(&cfg.model.from)?;
    let training = Training::of(cfg.lora.as_ref(), shape.arch)?;
    let (precision, checkpointing) = (cfg.precision, cfg.train.gradient_checkpointing);
    let rm = PlannedModel { name: "reward model".into(), training, cfg: shape, lm_head: false, precision, checkpointing };
    let (k, read) = rlhf_data::formats::widest_ranking(&cfg.data.train, cfg.data.format).map_or((9, " assumed"), |k| (k, ""));
    let (micro, len) = (cfg.train.micro_batch_size, cfg.data.max_len);
    Ok(MemoryPlan {
        stage: "reward".into(),
        phases: vec![(format!("training step (K = {k}{read})"), update_rows(&rm, micro * k, len, 0))],
        knobs: [format!("train.micro_batch_size (now {micro} rankings of {k})"), format!("data.max_len (now {len})")]
            .into_iter()
            .chain(compute_knobs(precision, checkpointing, "train"))
            .chain([lora_knob(cfg.lora.as_ref(), "lora")])
            .collect(),
        resident: resident_rows(&[(rm, None)]),
    })
}

/// Runs stage 2 into `out`; `out/final/` holds the body, `reward_head.safetensors` and `reward.json`.
pub fn run<B: AutodiffBackend>(cfg: &RewardConfig, out: &Path, resume: bool, device: &B::Device) -> anyhow::Result<RewardModel<B::InnerBackend>> {
    cfg.train.validate()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    rlhf_train::config::write_resolved(out, cfg)?;
    B::seed(device, cfg.seed);
    let tok = Tokenizer::from_dir(&cfg.model.from)?;
    let fmt = ChatFormat::resolve(&tok, cfg.data.template)?;
    let body = Transformer::<B>::from_hf_dir(&cfg.model.from, device)?;
    let (train, eval, max_len) = cfg.data.prepare_split::<RankingSample>(Kind::Ranking, body.config.max_position_embeddings, cfg.seed, &tok, &fmt)?;
    if !train.iter().any(RankingSample::has_preference) {
        bail!("{}: no rankings with a preference to train on (records of one labelled completion train only DPO's `loss = \"kto\"`)", cfg.data.train.display());
    }
    let model = RewardModel { head: ScalarHead::init(body.config.hidden_size, device), model: body };
    let setup = TrainingSetup { lora: cfg.lora.as_ref(), precision: cfg.precision, gradient_checkpointing: cfg.train.gradient_checkpointing };
    let (model, lora) = setup.apply(model, cfg.seed, "reward", device)?;
    let pad_id = tok.pad_id_for(model.model.config.pad_token_id);
    eprintln!("reward: {} train / {} eval rankings", train.len(), eval.len());
    let objective = RewardObjective::<B> {
        order: EpochOrder::new(train.len(), cfg.seed),
        train,
        eval,
        batch_size: cfg.train.batch_size,
        micro_batch_size: cfg.train.micro_batch_size,
        pad_id,
        margin: cfg.margin,
        device: device.clone(),
    };
    let model = rlhf_train::train(model, &objective, &cfg.train, cfg.seed, out, resume, device)?.valid();
    if cfg.train.halt_after.is_some_and(|h| h < cfg.train.steps) {
        return Ok(model);
    }
    // Normalise: a bias so the reference set scores 0 on average (InstructGPT).
    let (reference, seqs) = reference_sequences(cfg.reference.as_deref(), max_len, &tok, &fmt, &objective.train)?;
    let (mean, std) = score_stats(&model, &seqs, pad_id, cfg.train.micro_batch_size * 4, device)?;
    let mut model = model;
    let bias = model.head.bias.val() - mean;
    model.head.bias = Param::from_tensor(bias);
    let info = RewardInfo {
        score_position: "last real token; the end-of-turn token is appended to every response".into(),
        template_end_of_turn: fmt.end_of_turn.clone(),
        normalization: Normalization { reference, count: seqs.len(), mean_before: mean, std, bias_added: -mean },
    };
    let dtype = rlhf_model::WeightDtype::for_export(cfg.export_dtype, Some(&cfg.model.from))?;
    let export = Export {
        dtype,
        source: &cfg.model.from,
        lora: lora.as_ref(),
        export_adapter: cfg.lora.as_ref().is_some_and(|l| l.export_adapter),
        extra_files: &[(REWARD_INFO_FILE, info.to_json())],
    };
    let model = rlhf_train::data_parallel::export_final(model, &out.join("final"), &export)?;
    eprintln!("reward: reference mean {mean:.4} (std {std:.4}) shifted to 0; final model ({dtype}) in {}", out.join("final").display());
    Ok(model)
}

impl rlhf_train::cli::StageConfig for RewardConfig {
    fn precision(&self) -> rlhf_runtime::Precision {
        self.precision
    }
}

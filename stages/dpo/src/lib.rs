//! Direct preference optimization: the policy trained on rankings against a frozen reference
//! (none for SimPO and ORPO), with no reward model and no sampling. DPO and its relatives (cDPO,
//! robust, hinge, IPO, SimPO, ORPO, KTO), and K-way rankings as one batch element: all pairs, or
//! the Plackett-Luce listwise loss.
//!
//! `run` writes `OUT/config.toml`, `OUT/reference_logps.json` (the precomputed reference pass),
//! `OUT/metrics.jsonl`, TensorBoard events, `OUT/checkpoints/` and the policy in `OUT/final/`.

pub mod config;
pub mod loss;
pub mod objective;
pub mod reference;

use std::path::Path;

use anyhow::{bail, Context};
use burn::module::AutodiffModule;
use rlhf_data::encode::RankingSample;
use rlhf_data::{ChatFormat, Kind, Tokenizer};
use rlhf_model::{CausalLm, Export, TrainingSetup};
use rlhf_runtime::AutodiffBackend;
use rlhf_train::memory::{compute_knobs, inference_bytes, lora_knob, resident_rows, update_rows, MemoryPlan, PlannedModel, Row, ShapeOf, Training, LM_LOSS_COPIES};

pub use config::{DpoConfig, DpoSettings, IpoNormalize, Loss, RankingLoss, ReferenceMode};
pub use objective::{DpoObjective, Example, ReferenceLogps};
pub use reference::{ReferenceSource, REFERENCE_LOGPS_FILE};

/// Decorrelates KTO's mismatched pairing from the data order drawn with the same seed.
const MISMATCH_STREAM: u64 = 0x004B_544F;

/// The reference the config asks for; None for a reference-free loss.
pub fn reference_source(cfg: &DpoConfig) -> Option<ReferenceSource> {
    if !cfg.dpo.loss.uses_reference() {
        return None;
    }
    Some(match &cfg.model.reference {
        Some(dir) => ReferenceSource::Folder(dir.clone()),
        None => ReferenceSource::StartingPolicy,
    })
}

/// Sequences of one forward: K responses per prompt, one more for KTO's mismatched pair.
fn sequences_per_prompt(cfg: &DpoConfig) -> (usize, &'static str) {
    let (k, assumed) = rlhf_data::formats::widest_ranking(&cfg.data.train, cfg.data.format).map_or((9, " assumed"), |k| (k, ""));
    (k + usize::from(cfg.dpo.loss == Loss::Kto), assumed)
}

/// The stage's memory plan: the policy, its gradients and AdamW moments, one micro-batch of
/// rankings (K sequences each, K read from the data; 9, the most we accept, before it exists), and
/// the reference — resident only when it runs online, sharing the policy's base with LoRA; a
/// precomputed reference is one pass before training, then a few floats per response.
pub fn memory_plan(cfg: &DpoConfig, shape_of: ShapeOf) -> anyhow::Result<MemoryPlan> {
    let shape = shape_of(&cfg.model.from)?;
    let training = Training::of(cfg.lora.as_ref(), shape.arch)?;
    let (precision, checkpointing) = (cfg.precision, cfg.train.gradient_checkpointing);
    let policy = PlannedModel { name: "policy".into(), training, cfg: shape.clone(), lm_head: true, precision, checkpointing };
    let (k, assumed) = sequences_per_prompt(cfg);
    let (micro, len) = (cfg.train.micro_batch_size, cfg.data.max_len);
    let sequences = micro * k;
    let source = reference_source(cfg);
    let reference_shape = match &source {
        Some(ReferenceSource::Folder(dir)) => shape_of(dir)?,
        _ => shape,
    };
    let reference = PlannedModel { name: "reference".into(), training: Training::Frozen, cfg: reference_shape.clone(), lm_head: true, precision, checkpointing: false };
    let forward = Row::new("reference forward", format!("{sequences} seq × {len} tokens, no autodiff"), inference_bytes(&reference_shape, sequences, len, true));
    let mut phases = Vec::new();
    let mut resident = vec![(policy.clone(), None)];
    match (source, cfg.dpo.reference) {
        (None, _) => {}
        (Some(source), ReferenceMode::Precomputed) => {
            let mut rows = vec![forward];
            if let ReferenceSource::Folder(dir) = source {
                rows.insert(0, Row::new("reference weights", format!("{}, loaded for the pass only", dir.display()), reference.weight_bytes()));
            }
            phases.push(("reference pass (once, before training)".to_string(), rows));
        }
        (Some(source), ReferenceMode::Online) => {
            let shares = (source == ReferenceSource::StartingPolicy && cfg.lora.is_some()).then_some("policy");
            resident.push((reference, shares));
            phases.push(("reference forward (each micro-batch)".to_string(), vec![forward]));
        }
    }
    phases.push((format!("training step ({k} sequences per prompt{assumed})"), update_rows(&policy, sequences, len, LM_LOSS_COPIES)));
    let mut knobs = vec![format!("train.micro_batch_size (now {micro} prompts of {k} sequences)"), format!("data.max_len (now {len})")];
    knobs.extend(compute_knobs(precision, checkpointing, "train"));
    knobs.push(lora_knob(cfg.lora.as_ref(), "lora"));
    if cfg.dpo.reference == ReferenceMode::Online && cfg.dpo.loss.uses_reference() {
        knobs.push("dpo.reference = \"precomputed\" (no reference model during training)".into());
    }
    Ok(MemoryPlan { stage: "dpo".into(), phases, knobs, resident: resident_rows(&resident) })
}

/// Rankings of `data` as examples (with KTO's mismatched sequences).
fn examples(rankings: Vec<RankingSample>, cfg: &DpoConfig, max_len: usize) -> Vec<Example> {
    let mismatched = if cfg.dpo.loss == Loss::Kto && rankings.len() > 1 {
        objective::mismatched_sequences(&rankings, cfg.seed ^ MISMATCH_STREAM, max_len).into_iter().map(Some).collect()
    } else {
        vec![None; rankings.len()]
    };
    rankings.into_iter().zip(mismatched).map(|(ranking, mismatched)| Example { ranking, mismatched }).collect()
}

/// The reference's log-probabilities: the stored pass when its key matches, else one pass now
/// (and stored); or the frozen model itself when it runs online.
#[allow(clippy::too_many_arguments)]
fn reference_logps<B: AutodiffBackend>(
    cfg: &DpoConfig,
    policy: &CausalLm<B>,
    train: &[Example],
    eval: &[Example],
    pad_id: u32,
    out: &Path,
    device: &B::Device,
) -> anyhow::Result<ReferenceLogps<B::InnerBackend>> {
    let Some(source) = reference_source(cfg) else {
        eprintln!("dpo: loss `{}` uses no reference model", cfg.dpo.loss.name());
        return Ok(ReferenceLogps::None);
    };
    let lora_base = cfg.lora.is_some();
    let load = |dir: &Path| -> anyhow::Result<CausalLm<B::InnerBackend>> { Ok(CausalLm::<B::InnerBackend>::from_hf_dir(dir, device)?.in_precision(cfg.precision)) };
    // The starting policy, or its base: the policy's own (shared) weights.
    let starting = || lora_base.then(|| CausalLm { model: policy.model.without_lora(), lm_head: policy.lm_head.clone(), lm_head_codes: None }.valid());
    if cfg.dpo.reference == ReferenceMode::Online {
        let model = match &source {
            ReferenceSource::Folder(dir) => load(dir)?,
            ReferenceSource::StartingPolicy => match starting() {
                Some(base) => {
                    eprintln!("dpo: reference = the policy's base with adapters off (no second model)");
                    base
                }
                None => load(&cfg.model.from)?,
            },
        };
        return Ok(ReferenceLogps::Online(model));
    }
    let dir = match &source {
        ReferenceSource::Folder(dir) => dir.clone(),
        ReferenceSource::StartingPolicy => cfg.model.from.clone(),
    };
    let key = reference::cache_key(&dir, lora_base && source == ReferenceSource::StartingPolicy, cfg.precision, train, eval)?;
    if let Some(cache) = reference::load_cache(out, &key)? {
        // One value per sequence of every example: a file edited by hand is computed again, not indexed out of bounds.
        let fits = |values: &[Vec<f32>], examples: &[Example]| values.len() == examples.len() && values.iter().zip(examples).all(|(v, e)| v.len() == e.sequence_count());
        if fits(&cache.train, train) && fits(&cache.eval, eval) {
            eprintln!("dpo: reference log-probs reused from {} (key {key})", out.join(REFERENCE_LOGPS_FILE).display());
            return Ok(ReferenceLogps::Precomputed { train: cache.train, eval: cache.eval });
        }
        eprintln!("dpo: {} does not hold one value per sequence; computing it again", out.join(REFERENCE_LOGPS_FILE).display());
    }
    let clock = std::time::Instant::now();
    let model = match &source {
        ReferenceSource::Folder(dir) => load(dir)?,
        ReferenceSource::StartingPolicy => starting().unwrap_or_else(|| policy.valid()),
    };
    let chunk = cfg.train.micro_batch_size;
    let cache = reference::ReferenceCache {
        key,
        train: objective::reference_pass(&model, train, chunk, pad_id, device)?,
        eval: objective::reference_pass(&model, eval, chunk, pad_id, device)?,
    };
    reference::save_cache(out, &cache)?;
    eprintln!("dpo: reference log-probs of {} + {} prompts computed in {:.1}s → {}", train.len(), eval.len(), clock.elapsed().as_secs_f64(), out.join(REFERENCE_LOGPS_FILE).display());
    Ok(ReferenceLogps::Precomputed { train: cache.train, eval: cache.eval })
}

/// Runs the stage into `out`; `out/final/` holds the policy.
pub fn run<B: AutodiffBackend>(cfg: &DpoConfig, out: &Path, resume: bool, device: &B::Device) -> anyhow::Result<CausalLm<B::InnerBackend>> {
    cfg.validate()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    rlhf_train::config::write_resolved(out, cfg)?;
    B::seed(device, cfg.seed);
    let tok = Tokenizer::from_dir(&cfg.model.from)?;
    let fmt = ChatFormat::resolve(&tok, cfg.data.template)?;
    let model = CausalLm::<B>::from_hf_dir(&cfg.model.from, device)?;
    let (train, eval, max_len) = cfg.data.prepare_split::<RankingSample>(Kind::Ranking, model.config().max_position_embeddings, cfg.seed, &tok, &fmt)?;
    let (train, eval) = (examples(train, cfg, max_len), examples(eval, cfg, max_len));
    if !train.iter().any(|e| e.trains(cfg.dpo.loss)) {
        bail!(
            "{}: nothing to train `loss = \"{}\"` on: no ranking states a preference (records of one labelled completion train only `loss = \"kto\"`)",
            cfg.data.train.display(),
            cfg.dpo.loss.name()
        );
    }
    let setup = TrainingSetup { lora: cfg.lora.as_ref(), precision: cfg.precision, gradient_checkpointing: cfg.train.gradient_checkpointing };
    let (model, lora) = setup.apply(model, cfg.seed, "dpo", device)?;
    let pad_id = tok.pad_id_for(model.config().pad_token_id);
    eprintln!(
        "dpo: loss {} ({}), β = {}; {} train / {} eval rankings",
        cfg.dpo.loss.name(),
        if cfg.dpo.ranking_loss == RankingLoss::PlackettLuce { "Plackett-Luce" } else { "all pairs" },
        cfg.dpo.beta,
        train.len(),
        eval.len()
    );
    let reference = reference_logps::<B>(cfg, &model, &train, &eval, pad_id, out, device)?;
    let objective = DpoObjective::<B>::new(train, eval, cfg.dpo.clone(), reference, &cfg.train, cfg.seed, pad_id, device.clone());
    let model = rlhf_train::train(model, &objective, &cfg.train, cfg.seed, out, resume, device)?.valid();
    if cfg.train.halt_after.is_some_and(|h| h < cfg.train.steps) {
        return Ok(model);
    }
    let dtype = rlhf_model::WeightDtype::for_export(cfg.export_dtype, Some(&cfg.model.from))?;
    let export_adapter = cfg.lora.as_ref().is_some_and(|l| l.export_adapter);
    let model = rlhf_train::data_parallel::export_final(model, &out.join("final"), &Export { dtype, source: &cfg.model.from, lora: lora.as_ref(), export_adapter, extra_files: &[] })?;
    eprintln!("dpo: final model ({dtype}) in {}", out.join("final").display());
    Ok(model)
}

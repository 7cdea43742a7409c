//! The one training loop. Stages plug in an [`Objective`]; the loop reads top to bottom like
//! nanoGPT's train.py: lr from the schedule → micro-batches (loss / normaliser, gradients summed,
//! so accumulation averages) → the step ([`Trainable::step`]: non-finite check, global-norm clip,
//! AdamW) → log → eval / checkpoint.

use std::path::Path;
use std::time::Instant;

use burn::module::AutodiffModule;
use rlhf_runtime::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{latest_checkpoint, load_checkpoint, save_checkpoint, TrainState};
use crate::data_parallel::{check_replicas, check_split, my_share};
use crate::error::{Result, TrainError};
use crate::metrics::MetricsLog;
use crate::optim::OptimConfig;
use crate::schedule::{get_lr, LrSchedule};
use crate::step::Trainable;

/// The `[train]` section shared by the stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Examples per optimizer step.
    pub batch_size: usize,
    /// Examples per forward/backward; gradients of `batch_size / micro_batch_size` micro-batches are averaged.
    pub micro_batch_size: usize,
    #[serde(flatten)]
    pub schedule: LrSchedule,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default = "one")]
    pub log_every: usize,
    /// Evaluate on the held-out split every N steps (0: only at the end).
    #[serde(default)]
    pub eval_every: usize,
    /// Checkpoint every N steps (0: only at the end).
    #[serde(default)]
    pub save_every: usize,
    #[serde(default = "two")]
    pub keep_checkpoints: usize,
    /// Stop after this step as if interrupted (time-boxed runs; resume tests).
    #[serde(default)]
    pub halt_after: Option<usize>,
    /// Recompute each decoder block in backward instead of keeping its activations.
    #[serde(default)]
    pub gradient_checkpointing: bool,
}

fn one() -> usize {
    1
}
fn two() -> usize {
    2
}

impl TrainConfig {
    /// Checks that need no data, so a bad config fails before any loading or tokenizer training.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Other(m));
        if self.steps == 0 || self.batch_size == 0 {
            return bad("train.steps and train.batch_size must be positive".into());
        }
        if self.micro_batch_size == 0 || !self.batch_size.is_multiple_of(self.micro_batch_size) {
            return bad(format!(
                "train.batch_size ({}) must be a multiple of train.micro_batch_size ({})",
                self.batch_size, self.micro_batch_size
            ));
        }
        if !(self.schedule.lr > 0.0 && self.schedule.lr.is_finite()) {
            return bad(format!("train.lr must be a positive number, found {}", self.schedule.lr));
        }
        if self.log_every == 0 {
            return bad("train.log_every must be at least 1".into());
        }
        Ok(())
    }
}

/// Named values a loss reports alongside itself (summed over micro-batches by the loop).
pub type Diagnostics = Vec<(&'static str, f64)>;

/// What a stage trains: its micro-batches and its loss.
pub trait Objective<B: AutodiffBackend, M: AutodiffModule<B>> {
    type Batch;

    /// The micro-batches of optimizer step `step`: a pure function of the step, so a resumed run
    /// sees exactly the data an uninterrupted one would.
    fn step_batches(&self, step: usize) -> Vec<Self::Batch>;

    /// What a step's micro-batch losses are averaged over (target tokens, prompts…).
    fn normalizer(&self, batches: &[Self::Batch]) -> f64;

    /// Tokens processed in a micro-batch (for tokens/s).
    fn tokens(&self, batch: &Self::Batch) -> usize;

    /// Loss of one micro-batch already divided by `normalizer`, and diagnostics summed the same way
    /// (the loop adds them over micro-batches).
    fn loss(&self, model: &M, batch: &Self::Batch, normalizer: f64) -> Result<(Tensor<B, 1>, Diagnostics)>;

    /// Metrics on the held-out split (names already prefixed `eval_`).
    fn evaluate(&self, model: &M::InnerModule) -> Result<Vec<(String, f64)>>;
}

/// Trains `model` for `cfg.steps` steps in `run` (checkpoints, metrics.jsonl, event files).
/// With `resume`, continues from the newest complete checkpoint.
pub fn train<B, M, O>(model: M, objective: &O, cfg: &TrainConfig, seed: u64, run: &Path, resume: bool, device: &B::Device) -> Result<M>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + rlhf_model::Adapted<B>,
    O: Objective<B, M>,
{
    cfg.validate()?;
    let world = rlhf_dist::world();
    check_split(cfg.batch_size, cfg.micro_batch_size, world.size())?;
    let writer = world.is_writer();
    if world.is_distributed() && writer {
        let per_rank = cfg.batch_size / cfg.micro_batch_size / world.size();
        eprintln!("data-parallel: {} ranks, each {per_rank} micro-batch(es) of {} per step (global batch {})", world.size(), cfg.micro_batch_size, cfg.batch_size);
    }
    let mut model = Trainable::new("model", model, &cfg.optim, device);
    let mut state = TrainState { step: 0, seed, examples_seen: 0 };
    let mut last_checkpoint = String::from("none");
    if resume {
        if let Some(dir) = latest_checkpoint(run) {
            state = load_checkpoint(&dir, &mut [&mut model])?;
            last_checkpoint = dir.display().to_string();
            if writer {
                eprintln!("resuming from {} (step {})", dir.display(), state.step);
            }
        }
    }
    // Rank 0 writes the run's files; the others compute and wait for it.
    let mut metrics = match writer {
        true => Some(MetricsLog::open(run, "step", resume.then_some(state.step))?),
        false => None,
    };
    let started = Instant::now();
    let first_step = state.step;
    let progress = Progress::new(state.step, cfg.steps, writer);
    let mut tokens_since_log = 0usize;
    let mut log_clock = Instant::now();
    // Data-parallel: seconds spent summing gradients since the last log line.
    let mut sum_secs = 0.0;

    for step in state.step..cfg.steps {
        let lr = get_lr(&cfg.schedule, step, cfg.steps);
        // Random draws inside the step (LoRA dropout) are a pure function of (seed, step, rank), so
        // a resumed run draws what an uninterrupted one would.
        B::seed(device, step_seed(seed, step) ^ rank_salt(world.rank()));
        let batches = objective.step_batches(step);
        // The whole step's normaliser, on every rank: the summed gradients then average over it.
        let normalizer = objective.normalizer(&batches);
        let mut diagnostics: Vec<(&'static str, f64)> = Vec::new();
        for batch in &my_share(batches, world.rank(), world.size()) {
            let (micro_loss, micro_diag) = objective.loss(&model.module, batch, normalizer)?;
            let value = micro_loss.clone().into_scalar().elem::<f64>();
            for (k, v) in micro_diag {
                match diagnostics.iter_mut().find(|(name, _)| *name == k) {
                    Some((_, acc)) => *acc += v,
                    None => diagnostics.push((k, v)),
                }
            }
            model.backward(micro_loss, value);
            tokens_since_log += objective.tokens(batch);
        }
        let done = model.step(lr, step + 1, &last_checkpoint)?;
        sum_secs += done.sum.map_or(0.0, |s| s.secs);
        if world.is_distributed() {
            tokens_since_log = sum_diagnostics(world, &mut diagnostics, tokens_since_log);
        }
        if step == first_step {
            check_replicas(world, &model.module, model.name, step + 1)?;
        }
        state.step = step + 1;
        state.examples_seen += cfg.batch_size;

        if state.step.is_multiple_of(cfg.log_every) || state.step == cfg.steps {
            let secs = log_clock.elapsed().as_secs_f64().max(1e-9);
            let mut values: Vec<(String, f64)> = vec![
                ("loss".into(), done.loss),
                ("lr".into(), lr),
                ("grad_norm".into(), done.grad_norm),
                ("tokens_per_s".into(), tokens_since_log as f64 / secs),
            ];
            values.extend(diagnostics.iter().map(|(k, v)| (k.to_string(), *v)));
            if let Some(sum) = done.sum {
                // The exchange's share of the wall time, and what each rank sent per step.
                values.push(("dp/sum_share".into(), sum_secs / secs));
                values.push(("dp/sum_mb_per_step".into(), sum.bytes as f64 / 1e6));
            }
            sum_secs = 0.0;
            if let Some(metrics) = &mut metrics {
                metrics.log(state.step, &values)?;
            }
            let per_step = started.elapsed().as_secs_f64() / (state.step - first_step) as f64;
            progress.report(
                state.step,
                &format!("loss {:.4} lr {lr:.2e} grad_norm {:.3} {:.0} tok/s", done.loss, done.grad_norm, tokens_since_log as f64 / secs),
                per_step * (cfg.steps - state.step) as f64,
            );
            tokens_since_log = 0;
            log_clock = Instant::now();
        }
        let last = state.step == cfg.steps;
        if writer && ((cfg.eval_every > 0 && state.step.is_multiple_of(cfg.eval_every)) || last) {
            let eval = objective.evaluate(&model.module.valid())?;
            if !eval.is_empty() {
                progress.line(&format!("step {:>6} {}", state.step, eval.iter().map(|(k, v)| format!("{k} {v:.4}")).collect::<Vec<_>>().join(" ")));
                if let Some(metrics) = &mut metrics {
                    metrics.log(state.step, &eval)?;
                }
            }
        }
        if (cfg.save_every > 0 && state.step.is_multiple_of(cfg.save_every)) || last {
            check_replicas(world, &model.module, model.name, state.step)?;
            let saved = world.writer_first(|| save_checkpoint(run, state.step, &state, cfg.keep_checkpoints, &[&model]))?;
            let dir = crate::checkpoint::step_dir(run, state.step);
            if saved.is_some() {
                progress.line(&format!("checkpoint {} ({})", dir.display(), crate::checkpoint::human_size(crate::checkpoint::dir_size(&dir))));
            }
            last_checkpoint = dir.display().to_string();
        }
        if cfg.halt_after == Some(state.step) && !last {
            progress.line(&format!("halting after step {} (train.halt_after)", state.step));
            break;
        }
    }
    progress.finish();
    Ok(model.module)
}

/// Sums the step's diagnostics and token count over the ranks (for the log; every rank reports the
/// same names, from the same objective); returns the summed token count.
fn sum_diagnostics(world: &rlhf_dist::World, diagnostics: &mut [(&'static str, f64)], tokens: usize) -> usize {
    let mut values: Vec<f64> = diagnostics.iter().map(|(_, v)| *v).chain([tokens as f64]).collect();
    world.sum_f64(&mut values);
    for ((_, v), total) in diagnostics.iter_mut().zip(&values) {
        *v = *total;
    }
    values[diagnostics.len()] as usize
}

/// Mixed into the step's seed so ranks draw different dropout masks (rank 0's seed is unchanged,
/// so a single process draws what it always did).
fn rank_salt(rank: usize) -> u64 {
    (rank as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
}

/// The backend RNG's seed for optimizer step `step` of a run seeded with `seed`.
pub fn step_seed(seed: u64, step: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(step as u64)
}

/// A progress bar (step, loss, tokens/s, ETA) on a terminal; plain log lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: usize,
    /// Only rank 0 reports; the other ranks' lines would repeat it.
    shown: bool,
}

impl Progress {
    fn new(start: usize, total: usize, shown: bool) -> Self {
        use std::io::IsTerminal;
        let bar = (shown && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} eta {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_position(start as u64);
            bar
        });
        Self { bar, total, shown }
    }

    fn report(&self, step: usize, msg: &str, eta_secs: f64) {
        if !self.shown {
            return;
        }
        match &self.bar {
            Some(bar) => {
                bar.set_position(step as u64);
                bar.set_message(msg.to_string());
            }
            None => eprintln!("step {step:>6}/{} {msg} eta {eta_secs:.0}s", self.total),
        }
    }

    fn line(&self, msg: &str) {
        if !self.shown {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

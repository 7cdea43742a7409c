//! The loop every stage-3 trainer runs (PPO, the critic-free estimators): iterate → refuse
//! non-finite metrics → log (`metrics.jsonl` + TensorBoard, by iteration) → samples
//! (`samples.jsonl`) → checkpoint → halt; `--resume` continues from the newest complete checkpoint
//! and cuts the logs back to it, so a resumed run's files equal an uninterrupted one's.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use rlhf_train::checkpoint::latest_checkpoint;
use rlhf_train::metrics::{truncate_jsonl, MetricsLog};
use serde_json::Value;

/// What one iteration produced.
pub struct Iteration {
    pub metrics: Vec<(String, f64)>,
    /// Sample lines for `samples.jsonl` (the loop adds `"iteration"`), when they were asked for.
    pub samples: Vec<Value>,
}

/// A stage-3 trainer as the loop drives it.
pub trait Iterative {
    /// Iterations completed (restored by `load`).
    fn done(&self) -> usize;
    /// Runs iteration `done()` and counts it; `with_samples`: return sample lines too.
    fn iterate(&mut self, with_samples: bool) -> anyhow::Result<Iteration>;
    /// Writes a checkpoint of the trainer's state into `out`.
    fn save(&mut self, out: &Path) -> anyhow::Result<PathBuf>;
    fn load(&mut self, dir: &Path) -> anyhow::Result<()>;
}

/// When the loop logs, samples, saves and stops.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub stage: &'static str,
    pub iterations: usize,
    pub log_every: usize,
    /// 0: only at the end.
    pub save_every: usize,
    /// 0: never; else every N iterations and after the first.
    pub sample_every: usize,
    pub halt_after: Option<usize>,
    /// Metrics shown on the console line.
    pub console: Vec<String>,
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Finished,
    /// Stopped by `halt_after` (a later `--resume` continues).
    Halted,
}

/// Runs `t` to `schedule.iterations` in `out`.
pub fn run_iterations(t: &mut impl Iterative, out: &Path, resume: bool, s: &Schedule) -> anyhow::Result<Ended> {
    if resume {
        if let Some(dir) = latest_checkpoint(out) {
            t.load(&dir)?;
            eprintln!("resuming from {} (iteration {})", dir.display(), t.done());
        }
    }
    let resumed_at = resume.then_some(t.done());
    let mut metrics = MetricsLog::open(out, "iteration", resumed_at)?;
    let samples_path = out.join("samples.jsonl");
    truncate_jsonl(&samples_path, "iteration", resumed_at)?;
    let mut samples = std::fs::OpenOptions::new().create(true).append(true).open(&samples_path).with_context(|| format!("opening {}", samples_path.display()))?;
    let (started, first) = (Instant::now(), t.done());
    while t.done() < s.iterations {
        let next = t.done() + 1;
        let with_samples = s.sample_every > 0 && (next.is_multiple_of(s.sample_every) || next == 1);
        let Iteration { metrics: values, samples: lines } = t.iterate(with_samples)?;
        let done = t.done();
        if let Some((k, v)) = values.iter().find(|(_, v)| !v.is_finite()) {
            bail!("iteration {done}: {k} is {v} (metrics {values:?}); the last good checkpoint is kept");
        }
        if done.is_multiple_of(s.log_every) || done == s.iterations {
            metrics.log(done, &values)?;
            let get = |k: &str| values.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
            let shown: Vec<String> = s.console.iter().filter_map(|k| get(k).map(|v| format!("{k} {v:.3}"))).collect();
            let per = started.elapsed().as_secs_f64() / (done - first) as f64;
            eprintln!("iter {done:>4}/{} {} eta {:.0}s", s.iterations, shown.join(" "), per * (s.iterations - done) as f64);
        }
        for mut line in lines {
            if let Value::Object(map) = &mut line {
                map.insert("iteration".into(), done.into());
            }
            writeln!(samples, "{line}").with_context(|| format!("writing {}", samples_path.display()))?;
        }
        let last = done == s.iterations;
        if (s.save_every > 0 && done.is_multiple_of(s.save_every)) || last {
            t.save(out)?;
        }
        if s.halt_after == Some(done) && !last {
            eprintln!("halting after iteration {done} ({}.halt_after)", s.stage);
            return Ok(Ended::Halted);
        }
    }
    Ok(Ended::Finished)
}

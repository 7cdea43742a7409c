//! `rlhf pipeline run CONFIG --out DIR`: every stage from one TOML, each stage's `final/` feeding
//! the next, in-process (the stage binaries stay available on their own).
//!
//! The config has one section per stage, each exactly the stage binary's config, plus `[data]`
//! (the embedded demo set), `[eval]` and `[report]`. The string `{run}` anywhere in it stands for
//! the output directory, which is how the stages are wired: `[sft] model.from = "{run}/pretrain/final"`.
//!
//! Layout: `DIR/{data,pretrain,sft,reward,dpo,grpo,ppo}/`, `DIR/eval.json`, `DIR/report.md`, and the resolved
//! config `DIR/pipeline.toml`. A stage whose output is complete (its `final/`, written by an atomic
//! rename) is skipped — unless its section of the config changed since it ran, or a stage before it
//! was redone since (`DIR/pipeline_state.json` remembers both); a stage that runs makes every later
//! stage run again.
//!
//! The config's sections are in `sections.rs`; the training stages are registered in `stages.rs`, one
//! `TrainingStage` impl each.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use rlhf_runtime::AutodiffBackend;
use rlhf_runtime::{dispatch, DeviceSpec, Precision, Runtime, Task};
use serde::{Deserialize, Serialize};

pub use crate::sections::{DataSection, DemoData, PipelineConfig, ReportConfig, Stage, WordProblemsData};
use crate::stages::{OutputShape, PlanOf, PrecisionOf, RunStage};

#[derive(Debug, Clone, Args)]
pub struct PipelineArgs {
    pub config: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// Run this stage and every later one again, even if complete.
    #[arg(long, value_enum)]
    pub from: Option<Stage>,
    /// Continue an interrupted stage from its newest checkpoint.
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Override a config value, e.g. `--set ppo.ppo.iterations=10` (repeatable).
    #[arg(long = "set")]
    pub sets: Vec<String>,
    /// Run even when a stage's memory plan predicts more than the device has free.
    #[arg(long)]
    pub force: bool,
    /// f32 or bf16 for every training stage (sets `precision` in each stage's section).
    #[arg(long)]
    pub precision: Option<Precision>,
}


/// Replaces `{run}` in every string of `value`.
fn substitute(value: &mut toml::Value, run: &str) {
    match value {
        toml::Value::String(s) => *s = s.replace("{run}", run),
        toml::Value::Array(a) => a.iter_mut().for_each(|v| substitute(v, run)),
        toml::Value::Table(t) => t.iter_mut().for_each(|(_, v)| substitute(v, run)),
        _ => {}
    }
}

/// What a stage's run depended on in the config: its section with `{run}` unfilled and without
/// `halt_after` (which says when to stop, not what to compute).
fn fingerprint(section: Option<&toml::Value>) -> String {
    fn strip(v: &mut toml::Value) {
        if let toml::Value::Table(t) = v {
            t.remove("halt_after");
            t.iter_mut().for_each(|(_, v)| strip(v));
        }
    }
    let mut v = section.cloned().unwrap_or(toml::Value::Table(toml::Table::new()));
    strip(&mut v);
    v.to_string()
}

/// Reads CONFIG, applies `--set`, fills in `{run}`, and parses it. Also returns the resolved table
/// and each stage's [`fingerprint`].
pub fn load(path: &Path, sets: &[String], precision: Option<Precision>, out: &Path) -> anyhow::Result<(PipelineConfig, toml::Table, BTreeMap<Stage, String>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut table: toml::Table = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    for s in sets {
        rlhf_train::config::apply_override(&mut table, s)?;
    }
    if let Some(p) = precision {
        for stage in Stage::all().filter(|s| s.is_training()) {
            if let Some(section) = table.get_mut(stage.name()).and_then(toml::Value::as_table_mut) {
                section.insert("precision".into(), toml::Value::String(p.to_string()));
            }
        }
    }
    let fingerprints = Stage::all().map(|s| (s, fingerprint(table.get(s.name())))).collect();
    let mut value = toml::Value::Table(table);
    substitute(&mut value, &out.display().to_string());
    let toml::Value::Table(table) = value else { unreachable!("a table stays a table") };
    let cfg: PipelineConfig = toml::Value::Table(table.clone()).try_into().with_context(|| format!("{}", path.display()))?;
    for stage in cfg.stages() {
        if !cfg.has_section(stage) {
            anyhow::bail!("{}: stage `{}` is listed but has no [{}] section", path.display(), stage.name(), stage.name());
        }
    }
    Ok((cfg, table, fingerprints))
}

/// One finished stage in `pipeline_state.json`: the fingerprint of the config it ran with, and
/// when it finished relative to the other stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Finished {
    config: String,
    seq: u64,
}

/// `DIR/pipeline_state.json`: which stages finished, in what order, from which config. A stage
/// leaves it when it starts over and enters it when it finishes.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Ledger {
    finished: BTreeMap<Stage, Finished>,
}

impl Ledger {
    fn path(out: &Path) -> PathBuf {
        out.join("pipeline_state.json")
    }

    fn read(out: &Path) -> anyhow::Result<Self> {
        let path = Self::path(out);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| format!("{}: not a pipeline state file (delete it to rerun every stage)", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn write(&self, out: &Path) -> anyhow::Result<()> {
        Ok(rlhf_files::write_atomic(&Self::path(out), serde_json::to_string_pretty(self)?.as_bytes())?)
    }

    /// Why `stage`'s complete output no longer matches the config (`earlier` = the stages before
    /// it in this pipeline). A stage the ledger never saw finish is judged by its output alone.
    fn stale(&self, stage: Stage, earlier: &[Stage], config: &str) -> Option<String> {
        let done = self.finished.get(&stage)?;
        if done.config != config {
            return Some(format!("its [{}] section changed since it ran", stage.name()));
        }
        let redone = earlier.iter().find(|s| self.finished.get(s).is_some_and(|e| e.seq > done.seq))?;
        Some(format!("`{}` was redone after it ran", redone.name()))
    }

    fn started(&mut self, stage: Stage) {
        self.finished.remove(&stage);
    }

    fn finished(&mut self, stage: Stage, config: &str) {
        let seq = self.finished.values().map(|f| f.seq).max().unwrap_or(0) + 1;
        self.finished.insert(stage, Finished { config: config.to_string(), seq });
    }
}


struct Pipeline {
    cfg: PipelineConfig,
    args: PipelineArgs,
    fingerprints: BTreeMap<Stage, String>,
}

impl Pipeline {
    fn run_stage<B: AutodiffBackend>(&self, stage: Stage, resume: bool, device: &B::Device) -> anyhow::Result<String> {
        let out = &self.args.out;
        let dir = stage.output(out).0;
        let cfg = &self.cfg;
        Ok(match stage {
            Stage::Data => {
                cfg.data.as_ref().expect("checked in load").write(&dir)?
            }
            Stage::Eval => {
                let eval = cfg.eval.as_ref().expect("checked in load");
                let v = crate::eval::evaluate_run::<B::InnerBackend>(out, eval, device)?;
                let mut line = crate::eval::summary_line(&v);
                if let Some(judge) = &eval.judge {
                    let j = crate::judge::judge_run::<B::InnerBackend>(out, eval, judge, device)?;
                    line.push_str(&format!("; judge ({} = A, SFT = B): {}", j["policy"].as_str().unwrap_or("policy"), crate::judge::summary_line(&j)));
                }
                line
            }
            Stage::Report => {
                let samples = cfg.report.as_ref().map_or(6, |r| r.samples);
                crate::report::write_report(out, samples)?;
                format!("plots in {}", out.join("plots").display())
            }
            training => training.training(RunStage::<B> { cfg, dir: &dir, resume, device }).expect("every other stage trains")?,
        })
    }

    fn run<B: AutodiffBackend>(&self, device: &B::Device) -> anyhow::Result<()> {
        let out = &self.args.out;
        let stages = self.cfg.stages();
        let mut ledger = Ledger::read(out)?;
        let mut rerun = false;
        let started = Instant::now();
        for (i, &stage) in stages.iter().enumerate() {
            let (output, marker) = stage.output(out);
            let config = &self.fingerprints[&stage];
            let mut forced = rerun || self.args.from.is_some_and(|f| stage >= f);
            if let Some(why) = ledger.stale(stage, &stages[..i], config).filter(|_| !forced) {
                eprintln!("{}: {why}; running it again", stage.name());
                forced = true;
            }
            if marker.exists() && !forced {
                eprintln!("[{}/{}] {}: complete, skipped ({})", i + 1, stages.len(), stage.name(), output.display());
                continue;
            }
            // A forced stage starts over; an unfinished one resumes when asked to.
            let resume = self.args.resume && !forced && !marker.exists();
            if !resume {
                ledger.started(stage);
                ledger.write(out)?;
                if !forced && !marker.exists() && rlhf_train::checkpoint::latest_checkpoint(&output).is_some() {
                    eprintln!("{}: an unfinished run is in {}; starting over (pass --resume to continue it)", stage.name(), output.display());
                }
                if output.is_dir() {
                    std::fs::remove_dir_all(&output).with_context(|| format!("removing {}", output.display()))?;
                } else if output.exists() {
                    std::fs::remove_file(&output).with_context(|| format!("removing {}", output.display()))?;
                }
            }
            eprintln!("[{}/{}] {}: {}…", i + 1, stages.len(), stage.name(), if resume { "resuming" } else { "running" });
            let clock = Instant::now();
            let summary = self.run_stage::<B>(stage, resume, device).with_context(|| format!("stage `{}`", stage.name()))?;
            let secs = clock.elapsed().as_secs_f64();
            if marker.exists() {
                ledger.finished(stage, config);
                ledger.write(out)?;
                println!("{}: done in {:.0}s — {summary} → {}", stage.name(), secs, output.display());
            } else {
                println!("{}: stopped early after {:.0}s (halt_after); run again with --resume to finish", stage.name(), secs);
                return Ok(());
            }
            rerun = true;
        }
        println!("pipeline finished in {:.0}s; report: {}", started.elapsed().as_secs_f64(), out.join("report.md").display());
        Ok(())
    }
}

/// The shape the model folder `dir` has or will have: its config.json when it exists, else — when
/// it is an earlier stage's `final/`, not written yet — the shape of that stage's starting model
/// (a stage's output keeps its input's shape).
fn planned_shape(cfg: &PipelineConfig, out: &Path, dir: &Path) -> anyhow::Result<rlhf_model::TransformerConfig> {
    if dir.join("config.json").exists() {
        return rlhf_train::memory::shape_from_dir(dir);
    }
    let shape_of = |d: &Path| planned_shape(cfg, out, d);
    match Stage::all().find(|s| dir == out.join(s.name()).join("final")).and_then(|s| s.training(OutputShape(cfg, &shape_of))).flatten() {
        Some(shape) => shape,
        None => rlhf_train::memory::shape_from_dir(dir),
    }
}

/// The memory plan of every training stage the pipeline lists, in order.
pub fn memory_plans(cfg: &PipelineConfig, out: &Path) -> anyhow::Result<Vec<rlhf_train::memory::MemoryPlan>> {
    let shape_of = |d: &Path| planned_shape(cfg, out, d);
    let mut plans = Vec::new();
    for stage in cfg.stages() {
        if let Some(Some(plan)) = stage.training(PlanOf(cfg, &shape_of)) {
            plans.push(plan.with_context(|| format!("memory plan of stage `{}`", stage.name()))?);
        }
    }
    Ok(plans)
}

impl Task for Pipeline {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> anyhow::Result<()> {
        Pipeline::run::<B>(&self, &device)
    }
}

pub fn run(args: PipelineArgs) -> anyhow::Result<()> {
    let (cfg, resolved, fingerprints) = load(&args.config, &args.sets, args.precision, &args.out)?;
    // Every stage's plan is checked before the first one starts (or anything is written).
    let available = rlhf_train::memory::available_bytes(args.device);
    for plan in memory_plans(&cfg, &args.out)? {
        eprint!("{}", plan.table());
        plan.check(args.device, available, args.force)?;
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    rlhf_files::write_atomic(&args.out.join("pipeline.toml"), toml::to_string_pretty(&resolved)?.as_bytes())?;
    let mut precisions: Vec<Option<Precision>> = Stage::all().filter_map(|s| s.training(PrecisionOf(&cfg))).collect();
    precisions.push(cfg.eval.as_ref().map(|e| e.precision));
    let precision = if precisions.contains(&Some(Precision::Bf16)) { Precision::Bf16 } else { Precision::F32 };
    dispatch(Runtime { device: args.device, precision }, Pipeline { cfg, args, fingerprints })?
}

/// `rlhf plan CONFIG`: the memory plan of each stage of a pipeline config, from config.json files
/// alone (no weights read, nothing written).
#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    pub config: PathBuf,
    /// The device whose free memory the plans are checked against.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Override a config value, e.g. `--set sft.model.from=path/to/model` (repeatable).
    #[arg(long = "set")]
    pub sets: Vec<String>,
    /// What `{run}` stands for (earlier stages' outputs are planned with their inputs' shapes).
    #[arg(long, default_value = "runs/plan")]
    pub out: PathBuf,
    /// f32 or bf16 for every training stage.
    #[arg(long)]
    pub precision: Option<Precision>,
}

/// Prints every plan; fails (non-zero exit) when one does not fit the device's free memory.
pub fn plan(args: &PlanArgs) -> anyhow::Result<()> {
    let (cfg, _, _) = load(&args.config, &args.sets, args.precision, &args.out)?;
    let available = rlhf_train::memory::available_bytes(args.device);
    let free = available.map_or("unknown".into(), rlhf_train::memory::gib);
    let mut refused = Vec::new();
    for plan in memory_plans(&cfg, &args.out)? {
        print!("{}", plan.table());
        let verdict = plan.check(args.device, available, false);
        println!("  → {}\n", if verdict.is_ok() { format!("fits ({free} free on {})", args.device) } else { format!("does not fit ({free} free on {})", args.device) });
        if let Err(e) = verdict {
            refused.push(e.to_string());
        }
    }
    if !refused.is_empty() {
        anyhow::bail!("{}", refused.join("\n"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("p.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn run_placeholder_is_filled_and_stages_follow_the_sections() {
        let tmp = tempfile::tempdir().unwrap();
        let p = write(tmp.path(), "[data]\npretrain_docs = 1\nsft = 1\nrankings = 1\nprompts = 1\n[eval]\nprompts = \"{run}/data/heldout.jsonl\"\nmax_new_tokens = 4\n");
        let (cfg, table, _) = load(&p, &["eval.samples_per_prompt=3".into()], None, Path::new("/out")).unwrap();
        let eval = cfg.eval.as_ref().unwrap();
        assert_eq!(eval.prompts, PathBuf::from("/out/data/heldout.jsonl"));
        assert_eq!(eval.samples_per_prompt, 3);
        assert_eq!(table["eval"]["prompts"].as_str(), Some("/out/data/heldout.jsonl"));
        assert_eq!(cfg.stages(), vec![Stage::Data, Stage::Eval, Stage::Report]);
    }

    #[test]
    fn a_listed_stage_needs_its_section_and_unknown_keys_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let p = write(tmp.path(), "stages = [\"sft\", \"report\"]\n");
        let e = load(&p, &[], None, Path::new("/out")).unwrap_err();
        assert!(format!("{e:#}").contains("stage `sft` is listed but has no [sft] section"), "{e:#}");
        let p = write(tmp.path(), "[reprot]\nsamples = 2\n");
        let e = load(&p, &[], None, Path::new("/out")).unwrap_err();
        assert!(format!("{e:#}").contains("reprot"), "{e:#}");
    }

    /// `[data]` is the demo set unless `set` names another; each set refuses the other's keys.
    #[test]
    fn the_data_section_names_its_set() {
        let tmp = tempfile::tempdir().unwrap();
        let data = |text: &str| load(&write(tmp.path(), text), &[], None, Path::new("/out")).map(|(cfg, _, _)| cfg.data);
        let demo = data("[data]\npretrain_docs = 1\nsft = 2\nrankings = 3\nprompts = 4\n").unwrap();
        assert_eq!(demo, Some(DataSection::Demo(DemoData { seed: 0, pretrain_docs: 1, sft: 2, rankings: 3, prompts: 4 })));
        let wp = data("[data]\nset = \"word_problems\"\nseed = 5\nprompts = 10\nheldout = 3\n").unwrap();
        assert_eq!(wp, Some(DataSection::WordProblems(WordProblemsData { seed: 5, prompts: 10, heldout: 3 })));
        let e = format!("{:#}", data("[data]\nset = \"word_problems\"\nprompts = 10\nheldout = 3\nsft = 2\n").unwrap_err());
        assert!(e.contains("sft"), "{e}");
        let e = format!("{:#}", data("[data]\nset = \"gsm9k\"\n").unwrap_err());
        assert!(e.contains("\"gsm9k\"") && e.contains("word_problems"), "{e}");
    }

    #[test]
    fn fingerprints_see_config_changes_but_not_halt_after() {
        let tmp = tempfile::tempdir().unwrap();
        let p = write(tmp.path(), "[eval]\nprompts = \"{run}/data/heldout.jsonl\"\nmax_new_tokens = 4\n[ppo.ppo]\niterations = 3\n");
        let table: toml::Table = toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let mut halted = table.clone();
        rlhf_train::config::apply_override(&mut halted, "ppo.ppo.halt_after=2").unwrap();
        let mut longer = table.clone();
        rlhf_train::config::apply_override(&mut longer, "ppo.ppo.iterations=4").unwrap();
        assert_eq!(fingerprint(table.get("ppo")), fingerprint(halted.get("ppo")));
        assert_ne!(fingerprint(table.get("ppo")), fingerprint(longer.get("ppo")));
        // `{run}` stays unfilled: moving the run directory changes nothing.
        let (_, _, a) = load(&write(tmp.path(), "[eval]\nprompts = \"{run}/h.jsonl\"\nmax_new_tokens = 4\n"), &[], None, Path::new("/a")).unwrap();
        let (_, _, b) = load(&tmp.path().join("p.toml"), &[], None, Path::new("/b")).unwrap();
        assert_eq!(a, b);
        assert!(a[&Stage::Eval].contains("{run}/h.jsonl"));
    }

    #[test]
    fn ledger_marks_changed_configs_and_redone_inputs_stale() {
        let mut l = Ledger::default();
        l.finished(Stage::Sft, "a");
        l.finished(Stage::Reward, "b");
        assert_eq!(l.stale(Stage::Reward, &[Stage::Sft], "b"), None);
        assert_eq!(l.stale(Stage::Ppo, &[Stage::Sft, Stage::Reward], "c"), None, "never seen finishing: judged by its output");
        assert!(l.stale(Stage::Reward, &[Stage::Sft], "b2").unwrap().contains("[reward] section changed"));
        // SFT redone (e.g. a crash before reward started over): reward is stale.
        l.started(Stage::Sft);
        l.finished(Stage::Sft, "a");
        assert!(l.stale(Stage::Reward, &[Stage::Sft], "b").unwrap().contains("`sft` was redone"));
        // The state file round-trips.
        let tmp = tempfile::tempdir().unwrap();
        l.write(tmp.path()).unwrap();
        assert_eq!(Ledger::read(tmp.path()).unwrap().finished, l.finished);
        std::fs::write(tmp.path().join("pipeline_state.json"), "{").unwrap();
        assert!(format!("{:#}", Ledger::read(tmp.path()).unwrap_err()).contains("pipeline_state.json"));
    }

    #[test]
    fn stages_are_ordered_and_complete_by_their_marker() {
        assert!(Stage::Sft < Stage::Reward && Stage::Reward < Stage::Dpo && Stage::Dpo < Stage::Grpo && Stage::Grpo < Stage::Ppo && Stage::Ppo < Stage::Eval);
        let training: Vec<Stage> = Stage::all().filter(|s| s.is_training()).collect();
        assert_eq!(training, vec![Stage::Pretrain, Stage::Sft, Stage::SelfImprove, Stage::Reward, Stage::Dpo, Stage::Grpo, Stage::Ppo]);
        let out = Path::new("/r");
        assert_eq!(Stage::Ppo.output(out), (PathBuf::from("/r/ppo"), PathBuf::from("/r/ppo/final/config.json")));
        assert_eq!(Stage::Data.output(out).1, PathBuf::from("/r/data/manifest.json"));
    }
}

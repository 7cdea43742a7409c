//! `rlhf eval --run DIR`: the SFT model and the aligned policies (self-improved, DPO, GRPO, PPO) of
//! a pipeline run on held-out prompts, scored by the reward model when the run has one, by the demo
//! oracle where it applies, by reward sources, and by majority vote (`[eval.vote]`) →
//! `DIR/eval.json` and `DIR/eval_samples.jsonl`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rlhf_runtime::Backend;
use clap::{Args, Subcommand};
use rlhf_data::{ChatFormat, Tokenizer};
use rlhf_runtime::{dispatch, DeviceSpec, Inference, InferenceTask};
use rlhf_model::{CausalLm, RewardInfo, RewardModel};
use rlhf_rl::rewards::{reward_names, RewardSources, RewardSpec};
use rlhf_eval::{aligned_policies, read_eval_prompts, rm_pairwise_acc, sample_and_score, summarize, vote_accuracy, win_rate, EvalConfig};
use serde_json::json;

/// `rlhf eval --run DIR`, or `rlhf eval judge …`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EvalCli {
    #[command(subcommand)]
    pub command: Option<EvalCommand>,
    #[command(flatten)]
    pub run: EvalArgs,
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Pairwise judging of two models' answers by a judge model (both orders; win/tie/loss).
    Judge(crate::judge::JudgeArgs),
}

#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// A pipeline run directory (with sft/, and dpo/, grpo/ or ppo/; reward/ when it has one).
    #[arg(long, required = true)]
    pub run: Option<PathBuf>,
    /// Held-out prompts (default: `[eval] prompts` of RUN/pipeline.toml).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Override an `[eval]` setting, e.g. `--set samples_per_prompt=4` (repeatable).
    #[arg(long = "set")]
    pub sets: Vec<String>,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// f32, or bf16: the policies and the reward model stored and run in bf16 (sets `[eval] precision`).
    #[arg(long)]
    pub precision: Option<rlhf_runtime::Precision>,
    /// q8, q4 or nf4: every model's block projections held as codes (sets `[eval] quant`).
    #[arg(long)]
    pub quant: Option<rlhf_runtime::quant::BaseQuant>,
}

/// The `[eval]` settings of a run: RUN/pipeline.toml's section, then `prompts`, then `sets`.
pub fn eval_config(run: &Path, prompts: Option<&Path>, sets: &[String]) -> anyhow::Result<EvalConfig> {
    let mut table = pipeline_table(run)?.get("eval").and_then(|v| v.as_table()).cloned().unwrap_or_default();
    if let Some(p) = prompts {
        table.insert("prompts".into(), toml::Value::String(p.display().to_string()));
    }
    table.entry("max_new_tokens").or_insert(toml::Value::Integer(64));
    for s in sets {
        rlhf_train::config::apply_override(&mut table, s)?;
    }
    if !table.contains_key("prompts") {
        anyhow::bail!("no held-out prompts: pass --prompts FILE (or run through `rlhf pipeline run`, whose config has an [eval] section)");
    }
    toml::Value::Table(table).try_into().context("[eval]")
}

/// The model the aligned policies are compared with: the run's SFT model, or — in a run without
/// an SFT stage — the model its first aligned stage started from (`[self_improve.sft.model] from`,
/// `[dpo.model] from`, `[grpo.model] policy`, `[ppo.model] actor` of RUN/pipeline.toml, `table`).
pub fn baseline_dir(run: &Path, table: &toml::Table) -> anyhow::Result<PathBuf> {
    let sft = run.join("sft/final");
    if sft.join("config.json").exists() {
        return Ok(sft);
    }
    let start = [("self_improve", "/sft/model/from"), ("dpo", "/model/from"), ("grpo", "/model/policy"), ("ppo", "/model/actor")]
        .into_iter()
        .filter(|(stage, _)| run.join(stage).join("final/config.json").exists())
        .find_map(|(stage, key)| toml_pointer(table.get(stage)?, key)?.as_str().map(PathBuf::from));
    start.with_context(|| format!("{}: no sft/final and no aligned stage's starting model in pipeline.toml to compare with", run.display()))
}

/// The value at a `/a/b/c` path of tables.
fn toml_pointer<'a>(value: &'a toml::Value, pointer: &str) -> Option<&'a toml::Value> {
    pointer.split('/').filter(|k| !k.is_empty()).try_fold(value, |v, k| v.get(k))
}

fn pipeline_table(run: &Path) -> anyhow::Result<toml::Table> {
    let path = run.join("pipeline.toml");
    if !path.exists() {
        return Ok(toml::Table::new());
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{}", path.display()))
}

/// The reward sources eval scores by: `[[eval.rewards]]`, else the run's `[[grpo.rewards]]`
/// (`table`: RUN/pipeline.toml).
fn eval_rewards(run: &Path, table: &toml::Table, cfg: &EvalConfig) -> anyhow::Result<Vec<RewardSpec>> {
    if !cfg.rewards.is_empty() {
        return Ok(cfg.rewards.clone());
    }
    match table.get("grpo").and_then(|g| g.get("rewards")) {
        Some(r) => r.clone().try_into().with_context(|| format!("{}: [[grpo.rewards]]", run.join("pipeline.toml").display())),
        None => Ok(Vec::new()),
    }
}

/// Evaluates the run's SFT model (or the model its aligned stage started from: [`baseline_dir`])
/// and each aligned policy (DPO, GRPO, PPO) on the held-out prompts, scored by the demo oracle,
/// by the reward model when the run has one, and by the reward sources ([`eval_rewards`]); writes
/// and returns `eval.json`'s content.
pub fn evaluate_run<B: Backend>(run: &Path, cfg: &EvalConfig, device: &B::Device) -> anyhow::Result<serde_json::Value> {
    let table = pipeline_table(run)?;
    let (sft_dir, rm_dir) = (baseline_dir(run, &table)?, run.join("reward/final"));
    let aligned = aligned_policies(run);
    if aligned.is_empty() {
        anyhow::bail!("{}: no aligned policy to evaluate (dpo/, grpo/ or ppo/final)", run.display());
    }
    let tok = Tokenizer::from_dir(&sft_dir)?;
    let fmt = ChatFormat::resolve(&tok, cfg.template)?;
    let sft = CausalLm::<B>::from_hf_dir(&sft_dir, device)?.quantized(cfg.quant)?.for_inference(cfg.precision);
    let rm = match rm_dir.join("config.json").exists() {
        true => Some((RewardModel::<B>::from_dir(&rm_dir, device)?.quantized(cfg.quant)?.for_inference(cfg.precision), RewardInfo::load(&rm_dir)?.map(|i| i.normalization.std))),
        false => None,
    };
    let specs = eval_rewards(run, &table, cfg)?;
    let names = reward_names(&specs);
    let mut sources = match specs.is_empty() {
        true => None,
        false => Some(RewardSources::<B>::start(&specs, cfg.precision, cfg.batch_size, device)?),
    };
    let prompts = read_eval_prompts(cfg, &tok, &fmt)?;
    if prompts.is_empty() {
        anyhow::bail!("{}: no usable held-out prompts", cfg.prompts.display());
    }
    let pad = tok.pad_id_for(sft.config().pad_token_id);
    let stop = fmt.stop_ids(&tok);
    let scorer = rm.as_ref().map(|(model, std)| (model, *std));
    let sft_scored = sample_and_score(&sft, None, scorer, sources.as_mut(), &prompts, cfg, &tok, &stop, pad, device)?;
    // One greedy answer per prompt and policy, beside the sampled ones.
    let greedy_cfg = EvalConfig { temperature: 0.0, samples_per_prompt: 1, ..cfg.clone() };
    let greedy = |policy: &CausalLm<B>, sources: Option<&mut RewardSources<B>>| -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::to_value(summarize(&sample_and_score(policy, None, scorer, sources, &prompts, &greedy_cfg, &tok, &stop, pad, device)?, false, &names))?)
    };
    let mut result = json!({
        "prompts": prompts.len(),
        "samples_per_prompt": cfg.samples_per_prompt,
        "temperature": cfg.temperature,
        "policies": aligned,
        "baseline_model": sft_dir.display().to_string(),
        // Every model above ran the same way: the folders' weights in this precision, and their block
        // projections as these codes when `[eval] quant` / `--quant` asked (null: as the folders hold them).
        "precision": cfg.precision.to_string(),
        "quant": cfg.quant.map(|q| q.to_string()),
        "sft": summarize(&sft_scored, false, &names),
        "kl_bound": cfg.max_kl,
    });
    if rm.is_some() {
        result["rm"] = json!({ "pairwise_acc": rm_pairwise_acc(&run.join("reward")) });
    }
    if cfg.greedy {
        result["greedy"] = json!({ "sft": greedy(&sft, sources.as_mut())? });
    }
    let vote = |policy: &CausalLm<B>, v: &rlhf_eval::VoteEval| -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::to_value(vote_accuracy(policy, &prompts, v, cfg, &tok, &stop, pad, device)?)?)
    };
    if let Some(v) = &cfg.vote {
        result["vote"] = json!({ "samples": v.samples, "extract": v.extract.to_string(), "sft": vote(&sft, v)? });
    }
    let mut within_bound = true;
    let mut rows: Vec<serde_json::Value> = sft_scored.iter().map(|a| json!({ "prompt": a.prompt, "sft": a.response, "sft_rm": a.rm_score, "sft_oracle": a.oracle })).collect();
    for name in &aligned {
        let policy = CausalLm::<B>::from_hf_dir(&run.join(name).join("final"), device)?.quantized(cfg.quant)?.for_inference(cfg.precision);
        let scored = sample_and_score(&policy, Some(&sft), scorer, sources.as_mut(), &prompts, cfg, &tok, &stop, pad, device)?;
        let summary = summarize(&scored, true, &names);
        within_bound &= cfg.max_kl.is_none_or(|b| summary.kl.unwrap_or(0.0) <= b);
        result[*name] = serde_json::to_value(&summary)?;
        if cfg.greedy {
            result["greedy"][*name] = greedy(&policy, sources.as_mut())?;
        }
        if let Some(v) = &cfg.vote {
            result["vote"][*name] = vote(&policy, v)?;
        }
        if rm.is_some() {
            result[format!("win_rate_{name}_vs_sft")] = json!(win_rate(&scored, &sft_scored));
        }
        for (row, b) in rows.iter_mut().zip(&scored) {
            row[*name] = json!(b.response);
            row[format!("{name}_rm")] = json!(b.rm_score);
            row[format!("{name}_oracle")] = json!(b.oracle);
        }
    }
    result["kl_within_bound"] = json!(cfg.max_kl.map(|_| within_bound));
    let lines: String = rows.iter().map(|r| format!("{r}\n")).collect();
    rlhf_files::write_atomic(&run.join("eval_samples.jsonl"), lines.as_bytes())?;
    rlhf_files::write_atomic(&run.join("eval.json"), serde_json::to_string_pretty(&result)?.as_bytes())?;
    Ok(result)
}

/// A one-line summary of `eval.json`: each aligned policy against SFT.
pub fn summary_line(v: &serde_json::Value) -> String {
    let f = |p: &str| v.pointer(p).and_then(|x| x.as_f64()).map_or("n/a".to_string(), |x| format!("{x:.3}"));
    let policies: Vec<&str> = v["policies"].as_array().map(|a| a.iter().filter_map(|p| p.as_str()).collect()).unwrap_or_default();
    policies
        .iter()
        .map(|p| {
            let name = crate::report::policy_label(p);
            let mut parts = Vec::new();
            if v.pointer("/sft/oracle_score").is_some_and(|x| !x.is_null()) {
                parts.push(format!("oracle SFT {} → {name} {}", f("/sft/oracle_score"), f(&format!("/{p}/oracle_score"))));
            }
            if let Some(rewards) = v.pointer("/sft/rewards").and_then(|r| r.as_object()) {
                for source in rewards.keys() {
                    parts.push(format!("{source} SFT {} → {name} {}", f(&format!("/sft/rewards/{source}")), f(&format!("/{p}/rewards/{source}"))));
                }
            }
            if v.pointer("/vote/sft").is_some() {
                let k = v.pointer("/vote/samples").and_then(|x| x.as_u64()).unwrap_or(0);
                parts.push(format!(
                    "right answers by a {k}-sample majority SFT {} → {name} {} (single samples {} → {})",
                    f("/vote/sft/voted_right"),
                    f(&format!("/vote/{p}/voted_right")),
                    f("/vote/sft/single_sample_right"),
                    f(&format!("/vote/{p}/single_sample_right"))
                ));
            }
            let mut line = parts.join("; ");
            if v.get("rm").is_some() {
                line.push_str(&format!(
                    "; RM score SFT {} → {name} {}; RM win rate {name} vs SFT {}",
                    f("/sft/rm_score"),
                    f(&format!("/{p}/rm_score")),
                    f(&format!("/win_rate_{p}_vs_sft"))
                ));
            }
            line.push_str(&format!("; KL({name}‖SFT) {}", f(&format!("/{p}/kl"))));
            line
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

struct Task<'a>(&'a Path, &'a EvalConfig);

impl InferenceTask for Task<'_> {
    type Output = anyhow::Result<serde_json::Value>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        evaluate_run::<B>(self.0, self.1, &device)
    }
}

pub fn run(cli: &EvalCli) -> anyhow::Result<()> {
    if let Some(EvalCommand::Judge(args)) = &cli.command {
        return crate::judge::run(args);
    }
    let args = &cli.run;
    let run = args.run.as_deref().context("--run DIR is required")?;
    let mut cfg = eval_config(run, args.prompts.as_deref(), &args.sets)?;
    if args.quant.is_some() {
        cfg.quant = args.quant;
    }
    if let Some(p) = args.precision {
        cfg.precision = p;
    }
    let v = dispatch(rlhf_runtime::Runtime { device: args.device, precision: cfg.precision }, Inference(Task(run, &cfg)))??;
    println!("{}", summary_line(&v));
    println!("eval: {}", run.join("eval.json").display());
    Ok(())
}

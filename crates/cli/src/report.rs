//! `report.md` + PNG plots for a pipeline run: the picture of a run that users of other RLHF
//! frameworks look for — SFT loss, reward-model accuracy, PPO's RM score / KL / reward / response
//! length over iterations, DPO's implicit rewards and accuracy over steps, SFT vs each aligned policy
//! on held-out prompts, and sample responses before and after alignment.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use clap::Args;
use plotters::prelude::*;
use serde_json::Value;

/// DejaVu Sans Mono (Bitstream Vera licence, `assets/DejaVu-LICENSE`): plots carry their own font,
/// so a machine without fonts installed still labels its axes.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// A pipeline run directory.
    #[arg(long)]
    pub run: std::path::PathBuf,
    /// Sample responses (SFT vs PPO) to show.
    #[arg(long, default_value_t = 6)]
    pub samples: usize,
}

type Series = (String, Vec<(f64, f64)>);

fn read_rows(path: &Path) -> Vec<Value> {
    rlhf_train::metrics::read_metrics(path).unwrap_or_default()
}

fn series(rows: &[Value], x_key: &str, y_key: &str) -> Vec<(f64, f64)> {
    rows.iter().filter_map(|r| Some((r.get(x_key)?.as_f64()?, r.get(y_key)?.as_f64()?))).collect()
}

const COLORS: [RGBColor; 4] = [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40)];

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font compiled in; failure would be a build defect.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e}")
}

/// One line chart in `area`.
fn line_panel<DB: DrawingBackend>(area: &DrawingArea<DB, plotters::coord::Shift>, title: &str, x_label: &str, lines: &[Series]) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let points: Vec<(f64, f64)> = lines.iter().flat_map(|(_, s)| s.iter().copied()).filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
    if points.is_empty() {
        area.titled(&format!("{title} (no data)"), ("sans-serif", 18)).map_err(plot_err)?;
        return Ok(());
    }
    let (x0, x1) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let pad = ((y1 - y0) * 0.08).max(1e-3);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .x_label_formatter(&|x: &f64| if x.fract() == 0.0 { format!("{x:.0}") } else { format!("{x}") })
        .label_style(("sans-serif", 12))
        .max_light_lines(2)
        .draw()
        .map_err(plot_err)?;
    for (i, (name, s)) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(s.iter().copied(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    if lines.len() > 1 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()
            .map_err(plot_err)?;
    }
    Ok(())
}

/// A PNG of `panels` (title, x label, lines) side by side in `cols` columns.
fn line_chart(path: &Path, cols: usize, panels: &[(&str, &str, Vec<Series>)]) -> anyhow::Result<()> {
    register_font();
    let rows = panels.len().div_ceil(cols);
    let root = BitMapBackend::new(path, (460 * cols as u32, 320 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    for (area, (title, x, lines)) in root.split_evenly((rows, cols)).iter().zip(panels) {
        line_panel(area, title, x, lines)?;
    }
    root.present().map_err(plot_err)
}

/// Grouped bars: for each metric, one bar per policy (`labels`: SFT first), side by side.
fn bar_chart(path: &Path, labels: &[String], metrics: &[(&str, Vec<f64>)]) -> anyhow::Result<()> {
    register_font();
    let root = BitMapBackend::new(path, (320 * metrics.len() as u32, 320)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    for (area, (name, values)) in root.split_evenly((1, metrics.len())).iter().zip(metrics) {
        let lo = values.iter().copied().fold(0.0, f64::min);
        let hi = values.iter().copied().fold(0.0, f64::max);
        let pad = ((hi - lo) * 0.15).max(0.05);
        let mut chart = ChartBuilder::on(area)
            .caption(*name, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(28)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..values.len() as f64, (lo - if lo < 0.0 { pad } else { 0.0 })..(hi + pad))
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .max_light_lines(1)
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(plot_err)?;
        for (i, &v) in values.iter().enumerate() {
            let x = i as f64;
            chart.draw_series(std::iter::once(Rectangle::new([(x + 0.15, 0.0), (x + 0.85, v)], COLORS[i % COLORS.len()].filled()))).map_err(plot_err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{} {v:.3}", labels[i]),
                    (x + 0.18, v.max(0.0) + pad * 0.35),
                    ("sans-serif", 13),
                )))
                .map_err(plot_err)?;
        }
    }
    root.present().map_err(plot_err)
}

fn f(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |x| format!("{x:.3}"))
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Writes `run/report.md` and its plots in `run/plots/`.
/// The judge's verdict on the aligned policy (A) against SFT (B), overall and per category.
fn judge_section(md: &mut String, j: &Value) {
    let policy = j["policy"].as_str().unwrap_or("PPO");
    let _ = writeln!(md, "## Judge: {policy} against SFT\n");
    let _ = writeln!(
        md,
        "Judge `{}` on {} questions, each pair judged in both orders (verdicts that disagree count as ties); \
         position consistency {}, unparsed verdicts {}.\n",
        j["judge"].as_str().unwrap_or("?"),
        j["pairs"],
        f(j["position_consistency"].as_f64()),
        j["verdicts_unparsed"]
    );
    let _ = writeln!(md, "| | {policy} wins | ties | SFT wins | {policy} score | 95% interval |\n|---|---|---|---|---|---|");
    let mut row = |name: &str, t: &Value| {
        let g = |p: &str| t.pointer(p).and_then(Value::as_f64);
        let _ = writeln!(md, "| {name} | {} | {} | {} | {} | {}–{} |", t["wins"], t["ties"], t["losses"], f(g("/score")), f(g("/interval/0")), f(g("/interval/1")));
    };
    row("all", &j["a_vs_b"]);
    if let Some(cats) = j["by_category"].as_object() {
        for (c, t) in cats {
            row(c, t);
        }
    }
    md.push('\n');
}

/// The reward sources a critic-free run logged (`rewards/<name>/mean`), in the order of the metric keys.
fn reward_sources(rows: &[Value]) -> Vec<String> {
    let mut names = Vec::new();
    for row in rows {
        let Some(map) = row.as_object() else { continue };
        for key in map.keys() {
            if let Some(name) = key.strip_prefix("rewards/").and_then(|k| k.strip_suffix("/mean")) {
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_string());
                }
            }
        }
    }
    names
}

/// A stage-3 run's mean time per iteration, split into generation, scoring and training.
fn iteration_times(md: &mut String, rows: &[Value]) {
    let t = |k: &str| rows.iter().filter_map(|r| r.get(k)?.as_f64()).sum::<f64>() / rows.len().max(1) as f64;
    let _ = writeln!(
        md,
        "Time per iteration: generation {:.2}s, scoring {:.2}s, training {:.2}s ({:.0} generated tokens/s, {:.0} trained tokens/s).\n",
        t("generate_s"),
        t("score_s"),
        t("train_s"),
        t("gen_tokens_per_s"),
        t("train_tokens_per_s")
    );
}

/// How a policy (a stage's folder name) is called in tables.
pub(crate) fn policy_label(p: &str) -> String {
    match p {
        "self_improve" => "Self-improved".into(),
        p => p.to_uppercase(),
    }
}

/// What the self-improvement stage kept of its votes, and its SFT loss.
fn self_improve_section(md: &mut String, s: &Value, rows: &[Value], plots: &Path) -> anyhow::Result<()> {
    let n = |k: &str| s[k].as_u64().unwrap_or(0);
    let pct = |k: &str| s[k].as_f64().map_or("n/a".to_string(), |x| format!("{:.1}%", 100.0 * x));
    md.push_str("## Self-improvement\n\n");
    let _ = writeln!(
        md,
        "The model voted on {} questions: {} kept ({} distinct reasoning paths written as SFT data), {} dropped for a majority below the agreement bar, {} with no extractable answer, {} too long. Mean agreement {}.",
        n("questions"),
        n("kept"),
        n("paths"),
        n("dropped_low_agreement"),
        n("dropped_no_answer"),
        n("too_long"),
        f(s["mean_agreement"].as_f64())
    );
    if n("labeled") > 0 {
        let _ = writeln!(
            md,
            "Against the {} records that carry an answer (never used to choose): single samples right {}, the majority right {}, the kept majorities (what was trained on) right {}.",
            n("labeled"),
            pct("single_sample_right"),
            pct("voted_right"),
            pct("kept_right")
        );
    }
    if !rows.is_empty() {
        use rlhf_train::metrics::{first_value as first, last_value as last};
        let _ = writeln!(md, "SFT on the voted paths: loss {} → {}, held-out loss {}.", f(first(rows, "loss")), f(last(rows, "loss")), f(last(rows, "eval_loss")));
        let panels = [("self-improvement SFT loss", "step", vec![("train".to_string(), series(rows, "step", "loss")), ("held-out".to_string(), series(rows, "step", "eval_loss"))])];
        line_chart(&plots.join("self_improve_loss.png"), 1, &panels)?;
        md.push_str("\n![self-improvement SFT loss](plots/self_improve_loss.png)\n");
    }
    md.push('\n');
    Ok(())
}

pub fn write_report(run: &Path, samples: usize) -> anyhow::Result<()> {
    let plots = run.join("plots");
    std::fs::create_dir_all(&plots).with_context(|| format!("creating {}", plots.display()))?;
    let pretrain = read_rows(&run.join("pretrain/metrics.jsonl"));
    let sft = read_rows(&run.join("sft/metrics.jsonl"));
    let rm = read_rows(&run.join("reward/metrics.jsonl"));
    let dpo = read_rows(&run.join("dpo/metrics.jsonl"));
    let grpo = read_rows(&run.join("grpo/metrics.jsonl"));
    let ppo = read_rows(&run.join("ppo/metrics.jsonl"));
    let eval: Option<Value> = std::fs::read_to_string(run.join("eval.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
    use rlhf_train::metrics::{first_value as first, last_value as last};

    let mut md = String::from("# RLHF run report\n\n");
    let _ = writeln!(md, "Run directory: `{}`. Metrics are in each stage's `metrics.jsonl` (and TensorBoard event files).\n", run.display());

    if let Some(e) = &eval {
        let g = |p: &str| e.pointer(p).and_then(Value::as_f64);
        md.push_str("## Held-out evaluation\n\n");
        let _ = writeln!(
            md,
            "{} held-out prompts × {} samples (temperature {}).\n",
            e["prompts"], e["samples_per_prompt"], e["temperature"]
        );
        let policies: Vec<String> = e["policies"].as_array().map(|a| a.iter().filter_map(|p| p.as_str().map(String::from)).collect()).unwrap_or_else(|| vec!["ppo".into()]);
        let upper: Vec<String> = policies.iter().map(|p| policy_label(p)).collect();
        let _ = writeln!(md, "| | SFT | {} |\n|---|---|{}", upper.join(" | "), "---|".repeat(policies.len()));
        let row = |md: &mut String, label: &str, path: &dyn Fn(&str) -> String, sft: Option<String>| {
            let cells: Vec<String> = policies.iter().map(|p| f(g(&path(p)))).collect();
            let _ = writeln!(md, "| {label} | {} | {} |", sft.unwrap_or_else(|| f(g(&path("sft")))), cells.join(" | "));
        };
        let has_oracle = g("/sft/oracle_score").is_some();
        if has_oracle {
            row(&mut md, "oracle score (max 2.0)", &|p| format!("/{p}/oracle_score"), None);
        }
        let sources: Vec<String> = e.pointer("/sft/rewards").and_then(Value::as_object).map(|m| m.keys().cloned().collect()).unwrap_or_default();
        for source in &sources {
            row(&mut md, &format!("reward `{source}` (mean)"), &|p| format!("/{p}/rewards/{source}"), None);
        }
        for (label, part) in [("right answer", "correct"), ("in the prompt's language", "language"), ("in the asked-for form", "format")] {
            if g(&format!("/sft/oracle_parts/{part}")).is_some() {
                row(&mut md, &format!("oracle: {label} (share)"), &|p| format!("/{p}/oracle_parts/{part}"), None);
            }
        }
        let has_rm = e.get("rm").is_some();
        if has_rm {
            row(&mut md, "RM score (normalised)", &|p| format!("/{p}/rm_score"), None);
        }
        row(&mut md, "response length (tokens)", &|p| format!("/{p}/response_len"), None);
        row(&mut md, "KL to the SFT model (per response)", &|p| format!("/{p}/kl"), Some("0".into()));
        if e.get("greedy").is_some() {
            if has_oracle {
                row(&mut md, "greedy: oracle score", &|p| format!("/greedy/{p}/oracle_score"), None);
                row(&mut md, "greedy: right answer (share)", &|p| format!("/greedy/{p}/oracle_parts/correct"), None);
            }
            for source in &sources {
                row(&mut md, &format!("greedy: reward `{source}` (mean)"), &|p| format!("/greedy/{p}/rewards/{source}"), None);
            }
            if has_rm {
                row(&mut md, "greedy: RM score", &|p| format!("/greedy/{p}/rm_score"), None);
            }
        }
        if let Some(k) = e.pointer("/vote/samples").and_then(Value::as_u64) {
            row(&mut md, &format!("majority of {k} samples: right answer (share)"), &|p| format!("/vote/{p}/voted_right"), None);
            row(&mut md, &format!("those {k} samples one by one: right (share)"), &|p| format!("/vote/{p}/single_sample_right"), None);
            row(&mut md, "the majority's share of the votes (mean)", &|p| format!("/vote/{p}/mean_agreement"), None);
        }
        if has_rm {
            let wins: Vec<String> = policies.iter().map(|p| format!("{} **{}**", policy_label(p), f(g(&format!("/win_rate_{p}_vs_sft"))))).collect();
            let _ = writeln!(md, "\nRM win rate over SFT: {}. Reward model held-out pairwise accuracy: **{}**.", wins.join(", "), f(g("/rm/pairwise_acc")));
        } else if has_oracle {
            md.push_str("\nNo reward model in this run: the oracle (where the prompts are the demo's) is the judge.\n");
        }
        if let Some(base) = e["baseline_model"].as_str().filter(|b| !b.ends_with("sft/final")) {
            let _ = writeln!(md, "No SFT stage in this run: the SFT column is the model the aligned stage started from, `{base}`.");
        }
        if let Some(b) = g("/kl_bound") {
            let _ = writeln!(md, "KL bound {b}: {}.", if e["kl_within_bound"].as_bool() == Some(true) { "respected" } else { "**exceeded**" });
        }
        let column = |key: &str| -> Option<Vec<f64>> { std::iter::once("sft").chain(policies.iter().map(String::as_str)).map(|p| g(&format!("/{p}/{key}"))).collect() };
        let mut bars = Vec::new();
        if let Some(v) = column("oracle_score") {
            bars.push(("oracle score", v));
        }
        if let Some(v) = column("rm_score") {
            bars.push(("RM score", v));
        }
        let named: Vec<(String, Vec<f64>)> = sources.iter().filter_map(|s| Some((format!("reward {s}"), column(&format!("rewards/{s}"))?))).collect();
        bars.extend(named.iter().map(|(n, v)| (n.as_str(), v.clone())));
        if !bars.is_empty() {
            let labels: Vec<String> = std::iter::once("SFT".to_string()).chain(upper.iter().cloned()).collect();
            bar_chart(&plots.join("eval.png"), &labels, &bars)?;
            let _ = writeln!(md, "\n![SFT vs {}](plots/eval.png)\n", upper.join(", "));
        }
    }

    if let Some(j) = std::fs::read_to_string(run.join("judge/judge.json")).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok()) {
        judge_section(&mut md, &j);
    }

    if !sft.is_empty() || !pretrain.is_empty() {
        md.push_str("## Stage 1: SFT\n\n");
        let mut panels = Vec::new();
        if !pretrain.is_empty() {
            let _ = writeln!(md, "Pretraining (stage 0): loss {} → {}.", f(first(&pretrain, "loss")), f(last(&pretrain, "loss")));
            panels.push(("pretraining loss", "step", vec![("train".to_string(), series(&pretrain, "step", "loss")), ("held-out".to_string(), series(&pretrain, "step", "eval_loss"))]));
        }
        if !sft.is_empty() {
            let _ = writeln!(md, "SFT: loss {} → {}, held-out loss {}.", f(first(&sft, "loss")), f(last(&sft, "loss")), f(last(&sft, "eval_loss")));
            panels.push(("SFT loss", "step", vec![("train".to_string(), series(&sft, "step", "loss")), ("held-out".to_string(), series(&sft, "step", "eval_loss"))]));
        }
        line_chart(&plots.join("sft_loss.png"), panels.len(), &panels)?;
        md.push_str("\n![SFT loss](plots/sft_loss.png)\n\n");
    }

    if let Some(summary) = std::fs::read_to_string(run.join("self_improve/voted.jsonl.summary.json")).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok()) {
        self_improve_section(&mut md, &summary, &read_rows(&run.join("self_improve/metrics.jsonl")), &plots)?;
    }

    if !rm.is_empty() {
        md.push_str("## Stage 2: reward model\n\n");
        let _ = writeln!(
            md,
            "Held-out pairwise accuracy {} (top-1 {}); loss {} → {}.",
            f(last(&rm, "eval_pairwise_acc")),
            f(last(&rm, "eval_top1_acc")),
            f(first(&rm, "loss")),
            f(last(&rm, "loss"))
        );
        let panels = [
            ("pairwise accuracy", "step", vec![("train".to_string(), series(&rm, "step", "pairwise_acc")), ("held-out".to_string(), series(&rm, "step", "eval_pairwise_acc"))]),
            ("ranking loss", "step", vec![("train".to_string(), series(&rm, "step", "loss")), ("held-out".to_string(), series(&rm, "step", "eval_loss"))]),
        ];
        line_chart(&plots.join("rm_accuracy.png"), 2, &panels)?;
        md.push_str("\n![reward model](plots/rm_accuracy.png)\n\n");
    }

    if !dpo.is_empty() {
        md.push_str("## Direct preference optimization\n\n");
        let _ = writeln!(
            md,
            "Implicit reward margin (chosen − rejected) {} → {}; accuracy {} → {}; held-out accuracy {} (top-1 {}), margin {}; log-prob of the chosen responses {} → {}, of the rejected {} → {}.",
            f(first(&dpo, "rewards/margins")),
            f(last(&dpo, "rewards/margins")),
            f(first(&dpo, "rewards/accuracies")),
            f(last(&dpo, "rewards/accuracies")),
            f(last(&dpo, "eval_rewards/accuracies")),
            f(last(&dpo, "eval_top1_acc")),
            f(last(&dpo, "eval_rewards/margins")),
            f(first(&dpo, "logps/chosen")),
            f(last(&dpo, "logps/chosen")),
            f(first(&dpo, "logps/rejected")),
            f(last(&dpo, "logps/rejected"))
        );
        let both = |k: &str| vec![("train".to_string(), series(&dpo, "step", k)), ("held-out".to_string(), series(&dpo, "step", &format!("eval_{k}")))];
        let panels = [
            ("loss", "step", both("loss")),
            ("reward accuracy", "step", both("rewards/accuracies")),
            ("implicit rewards", "step", vec![("chosen".to_string(), series(&dpo, "step", "rewards/chosen")), ("rejected".to_string(), series(&dpo, "step", "rewards/rejected"))]),
            ("log-probs", "step", vec![("chosen".to_string(), series(&dpo, "step", "logps/chosen")), ("rejected".to_string(), series(&dpo, "step", "logps/rejected"))]),
        ];
        line_chart(&plots.join("dpo.png"), 2, &panels)?;
        md.push_str("\n![DPO](plots/dpo.png)\n\n");
    }

    if !grpo.is_empty() {
        md.push_str("## Critic-free RL (GRPO and relatives)\n\n");
        let sources = reward_sources(&grpo);
        let per_source: Vec<String> = sources.iter().map(|n| format!("{n} {} → {}", f(first(&grpo, &format!("rewards/{n}/mean"))), f(last(&grpo, &format!("rewards/{n}/mean"))))).collect();
        let kl = match first(&grpo, "kl") {
            Some(_) => format!("; KL to the reference per token {} → {}", f(first(&grpo, "kl")), f(last(&grpo, "kl"))),
            None => String::new(),
        };
        let _ = writeln!(
            md,
            "Reward {} → {} ({}); groups with equal rewards {} → {}; response length {} → {} tokens{kl}.",
            f(first(&grpo, "reward")),
            f(last(&grpo, "reward")),
            per_source.join(", "),
            f(first(&grpo, "frac_reward_zero_std")),
            f(last(&grpo, "frac_reward_zero_std")),
            f(first(&grpo, "completions/mean_length")),
            f(last(&grpo, "completions/mean_length")),
        );
        let one = |k: &str| vec![(k.to_string(), series(&grpo, "iteration", k))];
        let mut panels = vec![
            ("reward (weighted sum)", "iteration", one("reward")),
            ("reward per source (mean)", "iteration", sources.iter().map(|n| (n.clone(), series(&grpo, "iteration", &format!("rewards/{n}/mean")))).collect()),
            ("response length", "iteration", one("completions/mean_length")),
            ("groups with equal rewards (share)", "iteration", one("frac_reward_zero_std")),
            ("entropy", "iteration", one("entropy")),
            ("clipped share", "iteration", vec![("low".into(), series(&grpo, "iteration", "clip_ratio/low_mean")), ("high".into(), series(&grpo, "iteration", "clip_ratio/high_mean"))]),
        ];
        if !kl.is_empty() {
            panels.push(("KL to the reference (per token)", "iteration", one("kl")));
        }
        line_chart(&plots.join("grpo.png"), 2, &panels)?;
        md.push_str("\n![GRPO](plots/grpo.png)\n\n");
        iteration_times(&mut md, &grpo);
    }

    if !ppo.is_empty() {
        md.push_str("## Stage 3: PPO-ptx\n\n");
        let _ = writeln!(
            md,
            "RM score {} → {}; KL per response {} → {}; response length {} → {} tokens; ptx loss {} → {}.",
            f(first(&ppo, "rm_score")),
            f(last(&ppo, "rm_score")),
            f(first(&ppo, "kl")),
            f(last(&ppo, "kl")),
            f(first(&ppo, "response_len")),
            f(last(&ppo, "response_len")),
            f(first(&ppo, "ptx_loss")),
            f(last(&ppo, "ptx_loss"))
        );
        let one = |k: &str| vec![(k.to_string(), series(&ppo, "iteration", k))];
        let panels = [
            ("RM score", "iteration", one("rm_score")),
            ("KL to reference (per response)", "iteration", one("kl")),
            ("reward (score − β·KL)", "iteration", one("reward")),
            ("response length", "iteration", one("response_len")),
            ("policy / value loss", "iteration", vec![("policy".into(), series(&ppo, "iteration", "policy_loss")), ("value".into(), series(&ppo, "iteration", "value_loss"))]),
            ("ptx loss", "iteration", one("ptx_loss")),
        ];
        line_chart(&plots.join("ppo.png"), 2, &panels)?;
        md.push_str("\n![PPO](plots/ppo.png)\n\n");
        iteration_times(&mut md, &ppo);
    }

    if let Ok(text) = std::fs::read_to_string(run.join("eval_samples.jsonl")) {
        let rows: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        if !rows.is_empty() {
            let policies: Vec<&str> = rlhf_eval::ALIGNED.into_iter().filter(|p| rows[0].get(*p).is_some()).collect();
            let upper: Vec<String> = policies.iter().map(|p| policy_label(p)).collect();
            let _ = writeln!(md, "## Sample responses on held-out prompts\n\n| prompt | SFT | {} |\n|---|---|{}", upper.join(" | "), "---|".repeat(policies.len()));
            // Spread the picks over the set (samples of one prompt are adjacent).
            let stride = (rows.len() / samples.max(1)).max(1);
            for r in rows.iter().step_by(stride).take(samples) {
                let cell = |p: &str| {
                    let oracle = r[format!("{p}_oracle")].as_f64().map_or(String::new(), |x| format!("oracle {x}"));
                    let rm = r[format!("{p}_rm")].as_f64().map_or(String::new(), |x| format!("RM {x:.2}"));
                    let scores: Vec<String> = [rm, oracle].into_iter().filter(|s| !s.is_empty()).collect();
                    format!("{} ({})", md_cell(r[p].as_str().unwrap_or("")), scores.join(", "))
                };
                let cells: Vec<String> = std::iter::once("sft").chain(policies.iter().copied()).map(cell).collect();
                let _ = writeln!(md, "| {} | {} |", md_cell(r["prompt"].as_str().unwrap_or("")), cells.join(" | "));
            }
            md.push('\n');
        }
    }
    rlhf_files::write_atomic(&run.join("report.md"), md.as_bytes())?;
    Ok(())
}

pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    write_report(&args.run, args.samples)?;
    println!("report: {}", args.run.join("report.md").display());
    Ok(())
}

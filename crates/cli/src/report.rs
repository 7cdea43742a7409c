//! `report.md` + PNG plots for a pipeline run: the picture of a run that users of other RLHF
//! frameworks look for — SFT loss, reward-model accuracy, PPO's RM score / KL / reward / response
//! length over iterations, SFT vs PPO on held-out prompts, and sample responses before and after PPO.

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

/// Grouped bars: for each metric, SFT and PPO side by side.
fn bar_chart(path: &Path, metrics: &[(&str, f64, f64)]) -> anyhow::Result<()> {
    register_font();
    let root = BitMapBackend::new(path, (320 * metrics.len() as u32, 320)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    for (area, (name, sft, ppo)) in root.split_evenly((1, metrics.len())).iter().zip(metrics) {
        let lo = sft.min(*ppo).min(0.0);
        let hi = sft.max(*ppo).max(0.0);
        let pad = ((hi - lo) * 0.15).max(0.05);
        let mut chart = ChartBuilder::on(area)
            .caption(*name, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(28)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..2.0, (lo - if lo < 0.0 { pad } else { 0.0 })..(hi + pad))
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .max_light_lines(1)
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(plot_err)?;
        for (i, v) in [*sft, *ppo].into_iter().enumerate() {
            let x = i as f64;
            chart.draw_series(std::iter::once(Rectangle::new([(x + 0.15, 0.0), (x + 0.85, v)], COLORS[i].filled()))).map_err(plot_err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{} {v:.3}", ["SFT", "PPO"][i]),
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
/// The judge's verdict on PPO (A) against SFT (B), overall and per category.
fn judge_section(md: &mut String, j: &Value) {
    md.push_str("## Judge: PPO against SFT\n\n");
    let _ = writeln!(
        md,
        "Judge `{}` on {} questions, each pair judged in both orders (verdicts that disagree count as ties); \
         position consistency {}, unparsed verdicts {}.\n",
        j["judge"].as_str().unwrap_or("?"),
        j["pairs"],
        f(j["position_consistency"].as_f64()),
        j["verdicts_unparsed"]
    );
    md.push_str("| | PPO wins | ties | SFT wins | PPO score | 95% interval |\n|---|---|---|---|---|---|\n");
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

pub fn write_report(run: &Path, samples: usize) -> anyhow::Result<()> {
    let plots = run.join("plots");
    std::fs::create_dir_all(&plots).with_context(|| format!("creating {}", plots.display()))?;
    let pretrain = read_rows(&run.join("pretrain/metrics.jsonl"));
    let sft = read_rows(&run.join("sft/metrics.jsonl"));
    let rm = read_rows(&run.join("reward/metrics.jsonl"));
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
        md.push_str("| | SFT | PPO |\n|---|---|---|\n");
        let _ = writeln!(md, "| oracle score (max 2.0) | {} | {} |", f(g("/sft/oracle_score")), f(g("/ppo/oracle_score")));
        let _ = writeln!(md, "| RM score (normalised) | {} | {} |", f(g("/sft/rm_score")), f(g("/ppo/rm_score")));
        let _ = writeln!(md, "| response length (tokens) | {} | {} |", f(g("/sft/response_len")), f(g("/ppo/response_len")));
        let _ = writeln!(md, "| KL to the SFT model (per response) | 0 | {} |", f(g("/ppo/kl")));
        let _ = writeln!(md, "\nRM win rate of PPO over SFT: **{}**. Reward model held-out pairwise accuracy: **{}**.", f(g("/win_rate_ppo_vs_sft")), f(g("/rm/pairwise_acc")));
        if let Some(b) = g("/kl_bound") {
            let _ = writeln!(md, "KL bound {b}: {}.", if e["kl_within_bound"].as_bool() == Some(true) { "respected" } else { "**exceeded**" });
        }
        let mut bars = vec![("RM score", g("/sft/rm_score").unwrap_or(0.0), g("/ppo/rm_score").unwrap_or(0.0))];
        if let (Some(a), Some(b)) = (g("/sft/oracle_score"), g("/ppo/oracle_score")) {
            bars.insert(0, ("oracle score", a, b));
        }
        bar_chart(&plots.join("eval.png"), &bars)?;
        md.push_str("\n![SFT vs PPO](plots/eval.png)\n\n");
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
        let t = |k: &str| ppo.iter().filter_map(|r| r.get(k)?.as_f64()).sum::<f64>() / ppo.len() as f64;
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

    if let Ok(text) = std::fs::read_to_string(run.join("eval_samples.jsonl")) {
        let rows: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        if !rows.is_empty() {
            md.push_str("## Sample responses on held-out prompts\n\n| prompt | SFT | PPO |\n|---|---|---|\n");
            // Spread the picks over the set (samples of one prompt are adjacent).
            let stride = (rows.len() / samples.max(1)).max(1);
            for r in rows.iter().step_by(stride).take(samples) {
                let cell = |k: &str, s: &str, o: &str| {
                    let oracle = r[o].as_f64().map_or(String::new(), |x| format!(", oracle {x}"));
                    format!("{} (RM {:.2}{oracle})", md_cell(r[k].as_str().unwrap_or("")), r[s].as_f64().unwrap_or(0.0))
                };
                let _ = writeln!(md, "| {} | {} | {} |", md_cell(r["prompt"].as_str().unwrap_or("")), cell("sft", "sft_rm", "sft_oracle"), cell("ppo", "ppo_rm", "ppo_oracle"));
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

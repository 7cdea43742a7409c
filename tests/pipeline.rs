//! `rlhf pipeline run configs/pipeline/ci.toml`: the whole chain from nothing on CPU. PPO must
//! beat SFT on held-out prompts by the oracle and by the reward model, with the KL in bounds; an
//! interrupted PPO stage resumes; a finished pipeline re-runs as all skips, and a changed section
//! reruns from its stage on; the report and its plots exist.

use std::process::{Command, Output};

use crate::common::rlhf;

fn check(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    err + &String::from_utf8_lossy(&o.stdout)
}

#[test]
fn ci_pipeline_ppo_beats_sft_and_resumes() {
    let repo = std::env::var("RLHF_REPO").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let config = format!("{repo}/configs/pipeline/ci.toml");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let out_s = out.to_str().unwrap();

    // Interrupted during PPO (after its checkpoint at iteration 10)…
    let log = check(&rlhf(&["pipeline", "run", &config, "--out", out_s, "--set", "ppo.ppo.halt_after=10"]));
    assert!(log.contains("ppo: stopped early"), "{log}");
    assert!(out.join("sft/final/config.json").exists() && !out.join("ppo/final").exists());
    // …and finished with --resume: earlier stages are skipped, PPO continues from iteration 10.
    let log = check(&rlhf(&["pipeline", "run", &config, "--out", out_s, "--resume"]));
    for stage in ["data", "pretrain", "sft", "reward"] {
        assert!(log.contains(&format!("{stage}: complete, skipped")), "{stage}: {log}");
    }
    assert!(log.contains("resuming from"), "{log}");
    let ppo = rlhf_train::metrics::read_metrics(&out.join("ppo/metrics.jsonl")).unwrap();
    let iterations: Vec<u64> = ppo.iter().map(|r| r["iteration"].as_u64().unwrap()).collect();
    assert_eq!(iterations, (1..=iterations.len() as u64).collect::<Vec<_>>(), "one line per iteration, none repeated");

    // PPO raised the reward model's score over its iterations…
    let rm: Vec<f64> = ppo.iter().map(|r| r["rm_score"].as_f64().unwrap()).collect();
    let k = rm.len() / 4;
    let (early, late) = (rm[..k].iter().sum::<f64>() / k as f64, rm[rm.len() - k..].iter().sum::<f64>() / k as f64);
    assert!(late > early, "rm_score: first quarter {early:.3}, last quarter {late:.3}");

    // …and beats SFT on held-out prompts, by the oracle and by the RM, within the KL bound.
    let eval: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    let g = |p: &str| eval.pointer(p).and_then(|v| v.as_f64()).unwrap_or_else(|| panic!("{p} missing: {eval}"));
    assert!(g("/ppo/oracle_score") > g("/sft/oracle_score"), "{eval}");
    assert!(g("/ppo/rm_score") > g("/sft/rm_score"), "{eval}");
    assert!(g("/win_rate_ppo_vs_sft") > 0.5, "{eval}");
    assert!(g("/rm/pairwise_acc") > 0.65, "{eval}");
    assert_eq!(eval["kl_within_bound"], true, "{eval}");

    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for plot in ["eval.png", "sft_loss.png", "rm_accuracy.png", "ppo.png"] {
        assert!(report.contains(&format!("plots/{plot}")), "{plot} not in the report");
        let bytes = std::fs::read(out.join("plots").join(plot)).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{plot} is not a PNG");
    }
    assert!(report.contains("| prompt | SFT | PPO |"), "{report}");

    // A finished pipeline re-runs as skips only.
    let log = check(&rlhf(&["pipeline", "run", &config, "--out", out_s]));
    for stage in ["data", "pretrain", "sft", "reward", "ppo", "eval", "report"] {
        assert!(log.contains(&format!("{stage}: complete, skipped")), "{stage}: {log}");
    }

    // A changed section reruns its stage and every later one; earlier stages stay skipped. The new
    // [eval] also has a judge (one that prefers the longer answer) compare PPO with SFT.
    let (url, seen) = rlhf_teacher::testing::scripted_server(|_, body| {
        let prompt = rlhf_teacher::testing::last_message(body);
        let answer = |open: &str, close: &str| {
            let start = prompt.find(open).unwrap() + open.len();
            prompt[start..start + prompt[start..].find(close).unwrap()].chars().count()
        };
        let (first, second) = (answer("Assistant A's Answer]\n", "\n[The End"), answer("Assistant B's Answer]\n", "\n[The End"));
        let verdict = ["[[B]]", "[[C]]", "[[A]]"][(first.cmp(&second) as i32 + 1) as usize];
        (200, rlhf_teacher::testing::completion(&format!("Longer is better: {verdict}")))
    });
    let judge = ["eval.judge.endpoint.model=judge".to_string(), format!("eval.judge.endpoint.base_url={url}"), "eval.judge.limit=6".into(), "eval.judge.max_new_tokens=24".into()];
    let mut args = vec!["pipeline", "run", &config, "--out", out_s, "--set", "eval.max_kl=6.0"];
    judge.iter().for_each(|j| args.extend(["--set", j.as_str()]));
    let log = check(&rlhf(&args));
    for stage in ["data", "pretrain", "sft", "reward", "ppo"] {
        assert!(log.contains(&format!("{stage}: complete, skipped")), "{stage}: {log}");
    }
    assert!(log.contains("eval: its [eval] section changed since it ran; running it again"), "{log}");
    assert!(log.contains("eval: done in") && log.contains("report: done in"), "{log}");
    let eval: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(eval["kl_bound"].as_f64(), Some(6.0), "{eval}");
    let judged: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("judge/judge.json")).unwrap()).unwrap();
    let judgments: Vec<serde_json::Value> =
        std::fs::read_to_string(out.join("judge/judgments.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let longer = |j: &serde_json::Value| j["a"].as_str().unwrap().chars().count().cmp(&j["b"].as_str().unwrap().chars().count());
    let wins = judgments.iter().filter(|j| longer(j).is_gt()).count() as u64;
    assert_eq!(judgments.len(), 6);
    assert_eq!(judged["a_vs_b"]["wins"].as_u64(), Some(wins), "{judged}");
    // Two verdicts per pair; a pair whose two answers are equal asks one question twice, sent once.
    let asked: usize = judgments.iter().map(|j| if j["a"] == j["b"] { 1 } else { 2 }).sum();
    assert_eq!(seen.lock().unwrap().len(), asked);
    assert!(log.contains("judge (PPO = A, SFT = B): A vs B over 6 pairs"), "{log}");
    assert!(std::fs::read_to_string(out.join("report.md")).unwrap().contains("## Judge: PPO against SFT"));

    // The PPO model chats (one turn from stdin).
    let mut child = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["chat", "--model", out.join("ppo/final").to_str().unwrap(), "--temperature", "0", "--max-new-tokens", "16"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all("What is 2 plus 3?\n/reset\n3加4等于多少？\n".as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    let text = check(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let (before, after) = stdout.split_once("(conversation reset)").unwrap_or_else(|| panic!("no reset notice: {text}"));
    assert!(!before.trim().is_empty() && !after.trim().is_empty(), "a reply before and after the reset: {text}");
}

/// The CI chain with LoRA on every trained stage (SFT, reward model, PPO actor and critic; pretraining
/// from scratch trains every weight): PPO still beats SFT on held-out prompts by the oracle and the RM,
/// within the KL bound, and the RM ranks held-out responses.
#[test]
fn ci_pipeline_with_lora_on_every_stage() {
    let repo = std::env::var("RLHF_REPO").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let config = format!("{repo}/configs/pipeline/ci.toml");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let lora = |section: &str, lr: (&str, &str)| {
        vec![
            format!("{section}.r=16"),
            format!("{section}.alpha=32"),
            format!("{section}.target_modules=[\"all-linear\"]"),
            format!("{}={}", lr.0, lr.1),
        ]
    };
    let sets: Vec<String> = [
        lora("sft.lora", ("sft.train.lr", "5e-3")),
        // 2e-3 as for full fine-tuning: at 5e-3 the LoRA reward model came out differently exploitable
        // from build to build (float rounding alone): with one build PPO found a shorter-answer
        // exploit (oracle 0.74 → 0.44, KL 5.9) where the build before improved (0.74 → 0.94, KL 1.3).
        // At 2e-3 three builds improved (0.74 → 0.92–0.94, KL 0.7–2.5).
        lora("reward.lora", ("reward.train.lr", "2e-3")),
        lora("ppo.ppo.lora", ("ppo.ppo.actor_lr", "1e-3")),
        lora("ppo.ppo.critic_lora", ("ppo.ppo.critic_lr", "5e-3")),
    ]
    .concat();
    let mut args = vec!["pipeline".to_string(), "run".into(), config, "--out".into(), out.display().to_string()];
    args.extend(sets.into_iter().flat_map(|s| ["--set".to_string(), s]));
    let log = check(&rlhf(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    for stage in ["sft", "reward", "ppo actor", "ppo critic"] {
        assert!(log.contains(&format!("{stage}: LoRA r=16 alpha=32")), "{stage} without LoRA: {log}");
    }
    let eval: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    let g = |p: &str| eval.pointer(p).and_then(|v| v.as_f64()).unwrap_or_else(|| panic!("{p} missing: {eval}"));
    assert!(g("/ppo/oracle_score") > g("/sft/oracle_score"), "{eval}");
    assert!(g("/ppo/rm_score") > g("/sft/rm_score"), "{eval}");
    assert!(g("/rm/pairwise_acc") > 0.65, "{eval}");
    assert_eq!(eval["kl_within_bound"], true, "{eval}");
}

/// `configs/pipeline/ci_grpo.toml`: SFT → GRPO rewarded by the oracle's verdict (no reward model, no
/// critic). GRPO answers held-out prompts right more often than SFT, within the KL bound, and the
/// training reward for right answers rises over the run.
#[test]
fn ci_grpo_pipeline_gives_more_right_answers_than_sft() {
    let repo = std::env::var("RLHF_REPO").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let config = format!("{repo}/configs/pipeline/ci_grpo.toml");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let log = check(&rlhf(&["pipeline", "run", &config, "--out", out.to_str().unwrap()]));
    assert!(log.contains("grpo: done in"), "{log}");
    for absent in ["reward", "ppo", "dpo"] {
        assert!(!out.join(absent).exists(), "{absent}/ in a GRPO pipeline");
    }
    let eval: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    let g = |p: &str| eval.pointer(p).and_then(|v| v.as_f64()).unwrap_or_else(|| panic!("{p} missing: {eval}"));
    // The reward is the oracle's verdict: GRPO answers right more often than SFT, sampled as trained.
    assert!(g("/grpo/oracle_parts/correct") > g("/sft/oracle_parts/correct"), "{eval}");
    assert!(g("/grpo/oracle_score") > g("/sft/oracle_score"), "{eval}");
    assert_eq!(eval["kl_within_bound"], true, "{eval}");
    assert!(eval.get("rm").is_none(), "no reward model, no RM scores: {eval}");
    // Eval scores by the stage's own [[grpo.rewards]] too: its `correct` source is the oracle's
    // right-answer part, so its mean is the same share, sampled and greedy, for both policies.
    for p in ["sft", "grpo", "greedy/sft", "greedy/grpo"] {
        assert_eq!(g(&format!("/{p}/rewards/correct")), g(&format!("/{p}/oracle_parts/correct")), "{p}: {eval}");
        assert_eq!(g(&format!("/{p}/rewards/language")), g(&format!("/{p}/oracle_parts/language")), "{p}: {eval}");
    }

    let rows = rlhf_train::metrics::read_metrics(&out.join("grpo/metrics.jsonl")).unwrap();
    assert_eq!(rows.len(), 100);
    let correct: Vec<f64> = rows.iter().map(|r| r["rewards/correct/mean"].as_f64().unwrap()).collect();
    let (early, late) = (correct[..20].iter().sum::<f64>() / 20.0, correct[80..].iter().sum::<f64>() / 20.0);
    assert!(late > early, "training reward for right answers did not rise: {correct:?}");
    for key in ["rewards/language/mean", "rewards/format/mean", "kl", "train_tokens_per_s"] {
        assert!(rows[0].get(key).is_some(), "{key} missing: {}", rows[0]);
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## Critic-free RL") && report.contains("plots/grpo.png") && out.join("plots/grpo.png").exists(), "{report}");
    assert!(report.contains("| prompt | SFT | GRPO |") && report.contains("| oracle: right answer (share) |"), "{report}");
    assert!(report.contains("| reward `correct` (mean) |") && report.contains("| greedy: reward `correct` (mean) |"), "{report}");
}

/// `configs/pipeline/ci_self_improve.toml`: SFT → self-improvement → eval with 8-sample votes. The
/// stage writes the SFT model's majority-voted paths (chosen without the answers) and trains on
/// them; on the demo's labeled questions the vote beats single samples, and the agreement filter
/// keeps majorities that are right more often than the vote as a whole; eval measures single and
/// voted accuracy for both models, and the self-improved model's single samples are right more
/// often than SFT's.
#[test]
fn ci_self_improve_pipeline_trains_on_its_own_votes() {
    let repo = std::env::var("RLHF_REPO").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let config = format!("{repo}/configs/pipeline/ci_self_improve.toml");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let log = check(&rlhf(&["pipeline", "run", &config, "--out", out.to_str().unwrap()]));
    assert!(log.contains("self_improve: done in"), "{log}");
    let dir = out.join("self_improve");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("voted.jsonl.summary.json")).unwrap()).unwrap();
    let s = |k: &str| summary[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {summary}"));
    let voted = std::fs::read_to_string(dir.join("voted.jsonl")).unwrap();
    assert!(s("paths") > 0.0 && voted.lines().count() == s("paths") as usize, "{summary}");
    assert!(s("voted_right") > s("single_sample_right"), "{summary}");
    assert!(s("kept_right") > s("voted_right"), "{summary}");
    assert!(dir.join("final/config.json").exists() && dir.join("metrics.jsonl").exists());

    let eval: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    let g = |p: &str| eval.pointer(p).and_then(|v| v.as_f64()).unwrap_or_else(|| panic!("{p} missing: {eval}"));
    assert_eq!(eval["policies"], serde_json::json!(["self_improve"]));
    assert_eq!(eval["vote"]["samples"], 8);
    for p in ["sft", "self_improve"] {
        assert!(g(&format!("/vote/{p}/voted_right")) >= 0.0 && g(&format!("/vote/{p}/mean_agreement")) > 0.0, "{eval}");
    }
    assert!(g("/vote/self_improve/single_sample_right") > g("/vote/sft/single_sample_right"), "{eval}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## Self-improvement") && report.contains("| majority of 8 samples: right answer (share) |"), "{report}");
    assert!(report.contains("| | SFT | Self-improved |") && out.join("plots/self_improve_loss.png").exists(), "{report}");
}

/// `configs/pipeline/ci_dpo.toml`: SFT → DPO on the K = 4 demo rankings, no reward model. DPO beats
/// SFT on held-out prompts by the oracle with all pairs, and again with Plackett-Luce (a changed [dpo]
/// section reruns DPO, eval and report only), within the KL bound.
#[test]
fn ci_dpo_pipeline_beats_sft_with_all_pairs_and_plackett_luce() {
    let repo = std::env::var("RLHF_REPO").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let config = format!("{repo}/configs/pipeline/ci_dpo.toml");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let out_s = out.to_str().unwrap();
    let read_eval = || -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap() };

    let log = check(&rlhf(&["pipeline", "run", &config, "--out", out_s]));
    assert!(log.contains("dpo: done in"), "{log}");
    assert!(!out.join("reward").exists(), "no reward model in this pipeline");
    for ranking_loss in ["all_pairs", "plackett_luce"] {
        if ranking_loss == "plackett_luce" {
            let set = format!("dpo.dpo.ranking_loss=\"{ranking_loss}\"");
            let log = check(&rlhf(&["pipeline", "run", &config, "--out", out_s, "--set", &set]));
            for stage in ["data", "pretrain", "sft"] {
                assert!(log.contains(&format!("{stage}: complete, skipped")), "{stage}: {log}");
            }
            assert!(log.contains("dpo: its [dpo] section changed since it ran"), "{log}");
        }
        let eval = read_eval();
        let g = |p: &str| eval.pointer(p).and_then(|v| v.as_f64()).unwrap_or_else(|| panic!("{p} missing: {eval}"));
        assert!(g("/dpo/oracle_score") > g("/sft/oracle_score"), "{ranking_loss}: {eval}");
        assert_eq!(eval["kl_within_bound"], true, "{ranking_loss}: {eval}");
        assert!(eval.get("rm").is_none() && eval.pointer("/dpo/rm_score").is_none(), "no reward model, no RM scores: {eval}");
        // The oracle's parts, sampled and greedy, per policy.
        for p in ["/dpo/oracle_parts/correct", "/sft/oracle_parts/language", "/greedy/sft/oracle_parts/correct", "/greedy/dpo/oracle_score"] {
            assert!((0.0..=2.0).contains(&g(p)), "{p}: {eval}");
        }
        let rows = rlhf_train::metrics::read_metrics(&out.join("dpo/metrics.jsonl")).unwrap();
        let acc: Vec<f64> = rows.iter().filter_map(|r| r["eval_rewards/accuracies"].as_f64()).collect();
        assert!(*acc.last().unwrap() > 0.6, "{ranking_loss}: held-out reward accuracy {acc:?}");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## Direct preference optimization") && report.contains("plots/dpo.png"), "{report}");
    assert!(report.contains("| prompt | SFT | DPO |"), "{report}");
    assert!(report.contains("| oracle: right answer (share) |") && report.contains("| greedy: right answer (share) |"), "{report}");
}

/// A pipeline with no SFT stage: word problems → GRPO straight from a Hugging Face folder (the
/// tiny fixture) with the `math_answer` verifier → eval against the folder it started from, scored
/// by `[[eval.rewards]]` (strict and last-number) → report. A `[data] set` it does not know is named.
#[test]
fn word_problems_grpo_pipeline_evaluates_against_the_starting_model() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = crate::common::fixture("hf-tiny-llama");
    let config = tmp.path().join("wp.toml");
    let text = format!(
        r#"
[data]
set = "word_problems"
prompts = 16
heldout = 6
[grpo]
seed = 1
[grpo.model]
policy = "{policy}"
[grpo.data]
prompts = "{{run}}/data/prompts.jsonl"
max_prompt_len = 96
[grpo.generate]
max_new_tokens = 4
[grpo.grpo]
iterations = 1
prompts_per_iteration = 2
samples_per_prompt = 2
micro_batch_size = 4
lr = 1e-3
[[grpo.rewards]]
name = "correct"
type = "math_answer"
[eval]
prompts = "{{run}}/data/heldout_prompts.jsonl"
max_new_tokens = 4
max_prompt_len = 96
[[eval.rewards]]
name = "strict"
type = "math_answer"
[[eval.rewards]]
name = "lenient"
type = "math_answer"
extract = "last_number"
"#,
        policy = policy.display()
    );
    std::fs::write(&config, text).unwrap();
    let out = tmp.path().join("run");
    let log = check(&rlhf(&["pipeline", "run", config.to_str().unwrap(), "--out", out.to_str().unwrap()]));
    assert!(log.contains("word problems: 16 prompts, 6 held-out"), "{log}");
    assert!(!out.join("sft").exists());
    let eval: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(eval["baseline_model"].as_str(), Some(policy.to_str().unwrap()), "{eval}");
    assert_eq!(eval["prompts"], 6);
    for p in ["sft", "grpo", "greedy/sft", "greedy/grpo"] {
        for source in ["strict", "lenient"] {
            let v = eval.pointer(&format!("/{p}/rewards/{source}")).and_then(|v| v.as_f64()).unwrap_or_else(|| panic!("{p} {source}: {eval}"));
            assert!((0.0..=1.0).contains(&v), "{p} {source} {v}");
        }
        assert!(eval.pointer(&format!("/{p}/rewards/correct")).is_none(), "[[eval.rewards]] replaces the stage's: {eval}");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| reward `strict` (mean) |") && report.contains("No SFT stage in this run"), "{report}");
    assert!(!report.contains("oracle score"), "no demo prompts, no oracle rows: {report}");

    std::fs::write(&config, "[data]\nset = \"gsm9k\"\nprompts = 1\nheldout = 1\n").unwrap();
    let o = rlhf(&["pipeline", "run", config.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("\"gsm9k\"") && err.contains("word_problems"), "{err}");
}

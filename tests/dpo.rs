//! The DPO stage end to end on the tiny fixture model: it learns the demo's K = 4 rankings with
//! TRL's metric names; the precomputed reference equals the online one; `--resume` reuses the
//! stored reference pass and ends bit-exact with an uninterrupted run; every loss runs, the
//! reference-free ones without a reference; LoRA DPO holds one base.

use std::path::{Path, PathBuf};

use rlhf_dpo::DpoConfig;
use rlhf_runtime::CpuTrain;

use crate::common::{column, fixture};

fn demo(dir: &Path) -> PathBuf {
    let sizes = rlhf_data::demo::DemoSizes { pretrain_docs: 10, sft: 10, rankings: 120, prompts: 10 };
    rlhf_data::demo::write_demo(&dir.join("demo"), 0, sizes).unwrap();
    dir.join("demo/rankings.jsonl")
}

fn config(train: &Path, steps: usize, extra: &[&str]) -> DpoConfig {
    let text = format!(
        r#"
seed = 3
[model]
from = "{}"
[data]
train = "{}"
eval_fraction = 0.2
max_len = 96
[train]
steps = {steps}
batch_size = 8
micro_batch_size = 4
lr = 2e-3
warmup_steps = 2
eval_every = 10
save_every = 3
"#,
        fixture("hf-tiny-llama").display(),
        train.display()
    );
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), text).unwrap();
    let sets: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    rlhf_train::config::load_config(Some(tmp.path()), &sets).unwrap()
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    rlhf_train::metrics::read_metrics(&out.join("metrics.jsonl")).unwrap()
}

fn final_weights(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("final/model.safetensors")).unwrap()
}

#[test]
fn dpo_learns_demo_rankings_with_trl_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let train = demo(tmp.path());
    let out = tmp.path().join("dpo");
    rlhf_dpo::run::<CpuTrain>(&config(&train, 20, &[]), &out, false, &Default::default()).unwrap();
    let rows = metrics(&out);
    for key in [
        "loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected", "pairwise_acc", "top1_acc",
        "eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "eval_pairwise_acc", "eval_top1_acc",
    ] {
        assert!(!column(&rows, key).is_empty(), "metrics.jsonl lacks {key}");
    }
    // Step 1 is taken with the policy equal to its reference: every pair's loss is ln 2 (up to the
    // reference pass's batching, which pads differently).
    let loss = column(&rows, "loss");
    assert!((loss[0] - 2f64.ln()).abs() < 1e-3, "first loss {}", loss[0]);
    assert!(column(&rows, "rewards/margins")[0].abs() < 1e-3);
    // Training separates chosen from rejected: the margin and accuracy grow, the loss falls.
    let margins = column(&rows, "rewards/margins");
    assert!(margins.last().unwrap() > &0.05, "margins {margins:?}");
    assert!(loss.last().unwrap() < &loss[0], "loss {loss:?}");
    let eval_acc = column(&rows, "eval_rewards/accuracies");
    assert!(*eval_acc.last().unwrap() > 0.5, "held-out accuracy {eval_acc:?}");
    // The policy is a Hugging Face folder that loads.
    assert!(out.join("final/config.json").exists() && out.join("final/tokenizer.json").exists());
    rlhf_model::CausalLm::<rlhf_runtime::Cpu>::from_hf_dir(&out.join("final"), &Default::default()).unwrap();
}

#[test]
fn precomputed_reference_equals_online_and_resume_reuses_it_bit_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let train = demo(tmp.path());
    let device = Default::default();
    let (whole, online, halted) = (tmp.path().join("whole"), tmp.path().join("online"), tmp.path().join("halted"));
    rlhf_dpo::run::<CpuTrain>(&config(&train, 6, &[]), &whole, false, &device).unwrap();
    rlhf_dpo::run::<CpuTrain>(&config(&train, 6, &["dpo.reference=\"online\""]), &online, false, &device).unwrap();
    assert!(whole.join(rlhf_dpo::REFERENCE_LOGPS_FILE).exists());
    assert!(!online.join(rlhf_dpo::REFERENCE_LOGPS_FILE).exists(), "an online reference stores no pass");
    // The same numbers, step by step, up to float rounding of differently padded batches.
    let (a, b) = (metrics(&whole), metrics(&online));
    for key in ["loss", "rewards/chosen", "rewards/rejected", "logps/chosen", "eval_loss"] {
        let (x, y) = (column(&a, key), column(&b, key));
        assert_eq!(x.len(), y.len(), "{key}");
        for (u, v) in x.iter().zip(&y) {
            assert!((u - v).abs() <= 1e-4 * (1.0 + u.abs()), "{key}: precomputed {u} vs online {v}");
        }
    }

    // Interrupted after step 3 (its checkpoint), then resumed: the stored pass is reused as is and
    // the run ends bit-exact with the uninterrupted one.
    rlhf_dpo::run::<CpuTrain>(&config(&train, 6, &["train.halt_after=3"]), &halted, false, &device).unwrap();
    let stored = halted.join(rlhf_dpo::REFERENCE_LOGPS_FILE);
    let (bytes, modified) = (std::fs::read(&stored).unwrap(), std::fs::metadata(&stored).unwrap().modified().unwrap());
    assert_eq!(bytes, std::fs::read(whole.join(rlhf_dpo::REFERENCE_LOGPS_FILE)).unwrap(), "same model and data: the same pass");
    rlhf_dpo::run::<CpuTrain>(&config(&train, 6, &[]), &halted, true, &device).unwrap();
    assert_eq!(std::fs::metadata(&stored).unwrap().modified().unwrap(), modified, "the pass was reused, not rewritten");
    assert_eq!(final_weights(&halted), final_weights(&whole), "resumed run differs from the uninterrupted one");
    let (r, w) = (metrics(&halted), metrics(&whole));
    assert_eq!(column(&r, "loss"), column(&w, "loss"));

    // Other data (another held-out split): the key changes and the pass is made again.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(&stored, other.join(rlhf_dpo::REFERENCE_LOGPS_FILE)).unwrap();
    rlhf_dpo::run::<CpuTrain>(&config(&train, 1, &["data.eval_fraction=0.3"]), &other, false, &device).unwrap();
    let redone: serde_json::Value = serde_json::from_slice(&std::fs::read(other.join(rlhf_dpo::REFERENCE_LOGPS_FILE)).unwrap()).unwrap();
    let before: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_ne!(redone["key"], before["key"]);
    assert_eq!(redone["eval"].as_array().unwrap().len(), 36, "30% of 120 rankings held out");
}

#[test]
fn every_loss_trains_and_reference_free_ones_load_no_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let train = demo(tmp.path());
    let cases: [(&str, &[&str]); 8] = [
        ("cdpo", &["dpo.label_smoothing=0.1"]),
        ("robust", &["dpo.loss=\"robust\"", "dpo.label_smoothing=0.1"]),
        ("hinge", &["dpo.loss=\"hinge\""]),
        ("ipo", &["dpo.loss=\"ipo\"", "dpo.ipo_normalize=\"sum\""]),
        ("simpo", &["dpo.loss=\"simpo\"", "dpo.beta=2.0"]),
        ("orpo", &["dpo.loss=\"orpo\""]),
        ("kto", &["dpo.loss=\"kto\""]),
        ("plackett_luce", &["dpo.ranking_loss=\"plackett_luce\"", "dpo.nll_coef=0.1"]),
    ];
    for (name, sets) in cases {
        let out = tmp.path().join(name);
        rlhf_dpo::run::<CpuTrain>(&config(&train, 4, sets), &out, false, &Default::default()).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let rows = metrics(&out);
        let loss = column(&rows, "loss");
        assert_eq!(loss.len(), 4, "{name}");
        assert!(loss.iter().all(|l| l.is_finite()), "{name}: {loss:?}");
        let metric = if name == "kto" { "rewards/chosen_sum" } else { "rewards/margins" };
        assert!(!column(&rows, metric).is_empty(), "{name} lacks {metric}");
        let reference_free = name == "simpo" || name == "orpo";
        assert_eq!(out.join(rlhf_dpo::REFERENCE_LOGPS_FILE).exists(), !reference_free, "{name}");
    }
    // KTO logs its reference point and TRL's sums and counts.
    let kto = metrics(&tmp.path().join("kto"));
    assert!(!column(&kto, "kl").is_empty());
    assert!(column(&kto, "count/chosen").iter().all(|&c| c > 0.0) && column(&kto, "count/rejected").iter().all(|&c| c > 0.0));
}

/// KTO on unpaired records — `{"prompt", "completion", "label"}`, TRL's format — made from the demo
/// rankings (each one's best response desirable, its worst undesirable, as separate records), with a
/// malformed line skipped; the pairwise losses refuse such a file.
#[test]
fn kto_trains_on_unpaired_labelled_completions() {
    let tmp = tempfile::tempdir().unwrap();
    let rankings = demo(tmp.path());
    let mut lines = Vec::new();
    for line in std::fs::read_to_string(&rankings).unwrap().lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let (completions, ranking) = (r["completions"].as_array().unwrap(), r["ranking"].as_array().unwrap());
        let rank = |i: &usize| ranking[*i].as_u64().unwrap();
        let (best, worst) = ((0..ranking.len()).min_by_key(rank).unwrap(), (0..ranking.len()).max_by_key(rank).unwrap());
        for (completion, label) in [(&completions[best], true), (&completions[worst], false)] {
            lines.push(serde_json::json!({"prompt": r["prompt"], "completion": completion, "label": label}).to_string());
        }
    }
    lines.insert(3, r#"{"prompt":"q","completion":"a","label":"yes"}"#.into());
    let unpaired = tmp.path().join("unpaired.jsonl");
    std::fs::write(&unpaired, lines.join("\n") + "\n").unwrap();
    let out = tmp.path().join("kto");
    rlhf_dpo::run::<CpuTrain>(&config(&unpaired, 4, &["dpo.loss=\"kto\"", "data.skip_invalid=true"]), &out, false, &Default::default()).unwrap();
    let rows = metrics(&out);
    let loss = column(&rows, "loss");
    assert_eq!(loss.len(), 4);
    assert!(loss.iter().all(|l| l.is_finite()), "{loss:?}");
    // Step 1: policy = reference and z₀ = 0, so every response costs 1 − σ(0) = ½.
    assert!((loss[0] - 0.5).abs() < 1e-3, "{loss:?}");
    assert!(column(&rows, "count/chosen").iter().chain(&column(&rows, "count/rejected")).all(|&c| c > 0.0));
    let e = rlhf_dpo::run::<CpuTrain>(&config(&unpaired, 2, &["data.skip_invalid=true"]), &tmp.path().join("sigmoid"), false, &Default::default()).unwrap_err();
    assert!(format!("{e:#}").contains("train only `loss = \"kto\"`"), "{e:#}");
}

#[test]
fn bad_loss_combinations_are_refused_before_loading() {
    let train = Path::new("nowhere.jsonl");
    let cases = [
        (vec!["dpo.ranking_loss=\"plackett_luce\"", "dpo.loss=\"hinge\""], "plackett_luce"),
        (vec!["dpo.loss=\"robust\"", "dpo.label_smoothing=0.5"], "label_smoothing"),
        (vec!["dpo.loss=\"hinge\"", "dpo.label_smoothing=0.1"], "label_smoothing"),
        (vec!["dpo.loss=\"simpo\"", "model.reference=\"x\""], "model.reference"),
        (vec!["dpo.beta=0"], "dpo.beta"),
    ];
    for (sets, needle) in cases {
        let e = config(train, 2, &sets).validate().unwrap_err();
        assert!(format!("{e:#}").contains(needle), "{sets:?}: {e:#}");
    }
}

#[test]
fn lora_dpo_holds_one_base() {
    let tmp = tempfile::tempdir().unwrap();
    let train = demo(tmp.path());
    let lora = ["lora.r=4", "lora.alpha=8", "lora.target_modules=[\"q_proj\", \"v_proj\"]"];
    let online: Vec<&str> = lora.iter().copied().chain(["dpo.reference=\"online\""]).collect();
    let shape = |d: &Path| rlhf_train::memory::shape_from_dir(d);
    // Online: the reference is the policy's base with adapters off — no bytes of its own.
    let plan = rlhf_dpo::memory_plan(&config(&train, 2, &online), &shape).unwrap();
    let reference = plan.resident.iter().find(|r| r.item == "reference weights").expect("a reference row");
    assert_eq!(reference.bytes, 0, "{reference:?}");
    assert!(reference.detail.contains("policy's base"), "{reference:?}");
    // Full training online holds a second model; precomputed holds none during training.
    let full = rlhf_dpo::memory_plan(&config(&train, 2, &["dpo.reference=\"online\""]), &shape).unwrap();
    assert!(full.resident.iter().any(|r| r.item == "reference weights" && r.bytes > 0));
    let precomputed = rlhf_dpo::memory_plan(&config(&train, 2, &lora), &shape).unwrap();
    assert!(!precomputed.resident.iter().any(|r| r.item.starts_with("reference")));
    assert!(precomputed.phases.iter().any(|(name, _)| name.starts_with("reference pass")));
    // With LoRA the config's reference is the starting policy (its base), not a folder to load.
    assert_eq!(rlhf_dpo::reference_source(&config(&train, 2, &online)), Some(rlhf_dpo::ReferenceSource::StartingPolicy));

    // It trains, and with the adapters alone changing the base is the reference throughout: the
    // online and precomputed runs agree.
    let (a, b) = (tmp.path().join("online"), tmp.path().join("precomputed"));
    rlhf_dpo::run::<CpuTrain>(&config(&train, 3, &online), &a, false, &Default::default()).unwrap();
    rlhf_dpo::run::<CpuTrain>(&config(&train, 3, &lora), &b, false, &Default::default()).unwrap();
    let (x, y) = (column(&metrics(&a), "loss"), column(&metrics(&b), "loss"));
    for (u, v) in x.iter().zip(&y) {
        assert!((u - v).abs() <= 1e-4, "online {u} vs precomputed {v}");
    }
    assert!(a.join("final/model.safetensors").exists());
}

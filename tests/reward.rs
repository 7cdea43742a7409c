//! Stage 2 end to end: the reward model trains on K = 4 demo rankings and on ColossalChat's
//! preference file as K = 2, its final/ reloads with identical scores, and the demo's label-noise
//! cap on pairwise accuracy is what the closing notes quote.

use std::path::Path;

use rlhf_data::{load, Format, Kind, LoadOptions, Record};
use rlhf_runtime::{Cpu, CpuTrain};
use rlhf_model::RewardModel;
use rlhf_data::encode::ranking_pairs;
use rlhf_reward::RewardConfig;

use crate::common::{column, fixture};

fn config(model: &Path, train: &Path, steps: usize, extra: &[&str]) -> RewardConfig {
    let text = format!(
        r#"
seed = 2
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
save_every = 10
"#,
        model.display(),
        train.display()
    );
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), text).unwrap();
    let sets: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    rlhf_train::config::load_config(Some(tmp.path()), &sets).unwrap()
}

#[test]
fn reward_model_learns_demo_rankings_and_reloads_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let sizes = rlhf_data::demo::DemoSizes { pretrain_docs: 10, sft: 50, rankings: 200, prompts: 10 };
    rlhf_data::demo::write_demo(&tmp.path().join("demo"), 0, sizes).unwrap();
    let out = tmp.path().join("rm");
    let cfg = config(&fixture("hf-tiny-llama"), &tmp.path().join("demo/rankings.jsonl"), 30, &[&format!(
        "reference=\"{}\"",
        tmp.path().join("demo/sft.jsonl").display()
    )]);
    let model = rlhf_reward::run::<CpuTrain>(&cfg, &out, false, &Default::default()).unwrap();
    let rows = rlhf_train::metrics::read_metrics(&out.join("metrics.jsonl")).unwrap();
    for key in ["loss", "pairwise_acc", "top1_acc", "chosen_score", "rejected_score", "margin", "eval_loss", "eval_pairwise_acc", "eval_top1_acc"] {
        assert!(!column(&rows, key).is_empty(), "metrics.jsonl lacks {key}");
    }
    let eval = column(&rows, "eval_pairwise_acc");
    assert!(*eval.last().unwrap() > 0.6, "held-out pairwise accuracy {eval:?}");
    let loss = column(&rows, "loss");
    let (first, last) = (loss[..5].iter().sum::<f64>(), loss[loss.len() - 5..].iter().sum::<f64>());
    assert!(last < first, "loss {loss:?}");

    // final/ = body folder + head + reward.json; loading it back gives identical scores.
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("final/reward.json")).unwrap()).unwrap();
    assert_eq!(info["normalization"]["count"], 50);
    let again = RewardModel::<Cpu>::from_dir(&out.join("final"), &Default::default()).unwrap();
    let seqs = vec![vec![1u32, 350, 289, 201, 9, 40, 2], vec![1u32, 12, 2]];
    let d = Default::default();
    let a = rlhf_reward::score_stats(&model, &seqs, 0, 2, &d).unwrap();
    let b = rlhf_reward::score_stats(&again, &seqs, 0, 2, &d).unwrap();
    assert_eq!(a, b);
    // The reference set scores 0 on average after normalisation.
    let loaded = load(&tmp.path().join("demo/sft.jsonl"), LoadOptions { kind: Kind::Sft, format: Format::Auto, skip_invalid: false }).unwrap();
    let tok = rlhf_data::Tokenizer::from_dir(&fixture("hf-tiny-llama")).unwrap();
    let fmt = rlhf_data::ChatFormat::from_tokenizer(&tok).unwrap();
    let refs: Vec<Vec<u32>> = loaded
        .records
        .iter()
        .filter_map(|(_, r)| match r {
            Record::Sft(m) => match rlhf_data::encode::encode_sft(&tok, &fmt, m, 96).unwrap() {
                rlhf_data::Encoded::Kept(s) | rlhf_data::Encoded::Truncated(s) => Some(s.ids),
                rlhf_data::Encoded::Dropped => None,
            },
            _ => None,
        })
        .collect();
    let (mean, _) = rlhf_reward::score_stats(&again, &refs, 0, 16, &d).unwrap();
    assert!(mean.abs() < 1e-3, "reference mean {mean}");

    // `rlhf reward score` prints one line per ranking and the accuracy.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["reward", "score", "--model", out.join("final").to_str().unwrap(), "--data"])
        .arg(tmp.path().join("demo/rankings.jsonl"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 200);
    assert_eq!(lines[0]["scores"].as_array().unwrap().len(), 4);
    assert!(String::from_utf8_lossy(&o.stderr).contains("pairwise accuracy"));
}

#[test]
fn colossalchat_preference_data_trains_as_k2() {
    let tmp = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/colossalchat/test_dpo_data.jsonl");
    let cfg = config(&fixture("hf-tiny-llama"), &data, 3, &["data.eval_fraction=0", "data.max_len=512", "train.batch_size=1", "train.micro_batch_size=1"]);
    rlhf_reward::run::<CpuTrain>(&cfg, &tmp.path().join("rm"), false, &Default::default()).unwrap();
    let rows = rlhf_train::metrics::read_metrics(&tmp.path().join("rm/metrics.jsonl")).unwrap();
    assert_eq!(column(&rows, "loss").len(), 3);
    assert!(tmp.path().join("rm/final/reward_head.safetensors").exists());
}

/// How often the demo's labels agree with the oracle's own order: the ceiling a perfect reward model
/// reaches on held-out pairwise accuracy (label noise, and oracle ties among differently ranked
/// responses, cap it).
#[test]
fn demo_label_noise_caps_pairwise_accuracy() {
    let tmp = tempfile::tempdir().unwrap();
    rlhf_data::demo::write_demo(tmp.path(), 0, rlhf_data::demo::DemoSizes::default()).unwrap();
    let loaded = load(&tmp.path().join("rankings.jsonl"), LoadOptions { kind: Kind::Ranking, format: Format::Auto, skip_invalid: false }).unwrap();
    let (mut agree, mut prompts) = (0.0, 0.0);
    for (_, r) in &loaded.records {
        let Record::Ranking(r) = r else { panic!() };
        let pairs = ranking_pairs(&r.ranks, 0);
        if pairs.is_empty() {
            continue;
        }
        let score = |i: usize| rlhf_data::demo::oracle(&r.prompt[0].content, &r.responses[i]).unwrap().total();
        prompts += 1.0;
        agree += pairs.iter().filter(|p| score(p.better) > score(p.worse)).count() as f64 / pairs.len() as f64;
    }
    let cap = agree / prompts;
    eprintln!("demo pairwise-accuracy cap (oracle vs noisy labels): {cap:.4}");
    assert!((0.85..0.99).contains(&cap), "cap {cap}");
}

/// Every shipped config parses (unknown keys would be errors).
#[test]
fn shipped_configs_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    for entry in std::fs::read_dir(root.join("sft")).unwrap() {
        let p = entry.unwrap().path();
        rlhf_train::config::load_config::<rlhf_sft::SftConfig>(Some(&p), &[]).unwrap_or_else(|e| panic!("{e}"));
    }
    for entry in std::fs::read_dir(root.join("reward")).unwrap() {
        let p = entry.unwrap().path();
        rlhf_train::config::load_config::<RewardConfig>(Some(&p), &[]).unwrap_or_else(|e| panic!("{e}"));
    }
    for entry in std::fs::read_dir(root.join("ppo")).unwrap() {
        let p = entry.unwrap().path();
        let cfg = rlhf_train::config::load_config::<rlhf_ppo::PpoConfig>(Some(&p), &[]).unwrap_or_else(|e| panic!("{e}"));
        cfg.validate().unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    for entry in std::fs::read_dir(root.join("pipeline")).unwrap() {
        let p = entry.unwrap().path();
        let (cfg, ..) = rlhf_cli::pipeline::load(&p, &[], None, Path::new("/run")).unwrap_or_else(|e| panic!("{e:#}"));
        for c in cfg.pretrain.iter().chain(&cfg.sft) {
            c.train.validate().unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
        if let Some(c) = &cfg.ppo {
            c.validate().unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
    }
}

/// A LoRA reward model: it learns the rankings with the body frozen, its checkpoint holds adapters
/// and the head only, `final/` (merged body + head) scores like the trained model, and
/// `final/adapter/` carries the body's adapters with the head.
#[test]
fn lora_reward_model_learns_and_exports_merged_and_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let sizes = rlhf_data::demo::DemoSizes { pretrain_docs: 10, sft: 20, rankings: 200, prompts: 10 };
    rlhf_data::demo::write_demo(&tmp.path().join("demo"), 0, sizes).unwrap();
    let out = tmp.path().join("rm");
    let extra = ["lora.r=8", "lora.alpha=16", "lora.target_modules=[\"all-linear\"]", "lora.export_adapter=true", "train.lr=1e-2"];
    let cfg = config(&fixture("hf-tiny-llama"), &tmp.path().join("demo/rankings.jsonl"), 30, &extra);
    let model = rlhf_reward::run::<CpuTrain>(&cfg, &out, false, &Default::default()).unwrap();
    let rows = rlhf_train::metrics::read_metrics(&out.join("metrics.jsonl")).unwrap();
    let eval = column(&rows, "eval_pairwise_acc");
    assert!(*eval.last().unwrap() > 0.6, "held-out pairwise accuracy {eval:?}");
    let ckpt = rlhf_train::checkpoint::latest_checkpoint(&out).unwrap();
    let full_model_bytes = std::fs::metadata(fixture("hf-tiny-llama/model.safetensors")).unwrap().len();
    assert!(rlhf_train::checkpoint::dir_size(&ckpt) < full_model_bytes / 2, "checkpoint holds more than adapters");

    let d = Default::default();
    let again = RewardModel::<Cpu>::from_dir(&out.join("final"), &d).unwrap();
    assert!(!again.model.has_lora());
    let seqs = vec![vec![1u32, 350, 289, 201, 9, 40, 2], vec![1u32, 12, 2]];
    let (a, b) = (rlhf_reward::score_stats(&model, &seqs, 0, 2, &d).unwrap(), rlhf_reward::score_stats(&again, &seqs, 0, 2, &d).unwrap());
    assert!((a.0 - b.0).abs() < 1e-5 && (a.1 - b.1).abs() < 1e-5, "merged {b:?} vs trained {a:?}");
    for f in ["adapter_config.json", "adapter_model.safetensors", rlhf_model::hf::REWARD_HEAD_FILE] {
        assert!(out.join("final/adapter").join(f).exists(), "final/adapter/{f}");
    }
}

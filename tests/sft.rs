//! Stage 1 end to end on the demo data with the tiny LLaMA fixture: loss falls, prompt tokens carry
//! no loss, an interrupted-and-resumed run ends with the same weights, `final/` reloads exactly.

use std::path::Path;

use burn::tensor::{Distribution, Int, Tensor, TensorData};
use rlhf_model::ops::next_token_loss;
use rlhf_model::CausalLm;
use rlhf_runtime::{Cpu, CpuTrain};
use rlhf_sft::SftConfig;

use crate::common::{column, fixture};

pub fn demo(dir: &Path) -> std::path::PathBuf {
    let sizes = rlhf_data::demo::DemoSizes { pretrain_docs: 100, sft: 300, rankings: 10, prompts: 10 };
    rlhf_data::demo::write_demo(dir, 0, sizes).unwrap();
    dir.join("sft.jsonl")
}

pub fn config(train: &Path, steps: usize, extra: &[&str]) -> SftConfig {
    let text = format!(
        r#"
seed = 3
[model]
from = "{}"
[data]
train = "{}"
max_len = 96
eval_fraction = 0.1
[train]
steps = {steps}
batch_size = 8
micro_batch_size = 4
lr = 3e-3
warmup_steps = 2
eval_every = 5
save_every = 4
"#,
        fixture("hf-tiny-llama").display(),
        train.display()
    );
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), text).unwrap();
    let sets: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    rlhf_train::config::load_config(Some(tmp.path()), &sets).unwrap()
}

#[test]
fn sft_loss_falls_and_final_reloads_with_identical_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let data = demo(&tmp.path().join("demo"));
    let out = tmp.path().join("run");
    let model = rlhf_sft::run::<CpuTrain>(&config(&data, 20, &[]), &out, false, &Default::default()).unwrap();
    let rows = rlhf_train::metrics::read_metrics(&out.join("metrics.jsonl")).unwrap();
    let (loss, eval) = (column(&rows, "loss"), column(&rows, "eval_loss"));
    assert_eq!(loss.len(), 20);
    assert!(loss[19] < 0.6 * loss[0], "loss {} → {}", loss[0], loss[19]);
    assert!(eval.last().unwrap() < eval.first().unwrap(), "eval loss {eval:?}");
    assert!(rows.iter().all(|r| r.get("lr").is_none() || r["tokens_per_s"].as_f64().unwrap() > 0.0));
    assert!(out.join("config.toml").exists());
    assert!(std::fs::read_dir(&out).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with("events.out.tfevents")));

    let again = CausalLm::<Cpu>::from_hf_dir(&out.join("final"), &Default::default()).unwrap();
    let d = Default::default();
    let ids = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(vec![1i64, 350, 289, 201, 9, 40], [1, 6]), &d);
    let mask = Tensor::<Cpu, 2, Int>::ones([1, 6], &d);
    let a = model.forward(ids.clone(), mask.clone(), None).unwrap().into_data().to_vec::<f32>().unwrap();
    let b = again.forward(ids, mask, None).unwrap().into_data().to_vec::<f32>().unwrap();
    assert_eq!(a, b);
}

/// `export_dtype` reaches `final/`: bf16 weights (the trained ones, rounded) and a config.json that
/// says so.
#[test]
fn sft_exports_in_the_dtype_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let data = demo(&tmp.path().join("demo"));
    let out = tmp.path().join("run");
    let cfg = config(&data, 2, &["export_dtype=\"bfloat16\"", "train.save_every=0"]);
    let model = rlhf_sft::run::<CpuTrain>(&cfg, &out, false, &Default::default()).unwrap();
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("final/config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    let again = CausalLm::<Cpu>::from_hf_dir(&out.join("final"), &Default::default()).unwrap();
    let trained: std::collections::BTreeMap<_, _> = model.hf_tensors().into_iter().collect();
    for (name, t) in again.hf_tensors() {
        let want: Vec<f32> = trained[&name].data.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect();
        assert_eq!(t.data, want, "{name}");
    }
}

/// Changing the targets where the loss mask is 0 (prompt tokens, padding) leaves the loss unchanged.
#[test]
fn prompt_tokens_contribute_nothing() {
    let d = Default::default();
    <Cpu as burn::tensor::backend::Backend>::seed(&d, 0);
    let logits = Tensor::<Cpu, 3>::random([2, 5, 1024], Distribution::Normal(0.0, 2.0), &d);
    let mask = vec![0.0f32, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0];
    let targets: Vec<i64> = (0..10).map(|i| (i * 37 % 1024) as i64).collect();
    let changed: Vec<i64> = targets.iter().zip(&mask).map(|(&t, &m)| if m == 0.0 { (t + 500) % 1024 } else { t }).collect();
    let loss = |t: Vec<i64>| {
        let t = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(t, [2, 5]), &d);
        let m = Tensor::<Cpu, 2>::from_data(TensorData::new(mask.clone(), [2, 5]), &d);
        next_token_loss(logits.clone(), t, m, 5.0).into_scalar()
    };
    assert_eq!(loss(targets.clone()), loss(changed));
    // …while changing a target where the mask is 1 does change it.
    let mut moved = targets.clone();
    moved[2] = (moved[2] + 1) % 1024;
    assert_ne!(loss(targets), loss(moved));
}

fn tensors(dir: &Path) -> Vec<(String, rlhf_model::hf::HostTensor)> {
    CausalLm::<Cpu>::from_hf_dir(dir, &Default::default()).unwrap().hf_tensors()
}

/// A run stopped after step 6 (last checkpoint at 4) and resumed ends with exactly the weights of
/// an uninterrupted run.
#[test]
fn resumed_run_ends_with_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let data = demo(&tmp.path().join("demo"));
    let (full, cut) = (tmp.path().join("full"), tmp.path().join("cut"));
    rlhf_sft::run::<CpuTrain>(&config(&data, 10, &[]), &full, false, &Default::default()).unwrap();
    rlhf_sft::run::<CpuTrain>(&config(&data, 10, &["train.halt_after=6"]), &cut, false, &Default::default()).unwrap();
    assert!(!cut.join("final").exists());
    let newest = rlhf_train::checkpoint::latest_checkpoint(&cut).unwrap();
    assert!(newest.ends_with("step-00000004"), "{}", newest.display());
    rlhf_sft::run::<CpuTrain>(&config(&data, 10, &[]), &cut, true, &Default::default()).unwrap();
    assert_eq!(tensors(&full.join("final")), tensors(&cut.join("final")));
    // The resumed metrics continue the interrupted ones without duplicates.
    let rows = rlhf_train::metrics::read_metrics(&cut.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = rows.iter().filter(|r| r.get("loss").is_some()).map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=10).collect::<Vec<_>>());
    let full_rows = rlhf_train::metrics::read_metrics(&full.join("metrics.jsonl")).unwrap();
    assert_eq!(column(&rows, "loss"), column(&full_rows, "loss"));
}

/// `model.init` + a BPE tokenizer trained on the data, in pretraining mode then SFT on top of it
/// (the demo's stage 0 → stage 1).
#[test]
fn from_scratch_pretrain_then_sft() {
    let tmp = tempfile::tempdir().unwrap();
    let sft_data = demo(&tmp.path().join("demo"));
    let pretrain_data = tmp.path().join("demo/pretrain.jsonl");
    let text = format!(
        r#"
seed = 1
mode = "pretrain"
[model.init]
hidden_size = 32
intermediate_size = 64
num_layers = 2
num_heads = 4
num_kv_heads = 2
max_position_embeddings = 128
[model.tokenizer]
vocab_size = 400
train_on = ["{}"]
[data]
train = "{}"
max_len = 64
[train]
steps = 6
batch_size = 4
micro_batch_size = 2
lr = 3e-3
"#,
        sft_data.display(),
        pretrain_data.display()
    );
    let cfg_path = tmp.path().join("pretrain.toml");
    std::fs::write(&cfg_path, text).unwrap();
    let cfg: SftConfig = rlhf_train::config::load_config(Some(&cfg_path), &[]).unwrap();
    let stage0 = tmp.path().join("stage0");
    rlhf_sft::run::<CpuTrain>(&cfg, &stage0, false, &Default::default()).unwrap();
    let tok = rlhf_data::Tokenizer::from_dir(&stage0.join("final")).unwrap();
    let model = CausalLm::<Cpu>::from_hf_dir(&stage0.join("final"), &Default::default()).unwrap();
    assert_eq!(model.config().vocab_size, tok.vocab_size());
    assert_eq!((model.config().num_kv_heads, model.config().tie_word_embeddings), (2, true));
    assert!(tok.chat_template().is_some());
    let rows = rlhf_train::metrics::read_metrics(&stage0.join("metrics.jsonl")).unwrap();
    assert!(column(&rows, "loss").iter().all(|l| l.is_finite()));

    // Stage 1 starts from stage 0's final/.
    let sft = config(&sft_data, 4, &[&format!("model.from=\"{}\"", stage0.join("final").display())]);
    rlhf_sft::run::<CpuTrain>(&sft, &tmp.path().join("stage1"), false, &Default::default()).unwrap();
    assert!(tmp.path().join("stage1/final/tokenizer.json").exists());
}

#[test]
fn bad_configs_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("bad.toml");
    std::fs::write(&p, "[model]\nfrom = \"x\"\n[data]\ntrain = \"y\"\n[train]\nlrr = 1\nsteps = 1\nbatch_size = 1\nmicro_batch_size = 1\nlr = 0.1\n").unwrap();
    let e = rlhf_train::config::load_config::<SftConfig>(Some(&p), &[]).unwrap_err().to_string();
    assert!(e.contains("lrr") && e.contains("bad.toml"), "{e}");
}

/// A diverging run stops with a clear message at the first non-finite loss and keeps its last
/// good checkpoint.
#[test]
fn non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = demo(&tmp.path().join("demo"));
    let out = tmp.path().join("run");
    let cfg = config(&data, 20, &["train.lr=1e30", "train.warmup_steps=0", "train.save_every=1", "train.optim.grad_clip=0"]);
    let e = rlhf_sft::run::<CpuTrain>(&cfg, &out, false, &Default::default()).map(|_| ()).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("loss is") && msg.contains("Last good checkpoint"), "{msg}");
    let stopped: usize = msg.split("at step ").nth(1).unwrap().split(';').next().unwrap().parse().unwrap();
    let last = rlhf_train::checkpoint::latest_checkpoint(&out).unwrap();
    assert!(last.ends_with(format!("step-{:08}", stopped - 1)), "{msg} / {}", last.display());
    assert!(!out.join("final").exists());
}

/// LoRA SFT: the loss falls; a checkpoint holds only the adapters and their optimizer state (a few
/// per cent of a full-parameter checkpoint); an interrupted, resumed run ends with exactly the
/// adapters of an uninterrupted one; `final/` is the merged model and `final/adapter/` reproduces it.
#[test]
fn lora_sft_checkpoints_adapters_only_resumes_exactly_and_exports_merged_and_peft() {
    let tmp = tempfile::tempdir().unwrap();
    let data = demo(&tmp.path().join("demo"));
    let d = Default::default();
    let lora = ["lora.r=8", "lora.alpha=16", "lora.target_modules=[\"q_proj\", \"v_proj\"]", "lora.export_adapter=true", "train.lr=1e-2"];
    let with = |more: &[&'static str]| [&lora[..], more].concat();
    let (full, cut, plain) = (tmp.path().join("full"), tmp.path().join("cut"), tmp.path().join("plain"));
    rlhf_sft::run::<CpuTrain>(&config(&data, 10, &with(&[])), &full, false, &d).unwrap();
    let rows = rlhf_train::metrics::read_metrics(&full.join("metrics.jsonl")).unwrap();
    let loss = column(&rows, "loss");
    assert!(loss[9] < loss[0], "loss {loss:?}");

    // Checkpoint size against a full-parameter checkpoint of the same model at the same step.
    rlhf_sft::run::<CpuTrain>(&config(&data, 10, &["train.halt_after=4"]), &plain, false, &d).unwrap();
    let size = |run: &Path| rlhf_train::checkpoint::dir_size(&run.join("checkpoints/step-00000004"));
    let (adapter_ckpt, full_ckpt) = (size(&full), size(&plain));
    assert!(adapter_ckpt * 20 <= full_ckpt, "LoRA checkpoint {adapter_ckpt} B vs full {full_ckpt} B");

    rlhf_sft::run::<CpuTrain>(&config(&data, 10, &with(&["train.halt_after=6"])), &cut, false, &d).unwrap();
    rlhf_sft::run::<CpuTrain>(&config(&data, 10, &with(&[])), &cut, true, &d).unwrap();
    let adapter = |run: &Path| std::fs::read(run.join("final/adapter/adapter_model.safetensors")).unwrap();
    assert_eq!(adapter(&full), adapter(&cut), "resumed adapters differ");
    assert_eq!(tensors(&full.join("final")), tensors(&cut.join("final")));

    // final/ (merged) = the base + final/adapter/, and differs from the base.
    let merged = CausalLm::<Cpu>::from_hf_dir(&full.join("final"), &d).unwrap();
    let base = CausalLm::<Cpu>::from_hf_dir(&fixture("hf-tiny-llama"), &d).unwrap();
    let cfg = rlhf_model::LoraConfig { from: Some(full.join("final/adapter")), ..Default::default() };
    let (adapted, spec) = base.attach_lora(&cfg, 0, &d).unwrap();
    assert_eq!((spec.r, spec.alpha, spec.slots.len()), (8, 16.0, 2));
    let ids = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(vec![1i64, 350, 289, 201, 9, 40], [1, 6]), &d);
    let mask = Tensor::<Cpu, 2, Int>::ones([1, 6], &d);
    let logits = |m: &CausalLm<Cpu>| m.forward(ids.clone(), mask.clone(), None).unwrap().into_data().to_vec::<f32>().unwrap();
    let (a, b, c) = (logits(&merged), logits(&adapted), logits(&adapted.without_lora()));
    let diff = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
    assert!(diff(&a, &b) <= 1e-5, "merged vs adapter {}", diff(&a, &b));
    assert!(diff(&a, &c) > 1e-3, "training changed nothing");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(full.join("final/adapter/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["base_model_name_or_path"], fixture("hf-tiny-llama").display().to_string());
}

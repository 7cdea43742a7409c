//! Gradient checkpointing (`gradient_checkpointing = true`): each decoder block keeps only its input
//! and is recomputed in backward. The gradients of every parameter equal those without it (≤ 1e-5)
//! for LLaMA and GPT-2 blocks, full training, LoRA, a quantized LoRA base and bf16.

use std::sync::mpsc;
use std::time::Duration;

use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use rlhf_model::lora::LoraConfig;
use rlhf_model::ops::next_token_loss;
use rlhf_model::CausalLm;
use rlhf_runtime::checkpoint::ParamTensors;
use rlhf_runtime::{CpuTrain, Precision};

use crate::common::fixture;

/// Every parameter's gradient (None where it has none) of the LM loss on a padded batch.
fn gradients(model: &CausalLm<CpuTrain>) -> Vec<Option<Vec<f32>>> {
    let d = Default::default();
    let ids = Tensor::<CpuTrain, 2, Int>::from_data(TensorData::new(vec![1i64, 350, 289, 201, 9, 40, 41, 42, 0, 0, 1, 7, 8, 9, 10, 11], [2, 8]), &d);
    let mask = Tensor::<CpuTrain, 2, Int>::from_data(TensorData::new(vec![1i64, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1], [2, 8]), &d);
    let loss_mask = Tensor::<CpuTrain, 2>::from_data(TensorData::new(vec![0.0f32, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0], [2, 7]), &d);
    let logits = model.forward(ids.clone().slice([0..2, 0..7]), mask.slice([0..2, 0..7]), None).unwrap();
    let grads = next_token_loss(logits, ids.slice([0..2, 1..8]), loss_mask, 10.0).backward();
    let mut params = ParamTensors(Vec::new());
    model.visit(&mut params);
    params.0.iter().map(|p| CpuTrain::grad(p, &grads).map(|g| Tensor::<rlhf_runtime::Cpu, 1>::from_primitive(burn::tensor::TensorPrimitive::Float(g)).into_data().convert::<f32>().to_vec().unwrap())).collect()
}

/// Runs `f` on a thread and fails if it has not finished in 120 s (a nested backward that
/// deadlocks would otherwise hang the suite).
fn within_timeout<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(f()).unwrap());
    rx.recv_timeout(Duration::from_secs(120)).expect("gradient checkpointing did not finish in 120 s (deadlock?)")
}

fn compare(name: &str, model: CausalLm<CpuTrain>) {
    let checkpointed = model.clone().with_gradient_checkpointing(true).unwrap();
    let (plain, ckpt) = within_timeout(move || (gradients(&model), gradients(&checkpointed)));
    assert_eq!(plain.len(), ckpt.len());
    let (mut compared, mut max) = (0, 0.0f32);
    for (i, (a, b)) in plain.iter().zip(&ckpt).enumerate() {
        match (a, b) {
            (Some(a), Some(b)) => {
                compared += 1;
                let scale = a.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max) / scale;
                max = max.max(diff);
            }
            (None, None) => {}
            _ => panic!("{name}: parameter {i} has a gradient in one run only"),
        }
    }
    eprintln!("{name}: {compared} gradients, max relative |Δ| = {max:e}");
    assert!(compared > 0 && max <= 1e-5, "{name}: max relative |Δ| {max:e} over {compared} gradients");
}

#[test]
fn checkpointed_blocks_give_the_same_gradients() {
    let d = Default::default();
    for base in ["hf-tiny-llama", "hf-tiny-gpt2"] {
        let plain = CausalLm::<CpuTrain>::from_hf_dir(&fixture(base), &d).unwrap();
        compare(&format!("{base} full"), plain.clone());
        compare(&format!("{base} bf16"), plain.clone().in_precision(Precision::Bf16));
        let lora = LoraConfig { r: 4, target_modules: vec!["all-linear".into()], ..Default::default() };
        let (adapted, _) = plain.clone().attach_lora(&lora, 0, &d).unwrap();
        compare(&format!("{base} lora"), adapted);
        let qlora = LoraConfig { base_quant: Some(rlhf_runtime::quant::BaseQuant::Q8), ..lora };
        let (quantized, _) = plain.attach_lora(&qlora, 0, &d).unwrap();
        compare(&format!("{base} q8 base + lora"), quantized);
    }
}

#[test]
fn checkpointing_with_lora_dropout_is_refused() {
    let d = Default::default();
    let plain = CausalLm::<CpuTrain>::from_hf_dir(&fixture("hf-tiny-llama"), &d).unwrap();
    let (adapted, _) = plain.attach_lora(&LoraConfig { r: 4, dropout: 0.1, ..Default::default() }, 0, &d).unwrap();
    let e = adapted.with_gradient_checkpointing(true).unwrap_err().to_string();
    assert!(e.contains("lora.dropout"), "{e}");
}

/// Stage 1 with `train.gradient_checkpointing = true` takes the same steps as without it.
#[test]
fn sft_with_checkpointing_takes_the_same_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let data = crate::sft::demo(&tmp.path().join("demo"));
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let sets: Vec<&str> = ["train.eval_every=0", "train.save_every=0"].iter().chain(extra).copied().collect();
        rlhf_sft::run::<CpuTrain>(&crate::sft::config(&data, 4, &sets), &out, false, &Default::default()).unwrap();
        crate::common::column(&rlhf_train::metrics::read_metrics(&out.join("metrics.jsonl")).unwrap(), "loss")
    };
    let (plain, ckpt) = (run("plain", &[]), run("ckpt", &["train.gradient_checkpointing=true"]));
    assert_eq!(plain.len(), 4);
    for (a, b) in plain.iter().zip(&ckpt) {
        assert!((a - b).abs() <= 1e-5 * a.abs(), "losses {plain:?} vs {ckpt:?}");
    }
}

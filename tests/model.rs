//! The shared transformer against transformers' outputs (fixtures made with random weights), and the
//! properties the stages rely on: padding invariance, KV cache = recomputation, export round-trip,
//! hostile checkpoints.

use std::path::Path;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use rlhf_runtime::Backend;
use rlhf_runtime::{Cpu, Precision};
use rlhf_model::generate::left_pad;
use rlhf_data::Tokenizer;
use rlhf_model::{generate, CausalLm, GenerateConfig, Sampler, TransformerConfig, WeightDtype};
use safetensors::SafeTensors;

use crate::common::fixture;

fn device() -> <Cpu as burn::tensor::backend::BackendTypes>::Device {
    Default::default()
}

fn ints(t: &safetensors::tensor::TensorView) -> Vec<i64> {
    t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()
}

fn floats(t: &safetensors::tensor::TensorView) -> Vec<f32> {
    t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

fn int_tensor(data: Vec<i64>, shape: [usize; 2]) -> Tensor<Cpu, 2, Int> {
    int_tensor_on::<Cpu>(data, shape, &device())
}

fn int_tensor_on<B: Backend>(data: Vec<i64>, shape: [usize; 2], device: &B::Device) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

fn to_vec<B: Backend>(t: Tensor<B, 3>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// The fixture's model as inference runs it in `precision` (weights stored in it).
pub fn fixture_model<B: Backend>(dir: &Path, precision: Precision, device: &B::Device) -> CausalLm<B> {
    CausalLm::<B>::from_hf_dir(dir, device).unwrap().for_inference(precision)
}

/// Max |logits of `model` − `dir/expected.safetensors`| over positions where the mask is 1.
pub fn logits_diff<B: Backend>(model: &CausalLm<B>, dir: &Path, device: &B::Device) -> f32 {
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&bytes).unwrap();
    let ids = expected.tensor("input_ids").unwrap();
    let [b, t] = [ids.shape()[0], ids.shape()[1]];
    let mask = ints(&expected.tensor("attention_mask").unwrap());
    let want = floats(&expected.tensor("logits").unwrap());
    let got = to_vec(
        model
            .forward(int_tensor_on::<B>(ints(&ids), [b, t], device), int_tensor_on::<B>(mask.clone(), [b, t], device), None)
            .unwrap(),
    );
    let v = want.len() / (b * t);
    assert_eq!(got.len(), want.len());
    let mut max = 0.0f32;
    for (pos, &m) in mask.iter().enumerate() {
        if m == 1 {
            let mut pm = 0.0f32;
            for i in pos * v..(pos + 1) * v {
                pm = pm.max((got[i] - want[i]).abs());
            }
            max = max.max(pm);
        }
    }
    max
}

fn expected_json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap()
}

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn greedy(model: &CausalLm<Cpu>, prompts: &[Vec<u32>], n: usize) -> Vec<rlhf_model::Generation> {
    greedy_on(model, prompts, n, &device())
}

pub fn greedy_on<B: Backend>(model: &CausalLm<B>, prompts: &[Vec<u32>], n: usize, device: &B::Device) -> Vec<rlhf_model::Generation> {
    let cfg = GenerateConfig { max_new_tokens: n, sampler: Sampler::Greedy, stop_ids: vec![], pad_id: 0, seed: None };
    generate(model, prompts, &cfg, device).unwrap().to_host()
}

/// Our greedy ids for the fixture's prompt (no stop ids) and transformers'.
fn greedy_ids_on<B: Backend>(dir: &Path, precision: Precision, device: &B::Device) -> (Vec<u32>, Vec<u32>) {
    let expected = expected_json(dir);
    let model = fixture_model::<B>(dir, precision, device);
    let prompt = ids_of(&expected["greedy_prompt_ids"]);
    let want = ids_of(&expected["greedy_new_ids"]);
    let got = greedy_on(&model, &[prompt], want.len(), device);
    (got[0].new_ids.clone(), want)
}

/// The fixtures made by transformers (see tests/fixtures/make_fixtures.py), with what each covers.
pub const PARITY_FIXTURES: &[&str] = &[
    "hf-tiny-llama",  // LLaMA, GQA, `rope_parameters`
    "hf-tiny-qwen2",  // bf16, tied head, q/k/v bias, top-level `rope_theta`
    "hf-tiny-gpt2",   // learned positions, LayerNorm, Conv1D
    "hf-tiny-llama3", // f16, Llama-3.x rope scaling in the Hub's `rope_scaling` spelling
    "hf-tiny-chat",   // `dtype`, `"architectures": null`, template only in chat_template.jinja
];

/// Runs every fixture of [`PARITY_FIXTURES`] on `device`: logits within `limit` of transformers' and
/// greedy ids equal. Returns a line per failure, naming the fixture, so one run reports them all.
pub fn parity_failures_on<B: Backend>(device: &B::Device, limit: f32) -> Vec<String> {
    parity_failures_in::<B>(device, Precision::F32, limit, PARITY_FIXTURES)
}

/// [`parity_failures_on`] with the models in `precision`, greedy ids compared on `greedy_fixtures`
/// only (bf16 rounding may flip a near-tie of a random model's logits).
pub fn parity_failures_in<B: Backend>(device: &B::Device, precision: Precision, limit: f32, greedy_fixtures: &[&str]) -> Vec<String> {
    let mut failures = Vec::new();
    for name in PARITY_FIXTURES {
        let dir = fixture(name);
        let diff = logits_diff(&fixture_model::<B>(&dir, precision, device), &dir, device);
        eprintln!("{name} ({precision}): max |Δlogits| = {diff:e}");
        if diff.is_nan() || diff >= limit {
            failures.push(format!("{name} ({precision}): max |Δlogits| {diff:e} (limit {limit:e})"));
        }
        let (got, want) = greedy_ids_on::<B>(&dir, precision, device);
        if !greedy_fixtures.contains(name) {
            eprintln!("{name} ({precision}): greedy ids {}", if got == want { "equal" } else { "differ (not compared)" });
        } else if got != want {
            failures.push(format!("{name}: greedy ids {got:?}, transformers {want:?}"));
        }
    }
    failures
}

#[test]
fn fixtures_match_transformers_logits_and_greedy_ids() {
    let failures = parity_failures_on::<Cpu>(&device(), 1e-4);
    assert!(failures.is_empty(), "parity failures:\n{}", failures.join("\n"));
}

/// Llama-3 rope scaling gives transformers' `inv_freq` to the bit (all three bands occur).
#[test]
fn llama3_rope_frequencies_equal_transformers() {
    let dir = fixture("hf-tiny-llama3");
    let cfg = TransformerConfig::from_hf_dir(&dir).unwrap();
    assert!(cfg.rope_scaling.is_some());
    let want: Vec<f32> =
        expected_json(&dir)["rope_inv_freq"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    assert_eq!(rlhf_model::rope::inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling.as_ref()), want);
}

/// Every row of a left-padded batch gives the logits it gives alone.
#[test]
fn left_padded_batch_equals_each_sequence_alone() {
    for name in ["hf-tiny-llama", "hf-tiny-gpt2"] {
        let model = CausalLm::<Cpu>::from_hf_dir(&fixture(name), &device()).unwrap();
        let prompts = vec![vec![5u32, 17, 99, 3, 42, 8, 61], vec![12u32, 7, 300], vec![1u32, 2, 3, 4, 5]];
        let (ids, mask) = left_pad::<Cpu>(&prompts, 0, &device());
        let batch = to_vec(model.forward(ids, mask, None).unwrap());
        let (len, v) = (7, model.config().vocab_size);
        for (row, p) in prompts.iter().enumerate() {
            let (ids, mask) = left_pad::<Cpu>(std::slice::from_ref(p), 0, &device());
            let alone = to_vec(model.forward(ids, mask, None).unwrap());
            let pad = len - p.len();
            let batched = &batch[(row * len + pad) * v..(row + 1) * len * v];
            let max = batched.iter().zip(&alone).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(max < 1e-4, "{name} row {row}: max diff {max}");
        }
    }
}

/// Right padding too: the real positions do not see the padding after them.
#[test]
fn right_padding_leaves_real_positions_unchanged() {
    let model = CausalLm::<Cpu>::from_hf_dir(&fixture("hf-tiny-llama"), &device()).unwrap();
    let alone = to_vec(model.forward(int_tensor(vec![4, 8, 15], [1, 3]), int_tensor(vec![1, 1, 1], [1, 3]), None).unwrap());
    let padded = to_vec(
        model.forward(int_tensor(vec![4, 8, 15, 0, 0], [1, 5]), int_tensor(vec![1, 1, 1, 0, 0], [1, 5]), None).unwrap(),
    );
    let max = alone.iter().zip(&padded).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(max < 1e-5, "max diff {max}");
}

/// Generation with the KV cache gives the tokens and log-probs that recomputing the whole
/// sequence without a cache gives, for a batch of prompts of different lengths.
#[test]
fn kv_cache_generation_equals_recomputation() {
    for name in ["hf-tiny-llama", "hf-tiny-gpt2"] {
        let model = CausalLm::<Cpu>::from_hf_dir(&fixture(name), &device()).unwrap();
        let prompts = vec![vec![10u32, 20, 30, 40, 50], vec![7u32, 9]];
        let n = 6;
        let out = greedy(&model, &prompts, n);
        for (p, g) in prompts.iter().zip(&out) {
            assert_eq!(g.new_ids.len(), n);
            let mut seq = p.clone();
            for (step, (&tok, &lp)) in g.new_ids.iter().zip(&g.logprobs).enumerate() {
                let len = seq.len();
                let ids = int_tensor(seq.iter().map(|&t| t as i64).collect(), [1, len]);
                let logits = model.forward(ids, int_tensor(vec![1; len], [1, len]), None).unwrap();
                let v = model.config().vocab_size;
                let last = logits.slice([0..1, len - 1..len, 0..v]).reshape([1, v]);
                let logp = log_softmax(last.clone(), 1).into_data().to_vec::<f32>().unwrap();
                let argmax = last.argmax(1).into_data().convert::<i64>().to_vec::<i64>().unwrap()[0] as u32;
                assert_eq!(tok, argmax, "{name} step {step}");
                assert!((lp - logp[tok as usize]).abs() < 1e-4, "{name} step {step}: {lp} vs {}", logp[tok as usize]);
                seq.push(tok);
            }
        }
    }
}

#[test]
fn generation_stops_at_stop_ids_and_pads_after() {
    let model = CausalLm::<Cpu>::from_hf_dir(&fixture("hf-tiny-llama"), &device()).unwrap();
    let prompts = vec![vec![10u32, 20, 30], vec![44u32, 55]];
    let free = greedy(&model, &prompts, 10);
    // Stop at the third token the first row produces.
    let stop = free[0].new_ids[2];
    let cfg = GenerateConfig { max_new_tokens: 10, sampler: Sampler::Greedy, stop_ids: vec![stop], pad_id: 0, seed: None };
    let batch = generate(&model, &prompts, &cfg, &device()).unwrap();
    let out = batch.to_host();
    let first_stop = free[0].new_ids.iter().position(|&t| t == stop).unwrap();
    assert_eq!(out[0].new_ids, free[0].new_ids[..=first_stop].to_vec());
    let mask = batch.new_mask.into_data().convert::<i64>().to_vec::<i64>().unwrap();
    let steps = mask.len() / 2;
    assert!(mask[first_stop + 1..steps].iter().all(|&m| m == 0));
}

#[test]
fn seeded_sampling_is_reproducible() {
    let model = CausalLm::<Cpu>::from_hf_dir(&fixture("hf-tiny-llama"), &device()).unwrap();
    let prompts = vec![vec![10u32, 20, 30], vec![44u32, 55]];
    let sampler = Sampler::Sample { temperature: 1.0, top_k: Some(50), top_p: Some(0.9) };
    let run = |seed| {
        let cfg = GenerateConfig { max_new_tokens: 8, sampler: sampler.clone(), stop_ids: vec![], pad_id: 0, seed: Some(seed) };
        generate(&model, &prompts, &cfg, &device()).unwrap().to_host()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

/// One prefill per prompt for its `n` rows gives what `n` copies of the prompt give: the same tokens
/// (sampled, same seed: the draws have the same shape) and the same log-probs to rounding, with
/// prompts of different lengths (left padding) and a stop token.
#[test]
fn n_samples_from_one_prefill_match_n_copies_of_the_prompt() {
    let model = CausalLm::<Cpu>::from_hf_dir(&fixture("hf-tiny-llama"), &device()).unwrap();
    let prompts = vec![vec![10u32, 20, 30], vec![44u32, 55]];
    let copies: Vec<Vec<u32>> = prompts.iter().flat_map(|p| std::iter::repeat_n(p.clone(), 3)).collect();
    let stop = greedy(&model, &prompts, 6)[1].new_ids[3];
    for sampler in [Sampler::Greedy, Sampler::Sample { temperature: 1.0, top_k: None, top_p: None }] {
        let cfg = GenerateConfig { max_new_tokens: 6, sampler, stop_ids: vec![stop], pad_id: 0, seed: Some(7) };
        let shared = rlhf_model::generate_n(&model, &prompts, 3, &cfg, &device()).unwrap();
        let independent = generate(&model, &copies, &cfg, &device()).unwrap();
        let ints = |t: &burn::tensor::Tensor<Cpu, 2, burn::tensor::Int>| t.to_data().convert::<i64>().to_vec::<i64>().unwrap();
        assert_eq!(ints(&shared.prompt_ids), ints(&independent.prompt_ids));
        assert_eq!(ints(&shared.prompt_mask), ints(&independent.prompt_mask));
        let (a, b) = (shared.to_host(), independent.to_host());
        assert_eq!(a.len(), 6);
        for (row, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(x.new_ids, y.new_ids, "row {row}");
            for (p, q) in x.logprobs.iter().zip(&y.logprobs) {
                assert!((p - q).abs() < 1e-5, "row {row}: {p} vs {q}");
            }
        }
    }
    let cfg = GenerateConfig { max_new_tokens: 2, sampler: Sampler::Greedy, stop_ids: vec![], pad_id: 0, seed: None };
    assert!(rlhf_model::generate_n(&model, &prompts, 0, &cfg, &device()).is_err());
}

#[test]
fn export_then_load_gives_identical_logits() {
    for name in PARITY_FIXTURES {
        let src = fixture(name);
        let model = CausalLm::<Cpu>::from_hf_dir(&src, &device()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("final");
        model.save_hf_dir(&out, Some(&src), WeightDtype::F32).unwrap();
        // Tokenizer and template files are copied as they came (the template stays in its own file).
        for file in rlhf_model::hf::TOKENIZER_FILES {
            let (from, to) = (src.join(file), out.join(file));
            assert_eq!(from.exists(), to.exists(), "{name}: {file}");
            if from.exists() {
                assert_eq!(std::fs::read(from).unwrap(), std::fs::read(to).unwrap(), "{name}: {file}");
            }
        }
        let template = |dir: &Path| Tokenizer::from_dir(dir).unwrap().chat_template().map(str::to_string);
        assert_eq!(template(&out), template(&src), "{name}");
        let again = CausalLm::<Cpu>::from_hf_dir(&out, &device()).unwrap();
        assert_eq!(again.config(), model.config());
        let ids = int_tensor(vec![3, 1, 4, 1, 5, 9, 2, 6], [2, 4]);
        let mask = int_tensor(vec![1, 1, 1, 1, 0, 1, 1, 1], [2, 4]);
        let a = to_vec(model.forward(ids.clone(), mask.clone(), None).unwrap());
        let b = to_vec(again.forward(ids, mask, None).unwrap());
        assert_eq!(a, b, "{name}");
    }
}

/// Exports in bf16 and f16 store every tensor in that dtype, rounded to nearest (what torch's
/// `.to(dtype)` does), and config.json's `torch_dtype` says which.
#[test]
fn export_dtype_rounds_every_weight_and_config_says_it() {
    let src = fixture("hf-tiny-llama");
    let model = CausalLm::<Cpu>::from_hf_dir(&src, &device()).unwrap();
    let original: std::collections::BTreeMap<String, Vec<f32>> = model.hf_tensors().into_iter().map(|(n, t)| (n, t.data)).collect();
    type Case = (WeightDtype, &'static str, &'static str, fn(f32) -> f32);
    let cases: [Case; 2] = [
        (WeightDtype::Bf16, "bfloat16", "BF16", |x| half::bf16::from_f32(x).to_f32()),
        (WeightDtype::F16, "float16", "F16", |x| half::f16::from_f32(x).to_f32()),
    ];
    for (dtype, hf_name, stored, round) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("final");
        model.save_hf_dir(&out, Some(&src), dtype).unwrap();
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["torch_dtype"], hf_name);
        assert_eq!(WeightDtype::of_folder(&out).unwrap(), dtype);
        let files = rlhf_model::hf::SafetensorsFiles::open_dir(&out).unwrap();
        assert_eq!(files.dtypes().keys().collect::<Vec<_>>(), vec![stored], "{hf_name}");
        let again = CausalLm::<Cpu>::from_hf_dir(&out, &device()).unwrap();
        let mut changed = 0;
        for (name, t) in again.hf_tensors() {
            let want: Vec<f32> = original[&name].iter().map(|&x| round(x)).collect();
            assert_eq!(t.data, want, "{hf_name}: {name}");
            changed += original[&name].iter().zip(&t.data).filter(|(a, b)| a != b).count();
        }
        assert!(changed > 0, "{hf_name}: rounding changed nothing, so the test shows nothing");
    }
}

/// The default export dtype is the input folder's: what config.json declares, else what its
/// tensors are stored in.
#[test]
fn export_dtype_defaults_to_the_input_models() {
    assert_eq!(WeightDtype::of_folder(&fixture("hf-tiny-llama")).unwrap(), WeightDtype::F32);
    assert_eq!(WeightDtype::of_folder(&fixture("hf-tiny-qwen2")).unwrap(), WeightDtype::Bf16);
    assert_eq!(WeightDtype::of_folder(&fixture("hf-tiny-llama3")).unwrap(), WeightDtype::F16);
    assert_eq!(WeightDtype::for_export(Some(WeightDtype::F32), Some(&fixture("hf-tiny-qwen2"))).unwrap(), WeightDtype::F32);
    assert_eq!(WeightDtype::for_export(None, None).unwrap(), WeightDtype::F32);
    // A config.json without a dtype: the tensors decide.
    let tmp = tempfile::tempdir().unwrap();
    let model = CausalLm::<Cpu>::from_hf_dir(&fixture("hf-tiny-llama"), &device()).unwrap();
    model.save_hf_dir(&tmp.path().join("m"), None, WeightDtype::Bf16).unwrap();
    let path = tmp.path().join("m").join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config.as_object_mut().unwrap().remove("torch_dtype");
    std::fs::write(&path, config.to_string()).unwrap();
    assert_eq!(WeightDtype::of_folder(&tmp.path().join("m")).unwrap(), WeightDtype::Bf16);
}

/// A weight float16 cannot hold is an error naming the tensor, and nothing is left half-written.
#[test]
fn float16_export_refuses_weights_out_of_its_range() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("final");
    let config = serde_json::json!({"model_type": "llama"});
    let big = rlhf_model::hf::HostTensor { shape: vec![2], data: vec![1.0, 1e6] };
    let err = rlhf_model::hf::write_hf_dir(&out, &config, &[("lm_head.weight".into(), big.clone())], None, WeightDtype::F16).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("lm_head.weight") && message.contains("float16"), "{message}");
    assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none(), "left behind: {:?}", std::fs::read_dir(tmp.path()).unwrap().collect::<Vec<_>>());
    // bf16 holds it (rounded).
    rlhf_model::hf::write_hf_dir(&out, &config, &[("lm_head.weight".into(), big)], None, WeightDtype::Bf16).unwrap();
}

/// Copies a fixture folder so a test can damage it.
fn scratch_copy(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    tmp
}

fn load_err(dir: &Path) -> String {
    match CausalLm::<Cpu>::from_hf_dir(dir, &device()) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn hostile_safetensors_give_errors_not_panics() {
    let tmp = scratch_copy("hf-tiny-llama");
    let path = tmp.path().join("model.safetensors");
    let good = std::fs::read(&path).unwrap();

    // Header length claims the whole address space.
    let mut bad = good.clone();
    bad[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&path, &bad).unwrap();
    assert!(load_err(tmp.path()).contains("invalid safetensors"));

    // Header length past the end of the file.
    let mut bad = good.clone();
    bad[..8].copy_from_slice(&(good.len() as u64).to_le_bytes());
    std::fs::write(&path, &bad).unwrap();
    assert!(load_err(tmp.path()).contains("invalid safetensors"));

    // Data truncated: offsets point past the end.
    std::fs::write(&path, &good[..good.len() - 100]).unwrap();
    assert!(load_err(tmp.path()).contains("invalid safetensors"));

    // Shorter than the 8-byte length prefix.
    std::fs::write(&path, [1u8, 2, 3]).unwrap();
    assert!(load_err(tmp.path()).contains("invalid safetensors"));
}

#[test]
fn missing_or_misshapen_tensors_are_named() {
    let src = fixture("hf-tiny-llama");
    let model = CausalLm::<Cpu>::from_hf_dir(&src, &device()).unwrap();
    let mut tensors = model.hf_tensors();

    let tmp = tempfile::tempdir().unwrap();
    let config = model.config().to_hf_json();
    let dropped: Vec<_> = tensors.iter().filter(|(n, _)| n != "model.layers.1.mlp.up_proj.weight").cloned().collect();
    rlhf_model::hf::write_hf_dir(&tmp.path().join("a"), &config, &dropped, None, WeightDtype::F32).unwrap();
    let e = load_err(&tmp.path().join("a"));
    assert!(e.contains("missing tensor \"model.layers.1.mlp.up_proj.weight\"") && e.contains("[176, 64]"), "{e}");

    let k = tensors.iter().position(|(n, _)| n == "model.layers.0.self_attn.k_proj.weight").unwrap();
    tensors[k].1.shape = vec![64, 32];
    rlhf_model::hf::write_hf_dir(&tmp.path().join("b"), &config, &tensors, None, WeightDtype::F32).unwrap();
    let e = load_err(&tmp.path().join("b"));
    assert!(e.contains("model.layers.0.self_attn.k_proj.weight") && e.contains("[32, 64]") && e.contains("[64, 32]"), "{e}");

    let mut cfg = serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["model_type"] = "mamba".into();
    let c = scratch_copy("hf-tiny-llama");
    std::fs::write(c.path().join("config.json"), cfg.to_string()).unwrap();
    assert!(load_err(c.path()).contains("unsupported architecture \"mamba\""));
}

#[test]
fn sharded_checkpoints_load() {
    let src = fixture("hf-tiny-llama");
    let model = CausalLm::<Cpu>::from_hf_dir(&src, &device()).unwrap();
    let tensors = model.hf_tensors();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = tensors.split_at(tensors.len() / 2);
    rlhf_model::hf::write_safetensors(&tmp.path().join("model-00001-of-00002.safetensors"), a, WeightDtype::F32).unwrap();
    rlhf_model::hf::write_safetensors(&tmp.path().join("model-00002-of-00002.safetensors"), b, WeightDtype::F32).unwrap();
    let mut map = serde_json::Map::new();
    for (name, _) in a {
        map.insert(name.clone(), "model-00001-of-00002.safetensors".into());
    }
    for (name, _) in b {
        map.insert(name.clone(), "model-00002-of-00002.safetensors".into());
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(tmp.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let sharded = CausalLm::<Cpu>::from_hf_dir(tmp.path(), &device()).unwrap();
    assert_eq!(sharded.hf_tensors(), tensors);
}

#[test]
fn fresh_models_run_and_count_parameters() {
    let hf: rlhf_model::HfConfig = serde_json::from_str(
        r#"{"model_type":"llama","vocab_size":50,"hidden_size":32,"intermediate_size":64,
            "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":64}"#,
    )
    .unwrap();
    let cfg: TransformerConfig = hf.resolve(Path::new("config.json")).unwrap();
    let body = cfg.init::<Cpu>(&device());
    let model = CausalLm { lm_head: None, model: body, lm_head_codes: None };
    let tensors = model.hf_tensors();
    let counted: usize = tensors.iter().map(|(_, t)| t.data.len()).sum();
    // untied config without an lm_head tensor: count the head separately
    assert_eq!(counted + cfg.vocab_size * cfg.hidden_size, cfg.num_params());
    let logits = model.forward(int_tensor(vec![1, 2, 3], [1, 3]), int_tensor(vec![1, 1, 1], [1, 3]), None).unwrap();
    assert_eq!(logits.dims(), [1, 3, 50]);
}

//! LoRA against PEFT and against the plain model: PEFT's own adapters reproduce PEFT's logits, a fresh
//! adapter changes nothing, a step moves only adapters (and the RM head), merging and our PEFT-layout
//! export give the adapter model's outputs.

use burn::module::Module;
use rlhf_runtime::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burn::module::AutodiffModule;
use rlhf_model::lora::LoraConfig;
use rlhf_model::Adapted;
use rlhf_model::proj::Proj;
use rlhf_runtime::quant::BaseQuant;
use rlhf_model::{CausalLm, RewardModel, ScalarHead, Transformer, WeightDtype};
use rlhf_runtime::{Cpu, CpuTrain};
use rlhf_train::optim::OptimConfig;
use rlhf_train::Trainable;

use crate::common::fixture;
use crate::model::logits_diff;

fn ids<B: Backend>(d: &B::Device) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>) {
    let ids = Tensor::from_data(TensorData::new(vec![1i64, 350, 289, 201, 9, 40, 77, 5, 0, 0, 12, 600, 31, 8, 2, 19], [2, 8]), d);
    let mask = Tensor::from_data(TensorData::new(vec![1i64, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1], [2, 8]), d);
    (ids, mask)
}

fn logits<B: Backend>(m: &CausalLm<B>) -> Vec<f32> {
    let (ids, mask) = ids::<B>(&Default::default());
    m.forward(ids, mask, None).unwrap().into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn lora(extra: impl FnOnce(&mut LoraConfig)) -> LoraConfig {
    let mut cfg = LoraConfig { target_modules: vec!["all-linear".into()], ..LoraConfig::default() };
    extra(&mut cfg);
    cfg
}

#[test]
fn peft_adapters_reproduce_peft_logits_attached_and_merged() {
    let d = Default::default();
    for (base, adapter) in [("hf-tiny-llama", "peft-tiny-llama-lora"), ("hf-tiny-gpt2", "peft-tiny-gpt2-lora")] {
        let plain = CausalLm::<Cpu>::from_hf_dir(&fixture(base), &d).unwrap();
        let cfg = LoraConfig { from: Some(fixture(adapter)), ..LoraConfig::default() };
        let (model, spec) = plain.attach_lora(&cfg, 0, &d).unwrap();
        assert_eq!(spec.r, 4, "{adapter}: r from adapter_config.json");
        let diff = logits_diff(&model, &fixture(adapter), &d);
        assert!(diff < 1e-4, "{adapter}: max |ours − PEFT| = {diff}");
        // Base with adapters off ≠ PEFT's output (the adapter matters)…
        assert!(logits_diff(&model.without_lora(), &fixture(adapter), &d) > 0.1, "{adapter}");
        // …and folding the adapter into the weights gives PEFT's output too.
        let merged = model.merge_lora();
        assert!(!merged.model.has_lora());
        let diff = logits_diff(&merged, &fixture(adapter), &d);
        assert!(diff < 1e-4, "{adapter} merged: max |ours − PEFT| = {diff}");
    }
}

#[test]
fn a_fresh_adapter_leaves_logits_bit_identical() {
    let d = Default::default();
    <Cpu as burn::tensor::backend::Backend>::seed(&d, 7);
    for base in ["hf-tiny-llama", "hf-tiny-gpt2", "hf-tiny-qwen2"] {
        let plain = CausalLm::<Cpu>::from_hf_dir(&fixture(base), &d).unwrap();
        let before = logits(&plain);
        let (adapted, _) = plain.attach_lora(&lora(|_| ()), 0, &d).unwrap();
        assert!(adapted.model.has_lora());
        assert_eq!(logits(&adapted), before, "{base}");
    }
}

/// One optimizer step on a reward model with adapters: the adapters and the head move, every base
/// weight keeps its exact bytes, and only trainable parameters reach the optimizer.
#[test]
fn a_step_moves_only_adapters_and_the_head() {
    let d = Default::default();
    <CpuTrain as burn::tensor::backend::Backend>::seed(&d, 3);
    let body = Transformer::<CpuTrain>::from_hf_dir(&fixture("hf-tiny-llama"), &d).unwrap();
    let rm = RewardModel { head: ScalarHead::init(body.config.hidden_size, &d), model: body };
    let (rm, _) = rm.attach_lora(&lora(|c| c.r = 8), 0, &d).unwrap();
    let base_before = rm.model.without_lora().hf_tensors();
    let state_before = rm.adapter_state().unwrap();
    let head_before = rm.head.weight.val().into_data();
    let mut t = Trainable::new("rm", rm, &OptimConfig::default(), &d);
    let (ids, mask) = ids::<CpuTrain>(&d);
    let score = t.module.score(ids, mask).unwrap();
    let loss = (score.clone() - 1.0).powi_scalar(2).sum();
    t.backward(loss, 0.0);
    t.step(1e-2, 1, "none").unwrap();

    assert_eq!(t.module.model.without_lora().hf_tensors(), base_before, "base weights changed");
    assert_ne!(t.module.head.weight.val().into_data(), head_before, "the head did not train");
    let after = t.module.adapter_state().unwrap();
    let (b0, b1) = (state_before.layers[0].q_proj.as_ref().unwrap().b.val(), after.layers[0].q_proj.as_ref().unwrap().b.val());
    assert!(b0.into_data().to_vec::<f32>().unwrap().iter().all(|&x| x == 0.0));
    assert!(b1.into_data().to_vec::<f32>().unwrap().iter().any(|&x| x != 0.0), "B did not train");
    // Adapters: 2 layers × 7 projections; head: 64 + 1.
    let trainable = after.num_params();
    assert_eq!(trainable, 2 * 8 * (64 + 64 + 64 + 32 + 64 + 32 + 64 + 64 + 64 + 176 + 64 + 176 + 176 + 64) + 65);
}

/// Our PEFT-layout export loads back (ours reads it like PEFT's) with the same logits, and the merged
/// Hugging Face folder gives the adapter model's logits.
#[test]
fn exported_adapter_and_merged_folder_give_the_adapter_models_logits() {
    let d = Default::default();
    <Cpu as burn::tensor::backend::Backend>::seed(&d, 11);
    let tmp = tempfile::tempdir().unwrap();
    for (base, targets) in [("hf-tiny-llama", vec!["q_proj", "v_proj", "down_proj"]), ("hf-tiny-gpt2", vec!["c_attn", "c_proj"])] {
        let plain = CausalLm::<Cpu>::from_hf_dir(&fixture(base), &d).unwrap();
        let cfg = lora(|c| {
            c.target_modules = targets.iter().map(|s| s.to_string()).collect();
            c.alpha = 16.0;
        });
        let (mut model, spec) = plain.attach_lora(&cfg, 0, &d).unwrap();
        // A trained adapter: random B.
        for block in &mut model.model.layers {
            let lora = block.lora.as_mut().unwrap();
            for a in [&mut lora.q_proj, &mut lora.v_proj, &mut lora.down_proj, &mut lora.c_attn, &mut lora.o_proj].into_iter().flatten() {
                let shape = a.b.val().dims();
                a.b = burn::module::Param::from_tensor(Tensor::random(shape, burn::tensor::Distribution::Normal(0.0, 0.2), &d));
            }
        }
        let want = logits(&model);
        assert!(max_diff(&want, &logits(&model.without_lora())) > 0.05, "{base}: the adapter changes nothing");
        let adapter_dir = tmp.path().join(format!("{base}-adapter"));
        model.model.save_lora_dir(&adapter_dir, &spec, "base", Some("CAUSAL_LM"), &[], WeightDtype::F32).unwrap();
        let reloaded = CausalLm::<Cpu>::from_hf_dir(&fixture(base), &d).unwrap();
        let (reloaded, spec2) = reloaded.attach_lora(&LoraConfig { from: Some(adapter_dir.clone()), ..LoraConfig::default() }, 0, &d).unwrap();
        assert_eq!(spec2.slots, spec.slots);
        assert_eq!(logits(&reloaded), want, "{base}: adapter folder round trip");

        let merged_dir = tmp.path().join(format!("{base}-merged"));
        model.merge_lora().save_hf_dir(&merged_dir, Some(&fixture(base)), WeightDtype::F32).unwrap();
        let merged = CausalLm::<Cpu>::from_hf_dir(&merged_dir, &d).unwrap();
        let diff = max_diff(&logits(&merged), &want);
        assert!(diff <= 1e-5, "{base}: merged vs adapter model {diff}");
    }
}

#[test]
fn adapter_folders_with_missing_or_extra_tensors_are_named() {
    let d = Default::default();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture("peft-tiny-llama-lora/adapter_config.json"), dir.join("adapter_config.json")).unwrap();
    // The GPT-2 adapter's tensors under a LLaMA config: every LLaMA key is missing.
    std::fs::copy(fixture("peft-tiny-gpt2-lora/adapter_model.safetensors"), dir.join("adapter_model.safetensors")).unwrap();
    let plain = CausalLm::<Cpu>::from_hf_dir(&fixture("hf-tiny-llama"), &d).unwrap();
    let e = plain.attach_lora(&LoraConfig { from: Some(dir.clone()), ..LoraConfig::default() }, 0, &d).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"), "{e}");
    std::fs::remove_file(dir.join("adapter_model.safetensors")).unwrap();
    let plain = CausalLm::<Cpu>::from_hf_dir(&fixture("hf-tiny-llama"), &d).unwrap();
    let e = plain.attach_lora(&LoraConfig { from: Some(dir), ..LoraConfig::default() }, 0, &d).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("adapter_model.safetensors"), "{e}");
}

/// QLoRA-style frozen bases (`base_quant`): every block projection kept as 8- or 4-bit codes.
/// The logits stay near the f32 base's (q8 within 5e-2, the target; 4-bit codes within
/// 1.0 of logits up to ~2.6 on these random-weight fixtures), and the projections take about a
/// quarter / an eighth of their f32 bytes (a little more where a width forces small blocks: 176
/// input rows of 4-bit codes get blocks of 16, since a block holds whole words).
#[test]
fn quantized_bases_stay_close_to_the_f32_model_in_a_fraction_of_its_bytes() {
    let d = Default::default();
    for base in ["hf-tiny-llama", "hf-tiny-gpt2", "hf-tiny-qwen2"] {
        let plain = CausalLm::<Cpu>::from_hf_dir(&fixture(base), &d).unwrap();
        let (want, f32_bytes) = (logits(&plain), plain.model.projection_bytes());
        for (quant, bound, share) in [(BaseQuant::Q8, 5e-2, 0.27), (BaseQuant::Q4, 1.0, 0.16), (BaseQuant::Nf4, 1.0, 0.16)] {
            let (m, _) = plain.clone().attach_lora(&lora(|c| c.base_quant = Some(quant)), 0, &d).unwrap();
            let diff = max_diff(&logits(&m), &want);
            let bytes = m.model.projection_bytes();
            eprintln!("{base} {quant:?}: max |Δlogit| vs f32 = {diff:.2e}, projections {bytes} of {f32_bytes} bytes");
            assert!(diff < bound, "{base} {quant:?}: max |Δlogit| = {diff}");
            assert!(diff > 0.0, "{base} {quant:?}: nothing was quantized");
            assert!((bytes as f64) < share * f32_bytes as f64, "{base} {quant:?}: {bytes} of {f32_bytes} bytes");
        }
    }
}

/// Training on a 4-bit base: gradients reach the first block's adapters through the quantized
/// projections above it, the codes keep their exact values, a resumed checkpoint holds only
/// adapters, and the merged export (codes rebuilt + ΔW) gives the quantized adapter model's logits.
#[test]
fn a_quantized_base_trains_its_adapters_and_merges_into_a_dense_export() {
    let d = Default::default();
    <CpuTrain as burn::tensor::backend::Backend>::seed(&d, 5);
    let plain = CausalLm::<CpuTrain>::from_hf_dir(&fixture("hf-tiny-llama"), &d).unwrap();
    let (lm, spec) = plain.attach_lora(&lora(|c| c.base_quant = Some(BaseQuant::Q4)), 0, &d).unwrap();
    let codes = |m: &CausalLm<CpuTrain>| match &m.model.layers[1].mlp.down_proj {
        Proj::Quantized(q) => q.packed.to_data(),
        Proj::Dense(_) => panic!("down_proj is not quantized"),
    };
    let codes_before = codes(&lm);
    let mut t = Trainable::new("actor", lm, &OptimConfig::default(), &d);
    let (ids, mask) = ids::<CpuTrain>(&d);
    let loss = t.module.forward(ids, mask, None).unwrap().powi_scalar(2).mean();
    t.backward(loss, 0.0);
    t.step(1e-2, 1, "none").unwrap();
    assert_eq!(codes(&t.module), codes_before, "the quantized base moved");
    let state = t.module.adapter_state().unwrap();
    let b0 = state.layers[0].q_proj.as_ref().unwrap().b.val().into_data().to_vec::<f32>().unwrap();
    assert!(b0.iter().any(|&x| x != 0.0), "no gradient reached layer 0 through the quantized layer 1");

    let model = t.module.valid();
    let want = logits(&model);
    let tmp = tempfile::tempdir().unwrap();
    model.clone().merge_lora().save_hf_dir(&tmp.path().join("merged"), Some(&fixture("hf-tiny-llama")), WeightDtype::F32).unwrap();
    let merged = CausalLm::<Cpu>::from_hf_dir(&tmp.path().join("merged"), &d).unwrap();
    let diff = max_diff(&logits(&merged), &want);
    assert!(diff <= 1e-5, "merged vs quantized adapter model: {diff}");
    // The adapter folder alone reloads onto a freshly quantized base with the same logits.
    model.model.save_lora_dir(&tmp.path().join("adapter"), &spec, "base", Some("CAUSAL_LM"), &[], WeightDtype::F32).unwrap();
    let cfg = LoraConfig { from: Some(tmp.path().join("adapter")), base_quant: Some(BaseQuant::Q4), ..LoraConfig::default() };
    let (reloaded, _) = CausalLm::<Cpu>::from_hf_dir(&fixture("hf-tiny-llama"), &d).unwrap().attach_lora(&cfg, 0, &d).unwrap();
    assert_eq!(logits(&reloaded), want);
}

/// QLoRA export: `final/` is the adapters merged into the base read again from its folder, not into
/// the quantized (or bf16-stored) copy training ran on. With fresh adapters (B = 0: ΔW = 0) the
/// exported weights are the original base's bit for bit, for a causal LM and a reward model alike.
#[test]
fn a_quantized_or_bf16_base_exports_onto_the_original_weights() {
    use rlhf_model::{export, Export, StageModel};
    use rlhf_runtime::Precision;
    let d = Default::default();
    let source = fixture("hf-tiny-llama");
    let bits = |t: Vec<(String, rlhf_model::hf::HostTensor)>| {
        let mut t: Vec<(String, Vec<u32>)> = t.into_iter().map(|(n, h)| (n, h.data.iter().map(|v| v.to_bits()).collect())).collect();
        t.sort();
        t
    };
    let tensors = |dir: &std::path::Path| bits(CausalLm::<Cpu>::from_hf_dir(dir, &d).unwrap().hf_tensors());
    let body = |dir: &std::path::Path| bits(Transformer::<Cpu>::from_hf_dir(dir, &d).unwrap().hf_tensors());
    let want = tensors(&source);
    let tmp = tempfile::tempdir().unwrap();
    for (name, quant, precision) in [("nf4", Some(BaseQuant::Nf4), Precision::F32), ("q8", Some(BaseQuant::Q8), Precision::F32), ("bf16", None, Precision::Bf16)] {
        let plain = CausalLm::<Cpu>::from_hf_dir(&source, &d).unwrap();
        let (lm, spec) = plain.attach_lora(&lora(|c| c.base_quant = quant), 0, &d).unwrap();
        let lm = StageModel::in_precision(lm, precision);
        assert!(!lm.model.base_is_exact(), "{name}");
        let out = tmp.path().join(name);
        let e = Export { dtype: WeightDtype::F32, source: &source, lora: Some(&spec), export_adapter: false, extra_files: &[] };
        let exported = export(lm.clone(), &out, &e).unwrap();
        assert!(tensors(&out) == want, "{name}: the export is not the original base");
        // The merge onto the base as trained (the old export) would have carried the rounding.
        let rounded = lm.merge_lora();
        assert!(max_diff(&logits(&rounded), &logits(&exported)) > 0.0, "{name}: nothing was rounded");

        let rm = RewardModel { model: Transformer::<Cpu>::from_hf_dir(&source, &d).unwrap(), head: ScalarHead::init(64, &d) };
        let (rm, spec) = rm.attach_lora(&lora(|c| c.base_quant = quant), 0, &d).unwrap();
        let rm = StageModel::in_precision(rm, precision);
        let out = tmp.path().join(format!("{name}-rm"));
        export(rm, &out, &Export { lora: Some(&spec), ..e }).unwrap();
        assert!(body(&out) == body(&source), "{name}: the reward model's export is not the original body");
    }
}

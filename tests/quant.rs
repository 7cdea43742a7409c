//! Quantized inference (`--quant`): block projections as q8 / q4 / nf4 codes and the LM head as q8
//! codes, read straight from the codes while decoding. Against transformers' f32 logits on the
//! fixtures (bounds stated per kind), greedy ids against the f32 model's where its margin allows,
//! the decoding path (few rows: the direct kernel) against the prefill path (many rows: W rebuilt,
//! one GEMM), and the flag on `rlhf generate` and `rlhf serve`.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use rlhf_model::{generate, CausalLm, GenerateConfig, Sampler};
use rlhf_runtime::quant::BaseQuant;
use rlhf_runtime::Cpu;

use crate::common::{fixture, rlhf};
use crate::model::logits_diff;

const FIXTURES: [&str; 3] = ["hf-tiny-llama", "hf-tiny-gpt2", "hf-tiny-qwen2"];

fn last_logits(model: &CausalLm<Cpu>, seq: &[u32]) -> Vec<f32> {
    let d = Default::default();
    let len = seq.len();
    let ids = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(seq.iter().map(|&t| t as i64).collect::<Vec<_>>(), [1, len]), &d);
    let logits = model.forward(ids, Tensor::ones([1, len], &d), None).unwrap();
    let v = model.config().vocab_size;
    logits.slice([0..1, len - 1..len, 0..v]).reshape([v]).into_data().to_vec::<f32>().unwrap()
}

/// Logits within a bound of transformers' f32 logits on every fixture (random-weight models whose
/// logits reach ~2.6), the block projections and the q8 LM head together: q8 within 0.1, the 4-bit
/// kinds within 1.5; and fewer bytes than f32.
#[test]
fn quantized_models_stay_close_to_transformers_logits() {
    let d = Default::default();
    for name in FIXTURES {
        let plain = CausalLm::<Cpu>::from_hf_dir(&fixture(name), &d).unwrap();
        let f32_bytes = plain.weight_bytes();
        for (quant, bound) in [(BaseQuant::Q8, 0.1), (BaseQuant::Q4, 1.5), (BaseQuant::Nf4, 1.5)] {
            let m = plain.clone().quantized(Some(quant)).unwrap();
            let diff = logits_diff(&m, &fixture(name), &d);
            eprintln!("{name} {quant}: max |Δlogit| vs transformers f32 = {diff:.3e}; weights {} of {f32_bytes} bytes", m.weight_bytes());
            assert!(diff < bound && diff > 0.0, "{name} {quant}: max |Δlogit| = {diff}");
            assert!(m.weight_bytes() < f32_bytes, "{name} {quant}");
        }
    }
}

/// Greedy decoding with the KV cache on a quantized model (one row per step: the direct kernel)
/// picks the argmax of recomputing the whole sequence (many rows: the rebuilt weight and a GEMM),
/// with the same log-probs to 1e-4; and its tokens equal the f32 model's wherever the f32 model's
/// top-two margin exceeds twice the largest logit change quantization made at that step (the
/// count of such steps is printed).
#[test]
fn quantized_decoding_agrees_with_recomputation_and_with_f32_where_the_margin_allows() {
    let d = Default::default();
    for name in ["hf-tiny-llama", "hf-tiny-qwen2"] {
        let plain = CausalLm::<Cpu>::from_hf_dir(&fixture(name), &d).unwrap();
        for quant in [BaseQuant::Q8, BaseQuant::Q4, BaseQuant::Nf4] {
            let model = plain.clone().quantized(Some(quant)).unwrap();
            let prompts = vec![vec![10u32, 20, 30, 40, 50], vec![7u32, 9]];
            let cfg = GenerateConfig { max_new_tokens: 6, sampler: Sampler::Greedy, stop_ids: vec![], pad_id: 0, seed: None };
            let out = generate(&model, &prompts, &cfg, &d).unwrap().to_host();
            let (mut decided, mut agreed) = (0, 0);
            for (p, g) in prompts.iter().zip(&out) {
                let mut seq = p.clone();
                for (step, (&tok, &lp)) in g.new_ids.iter().zip(&g.logprobs).enumerate() {
                    let logits = last_logits(&model, &seq);
                    let t = Tensor::<Cpu, 1>::from_floats(logits.as_slice(), &d).reshape([1, logits.len()]);
                    let logp = log_softmax(t, 1).into_data().to_vec::<f32>().unwrap();
                    let argmax = (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap() as u32;
                    assert_eq!(tok, argmax, "{name} {quant} step {step}");
                    assert!((lp - logp[tok as usize]).abs() < 1e-4, "{name} {quant} step {step}: {lp} vs {}", logp[tok as usize]);
                    // The f32 model on the same prefix.
                    let exact = last_logits(&plain, &seq);
                    let change = exact.iter().zip(&logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    let mut sorted = exact.clone();
                    sorted.sort_by(|a, b| b.total_cmp(a));
                    if sorted[0] - sorted[1] > 2.0 * change {
                        decided += 1;
                        let best = (0..exact.len()).max_by(|&a, &b| exact[a].total_cmp(&exact[b])).unwrap() as u32;
                        agreed += usize::from(best == tok);
                    }
                    seq.push(tok);
                }
            }
            eprintln!("{name} {quant}: greedy ids equal f32's at {agreed} of {decided} steps whose f32 margin allows it (of 12)");
            assert_eq!(agreed, decided, "{name} {quant}");
        }
    }
}

/// `rlhf generate --quant` runs, prints greedy ids, and an unknown kind is a clear error.
#[test]
fn generate_takes_quant() {
    let dir = fixture("hf-tiny-qwen2");
    let o = rlhf(&["generate", "--model", dir.to_str().unwrap(), "--prompt-ids", "5,6,7", "--max-new-tokens", "4", "--greedy", "--json", "--quant", "q8"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(line["new_ids"].as_array().unwrap().len(), 4);
    let o = rlhf(&["generate", "--model", dir.to_str().unwrap(), "--prompt-ids", "1,2", "--quant", "q3"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown base quantization \"q3\""), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `rlhf serve --quant q4` loads the codes and answers: a greedy request twice gives the same text,
/// and one with n = 2 at temperature 0 gives that text twice.
#[test]
fn serve_takes_quant() {
    let s = crate::serve::serve(&["--quant", "q4"]);
    let body = serde_json::json!({ "model": "tiny", "messages": [{ "role": "user", "content": "Say something." }], "max_tokens": 8, "temperature": 0.0 });
    let answer = |body: &serde_json::Value| {
        let (status, text) = crate::serve::post(&s.url, &body.to_string(), None);
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["choices"].as_array().unwrap().iter().map(|c| c["message"]["content"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    let first = answer(&body);
    assert_eq!(answer(&body), first);
    let mut two = body.clone();
    two["n"] = serde_json::json!(2);
    assert_eq!(answer(&two), vec![first[0].clone(), first[0].clone()]);
}

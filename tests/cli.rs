//! The `rlhf` binary end to end: `model logits`, `generate --json`, `model info`, and clear errors.

use safetensors::SafeTensors;

use crate::common::{fixture, rlhf};

/// `rlhf model logits` reproduces transformers' logits in f32 (1e-4), and with `--precision bf16`
/// within 5e-2 of them but not equal (so bf16 really ran).
#[test]
fn model_logits_writes_transformers_logits() {
    let dir = fixture("hf-tiny-llama");
    let input = dir.join("expected.safetensors");
    let want_bytes = std::fs::read(&input).unwrap();
    let want = SafeTensors::deserialize(&want_bytes).unwrap();
    let f = |b: &[u8]| b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>();
    let mask: Vec<i64> = want.tensor("attention_mask").unwrap().data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
    let w = f(want.tensor("logits").unwrap().data());
    for (precision, limit) in [("f32", 1e-4f32), ("bf16", 5e-2)] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out.safetensors");
        let args = ["model", "logits", "--model", dir.to_str().unwrap(), "--input", input.to_str().unwrap(), "--output", out.to_str().unwrap(), "--precision", precision];
        let o = rlhf(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let got_bytes = std::fs::read(&out).unwrap();
        let got = SafeTensors::deserialize(&got_bytes).unwrap();
        assert_eq!(got.tensor("logits").unwrap().shape(), want.tensor("logits").unwrap().shape());
        let g = f(got.tensor("logits").unwrap().data());
        let v = g.len() / mask.len();
        let mut largest = 0f32;
        for (pos, &m) in mask.iter().enumerate() {
            if m == 1 {
                for i in pos * v..(pos + 1) * v {
                    largest = largest.max((g[i] - w[i]).abs());
                }
            }
        }
        assert!(largest < limit, "{precision}: {largest}");
        if precision == "bf16" {
            assert!(largest > 1e-4, "bf16 logits equal f32's to {largest}: was bf16 used?");
        }
    }
}

/// `--precision` on the inference commands: bf16 greedy generation gives transformers' ids on a
/// fixture without near ties (Qwen2), and an unknown precision is a clear error.
#[test]
fn generate_in_bf16_gives_transformers_greedy_ids() {
    let dir = fixture("hf-tiny-qwen2");
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let prompt: Vec<String> = expected["greedy_prompt_ids"].as_array().unwrap().iter().map(|v| v.to_string()).collect();
    let n = expected["greedy_new_ids"].as_array().unwrap().len().to_string();
    let args = ["generate", "--model", dir.to_str().unwrap(), "--prompt-ids", &prompt.join(","), "--max-new-tokens", &n, "--greedy", "--json", "--precision", "bf16"];
    let o = rlhf(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(line["new_ids"], expected["greedy_new_ids"]);
    let o = rlhf(&["generate", "--model", dir.to_str().unwrap(), "--prompt-ids", "1,2", "--precision", "fp8"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown precision \"fp8\""), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn generate_json_gives_transformers_greedy_ids() {
    let dir = fixture("hf-tiny-llama");
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let prompt: Vec<String> = expected["greedy_prompt_ids"].as_array().unwrap().iter().map(|v| v.to_string()).collect();
    // The fixture's greedy ids were produced without an EOS stop; 12 tokens that contain no EOS (2).
    let o = rlhf(&["generate", "--model", dir.to_str().unwrap(), "--prompt-ids", &prompt.join(","), "--max-new-tokens", "12", "--greedy", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(line["new_ids"], expected["greedy_new_ids"]);
    assert!(line["text"].is_string());
}

#[test]
fn generate_chat_prompt_uses_the_template() {
    let dir = fixture("hf-tiny-llama");
    let o = rlhf(&["generate", "--model", dir.to_str().unwrap(), "--prompt", "你好", "--chat", "--max-new-tokens", "4", "--json", "--temperature", "0.8", "--top-p", "0.9", "--seed", "3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids = line["prompt_ids"].as_array().unwrap();
    // ChatML: <|im_start|>=1 opens the user turn, and the prompt ends with "<|im_start|>assistant\n".
    assert_eq!(ids[0], 1);
    assert!(ids.iter().filter(|&i| i == 1).count() == 2);
}

/// `generate --chat` on a folder whose template is only in chat_template.jinja: the prompt ids are
/// transformers' `apply_chat_template` ids, and greedy decoding stops at the second EOS id of
/// generation_config.json (config.json names only the first), as transformers' `generate` does.
#[test]
fn generate_chat_renders_chat_template_jinja_like_transformers() {
    let dir = fixture("hf-tiny-chat");
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let cases = expected["chat_cases"].as_array().unwrap();
    let single_turns: Vec<&serde_json::Value> = cases.iter().filter(|c| c["messages"].as_array().unwrap().len() == 1).collect();
    assert_eq!(single_turns.len(), 2, "an English and a Chinese single-turn case");
    for (i, case) in single_turns.iter().enumerate() {
        let prompt = case["messages"][0]["content"].as_str().unwrap();
        let mut args = vec!["generate", "--model", dir.to_str().unwrap(), "--prompt", prompt, "--chat", "--greedy", "--json"];
        args.extend(if i == 0 { ["--max-new-tokens", "12"] } else { ["--max-new-tokens", "1"] });
        let o = rlhf(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(line["prompt_ids"], case["ids"], "{prompt}");
        if i == 0 {
            assert_eq!(line["new_ids"], expected["chat_greedy_new_ids"]);
        }
    }
}

#[test]
fn model_info_reports_architecture_and_size() {
    let o = rlhf(&["model", "info", "--model", fixture("hf-tiny-gpt2").to_str().unwrap(), "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["architecture"], "gpt2");
    assert_eq!(v["vocab_size"], 1024);
    assert_eq!(v["context_length"], 128);
    assert_eq!(v["config_dtype"], "float32");
    // The older spelling is read too.
    let o = rlhf(&["model", "info", "--model", fixture("hf-tiny-llama3").to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["config_dtype"], "float16");
}

#[test]
fn bad_inputs_fail_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let o = rlhf(&["model", "info", "--model", tmp.path().to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("config.json"));

    let o = rlhf(&["generate", "--model", fixture("hf-tiny-llama").to_str().unwrap(), "--prompt-ids", "5,99999"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("99999"));

    // Without the `cuda` feature, or without a usable GPU, asking for CUDA is an error, not a panic.
    let o = rlhf(&["generate", "--model", fixture("hf-tiny-llama").to_str().unwrap(), "--prompt-ids", "5", "--device", "cuda"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    if cfg!(feature = "cuda") {
        assert!(o.status.success() || stderr.contains("CUDA device 0 is not usable"), "{stderr}");
    } else {
        assert!(!o.status.success() && stderr.contains("without CUDA"), "{stderr}");
    }
}

#[test]
fn data_check_exit_codes_and_convert_to_colossalchat() {
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/instructionwild/data_v2/user_2.jsonl");
    let file = shared.to_str().unwrap();
    let strict = rlhf(&["data", "check", file, "--kind", "prompt"]);
    assert_eq!(strict.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&strict.stderr).contains("user_2.jsonl:134: invalid JSON"));
    let skip = rlhf(&["data", "check", file, "--kind", "prompt", "--skip-invalid"]);
    assert_eq!(skip.status.code(), Some(2), "skipped records show in the exit code");
    assert!(String::from_utf8_lossy(&skip.stderr).contains("skipped 2 invalid record(s)"));
    assert!(String::from_utf8_lossy(&skip.stdout).contains("246 Prompt record(s)"));

    let tmp = tempfile::tempdir().unwrap();
    let alpaca = tmp.path().join("alpaca.json");
    std::fs::write(&alpaca, r#"[{"instruction":"Add","input":"2+2","output":"4"}]"#).unwrap();
    let out = tmp.path().join("sft.jsonl");
    let o = rlhf(&["data", "convert", alpaca.to_str().unwrap(), "--kind", "sft", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&out).unwrap().trim()).unwrap();
    assert_eq!(line["messages"][0]["from"], "user");
    assert_eq!(line["messages"][1]["content"], "4");
    // The converted file checks clean.
    assert!(rlhf(&["data", "check", out.to_str().unwrap(), "--kind", "sft"]).status.success());
}

#[test]
fn data_demo_writes_a_set_that_checks_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    assert!(rlhf(&["data", "demo", "--out", dir.to_str().unwrap(), "--seed", "3"]).status.success());
    let tok = fixture("hf-tiny-llama");
    for (f, kind) in [("sft.jsonl", "sft"), ("rankings.jsonl", "ranking"), ("prompts.jsonl", "prompt"), ("heldout_prompts.jsonl", "prompt"), ("pretrain.jsonl", "pretrain")] {
        let o = rlhf(&["data", "check", dir.join(f).to_str().unwrap(), "--kind", kind, "--tokenizer", tok.to_str().unwrap()]);
        assert!(o.status.success(), "{f}: {}", String::from_utf8_lossy(&o.stderr));
    }
}

/// `rlhf bench sft --model DIR` trains a random model of the folder's shape (tied Qwen2 here) and
/// reports tokens/s, model FLOP/s with the MFU against the peak it is given, and the memory plan.
#[test]
fn bench_sft_takes_a_folders_shape_and_reports_mfu() {
    let dir = fixture("hf-tiny-qwen2");
    let o = rlhf(&["bench", "sft", "--model", dir.to_str().unwrap(), "--batch", "2", "--seq", "16", "--steps", "1", "--peak-tflops", "0.001"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}{out}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("hf-tiny-qwen2's shape") && out.contains("random weights"), "{out}");
    assert!(out.contains("% MFU of an assumed 0.001 TFLOP/s peak"), "{out}");
    assert!(out.contains("memory: predicted peak"), "{out}");
}

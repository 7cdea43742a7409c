//! Self-consistency: `rlhf generate --vote` and `rlhf data self-improve` on the tiny fixture.

use std::path::Path;

use serde_json::Value;

use crate::common::{fixture, rlhf};

/// The last visible character of a sample: a random tiny model writes no numbers, but always
/// something this pattern reads.
const LAST_CHAR: &str = r"regex:(\S)\s*$";

fn stdout_ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// `--vote 6` samples what six copies of the prompt sample with the same seed (one prefill, the
/// same draws), and answers their majority by the extractor with share votes / 6 and the first
/// sample that reached it as the path; the same seed gives the same vote.
#[test]
fn generate_vote_is_the_majority_of_the_same_samples() {
    let model = fixture("hf-tiny-chat");
    let prompt = "What is 3 plus 5?";
    let base = ["generate", "--model", model.to_str().unwrap(), "--chat", "--temperature", "0.7", "--max-new-tokens", "8", "--seed", "3", "--json"];
    let voting: Vec<&str> = base.iter().copied().chain(["--prompt", prompt, "--vote", "6", "--extract", LAST_CHAR]).collect();
    let out = stdout_ok(&rlhf(&voting));
    let v: Value = serde_json::from_str(out.trim()).unwrap();

    let copies: Vec<&str> = base.iter().copied().chain((0..6).flat_map(|_| ["--prompt", prompt])).collect();
    let texts: Vec<String> = stdout_ok(&rlhf(&copies)).lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["text"].as_str().unwrap().trim().to_string()).collect();
    let extract: rlhf_rl::Extractor = LAST_CHAR.parse().unwrap();
    let answers: Vec<Option<String>> = texts.iter().map(|t| extract.answer(prompt, t)).collect();
    let want = rlhf_rl::majority(&answers);
    assert!(want.answer.is_some(), "{texts:?}");
    assert_eq!(v["answer"].as_str(), want.answer.as_deref(), "{v} vs {texts:?}");
    assert_eq!(v["votes"], want.votes);
    assert_eq!(v["samples"], 6);
    assert_eq!(v["no_answer"], want.no_answer);
    assert_eq!(v["share"].as_f64().unwrap(), want.votes as f64 / 6.0);
    assert_eq!(v["text"].as_str().unwrap(), texts[want.path.unwrap()]);
    assert_eq!(v["tally"][0], serde_json::json!([want.answer.unwrap(), want.votes]));
    assert_eq!(stdout_ok(&rlhf(&voting)), out, "same seed, same vote");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `rlhf data self-improve` writes SFT data (checked by `rlhf data check --kind sft`) and a summary;
/// a run killed after some chunks resumes from them: the missing chunk is drawn again exactly, the
/// saved ones are taken as they are (a saved sample edited by hand shows up in the data), and a
/// rerun with other sampling settings is refused.
#[test]
fn self_improve_writes_sft_data_and_resumes_without_resampling() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("questions.jsonl");
    let lines: String = (0..6).map(|i| format!("{{\"prompt\": \"What is {i} plus 1?\", \"answer\": \"{}\"}}\n", i + 1)).collect();
    std::fs::write(&prompts, lines).unwrap();
    let out = tmp.path().join("voted.jsonl");
    let model = fixture("hf-tiny-chat");
    let args = |k: &str| -> Vec<String> {
        [
            "data", "self-improve", "--model", model.to_str().unwrap(), "--prompts", prompts.to_str().unwrap(), "--out", out.to_str().unwrap(),
            "-k", k, "--max-new-tokens", "6", "--extract", LAST_CHAR, "--min-agreement", "0", "--batch-size", "8", "--seed", "1",
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |k: &str| rlhf(&args(k).iter().map(String::as_str).collect::<Vec<_>>());
    let first = run("4");
    let said = stdout_ok(&first);
    assert!(said.contains("6 questions:"), "{said}");
    let data = read(&out);
    let summary: Value = serde_json::from_str(&read(&out.with_file_name("voted.jsonl.summary.json"))).unwrap();
    assert_eq!(summary["questions"], 6);
    assert_eq!(summary["kept"].as_u64().unwrap() + summary["dropped_no_answer"].as_u64().unwrap(), 6, "{summary}");
    assert_eq!(summary["paths"].as_u64().unwrap() as usize, data.lines().count(), "{summary}");
    assert_eq!(summary["labeled"], 6);
    assert!(data.lines().count() > 0);
    let check = rlhf(&["data", "check", out.to_str().unwrap(), "--kind", "sft"]);
    stdout_ok(&check);

    // 8 rows per batch / 4 samples = 2 questions per chunk: 3 chunks.
    let samples = tmp.path().join("voted.jsonl.samples");
    let chunk = |c: usize| samples.join(format!("chunk-{c:06}.json"));
    assert!((0..3).all(|c| chunk(c).exists()) && !chunk(3).exists());
    let last_chunk = read(&chunk(2));

    // Killed after two chunks: the third is drawn again, the same; the data is the same.
    std::fs::remove_file(chunk(2)).unwrap();
    std::fs::remove_file(&out).unwrap();
    let again = run("4");
    stdout_ok(&again);
    assert!(String::from_utf8_lossy(&again.stderr).contains("2 chunk(s) of samples reused, 1 drawn"), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(read(&chunk(2)), last_chunk);
    assert_eq!(read(&out), data);

    // Saved samples are used as saved, never drawn again.
    let mut saved: Value = serde_json::from_str(&read(&chunk(0))).unwrap();
    saved["questions"][0]["samples"] = serde_json::json!(["SAVED 1", "SAVED 1", "SAVED 1", "SAVED 1"]);
    std::fs::write(chunk(0), saved.to_string()).unwrap();
    stdout_ok(&run("4"));
    assert!(read(&out).contains("SAVED 1"), "{}", read(&out));

    // Other settings: refused, the saved samples kept.
    let other = run("3");
    assert!(!other.status.success());
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(err.contains("sampled with other settings") && err.contains("samples 4 now 3"), "{err}");
    assert!(chunk(0).exists());
}

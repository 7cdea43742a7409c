//! The teacher jobs end to end through the `rlhf` binary, against a scripted OpenAI-compatible
//! server on 127.0.0.1 (offline).

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rlhf_teacher::testing::{completion, last_message, scripted_server};

/// Distinct tasks the scripted teacher proposes, two per answer, chosen by the request's seed.
const PROPOSALS: [&str; 8] = [
    "Describe how a bicycle gear system works.",
    "List four ways to reuse glass jars at home.",
    "Write a limerick about a forgetful robot.",
    "Compare renting and buying a home in two paragraphs.",
    "用三句话介绍长城的历史。",
    "写一封感谢老师的短信。",
    "Explain why the moon shows phases.",
    "Convert 72 degrees Fahrenheit to Celsius and show the steps.",
];

/// Every task list also carries this near-duplicate of a seed ("Give three practical tips for
/// getting better sleep.": 7 of 8 tokens shared, ROUGE-L 0.875).
const NEAR_DUPLICATE: &str = "Give three practical tips for getting better sleeping.";

/// The scripted teacher: a numbered list for task requests, an Input/Output answer for instances.
fn teacher_reply(body: &serde_json::Value) -> String {
    let prompt = last_message(body);
    if prompt.starts_with("Come up with") {
        let k = (body["seed"].as_u64().unwrap() % 4) as usize * 2;
        completion(&format!("{NEAR_DUPLICATE}\n10. {}\n11. {}", PROPOSALS[k], PROPOSALS[k + 1]))
    } else {
        let task = prompt.lines().nth(2).unwrap_or("");
        completion(&format!("Input: <none>\nOutput: An answer to: {task}"))
    }
}

fn self_instruct(url: &str, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rlhf"));
    c.args(["data", "self-instruct", "--seeds", "datasets/seed_tasks.jsonl", "--out", out.to_str().unwrap(), "--count", "4"])
        .args(["--model", "teacher", "--base-url", url, "--requests-per-round", "2", "--max-retries", "0"])
        .args(extra);
    c
}

#[test]
fn self_instruct_keeps_new_tasks_and_drops_the_near_duplicate() {
    let (url, seen) = scripted_server(|_, body| (200, teacher_reply(body)));
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("si.jsonl");
    let o = self_instruct(&url, &out, &[]).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}{stdout}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("kept 4") && stdout.contains("rouge_l"), "{stdout}");
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 4);
    for r in &records {
        let (user, assistant) = (r["messages"][0]["content"].as_str().unwrap(), r["messages"][1]["content"].as_str().unwrap());
        assert!(PROPOSALS.contains(&user), "{user}");
        assert_eq!(assistant, format!("An answer to: {user}"));
        assert_eq!((r["messages"][0]["from"].as_str(), r["messages"][1]["from"].as_str()), (Some("user"), Some("assistant")));
    }
    // The records are SFT data stage 1 reads.
    let check = Command::new(env!("CARGO_BIN_EXE_rlhf")).args(["data", "check", out.to_str().unwrap(), "--kind", "sft"]).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    assert!(seen.lock().unwrap().iter().all(|(_, b)| b["model"] == "teacher"));
}

/// Killed while a request is in flight, then run again: every request answered before the kill
/// comes from the cache, none is paid for twice, and the output is the uninterrupted run's.
#[test]
fn a_killed_self_instruct_resumes_from_its_cache() {
    let tmp = tempfile::tempdir().unwrap();
    // The uninterrupted run, for reference.
    let (url, _) = scripted_server(|_, body| (200, teacher_reply(body)));
    let reference = tmp.path().join("ref.jsonl");
    assert!(self_instruct(&url, &reference, &["--concurrency", "1"]).status().unwrap().success());

    // A teacher that stalls on the third request until released.
    let release = Arc::new(AtomicBool::new(false));
    let answered: Arc<Mutex<Vec<String>>> = Arc::default();
    let (gate, log) = (release.clone(), answered.clone());
    let (url, seen) = scripted_server(move |n, body| {
        if n == 2 {
            while !gate.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            return (500, "stalled".into());
        }
        log.lock().unwrap().push(body.to_string());
        (200, teacher_reply(body))
    });
    let out = tmp.path().join("si.jsonl");
    let mut child = self_instruct(&url, &out, &["--concurrency", "1"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while seen.lock().unwrap().len() < 3 {
        assert!(start.elapsed() < Duration::from_secs(60), "the third request never came");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    release.store(true, Ordering::SeqCst);
    assert!(!out.exists(), "a killed run left an output");

    let o = self_instruct(&url, &out, &["--concurrency", "1"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("2 from the cache"), "{stdout}");
    let answered = answered.lock().unwrap();
    assert_eq!(answered.iter().collect::<HashSet<_>>().len(), answered.len(), "an answered request was sent again");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), std::fs::read_to_string(&reference).unwrap());
}

/// Distillation: the teacher answers each prompt of an InstructionWild-style file (a malformed line
/// skipped), and with `--turns 2` also writes the user's follow-up and answers it.
#[test]
fn distill_answers_prompts_and_continues_conversations() {
    let (url, seen) = scripted_server(|_, body| {
        let prompt = last_message(body);
        let text = if prompt.starts_with("Here is a conversation") { "And why is that?".to_string() } else { format!("Teacher says: {prompt}") };
        (200, completion(&text))
    });
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"instruction\": \"Name a prime number.\", \"input\": \"\"}\n{\"instruction\": \n{\"instruction\": \"解释一下彩虹。\", \"input\": \"\"}\n").unwrap();
    let out = tmp.path().join("d.jsonl");
    let o = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["data", "distill", "--prompts", prompts.to_str().unwrap(), "--skip-invalid", "--out", out.to_str().unwrap(), "--turns", "2"])
        .args(["--model", "teacher", "--base-url", &url, "--system", "Be brief."])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 2);
    let turns: Vec<(String, String)> = records[0]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["from"].as_str().unwrap().to_string(), m["content"].as_str().unwrap().to_string()))
        .collect();
    let expect = [
        ("user", "Name a prime number."),
        ("assistant", "Teacher says: Name a prime number."),
        ("user", "And why is that?"),
        ("assistant", "Teacher says: And why is that?"),
    ];
    assert_eq!(turns, expect.map(|(r, c)| (r.to_string(), c.to_string())));
    assert_eq!(records[1]["messages"][1]["content"], "Teacher says: 解释一下彩虹。");
    // 2 answers + 2 follow-ups + 2 answers; the system message went to the teacher only.
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 6);
    assert!(seen.iter().all(|(_, b)| b["messages"][0]["content"] == "Be brief."));
}

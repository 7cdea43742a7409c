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

/// The texts between `[Response i]` markers of a rank prompt, in shown order.
fn shown_responses(prompt: &str) -> Vec<String> {
    (1..)
        .map_while(|i| {
            let open = format!("[Response {i}]\n");
            let start = prompt.find(&open)? + open.len();
            let end = prompt[start..].find(&format!("\n[End of Response {i}]"))? + start;
            Some(prompt[start..end].to_string())
        })
        .collect()
}

/// A judge with a fixed taste: shorter is better (ties broken by the text, so any order of the same
/// responses gets the same ranking).
fn shortest_first(prompt: &str) -> String {
    let shown = shown_responses(prompt);
    let mut labels: Vec<usize> = (0..shown.len()).collect();
    labels.sort_by(|&i, &j| (shown[i].chars().count(), &shown[i]).cmp(&(shown[j].chars().count(), &shown[j])));
    let ranking: Vec<String> = labels.iter().map(|l| (l + 1).to_string()).collect();
    format!("Shorter answers are better here.\n[[{}]]", ranking.join(" > "))
}

fn prompts_file(dir: &Path, prompts: &[&str]) -> std::path::PathBuf {
    let path = dir.join("prompts.jsonl");
    let lines: Vec<String> = prompts.iter().map(|p| serde_json::json!({ "prompt": p }).to_string()).collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// RLAIF: K = 4 samples per prompt from the tiny model, ranked by the judge in two shuffled orders;
/// the file's ranks follow the judge's taste, and stage 2 trains on it.
#[test]
fn rank_turns_k_samples_into_rankings_stage_2_trains_on() {
    let (url, seen) = scripted_server(|_, body| (200, completion(&shortest_first(last_message(body)))));
    let tmp = tempfile::tempdir().unwrap();
    let prompts = prompts_file(tmp.path(), &["Tell me about the sea.", "Give me a word.", "Write a line of a poem.", "你好吗？", "Count to three.", "Name a colour."]);
    let out = tmp.path().join("ranked.jsonl");
    let o = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["data", "rank", "--policy", crate::common::fixture("hf-tiny-chat").to_str().unwrap(), "--prompts", prompts.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap(), "--k", "4", "--orders", "2", "--max-new-tokens", "24", "--seed", "3"])
        .args(["--model", "judge", "--base-url", &url, "--max-retries", "0", "--concurrency", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}{stdout}", String::from_utf8_lossy(&o.stderr));
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(records.len() >= 4, "{stdout}");
    // The judge's taste is order-free, so the two orders agree exactly.
    assert!(stdout.contains("Kendall τ 1.000, same best 100.0%"), "{stdout}");
    for r in &records {
        let texts: Vec<&str> = r["completions"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
        let ranks: Vec<u64> = r["ranking"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
        assert_eq!(texts.len(), 4);
        for i in 0..4 {
            for j in 0..4 {
                if (texts[i].chars().count(), texts[i]) < (texts[j].chars().count(), texts[j]) {
                    assert!(ranks[i] < ranks[j], "{texts:?} ranked {ranks:?}");
                }
            }
        }
    }
    // Two judgements per prompt, the second in a shuffled order of the same responses.
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2 * records.len());
    let (first, second) = (shown_responses(last_message(&seen[0].1)), shown_responses(last_message(&seen[1].1)));
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(sorted(first.clone()), sorted(second.clone()));

    // Stage 2 reads it as K = 4 rankings and trains.
    let config = format!(
        "seed = 1\n[model]\nfrom = \"{}\"\n[data]\ntrain = \"{}\"\neval_fraction = 0.0\nmax_len = 96\n[train]\nsteps = 3\nbatch_size = 2\nmicro_batch_size = 2\nlr = 1e-3\nwarmup_steps = 1\neval_every = 100\nsave_every = 100\n",
        crate::common::fixture("hf-tiny-chat").display(),
        out.display()
    );
    let cfg_path = tmp.path().join("rm.toml");
    std::fs::write(&cfg_path, config).unwrap();
    let cfg: rlhf_reward::RewardConfig = rlhf_train::config::load_config(Some(&cfg_path), &[]).unwrap();
    rlhf_reward::run::<rlhf_runtime::CpuTrain>(&cfg, &tmp.path().join("rm"), false, &Default::default()).unwrap();
    let rows = rlhf_train::metrics::read_metrics(&tmp.path().join("rm/metrics.jsonl")).unwrap();
    assert_eq!(crate::common::column(&rows, "loss").len(), 3);
}

/// The answers between the judge prompt's markers: (shown first, shown second).
fn judged_answers(prompt: &str) -> (String, String) {
    let between = |open: &str, close: &str| {
        let start = prompt.find(open).unwrap() + open.len();
        prompt[start..start + prompt[start..].find(close).unwrap()].to_string()
    };
    (
        between("[The Start of Assistant A's Answer]\n", "\n[The End of Assistant A's Answer]"),
        between("[The Start of Assistant B's Answer]\n", "\n[The End of Assistant B's Answer]"),
    )
}

fn judge_cmd(a: &Path, b: &Path, questions: &Path, out: &Path, url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["eval", "judge", "--a", a.to_str().unwrap(), "--b", b.to_str().unwrap(), "--prompts", questions.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap(), "--max-new-tokens", "24", "--model", "judge", "--base-url", url, "--max-retries", "0", "--concurrency", "1"])
        .output()
        .unwrap()
}

/// Pairwise judging: a model folder's answers against a samples file's, each pair judged in both
/// orders. A judge that prefers longer answers decides by length; a judge that always picks the
/// first answer shown disagrees with itself on every pair, which must count as ties.
#[test]
fn judge_asks_both_orders_and_counts_disagreement_as_a_tie() {
    let tmp = tempfile::tempdir().unwrap();
    let questions = tmp.path().join("questions.jsonl");
    let rows = [
        serde_json::json!({ "prompt": "What is 2 + 3?", "category": "math", "reference": "5" }),
        serde_json::json!({ "prompt": "Write a haiku about rain.", "category": "writing" }),
        serde_json::json!({ "prompt": "用一句话介绍你自己。", "category": "chinese" }),
    ];
    std::fs::write(&questions, rows.iter().map(|r| r.to_string() + "\n").collect::<String>()).unwrap();
    let b = tmp.path().join("b.jsonl");
    let b_rows: Vec<String> = rows.iter().map(|r| serde_json::json!({ "prompt": r["prompt"], "answer": "ok" }).to_string()).collect();
    std::fs::write(&b, b_rows.join("\n")).unwrap();

    let (url, seen) = scripted_server(|_, body| {
        let (first, second) = judged_answers(last_message(body));
        let verdict = match first.chars().count().cmp(&second.chars().count()) {
            std::cmp::Ordering::Greater => "[[A]]",
            std::cmp::Ordering::Less => "[[B]]",
            std::cmp::Ordering::Equal => "[[C]]",
        };
        (200, completion(&format!("The longer answer is better. {verdict}")))
    });
    let out = tmp.path().join("judged");
    let o = judge_cmd(&crate::common::fixture("hf-tiny-chat"), &b, &questions, &out, &url);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}{stdout}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("judge.json")).unwrap()).unwrap();
    let a_answers: Vec<serde_json::Value> = std::fs::read_to_string(out.join("a_answers.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!((summary["pairs"].as_u64(), a_answers.len()), (Some(3), 3));
    let expect = |a: &str| a.chars().count().cmp(&2);
    let wins = a_answers.iter().filter(|r| expect(r["answer"].as_str().unwrap()).is_gt()).count() as u64;
    let losses = a_answers.iter().filter(|r| expect(r["answer"].as_str().unwrap()).is_lt()).count() as u64;
    assert_eq!((summary["a_vs_b"]["wins"].as_u64(), summary["a_vs_b"]["losses"].as_u64()), (Some(wins), Some(losses)), "{summary}");
    assert_eq!(summary["position_consistency"], 1.0);
    assert_eq!(summary["by_category"].as_object().unwrap().len(), 3);
    // Two requests per pair, the second with B's answer shown first; the reference reaches the judge.
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 6);
    assert_eq!(judged_answers(last_message(&seen[1].1)).0, "ok");
    assert!(last_message(&seen[0].1).contains("[The Start of Reference Answer]\n5\n"));

    // A judge that always says the first answer is better: every pair is a tie, no verdict agrees.
    let (url, _) = scripted_server(|_, _| (200, completion("The first one. [[A]]")));
    let biased = tmp.path().join("biased");
    let o = judge_cmd(&out.join("a_answers.jsonl"), &b, &questions, &biased, &url);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(biased.join("judge.json")).unwrap()).unwrap();
    assert_eq!(summary["a_vs_b"]["ties"].as_u64(), Some(3), "{summary}");
    assert_eq!(summary["position_consistency"], 0.0);
    for line in std::fs::read_to_string(biased.join("judgments.jsonl")).unwrap().lines() {
        let j: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!((j["verdict_a_first"].as_str(), j["verdict_b_first"].as_str(), j["outcome"].as_str()), (Some("A"), Some("A"), Some("tie")));
    }
}

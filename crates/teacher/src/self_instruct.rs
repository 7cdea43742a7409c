//! `rlhf data self-instruct`: Self-Instruct's bootstrap (Wang et al. 2023; Alpaca's 52K came from it).
//! Each round sends several requests, each showing the teacher in-context examples drawn from the
//! seeds and from what was generated so far (6 + 2), and asks for more tasks; every task of every
//! numbered-list answer is offered to the pool, whose filters drop near-duplicates (ROUGE-L ≥ 0.7),
//! out-of-bounds lengths, blacklisted keywords and exact repeats. Then the teacher writes an input (if
//! the task needs one) and an output for every kept task. The result is ColossalChat SFT JSONL.
//!
//! Requests are a deterministic function of the seed and the answers so far, and answered requests
//! sit in the client's cache: a killed job run again replays from the cache and pays only for what it
//! had not received.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use anyhow::{bail, Context};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use crate::client::{ChatMessage, ChatRequest, Client};
use crate::instructions::{parse_numbered_list, task_prompt, FilterConfig, InstructionPool};

/// One seed task (Self-Instruct's / Alpaca's fields; `input` may be empty).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SeedTask {
    pub instruction: String,
    #[serde(default)]
    pub input: String,
    #[serde(default)]
    pub output: String,
}

/// Reads seed tasks, one JSON object per line; a bad line is an error naming the file, the line
/// and what is wrong.
pub fn read_seed_tasks(path: &Path) -> anyhow::Result<Vec<SeedTask>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut tasks = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}: not UTF-8 text", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let task: SeedTask = serde_json::from_str(&line).with_context(|| format!("{}:{}: expected {{\"instruction\", \"input\", \"output\"}}", path.display(), i + 1))?;
        if task.instruction.trim().is_empty() {
            bail!("{}:{}: instruction: empty text", path.display(), i + 1);
        }
        tasks.push(task);
    }
    if tasks.is_empty() {
        bail!("{}: no seed tasks", path.display());
    }
    Ok(tasks)
}

#[derive(Debug, Clone)]
pub struct SelfInstructConfig {
    /// Instructions to generate (beyond the seeds).
    pub count: usize,
    pub seed: u64,
    /// Requests sent together each round.
    pub requests_per_round: usize,
    /// New tasks asked for per request.
    pub tasks_per_request: usize,
    /// In-context examples per request from the seeds and from the generated pool (Self-Instruct: 6 and 2).
    pub examples_from_seeds: usize,
    pub examples_from_generated: usize,
    pub temperature: f64,
    pub max_tokens: u32,
    /// Rounds before giving up when the filters keep too little.
    pub max_rounds: usize,
    pub filter: FilterConfig,
}

impl Default for SelfInstructConfig {
    fn default() -> Self {
        Self {
            count: 100,
            seed: 0,
            requests_per_round: 8,
            tasks_per_request: 8,
            examples_from_seeds: 6,
            examples_from_generated: 2,
            temperature: 0.7,
            max_tokens: 1024,
            max_rounds: 100,
            filter: FilterConfig::default(),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Summary {
    pub rounds: usize,
    /// Tasks offered to the pool, by verdict (`kept`, `rouge_l`, `too_short`, …).
    pub verdicts: BTreeMap<&'static str, usize>,
    /// Records written.
    pub written: usize,
    /// Kept tasks whose instance answer had no output.
    pub no_output: usize,
}

/// The request for an input and output of one task.
pub fn instance_prompt(instruction: &str) -> String {
    format!(
        "Here is a task for an AI assistant:\n\n{instruction}\n\n\
         If the task needs an input to work on (a passage, a list, a sentence, some code), write a realistic one; \
         otherwise write <none>. Then write a high-quality response to the task. Use the task's language, and \
         reply in exactly this form:\nInput: <the input, or <none>>\nOutput: <the response>"
    )
}

/// The (input, output) of an instance answer: the text after `Input:` up to `Output:`, and after
/// `Output:` (Chinese `输入：` / `输出：` too). `<none>`, `none` or `无` as input means no input; an
/// answer without the labels is all output.
pub fn parse_instance(text: &str) -> (Option<String>, String) {
    let find = |labels: &[&str]| labels.iter().filter_map(|l| text.find(l).map(|i| (i, i + l.len()))).min();
    let input = find(&["Input:", "输入：", "输入:"]);
    let output = find(&["Output:", "输出：", "输出:"]);
    match (input, output) {
        (Some((_, in_start)), Some((out_at, out_start))) if in_start <= out_at => {
            let raw = text[in_start..out_at].trim();
            let none = raw.is_empty() || ["<none>", "none", "无", "<无>", "n/a"].contains(&raw.to_lowercase().as_str());
            ((!none).then(|| raw.to_string()), text[out_start..].trim().to_string())
        }
        (_, Some((_, out_start))) => (None, text[out_start..].trim().to_string()),
        _ => (None, text.trim().to_string()),
    }
}

/// Runs the bootstrap against `client` and writes ColossalChat SFT JSONL to `out` (through a
/// temporary file and a rename).
pub fn self_instruct(seeds: &[SeedTask], cfg: &SelfInstructConfig, client: &Client, out: &Path) -> anyhow::Result<Summary> {
    let mut pool = InstructionPool::new(cfg.filter.clone(), seeds.iter().map(|s| s.instruction.trim().to_string()));
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut summary = Summary::default();
    while pool.generated().len() < cfg.count && summary.rounds < cfg.max_rounds {
        let requests: Vec<ChatRequest> = (0..cfg.requests_per_round)
            .map(|_| {
                let examples = pool.examples(cfg.examples_from_seeds, cfg.examples_from_generated, &mut rng);
                ChatRequest {
                    messages: vec![ChatMessage::user(task_prompt(&examples, cfg.tasks_per_request))],
                    temperature: Some(cfg.temperature),
                    max_tokens: Some(cfg.max_tokens),
                    seed: Some(rng.next_u64()),
                    ..Default::default()
                }
            })
            .collect();
        let answers = client.chat_many(&requests, Some(&format!("self-instruct round {}", summary.rounds + 1)));
        summary.rounds += 1;
        for answer in answers {
            for task in parse_numbered_list(answer?.text()) {
                if pool.generated().len() >= cfg.count {
                    break;
                }
                pool.offer(&task);
            }
        }
    }
    summary.verdicts = pool.counts().clone();
    let tasks = pool.generated().to_vec();
    let requests: Vec<ChatRequest> = tasks
        .iter()
        .map(|t| ChatRequest { messages: vec![ChatMessage::user(instance_prompt(t))], temperature: Some(cfg.temperature), max_tokens: Some(cfg.max_tokens), ..Default::default() })
        .collect();
    let mut lines = String::new();
    for (task, answer) in tasks.iter().zip(client.chat_many(&requests, Some("self-instruct instances"))) {
        let (input, output) = parse_instance(answer?.text());
        if output.is_empty() {
            summary.no_output += 1;
            continue;
        }
        let user = match input {
            Some(input) => format!("{task}\n\n{input}"),
            None => task.clone(),
        };
        let record = serde_json::json!({"messages": [{"from": "user", "content": user}, {"from": "assistant", "content": output}]});
        lines.push_str(&record.to_string());
        lines.push('\n');
        summary.written += 1;
    }
    rlhf_files::write_atomic(out, &lines)?;
    Ok(summary)
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_parse_with_and_without_input() {
        let (i, o) = parse_instance("Input: The cat sat.\nOutput: Le chat était assis.");
        assert_eq!((i.as_deref(), o.as_str()), (Some("The cat sat."), "Le chat était assis."));
        assert_eq!(parse_instance("Input: <none>\nOutput: Drink water."), (None, "Drink water.".into()));
        assert_eq!(parse_instance("输入：无\n输出：秋风起，落叶黄。"), (None, "秋风起，落叶黄。".into()));
        assert_eq!(parse_instance("Just an answer."), (None, "Just an answer.".into()));
        assert_eq!(parse_instance("Input: x\nOutput:"), (Some("x".into()), String::new()));
    }

    #[test]
    fn bad_seed_lines_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("seeds.jsonl");
        std::fs::write(&p, "{\"instruction\": \"Say hi.\"}\n\n{\"instruction\": 3}\n").unwrap();
        let e = format!("{:#}", read_seed_tasks(&p).unwrap_err());
        assert!(e.contains("seeds.jsonl:3"), "{e}");
        std::fs::write(&p, "{\"instruction\": \" \"}\n").unwrap();
        assert!(format!("{:#}", read_seed_tasks(&p).unwrap_err()).contains("seeds.jsonl:1: instruction: empty"));
    }
}

//! `rlhf eval judge`: two models' answers to a question set compared by a judge model (MT-bench's
//! pairwise protocol): each pair judged in both orders, disagreements counted as ties, win / tie /
//! loss of A with a 95% interval, overall and per category.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use rlhf_data::{Format, Message};
use rlhf_teacher::judge::{judge_pairs, tally, Outcome, Pair, Tally, Verdict};
use rlhf_teacher::rank::question_text;
use rlhf_teacher::ChatMessage;
use serde_json::{json, Value};

use crate::answers::{single, to_chat, write_answers, write_answers_on, AnswerArgs, PromptSource};
use rlhf_eval::{EvalConfig, JudgeConfig};
use crate::data::TeacherArgs;

#[derive(Debug, Args)]
pub struct JudgeArgs {
    /// Model A: a model folder (answers written here) or a JSONL of {"prompt", "answer"} samples.
    #[arg(long)]
    pub a: PathBuf,
    /// Model B, the same way.
    #[arg(long)]
    pub b: PathBuf,
    /// Questions (e.g. datasets/judge_questions.jsonl; `category` and `reference` fields are used).
    #[command(flatten)]
    pub questions: PromptSource,
    /// Folder for judge.json, judgments.jsonl and the answers written here.
    #[arg(long)]
    pub out: PathBuf,
    /// Sampling temperature of answers written here; 0 decodes greedily.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[command(flatten)]
    pub answers: AnswerArgs,
    /// Tokens the judge may write per verdict.
    #[arg(long, default_value_t = 1024)]
    pub judge_max_tokens: u32,
    #[command(flatten)]
    pub teacher: TeacherArgs,
}

/// A question of the set, with what the judge is told besides the answers.
#[derive(Debug, Clone)]
pub struct Question {
    pub messages: Vec<Message>,
    pub category: Option<String>,
    pub reference: Option<String>,
}

/// Reads a question set: prompts as every prompt reader does, plus `category` / `reference` of
/// JSONL records.
pub fn read_questions(source: &PromptSource) -> anyhow::Result<Vec<Question>> {
    let prompts = source.load()?;
    let path = &source.prompts;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    Ok(prompts
        .into_iter()
        .map(|(line, messages)| {
            let raw: Option<Value> = lines.get(line.wrapping_sub(1)).and_then(|l| serde_json::from_str(l).ok());
            let field = |k: &str| raw.as_ref().and_then(|r| r.get(k)?.as_str().map(str::to_string));
            Question { messages, category: field("category"), reference: field("reference") }
        })
        .collect())
}

/// Writes a model folder's answer to each prompt (None: the prompt was left out).
pub type Answerer<'a> = dyn Fn(&Path, &[Vec<Message>]) -> anyhow::Result<Vec<Option<String>>> + 'a;

/// One side's answers, by question: written by a model folder here (also saved to `save`), or read
/// from a samples file and matched on the question.
fn answers_of(side: &Path, questions: &[Question], answer: &Answerer, save: &Path) -> anyhow::Result<Vec<Option<String>>> {
    if side.is_dir() {
        let prompts: Vec<Vec<Message>> = questions.iter().map(|q| q.messages.clone()).collect();
        let answers = answer(side, &prompts)?;
        let mut lines = String::new();
        for (q, a) in questions.iter().zip(&answers) {
            if let Some(a) = a {
                lines.push_str(&json!({ "prompt": question_text(&to_chat(&q.messages)), "answer": a }).to_string());
                lines.push('\n');
            }
        }
        rlhf_files::write_atomic(save, lines.as_bytes())?;
        return Ok(answers);
    }
    let text = std::fs::read_to_string(side).with_context(|| format!("reading {}", side.display()))?;
    let mut by_question = HashMap::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = || format!("{}:{}", side.display(), i + 1);
        let v: Value = serde_json::from_str(line).with_context(at)?;
        let prompt = match &v["prompt"] {
            Value::String(s) => s.clone(),
            Value::Array(_) => {
                let messages: Vec<ChatMessage> = serde_json::from_value(v["prompt"].clone()).with_context(|| format!("{}: prompt: expected messages", at()))?;
                question_text(&messages)
            }
            _ => anyhow::bail!("{}: prompt: expected a string or messages", at()),
        };
        let answer = v.get("answer").or_else(|| v.get("response")).and_then(Value::as_str).with_context(|| format!("{}: answer: expected a string (or `response`)", at()))?;
        by_question.insert(prompt, answer.to_string());
    }
    Ok(questions.iter().map(|q| by_question.get(&question_text(&to_chat(&q.messages))).cloned()).collect())
}

fn verdict_name(v: Option<Verdict>) -> Value {
    match v {
        Some(Verdict::First) => json!("A"),
        Some(Verdict::Second) => json!("B"),
        Some(Verdict::Tie) => json!("tie"),
        None => Value::Null,
    }
}

fn tally_json(t: &Tally) -> Value {
    json!({ "wins": t.wins, "ties": t.ties, "losses": t.losses, "score": t.score, "interval": [t.interval.0, t.interval.1] })
}

/// Judges A against B on `questions` (model folders answer through `answer`); writes
/// `out/judge.json` and `out/judgments.jsonl`; returns the summary.
pub fn judge(a: &Path, b: &Path, questions: &[Question], client: &rlhf_teacher::Client, judge_max_tokens: u32, out: &Path, answer: &Answerer) -> anyhow::Result<Value> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let a_answers = answers_of(a, questions, answer, &out.join("a_answers.jsonl"))?;
    let b_answers = answers_of(b, questions, answer, &out.join("b_answers.jsonl"))?;
    let mut pairs = vec![];
    let mut asked = vec![];
    let mut missing = 0;
    for (q, (x, y)) in questions.iter().zip(a_answers.into_iter().zip(b_answers)) {
        let (Some(x), Some(y)) = (x, y) else {
            missing += 1;
            continue;
        };
        pairs.push(Pair { question: question_text(&to_chat(&q.messages)), reference: q.reference.clone(), a: x, b: y });
        asked.push(q);
    }
    anyhow::ensure!(!pairs.is_empty(), "no question has an answer from both A and B");
    let judgments = judge_pairs(&pairs, client, judge_max_tokens)?;
    let mut lines = String::new();
    let mut by_category: BTreeMap<String, Vec<Outcome>> = BTreeMap::new();
    for ((p, q), j) in pairs.iter().zip(&asked).zip(&judgments) {
        let outcome = match j.outcome {
            Outcome::Win => "win",
            Outcome::Tie => "tie",
            Outcome::Loss => "loss",
        };
        let row = json!({
            "prompt": p.question, "category": q.category, "a": p.a, "b": p.b,
            "verdict_a_first": verdict_name(j.a_first), "verdict_b_first": verdict_name(j.b_first), "outcome": outcome,
            "judge_a_first": j.a_first_text, "judge_b_first": j.b_first_text,
        });
        lines.push_str(&row.to_string());
        lines.push('\n');
        if let Some(c) = &q.category {
            by_category.entry(c.clone()).or_default().push(j.outcome);
        }
    }
    let outcomes: Vec<Outcome> = judgments.iter().map(|j| j.outcome).collect();
    let overall = tally(&outcomes);
    let consistent = judgments.iter().filter(|j| j.consistent()).count();
    let unparsed = judgments.iter().map(|j| usize::from(j.a_first.is_none()) + usize::from(j.b_first.is_none())).sum::<usize>();
    let summary = json!({
        "a": a.display().to_string(),
        "b": b.display().to_string(),
        "judge": client.model(),
        "questions": questions.len(),
        "pairs": pairs.len(),
        "without_both_answers": missing,
        "a_vs_b": tally_json(&overall),
        "position_consistency": consistent as f64 / judgments.len() as f64,
        "verdicts_unparsed": unparsed,
        "by_category": by_category.iter().map(|(c, o)| (c.clone(), tally_json(&tally(o)))).collect::<serde_json::Map<_, _>>(),
    });
    rlhf_files::write_atomic(&out.join("judgments.jsonl"), lines.as_bytes())?;
    rlhf_files::write_atomic(&out.join("judge.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    Ok(summary)
}

/// One line: A's win / tie / loss and score with its interval.
pub fn summary_line(v: &Value) -> String {
    let t = &v["a_vs_b"];
    let f = |p: &str| t.pointer(p).and_then(Value::as_f64).unwrap_or(f64::NAN);
    format!(
        "A vs B over {} pairs: {} wins, {} ties, {} losses; score {:.3} (95% interval {:.3}–{:.3}); position consistency {:.1}%",
        v["pairs"],
        t["wins"],
        t["ties"],
        t["losses"],
        f("/score"),
        f("/interval/0"),
        f("/interval/1"),
        100.0 * v["position_consistency"].as_f64().unwrap_or(f64::NAN)
    )
}

/// `[eval.judge]` of a pipeline run: the last aligned policy (PPO, else DPO) as A against the SFT
/// model (B) → `RUN/judge/`; the verdict names the policy under `policy`.
pub fn judge_run<B: rlhf_runtime::Backend>(run: &Path, eval: &EvalConfig, cfg: &JudgeConfig, device: &B::Device) -> anyhow::Result<Value> {
    let (prompts, format) = match &cfg.prompts {
        Some(p) => (p.clone(), Format::Auto),
        None => (eval.prompts.clone(), eval.format),
    };
    let questions = read_questions(&PromptSource { prompts, format, skip_invalid: false, limit: cfg.limit })?;
    let mut endpoint = cfg.endpoint.clone();
    endpoint.cache_dir.get_or_insert_with(|| run.join("judge.cache"));
    let client = rlhf_teacher::Client::new(&endpoint)?;
    let args = AnswerArgs {
        max_new_tokens: cfg.max_new_tokens,
        max_prompt_len: eval.max_prompt_len,
        seed: eval.seed,
        batch_size: eval.batch_size,
        template: eval.template,
        runtime: crate::InferenceRuntime { device: Default::default(), precision: eval.precision, quant: eval.quant },
    };
    let answer = |dir: &Path, prompts: &[Vec<Message>]| -> anyhow::Result<Vec<Option<String>>> {
        Ok(single(write_answers_on::<B>(dir, prompts, 1, cfg.temperature, None, &args, device)?))
    };
    let policy = *rlhf_eval::aligned_policies(run).last().ok_or_else(|| anyhow::anyhow!("{}: no aligned policy to judge (dpo/, grpo/ or ppo/final)", run.display()))?;
    let mut verdict = judge(&run.join(policy).join("final"), &run.join("sft/final"), &questions, &client, cfg.judge_max_tokens, &run.join("judge"), &answer)?;
    verdict["policy"] = Value::String(crate::report::policy_label(policy));
    Ok(verdict)
}

pub fn run(args: &JudgeArgs) -> anyhow::Result<()> {
    let questions = read_questions(&args.questions)?;
    let client = args.teacher.client(&args.out.join("judge"))?;
    let answer = |dir: &Path, prompts: &[Vec<Message>]| -> anyhow::Result<Vec<Option<String>>> {
        Ok(single(write_answers(dir, prompts, 1, args.temperature, None, &args.answers)?))
    };
    let summary = judge(&args.a, &args.b, &questions, &client, args.judge_max_tokens, &args.out, &answer)?;
    println!("{}", summary_line(&summary));
    crate::data::print_client_stats(&client);
    println!("judge: {}", args.out.join("judge.json").display());
    Ok(())
}

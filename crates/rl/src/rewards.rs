//! Reward sources, combined with weights: each `[[rewards]]` entry scores every response (or says it
//! does not apply: None) and is logged under its own name; a response's reward is
//! Σ weight · score over the sources that apply to it (a source that does not apply adds 0, as
//! TRL's `nansum`).
//!
//! ```toml
//! [[rewards]]
//! type = "math_answer"          # against the prompt record's `answer` field (`field = ...`)
//! [[rewards]]
//! type = "format"
//! pattern = '<think>[\s\S]*</think>[\s\S]*'
//! weight = 0.2
//! [[rewards]]
//! type = "program"              # a user's function: JSON lines on stdin/stdout (see `program`)
//! command = ["python3", "reward.py"]
//! [[rewards]]
//! type = "reward_model"
//! path = "runs/demo/reward/final"
//! [[rewards]]
//! type = "judge"                # an OpenAI-compatible endpoint asked for a 0–10 score
//! client = { base_url = "http://127.0.0.1:8000/v1", model = "judge", cache_dir = "runs/judge-cache" }
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use rlhf_data::{Prompt, Tokenizer};
use rlhf_model::{RewardInfo, RewardModel};
use burn::tensor::{Int, Tensor};
use rlhf_runtime::{Backend, Precision};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Value};

use crate::program::Program;
use crate::rollout::{in_chunks, slice_rows, Sampled};
use crate::verifiers;

/// Which part of the demo oracle's verdict a reward reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OraclePart {
    /// correct 1 + language 0.5 + format 0.5
    #[default]
    Total,
    Correct,
    Language,
    Format,
}

/// What a reward source is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RewardKind {
    /// 1 when the final answer (`\boxed{}` or `####`; with `extract = "last_number"`, the
    /// response's last number; any [`Extractor`](crate::verifiers::Extractor)) equals the record's
    /// `field` as a number.
    MathAnswer {
        #[serde(default = "answer_field")]
        field: String,
        #[serde(default)]
        extract: crate::verifiers::Extractor,
    },
    /// 1 when the trimmed response equals the record's `field`.
    Exact {
        #[serde(default = "answer_field")]
        field: String,
    },
    /// 1 when the response contains the record's `field`.
    Contains {
        #[serde(default = "answer_field")]
        field: String,
    },
    /// 1 when the pattern matches somewhere in the response.
    Regex { pattern: String },
    /// 1 when the pattern matches the whole response.
    Format { pattern: String },
    /// DAPO's soft overlong penalty on the response's tokens: 0 up to `max_len − buffer`, −1 at
    /// `max_len`.
    Length { max_len: usize, buffer: usize },
    /// −(share of repeated `n`-grams of tokens).
    Repetition {
        #[serde(default = "three")]
        n: usize,
    },
    /// The demo task's oracle (None for prompts that are not demo prompts).
    Oracle {
        #[serde(default)]
        part: OraclePart,
    },
    /// A user's program: `command` (argv, no shell) speaking JSON lines; each answer within
    /// `timeout_s`.
    Program {
        command: Vec<String>,
        #[serde(default = "sixty")]
        timeout_s: f64,
    },
    /// A reward model folder (stage 2's `final/`): its score on the response's last token, divided
    /// by the reference std in its `reward.json` (`normalize`), clipped to ±`clip` (0: no clip).
    RewardModel {
        path: PathBuf,
        #[serde(default = "yes")]
        normalize: bool,
        #[serde(default = "five")]
        clip: f64,
    },
    /// An OpenAI-compatible chat endpoint (the teacher client: bounded concurrency, retries, an
    /// on-disk cache) sent `template` with `{prompt}`, `{response}` and `{answer}` (the record's
    /// `answer`, empty without one) filled in, at temperature 0; the first number of the reply
    /// divided by `max_score` is the score (None when the reply has no number in 0..=max_score).
    Judge {
        client: rlhf_teacher::ClientConfig,
        #[serde(default = "judge_template")]
        template: String,
        #[serde(default = "ten")]
        max_score: f64,
        #[serde(default = "sixteen")]
        max_tokens: u32,
    },
}

/// The judge's default question (MT-Bench's single-answer grading, shortened to a bare number).
pub const JUDGE_TEMPLATE: &str = "Please act as an impartial judge and rate the response of an AI assistant to the user's \
question below for helpfulness, correctness and clarity, on a scale of 0 to 10.\n\n[Question]\n{prompt}\n\n\
[The Assistant's Answer]\n{response}\n\nReply with the rating only, a number from 0 to 10.";

fn judge_template() -> String {
    JUDGE_TEMPLATE.into()
}
fn ten() -> f64 {
    10.0
}
fn sixteen() -> u32 {
    16
}

fn answer_field() -> String {
    "answer".into()
}
fn three() -> usize {
    3
}
fn sixty() -> f64 {
    60.0
}
fn yes() -> bool {
    true
}
fn five() -> f64 {
    5.0
}

impl RewardKind {
    /// The source's type name (its default name in the logs).
    pub fn type_name(&self) -> &'static str {
        match self {
            RewardKind::MathAnswer { .. } => "math_answer",
            RewardKind::Exact { .. } => "exact",
            RewardKind::Contains { .. } => "contains",
            RewardKind::Regex { .. } => "regex",
            RewardKind::Format { .. } => "format",
            RewardKind::Length { .. } => "length",
            RewardKind::Repetition { .. } => "repetition",
            RewardKind::Oracle { .. } => "oracle",
            RewardKind::Program { .. } => "program",
            RewardKind::RewardModel { .. } => "reward_model",
            RewardKind::Judge { .. } => "judge",
        }
    }
}

/// One `[[rewards]]` entry: a source, its weight, and the name it is logged under
/// (`rewards/<name>/mean`; default: its type, then `_2`, `_3`… for repeats).
#[derive(Debug, Clone, PartialEq)]
pub struct RewardSpec {
    pub name: Option<String>,
    pub weight: f64,
    pub kind: RewardKind,
}

impl<'de> Deserialize<'de> for RewardSpec {
    /// `name` and `weight` beside the source's own fields (`type` and its settings, unknown keys refused).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut v = Value::deserialize(d)?;
        let map = v.as_object_mut().ok_or_else(|| D::Error::custom("a reward is a table with a `type`"))?;
        let name = match map.remove("name") {
            None => None,
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s),
            Some(other) => return Err(D::Error::custom(format!("reward `name` must be a non-empty string, found {other}"))),
        };
        let weight = match map.remove("weight") {
            None => 1.0,
            Some(w) => w.as_f64().filter(|w| w.is_finite()).ok_or_else(|| D::Error::custom(format!("reward `weight` must be a number, found {w}")))?,
        };
        let kind = RewardKind::deserialize(v).map_err(D::Error::custom)?;
        Ok(Self { name, weight, kind })
    }
}

impl Serialize for RewardSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut v = serde_json::to_value(&self.kind).map_err(serde::ser::Error::custom)?;
        let map = v.as_object_mut().expect("a reward kind is a table");
        if let Some(n) = &self.name {
            map.insert("name".into(), json!(n));
        }
        map.insert("weight".into(), json!(self.weight));
        v.serialize(s)
    }
}

/// The log names of `specs`: each its `name`, or its type with `_2`, `_3`… for repeats.
pub fn reward_names(specs: &[RewardSpec]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for s in specs {
        let base = s.name.clone().unwrap_or_else(|| s.kind.type_name().to_string());
        let mut name = base.clone();
        let mut k = 2;
        while names.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        names.push(name);
    }
    names
}

/// Checks that need no files: patterns compile, numbers are in range, names are distinct.
pub fn validate(specs: &[RewardSpec], section: &str) -> anyhow::Result<()> {
    for (i, s) in specs.iter().enumerate() {
        let at = || format!("{section}[{i}] ({})", s.kind.type_name());
        match &s.kind {
            RewardKind::Regex { pattern } | RewardKind::Format { pattern } => {
                regex::Regex::new(pattern).with_context(|| format!("{}: pattern", at()))?;
            }
            RewardKind::Length { max_len, buffer } if *max_len == 0 || buffer > max_len => {
                anyhow::bail!("{}: max_len must be ≥ 1 and buffer ≤ max_len", at())
            }
            RewardKind::Repetition { n } if *n == 0 => anyhow::bail!("{}: n must be ≥ 1", at()),
            RewardKind::Program { command, timeout_s } if command.is_empty() || !(*timeout_s > 0.0) => {
                anyhow::bail!("{}: command must name a program and timeout_s be > 0", at())
            }
            RewardKind::RewardModel { clip, .. } if *clip < 0.0 => anyhow::bail!("{}: clip must be ≥ 0", at()),
            RewardKind::Judge { template, max_score, client, .. } => {
                anyhow::ensure!(template.contains("{response}"), "{}: template must contain {{response}}", at());
                anyhow::ensure!(*max_score > 0.0 && max_score.is_finite(), "{}: max_score must be > 0", at());
                anyhow::ensure!(client.concurrency >= 1 && !client.model.is_empty(), "{}: client needs a model and concurrency ≥ 1", at());
            }
            _ => {}
        }
    }
    let names = reward_names(specs);
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            anyhow::bail!("{section}: two rewards are named {n:?}");
        }
    }
    Ok(())
}

/// What a response is scored from.
pub struct RewardInput<'a> {
    pub prompt: &'a Prompt,
    pub response: &'a str,
    /// The response's tokens (length and repetition rewards count them).
    pub tokens: &'a [u32],
}

/// A source ready to score.
enum Scorer<B: Backend> {
    Rule(Rule),
    Program(Program),
    RewardModel { model: RewardModel<B>, std: Option<f64>, clip: f64 },
    Judge { client: rlhf_teacher::Client, template: String, max_score: f64, max_tokens: u32 },
}

/// A rule-based source, its patterns compiled.
enum Rule {
    MathAnswer(String, crate::verifiers::Extractor),
    Exact(String),
    Contains(String),
    Regex(regex::Regex),
    Format(regex::Regex),
    Length { max_len: usize, buffer: usize },
    Repetition(usize),
    Oracle(OraclePart),
}

impl Rule {
    fn score(&self, x: &RewardInput) -> Option<f64> {
        let field = |name: &str| record_field(&x.prompt.record, name);
        match self {
            Rule::MathAnswer(f, extract) => verifiers::math_answer(&x.prompt.text, x.response, field(f).as_deref(), extract),
            Rule::Exact(f) => verifiers::exact(x.response, field(f).as_deref()),
            Rule::Contains(f) => verifiers::contains(x.response, field(f).as_deref()),
            Rule::Regex(p) => Some(verifiers::regex_match(x.response, p)),
            Rule::Format(p) => Some(verifiers::whole_match(x.response, p)),
            Rule::Length { max_len, buffer } => Some(verifiers::overlong_penalty(x.tokens.len(), *max_len, *buffer)),
            Rule::Repetition(n) => Some(verifiers::repetition_penalty(x.tokens, *n)),
            Rule::Oracle(part) => rlhf_data::demo::oracle(&x.prompt.text, x.response).map(|s| match part {
                OraclePart::Total => s.total(),
                OraclePart::Correct => f64::from(u8::from(s.correct)),
                OraclePart::Language => f64::from(u8::from(s.language)),
                OraclePart::Format => f64::from(u8::from(s.format)),
            }),
        }
    }
}

/// Every source's score of every response: `scores[source][row]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardTable {
    pub names: Vec<String>,
    pub weights: Vec<f64>,
    pub scores: Vec<Vec<Option<f64>>>,
}

impl RewardTable {
    /// Σ weight · score per row over the sources that apply.
    pub fn total(&self) -> Vec<f64> {
        let rows = self.scores.first().map_or(0, Vec::len);
        (0..rows).map(|r| self.scores.iter().zip(&self.weights).filter_map(|(s, w)| s[r].map(|x| w * x)).sum()).collect()
    }

    /// `rewards/<name>/mean` and `/std` (population, over the rows it applies to; absent where it
    /// applies to none).
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for (name, s) in self.names.iter().zip(&self.scores) {
            let applied: Vec<f64> = s.iter().flatten().copied().collect();
            if applied.is_empty() {
                continue;
            }
            let n = applied.len() as f64;
            let mean = applied.iter().sum::<f64>() / n;
            let std = (applied.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
            out.push((format!("rewards/{name}/mean"), mean));
            out.push((format!("rewards/{name}/std"), std));
        }
        out
    }

    /// The rows `keep`, in that order.
    pub fn select(&self, keep: &[usize]) -> Self {
        Self { names: self.names.clone(), weights: self.weights.clone(), scores: self.scores.iter().map(|s| keep.iter().map(|&r| s[r]).collect()).collect() }
    }

    /// Tables of the same sources, rows one after another.
    pub fn join(parts: Vec<Self>) -> Option<Self> {
        let mut it = parts.into_iter();
        let mut first = it.next()?;
        for p in it {
            for (a, b) in first.scores.iter_mut().zip(p.scores) {
                a.extend(b);
            }
        }
        Some(first)
    }
}

/// The sources of a run, started (programs running, reward models loaded).
pub struct RewardSources<B: Backend> {
    names: Vec<String>,
    weights: Vec<f64>,
    scorers: Vec<Scorer<B>>,
    micro_batch_size: usize,
}

impl<B: Backend> RewardSources<B> {
    /// Starts every source; reward models are loaded in `precision`'s inference dtype and scored
    /// `micro_batch_size` rows per forward.
    pub fn start(specs: &[RewardSpec], precision: Precision, micro_batch_size: usize, device: &B::Device) -> anyhow::Result<Self> {
        validate(specs, "rewards")?;
        let scorers = specs
            .iter()
            .map(|s| {
                Ok(match &s.kind {
                    RewardKind::MathAnswer { field, extract } => Scorer::Rule(Rule::MathAnswer(field.clone(), extract.clone())),
                    RewardKind::Exact { field } => Scorer::Rule(Rule::Exact(field.clone())),
                    RewardKind::Contains { field } => Scorer::Rule(Rule::Contains(field.clone())),
                    RewardKind::Regex { pattern } => Scorer::Rule(Rule::Regex(regex::Regex::new(pattern)?)),
                    RewardKind::Format { pattern } => Scorer::Rule(Rule::Format(regex::Regex::new(pattern)?)),
                    RewardKind::Length { max_len, buffer } => Scorer::Rule(Rule::Length { max_len: *max_len, buffer: *buffer }),
                    RewardKind::Repetition { n } => Scorer::Rule(Rule::Repetition(*n)),
                    RewardKind::Oracle { part } => Scorer::Rule(Rule::Oracle(*part)),
                    RewardKind::Program { command, timeout_s } => Scorer::Program(Program::start(command, Duration::from_secs_f64(*timeout_s))?),
                    RewardKind::RewardModel { path, normalize, clip } => {
                        let model = RewardModel::<B>::from_dir(path, device).with_context(|| format!("loading the reward model {}", path.display()))?.in_precision(precision);
                        let std = if *normalize { RewardInfo::load(path)?.map(|i| i.normalization.std) } else { None };
                        Scorer::RewardModel { model, std, clip: *clip }
                    }
                    RewardKind::Judge { client, template, max_score, max_tokens } => Scorer::Judge {
                        client: rlhf_teacher::Client::new(client).context("the judge's client")?,
                        template: template.clone(),
                        max_score: *max_score,
                        max_tokens: *max_tokens,
                    },
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self { names: reward_names(specs), weights: specs.iter().map(|s| s.weight).collect(), scorers, micro_batch_size })
    }

    pub fn is_empty(&self) -> bool {
        self.scorers.is_empty()
    }

    /// Decodes every response of `sampled` (row `i` answers `prompts[i]`) and scores it; returns
    /// the decoded responses with the scores.
    pub fn score_responses(&mut self, tok: &Tokenizer, sampled: &Sampled<B>, prompts: &[Prompt]) -> anyhow::Result<(Vec<String>, RewardTable)> {
        let texts = sampled.responses.iter().map(|r| tok.decode(r, true)).collect::<Result<Vec<_>, _>>()?;
        let inputs: Vec<RewardInput> = prompts.iter().zip(&texts).zip(&sampled.responses).map(|((prompt, response), tokens)| RewardInput { prompt, response, tokens }).collect();
        let table = self.score(&inputs, (&sampled.ids, &sampled.attention))?;
        Ok((texts, table))
    }

    /// Scores every response (`inputs[i]` is row `i` of `sequences`: the prompt-and-response ids
    /// and attention mask that reward models read).
    pub fn score(&mut self, inputs: &[RewardInput], sequences: (&Tensor<B, 2, Int>, &Tensor<B, 2, Int>)) -> anyhow::Result<RewardTable> {
        let micro = self.micro_batch_size;
        let scores = self
            .scorers
            .iter_mut()
            .map(|scorer| match scorer {
                Scorer::Rule(rule) => Ok(inputs.iter().map(|x| rule.score(x)).collect()),
                Scorer::Program(p) => {
                    let requests: Vec<Value> = inputs.iter().map(|x| json!({ "prompt": x.prompt.text, "response": x.response, "record": x.prompt.record })).collect();
                    p.score(&requests, |i| describe(inputs[i].prompt))
                }
                Scorer::RewardModel { model, std, clip } => {
                    let raw = in_chunks(inputs.len(), micro, |r| {
                        let (ids, attention) = slice_rows(sequences.0, sequences.1, r);
                        Ok(model.score(ids, attention)?.unsqueeze_dim::<2>(1))
                    })?;
                    let raw = raw.into_data().convert::<f32>().to_vec::<f32>().expect("f32");
                    Ok(raw.into_iter().map(|s| Some(normalized_score(s, *std, *clip))).collect())
                }
                Scorer::Judge { client, template, max_score, max_tokens } => {
                    let requests: Vec<rlhf_teacher::ChatRequest> = inputs
                        .iter()
                        .map(|x| rlhf_teacher::ChatRequest {
                            messages: vec![rlhf_teacher::ChatMessage::user(judge_question(template, x))],
                            temperature: Some(0.0),
                            max_tokens: Some(*max_tokens),
                            ..Default::default()
                        })
                        .collect();
                    let answers = client.chat_many(&requests, None);
                    let scores = answers
                        .into_iter()
                        .enumerate()
                        .map(|(i, a)| a.map(|r| judge_score(r.text(), *max_score)).with_context(|| format!("the judge {:?}, asked about {}", client.model(), describe(inputs[i].prompt))))
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    let unscored = scores.iter().filter(|s| s.is_none()).count();
                    if unscored > 0 {
                        eprintln!("judge {:?}: {unscored} of {} replies had no score in 0..={max_score} (those responses get none from it)", client.model(), scores.len());
                    }
                    Ok(scores)
                }
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(RewardTable { names: self.names.clone(), weights: self.weights.clone(), scores })
    }
}

/// The judge's question about one response: `template` with `{prompt}`, `{response}` and `{answer}`.
pub fn judge_question(template: &str, x: &RewardInput) -> String {
    let answer = record_field(&x.prompt.record, "answer").unwrap_or_default();
    template.replace("{prompt}", &x.prompt.text).replace("{answer}", &answer).replace("{response}", x.response)
}

/// A field of a prompt's record as text: strings as they are, numbers written out; None otherwise.
pub fn record_field(record: &Value, name: &str) -> Option<String> {
    match record.get(name) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// A number as a judge writes one.
static JUDGE_NUMBER: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| regex::Regex::new(r"-?\d+(?:\.\d+)?").expect("a valid pattern"));

/// The judge's score: the first number of its reply ("8", "Rating: 7.5/10") over `max_score`, or
/// None when there is none or it is out of 0..=max_score.
pub fn judge_score(reply: &str, max_score: f64) -> Option<f64> {
    let first = JUDGE_NUMBER.find(reply)?;
    let x: f64 = first.as_str().parse().ok()?;
    (0.0..=max_score).contains(&x).then_some(x / max_score)
}

/// A reward model's score as a reward: divided by the reference std when given (its mean was moved
/// to 0 by stage 2), then clipped to ±`clip` (0 = no clip).
pub fn normalized_score(raw: f32, std: Option<f64>, clip: f64) -> f64 {
    let s = rlhf_model::reward_info::scaled_score(raw, std);
    if clip > 0.0 {
        s.clamp(-clip, clip)
    } else {
        s
    }
}

/// A prompt record as errors name it.
fn describe(p: &Prompt) -> String {
    let text: String = p.text.chars().take(60).collect();
    if p.line > 0 {
        format!("the prompt record of line {} ({text:?})", p.line)
    } else {
        format!("the prompt {text:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(text: &str, record: Value) -> Prompt {
        Prompt { text: text.into(), ids: vec![], record, line: 3 }
    }

    #[test]
    fn specs_read_name_and_weight_beside_the_source() {
        let specs: Vec<RewardSpec> = serde_json::from_value(json!([
            { "type": "math_answer" },
            { "type": "format", "pattern": "a+", "weight": 0.5, "name": "form" },
            { "type": "math_answer", "field": "solution" },
        ]))
        .unwrap();
        assert_eq!(specs[0], RewardSpec { name: None, weight: 1.0, kind: RewardKind::MathAnswer { field: "answer".into(), extract: crate::verifiers::Extractor::Final } });
        assert_eq!(specs[1].weight, 0.5);
        assert_eq!(reward_names(&specs), vec!["math_answer", "form", "math_answer_2"]);
        let round_trip: Vec<RewardSpec> = serde_json::from_value(serde_json::to_value(&specs).unwrap()).unwrap();
        assert_eq!(round_trip, specs);
        let typo = serde_json::from_value::<RewardSpec>(json!({ "type": "format", "patern": "a" })).unwrap_err().to_string();
        assert!(typo.contains("patern"), "{typo}");
        assert!(serde_json::from_value::<RewardSpec>(json!({ "type": "vibes" })).is_err());
        assert!(validate(&[RewardSpec { name: None, weight: 1.0, kind: RewardKind::Regex { pattern: "(".into() } }], "rewards").is_err());
    }

    #[test]
    fn rules_read_the_record_and_weights_combine_what_applies() {
        let p = prompt("What is 3 plus 5?", json!({ "prompt": "What is 3 plus 5?", "answer": "8" }));
        let q = prompt("Something else", json!({ "prompt": "Something else" }));
        let x = |prompt, response| RewardInput { prompt, response, tokens: &[] };
        assert_eq!(Rule::Contains("answer".into()).score(&x(&p, "3 plus 5 is 8.")), Some(1.0));
        assert_eq!(Rule::MathAnswer("answer".into(), crate::verifiers::Extractor::Final).score(&x(&p, "so #### 8")), Some(1.0));
        assert_eq!(Rule::MathAnswer("answer".into(), crate::verifiers::Extractor::Final).score(&x(&q, "#### 8")), None); // no answer field
        assert_eq!(Rule::Oracle(OraclePart::Total).score(&x(&p, "3 plus 5 is 8.")), Some(2.0));
        assert_eq!(Rule::Oracle(OraclePart::Correct).score(&x(&p, "3 plus 5 is 9.")), Some(0.0));
        assert_eq!(Rule::Oracle(OraclePart::Total).score(&x(&q, "hi")), None); // not a demo prompt

        // Rows: (1, 0.5), (0, None), (None, None). Weights 2 and 0.5.
        let t = RewardTable { names: vec!["a".into(), "b".into()], weights: vec![2.0, 0.5], scores: vec![vec![Some(1.0), Some(0.0), None], vec![Some(0.5), None, None]] };
        assert_eq!(t.total(), vec![2.0 * 1.0 + 0.5 * 0.5, 0.0, 0.0]);
        // a: mean of [1, 0] = 0.5, population std 0.5; b: [0.5] → mean 0.5, std 0.
        assert_eq!(t.metrics(), vec![("rewards/a/mean".into(), 0.5), ("rewards/a/std".into(), 0.5), ("rewards/b/mean".into(), 0.5), ("rewards/b/std".into(), 0.0)]);
        assert_eq!(t.select(&[2, 0]).scores, vec![vec![None, Some(1.0)], vec![None, Some(0.5)]]);
    }

    #[test]
    fn reward_model_scores_are_scaled_then_clipped() {
        assert_eq!(normalized_score(3.0, Some(2.0), 0.0), 1.5);
        assert_eq!(normalized_score(30.0, Some(2.0), 5.0), 5.0);
        assert_eq!(normalized_score(-30.0, None, 5.0), -5.0);
    }

    #[test]
    fn judge_replies_are_read_as_the_first_number_over_the_maximum() {
        assert_eq!(judge_score("8", 10.0), Some(0.8));
        assert_eq!(judge_score("Rating: 7.5/10", 10.0), Some(0.75));
        assert_eq!(judge_score("no idea", 10.0), None);
        assert_eq!(judge_score("11", 10.0), None);
        assert_eq!(judge_score("-1", 10.0), None);
        let p = prompt("What is 3 plus 5?", json!({ "answer": 8 }));
        let x = RewardInput { prompt: &p, response: "9", tokens: &[] };
        assert_eq!(judge_question("Q: {prompt} A: {response} (right: {answer})", &x), "Q: What is 3 plus 5? A: 9 (right: 8)");
    }

    /// The judge source asks the endpoint once per response (the question filled in, temperature 0)
    /// and scores what it answers; a reply without a number gives no score; a refusing endpoint
    /// stops scoring with an error naming the judge and the prompt record's line.
    #[test]
    fn the_judge_source_scores_through_an_openai_compatible_endpoint() {
        type B = rlhf_runtime::Cpu;
        let (url, seen) = rlhf_teacher::testing::scripted_server(|_, body| {
            let question = body["messages"][0]["content"].as_str().unwrap_or("").to_string();
            let reply = if question.contains("A: 8") { "Rating: 9" } else { "I cannot rate this." };
            (200, json!({ "choices": [{ "message": { "role": "assistant", "content": reply } }] }).to_string())
        });
        let spec = |url: &str| -> Vec<RewardSpec> {
            serde_json::from_value(json!([{ "type": "judge", "client": { "base_url": url, "model": "judge", "max_retries": 0 }, "template": "Q: {prompt} A: {response}" }])).unwrap()
        };
        let device = Default::default();
        let mut sources = RewardSources::<B>::start(&spec(&url), Precision::F32, 4, &device).unwrap();
        let p = prompt("What is 3 plus 5?", json!({}));
        let inputs = [RewardInput { prompt: &p, response: "8", tokens: &[1] }, RewardInput { prompt: &p, response: "7", tokens: &[2] }];
        let sampled = crate::rollout::from_host::<B>(vec![vec![5], vec![5]], vec![vec![1], vec![2]], vec![0, 0], vec![false, false], 0, &device);
        let table = sources.score(&inputs, (&sampled.ids, &sampled.attention)).unwrap();
        assert_eq!(table.scores, vec![vec![Some(0.9), None]]);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].1["temperature"], json!(0.0));
        assert_eq!(seen[0].1["model"], json!("judge"));

        let (refusing, _) = rlhf_teacher::testing::scripted_server(|_, _| (400, json!({ "error": { "message": "bad model" } }).to_string()));
        let mut sources = RewardSources::<B>::start(&spec(&refusing), Precision::F32, 4, &device).unwrap();
        let err = format!("{:#}", sources.score(&inputs, (&sampled.ids, &sampled.attention)).unwrap_err());
        assert!(err.contains("judge") && err.contains("line 3") && err.contains("bad model"), "{err}");
        let bad: Vec<RewardSpec> = serde_json::from_value(json!([{ "type": "judge", "client": { "model": "j" }, "template": "no placeholder" }])).unwrap();
        assert!(validate(&bad, "rewards").is_err());
    }
}

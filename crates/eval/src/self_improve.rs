//! Self-improvement without labels (LMSI, Huang et al. 2022): K samples per unlabeled question, the
//! majority answer by self-consistency, and the reasoning paths that reach it, kept for questions
//! whose vote is clear enough, written as SFT data for the same model to train on.
//!
//! Samples are drawn in chunks of questions, each chunk seeded by its number alone and saved as one
//! file under `OUT.samples/` once it is complete; a rerun with the same settings takes the saved
//! chunks as they are and samples only the missing ones, so a killed job resumes without resampling
//! and ends with the data an uninterrupted run writes. The vote and the filters are applied to the
//! saved samples on every run, so another `min_agreement` or `paths_per_question` costs no sampling.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rlhf_data::encode::encode_prompt;
use rlhf_data::{load, BuiltinTemplate, ChatFormat, Encoded, Format, Kind, LoadOptions, Message, Record, Tokenizer};
use rlhf_model::{generate_n, CausalLm, GenerateConfig, Sampler, TransformerConfig};
use rlhf_rl::rewards::record_field;
use rlhf_rl::verifiers::{expected_answer, Extractor};
use rlhf_rl::vote::{answer_key, majority, Vote};
use rlhf_runtime::{Backend, Precision};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// `rlhf data self-improve` and the pipeline's `[self_improve]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfImproveConfig {
    /// Unlabeled questions (any prompt format stage 3 reads).
    pub prompts: PathBuf,
    #[serde(default)]
    pub format: Format,
    /// Skip malformed prompt records (reported) instead of stopping at the first.
    #[serde(default)]
    pub skip_invalid: bool,
    /// At most this many questions, from the top.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Samples per question (K).
    #[serde(default = "eight")]
    pub samples: usize,
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default = "default_new_tokens")]
    pub max_new_tokens: usize,
    /// Questions longer than this (in tokens, through the chat template) are left out.
    #[serde(default = "default_prompt_len")]
    pub max_prompt_len: usize,
    /// How each sample's final answer is read.
    #[serde(default)]
    pub extract: Extractor,
    /// Keep a question when its majority answer has at least this share of the K samples.
    #[serde(default = "default_agreement")]
    pub min_agreement: f64,
    /// Distinct reasoning paths written per kept question.
    #[serde(default = "four")]
    pub paths_per_question: usize,
    /// The record field with the true answer, when the questions carry one: used only to report how
    /// often the vote is right, never to choose what is kept.
    #[serde(default = "answer_field")]
    pub answer_field: String,
    /// Rows (questions × samples) generated together; a chunk of questions is saved at a time.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default)]
    pub seed: u64,
    /// A built-in chat format, for tokenizers without a chat template.
    #[serde(default)]
    pub template: Option<BuiltinTemplate>,
    /// Sample from the model with its block projections held as "q8", "q4" or "nf4" codes (as
    /// `--quant`).
    #[serde(default)]
    pub quant: Option<rlhf_runtime::quant::BaseQuant>,
}

fn eight() -> usize {
    8
}
fn four() -> usize {
    4
}
fn default_temperature() -> f64 {
    0.7
}
fn default_new_tokens() -> usize {
    256
}
fn default_prompt_len() -> usize {
    512
}
fn default_agreement() -> f64 {
    0.6
}
fn answer_field() -> String {
    "answer".into()
}
fn default_batch() -> usize {
    64
}

impl SelfImproveConfig {
    /// The settings for `prompts` with every default.
    pub fn for_prompts(prompts: impl Into<PathBuf>) -> Self {
        serde_json::from_value(json!({ "prompts": prompts.into() })).expect("every other field has a default")
    }

    /// Settings out of range are errors.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.samples == 0 {
            bail!("samples must be at least 1");
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            bail!("temperature must be > 0: self-consistency votes over different samples");
        }
        if let Some(p) = self.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            bail!("top_p {p} must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_agreement) {
            bail!("min_agreement {} must be in [0, 1]", self.min_agreement);
        }
        if self.paths_per_question == 0 {
            bail!("paths_per_question must be at least 1");
        }
        Ok(())
    }

    /// Questions per saved chunk.
    fn chunk_questions(&self) -> usize {
        (self.batch_size / self.samples).max(1)
    }
}

/// What became of the questions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfImproveSummary {
    /// Questions read (the too long included).
    pub questions: usize,
    /// Left out before sampling: longer than `max_prompt_len`.
    pub too_long: usize,
    /// Kept: the majority answer reached `min_agreement`.
    pub kept: usize,
    /// Dropped: no sample had an extractable answer.
    pub dropped_no_answer: usize,
    /// Dropped: a majority below `min_agreement`.
    pub dropped_low_agreement: usize,
    /// SFT conversations written (distinct paths of kept questions).
    pub paths: usize,
    /// How the vote went over the sampled questions.
    #[serde(flatten)]
    pub votes: VoteScores,
    /// Over labeled kept questions: the share whose majority answer (the one trained on) is right.
    pub kept_right: Option<f64>,
}

/// Self-consistency over a set of questions: agreement, and — over the questions whose record
/// carries the true answer — single-sample and majority accuracy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VoteScores {
    /// Mean share of the majority answer (votes / K).
    pub mean_agreement: f64,
    /// Mean share of samples without an extractable answer.
    pub no_answer_share: f64,
    /// Questions whose record carries the answer field.
    pub labeled: usize,
    /// Over labeled questions: the share of single samples that are right.
    pub single_sample_right: Option<f64>,
    /// Over labeled questions: the share whose majority answer is right.
    pub voted_right: Option<f64>,
}

/// One question's vote: the extracted answers, the majority, and — when the record carries the
/// true answer — whether the majority and how many single samples are right.
pub struct QuestionVote {
    pub answers: Vec<Option<String>>,
    pub vote: Vote,
    pub right: Option<bool>,
    pub right_samples: usize,
}

/// Votes on one question's `samples` (responses to `prompt`, whose record is `record`).
pub fn vote_on(extract: &Extractor, answer_field: &str, prompt: &str, record: &Value, samples: &[String]) -> QuestionVote {
    let answers: Vec<Option<String>> = samples.iter().map(|t| extract.answer(prompt, t)).collect();
    let vote = majority(&answers);
    let want = true_answer(record, answer_field);
    let right = want.as_ref().map(|w| vote.answer.as_ref() == Some(w));
    let right_samples = want.map_or(0, |w| answers.iter().filter(|a| a.as_deref().map(answer_key).as_ref() == Some(&w)).count());
    QuestionVote { answers, vote, right, right_samples }
}

/// The [`VoteScores`] of a set of questions' votes.
pub fn vote_scores<'a>(votes: impl IntoIterator<Item = &'a QuestionVote>) -> VoteScores {
    let (mut n, mut agreement, mut unextracted) = (0usize, 0.0, 0.0);
    let (mut labeled, mut voted_right, mut right_samples, mut labeled_samples) = (0usize, 0usize, 0usize, 0usize);
    for q in votes {
        n += 1;
        agreement += q.vote.share();
        unextracted += q.vote.no_answer as f64 / q.vote.samples.max(1) as f64;
        if let Some(right) = q.right {
            labeled += 1;
            voted_right += usize::from(right);
            right_samples += q.right_samples;
            labeled_samples += q.vote.samples;
        }
    }
    VoteScores {
        mean_agreement: agreement / n.max(1) as f64,
        no_answer_share: unextracted / n.max(1) as f64,
        labeled,
        single_sample_right: ratio(right_samples, labeled_samples),
        voted_right: ratio(voted_right, labeled),
    }
}

fn ratio(n: usize, d: usize) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

/// `k` samples (decoded, trimmed) for each of `prompts`, sharing each prompt's prefill, seeded by
/// `seed` and the chunk's number alone (so chunk `c` draws the same whatever came before it).
pub fn sample_chunk<B: Backend>(
    model: &CausalLm<B>,
    prompts: &[Vec<u32>],
    k: usize,
    generation: &GenerateConfig,
    seed: u64,
    chunk: usize,
    tok: &Tokenizer,
    device: &B::Device,
) -> anyhow::Result<Vec<Vec<String>>> {
    let cfg = GenerateConfig { seed: Some(crate::answers::chunk_seed(seed, chunk)), ..generation.clone() };
    let generated = generate_n(model, prompts, k, &cfg, device)?.to_host();
    let texts = generated.iter().map(|g| Ok(tok.decode(&g.new_ids, true)?.trim().to_string())).collect::<anyhow::Result<Vec<String>>>()?;
    Ok(texts.chunks(k).map(<[String]>::to_vec).collect())
}

/// One saved chunk: the settings it was sampled with, and every question's samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Chunk {
    settings: Value,
    questions: Vec<Sampled>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sampled {
    /// The question's line in its file.
    line: usize,
    samples: Vec<String>,
}

/// A question as read: its line, conversation and record.
struct Question {
    line: usize,
    messages: Vec<Message>,
    record: Value,
    ids: Vec<u32>,
}

/// Where the samples of `out` are saved.
pub fn samples_dir(out: &Path) -> PathBuf {
    rlhf_files::sibling(out, "samples")
}

/// Where the summary of `out` is written.
pub fn summary_path(out: &Path) -> PathBuf {
    rlhf_files::sibling(out, "summary.json")
}

/// Samples, votes and writes the SFT data `out` (ColossalChat JSONL) from the model in `model_dir`,
/// with its summary beside it (`OUT.summary.json`).
pub fn self_improve<B: Backend>(model_dir: &Path, cfg: &SelfImproveConfig, precision: Precision, out: &Path, device: &B::Device) -> anyhow::Result<SelfImproveSummary> {
    cfg.validate()?;
    let tok = Tokenizer::from_dir(model_dir)?;
    let fmt = ChatFormat::resolve(&tok, cfg.template)?;
    let config = TransformerConfig::from_hf_dir(model_dir)?;
    let limit = cfg.max_prompt_len.min(config.max_position_embeddings.saturating_sub(cfg.max_new_tokens));
    let loaded = load(&cfg.prompts, LoadOptions { kind: Kind::Prompt, format: cfg.format, skip_invalid: cfg.skip_invalid })?;
    if loaded.skipped.count() > 0 {
        eprintln!("{}: {}", cfg.prompts.display(), loaded.skipped);
    }
    let mut questions = Vec::new();
    let mut too_long = 0;
    for (line, record) in loaded.records.into_iter().take(cfg.limit.unwrap_or(usize::MAX)) {
        let Record::Prompt(messages, record) = record else { continue };
        match encode_prompt(&tok, &fmt, &messages, limit)? {
            Encoded::Kept(ids) | Encoded::Truncated(ids) => questions.push(Question { line, messages, record, ids }),
            Encoded::Dropped => too_long += 1,
        }
    }
    if too_long > 0 {
        eprintln!("{}: {too_long} question(s) longer than {limit} tokens left out", cfg.prompts.display());
    }

    let samples = sample_all::<B>(model_dir, cfg, precision, &questions, &tok, &fmt, &config, out, device)?;
    let (records, summary) = vote_and_select(cfg, &questions, &samples, too_long);
    let mut text = String::new();
    for r in &records {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    rlhf_files::write_atomic(out, text)?;
    rlhf_files::write_atomic(&summary_path(out), serde_json::to_string_pretty(&summary)? + "\n")?;
    Ok(summary)
}

/// Every question's samples, from saved chunks where they were drawn with the same settings, else
/// drawn now (the model is loaded only when a chunk is missing).
#[allow(clippy::too_many_arguments)]
fn sample_all<B: Backend>(
    model_dir: &Path,
    cfg: &SelfImproveConfig,
    precision: Precision,
    questions: &[Question],
    tok: &Tokenizer,
    fmt: &ChatFormat,
    config: &TransformerConfig,
    out: &Path,
    device: &B::Device,
) -> anyhow::Result<Vec<Vec<String>>> {
    let dir = samples_dir(out);
    let settings = json!({
        "model": model_dir,
        "weights": weights_stamp(model_dir)?,
        "precision": precision,
        "quant": cfg.quant,
        "prompts": cfg.prompts,
        "samples": cfg.samples,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "max_new_tokens": cfg.max_new_tokens,
        "max_prompt_len": cfg.max_prompt_len,
        "template": cfg.template,
        "seed": cfg.seed,
        "chunk_questions": cfg.chunk_questions(),
    });
    let generation = GenerateConfig {
        max_new_tokens: cfg.max_new_tokens,
        sampler: Sampler::from_temperature(cfg.temperature, cfg.top_p),
        stop_ids: fmt.stop_ids_and(tok, &config.eos_token_ids),
        pad_id: tok.pad_id_for(config.pad_token_id),
        seed: None,
    };
    let mut model: Option<CausalLm<B>> = None;
    let (mut reused, mut drawn) = (0, 0);
    let mut all = Vec::with_capacity(questions.len());
    for (c, chunk) in questions.chunks(cfg.chunk_questions()).enumerate() {
        let path = dir.join(format!("chunk-{c:06}.json"));
        let lines: Vec<usize> = chunk.iter().map(|q| q.line).collect();
        if let Some(saved) = read_chunk(&path, &settings, &lines, cfg.samples)? {
            all.extend(saved);
            reused += 1;
            continue;
        }
        let model = match &mut model {
            Some(m) => m,
            None => model.insert(CausalLm::<B>::from_hf_dir(model_dir, device)?.quantized(cfg.quant)?.for_inference(precision)),
        };
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|q| q.ids.clone()).collect();
        // Seeded by the chunk's number alone: a resumed run draws what an uninterrupted one does.
        let texts = sample_chunk(model, &prompts, cfg.samples, &generation, cfg.seed, c, tok, device)?;
        let sampled: Vec<Sampled> = chunk.iter().zip(texts).map(|(q, samples)| Sampled { line: q.line, samples }).collect();
        rlhf_files::write_atomic(&path, serde_json::to_string(&Chunk { settings: settings.clone(), questions: sampled.clone() })?)?;
        all.extend(sampled.into_iter().map(|s| s.samples));
        drawn += 1;
    }
    if reused > 0 {
        eprintln!("{}: {reused} chunk(s) of samples reused, {drawn} drawn", dir.display());
    }
    Ok(all)
}

/// A saved chunk's samples; None when it is not there. Saved with other settings, for other
/// questions, or unreadable: an error (the samples are the costly part; they are never dropped
/// silently).
fn read_chunk(path: &Path, settings: &Value, lines: &[usize], samples: usize) -> anyhow::Result<Option<Vec<Vec<String>>>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("{}: reading saved samples", path.display())),
    };
    let chunk: Chunk = serde_json::from_str(&text).with_context(|| format!("{}: not a chunk of saved samples (delete it to sample it again)", path.display()))?;
    let start_over = || format!("delete {} to sample again, or write to another --out", path.parent().unwrap_or(path).display());
    if &chunk.settings != settings {
        let differs: Vec<String> = settings
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| chunk.settings.get(k.as_str()) != Some(*v))
            .map(|(k, v)| format!("{k} {} now {v}", chunk.settings.get(k.as_str()).unwrap_or(&Value::Null)))
            .collect();
        bail!("{}: sampled with other settings ({}); {}", path.display(), differs.join(", "), start_over());
    }
    let saved: Vec<usize> = chunk.questions.iter().map(|q| q.line).collect();
    if saved != lines || chunk.questions.iter().any(|q| q.samples.len() != samples) {
        bail!("{}: holds the questions of lines {saved:?}, the prompts now give lines {lines:?}; {}", path.display(), start_over());
    }
    Ok(Some(chunk.questions.into_iter().map(|q| q.samples).collect()))
}

/// Names, sizes and modification times of the model's weight files: a model trained again into the
/// same folder does not reuse the old model's samples.
fn weights_stamp(dir: &Path) -> anyhow::Result<Vec<Value>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}: reading the model folder", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.ends_with(".safetensors") {
            let meta = entry.metadata()?;
            let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
            files.push((name, meta.len(), modified));
        }
    }
    files.sort();
    Ok(files.into_iter().map(|(name, len, modified)| json!([name, len, modified])).collect())
}

/// The vote on every question, the SFT records of the kept ones and the summary.
fn vote_and_select(cfg: &SelfImproveConfig, questions: &[Question], samples: &[Vec<String>], too_long: usize) -> (Vec<Value>, SelfImproveSummary) {
    let mut records = Vec::new();
    let (mut kept, mut no_answer, mut low, mut kept_labeled, mut kept_right) = (0, 0, 0, 0, 0);
    let mut votes = Vec::with_capacity(questions.len());
    for (q, texts) in questions.iter().zip(samples) {
        let prompt = rlhf_data::last_user_text(&q.messages);
        let v = vote_on(&cfg.extract, &cfg.answer_field, prompt, &q.record, texts);
        match &v.vote.answer {
            None => no_answer += 1,
            Some(_) if v.vote.share() < cfg.min_agreement => low += 1,
            Some(_) => {
                kept += 1;
                if let Some(right) = v.right {
                    kept_labeled += 1;
                    kept_right += usize::from(right);
                }
                records.extend(paths(&v.vote, &v.answers, texts, cfg.paths_per_question).into_iter().map(|path| sft_record(&q.messages, path)));
            }
        }
        votes.push(v);
    }
    let summary = SelfImproveSummary {
        questions: questions.len() + too_long,
        too_long,
        kept,
        dropped_no_answer: no_answer,
        dropped_low_agreement: low,
        paths: records.len(),
        votes: vote_scores(&votes),
        kept_right: ratio(kept_right, kept_labeled),
    };
    (records, summary)
}

/// Up to `n` distinct (by trimmed text) samples that reached the winning answer, in sample order.
fn paths<'a>(vote: &Vote, answers: &[Option<String>], texts: &'a [String], n: usize) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for i in vote.agreeing(answers) {
        let text = texts[i].trim();
        if !text.is_empty() && !out.contains(&text) && out.len() < n {
            out.push(text);
        }
    }
    out
}

/// The true answer's key, when the record has the field (GSM8K's "… #### 72" reads as 72).
fn true_answer(record: &Value, field: &str) -> Option<String> {
    Some(answer_key(&expected_answer(&record_field(record, field)?)))
}

/// A ColossalChat SFT conversation: the question's turns, then the path as the assistant's.
fn sft_record(messages: &[Message], path: &str) -> Value {
    let mut turns: Vec<Value> = messages.iter().map(|m| json!({ "from": m.role, "content": m.content })).collect();
    turns.push(json!({ "from": "assistant", "content": path }));
    json!({ "messages": turns })
}

/// The summary as one line for a person.
pub fn summary_line(s: &SelfImproveSummary) -> String {
    let pct = |x: Option<f64>| x.map_or("n/a".to_string(), |x| format!("{:.1}%", 100.0 * x));
    format!(
        "{} questions: {} kept ({} paths), dropped {} without an answer, {} below the agreement bar, {} too long; mean agreement {:.2}; \
         of {} labeled: single samples right {}, majority right {}, kept majority right {}",
        s.questions,
        s.kept,
        s.paths,
        s.dropped_no_answer,
        s.dropped_low_agreement,
        s.too_long,
        s.votes.mean_agreement,
        s.votes.labeled,
        pct(s.votes.single_sample_right),
        pct(s.votes.voted_right),
        pct(s.kept_right)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn question(line: usize, answer: Option<&str>) -> Question {
        let record = answer.map_or(json!({ "prompt": "q" }), |a| json!({ "prompt": "q", "answer": a }));
        Question { line, messages: vec![Message::new("user", format!("question {line}"))], record, ids: vec![1, 2] }
    }

    fn texts(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    /// Four questions, K = 4, extract gsm8k, min_agreement 0.5:
    /// - line 1 (answer 12): 12, 12, 7, none → share 2/4 = 0.5, kept, 2 distinct paths, right;
    /// - line 2 (answer 5): 3, 4, 5, 6 → share 1/4, dropped (agreement), majority 3 wrong;
    /// - line 3 (no answer field): none ×4 → dropped (no answer), unlabeled;
    /// - line 4 (answer "… #### 9"): four identical "#### 9" → share 1, kept, 1 path (distinct), right.
    /// Mean agreement (0.5 + 0.25 + 0 + 1) / 4 = 0.4375; no-answer share (0.25 + 0 + 1 + 0) / 4 =
    /// 0.3125; single samples right over labeled questions (2 + 1 + 4) / 12; majority right 2 / 3;
    /// kept majority right 2 / 2.
    #[test]
    fn vote_and_select_by_hand() {
        let cfg = SelfImproveConfig { extract: "gsm8k".parse().unwrap(), min_agreement: 0.5, samples: 4, ..SelfImproveConfig::for_prompts("p.jsonl") };
        let questions = [question(1, Some("12")), question(2, Some("5")), question(3, None), question(4, Some("9 + 0 = 9\n#### 9"))];
        let samples = [
            texts(&["8 + 4 = 12\n#### 12", "#### 12", "#### 7", "twelve?"]),
            texts(&["#### 3", "#### 4", "#### 5", "#### 6"]),
            texts(&["a", "b", "c", "d"]),
            texts(&["#### 9", "#### 9 ", "#### 9", "#### 9"]),
        ];
        let (records, s) = vote_and_select(&cfg, &questions, &samples, 1);
        let path = |r: &Value| r["messages"][1]["content"].as_str().unwrap().to_string();
        assert_eq!(records.iter().map(path).collect::<Vec<_>>(), ["8 + 4 = 12\n#### 12", "#### 12", "#### 9"]);
        assert_eq!(records[0]["messages"][0], json!({ "from": "user", "content": "question 1" }));
        assert_eq!(records[0]["messages"][1]["from"], "assistant");
        assert_eq!((s.questions, s.too_long, s.kept, s.dropped_no_answer, s.dropped_low_agreement, s.paths), (5, 1, 2, 1, 1, 3));
        assert_eq!((s.votes.mean_agreement, s.votes.no_answer_share, s.votes.labeled), (0.4375, 0.3125, 3));
        assert_eq!(s.votes.single_sample_right, Some(7.0 / 12.0));
        assert_eq!(s.votes.voted_right, Some(2.0 / 3.0));
        assert_eq!(s.kept_right, Some(1.0));
    }

    /// Paths per question caps the distinct paths written.
    #[test]
    fn paths_are_distinct_and_capped() {
        let answers: Vec<Option<String>> = ["1", "1", "1", "2"].iter().map(|a| Some(a.to_string())).collect();
        let texts = texts(&["a #### 1", "a #### 1", "b #### 1", "c #### 2"]);
        let v = majority(&answers);
        assert_eq!(paths(&v, &answers, &texts, 4), ["a #### 1", "b #### 1"]);
        assert_eq!(paths(&v, &answers, &texts, 1), ["a #### 1"]);
    }

    #[test]
    fn settings_out_of_range_are_errors() {
        let base = SelfImproveConfig::for_prompts("p.jsonl");
        assert!(SelfImproveConfig { temperature: 0.0, ..base.clone() }.validate().unwrap_err().to_string().contains("temperature"));
        assert!(SelfImproveConfig { min_agreement: 1.5, ..base.clone() }.validate().is_err());
        assert!(SelfImproveConfig { samples: 0, ..base.clone() }.validate().is_err());
        assert!(base.validate().is_ok());
        assert_eq!(SelfImproveConfig { samples: 8, batch_size: 64, ..base.clone() }.chunk_questions(), 8);
        assert_eq!(SelfImproveConfig { samples: 16, batch_size: 8, ..base }.chunk_questions(), 1);
    }
}

//! Every record format users bring, turned into four record kinds: SFT conversations, K-way rankings,
//! prompts and pretraining text. Formats are auto-detected per record or named in config; a bad
//! record is an error naming its line and field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{DataError, Result};
use crate::reader::{for_each_json_record_in, ParseIssue};
use crate::tokenizer::Message;

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Sft,
    Ranking,
    Prompt,
    Pretrain,
}

/// A record layout. `Auto` recognises each record by its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    #[default]
    Auto,
    /// `{"messages": [{"from"|"role": .., "content": ..}]}` (ColossalChat, OpenAI/TRL)
    Messages,
    /// `[{"role": .., "content": ..}, ..]`
    MessageList,
    /// `{"instruction", "input"?, "output"}` (Alpaca, InstructionWild v1); prompts need no output.
    Alpaca,
    /// `{"prompt", "completion"}`
    PromptCompletion,
    /// `{"context": [..], "chosen": [..], "rejected": [..]}` (ColossalChat preference)
    ColossalPreference,
    /// `{"prompt", "chosen", "rejected"}` with strings or messages (TRL)
    TrlPreference,
    /// `{"prompt", "responses": [best, .., worst]}`
    Responses,
    /// `{"prompt", "completions": [..], "ranking": [..]}` (rank numbers, 0 or 1 = best, ties allowed)
    Completions,
    /// `{"prompt", "completion", "label": true | false}` (TRL's unpaired preference data, KTO): a
    /// ranking of one response, rank 0 when it is desirable and 1 when not
    Unpaired,
    /// `{"prompt": ..}` (prompt sets)
    Prompt,
    /// `{"question": .., "answer": ..}` (GSM8K as it ships; the answer stays in the record for the
    /// rewards that check it)
    Question,
    /// `{"text": ..}` (pretraining JSONL)
    Text,
}

/// A K-way ranking: responses to one prompt and their ranks (lower is better, ties allowed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranking {
    pub prompt: Vec<Message>,
    pub responses: Vec<String>,
    pub ranks: Vec<u32>,
}

/// One record of any kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Sft(Vec<Message>),
    Ranking(Ranking),
    /// A prompt's messages and the whole record it came from (rewards read its other fields:
    /// `answer`, `tests`, …).
    Prompt(Vec<Message>, Value),
    Pretrain(String),
}

/// A record problem: the field at fault and what was expected. Lines are added by the reader.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
    pub reason: &'static str,
}

type FieldResult<T> = std::result::Result<T, FieldError>;

fn field_err(field: impl Into<String>, message: impl Into<String>, reason: &'static str) -> FieldError {
    FieldError { field: field.into(), message: message.into(), reason }
}

fn get<'a>(v: &'a Value, key: &str) -> FieldResult<&'a Value> {
    v.get(key).ok_or_else(|| field_err(key, "missing field", "missing field"))
}

fn string(v: &Value, field: &str) -> FieldResult<String> {
    match v {
        Value::String(s) if s.trim().is_empty() => Err(field_err(field, "empty text", "empty content")),
        Value::String(s) => Ok(s.clone()),
        other => Err(field_err(field, format!("expected a string, found {}", type_name(other)), "wrong type")),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `user`/`human`, `assistant`/`gpt`/`bot`, `system`: the role names found in the wild.
fn role(v: &Value, field: &str) -> FieldResult<String> {
    let name = match v {
        Value::String(s) => s.as_str(),
        other => return Err(field_err(field, format!("expected a string, found {}", type_name(other)), "wrong type")),
    };
    match name.to_ascii_lowercase().as_str() {
        "user" | "human" => Ok("user".into()),
        "assistant" | "gpt" | "bot" => Ok("assistant".into()),
        "system" => Ok("system".into()),
        _ => Err(field_err(field, format!("expected \"user\", \"assistant\" or \"system\", found {name:?}"), "unknown role")),
    }
}

/// A list of `{"from"|"role", "content"}` objects.
fn messages(v: &Value, field: &str) -> FieldResult<Vec<Message>> {
    let Value::Array(items) = v else {
        return Err(field_err(field, format!("expected a list of messages, found {}", type_name(v)), "wrong type"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let at = format!("{field}[{i}]");
            if !m.is_object() {
                return Err(field_err(&at, format!("expected a message object, found {}", type_name(m)), "wrong type"));
            }
            let (key, r) = match (m.get("role"), m.get("from")) {
                (Some(r), _) => ("role", r),
                (None, Some(r)) => ("from", r),
                (None, None) => return Err(field_err(format!("{at}.role"), "missing field (`role` or `from`)", "missing field")),
            };
            let role = role(r, &format!("{at}.{key}"))?;
            let content = m.get("content").ok_or_else(|| field_err(format!("{at}.content"), "missing field", "missing field"))?;
            Ok(Message { role, content: string(content, &format!("{at}.content"))? })
        })
        .collect()
}

/// A prompt given as a string (one user turn) or as messages.
fn prompt_messages(v: &Value, field: &str) -> FieldResult<Vec<Message>> {
    let msgs = match v {
        Value::String(_) => vec![Message::new("user", string(v, field)?)],
        _ => messages(v, field)?,
    };
    if msgs.is_empty() {
        return Err(field_err(field, "empty prompt", "empty prompt"));
    }
    Ok(msgs)
}

/// A response given as a string or as assistant messages (joined).
fn response_text(v: &Value, field: &str) -> FieldResult<String> {
    match v {
        Value::String(_) => string(v, field),
        Value::Object(_) => Ok(messages(&Value::Array(vec![v.clone()]), field)?.remove(0).content),
        _ => {
            let msgs = messages(v, field)?;
            if msgs.is_empty() {
                return Err(field_err(field, "empty response", "empty content"));
            }
            Ok(msgs.into_iter().map(|m| m.content).collect::<Vec<_>>().join("\n"))
        }
    }
}

/// `v[key]`: a list of responses.
fn response_list(v: &Value, key: &str) -> FieldResult<Vec<String>> {
    let list = get(v, key)?.as_array().ok_or_else(|| field_err(key, "expected a list", "wrong type"))?;
    list.iter().enumerate().map(|(i, r)| response_text(r, &format!("{key}[{i}]"))).collect()
}

fn alpaca_prompt(v: &Value) -> FieldResult<String> {
    let instruction = string(get(v, "instruction")?, "instruction")?;
    Ok(match v.get("input") {
        Some(Value::String(input)) if !input.trim().is_empty() => format!("{instruction}\n\n{input}"),
        Some(Value::String(_)) | Some(Value::Null) | None => instruction,
        Some(other) => return Err(field_err("input", format!("expected a string, found {}", type_name(other)), "wrong type")),
    })
}

/// Which format a record looks like, for `kind`.
pub fn detect(kind: Kind, v: &Value) -> FieldResult<Format> {
    let has = |k: &str| v.get(k).is_some();
    let format = match kind {
        _ if v.is_array() => Format::MessageList,
        Kind::Sft if has("messages") => Format::Messages,
        Kind::Sft if has("instruction") => Format::Alpaca,
        Kind::Sft if has("prompt") && has("completion") => Format::PromptCompletion,
        Kind::Ranking if has("completion") && has("label") => Format::Unpaired,
        Kind::Ranking if has("context") && has("chosen") => Format::ColossalPreference,
        Kind::Ranking if has("chosen") => Format::TrlPreference,
        Kind::Ranking if has("responses") => Format::Responses,
        Kind::Ranking if has("completions") => Format::Completions,
        Kind::Prompt if has("messages") => Format::Messages,
        Kind::Prompt if has("instruction") => Format::Alpaca,
        Kind::Prompt if has("prompt") => Format::Prompt,
        Kind::Prompt if has("question") => Format::Question,
        Kind::Pretrain if has("text") => Format::Text,
        _ => {
            let keys: Vec<&str> = v.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
            let expected = match kind {
                Kind::Sft => "`messages`, `instruction`+`output` or `prompt`+`completion`",
                Kind::Ranking => "`context`+`chosen`+`rejected`, `prompt`+`chosen`+`rejected`, `prompt`+`responses`, `prompt`+`completions`+`ranking` or `prompt`+`completion`+`label`",
                Kind::Prompt => "`messages`, `instruction`, `prompt` or `question`",
                Kind::Pretrain => "`text`",
            };
            let found = if v.is_object() { format!("keys {keys:?}") } else { type_name(v).to_string() };
            return Err(field_err("record", format!("expected {expected}, found {found}"), "unknown format"));
        }
    };
    Ok(format)
}

/// Converts one parsed record of `kind` in `format` (or auto-detected).
pub fn convert(kind: Kind, format: Format, v: &Value) -> FieldResult<Record> {
    let format = if format == Format::Auto { detect(kind, v)? } else { format };
    match kind {
        Kind::Sft => {
            let msgs = match format {
                Format::Messages => messages(get(v, "messages")?, "messages")?,
                Format::MessageList => messages(v, "record")?,
                Format::Alpaca => vec![
                    Message::new("user", alpaca_prompt(v)?),
                    Message::new("assistant", string(get(v, "output")?, "output")?),
                ],
                Format::PromptCompletion => {
                    let mut m = prompt_messages(get(v, "prompt")?, "prompt")?;
                    m.push(Message::new("assistant", response_text(get(v, "completion")?, "completion")?));
                    m
                }
                other => return Err(field_err("record", format!("format {other:?} does not hold SFT data"), "unknown format")),
            };
            if !msgs.iter().any(|m| m.role == "assistant") {
                return Err(field_err("messages", "no assistant answer in the conversation", "no assistant answer"));
            }
            Ok(Record::Sft(msgs))
        }
        Kind::Ranking => {
            let (prompt, responses, ranks) = match format {
                Format::ColossalPreference | Format::TrlPreference => {
                    let key = if format == Format::ColossalPreference { "context" } else { "prompt" };
                    let prompt = prompt_messages(get(v, key)?, key)?;
                    let chosen = response_text(get(v, "chosen")?, "chosen")?;
                    let rejected = response_text(get(v, "rejected")?, "rejected")?;
                    (prompt, vec![chosen, rejected], vec![0, 1])
                }
                Format::Responses => {
                    let prompt = prompt_messages(get(v, "prompt")?, "prompt")?;
                    let responses = response_list(v, "responses")?;
                    let ranks = (0..responses.len() as u32).collect();
                    (prompt, responses, ranks)
                }
                Format::Completions => {
                    let prompt = prompt_messages(get(v, "prompt")?, "prompt")?;
                    let responses = response_list(v, "completions")?;
                    let ranking = get(v, "ranking")?.as_array().ok_or_else(|| field_err("ranking", "expected a list of rank numbers", "wrong type"))?;
                    let ranks = ranking
                        .iter()
                        .enumerate()
                        .map(|(i, r)| {
                            r.as_u64().map(|r| r as u32).ok_or_else(|| field_err(format!("ranking[{i}]"), "expected a non-negative integer rank", "wrong type"))
                        })
                        .collect::<FieldResult<Vec<_>>>()?;
                    if ranks.len() != responses.len() {
                        return Err(field_err("ranking", format!("{} ranks for {} completions", ranks.len(), responses.len()), "wrong type"));
                    }
                    (prompt, responses, ranks)
                }
                Format::Unpaired => {
                    let prompt = prompt_messages(get(v, "prompt")?, "prompt")?;
                    let completion = response_text(get(v, "completion")?, "completion")?;
                    let desirable = match get(v, "label")? {
                        Value::Bool(b) => *b,
                        other => return Err(field_err("label", format!("expected true or false, found {}", type_name(other)), "wrong type")),
                    };
                    (prompt, vec![completion], vec![u32::from(!desirable)])
                }
                other => return Err(field_err("record", format!("format {other:?} does not hold rankings"), "unknown format")),
            };
            if responses.len() < 2 && format != Format::Unpaired {
                return Err(field_err("responses", format!("a ranking needs at least 2 responses, found {}", responses.len()), "too few responses"));
            }
            if responses.len() > 9 {
                return Err(field_err("responses", format!("at most 9 responses are supported (K ≤ 9), found {}", responses.len()), "too many responses"));
            }
            Ok(Record::Ranking(Ranking { prompt, responses, ranks }))
        }
        Kind::Prompt => {
            let mut msgs = match format {
                Format::Messages => messages(get(v, "messages")?, "messages")?,
                Format::MessageList => messages(v, "record")?,
                Format::Alpaca => vec![Message::new("user", alpaca_prompt(v)?)],
                Format::Prompt => prompt_messages(get(v, "prompt")?, "prompt")?,
                Format::Question => prompt_messages(get(v, "question")?, "question")?,
                other => return Err(field_err("record", format!("format {other:?} does not hold prompts"), "unknown format")),
            };
            // A trailing assistant turn is the answer, not part of the prompt.
            while msgs.last().is_some_and(|m| m.role == "assistant") {
                msgs.pop();
            }
            if !msgs.iter().any(|m| m.role == "user") {
                return Err(field_err("messages", "empty prompt: no user turn", "empty prompt"));
            }
            Ok(Record::Prompt(msgs, v.clone()))
        }
        Kind::Pretrain => match format {
            Format::Text => Ok(Record::Pretrain(string(get(v, "text")?, "text")?)),
            other => Err(field_err("record", format!("format {other:?} does not hold pretraining text"), "unknown format")),
        },
    }
}

/// Records skipped in `skip_invalid` mode: how many, why, and where.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SkipReport {
    /// reason → line numbers
    pub by_reason: BTreeMap<String, Vec<usize>>,
}

impl SkipReport {
    pub fn count(&self) -> usize {
        self.by_reason.values().map(Vec::len).sum()
    }

    pub fn lines(&self) -> Vec<usize> {
        let mut all: Vec<usize> = self.by_reason.values().flatten().copied().collect();
        all.sort_unstable();
        all
    }

    fn add(&mut self, reason: &str, line: usize) {
        self.by_reason.entry(reason.to_string()).or_default().push(line);
    }
}

impl std::fmt::Display for SkipReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "skipped {} invalid record(s)", self.count())?;
        for (reason, lines) in &self.by_reason {
            write!(f, "; {reason}: {} (lines {:?})", lines.len(), lines)?;
        }
        Ok(())
    }
}

/// The records of one file, with their line numbers, and what was skipped.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub path: PathBuf,
    pub records: Vec<(usize, Record)>,
    pub skipped: SkipReport,
}

/// How to read a file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadOptions {
    pub kind: Kind,
    pub format: Format,
    /// Skip bad records (and report them) instead of stopping at the first.
    pub skip_invalid: bool,
}

/// Reads every record of `path`. Strict mode stops at the first bad record with
/// `FILE:LINE: field: message`; skip mode collects a [`SkipReport`].
/// Pretraining `.txt` files are split into documents at blank lines.
pub fn load(path: &Path, opts: LoadOptions) -> Result<Loaded> {
    let mut loaded = Loaded { path: path.to_path_buf(), records: Vec::new(), skipped: SkipReport::default() };
    if opts.kind == Kind::Pretrain && path.extension().is_some_and(|e| e == "txt") {
        loaded.records = read_text_documents(path)?.into_iter().map(|(l, t)| (l, Record::Pretrain(t))).collect();
        return Ok(loaded);
    }
    for_each_json_record_in(path, |raw| {
        let result = raw.and_then(|(line, v)| {
            convert(opts.kind, opts.format, &v)
                .map(|r| (line, r))
                .map_err(|e| ParseIssue { line, message: format!("{}: {}", e.field, e.message), reason: e.reason })
        });
        match result {
            Ok(rec) => loaded.records.push(rec),
            Err(issue) if opts.skip_invalid => loaded.skipped.add(issue.reason, issue.line),
            Err(issue) => {
                return Err(DataError::Record { path: path.to_path_buf(), line: issue.line, message: issue.message });
            }
        }
        Ok(())
    })?;
    Ok(loaded)
}

/// The most responses a prompt of `path` has (K of its rankings), from its records alone; None when
/// the file cannot be read yet (a pipeline's data stage has not run). Memory plans size a
/// micro-batch of rankings with it.
pub fn widest_ranking(path: &Path, format: Format) -> Option<usize> {
    let loaded = load(path, LoadOptions { kind: Kind::Ranking, format, skip_invalid: true }).ok()?;
    loaded.records.iter().filter_map(|(_, r)| if let Record::Ranking(r) = r { Some(r.responses.len()) } else { None }).max()
}

/// Plain text: documents separated by blank lines, each with its first line number.
fn read_text_documents(path: &Path) -> Result<Vec<(usize, String)>> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => DataError::Record { path: path.into(), line: i + 1, message: "invalid UTF-8".into() },
            _ => DataError::io(path, e),
        })?;
        if line.trim().is_empty() {
            if !current.is_empty() {
                docs.push((start, std::mem::take(&mut current)));
            }
            continue;
        }
        if current.is_empty() {
            start = i + 1;
        } else {
            current.push('\n');
        }
        current.push_str(&line);
    }
    if !current.is_empty() {
        docs.push((start, current));
    }
    Ok(docs)
}


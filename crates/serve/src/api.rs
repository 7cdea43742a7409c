//! The OpenAI chat-completions wire format: a request body checked into a [`Job`](crate::engine::Job)
//! or an OpenAI-style error, and the answers' JSON.

use rlhf_data::encode::encode_prompt;
use rlhf_data::{ChatFormat, Encoded, Message, Tokenizer};
use rlhf_model::RowSampling;
use serde::Deserialize;
use rlhf_rl::Extractor;
use serde_json::{json, Value};

/// An error as OpenAI sends it: an HTTP status and `{"error": {message, type, param, code}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 naming the field at fault.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self { status: 400, message: message.into(), kind: "invalid_request_error", param: Some(param), code: None }
    }

    pub fn new(status: u16, kind: &'static str, code: Option<&'static str>, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, param: None, code }
    }

    pub fn body(&self) -> Value {
        json!({ "error": { "message": self.message, "type": self.kind, "param": self.param, "code": self.code } })
    }
}

/// The fields of `POST /v1/chat/completions` we read; others (penalties, logprobs, …) are ignored, as
/// local OpenAI-compatible servers do.
#[derive(Debug, Deserialize)]
struct CompletionRequest {
    model: Option<String>,
    messages: Option<Vec<WireMessage>>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    n: Option<i64>,
    seed: Option<i64>,
    stop: Option<Stop>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    /// Ours, not OpenAI's: an extractor name (`"last_number"`, `"final"`, `"regex:…"`): the `n`
    /// choices are voted on by their final answers and the body gains a `vote` object.
    vote: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    role: String,
    content: Option<Content>,
}

/// Message content: a string, or parts of which only text is understood.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// What the server knows when it checks a request.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The name clients must send as `model`.
    pub model: String,
    /// The model's context length.
    pub positions: usize,
    /// `max_tokens` when the request has none (cut to what the context leaves).
    pub default_max_tokens: usize,
    /// The most choices (`n`) one request may ask for: a request is one batch's rows at most.
    pub max_n: usize,
}

/// A checked request: the prompt's tokens and one sampling row per choice.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub prompt: Vec<u32>,
    pub choices: Vec<RowSampling>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// Self-consistency over the choices, when asked for: the extractor and the question it reads.
    pub vote: Option<(Extractor, String)>,
}

/// The most stop strings a request may carry (OpenAI's limit).
const MAX_STOP: usize = 4;

/// Parses and checks a request body; `fresh_seed` gives the seed of a request that has none.
pub fn check(body: &[u8], limits: &Limits, tok: &Tokenizer, fmt: &ChatFormat, fresh_seed: impl FnOnce() -> u64) -> Result<Checked, ApiError> {
    let req: CompletionRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(400, "invalid_request_error", None, format!("the body is not a valid chat completion request: {e}"))
    })?;
    match req.model.as_deref() {
        None => return Err(ApiError::invalid("model", "you must provide a model parameter")),
        Some(m) if m != limits.model => {
            return Err(ApiError {
                param: Some("model"),
                ..ApiError::new(404, "invalid_request_error", Some("model_not_found"), format!("the model `{m}` does not exist; this server serves `{}`", limits.model))
            })
        }
        Some(_) => {}
    }
    let messages = messages(req.messages)?;
    let vote = match &req.vote {
        None => None,
        Some(_) if req.stream => return Err(ApiError::invalid("vote", "vote needs every choice whole: it cannot be streamed")),
        Some(name) => {
            let extract: Extractor = name.parse().map_err(|e: String| ApiError::invalid("vote", e))?;
            let question = rlhf_data::last_user_text(&messages).to_string();
            Some((extract, question))
        }
    };
    let temperature = req.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid("temperature", format!("temperature must be between 0 and 2, got {temperature}")));
    }
    let top_p = req.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p", format!("top_p must be in (0, 1], got {top_p}")));
    }
    let n = req.n.unwrap_or(1);
    if n < 1 || n as usize > limits.max_n {
        return Err(ApiError::invalid("n", format!("n must be between 1 and {}, got {n}", limits.max_n)));
    }
    let stop = match req.stop {
        None => vec![],
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > MAX_STOP || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", format!("stop takes at most {MAX_STOP} non-empty strings")));
    }
    let prompt = match encode_prompt(tok, fmt, &messages, usize::MAX) {
        Ok(Encoded::Kept(ids) | Encoded::Truncated(ids)) => ids,
        Ok(Encoded::Dropped) => unreachable!("no length limit"),
        Err(e) => return Err(ApiError::invalid("messages", format!("the chat template refused the messages: {e}"))),
    };
    let room = limits.positions.saturating_sub(prompt.len());
    let max_tokens = match req.max_completion_tokens.or(req.max_tokens) {
        Some(m) if m <= 0 => return Err(ApiError::invalid("max_tokens", format!("max_tokens must be at least 1, got {m}"))),
        Some(m) => m as usize,
        None => limits.default_max_tokens.min(room.max(1)),
    };
    if prompt.len() + max_tokens > limits.positions {
        return Err(ApiError {
            param: Some("messages"),
            ..ApiError::new(
                400,
                "invalid_request_error",
                Some("context_length_exceeded"),
                format!(
                    "this model's maximum context length is {} tokens; the messages take {} and max_tokens asks for {max_tokens}",
                    limits.positions,
                    prompt.len()
                ),
            )
        });
    }
    // Seeds are integers in OpenAI's API, negative ones included: keep their bits.
    let seed = req.seed.map_or_else(fresh_seed, |s| s as u64);
    let choices = (0..n as u64)
        .map(|i| RowSampling { max_new_tokens: max_tokens, temperature, top_p: (top_p < 1.0).then_some(top_p), seed: seed.wrapping_add(i) })
        .collect();
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    Ok(Checked { prompt, choices, stop, stream: req.stream, include_usage, vote })
}

/// The conversation, roles mapped to the chat template's (`developer` is OpenAI's new name for system).
fn messages(wire: Option<Vec<WireMessage>>) -> Result<Vec<Message>, ApiError> {
    let wire = wire.ok_or_else(|| ApiError::invalid("messages", "you must provide messages"))?;
    if wire.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    wire.into_iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => return Err(ApiError::invalid("messages", format!("messages[{i}].role: `{other}` is not one of system, developer, user, assistant"))),
            };
            let content = match m.content {
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => parts
                    .into_iter()
                    .map(|p| match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => Ok(t),
                        (kind, _) => Err(ApiError::invalid("messages", format!("messages[{i}].content: only text parts are understood, found `{kind}`"))),
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .concat(),
                None => return Err(ApiError::invalid("messages", format!("messages[{i}].content is missing"))),
            };
            Ok(Message::new(role, content))
        })
        .collect()
}

/// Why a choice ended, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// One finished choice.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub text: String,
    pub finish_reason: FinishReason,
    pub completion_tokens: usize,
}

/// Identity of one response: its id, creation time and model name.
#[derive(Debug, Clone)]
pub struct Stamp {
    pub id: String,
    pub created: u64,
    pub model: String,
}

pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({ "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens })
}

/// The body of a non-streamed answer.
pub fn completion(stamp: &Stamp, answers: &[Answer], prompt_tokens: usize) -> Value {
    let choices: Vec<Value> = answers
        .iter()
        .enumerate()
        .map(|(i, a)| {
            json!({
                "index": i,
                "message": { "role": "assistant", "content": a.text },
                "logprobs": null,
                "finish_reason": a.finish_reason.as_str(),
            })
        })
        .collect();
    let completion_tokens = answers.iter().map(|a| a.completion_tokens).sum();
    json!({
        "id": stamp.id,
        "object": "chat.completion",
        "created": stamp.created,
        "model": stamp.model,
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    })
}

/// The `vote` object of a voted answer: the majority of the choices' final answers, its votes and
/// share of the choices, the choices without an answer, the tally (`[answer, votes]`, most voted
/// first) and the `index` of the first choice that reached the majority (null when none did).
pub fn vote(extract: &Extractor, question: &str, answers: &[Answer]) -> Value {
    let found: Vec<Option<String>> = answers.iter().map(|a| extract.answer(question, &a.text)).collect();
    let v = rlhf_rl::majority(&found);
    let tally: Vec<Value> = v.tally.iter().map(|(a, n)| json!([a, n])).collect();
    json!({
        "answer": v.answer, "votes": v.votes, "samples": v.samples, "share": v.share(),
        "no_answer": v.no_answer, "tally": tally, "index": v.path,
    })
}

/// One server-sent chunk of a streamed answer: a delta and/or a finish reason for one choice, or
/// (no choice) the closing usage chunk.
pub fn chunk(stamp: &Stamp, choice: Option<(usize, Value, Option<FinishReason>)>, usage: Option<Value>) -> Value {
    let choices: Vec<Value> = choice
        .into_iter()
        .map(|(i, delta, finish)| json!({ "index": i, "delta": delta, "logprobs": null, "finish_reason": finish.map(FinishReason::as_str) }))
        .collect();
    let mut body = json!({
        "id": stamp.id,
        "object": "chat.completion.chunk",
        "created": stamp.created,
        "model": stamp.model,
        "choices": choices,
    });
    if let Some(u) = usage {
        body["usage"] = u;
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { model: "tiny".into(), positions: 64, default_max_tokens: 16, max_n: 4 }
    }

    /// A whitespace tokenizer with a one-line template is enough to check requests.
    fn tokenizer() -> (Tokenizer, ChatFormat) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf-tiny-chat");
        let tok = Tokenizer::from_dir(&dir).unwrap();
        let fmt = ChatFormat::resolve(&tok, None).unwrap();
        (tok, fmt)
    }

    fn check_json(v: Value) -> Result<Checked, ApiError> {
        let (tok, fmt) = tokenizer();
        check(v.to_string().as_bytes(), &limits(), &tok, &fmt, || 99)
    }

    fn user(text: &str) -> Value {
        json!([{ "role": "user", "content": text }])
    }

    #[test]
    fn a_request_becomes_one_row_per_choice_with_consecutive_seeds() {
        let c = check_json(json!({ "model": "tiny", "messages": user("hi"), "n": 3, "seed": 7, "temperature": 0.5, "top_p": 0.9, "max_tokens": 5, "stop": "\n" })).unwrap();
        assert_eq!(c.choices.len(), 3);
        assert_eq!(c.choices.iter().map(|r| r.seed).collect::<Vec<_>>(), vec![7, 8, 9]);
        assert!(c.choices.iter().all(|r| r.max_new_tokens == 5 && r.temperature == 0.5 && r.top_p == Some(0.9)));
        assert_eq!(c.stop, vec!["\n".to_string()]);
        assert!(!c.stream);
    }

    /// Choices "… 12", "… 7", "… 12.0", "none": majority 12 with 2 of 4 votes, share 0.5, one
    /// without an answer, the first reaching it is choice 0.
    #[test]
    fn a_vote_over_the_choices_by_hand() {
        let c = check_json(json!({ "model": "tiny", "messages": user("What is 5 + 7?"), "n": 4, "vote": "last_number" })).unwrap();
        let (extract, question) = c.vote.unwrap();
        assert_eq!(question, "What is 5 + 7?");
        let answer = |t: &str| Answer { text: t.into(), finish_reason: FinishReason::Stop, completion_tokens: 1 };
        let v = vote(&extract, &question, &[answer("5 + 7 = 12"), answer("it is 7"), answer("12.0"), answer("none")]);
        assert_eq!(v, json!({ "answer": "12", "votes": 2, "samples": 4, "share": 0.5, "no_answer": 1, "tally": [["12", 2], ["7", 1]], "index": 0 }));
    }

    #[test]
    fn defaults_follow_openai_and_the_seed_comes_from_the_server_when_absent() {
        let c = check_json(json!({ "model": "tiny", "messages": [{ "role": "developer", "content": [{ "type": "text", "text": "be brief" }] }, { "role": "user", "content": "hi" }] })).unwrap();
        let r = &c.choices[0];
        assert_eq!((r.temperature, r.top_p, r.seed, r.max_new_tokens), (1.0, None, 99, 16));
    }

    #[test]
    fn bad_requests_name_the_field() {
        let err = |v: Value| check_json(v).unwrap_err();
        assert_eq!(err(json!({ "model": "other", "messages": user("x") })).status, 404);
        assert_eq!(err(json!({ "model": "tiny", "messages": user("x"), "max_tokens": 0 })).param, Some("max_tokens"));
        assert_eq!(err(json!({ "model": "tiny", "messages": user("x"), "temperature": 3 })).param, Some("temperature"));
        assert_eq!(err(json!({ "model": "tiny", "messages": user("x"), "n": 5 })).param, Some("n"));
        assert_eq!(err(json!({ "model": "tiny", "messages": [] })).param, Some("messages"));
        assert_eq!(err(json!({ "model": "tiny", "messages": [{ "role": "robot", "content": "x" }] })).param, Some("messages"));
        assert_eq!(err(json!({ "messages": user("x") })).param, Some("model"));
        assert_eq!(err(json!({ "model": "tiny", "messages": user("x"), "vote": "lastnumber" })).param, Some("vote"));
        assert_eq!(err(json!({ "model": "tiny", "messages": user("x"), "vote": "final", "stream": true })).param, Some("vote"));
        let long = err(json!({ "model": "tiny", "messages": user("x"), "max_tokens": 64 }));
        assert_eq!((long.status, long.code), (400, Some("context_length_exceeded")));
        let (tok, fmt) = tokenizer();
        let bad_json = check(b"{\"model\": \"tiny\",", &limits(), &tok, &fmt, || 0).unwrap_err();
        assert_eq!(bad_json.status, 400);
        assert!(bad_json.message.contains("EOF"), "{}", bad_json.message);
    }
}

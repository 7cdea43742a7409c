//! The HTTP side: routes, the API key, body limits, and answers as JSON or server-sent events.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use rlhf_data::{ChatFormat, Tokenizer};
use serde_json::json;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::api::{self, Answer, ApiError, Limits, Stamp};
use crate::engine::{Event, Job, Stats};

/// What every handler shares.
pub struct Server {
    pub limits: Limits,
    pub tokenizer: Tokenizer,
    pub format: ChatFormat,
    pub api_key: Option<String>,
    /// Seconds since the epoch when the server started (`created` of the model).
    pub started: u64,
    pub jobs: std::sync::mpsc::Sender<Job>,
    pub stats: Arc<Stats>,
    requests: AtomicU64,
}

impl Server {
    pub fn new(limits: Limits, tokenizer: Tokenizer, format: ChatFormat, api_key: Option<String>, jobs: std::sync::mpsc::Sender<Job>, stats: Arc<Stats>) -> Self {
        Self { limits, tokenizer, format, api_key, started: unix_now(), jobs, stats, requests: AtomicU64::new(0) }
    }

    /// A fresh number per request: ids and the seeds of requests without one.
    fn next_request(&self) -> u64 {
        self.requests.fetch_add(1, Ordering::Relaxed)
    }
}

pub fn router(server: Arc<Server>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(|| async { error(ApiError::new(404, "invalid_request_error", Some("unknown_url"), "no such route")) })
        .method_not_allowed_fallback(|| async { error(ApiError::new(405, "invalid_request_error", None, "method not allowed on this route")) })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(server)
}

fn error(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, Json(e.body())).into_response()
}

/// 401 unless the request carries `Authorization: Bearer <key>` (when the server has a key).
fn authorize(server: &Server, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &server.api_key else { return Ok(()) };
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given.map(str::trim) == Some(key.as_str()) {
        Ok(())
    } else {
        Err(ApiError::new(401, "invalid_request_error", Some("invalid_api_key"), "missing or incorrect API key (send Authorization: Bearer <key>)"))
    }
}

/// Liveness plus counts: requests accepted, batches run, rows (choices) and tokens generated.
async fn health(State(server): State<Arc<Server>>) -> Response {
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let s = &server.stats;
    Json(json!({
        "status": "ok",
        "requests": count(&server.requests),
        "batches": count(&s.batches),
        "rows": count(&s.rows),
        "generated_tokens": count(&s.generated_tokens),
    }))
    .into_response()
}

async fn models(State(server): State<Arc<Server>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&server, &headers) {
        return error(e);
    }
    let model = json!({ "id": server.limits.model, "object": "model", "created": server.started, "owned_by": "rlhf-rs", "max_model_len": server.limits.positions });
    Json(json!({ "object": "list", "data": [model] })).into_response()
}

async fn chat_completions(State(server): State<Arc<Server>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    if let Err(e) = authorize(&server, &headers) {
        return error(e);
    }
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let status = rejection.status().as_u16();
            let code = (status == 413).then_some("request_too_large");
            return error(ApiError::new(status, "invalid_request_error", code, rejection.body_text()));
        }
    };
    let n = server.next_request();
    let fresh_seed = || server.started.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let checked = match api::check(&body, &server.limits, &server.tokenizer, &server.format, fresh_seed) {
        Ok(c) => c,
        Err(e) => return error(e),
    };
    let stamp = Stamp { id: format!("chatcmpl-{:x}{n:06x}", server.started), created: unix_now(), model: server.limits.model.clone() };
    let (events, answers) = unbounded_channel();
    let prompt_tokens = checked.prompt.len();
    let choices = checked.choices.len();
    let vote = checked.vote;
    let job = Job { prompt: checked.prompt, choices: checked.choices, stop: checked.stop, stream: checked.stream, events, arrived: Instant::now() };
    if server.jobs.send(job).is_err() {
        return error(ApiError::new(503, "server_error", None, "the generation engine has stopped"));
    }
    if checked.stream {
        Sse::new(stream_events(stamp, answers, choices, prompt_tokens, checked.include_usage)).into_response()
    } else {
        match collect(answers, choices).await {
            Ok(answers) => {
                let mut body = api::completion(&stamp, &answers, prompt_tokens);
                if let Some((extract, question)) = &vote {
                    body["vote"] = api::vote(extract, question, &answers);
                }
                Json(body).into_response()
            }
            Err(e) => error(e),
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Every choice's answer, in choice order.
async fn collect(mut events: UnboundedReceiver<Event>, choices: usize) -> Result<Vec<Answer>, ApiError> {
    let mut answers: Vec<Option<Answer>> = vec![None; choices];
    while answers.iter().any(Option::is_none) {
        match events.recv().await {
            Some(Event::Done { choice, answer }) => answers[choice] = Some(answer),
            Some(Event::Delta { .. }) => {}
            Some(Event::Failed(e)) => return Err(ApiError::new(500, "server_error", None, format!("generation failed: {e}"))),
            None => return Err(ApiError::new(500, "server_error", None, "the generation engine stopped before answering")),
        }
    }
    Ok(answers.into_iter().flatten().collect())
}

/// A streamed answer as OpenAI sends it: a role chunk per choice, content deltas, a chunk with each
/// choice's finish reason, the usage chunk when asked for, then `[DONE]`.
fn stream_events(stamp: Stamp, events: UnboundedReceiver<Event>, choices: usize, prompt_tokens: usize, include_usage: bool) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    struct Stream {
        stamp: Stamp,
        events: UnboundedReceiver<Event>,
        /// Serialised chunks to send, in order.
        pending: VecDeque<String>,
        open: usize,
        completion_tokens: usize,
        finished: bool,
    }
    let pending = (0..choices).map(|i| api::chunk(&stamp, Some((i, json!({ "role": "assistant", "content": "" }), None)), None).to_string()).collect();
    let state = Stream { stamp, events, pending, open: choices, completion_tokens: 0, finished: false };
    stream::unfold(state, move |mut s| async move {
        loop {
            if let Some(data) = s.pending.pop_front() {
                return Some((Ok(SseEvent::default().data(data)), s));
            }
            if s.finished {
                return None;
            }
            match s.events.recv().await {
                Some(Event::Delta { choice, text }) => s.pending.push_back(api::chunk(&s.stamp, Some((choice, json!({ "content": text }), None)), None).to_string()),
                Some(Event::Done { choice, answer }) => {
                    s.open -= 1;
                    s.completion_tokens += answer.completion_tokens;
                    s.pending.push_back(api::chunk(&s.stamp, Some((choice, json!({}), Some(answer.finish_reason))), None).to_string());
                    if s.open == 0 {
                        if include_usage {
                            s.pending.push_back(api::chunk(&s.stamp, None, Some(api::usage(prompt_tokens, s.completion_tokens))).to_string());
                        }
                        s.pending.push_back("[DONE]".into());
                        s.finished = true;
                    }
                }
                Some(Event::Failed(e)) => {
                    s.pending.push_back(ApiError::new(500, "server_error", None, format!("generation failed: {e}")).body().to_string());
                    s.finished = true;
                }
                None => return None,
            }
        }
    })
}

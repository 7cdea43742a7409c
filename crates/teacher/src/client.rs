//! A client for OpenAI-compatible chat endpoints (a hosted API, vLLM, llama.cpp, ollama, or
//! `rlhf serve`): bounded concurrency, retries with backoff on 429 / 5xx / dropped connections,
//! timeouts, and a cache of answered requests on disk, so an interrupted job resumes without
//! paying twice.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where the teacher is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// E.g. `https://api.openai.com/v1` or `http://127.0.0.1:8000/v1` (default: `OPENAI_BASE_URL`).
    #[serde(default)]
    pub base_url: Option<String>,
    pub model: String,
    /// Default: `OPENAI_API_KEY`; none for a local server that needs no key.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Requests in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Tries after the first, on 429, 5xx and connection errors.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// Per request, seconds.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Answered requests are kept here (one JSON file per request).
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

fn default_concurrency() -> usize {
    8
}
fn default_retries() -> u32 {
    5
}
fn default_timeout() -> f64 {
    120.0
}

impl ClientConfig {
    /// A config for `model` with every other field from the environment or its default.
    pub fn for_model(model: &str) -> Self {
        Self {
            base_url: None,
            model: model.into(),
            api_key: None,
            concurrency: default_concurrency(),
            max_retries: default_retries(),
            timeout_s: default_timeout(),
            cache_dir: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn user(content: impl Into<String>) -> Self {
        Self { role: "user".into(), content: content.into() }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self { role: "system".into(), content: content.into() }
    }
}

/// The body of `POST /chat/completions` (fields the teacher jobs use; `model` is the client's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub stop: Vec<String>,
}

/// The parts of a chat completion the jobs read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    pub choices: Vec<Choice>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub message: ChatMessage,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl ChatResponse {
    /// The first choice's text.
    pub fn text(&self) -> &str {
        self.choices.first().map_or("", |c| c.message.content.as_str())
    }
}

/// Counts of what the client did, for a job's summary.
#[derive(Debug, Default)]
pub struct ClientStats {
    pub sent: AtomicUsize,
    pub cached: AtomicUsize,
    pub retried: AtomicUsize,
}

pub struct Client {
    url: String,
    model: String,
    api_key: Option<String>,
    cfg: ClientConfig,
    agent: ureq::Agent,
    pub stats: ClientStats,
}

/// The first delay before a retry; doubled each time, at most [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Client {
    /// The model name requests carry.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// A client for `cfg`, the base URL and key falling back to `OPENAI_BASE_URL` / `OPENAI_API_KEY`.
    pub fn new(cfg: &ClientConfig) -> anyhow::Result<Self> {
        let base = cfg
            .base_url
            .clone()
            .or_else(|| std::env::var("OPENAI_BASE_URL").ok())
            .context("no endpoint: set base_url in the config or OPENAI_BASE_URL")?;
        let api_key = cfg.api_key.clone().or_else(|| std::env::var("OPENAI_API_KEY").ok()).filter(|k| !k.is_empty());
        if cfg.concurrency == 0 {
            bail!("client concurrency must be at least 1");
        }
        if let Some(dir) = &cfg.cache_dir {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs_f64(cfg.timeout_s.max(0.001))).build();
        Ok(Self {
            url: format!("{}/chat/completions", base.trim_end_matches('/')),
            model: cfg.model.clone(),
            api_key,
            cfg: cfg.clone(),
            agent,
            stats: ClientStats::default(),
        })
    }

    /// The request's body as sent: the client's model added.
    fn body(&self, req: &ChatRequest) -> serde_json::Value {
        let mut body = serde_json::to_value(req).expect("a request serialises");
        body["model"] = serde_json::Value::String(self.model.clone());
        body
    }

    /// The cache file of a request: a hash of the endpoint and the exact body.
    fn cache_path(&self, dir: &Path, body: &serde_json::Value) -> PathBuf {
        let mut h = Sha256::new();
        h.update(self.url.as_bytes());
        h.update([0]);
        h.update(body.to_string().as_bytes());
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        dir.join(&hex[..2]).join(format!("{hex}.json"))
    }

    /// One chat completion: from the cache when it was answered before, else sent (with retries)
    /// and cached.
    pub fn chat(&self, req: &ChatRequest) -> anyhow::Result<ChatResponse> {
        let body = self.body(req);
        let cache = self.cfg.cache_dir.as_ref().map(|d| self.cache_path(d, &body));
        if let Some(path) = &cache {
            if let Ok(text) = std::fs::read_to_string(path) {
                if let Ok(resp) = serde_json::from_str::<ChatResponse>(&text) {
                    self.stats.cached.fetch_add(1, Ordering::Relaxed);
                    return Ok(resp);
                }
            }
        }
        let text = self.send(&body)?;
        let resp: ChatResponse = serde_json::from_str(&text).with_context(|| format!("{}: not a chat completion: {}", self.url, clip(&text)))?;
        if let Some(path) = &cache {
            rlhf_files::write_atomic(path, &text)?;
        }
        Ok(resp)
    }

    /// POSTs `body`, retrying on 429, 5xx and transport errors with exponential backoff (or the
    /// server's Retry-After); any other status is an error carrying the server's message.
    fn send(&self, body: &serde_json::Value) -> anyhow::Result<String> {
        let payload = body.to_string();
        let mut delay = FIRST_BACKOFF;
        for attempt in 0..=self.cfg.max_retries {
            if attempt > 0 {
                self.stats.retried.fetch_add(1, Ordering::Relaxed);
            }
            self.stats.sent.fetch_add(1, Ordering::Relaxed);
            let mut request = self.agent.post(&self.url).set("Content-Type", "application/json");
            if let Some(key) = &self.api_key {
                request = request.set("Authorization", &format!("Bearer {key}"));
            }
            let wait = match request.send_string(&payload) {
                Ok(resp) => return resp.into_string().with_context(|| format!("{}: reading the response", self.url)),
                Err(ureq::Error::Status(code, resp)) if code == 429 || code >= 500 => {
                    let retry_after = resp.header("Retry-After").and_then(|s| s.trim().parse::<f64>().ok()).map(Duration::from_secs_f64);
                    if attempt == self.cfg.max_retries {
                        bail!("{}: HTTP {code} after {} tries: {}", self.url, attempt + 1, error_message(resp));
                    }
                    retry_after.unwrap_or(delay)
                }
                Err(ureq::Error::Status(code, resp)) => bail!("{}: HTTP {code}: {}", self.url, error_message(resp)),
                Err(ureq::Error::Transport(t)) => {
                    if attempt == self.cfg.max_retries {
                        return Err(anyhow!("{}: {t} after {} tries", self.url, attempt + 1));
                    }
                    delay
                }
            };
            std::thread::sleep(wait.min(MAX_BACKOFF));
            delay = (delay * 2).min(MAX_BACKOFF);
        }
        unreachable!("the last try returns")
    }

    /// Every request, at most `concurrency` in flight, answers in the requests' order; a progress
    /// bar when `label` is given. A failed request fails only its own slot.
    pub fn chat_many(&self, reqs: &[ChatRequest], label: Option<&str>) -> Vec<anyhow::Result<ChatResponse>> {
        // Identical requests are sent once (e.g. a judge shown the same answer twice).
        let mut unique: Vec<&ChatRequest> = vec![];
        let mut seen = std::collections::HashMap::new();
        let first_of: Vec<usize> = reqs
            .iter()
            .map(|r| {
                // Strings, numbers and lists only: serialising cannot fail.
                let key = serde_json::to_string(r).expect("a ChatRequest serialises");
                *seen.entry(key).or_insert_with(|| {
                    unique.push(r);
                    unique.len() - 1
                })
            })
            .collect();
        let next = AtomicUsize::new(0);
        let slots: Mutex<Vec<Option<anyhow::Result<ChatResponse>>>> = Mutex::new((0..unique.len()).map(|_| None).collect());
        let bar = label.map(|l| {
            let bar = indicatif::ProgressBar::new(unique.len() as u64);
            bar.set_message(l.to_string());
            bar
        });
        std::thread::scope(|scope| {
            for _ in 0..self.cfg.concurrency.min(unique.len()) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(req) = unique.get(i) else { break };
                    let answer = self.chat(req);
                    slots.lock().expect("no worker panics holding it")[i] = Some(answer);
                    if let Some(b) = &bar {
                        b.inc(1);
                    }
                });
            }
        });
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let answers: Vec<anyhow::Result<ChatResponse>> = slots.into_inner().expect("workers are done").into_iter().map(|s| s.expect("every slot answered")).collect();
        first_of.iter().map(|&i| answers[i].as_ref().map(Clone::clone).map_err(|e| anyhow!("{e:#}"))).collect()
    }
}

/// The `error.message` of an OpenAI-style error body, else the body itself (clipped).
fn error_message(resp: ureq::Response) -> String {
    let text = resp.into_string().unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(String::from))
        .unwrap_or_else(|| clip(&text))
}

fn clip(text: &str) -> String {
    text.chars().take(300).collect()
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{completion, scripted_server};

    /// A completion whose text echoes the last message.
    fn echo(body: &serde_json::Value) -> String {
        let last = body["messages"].as_array().unwrap().last().unwrap()["content"].as_str().unwrap();
        completion(&format!("echo: {last}"))
    }

    fn config(url: &str, cache: Option<&Path>) -> ClientConfig {
        ClientConfig { base_url: Some(url.into()), api_key: Some("k-123".into()), cache_dir: cache.map(Path::to_path_buf), ..ClientConfig::for_model("teacher") }
    }

    fn ask(text: &str) -> ChatRequest {
        ChatRequest { messages: vec![ChatMessage::user(text)], temperature: Some(0.0), ..Default::default() }
    }

    #[test]
    fn retries_rate_limits_and_server_errors_then_answers() {
        let (url, seen) = scripted_server(|n, body| match n {
            0 => (429, r#"{"error":{"message":"slow down"}}"#.into()),
            1 => (503, "overloaded".into()),
            _ => (200, echo(body)),
        });
        let client = Client::new(&config(&url, None)).unwrap();
        let resp = client.chat(&ask("hi")).unwrap();
        assert_eq!(resp.text(), "echo: hi");
        assert_eq!(resp.usage, Some(Usage { prompt_tokens: 3, completion_tokens: 2 }));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(client.stats.retried.load(Ordering::Relaxed), 2);
        // The key and the model went with every try.
        assert!(seen.iter().all(|(auth, body)| auth.as_deref() == Some("Bearer k-123") && body["model"] == "teacher"));
    }

    #[test]
    fn client_errors_are_not_retried_and_carry_the_servers_message() {
        let (url, seen) = scripted_server(|_, _| (400, r#"{"error":{"message":"max_tokens must be positive","type":"invalid_request_error"}}"#.into()));
        let e = Client::new(&config(&url, None)).unwrap().chat(&ask("hi")).unwrap_err().to_string();
        assert!(e.contains("HTTP 400") && e.contains("max_tokens must be positive"), "{e}");
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[test]
    fn giving_up_after_the_last_retry_says_so() {
        let (url, seen) = scripted_server(|_, _| (500, "down".into()));
        let cfg = ClientConfig { max_retries: 2, ..config(&url, None) };
        let e = Client::new(&cfg).unwrap().chat(&ask("hi")).unwrap_err().to_string();
        assert!(e.contains("HTTP 500 after 3 tries: down"), "{e}");
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    /// An answered request is never sent again — not by this client, nor by a new one on the same
    /// cache (a job killed and rerun).
    #[test]
    fn answered_requests_come_from_the_cache_after_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let (url, seen) = scripted_server(|_, body| (200, echo(body)));
        let first = Client::new(&config(&url, Some(tmp.path()))).unwrap();
        let reqs: Vec<ChatRequest> = (0..5).map(|i| ask(&format!("q{i}"))).collect();
        let answers = first.chat_many(&reqs[..3], None);
        assert!(answers.iter().all(|a| a.is_ok()));
        assert_eq!(seen.lock().unwrap().len(), 3);
        let again = Client::new(&config(&url, Some(tmp.path()))).unwrap();
        let answers: Vec<String> = again.chat_many(&reqs, None).into_iter().map(|a| a.unwrap().text().to_string()).collect();
        assert_eq!(answers, (0..5).map(|i| format!("echo: q{i}")).collect::<Vec<_>>());
        assert_eq!(seen.lock().unwrap().len(), 5, "a cached request was sent again");
        assert_eq!(again.stats.cached.load(Ordering::Relaxed), 3);
        // Another sampling setting is another request.
        again.chat(&ChatRequest { temperature: Some(1.0), ..ask("q0") }).unwrap();
        assert_eq!(seen.lock().unwrap().len(), 6);
    }

    #[test]
    fn many_requests_keep_their_order_under_concurrency() {
        let (url, _) = scripted_server(|_, body| (200, echo(body)));
        let cfg = ClientConfig { concurrency: 4, ..config(&url, None) };
        let reqs: Vec<ChatRequest> = (0..12).map(|i| ask(&format!("n{i}"))).collect();
        let texts: Vec<String> = Client::new(&cfg).unwrap().chat_many(&reqs, None).into_iter().map(|a| a.unwrap().text().to_string()).collect();
        assert_eq!(texts, (0..12).map(|i| format!("echo: n{i}")).collect::<Vec<_>>());
    }

    #[test]
    fn identical_requests_are_sent_once() {
        let (url, seen) = scripted_server(|_, body| (200, echo(body)));
        let reqs = [ask("x"), ask("y"), ask("x")];
        let texts: Vec<String> = Client::new(&config(&url, None)).unwrap().chat_many(&reqs, None).into_iter().map(|a| a.unwrap().text().to_string()).collect();
        assert_eq!(texts, ["echo: x", "echo: y", "echo: x"]);
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_missing_endpoint_is_named() {
        if std::env::var("OPENAI_BASE_URL").is_ok() {
            return;
        }
        let e = Client::new(&ClientConfig::for_model("m")).err().unwrap().to_string();
        assert!(e.contains("OPENAI_BASE_URL"), "{e}");
    }
}

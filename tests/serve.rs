//! `rlhf serve` over real HTTP on 127.0.0.1: OpenAI-shaped answers, streaming, batching that does
//! not change answers, errors that leave the server serving, the API key.

use std::process::Command;

use serde_json::{json, Value};

use rlhf_serve::ServeProcess;

use crate::common::fixture;

/// Starts `rlhf serve` on a free port with the tiny chat fixture and waits until it listens.
pub fn serve(extra: &[&str]) -> ServeProcess {
    serve_model(&fixture("hf-tiny-chat"), extra)
}

fn serve_model(dir: &std::path::Path, extra: &[&str]) -> ServeProcess {
    let args = [&["--model", dir.to_str().unwrap(), "--served-model-name", "tiny"][..], extra].concat();
    ServeProcess::start(std::path::Path::new(env!("CARGO_BIN_EXE_rlhf")), &args).unwrap()
}

/// POSTs a chat completion; the status and the body (JSON, or the raw text of a stream).
pub fn post(url: &str, body: &str, key: Option<&str>) -> (u16, String) {
    let mut req = ureq::post(&format!("{url}/chat/completions")).set("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    match req.send_string(body) {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    }
}

fn chat(url: &str, body: Value) -> Value {
    let (status, text) = post(url, &body.to_string(), None);
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

fn contents(answer: &Value) -> Vec<String> {
    answer["choices"].as_array().unwrap().iter().map(|c| c["message"]["content"].as_str().unwrap().to_string()).collect()
}

fn request(i: usize) -> Value {
    let temperature = [0.0, 0.7, 1.0, 1.3][i % 4];
    let mut body = json!({
        "model": "tiny",
        "messages": [{ "role": "user", "content": format!("question {i}{}", " and more".repeat(i % 5)) }],
        "max_tokens": 8 + (i * 7) % 30,
        "seed": i,
        "temperature": temperature,
        "n": 1 + i % 3,
    });
    if i.is_multiple_of(5) {
        body["top_p"] = json!(0.8);
    }
    body
}

#[test]
fn completions_plain_streamed_and_with_n_follow_openai() {
    let s = serve(&[]);
    let models: Value = serde_json::from_str(&ureq::get(&format!("{}/models", s.url)).call().unwrap().into_string().unwrap()).unwrap();
    assert_eq!(models["data"][0]["id"], "tiny");

    let body = json!({ "model": "tiny", "messages": [{ "role": "user", "content": "Tell me a story." }], "max_tokens": 24, "temperature": 0.9, "seed": 5 });
    let plain = chat(&s.url, body.clone());
    assert_eq!(plain["object"], "chat.completion");
    let choice = &plain["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    let usage = &plain["usage"];
    let completion_tokens = usage["completion_tokens"].as_u64().unwrap();
    assert!((1..=24).contains(&completion_tokens), "{usage}");
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), usage["prompt_tokens"].as_u64().unwrap() + completion_tokens);
    let finish = choice["finish_reason"].as_str().unwrap();
    assert!(finish == "stop" || (finish == "length" && completion_tokens == 24), "{finish} after {completion_tokens} tokens");

    // Streamed with the same seed: the deltas add up to the same text, then usage, then [DONE].
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({ "include_usage": true });
    let (status, text) = post(&s.url, &streamed.to_string(), None);
    assert_eq!(status, 200);
    let events: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let joined: String = chunks.iter().filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str()).collect();
    assert_eq!(joined, choice["message"]["content"].as_str().unwrap());
    assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], finish);
    assert_eq!(chunks.last().unwrap()["usage"], *usage);

    // n = 3: choice i is the answer a single request with seed 5 + i gets.
    let mut three = body.clone();
    three["n"] = json!(3);
    let many = contents(&chat(&s.url, three));
    assert_eq!(many.len(), 3);
    for (i, text) in many.iter().enumerate() {
        let mut one = body.clone();
        one["seed"] = json!(5 + i);
        assert_eq!(&contents(&chat(&s.url, one))[0], text, "choice {i}");
    }
    assert!(many[0] != many[1] || many[1] != many[2], "three draws at temperature 0.9 all equal: {many:?}");

    // With our `vote` field: the same three choices, and the majority of their last characters.
    let mut voted = body.clone();
    voted["n"] = json!(3);
    voted["vote"] = json!(r"regex:(\S)\s*$");
    let answer = chat(&s.url, voted);
    assert_eq!(contents(&answer), many);
    let v = &answer["vote"];
    let extract: rlhf_rl::Extractor = r"regex:(\S)\s*$".parse().unwrap();
    let last = |t: &str| extract.answer("", t).map(|a| rlhf_rl::answer_key(&a)).filter(|k| !k.is_empty());
    let want = rlhf_rl::majority(&many.iter().map(|t| last(t)).collect::<Vec<_>>());
    assert_eq!(v["answer"].as_str(), want.answer.as_deref(), "{v}");
    assert_eq!(v["index"].as_u64().map(|i| i as usize), want.path, "{v}");
    let index = want.path.expect("some choice has a visible character");
    assert_eq!(v["answer"].as_str().map(String::from), last(&many[index]), "{v}");
    let agreeing = many.iter().filter(|t| last(t).as_deref() == v["answer"].as_str()).count();
    assert_eq!((v["votes"].as_u64().unwrap() as usize, v["samples"].as_u64()), (agreeing, Some(3)), "{v}");

    // A stop string cuts the text before it, with finish_reason "stop".
    let greedy = json!({ "model": "tiny", "messages": [{ "role": "user", "content": "Tell me a story." }], "max_tokens": 24, "temperature": 0 });
    let full = contents(&chat(&s.url, greedy.clone())).remove(0);
    // Two characters from inside the answer (not a broken one, which may differ mid-stream).
    let chars: Vec<char> = full.chars().collect();
    let at = (1..chars.len().saturating_sub(1)).find(|&i| !chars[i..i + 2].contains(&'\u{FFFD}')).unwrap_or_else(|| panic!("nothing to cut in {full:?}"));
    let stop: String = chars[at..at + 2].iter().collect();
    let mut cut = greedy.clone();
    cut["stop"] = json!([stop]);
    let answer = chat(&s.url, cut);
    assert_eq!(answer["choices"][0]["message"]["content"].as_str().unwrap(), &full[..full.find(&stop).unwrap()]);
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
}

#[test]
fn concurrent_requests_share_batches_and_get_the_answers_they_get_alone() {
    let s = serve(&["--max-batch", "16", "--max-wait-ms", "50"]);
    let n = 20;
    let together: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n).map(|i| scope.spawn({ let url = s.url.clone(); move || chat(&url, request(i)) })).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let health: Value = serde_json::from_str(&ureq::get(&s.url.replace("/v1", "/health")).call().unwrap().into_string().unwrap()).unwrap();
    let (requests, batches) = (health["requests"].as_u64().unwrap(), health["batches"].as_u64().unwrap());
    assert_eq!(requests, n as u64);
    assert!(batches < requests / 2, "{requests} requests in {batches} batches: not batched");
    for (i, answer) in together.iter().enumerate() {
        let alone = chat(&s.url, request(i));
        assert_eq!(contents(answer), contents(&alone), "request {i}");
        assert_eq!(answer["usage"], alone["usage"], "request {i}");
        assert_eq!(contents(answer).len(), 1 + i % 3);
    }
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let s = serve(&["--api-key", "sekret", "--max-body-bytes", "2048"]);
    let good = json!({ "model": "tiny", "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 4 }).to_string();
    let cases: Vec<(String, Option<&str>, u16, Option<&str>)> = vec![
        (good.clone(), None, 401, Some("invalid_api_key")),
        (good.clone(), Some("wrong"), 401, Some("invalid_api_key")),
        ("{\"model\": \"tiny\", ".into(), Some("sekret"), 400, None),
        (good.replace("\"tiny\"", "\"gpt-9\""), Some("sekret"), 404, Some("model_not_found")),
        (good.replace("\"max_tokens\":4", "\"max_tokens\":0"), Some("sekret"), 400, None),
        (good.replace("\"max_tokens\":4", "\"max_tokens\":250"), Some("sekret"), 400, Some("context_length_exceeded")),
        (good.replace("\"user\"", "\"robot\""), Some("sekret"), 400, None),
        (good.replace("hi", &"x".repeat(4000)), Some("sekret"), 413, Some("request_too_large")),
    ];
    for (body, key, status, code) in cases {
        let (got, text) = post(&s.url, &body, key);
        assert_eq!(got, status, "{text}");
        let err: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        assert!(err["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{text}");
        assert_eq!(err["error"]["code"].as_str(), code, "{text}");
        // Still serving.
        let (ok, answer) = post(&s.url, &good, Some("sekret"));
        assert_eq!(ok, 200, "{answer}");
    }
    assert_eq!(ureq::get(&s.url.replace("/v1", "/health")).call().unwrap().status(), 200);
}

/// The tiny chat fixture with a 2048-token context (its RoPE has no learned positions), so judge
/// prompts fit.
fn long_context_fixture(dir: &std::path::Path) -> std::path::PathBuf {
    let to = dir.join("tiny-long");
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(fixture("hf-tiny-chat")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(to.join("config.json")).unwrap()).unwrap();
    config["max_position_embeddings"] = json!(2048);
    std::fs::write(to.join("config.json"), config.to_string()).unwrap();
    to
}

fn rlhf_ok(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_rlhf")).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "rlhf {args:?}: {}{stdout}", String::from_utf8_lossy(&o.stderr));
    stdout
}

/// The teacher tools against our own server: distillation writes what the server answers; a judge
/// that cannot follow the ranking or verdict format (an untrained model) leaves prompts unranked
/// and pairs tied, counted as such, without failing the job.
#[test]
fn teacher_tools_run_against_rlhf_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let model = long_context_fixture(tmp.path());
    let s = serve_model(&model, &[]);
    let prompts = tmp.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"Tell me about the sea.\"}\n{\"prompt\": \"你好吗？\"}\n").unwrap();
    let teacher = ["--model", "tiny", "--base-url", s.url.as_str(), "--max-retries", "0"];

    let sft = tmp.path().join("sft.jsonl");
    let out = rlhf_ok(&[&["data", "distill", "--prompts", prompts.to_str().unwrap(), "--out", sft.to_str().unwrap(), "--max-tokens", "16"][..], &teacher].concat());
    let written: usize = out.split("→ ").nth(1).and_then(|t| t.split_whitespace().next()).unwrap().parse().unwrap();
    assert_eq!(std::fs::read_to_string(&sft).unwrap().lines().count(), written, "{out}");

    let ranked = tmp.path().join("ranked.jsonl");
    let out = rlhf_ok(&[&["data", "rank", "--policy", model.to_str().unwrap(), "--prompts", prompts.to_str().unwrap(), "--out", ranked.to_str().unwrap()][..], &["--k", "2", "--max-new-tokens", "8", "--judge-max-tokens", "24"], &teacher].concat());
    let records = std::fs::read_to_string(&ranked).unwrap().lines().count();
    assert!(out.contains(&format!("{records} ranked")), "{out}");

    let judged = tmp.path().join("judged");
    let b = tmp.path().join("b.jsonl");
    std::fs::write(&b, "{\"prompt\": \"Tell me about the sea.\", \"answer\": \"It is big.\"}\n{\"prompt\": \"你好吗？\", \"answer\": \"很好。\"}\n").unwrap();
    let out = rlhf_ok(&[&["eval", "judge", "--a", model.to_str().unwrap(), "--b", b.to_str().unwrap(), "--prompts", prompts.to_str().unwrap(), "--out", judged.to_str().unwrap()][..], &["--temperature", "1", "--max-new-tokens", "8", "--judge-max-tokens", "24"], &teacher].concat());
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(judged.join("judge.json")).unwrap()).unwrap();
    assert_eq!(summary["pairs"], 2, "{out}");
    let t = &summary["a_vs_b"];
    assert_eq!(t["wins"].as_u64().unwrap() + t["ties"].as_u64().unwrap() + t["losses"].as_u64().unwrap(), 2);
    let health: Value = serde_json::from_str(&ureq::get(&s.url.replace("/v1", "/health")).call().unwrap().into_string().unwrap()).unwrap();
    // 2 answers + 2 rankings + 4 verdicts.
    assert_eq!(health["requests"], 8, "{health}");
}

//! A scripted OpenAI-compatible server on 127.0.0.1 for tests of the teacher jobs: it answers the
//! n-th `POST …/chat/completions` with whatever the script returns and records every request.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// What the server saw: each request's Authorization header and JSON body, in arrival order.
pub type Seen = Arc<Mutex<Vec<(Option<String>, serde_json::Value)>>>;

/// Starts the server on a free port; returns its base URL (`http://127.0.0.1:PORT/v1`) and the log.
/// `reply(n, body)` gives the status and body of the n-th request (from 0).
pub fn scripted_server(reply: impl Fn(usize, &serde_json::Value) -> (u16, String) + Send + 'static) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free local port");
    let url = format!("http://{}/v1", listener.local_addr().expect("bound"));
    let seen: Seen = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let Some((auth, body)) = read_request(&mut stream) else { continue };
            let n = {
                let mut log = log.lock().expect("the log");
                log.push((auth, body.clone()));
                log.len() - 1
            };
            let (code, text) = reply(n, &body);
            let head = format!(
                "HTTP/1.1 {code} Scripted\r\nContent-Type: application/json\r\nRetry-After: 0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                text.len()
            );
            let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(text.as_bytes()));
        }
    });
    (url, seen)
}

/// The Authorization header and JSON body of one request.
fn read_request(stream: &mut std::net::TcpStream) -> Option<(Option<String>, serde_json::Value)> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let (mut len, mut auth) = (0usize, None);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        match name.to_ascii_lowercase().as_str() {
            "content-length" => len = value.trim().parse().ok()?,
            "authorization" => auth = Some(value.trim().to_string()),
            _ => {}
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    Some((auth, serde_json::from_slice(&body).ok()?))
}

/// A chat completion body whose one choice says `text`.
pub fn completion(text: &str) -> String {
    serde_json::json!({
        "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2}
    })
    .to_string()
}

/// The text of a request's last message.
pub fn last_message(body: &serde_json::Value) -> &str {
    body["messages"].as_array().and_then(|m| m.last()).and_then(|m| m["content"].as_str()).unwrap_or("")
}

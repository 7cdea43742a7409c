//! A user's reward function as a long-running subprocess speaking JSON lines: started once, sent one
//! request line per response, answering one line per request, in order.
//!
//! ```text
//! → {"prompt": "...", "response": "...", "record": {...every field of the prompt record}}
//! ← {"reward": 0.5}        (or {"reward": null}: the reward does not apply to this response)
//! ```
//!
//! Each answer must arrive within the timeout (counted from the previous answer). A program that
//! exits, answers with anything else, or stays silent is an error naming the command and the
//! response's prompt record; the program is killed when the run ends either way.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

/// A started reward program.
pub struct Program {
    command: String,
    child: Child,
    /// Batches of request lines go to a writer thread, so a program that stops reading cannot block
    /// the run (the timeout still applies).
    requests: Option<Sender<String>>,
    answers: Receiver<std::io::Result<String>>,
    timeout: Duration,
}

impl Program {
    /// Starts `argv` (program and arguments, no shell) with piped stdin/stdout; its stderr is the run's.
    pub fn start(argv: &[String], timeout: Duration) -> anyhow::Result<Self> {
        let (program, args) = argv.split_first().ok_or_else(|| anyhow!("a program reward needs a command"))?;
        let command = argv.join(" ");
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting the reward program `{command}`"))?;
        let stdin: ChildStdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (requests, pending) = channel::<String>();
        std::thread::spawn(move || {
            let mut stdin = stdin;
            for batch in pending {
                if stdin.write_all(batch.as_bytes()).and_then(|_| stdin.flush()).is_err() {
                    return; // the program is gone; the reader reports it
                }
            }
        });
        let (answered, answers) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let stop = line.is_err();
                if answered.send(line).is_err() || stop {
                    return;
                }
            }
        });
        Ok(Self { command, child, requests: Some(requests), answers, timeout })
    }

    /// One reward (or None) per request; `describe(i)` names request `i`'s prompt record in errors.
    pub fn score(&mut self, requests: &[Value], describe: impl Fn(usize) -> String) -> anyhow::Result<Vec<Option<f64>>> {
        let mut batch = String::new();
        for r in requests {
            batch.push_str(&serde_json::to_string(r).expect("JSON value serialises"));
            batch.push('\n');
        }
        if let Some(tx) = &self.requests {
            // A send error means the writer stopped: the program closed its input or exited.
            let _ = tx.send(batch);
        }
        (0..requests.len())
            .map(|i| {
                let line = match self.answers.recv_timeout(self.timeout) {
                    Ok(Ok(line)) => line,
                    Ok(Err(e)) => bail!("reward program `{}`: reading its answer for {}: {e}", self.command, describe(i)),
                    Err(RecvTimeoutError::Timeout) => {
                        bail!("reward program `{}`: no answer for {} within {:.0} s", self.command, describe(i), self.timeout.as_secs_f64())
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        let status = self.child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                        bail!("reward program `{}` exited ({status}) before answering {}", self.command, describe(i))
                    }
                };
                parse_answer(&line).map_err(|e| anyhow!("reward program `{}`: answer for {}: {e}; it wrote {:?}", self.command, describe(i), clip(&line)))
            })
            .collect()
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        self.requests = None; // closes its stdin: a well-behaved program exits on EOF
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `{"reward": x}` with x a finite number or null.
fn parse_answer(line: &str) -> Result<Option<f64>, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    match v.get("reward") {
        Some(Value::Null) => Ok(None),
        Some(Value::Number(x)) => x.as_f64().filter(|x| x.is_finite()).map(Some).ok_or_else(|| "the reward is not a finite number".to_string()),
        Some(other) => Err(format!("expected {{\"reward\": number or null}}, the reward is {other}")),
        None => Err("expected {\"reward\": number or null}, there is no `reward` field".into()),
    }
}

fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_numbers_or_null() {
        assert_eq!(parse_answer(r#"{"reward": 0.5}"#), Ok(Some(0.5)));
        assert_eq!(parse_answer(r#"{"reward": null, "why": "no answer"}"#), Ok(None));
        assert!(parse_answer(r#"{"reward": "high"}"#).unwrap_err().contains("reward is \"high\""));
        assert!(parse_answer(r#"{"score": 1}"#).unwrap_err().contains("no `reward`"));
        assert!(parse_answer("1.0 thanks").unwrap_err().contains("not JSON"));
    }
}

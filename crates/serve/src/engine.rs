//! The generation engine: one thread owns the model on the device and runs batches of requests.
//!
//! Batching: the oldest waiting request opens a batch and waits at most `max_wait` for company;
//! every request waiting by then joins (oldest first) while the batch has rows left and the longest
//! prompt plus the largest budget fit the context. Requests that arrive while a batch runs join the
//! next one. A choice is answered as soon as it stops (checked every `rows.check_every` tokens), not when
//! the batch's slowest row does; rows whose client has gone are halted.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rlhf_data::Tokenizer;
use rlhf_model::{generate_rows, CausalLm, Progress, RowSampling, RowsConfig};
use rlhf_runtime::{Backend, InferenceTask, Precision};
use tokio::sync::mpsc::UnboundedSender;

use crate::api::{Answer, FinishReason};

/// One request's work: a prompt, one sampling row per choice, and where its answers go.
#[derive(Debug)]
pub struct Job {
    pub prompt: Vec<u32>,
    pub choices: Vec<RowSampling>,
    pub stop: Vec<String>,
    /// Send text deltas as they are produced (besides each choice's final answer).
    pub stream: bool,
    pub events: UnboundedSender<Event>,
    pub arrived: Instant,
}

/// What the engine tells a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New text of a streamed choice.
    Delta { choice: usize, text: String },
    /// A choice finished; its whole text.
    Done { choice: usize, answer: Answer },
    /// Generation failed on the device.
    Failed(String),
}

/// How batches are formed.
#[derive(Debug, Clone)]
pub struct BatchPolicy {
    /// Rows (choices) per batch.
    pub max_batch: usize,
    /// How long the oldest waiting request waits for others before its batch starts.
    pub max_wait: Duration,
}

/// Counts since start-up, shown by `GET /health`.
#[derive(Debug, Default)]
pub struct Stats {
    pub batches: AtomicU64,
    /// Choices generated (a request with `n` = 3 is three rows).
    pub rows: AtomicU64,
    pub generated_tokens: AtomicU64,
}

/// The engine thread's task: load the model, say so on `ready`, then serve jobs until every sender
/// is dropped.
pub struct Engine {
    pub model_dir: PathBuf,
    /// Weights and KV cache in f32 or bf16.
    pub precision: Precision,
    /// Block projections held as codes (`--quant`).
    pub quant: Option<rlhf_runtime::quant::BaseQuant>,
    pub tokenizer: Tokenizer,
    pub rows: RowsConfig,
    pub policy: BatchPolicy,
    pub jobs: Receiver<Job>,
    pub ready: Sender<anyhow::Result<()>>,
    pub stats: Arc<Stats>,
}

impl InferenceTask for Engine {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device) {
        let model = match CausalLm::<B>::from_hf_dir(&self.model_dir, &device).and_then(|m| m.quantized(self.quant)) {
            Ok(m) => m.for_inference(self.precision),
            Err(e) => {
                let _ = self.ready.send(Err(e.into()));
                return;
            }
        };
        let positions = model.config().max_position_embeddings;
        let _ = self.ready.send(Ok(()));
        let mut waiting = VecDeque::new();
        while gather(&self.jobs, &mut waiting, &self.policy) {
            let batch = take_batch(&mut waiting, self.policy.max_batch, positions);
            if !batch.is_empty() {
                self.run_batch(&model, batch, &device);
            }
        }
    }
}

/// Waits for the oldest job's batch window to close or the batch to fill; false once no job can
/// come any more and none waits.
fn gather(jobs: &Receiver<Job>, waiting: &mut VecDeque<Job>, policy: &BatchPolicy) -> bool {
    if waiting.is_empty() {
        match jobs.recv() {
            Ok(job) => waiting.push_back(job),
            Err(_) => return false,
        }
    }
    let deadline = waiting[0].arrived + policy.max_wait;
    while waiting.iter().map(|j| j.choices.len()).sum::<usize>() < policy.max_batch {
        let left = deadline.saturating_duration_since(Instant::now());
        match jobs.try_recv().or_else(|_| if left.is_zero() { Err(RecvTimeoutError::Timeout) } else { jobs.recv_timeout(left) }) {
            Ok(job) => waiting.push_back(job),
            Err(_) => break,
        }
    }
    true
}

/// The oldest jobs that fit one batch together; jobs whose client has gone are dropped.
fn take_batch(waiting: &mut VecDeque<Job>, max_batch: usize, positions: usize) -> Vec<Job> {
    let mut batch: Vec<Job> = vec![];
    let (mut rows, mut longest, mut budget) = (0, 0, 0);
    while let Some(job) = waiting.front() {
        if job.events.is_closed() {
            waiting.pop_front();
            continue;
        }
        let job_budget = job.choices.iter().map(|c| c.max_new_tokens).max().unwrap_or(0);
        let fits = rows + job.choices.len() <= max_batch && longest.max(job.prompt.len()) + budget.max(job_budget) <= positions;
        if !batch.is_empty() && !fits {
            break;
        }
        rows += job.choices.len();
        longest = longest.max(job.prompt.len());
        budget = budget.max(job_budget);
        batch.extend(waiting.pop_front());
    }
    batch
}

/// One choice being generated.
struct Row {
    job: usize,
    choice: usize,
    tokens: Vec<u32>,
    /// Bytes of the text already streamed.
    sent: usize,
    done: bool,
}

impl Engine {
    fn run_batch<B: Backend>(&self, model: &CausalLm<B>, batch: Vec<Job>, device: &B::Device) {
        let mut rows = vec![];
        let (mut prompts, mut sampling) = (vec![], vec![]);
        for (j, job) in batch.iter().enumerate() {
            for (c, s) in job.choices.iter().enumerate() {
                rows.push(Row { job: j, choice: c, tokens: vec![], sent: 0, done: false });
                prompts.push(job.prompt.clone());
                sampling.push(s.clone());
            }
        }
        let result = generate_rows(model, &prompts, &sampling, &self.rows, device, |p| {
            self.advance(&batch, &mut rows, p)
        });
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.rows.fetch_add(rows.len() as u64, Ordering::Relaxed);
        self.stats.generated_tokens.fetch_add(rows.iter().map(|r| r.tokens.len() as u64).sum(), Ordering::Relaxed);
        if let Err(e) = result {
            for job in &batch {
                let _ = job.events.send(Event::Failed(e.to_string()));
            }
        }
    }

    /// Takes in one look at the batch: sends new text and finished choices, returns rows to halt.
    fn advance(&self, batch: &[Job], rows: &mut [Row], progress: &Progress) -> Vec<usize> {
        let mut halt = vec![];
        for (r, row) in rows.iter_mut().enumerate() {
            if row.done {
                continue;
            }
            let job = &batch[row.job];
            if job.events.is_closed() {
                row.done = true;
                halt.push(r);
                continue;
            }
            row.tokens.extend(&progress.new_tokens[r]);
            let mut text = match self.tokenizer.decode(&row.tokens, true) {
                Ok(t) => t,
                Err(e) => {
                    let _ = job.events.send(Event::Failed(format!("decoding generated tokens: {e}")));
                    row.done = true;
                    halt.push(r);
                    continue;
                }
            };
            let finish = if let Some(cut) = job.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                text.truncate(cut);
                halt.push(r);
                Some(FinishReason::Stop)
            } else if progress.stopped[r] {
                let stopped_on_token = row.tokens.last().is_some_and(|t| self.rows.stop_ids.contains(t));
                Some(if stopped_on_token { FinishReason::Stop } else { FinishReason::Length })
            } else {
                None
            };
            if job.stream {
                let end = if finish.is_some() { text.len() } else { streamable(&text, &job.stop) };
                if end > row.sent {
                    let _ = job.events.send(Event::Delta { choice: row.choice, text: text[row.sent..end].to_string() });
                    row.sent = end;
                }
            }
            if let Some(finish_reason) = finish {
                row.done = true;
                let answer = Answer { text, finish_reason, completion_tokens: row.tokens.len() };
                let _ = job.events.send(Event::Done { choice: row.choice, answer });
            }
        }
        halt
    }
}

/// How much of a running choice's text can be streamed: everything but an unfinished character
/// (decoded as U+FFFD) and an ending that may still grow into a stop string.
fn streamable(text: &str, stop: &[String]) -> usize {
    let whole = text.trim_end_matches('\u{FFFD}').len();
    let mut end = whole;
    for s in stop {
        // The longest proper prefix of `s` that the text ends with.
        let held = (1..s.len()).rev().filter(|&k| s.is_char_boundary(k)).find(|&k| text[..whole].ends_with(&s[..k]));
        end = end.min(whole - held.unwrap_or(0));
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_holds_back_a_possible_stop_string_and_broken_characters() {
        let stop = vec!["\nUser:".to_string()];
        assert_eq!(streamable("Hello\nUs", &stop), "Hello".len());
        assert_eq!(streamable("Hello\nUx", &stop), "Hello\nUx".len());
        assert_eq!(streamable("Hi \u{FFFD}", &[]), "Hi ".len());
        assert_eq!(streamable("abc", &[]), 3);
    }

    fn job(prompt_len: usize, n: usize, budget: usize) -> (Job, tokio::sync::mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let row = RowSampling { max_new_tokens: budget, temperature: 0.0, top_p: None, seed: 0 };
        (Job { prompt: vec![1; prompt_len], choices: vec![row; n], stop: vec![], stream: false, events: tx, arrived: Instant::now() }, rx)
    }

    #[test]
    fn batches_take_the_oldest_jobs_that_fit_rows_and_context() {
        let (a, _ra) = job(10, 2, 10);
        let (b, _rb) = job(10, 2, 10);
        let (c, _rc) = job(10, 1, 10);
        let (gone, rgone) = job(10, 1, 10);
        drop(rgone);
        let mut waiting: VecDeque<Job> = [gone, a, b, c].into();
        // 3 rows per batch: the departed job is dropped, a (2 rows) fits, b (2 more) does not.
        let first = take_batch(&mut waiting, 3, 64);
        assert_eq!(first.iter().map(|j| j.choices.len()).collect::<Vec<_>>(), vec![2]);
        assert_eq!(waiting.len(), 2);
        // A job whose prompt + budget would overflow the context together with b waits its turn.
        let (long, _rl) = job(10, 1, 60);
        waiting.push_front(long);
        let second = take_batch(&mut waiting, 8, 64);
        assert_eq!(second.len(), 1);
        assert_eq!(take_batch(&mut waiting, 8, 64).len(), 2);
    }
}

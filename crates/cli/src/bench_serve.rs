//! `rlhf bench serve`: requests/s and generated tokens/s of `rlhf serve` under 1, 8, 32 … concurrent
//! clients. One client sending one request after another is sequential generation, the baseline.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use clap::Args;
use rlhf_serve::ServeProcess;
use rlhf_teacher::{ChatMessage, ChatRequest, Client, ClientConfig};

#[derive(Debug, Clone, Args)]
pub struct ServeBench {
    /// A model folder with a tokenizer (e.g. a pipeline's `ppo/final`).
    #[arg(long)]
    model: PathBuf,
    /// The server's `--device` and `--precision`.
    #[command(flatten)]
    runtime: crate::InferenceRuntime,
    /// Concurrent clients, one measurement each.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    clients: Vec<usize>,
    /// Requests per measurement (at least one per client).
    #[arg(long, default_value_t = 64)]
    requests: usize,
    /// `max_tokens` of every request (sampled at temperature 1, so most run to it).
    #[arg(long, default_value_t = 64)]
    max_tokens: u32,
    /// The server's batch size (`rlhf serve --max-batch`).
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
}

fn request(i: usize, max_tokens: u32) -> ChatRequest {
    let topics = ["the sea", "a city at night", "how bread is made", "a long train journey", "秋天的树叶", "learning to swim"];
    ChatRequest {
        messages: vec![ChatMessage::user(format!("Write a few sentences about {} (request {i}).", topics[i % topics.len()]))],
        temperature: Some(1.0),
        max_tokens: Some(max_tokens),
        seed: Some(i as u64),
        ..Default::default()
    }
}

pub fn run(args: ServeBench) -> anyhow::Result<()> {
    let (model, device, max_batch, precision) = (args.model.display().to_string(), args.runtime.device.to_string(), args.max_batch.to_string(), args.runtime.precision.to_string());
    let server = ServeProcess::start(
        &std::env::current_exe()?,
        &["--model", &model, "--served-model-name", "bench", "--device", &device, "--precision", &precision, "--max-batch", &max_batch],
    )?;
    let client = Client::new(&ClientConfig { base_url: Some(server.url.clone()), max_retries: 0, ..ClientConfig::for_model("bench") })?;
    client.chat(&request(0, args.max_tokens))?; // warm-up
    println!("serve: {}, {} requests of ≤{} tokens per row, server batch ≤{}, {} {}", args.model.display(), args.requests, args.max_tokens, args.max_batch, args.runtime.device, args.runtime.precision);
    println!("{:>8} {:>10} {:>10} {:>12} {:>12} {:>12}", "clients", "wall s", "req/s", "tokens/s", "latency p50", "latency p95");
    let mut sequential = None;
    for &clients in &args.clients {
        let total = args.requests.max(clients);
        let next = AtomicUsize::new(0);
        let done: Mutex<Vec<(f64, u64)>> = Mutex::new(Vec::with_capacity(total));
        let failures = AtomicUsize::new(0);
        let start = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..clients {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let sent = Instant::now();
                    match client.chat(&request(i, args.max_tokens)) {
                        Ok(r) => {
                            let tokens = r.usage.map_or(0, |u| u.completion_tokens);
                            done.lock().expect("no panics").push((sent.elapsed().as_secs_f64(), tokens));
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let wall = start.elapsed().as_secs_f64();
        anyhow::ensure!(failures.load(Ordering::Relaxed) == 0, "{} request(s) failed", failures.load(Ordering::Relaxed));
        let mut done = done.into_inner().expect("no panics");
        let tokens: u64 = done.iter().map(|d| d.1).sum();
        done.sort_by(|a, b| a.0.total_cmp(&b.0));
        let pct = |p: f64| done[((done.len() - 1) as f64 * p).round() as usize].0;
        let rate = tokens as f64 / wall;
        let speedup = sequential.map_or(String::new(), |s: f64| format!("  ({:.2}× sequential)", rate / s));
        sequential.get_or_insert(rate);
        println!("{clients:>8} {wall:>10.2} {:>10.2} {rate:>12.0} {:>11.3}s {:>11.3}s{speedup}", total as f64 / wall, pct(0.5), pct(0.95));
    }
    Ok(())
}

//! `rlhf serve`: an OpenAI-compatible chat server for any model folder we load, so a model trained
//! here can be the teacher or judge of the data tools, or talk to any OpenAI client.
//!
//! The HTTP side (axum on tokio) checks requests and renders the chat template; one engine thread
//! owns the model on the device and runs requests in shared batches (see [`engine`]).

pub mod api;
pub mod engine;
mod http;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use rlhf_data::{BuiltinTemplate, ChatFormat, Tokenizer};
use rlhf_model::RowsConfig;
use rlhf_runtime::{dispatch, Inference, Runtime};

pub use engine::BatchPolicy;

/// Everything `rlhf serve` is told.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub model_dir: PathBuf,
    /// The name clients send as `model` (default: the folder's name).
    pub model_name: Option<String>,
    pub address: SocketAddr,
    /// Device, and f32 or bf16 (weights and KV cache stored in bf16).
    pub runtime: Runtime,
    /// Block projections held as q8 / q4 / nf4 codes (`--quant`).
    pub quant: Option<rlhf_runtime::quant::BaseQuant>,
    pub api_key: Option<String>,
    pub template: Option<BuiltinTemplate>,
    pub policy: BatchPolicy,
    /// Tokens between looks at a running batch (finished rows answered, text streamed; one sync each).
    pub check_every: usize,
    pub default_max_tokens: usize,
    pub max_body_bytes: usize,
}

/// Loads the model, listens, prints `listening on http://ADDR/v1` (ADDR with the real port when
/// asked for port 0), and serves until Ctrl-C / SIGTERM.
pub fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    let config = rlhf_model::TransformerConfig::from_hf_dir(&opts.model_dir)?;
    let tokenizer = Tokenizer::from_dir(&opts.model_dir)?;
    let format = ChatFormat::resolve(&tokenizer, opts.template)?;
    let stop_ids = format.stop_ids_and(&tokenizer, &config.eos_token_ids);
    let pad_id = tokenizer.pad_id_for(config.pad_token_id);
    let model = match &opts.model_name {
        Some(name) => name.clone(),
        None => opts.model_dir.canonicalize().unwrap_or(opts.model_dir.clone()).file_name().map_or("model".into(), |n| n.to_string_lossy().into_owned()),
    };
    let limits = api::Limits {
        model: model.clone(),
        positions: config.max_position_embeddings,
        default_max_tokens: opts.default_max_tokens,
        max_n: opts.policy.max_batch,
    };

    let (jobs, queue) = std::sync::mpsc::channel();
    let (ready, loaded) = std::sync::mpsc::channel();
    let stats = Arc::new(engine::Stats::default());
    let engine = engine::Engine {
        model_dir: opts.model_dir.clone(),
        precision: opts.runtime.precision,
        quant: opts.quant,
        tokenizer: tokenizer.clone(),
        rows: RowsConfig { stop_ids, pad_id, check_every: opts.check_every },
        policy: opts.policy.clone(),
        jobs: queue,
        ready,
        stats: stats.clone(),
    };
    let engine_runtime = opts.runtime;
    let engine_thread = std::thread::Builder::new().name("rlhf-engine".into()).spawn(move || dispatch(engine_runtime, Inference(engine)))?;
    if let Ok(loading) = loaded.recv() {
        loading?;
    } else {
        // The engine ended before loading: the device was refused (no CUDA build, no GPU, no bf16).
        engine_thread.join().map_err(|_| anyhow!("the engine thread panicked"))??;
        return Err(anyhow!("the engine thread ended while loading {}", opts.model_dir.display()));
    }

    let server = Arc::new(http::Server::new(limits, tokenizer, format, opts.api_key.clone(), jobs, stats));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(opts.address).await.with_context(|| format!("listening on {}", opts.address))?;
        let address = listener.local_addr()?;
        let quant = opts.quant.map_or(String::new(), |q| format!(", block projections as {q} codes"));
        println!("rlhf serve: listening on http://{address}/v1 (model \"{model}\", {} positions, device {:?}, {}{quant})", config.max_position_embeddings, opts.runtime.device, opts.runtime.precision);
        use std::io::Write;
        std::io::stdout().flush().ok();
        axum::serve(listener, http::router(server, opts.max_body_bytes)).with_graceful_shutdown(shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    // Handlers (and with them the job sender) are gone: the engine finishes its batch and ends.
    drop(runtime);
    engine_thread.join().map_err(|_| anyhow!("the engine thread panicked"))??;
    Ok(())
}

/// A running `rlhf serve` child process (tests, `rlhf bench serve`), killed when dropped.
pub struct ServeProcess {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT/v1`
    pub url: String,
}

impl ServeProcess {
    /// Starts `EXE serve --port 0 ARGS…` and waits until it says where it listens.
    pub fn start(exe: &std::path::Path, args: &[&str]) -> anyhow::Result<Self> {
        use std::io::BufRead;
        let mut child = std::process::Command::new(exe)
            .args(["serve", "--port", "0"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        // Owned before reading, so a failed start still kills the child.
        let mut process = Self { child, url: String::new() };
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        process.url = line.split_whitespace().find(|w| w.starts_with("http://")).with_context(|| format!("the server did not start: {line:?}"))?.to_string();
        Ok(process)
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => return interrupt.await.unwrap_or(()),
        };
        tokio::select! {
            _ = interrupt => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    interrupt.await.unwrap_or(());
}

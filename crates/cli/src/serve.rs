//! `rlhf serve --model DIR`: an OpenAI-compatible chat server (see `rlhf_serve`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use rlhf_serve::{BatchPolicy, ServeOptions};

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// A Hugging Face model folder (e.g. a pipeline's `ppo/final`).
    #[arg(long)]
    pub model: PathBuf,
    /// The name clients send as `model` (default: the folder's name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// 0 picks a free port (printed at start-up).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    #[command(flatten)]
    pub runtime: crate::InferenceRuntime,
    /// Require `Authorization: Bearer KEY` on /v1 routes.
    #[arg(long, env = "RLHF_SERVE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// A built-in chat format, for tokenizers without a chat template.
    #[arg(long, value_enum)]
    pub template: Option<rlhf_data::BuiltinTemplate>,
    /// Rows (choices) generated together; also the largest `n` a request may ask for.
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// How long the oldest waiting request waits for others before its batch starts, in ms.
    #[arg(long, default_value_t = 10)]
    pub max_wait_ms: u64,
    /// Tokens between looks at a running batch (answers finished rows, streams text; one sync each).
    #[arg(long, default_value_t = 8)]
    pub check_every: usize,
    /// `max_tokens` of requests that give none (cut to what the context leaves).
    #[arg(long, default_value_t = 256)]
    pub default_max_tokens: usize,
    /// Larger request bodies are refused with 413.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
}

pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.max_batch >= 1, "--max-batch must be at least 1");
    rlhf_serve::serve(ServeOptions {
        model_dir: args.model.clone(),
        model_name: args.served_model_name.clone(),
        address: SocketAddr::new(args.host, args.port),
        runtime: args.runtime.into(),
        quant: args.runtime.quant,
        api_key: args.api_key.clone(),
        template: args.template,
        policy: BatchPolicy { max_batch: args.max_batch, max_wait: Duration::from_millis(args.max_wait_ms) },
        check_every: args.check_every.max(1),
        default_max_tokens: args.default_max_tokens,
        max_body_bytes: args.max_body_bytes,
    })
}

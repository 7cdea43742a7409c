//! The `rlhf` command line: the whole pipeline, evaluation, reports, chat, model inspection,
//! generation, data tools and benchmarks.

mod answers;
mod bench;
mod bench_serve;
mod chat;
mod data;
pub mod eval;
mod generate;
mod judge;
mod model;
pub mod pipeline;
mod stages;
pub mod report;
mod reward;
mod sections;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use rlhf_runtime::{DeviceSpec, Precision, Runtime};

/// `--device` and `--precision` of the commands that only run models (generation, chat, serving,
/// scoring, logits).
#[derive(Debug, Clone, Copy, Args)]
pub struct InferenceRuntime {
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// f32, or bf16: every weight matrix and the KV cache stored in bf16, matmuls in bf16 (norms,
    /// softmax and sampling in f32).
    #[arg(long, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// q8, q4 or nf4: every block projection's weight held as block-quantized codes (read straight
    /// from the codes on the CPU), the LM head as q8 codes; embeddings and norms stay in `--precision`.
    #[arg(long)]
    pub quant: Option<rlhf_runtime::quant::BaseQuant>,
}

impl From<InferenceRuntime> for Runtime {
    fn from(r: InferenceRuntime) -> Self {
        Runtime { device: r.device, precision: r.precision }
    }
}

#[derive(Debug, Parser)]
#[command(name = "rlhf", version, about = "Three-stage RLHF (SFT → reward model → PPO-ptx) on burn")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run stages from one config.
    Pipeline {
        #[command(subcommand)]
        command: PipelineCommand,
    },
    /// Each stage's predicted peak memory, from config.json files alone (no weights read).
    Plan(pipeline::PlanArgs),
    /// Evaluate a run's SFT and PPO policies on held-out prompts (writes eval.json).
    Eval(eval::EvalCli),
    /// Write a run's report.md and plots.
    Report(report::ReportArgs),
    /// Talk to a model through its chat template.
    Chat(chat::ChatArgs),
    /// Serve a model folder over an OpenAI-compatible HTTP API (batched, streaming).
    Serve(serve::ServeArgs),
    /// Inspect or run a Hugging Face model folder.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Generate text from a model folder (batched, KV-cached).
    Generate(generate::GenerateArgs),
    /// Check, convert or generate data files.
    Data {
        #[command(subcommand)]
        command: data::DataCommand,
    },
    /// Inspect a reward model.
    Reward {
        #[command(subcommand)]
        command: RewardCommand,
    },
    /// Throughput benchmarks (tokens/s).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PipelineCommand {
    /// data → pretrain → SFT → reward model → PPO-ptx → eval → report, skipping finished stages.
    Run(pipeline::PipelineArgs),
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Architecture, parameter count, dtype, vocabulary and context length.
    Info {
        #[arg(long)]
        model: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Logits for int64 `input_ids` / `attention_mask` [B, T] read from a safetensors file.
    Logits {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
        #[command(flatten)]
        runtime: InferenceRuntime,
    },
}

#[derive(Debug, Subcommand)]
enum RewardCommand {
    /// Per-record scores of a rankings or SFT file (and accuracy for rankings), one JSON line each.
    Score(reward::ScoreArgs),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Generation tokens/s of a randomly initialised LLaMA.
    Generate(bench::GenerateBench),
    /// SFT training tokens/s (forward + backward + AdamW step) of a randomly initialised LLaMA.
    Sft(bench::SftBench),
    /// One PPO-ptx iteration's time split into generation / scoring / training.
    Ppo(bench::PpoBench),
    /// Generation of n responses per prompt (one prefill per prompt vs n independent rows), then GRPO
    /// iterations split into generation / scoring / training.
    Grpo(bench::GrpoBench),
    /// `rlhf serve` under concurrent clients: requests/s and generated tokens/s.
    Serve(bench_serve::ServeBench),
}

/// Runs a command; the exit code is non-zero on failure, and 2 when records were skipped.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let done = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
    match cli.command {
        Command::Pipeline { command: PipelineCommand::Run(args) } => done(pipeline::run(args)),
        Command::Plan(args) => done(pipeline::plan(&args)),
        Command::Eval(args) => done(eval::run(&args)),
        Command::Report(args) => done(report::run(&args)),
        Command::Chat(args) => done(chat::run(&args)),
        Command::Serve(args) => done(serve::run(&args)),
        Command::Data { command } => data::run(command),
        Command::Reward { command: RewardCommand::Score(args) } => done(reward::score(&args)),
        Command::Model { command: ModelCommand::Info { model, json } } => done(model::info(&model, json)),
        Command::Model { command: ModelCommand::Logits { model, input, output, runtime } } => {
            done(model::logits(&model, &input, &output, runtime.into(), runtime.quant))
        }
        Command::Generate(args) => done(generate::run(args)),
        Command::Bench { command: BenchCommand::Generate(args) } => done(bench::run_generate(args)),
        Command::Bench { command: BenchCommand::Sft(args) } => done(bench::run_sft(args)),
        Command::Bench { command: BenchCommand::Ppo(args) } => done(bench::run_ppo(args)),
        Command::Bench { command: BenchCommand::Grpo(args) } => done(bench::run_grpo(args)),
        Command::Bench { command: BenchCommand::Serve(args) } => done(bench_serve::run(args)),
    }
}

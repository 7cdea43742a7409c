//! `rlhf-sft --config FILE [--set k=v]… --out DIR [--device D] [--resume]`

use std::path::PathBuf;
use std::process::ExitCode;

use burn::tensor::backend::AutodiffBackend;
use clap::Parser;
use rlhf_model::backend::{dispatch_train, DeviceSpec, TrainTask};

#[derive(Debug, Parser)]
#[command(name = "rlhf-sft", version, about = "Stage 1: supervised fine-tuning (or pretraining)")]
struct Args {
    #[arg(long)]
    config: PathBuf,
    /// Override a config value, e.g. `--set train.lr=1e-4` (repeatable).
    #[arg(long = "set")]
    sets: Vec<String>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Continue from the newest complete checkpoint in OUT.
    #[arg(long)]
    resume: bool,
}

struct Task {
    cfg: rlhf_sft::SftConfig,
    args: Args,
}

impl TrainTask for Task {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> anyhow::Result<()> {
        rlhf_sft::run::<B>(&self.cfg, &self.args.out, self.args.resume, &device)?;
        println!("sft: final model in {}", self.args.out.join("final").display());
        Ok(())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = rlhf_train::config::load_config::<rlhf_sft::SftConfig>(Some(&args.config), &args.sets)
        .map_err(anyhow::Error::from)
        .and_then(|cfg| dispatch_train(args.device, Task { cfg, args })?);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! `rlhf-reward --config FILE [--set k=v]… --out DIR [--device D] [--resume]`

use std::path::PathBuf;
use std::process::ExitCode;

use burn::tensor::backend::AutodiffBackend;
use clap::Parser;
use rlhf_model::backend::{dispatch_train, DeviceSpec, TrainTask};

#[derive(Debug, Parser)]
#[command(name = "rlhf-reward", version, about = "Stage 2: reward model from K-way rankings")]
struct Args {
    #[arg(long)]
    config: PathBuf,
    /// Override a config value, e.g. `--set train.lr=1e-5` (repeatable).
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
    cfg: rlhf_reward::RewardConfig,
    args: Args,
}

impl TrainTask for Task {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> anyhow::Result<()> {
        rlhf_reward::run::<B>(&self.cfg, &self.args.out, self.args.resume, &device)?;
        Ok(())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = rlhf_train::config::load_config::<rlhf_reward::RewardConfig>(Some(&args.config), &args.sets)
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

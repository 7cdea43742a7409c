//! `rlhf-reward --config FILE [--set k=v]… --out DIR [--device D] [--resume]`

use std::process::ExitCode;

use burn::tensor::backend::AutodiffBackend;
use clap::Parser;
use rlhf_model::backend::TrainTask;
use rlhf_train::cli::{stage_main, StageArgs};

#[derive(Debug, Parser)]
#[command(name = "rlhf-reward", version, about = "Stage 2: reward model from K-way rankings")]
struct Cli {
    #[command(flatten)]
    args: StageArgs,
}

struct Task {
    cfg: rlhf_reward::RewardConfig,
    args: StageArgs,
}

impl TrainTask for Task {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> anyhow::Result<()> {
        rlhf_reward::run::<B>(&self.cfg, &self.args.out, self.args.resume, &device)?;
        Ok(())
    }
}

fn main() -> ExitCode {
    stage_main(Cli::parse().args, |cfg, args| Task { cfg, args })
}

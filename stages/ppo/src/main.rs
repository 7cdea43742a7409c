//! `rlhf-ppo --config FILE [--set k=v]… --out DIR [--device D] [--resume]`

use std::process::ExitCode;

use burn::tensor::backend::AutodiffBackend;
use clap::Parser;
use rlhf_model::backend::TrainTask;
use rlhf_train::cli::{stage_main, StageArgs};

#[derive(Debug, Parser)]
#[command(name = "rlhf-ppo", version, about = "Stage 3: PPO-ptx against the reward model")]
struct Cli {
    #[command(flatten)]
    args: StageArgs,
}

struct Task {
    cfg: rlhf_ppo::PpoConfig,
    args: StageArgs,
}

impl TrainTask for Task {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> anyhow::Result<()> {
        rlhf_ppo::run::<B>(&self.cfg, &self.args.out, self.args.resume, &device)?;
        Ok(())
    }
}

fn main() -> ExitCode {
    stage_main(Cli::parse().args, |cfg, args| Task { cfg, args })
}

//! `rlhf-sft --config FILE [--set k=v]… --out DIR [--device D] [--resume]`

use std::process::ExitCode;

use burn::tensor::backend::AutodiffBackend;
use clap::Parser;
use rlhf_model::backend::TrainTask;
use rlhf_train::cli::{stage_main, StageArgs};

#[derive(Debug, Parser)]
#[command(name = "rlhf-sft", version, about = "Stage 1: supervised fine-tuning (or pretraining)")]
struct Cli {
    #[command(flatten)]
    args: StageArgs,
}

struct Task {
    cfg: rlhf_sft::SftConfig,
    args: StageArgs,
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
    stage_main(Cli::parse().args, |cfg, args| Task { cfg, args })
}

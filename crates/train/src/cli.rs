//! The command line every stage binary shares:
//! `rlhf-<stage> --config FILE [--set k=v]… --out DIR [--device D] [--resume]`.

use std::path::PathBuf;
use std::process::ExitCode;

use rlhf_model::backend::{dispatch_train, DeviceSpec, TrainTask};
use serde::de::DeserializeOwned;

#[derive(Debug, Clone, clap::Args)]
pub struct StageArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// Override a config value, e.g. `--set train.lr=1e-4` (repeatable).
    #[arg(long = "set")]
    pub sets: Vec<String>,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Continue from the newest complete checkpoint in OUT.
    #[arg(long)]
    pub resume: bool,
}

/// Loads the stage's config, runs the task built from it on the chosen device, and turns the result
/// into an exit code (errors printed with their whole context chain).
pub fn stage_main<C, T>(args: StageArgs, task: impl FnOnce(C, StageArgs) -> T) -> ExitCode
where
    C: DeserializeOwned,
    T: TrainTask<Output = anyhow::Result<()>>,
{
    let result = crate::config::load_config::<C>(Some(&args.config), &args.sets)
        .map_err(anyhow::Error::from)
        .and_then(|cfg| dispatch_train(args.device, task(cfg, args.clone()))?);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

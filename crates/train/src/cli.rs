//! The command line every stage binary shares:
//! `rlhf-<stage> --config FILE [--set k=v]… --out DIR [--device D] [--precision P] [--resume] [--force]`.

use std::path::PathBuf;
use std::process::ExitCode;

use rlhf_runtime::{dispatch, DeviceSpec, Precision, Runtime, Task};

use crate::memory::{available_bytes, MemoryPlan};
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
    /// f32 or bf16 (mixed precision); the same as `--set precision=P`.
    #[arg(long)]
    pub precision: Option<Precision>,
    /// Continue from the newest complete checkpoint in OUT.
    #[arg(long)]
    pub resume: bool,
    /// Run even when the memory plan predicts more than the device has free.
    #[arg(long)]
    pub force: bool,
}

/// What the command line needs to know of a stage's config.
pub trait StageConfig: DeserializeOwned {
    fn precision(&self) -> Precision;
}

/// Loads the stage's config, prints its memory plan and refuses one the device cannot hold (before
/// anything is loaded; `--force` overrides), runs the task built from it on the chosen device, and
/// turns the result into an exit code (errors printed with their whole context chain).
pub fn stage_main<C, T>(args: StageArgs, plan: impl FnOnce(&C) -> anyhow::Result<MemoryPlan>, task: impl FnOnce(C, StageArgs) -> T) -> ExitCode
where
    C: StageConfig,
    T: Task<Output = anyhow::Result<()>>,
{
    let mut sets = args.sets.clone();
    sets.extend(args.precision.map(|p| format!("precision={p}")));
    let result = crate::config::load_config::<C>(Some(&args.config), &sets).map_err(anyhow::Error::from).and_then(|cfg| {
        let plan = plan(&cfg)?;
        eprint!("{}", plan.table());
        plan.check(args.device, available_bytes(args.device), args.force)?;
        let runtime = Runtime { device: args.device, precision: cfg.precision() };
        dispatch(runtime, task(cfg, args.clone()))?
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The whole `main` of a stage binary: its clap parser (`StageArgs`), the config type, the stage
/// crate's `memory_plan(&cfg, shape_of)` checked first, and its `run::<B>(&cfg, out, resume,
/// &device)`, dispatched on the autodiff backend `--device` picks.
///
/// ```ignore
/// rlhf_train::stage_binary!("rlhf-ppo", "Stage 3: PPO-ptx", rlhf_ppo::PpoConfig, rlhf_ppo);
/// ```
#[macro_export]
macro_rules! stage_binary {
    ($name:literal, $about:literal, $config:ty, $stage:ident) => {
        #[derive(Debug, clap::Parser)]
        #[command(name = $name, version, about = $about)]
        struct Cli {
            #[command(flatten)]
            args: $crate::cli::StageArgs,
        }

        struct Task {
            cfg: $config,
            args: $crate::cli::StageArgs,
        }

        impl $crate::runtime::Task for Task {
            type Output = anyhow::Result<()>;
            fn run<B: rlhf_runtime::AutodiffBackend>(self, device: B::Device) -> anyhow::Result<()> {
                $stage::run::<B>(&self.cfg, &self.args.out, self.args.resume, &device)?;
                Ok(())
            }
        }

        fn main() -> std::process::ExitCode {
            $crate::cli::stage_main(
                <Cli as clap::Parser>::parse().args,
                |cfg| $stage::memory_plan(cfg, &$crate::memory::shape_from_dir),
                |cfg, args| Task { cfg, args },
            )
        }
    };
}

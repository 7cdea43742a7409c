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
    let session = match rlhf_dist::init() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut sets = args.sets.clone();
    sets.extend(args.precision.map(|p| format!("precision={p}")));
    let result = crate::config::load_config::<C>(Some(&args.config), &sets).map_err(anyhow::Error::from).and_then(|cfg| {
        let device = rank_device(args.device, rlhf_dist::world())?;
        let plan = plan(&cfg)?;
        if rlhf_dist::world().is_writer() {
            eprint!("{}", plan.table());
        }
        plan.check(device, available_bytes(device), args.force)?;
        let runtime = Runtime { device, precision: cfg.precision() };
        dispatch(runtime, task(cfg, args.clone()))?
    });
    finish(session, result)
}

/// The exit code of a finished command. A distributed run that failed on this rank ends the whole
/// job (MPI_Abort): the other ranks would otherwise wait in their next collective.
pub fn finish(session: rlhf_dist::Session, result: anyhow::Result<()>) -> ExitCode {
    let world = rlhf_dist::world();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if world.is_distributed() => {
            rlhf_dist::restore_stderr();
            eprintln!("error: rank {} of {}: {e:#}", world.rank(), world.size());
            session.abort(1)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The device a rank trains on: under a multi-process launch `--device cuda` means
/// `cuda:LOCAL_RANK` (one GPU per process); naming another GPU there is an error.
pub fn rank_device(device: DeviceSpec, world: &rlhf_dist::World) -> anyhow::Result<DeviceSpec> {
    match device {
        DeviceSpec::Cuda(0) if world.is_distributed() => Ok(DeviceSpec::Cuda(world.local_rank())),
        DeviceSpec::Cuda(i) if world.is_distributed() => {
            anyhow::bail!("--device cuda:{i}: under a multi-process launch each rank takes cuda:LOCAL_RANK (here {}); pass --device cuda", world.local_rank())
        }
        d => Ok(d),
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

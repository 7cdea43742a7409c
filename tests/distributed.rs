//! Data parallelism over MPI, two processes on this machine (built with `--features mpi`; Open MPI's
//! `mpirun` on the PATH). Two ranks with micro-batch m end with the weights one process gets from
//! accumulating the same two micro-batches — bit for bit — for SFT and for the reward model; a rank
//! killed mid-run ends the job with a non-zero exit and nothing half-written, and `--resume` under
//! the same world size ends where an uninterrupted run does.
//!
//! Both sides run with one thread per process, so the comparison is of the data-parallel sum alone
//! (a different thread count may split a reduction differently).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::fixture;

/// A stage binary built beside `rlhf` (the workspace's test build builds every stage's binary).
fn stage_binary(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_rlhf")).with_file_name(name);
    assert!(path.exists(), "{} is missing: build the stage binaries first (`cargo build --release --workspace --features mpi --bins`; `.ci/run` does)", path.display());
    path
}

fn mpirun(ranks: usize) -> Command {
    let mut c = Command::new("mpirun");
    // As root (CI), Open MPI wants both confirmations; two ranks on two cores, unbound.
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    c.args(["-np", &ranks.to_string(), "--oversubscribe", "--bind-to", "none", "-x", "RAYON_NUM_THREADS=1", "-x", "RLHF_DIST_TIMEOUT"]);
    c.env("RLHF_DIST_TIMEOUT", "60");
    c
}

fn run_stage(binary: &str, config: &Path, out: &Path, ranks: Option<usize>, extra: &[&str]) -> Output {
    let mut c = match ranks {
        Some(n) => {
            let mut c = mpirun(n);
            c.arg(stage_binary(binary));
            c
        }
        None => {
            let mut c = Command::new(stage_binary(binary));
            c.env("RAYON_NUM_THREADS", "1");
            c
        }
    };
    c.args(["--config", config.to_str().unwrap(), "--out", out.to_str().unwrap()]).args(extra);
    c.output().unwrap()
}

fn ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what} failed ({}):\n{}\n{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The data every test trains on: the demo's SFT demonstrations and rankings.
fn demo(dir: &Path) {
    let sizes = rlhf_data::demo::DemoSizes { pretrain_docs: 10, sft: 80, rankings: 80, prompts: 4 };
    rlhf_data::demo::write_demo(dir, 0, sizes).unwrap();
}

fn sft_config(dir: &Path, steps: usize, save_every: usize) -> PathBuf {
    let path = dir.join(format!("sft-{steps}.toml"));
    let text = format!(
        "seed = 3\n[model]\nfrom = \"{}\"\n[data]\ntrain = \"{}\"\nmax_len = 64\neval_fraction = 0.1\n\
         [train]\nsteps = {steps}\nbatch_size = 8\nmicro_batch_size = 4\nlr = 3e-3\nwarmup_steps = 2\neval_every = 2\nsave_every = {save_every}\n",
        fixture("hf-tiny-llama").display(),
        dir.join("demo/sft.jsonl").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Two ranks each with one micro-batch of 4 == one process with two micro-batches of 4: the same
/// metrics and the same final weights, bit for bit; only rank 0 wrote the run's files.
#[test]
fn two_ranks_train_sft_to_the_weights_of_one_process_accumulating_both_micro_batches() {
    let tmp = tempfile::tempdir().unwrap();
    demo(&tmp.path().join("demo"));
    let config = sft_config(tmp.path(), 4, 2);
    let (single, dp) = (tmp.path().join("single"), tmp.path().join("dp"));
    ok(&run_stage("rlhf-sft", &config, &single, None, &[]), "one process");
    let o = run_stage("rlhf-sft", &config, &dp, Some(2), &[]);
    ok(&o, "mpirun -np 2");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("2 ranks"), "the run says it is data-parallel:\n{err}");
    assert_eq!(read(&single.join("final/model.safetensors")), read(&dp.join("final/model.safetensors")));
    let metrics = |run: &Path| {
        rlhf_train::metrics::read_metrics(&run.join("metrics.jsonl"))
            .unwrap()
            .into_iter()
            .map(|mut r| {
                let row = r.as_object_mut().unwrap();
                row.retain(|k, _| k != "tokens_per_s" && !k.starts_with("dp/"));
                r
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(metrics(&single), metrics(&dp), "loss, grad_norm and eval metrics are the same numbers");
    // Rank 0 alone wrote: one metrics line per step and eval, no temporary files left behind.
    assert_eq!(metrics(&dp).len(), metrics(&single).len());
    assert!(leftovers(&dp).is_empty(), "{:?}", leftovers(&dp));
}

#[test]
fn two_ranks_train_the_reward_model_to_the_weights_of_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    demo(&tmp.path().join("demo"));
    let config = tmp.path().join("rm.toml");
    let text = format!(
        "seed = 2\nreference = \"{}\"\n[model]\nfrom = \"{}\"\n[data]\ntrain = \"{}\"\neval_fraction = 0.2\nmax_len = 64\n\
         [train]\nsteps = 4\nbatch_size = 4\nmicro_batch_size = 2\nlr = 2e-3\nwarmup_steps = 1\neval_every = 2\nsave_every = 2\n",
        tmp.path().join("demo/sft.jsonl").display(),
        fixture("hf-tiny-llama").display(),
        tmp.path().join("demo/rankings.jsonl").display()
    );
    std::fs::write(&config, text).unwrap();
    let (single, dp) = (tmp.path().join("single"), tmp.path().join("dp"));
    ok(&run_stage("rlhf-reward", &config, &single, None, &[]), "one process");
    ok(&run_stage("rlhf-reward", &config, &dp, Some(2), &[]), "mpirun -np 2");
    for file in ["model.safetensors", "reward_head.safetensors", "reward.json"] {
        assert_eq!(read(&single.join("final").join(file)), read(&dp.join("final").join(file)), "final/{file}");
    }
}

/// Temporary files or folders a killed writer could leave (`*.tmp`, `*.old`).
fn leftovers(run: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![run.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = entry.path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if name.ends_with(".tmp") || name.ends_with(".old") {
                found.push(p.clone());
            }
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    found
}

/// The pid of rank `rank` among `mpirun`'s children (read from their environment).
fn rank_pid(mpirun: u32, rank: usize) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{mpirun}/task/{mpirun}/children")).ok()?;
    children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()).find(|pid| {
        std::fs::read(format!("/proc/{pid}/environ"))
            .map(|env| env.split(|&b| b == 0).any(|kv| kv == format!("OMPI_COMM_WORLD_RANK={rank}").as_bytes()))
            .unwrap_or(false)
    })
}

/// Starts a two-rank SFT run of `config` into `out`, waits until `ready`, sends `signal` to rank 1,
/// and returns how the job ended, its stderr, and how long it took to end after the signal.
fn signal_rank_one(mut mpirun: Command, config: &Path, out: &Path, signal: i32, ready: &dyn Fn() -> bool) -> (std::process::ExitStatus, String, Duration) {
    mpirun.arg(stage_binary("rlhf-sft")).args(["--config", config.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let mut job = mpirun.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < Duration::from_secs(120), "not ready after 120 s");
        assert!(job.try_wait().unwrap().is_none(), "the job ended before it was ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let victim = rank_pid(job.id(), 1).expect("rank 1's pid");
    // SAFETY: sending a signal to a child process of this test.
    assert_eq!(unsafe { libc::kill(victim as i32, signal) }, 0);
    let signalled = Instant::now();
    let status = job.wait().unwrap();
    let waited = signalled.elapsed();
    let mut err = String::new();
    std::io::Read::read_to_string(job.stderr.as_mut().unwrap(), &mut err).unwrap();
    (status, err, waited)
}

/// kill -9 of rank 1 after the first checkpoint: the job ends non-zero (rank 0 does not wait
/// forever), the run directory holds only complete checkpoints, and `--resume` with two ranks ends
/// with the final weights of an uninterrupted one-process run.
#[test]
fn a_killed_rank_ends_the_job_and_resume_continues_bit_exact() {
    let tmp = tempfile::tempdir().unwrap();
    demo(&tmp.path().join("demo"));
    let steps = 40;
    let config = sft_config(tmp.path(), steps, 2);
    let (single, dp) = (tmp.path().join("single"), tmp.path().join("dp"));
    ok(&run_stage("rlhf-sft", &config, &single, None, &[]), "one process");

    let first = dp.join("checkpoints/step-00000002/state.json");
    let (status, err, waited) = signal_rank_one(mpirun(2), &config, &dp, libc::SIGKILL, &|| first.exists());
    assert!(!status.success(), "the job must fail when a rank dies:\n{err}");
    assert!(waited < Duration::from_secs(60 + 30), "the job took {waited:?} to end after the kill");
    assert!(leftovers(&dp).is_empty(), "half-written files: {:?}", leftovers(&dp));
    assert!(!dp.join("final").exists(), "the killed run must not have a final model");
    let kept = rlhf_train::checkpoint::latest_checkpoint(&dp).expect("a complete checkpoint");
    assert!(kept.join("state.json").exists());

    ok(&run_stage("rlhf-sft", &config, &dp, Some(2), &["--resume"]), "mpirun -np 2 --resume");
    assert_eq!(read(&single.join("final/model.safetensors")), read(&dp.join("final/model.safetensors")));
}

/// A rank that stops answering (SIGSTOP: alive, but never reaching the next collective) makes the
/// other give up after RLHF_DIST_TIMEOUT with a message that says why, and the job ends non-zero.
#[test]
fn a_hung_rank_times_the_others_out() {
    let tmp = tempfile::tempdir().unwrap();
    demo(&tmp.path().join("demo"));
    let config = sft_config(tmp.path(), 400, 0);
    let out = tmp.path().join("hung");
    let mut c = mpirun(2);
    c.env("RLHF_DIST_TIMEOUT", "3");
    let metrics = out.join("metrics.jsonl");
    let logged = || std::fs::metadata(&metrics).is_ok_and(|m| m.len() > 0);
    let (status, err, waited) = signal_rank_one(c, &config, &out, libc::SIGSTOP, &logged);
    assert!(!status.success(), "{err}");
    assert!(err.contains("rank 0") && err.contains("waited") && err.contains("RLHF_DIST_TIMEOUT"), "{err}");
    assert!(waited < Duration::from_secs(3 + 30), "the job took {waited:?} to end");
}

/// A batch that does not split over the ranks, and a stage that does not run data-parallel yet,
/// are refused on every rank with a clear error (and the job ends, nobody waits).
#[test]
fn what_cannot_split_over_the_ranks_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    demo(&tmp.path().join("demo"));
    let config = sft_config(tmp.path(), 2, 0);
    let o = run_stage("rlhf-sft", &config, &tmp.path().join("odd"), Some(2), &["--set", "train.batch_size=4"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("do not split over 2 ranks"), "{err}");
    let o = mpirun(2).arg(env!("CARGO_BIN_EXE_rlhf")).args(["plan", "configs/pipeline/demo.toml"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("runs as one process"), "{}", String::from_utf8_lossy(&o.stderr));
}

//! Data parallelism's few needs, on a trusted engine rather than a protocol of our own: who this
//! process is ([`launch`]), and sum, broadcast and barrier across the job's processes.
//!
//! Transports: a single process (the default; nothing to build or install), and MPI behind the
//! `mpi` feature (Open MPI or MPICH through rsmpi). burn 0.21 has no multi-process collectives: its
//! `distributed` feature is one process with a thread per GPU, CUDA only. A torchrun-style
//! environment (no MPI launcher) is recognised but needs the NCCL transport, which is not built yet:
//! it is refused with a clear error rather than run as N unconnected copies.
//!
//! Every rank calls the same collectives in the same order. Each collective has a timeout
//! (`RLHF_DIST_TIMEOUT` seconds, default 1800, as torch.distributed's): a rank that waits longer —
//! another rank died or hangs — prints why and exits non-zero, and the launcher ends the job.
//! An error on any rank must end every rank, so stage binaries end a failed distributed run with
//! [`Session::abort`] (MPI_Abort) instead of returning.

// Without a multi-process transport compiled in, the watchdog and the world's setup go unused.
#![cfg_attr(not(feature = "mpi"), allow(dead_code))]

pub mod launch;
#[cfg(feature = "mpi")]
mod mpi_transport;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use launch::{Claim, Identity, Launch, Source};

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("launcher environment: {0}")]
    Launch(String),
    #[error("the launcher environment disagrees with itself: {a}, but {b}")]
    Disagree { a: Claim, b: Claim },
    #[error("{what} started {world} processes, but this binary was built without MPI: rebuild with `--features mpi` (see docs/distributed.md)")]
    NoMpiBuild { what: Source, world: usize },
    #[error("Slurm started {world} tasks without a PMI, so MPI cannot connect them: launch with `srun --mpi=pmix` (or pmi2), or run `mpirun` inside the allocation")]
    SlurmWithoutPmi { world: usize },
    #[error("{world} processes were started torchrun-style (RANK/WORLD_SIZE), which needs the NCCL transport; this build has none yet: launch with `mpirun -np {world}` or `srun --mpi=pmix` (docs/distributed.md)")]
    NoNcclTransport { world: usize },
    #[error("MPI: {0}")]
    Mpi(String),
    #[error("{RLHF_DIST_TIMEOUT}={0:?} is not a positive number of seconds")]
    Timeout(String),
}

/// `RLHF_LOG_ALL_RANKS=1` keeps every rank's progress lines (by default only rank 0's are shown;
/// errors and panics of any rank always are).
pub const RLHF_LOG_ALL_RANKS: &str = "RLHF_LOG_ALL_RANKS";

/// The variable that sets every collective's timeout, in seconds.
pub const RLHF_DIST_TIMEOUT: &str = "RLHF_DIST_TIMEOUT";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// The processes of this job, as this process sees them.
pub struct World {
    id: Identity,
    transport: Transport,
    timeout: Duration,
}

enum Transport {
    Single,
    #[cfg(feature = "mpi")]
    Mpi(Mutex<mpi_transport::Comm>),
}

static SINGLE: World = World { id: Identity::SINGLE, transport: Transport::Single, timeout: DEFAULT_TIMEOUT };
static WORLD: OnceLock<World> = OnceLock::new();

/// The job this process belongs to: what [`init`] set up, else a single process.
pub fn world() -> &'static World {
    WORLD.get().unwrap_or(&SINGLE)
}

impl World {
    pub fn identity(&self) -> Identity {
        self.id
    }
    pub fn rank(&self) -> usize {
        self.id.rank
    }
    pub fn size(&self) -> usize {
        self.id.world
    }
    pub fn local_rank(&self) -> usize {
        self.id.local_rank
    }
    pub fn is_distributed(&self) -> bool {
        self.id.world > 1
    }
    /// Rank 0 writes metrics, checkpoints, samples and final models; the others wait for it.
    pub fn is_writer(&self) -> bool {
        self.id.rank == 0
    }

    /// Element-wise sum over all ranks, in place; every rank ends with the same bits (a reduce to
    /// rank 0 then a broadcast: MPI_Allreduce does not promise identical results on every rank).
    #[cfg_attr(not(feature = "mpi"), allow(unused_variables))]
    pub fn sum_f32(&self, buf: &mut [f32]) {
        match &self.transport {
            Transport::Single => {}
            #[cfg(feature = "mpi")]
            Transport::Mpi(comm) => self.guarded("sum", || comm.lock().unwrap_or_else(|p| p.into_inner()).sum_f32(buf)),
        }
    }

    /// [`World::sum_f32`] for f64 values (losses, counts, diagnostics).
    #[cfg_attr(not(feature = "mpi"), allow(unused_variables))]
    pub fn sum_f64(&self, buf: &mut [f64]) {
        match &self.transport {
            Transport::Single => {}
            #[cfg(feature = "mpi")]
            Transport::Mpi(comm) => self.guarded("sum", || comm.lock().unwrap_or_else(|p| p.into_inner()).sum_f64(buf)),
        }
    }

    /// Replaces `bytes` on every rank with rank `root`'s.
    #[cfg_attr(not(feature = "mpi"), allow(unused_variables))]
    pub fn broadcast(&self, bytes: &mut Vec<u8>, root: usize) {
        match &self.transport {
            Transport::Single => {}
            #[cfg(feature = "mpi")]
            Transport::Mpi(comm) => self.guarded("broadcast", || comm.lock().unwrap_or_else(|p| p.into_inner()).broadcast(bytes, root)),
        }
    }

    /// Returns when every rank has called it.
    pub fn barrier(&self) {
        match &self.transport {
            Transport::Single => {}
            #[cfg(feature = "mpi")]
            Transport::Mpi(comm) => self.guarded("barrier", || comm.lock().unwrap_or_else(|p| p.into_inner()).barrier()),
        }
    }

    /// Runs `write` on rank 0 alone, then every rank waits until it is done. An error on rank 0
    /// returns before the barrier (the stage binary then aborts the job, so nobody waits forever).
    pub fn writer_first<T, E>(&self, write: impl FnOnce() -> Result<T, E>) -> Result<Option<T>, E> {
        let out = if self.is_writer() { Some(write()?) } else { None };
        self.barrier();
        Ok(out)
    }

    /// Whether every rank holds `value` (a weight checksum, say): rank 0's is broadcast and compared.
    pub fn all_equal(&self, value: u64) -> bool {
        if !self.is_distributed() {
            return true;
        }
        let mut bytes = value.to_le_bytes().to_vec();
        self.broadcast(&mut bytes, 0);
        let differs = bytes != value.to_le_bytes();
        let mut count = [differs as u8 as f64];
        self.sum_f64(&mut count);
        count[0] == 0.0
    }

    /// Runs one collective under the watchdog's eye.
    fn guarded<T>(&self, what: &'static str, run: impl FnOnce() -> T) -> T {
        let watch = WATCH.get();
        if let Some(w) = watch {
            *w.what.lock().unwrap_or_else(|p| p.into_inner()) = what;
            w.since.store(w.origin.elapsed().as_millis() as u64 + 1, Ordering::SeqCst);
        }
        let out = run();
        if let Some(w) = watch {
            w.since.store(0, Ordering::SeqCst);
        }
        out
    }
}

/// What the watchdog thread looks at: when the collective in progress began (ms since `origin`,
/// plus one; 0 when none is in progress) and which one it is.
struct Watch {
    origin: Instant,
    since: AtomicU64,
    what: Mutex<&'static str>,
    rank: usize,
    timeout: Duration,
}

static WATCH: OnceLock<Watch> = OnceLock::new();

fn start_watchdog(rank: usize, timeout: Duration) {
    let watch = WATCH.get_or_init(|| Watch { origin: Instant::now(), since: AtomicU64::new(0), what: Mutex::new(""), rank, timeout });
    std::thread::Builder::new()
        .name("collective-watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200).min(watch.timeout));
            let since = watch.since.load(Ordering::SeqCst);
            if since == 0 {
                continue;
            }
            let waited = Duration::from_millis((watch.origin.elapsed().as_millis() as u64 + 1).saturating_sub(since));
            if waited >= watch.timeout {
                let what = *watch.what.lock().unwrap_or_else(|p| p.into_inner());
                restore_stderr();
                eprintln!(
                    "error: rank {}: the {what} has waited {:.0} s for the other ranks ({RLHF_DIST_TIMEOUT} = {} s): another rank has stopped or hangs; ending this process",
                    watch.rank,
                    waited.as_secs_f64(),
                    watch.timeout.as_secs_f64()
                );
                exit_now(EXIT_TIMEOUT);
            }
        })
        .expect("spawning the collective watchdog");
}

/// The exit status of a rank whose collective timed out (as `timeout(1)`'s).
pub const EXIT_TIMEOUT: i32 = 124;

/// Ends the process without running exit handlers (MPI's would wait for the missing rank).
fn exit_now(code: i32) -> ! {
    #[cfg(unix)]
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe {
        libc::_exit(code)
    }
    #[cfg(not(unix))]
    std::process::exit(code)
}

fn timeout_from(var: Option<String>) -> Result<Duration, DistError> {
    match var {
        None => Ok(DEFAULT_TIMEOUT),
        Some(v) => match v.trim().parse::<f64>() {
            Ok(s) if s > 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s)),
            _ => Err(DistError::Timeout(v)),
        },
    }
}

/// Holds the transport open for the process's lifetime: dropping it ends MPI cleanly (every rank
/// must get there); [`Session::abort`] ends the whole job from any one rank.
pub struct Session {
    #[cfg(feature = "mpi")]
    mpi: Option<mpi_transport::Universe>,
}

impl Session {
    /// Ends every rank of the job with exit status `code` (MPI_Abort); a single process just exits.
    pub fn abort(self, code: i32) -> ! {
        restore_stderr();
        #[cfg(feature = "mpi")]
        if let Some(u) = &self.mpi {
            u.abort(code);
        }
        std::process::exit(code)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // A panic on one rank must not leave the others waiting in a collective.
        #[cfg(feature = "mpi")]
        if std::thread::panicking() {
            if let Some(u) = &self.mpi {
                u.abort(101);
            }
        }
    }
}

/// Finds out who this process is from its environment and opens the transport: MPI when an MPI
/// launcher started the process (and the build has it), a single process when nothing says
/// otherwise; everything else is an error that says what to do. Call once, at the start of `main`.
pub fn init() -> Result<Session, DistError> {
    init_from(&|k| std::env::var(k).ok())
}

/// [`init`] reading the environment through `var`.
pub fn init_from(var: &dyn Fn(&str) -> Option<String>) -> Result<Session, DistError> {
    let launch = launch::read_launch(var)?;
    // Checked in every build, so a bad value is reported even where it would not be used.
    #[cfg_attr(not(feature = "mpi"), allow(unused_variables))]
    let timeout = timeout_from(var(RLHF_DIST_TIMEOUT))?;
    let claimed = launch.identity();
    let source = launch.claims.first().map(|c| c.source);
    if launch.mpi_launcher {
        #[cfg(feature = "mpi")]
        {
            let (universe, comm) = mpi_transport::open()?;
            let id = launch::check_communicator(&launch, comm.rank(), comm.size())?;
            install(World { id, transport: Transport::Mpi(Mutex::new(comm)), timeout }, var(RLHF_LOG_ALL_RANKS).as_deref() == Some("1"));
            return Ok(Session { mpi: Some(universe) });
        }
        #[cfg(not(feature = "mpi"))]
        if claimed.world > 1 {
            return Err(DistError::NoMpiBuild { what: source.unwrap_or(Source::OpenMpi), world: claimed.world });
        }
    } else if claimed.world > 1 {
        return Err(match source {
            Some(Source::Slurm) => DistError::SlurmWithoutPmi { world: claimed.world },
            _ => DistError::NoNcclTransport { world: claimed.world },
        });
    }
    Ok(Session {
        #[cfg(feature = "mpi")]
        mpi: None,
    })
}

fn install(world: World, log_all: bool) {
    if world.is_distributed() {
        start_watchdog(world.id.rank, world.timeout);
        if !world.is_writer() && !log_all {
            quiet_stderr();
        }
    }
    if WORLD.set(world).is_err() {
        panic!("rlhf_dist::init called twice");
    }
}

/// This process's stderr, kept while it points at /dev/null (-1: not quieted).
static SAVED_STDERR: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Points stderr at /dev/null (the other ranks' progress repeats rank 0's) until
/// [`restore_stderr`]; a panic restores it first, so its message is seen.
fn quiet_stderr() {
    #[cfg(unix)]
    // SAFETY: plain descriptor calls on this process's own stderr; failures leave it as it was.
    unsafe {
        let saved = libc::dup(2);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        if saved < 0 || null < 0 || libc::dup2(null, 2) < 0 {
            return;
        }
        libc::close(null);
        SAVED_STDERR.store(saved, Ordering::SeqCst);
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_stderr();
        previous(info)
    }));
}

/// Undoes [`quiet_stderr`] (before an error is printed); harmless when stderr was never quieted.
pub fn restore_stderr() {
    let saved = SAVED_STDERR.swap(-1, Ordering::SeqCst);
    #[cfg(unix)]
    if saved >= 0 {
        // SAFETY: `saved` is the descriptor quiet_stderr duplicated from stderr.
        unsafe {
            libc::dup2(saved, 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_process_needs_no_launcher_and_its_collectives_change_nothing() {
        let w = world();
        assert_eq!((w.rank(), w.size(), w.local_rank(), w.is_writer(), w.is_distributed()), (0, 1, 0, true, false));
        let mut b = vec![1.5f32, -2.0];
        w.sum_f32(&mut b);
        assert_eq!(b, [1.5, -2.0]);
        let mut bytes = vec![7u8];
        w.broadcast(&mut bytes, 0);
        assert_eq!(bytes, [7]);
        assert!(w.all_equal(42));
        assert_eq!(w.writer_first(|| Ok::<_, ()>(3)).unwrap(), Some(3));
    }

    #[test]
    fn launches_this_build_cannot_serve_are_refused_with_what_to_do() {
        let env = |vars: &'static [(&'static str, &'static str)]| move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        let e = init_from(&env(&[("RANK", "0"), ("WORLD_SIZE", "2")])).err().unwrap().to_string();
        assert!(e.contains("NCCL") && e.contains("mpirun -np 2"), "{e}");
        let e = init_from(&env(&[("SLURM_PROCID", "0"), ("SLURM_STEP_NUM_TASKS", "4")])).err().unwrap().to_string();
        assert!(e.contains("srun --mpi=pmix"), "{e}");
        #[cfg(not(feature = "mpi"))]
        {
            let e = init_from(&env(&[("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "2")])).err().unwrap().to_string();
            assert!(e.contains("--features mpi"), "{e}");
        }
        // One process is a single process whoever launched it.
        assert!(init_from(&env(&[("RANK", "0"), ("WORLD_SIZE", "1")])).is_ok());
        assert!(init_from(&env(&[("RLHF_DIST_TIMEOUT", "soon")])).err().unwrap().to_string().contains("RLHF_DIST_TIMEOUT"));
    }

    #[test]
    fn the_timeout_reads_seconds() {
        assert_eq!(timeout_from(None).unwrap(), DEFAULT_TIMEOUT);
        assert_eq!(timeout_from(Some("2.5".into())).unwrap(), Duration::from_millis(2500));
        assert!(timeout_from(Some("0".into())).is_err());
    }
}

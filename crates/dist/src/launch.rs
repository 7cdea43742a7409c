//! Who this process is, read from what its launcher put in the environment. A pure function of the
//! variables (tests pass a map), so every source and every disagreement has a unit test.
//!
//! Sources, in the order their claims are reported:
//! - torchrun-style (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`; also Kubeflow's PyTorchJob and Ray-style
//!   launchers, which set the same names);
//! - Open MPI's `mpirun` (`OMPI_COMM_WORLD_RANK`, `_SIZE`, `_LOCAL_RANK`);
//! - MPICH / Intel MPI's Hydra (`PMI_RANK`, `PMI_SIZE`, `MPI_LOCALRANKID`);
//! - a Slurm step (`SLURM_PROCID`, `SLURM_STEP_NUM_TASKS`, `SLURM_LOCALID`), read only when no MPI
//!   launcher's variables are present: `mpirun` inside an `sbatch` script inherits the allocation's
//!   variables, which describe the allocation, not the processes `mpirun` started.
//!
//! Every present source must agree on the rank and the world size (and on the local rank where two
//! give it); the MPI communicator, once initialised, is checked against them too ([`check_communicator`]).

use std::fmt;

use crate::DistError;

/// This process's place in the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub rank: usize,
    pub world: usize,
    /// Rank among the processes on this machine: which GPU the process takes.
    pub local_rank: usize,
}

impl Identity {
    pub const SINGLE: Identity = Identity { rank: 0, world: 1, local_rank: 0 };
}

/// Who said it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Mpi,
    Torchrun,
    OpenMpi,
    Hydra,
    Slurm,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Mpi => "the MPI communicator",
            Source::Torchrun => "RANK/WORLD_SIZE/LOCAL_RANK (torchrun-style)",
            Source::OpenMpi => "OMPI_COMM_WORLD_* (Open MPI's mpirun)",
            Source::Hydra => "PMI_RANK/PMI_SIZE (MPICH or Intel MPI)",
            Source::Slurm => "SLURM_PROCID/SLURM_STEP_NUM_TASKS (a Slurm step)",
        })
    }
}

/// One source's claim. `local_rank` is `None` where the source does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub source: Source,
    pub rank: usize,
    pub world: usize,
    pub local_rank: Option<usize>,
}

/// What the environment says: the agreed identity (if any source spoke) and whether an MPI
/// launcher started the process (so MPI must be initialised to talk to the others).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub claims: Vec<Claim>,
    pub mpi_launcher: bool,
    /// `MASTER_ADDR:MASTER_PORT` where a torchrun-style launcher gave them.
    pub master: Option<String>,
}

impl Launch {
    /// The identity every claim agreed on, or a single process when nothing claimed one.
    pub fn identity(&self) -> Identity {
        match self.claims.first() {
            None => Identity::SINGLE,
            Some(c) => Identity {
                rank: c.rank,
                world: c.world,
                local_rank: self.claims.iter().find_map(|c| c.local_rank).unwrap_or(if c.world == 1 { 0 } else { c.rank }),
            },
        }
    }
}

/// Reads the launchers' variables through `var` and checks that they agree.
pub fn read_launch(var: &dyn Fn(&str) -> Option<String>) -> Result<Launch, DistError> {
    let number = |name: &str| -> Result<Option<usize>, DistError> {
        match var(name) {
            None => Ok(None),
            Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| DistError::Launch(format!("{name}={v:?} is not a non-negative integer"))),
        }
    };
    let claim = |source: Source, rank: &str, world: &str, local: Option<&str>| -> Result<Option<Claim>, DistError> {
        match (number(rank)?, number(world)?) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(DistError::Launch(format!("{rank} is set but {world} is not"))),
            (None, Some(_)) => Err(DistError::Launch(format!("{world} is set but {rank} is not"))),
            (Some(r), Some(w)) => {
                if w == 0 || r >= w {
                    return Err(DistError::Launch(format!("{rank}={r} is not below {world}={w}")));
                }
                let local_rank = match local {
                    Some(name) => number(name)?,
                    None => None,
                };
                Ok(Some(Claim { source, rank: r, world: w, local_rank }))
            }
        }
    };
    let mut claims = Vec::new();
    claims.extend(claim(Source::Torchrun, "RANK", "WORLD_SIZE", Some("LOCAL_RANK"))?);
    claims.extend(claim(Source::OpenMpi, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", Some("OMPI_COMM_WORLD_LOCAL_RANK"))?);
    claims.extend(claim(Source::Hydra, "PMI_RANK", "PMI_SIZE", Some("MPI_LOCALRANKID"))?);
    // srun --mpi=pmix starts MPI processes that carry PMIX_RANK and Slurm's variables only.
    let mpi_launcher = claims.iter().any(|c| matches!(c.source, Source::OpenMpi | Source::Hydra)) || var("PMIX_RANK").is_some();
    if !claims.iter().any(|c| matches!(c.source, Source::OpenMpi | Source::Hydra)) {
        claims.extend(claim(Source::Slurm, "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", Some("SLURM_LOCALID"))?);
    }
    agree(&claims)?;
    let master = match (var("MASTER_ADDR"), var("MASTER_PORT")) {
        (Some(a), Some(p)) => Some(format!("{a}:{p}")),
        _ => None,
    };
    Ok(Launch { claims, mpi_launcher, master })
}

/// Every pair of claims names the same rank and world size (and local rank where both give one).
pub fn agree(claims: &[Claim]) -> Result<(), DistError> {
    for (i, a) in claims.iter().enumerate() {
        for b in &claims[i + 1..] {
            let local_differs = matches!((a.local_rank, b.local_rank), (Some(x), Some(y)) if x != y);
            if a.rank != b.rank || a.world != b.world || local_differs {
                return Err(DistError::Disagree { a: *a, b: *b });
            }
        }
    }
    Ok(())
}

/// Adds the MPI communicator's rank and size to the claims and checks them all again. The case this
/// catches: Open MPI started by `srun` without a PMI plugin runs every task as a singleton (size 1)
/// while Slurm promised several.
pub fn check_communicator(launch: &Launch, rank: usize, world: usize) -> Result<Identity, DistError> {
    let mut claims = vec![Claim { source: Source::Mpi, rank, world, local_rank: None }];
    claims.extend(launch.claims.iter().copied());
    agree(&claims)?;
    Ok(Launch { claims, ..launch.clone() }.identity())
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} says rank {} of {}", self.source, self.rank, self.world)?;
        if let Some(l) = self.local_rank {
            write!(f, " (local rank {l})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Launch, DistError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        read_launch(&|k| map.get(k).cloned())
    }

    #[test]
    fn nothing_set_is_a_single_process() {
        let l = launch(&[]).unwrap();
        assert_eq!(l.identity(), Identity::SINGLE);
        assert!(!l.mpi_launcher);
    }

    #[test]
    fn torchrun_variables() {
        let l = launch(&[("RANK", "3"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "10.0.0.1"), ("MASTER_PORT", "29500")]).unwrap();
        assert_eq!(l.identity(), Identity { rank: 3, world: 8, local_rank: 1 });
        assert_eq!(l.master.as_deref(), Some("10.0.0.1:29500"));
        assert!(!l.mpi_launcher);
    }

    #[test]
    fn open_mpi_variables() {
        let l = launch(&[("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_LOCAL_RANK", "1")]).unwrap();
        assert_eq!(l.identity(), Identity { rank: 1, world: 2, local_rank: 1 });
        assert!(l.mpi_launcher);
    }

    #[test]
    fn hydra_variables_without_a_local_rank_take_the_rank() {
        let l = launch(&[("PMI_RANK", "2"), ("PMI_SIZE", "4")]).unwrap();
        assert_eq!(l.identity(), Identity { rank: 2, world: 4, local_rank: 2 });
        assert!(l.mpi_launcher);
    }

    #[test]
    fn a_slurm_step() {
        let l = launch(&[("SLURM_PROCID", "5"), ("SLURM_STEP_NUM_TASKS", "16"), ("SLURM_LOCALID", "1"), ("SLURM_NTASKS", "16")]).unwrap();
        assert_eq!(l.identity(), Identity { rank: 5, world: 16, local_rank: 1 });
        assert!(!l.mpi_launcher, "srun without PMI: no MPI launcher");
        let l = launch(&[("SLURM_PROCID", "5"), ("SLURM_STEP_NUM_TASKS", "16"), ("PMIX_RANK", "5")]).unwrap();
        assert!(l.mpi_launcher, "srun --mpi=pmix");
    }

    /// mpirun inside an sbatch script: the allocation's Slurm variables say nothing about mpirun's
    /// processes and are not read.
    #[test]
    fn mpirun_inside_an_allocation_ignores_slurm() {
        let l = launch(&[("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "2"), ("SLURM_PROCID", "0"), ("SLURM_STEP_NUM_TASKS", "1")]).unwrap();
        assert_eq!(l.identity().rank, 1);
        assert_eq!(l.claims.len(), 1);
    }

    #[test]
    fn two_sources_that_disagree_are_an_error_naming_both() {
        let e = launch(&[("RANK", "0"), ("WORLD_SIZE", "4"), ("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "2")]).unwrap_err().to_string();
        assert!(e.contains("RANK/WORLD_SIZE") && e.contains("OMPI_COMM_WORLD") && e.contains("of 4") && e.contains("of 2"), "{e}");
        let e = launch(&[("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0"), ("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_LOCAL_RANK", "1")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("local rank 0") && e.contains("local rank 1"), "{e}");
        // Agreeing sources are fine.
        let l = launch(&[("RANK", "1"), ("WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "2")]).unwrap();
        assert_eq!(l.identity(), Identity { rank: 1, world: 2, local_rank: 1 });
    }

    #[test]
    fn half_set_or_malformed_variables_are_errors() {
        for (vars, needle) in [
            (&[("RANK", "0")][..], "WORLD_SIZE is not"),
            (&[("WORLD_SIZE", "2")][..], "RANK is not"),
            (&[("RANK", "2"), ("WORLD_SIZE", "2")][..], "not below"),
            (&[("RANK", "x"), ("WORLD_SIZE", "2")][..], "RANK=\"x\""),
            (&[("PMI_RANK", "0"), ("PMI_SIZE", "0")][..], "not below"),
        ] {
            let e = launch(vars).unwrap_err().to_string();
            assert!(e.contains(needle), "{vars:?}: {e}");
        }
    }

    /// Open MPI under srun without PMI: each task's communicator has size 1 while Slurm promised 2.
    #[test]
    fn a_singleton_communicator_under_a_larger_slurm_step_is_an_error() {
        let l = launch(&[("SLURM_PROCID", "1"), ("SLURM_STEP_NUM_TASKS", "2")]).unwrap();
        let e = check_communicator(&l, 0, 1).unwrap_err().to_string();
        assert!(e.contains("MPI communicator says rank 0 of 1") && e.contains("SLURM"), "{e}");
        let l = launch(&[("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_LOCAL_RANK", "1")]).unwrap();
        assert_eq!(check_communicator(&l, 1, 2).unwrap(), Identity { rank: 1, world: 2, local_rank: 1 });
    }
}

//! The MPI transport (rsmpi over Open MPI or MPICH).

use mpi::collective::SystemOperation;
use mpi::environment::Threading;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use crate::DistError;

/// MPI counts are C ints: larger buffers go in pieces of this many elements.
const PIECE: usize = 1 << 28;

/// The communicator for MPI_Abort comes first: fields drop in order, and MPI_Finalize (the
/// universe's drop) must be last.
pub struct Universe {
    world: SimpleCommunicator,
    _mpi: mpi::environment::Universe,
}

impl Universe {
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

/// The world communicator. Calls come one at a time (the `World` holds it in a mutex), which the
/// `Serialized` threading level asked of MPI allows from any thread.
pub struct Comm(SimpleCommunicator);

// SAFETY: MPI was initialised with MPI_THREAD_SERIALIZED (checked in `open`) and every use of the
// communicator goes through the `World`'s mutex, so no two threads call MPI at once.
unsafe impl Send for Comm {}

pub fn open() -> Result<(Universe, Comm), DistError> {
    let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized).ok_or_else(|| DistError::Mpi("MPI was already initialised".into()))?;
    if threading < Threading::Serialized {
        return Err(DistError::Mpi(format!("the MPI library provides thread level {threading:?}; MPI_THREAD_SERIALIZED is needed")));
    }
    let comm = universe.world();
    let abort_handle = universe.world();
    Ok((Universe { world: abort_handle, _mpi: universe }, Comm(comm)))
}

impl Comm {
    pub fn rank(&self) -> usize {
        self.0.rank() as usize
    }
    pub fn size(&self) -> usize {
        self.0.size() as usize
    }

    pub fn sum_f32(&self, buf: &mut [f32]) {
        self.sum(buf)
    }
    pub fn sum_f64(&self, buf: &mut [f64]) {
        self.sum(buf)
    }

    /// Reduce to rank 0, then broadcast its result: the same bits everywhere.
    fn sum<T: Equivalence + Copy + Default>(&self, buf: &mut [T]) {
        let root = self.0.process_at_rank(0);
        for piece in buf.chunks_mut(PIECE) {
            if self.0.rank() == 0 {
                let mut total = vec![T::default(); piece.len()];
                root.reduce_into_root(&piece[..], &mut total[..], SystemOperation::sum());
                piece.copy_from_slice(&total);
            } else {
                root.reduce_into(&piece[..], SystemOperation::sum());
            }
            root.broadcast_into(piece);
        }
    }

    pub fn broadcast(&self, bytes: &mut Vec<u8>, root: usize) {
        let from = self.0.process_at_rank(root as i32);
        let mut len = [bytes.len() as u64];
        from.broadcast_into(&mut len[..]);
        bytes.resize(len[0] as usize, 0);
        for piece in bytes.chunks_mut(PIECE) {
            from.broadcast_into(piece);
        }
    }

    pub fn barrier(&self) {
        self.0.barrier()
    }
}

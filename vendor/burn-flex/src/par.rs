//! rlhf-rs: element-wise work split across cores (feature `threaded-elementwise`), above a size
//! below which rayon's hand-off would cost more than it saves. Every element is computed exactly as
//! on one core, so results do not depend on the split.

/// Below this many elements one core does it all.
#[cfg(feature = "threaded-elementwise")]
const PARALLEL_ELEMENTS: usize = 1 << 18;

/// Pieces per thread: a few, so a thread that starts late does not hold up the rest.
#[cfg(feature = "threaded-elementwise")]
const PIECES_PER_THREAD: usize = 4;

/// Calls `f(piece, offset)` on pieces of `dst` made of whole rows of `row_len` elements (`offset`:
/// where the piece starts in `dst`), on every core when `dst` is large.
#[inline]
pub(crate) fn for_pieces<E: Send>(dst: &mut [E], row_len: usize, f: impl Fn(&mut [E], usize) + Sync + Send) {
    #[cfg(feature = "threaded-elementwise")]
    if dst.len() >= PARALLEL_ELEMENTS && row_len > 0 {
        use rayon::prelude::*;
        let rows = dst.len() / row_len;
        let rows_per_piece = rows.div_ceil(rayon::current_num_threads().max(1) * PIECES_PER_THREAD).max(1);
        let piece = rows_per_piece * row_len;
        dst.par_chunks_mut(piece).enumerate().for_each(|(i, p)| f(p, i * piece));
        return;
    }
    let _ = row_len;
    f(dst, 0)
}

/// `op` of each element of `src`, collected in order; on every core when `src` is large.
#[inline]
pub(crate) fn map<E: Copy + Send + Sync, R: Send>(src: &[E], op: impl Fn(E) -> R + Sync + Send) -> alloc::vec::Vec<R> {
    #[cfg(feature = "threaded-elementwise")]
    if src.len() >= PARALLEL_ELEMENTS {
        use rayon::prelude::*;
        return src.par_iter().map(|&x| op(x)).collect();
    }
    src.iter().map(|&x| op(x)).collect()
}

/// `op` of each pair of `a` and `b`, collected in order; on every core when large.
#[inline]
pub(crate) fn zip_map<E: Copy + Send + Sync, R: Send>(a: &[E], b: &[E], op: impl Fn(E, E) -> R + Sync + Send) -> alloc::vec::Vec<R> {
    #[cfg(feature = "threaded-elementwise")]
    if a.len() >= PARALLEL_ELEMENTS {
        use rayon::prelude::*;
        return a.par_iter().zip(b).map(|(&x, &y)| op(x, y)).collect();
    }
    a.iter().zip(b).map(|(&x, &y)| op(x, y)).collect()
}

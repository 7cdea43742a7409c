//! Padding, seeded shuffling and the train/eval split. Host-side: crates/train turns these into tensors
//! (generation left-pads its prompts itself, in crates/model).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Sequences padded to a common length, row-major [batch, len].
#[derive(Debug, Clone, PartialEq)]
pub struct Padded {
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    pub batch: usize,
    pub len: usize,
}

/// Right padding, for training.
pub fn pad_right(seqs: &[Vec<u32>], pad_id: u32) -> Padded {
    let len = seqs.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = Padded { ids: Vec::with_capacity(seqs.len() * len), mask: Vec::with_capacity(seqs.len() * len), batch: seqs.len(), len };
    for s in seqs {
        let n = len - s.len();
        out.ids.extend(s.iter().map(|&t| t as i64).chain(std::iter::repeat_n(pad_id as i64, n)));
        out.mask.extend(std::iter::repeat_n(1, s.len()).chain(std::iter::repeat_n(0, n)));
    }
    out
}

/// A per-token flag (e.g. SFT loss mask) right-padded with `false`, as 0/1 [batch, len].
pub fn pad_flags_right(flags: &[Vec<bool>], len: usize) -> Vec<f32> {
    flags
        .iter()
        .flat_map(|f| f.iter().map(|&b| if b { 1.0 } else { 0.0 }).chain(std::iter::repeat_n(0.0, len - f.len())))
        .collect()
}

/// 0..n in a seeded order; `epoch` gives each pass its own order.
pub fn shuffled(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    idx.shuffle(&mut rng);
    idx
}

/// Which example sits at each position of an endless, epoch-by-epoch shuffled stream over `n`
/// examples: a pure function of (seed, position), so a resumed run sees the same data.
#[derive(Debug)]
pub struct EpochOrder {
    n: usize,
    seed: u64,
    /// The current epoch's permutation.
    cache: std::cell::RefCell<(u64, Vec<usize>)>,
}

impl EpochOrder {
    pub fn new(n: usize, seed: u64) -> Self {
        Self { n, seed, cache: std::cell::RefCell::new((u64::MAX, Vec::new())) }
    }

    /// The example at stream position `position`.
    pub fn at(&self, position: usize) -> usize {
        let epoch = (position / self.n) as u64;
        let mut cache = self.cache.borrow_mut();
        if cache.0 != epoch {
            *cache = (epoch, shuffled(self.n, self.seed, epoch));
        }
        cache.1[position % self.n]
    }

    /// Stream positions of optimizer step `step`, split into micro-batches.
    pub fn step_positions(step: usize, batch_size: usize, micro_batch_size: usize) -> Vec<Vec<usize>> {
        let start = step * batch_size;
        let idx: Vec<usize> = (start..start + batch_size).collect();
        idx.chunks(micro_batch_size.max(1)).map(<[usize]>::to_vec).collect()
    }
}

/// Deterministic split of 0..n: `eval_fraction` of a seeded permutation (at least one example when
/// n > 1 and the fraction is positive) goes to eval, the rest to train, each sorted.
pub fn train_eval_split(n: usize, eval_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut n_eval = (n as f64 * eval_fraction).round() as usize;
    if eval_fraction > 0.0 && n > 1 {
        n_eval = n_eval.clamp(1, n - 1);
    }
    let order = shuffled(n, seed, u64::MAX);
    let (mut eval, mut train) = (order[..n_eval].to_vec(), order[n_eval..].to_vec());
    eval.sort_unstable();
    train.sort_unstable();
    (train, eval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_padding() {
        let seqs = vec![vec![5, 6, 7], vec![8]];
        let r = pad_right(&seqs, 0);
        assert_eq!((r.ids, r.mask), (vec![5, 6, 7, 8, 0, 0], vec![1, 1, 1, 1, 0, 0]));
        assert_eq!(pad_flags_right(&[vec![false, true], vec![true]], 3), vec![0.0, 1.0, 0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn epoch_order_visits_every_example_once_per_epoch() {
        let order = EpochOrder::new(10, 3);
        let mut first: Vec<usize> = (0..10).map(|p| order.at(p)).collect();
        let second: Vec<usize> = (10..20).map(|p| order.at(p)).collect();
        assert_ne!(first, second);
        first.sort_unstable();
        assert_eq!(first, (0..10).collect::<Vec<_>>());
        assert_eq!(EpochOrder::step_positions(2, 4, 2), vec![vec![8, 9], vec![10, 11]]);
    }

    #[test]
    fn shuffling_is_seeded_and_split_is_deterministic() {
        assert_eq!(shuffled(50, 1, 0), shuffled(50, 1, 0));
        assert_ne!(shuffled(50, 1, 0), shuffled(50, 1, 1));
        assert_ne!(shuffled(50, 1, 0), shuffled(50, 2, 0));
        let (train, eval) = train_eval_split(100, 0.1, 7);
        assert_eq!((train.len(), eval.len()), (90, 10));
        assert_eq!(train_eval_split(100, 0.1, 7), (train.clone(), eval.clone()));
        assert!(eval.iter().all(|e| !train.contains(e)));
        assert_eq!(train_eval_split(3, 0.01, 0).1.len(), 1);
    }
}

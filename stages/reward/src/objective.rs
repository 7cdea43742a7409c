//! The reward model's ranking loss (InstructGPT §3.5).
//!
//! One batch element is one prompt with its K ranked responses. Over all pairs (w, l) where w is
//! ranked better than l:
//!
//! ```text
//! loss(prompt) = −1/P · Σ_(w,l) log σ(r_w − r_l − margin)
//! ```
//!
//! where P counts the pairs used (tied pairs carry no preference and are dropped). Averaging per
//! prompt, not per pair, keeps a K = 9 ranking from weighing 36 times a K = 2 one, and keeping a
//! prompt's C(K,2) pairs in one element avoids the overfitting InstructGPT reports for shuffled pairs.

use burn::tensor::{Int, Tensor, TensorData};
use rlhf_runtime::Backend;
use rlhf_data::encode::Pair;
use rlhf_model::ops::softplus;

/// Σ_pairs weight · (−log σ(r_better − r_worse − margin)) / `normalizer` (the number of prompts in the
/// optimizer step, so micro-batch losses add up to the mean per-prompt loss).
///
/// # Shapes
/// - `scores`: [responses] (all responses of the micro-batch, flat) → [1]
pub fn ranking_loss<B: Backend>(scores: Tensor<B, 1>, pairs: &[Pair], margin: f64, normalizer: f64) -> Tensor<B, 1> {
    let device = scores.device();
    let idx = |f: fn(&Pair) -> usize| {
        let v: Vec<i64> = pairs.iter().map(|p| f(p) as i64).collect();
        Tensor::<B, 1, Int>::from_data(TensorData::new(v, [pairs.len()]), &device)
    };
    let weights = Tensor::<B, 1>::from_data(TensorData::new(pairs.iter().map(|p| p.weight).collect(), [pairs.len()]), &device);
    let diff = scores.clone().select(0, idx(|p| p.better)) - scores.select(0, idx(|p| p.worse)) - margin;
    (softplus(diff.neg()) * weights).sum() / normalizer
}

#[cfg(test)]
mod tests {
    use super::*;
    use rlhf_data::encode::ranking_pairs;

    type B = rlhf_runtime::Cpu;
    type AD = rlhf_runtime::CpuTrain;

    fn scores<BB: Backend>(v: &[f32]) -> Tensor<BB, 1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
    }

    fn loss(s: &[f32], ranks: &[u32], margin: f64) -> f64 {
        ranking_loss(scores::<B>(s), &ranking_pairs(ranks, 0), margin, 1.0).into_scalar() as f64
    }

    // log(1 + e^−d) = −log σ(d)
    fn nls(d: f64) -> f64 {
        (1.0 + (-d).exp()).ln()
    }

    #[test]
    fn k2_is_the_pairwise_loss() {
        assert!((loss(&[2.0, 0.5], &[0, 1], 0.0) - nls(1.5)).abs() < 1e-6);
        // The ranking, not the position, says who wins.
        assert!((loss(&[2.0, 0.5], &[1, 0], 0.0) - nls(-1.5)).abs() < 1e-6);
        // Margin: −log σ(r_w − r_l − m).
        assert!((loss(&[1.0, 0.0], &[0, 1], 0.5) - nls(0.5)).abs() < 1e-6);
    }

    #[test]
    fn k4_averages_all_six_pairs() {
        // Differences 1, 2, 3, 1, 2, 1 → (3·nls(1) + 2·nls(2) + nls(3)) / 6 = 0.20703807
        let want = (3.0 * nls(1.0) + 2.0 * nls(2.0) + nls(3.0)) / 6.0;
        assert!((want - 0.207_038_07).abs() < 1e-7);
        assert!((loss(&[3.0, 2.0, 1.0, 0.0], &[0, 1, 2, 3], 0.0) - want).abs() < 1e-6);
    }

    #[test]
    fn k4_with_a_tie_drops_that_pair_and_counts_five() {
        assert_eq!(ranking_pairs(&[1, 1, 2, 3], 0).len(), 5);
        // Pairs (0,2) d=2, (0,3) d=3, (1,2) d=1, (1,3) d=2, (2,3) d=1.
        let want = (2.0 * nls(1.0) + 2.0 * nls(2.0) + nls(3.0)) / 5.0;
        assert!((loss(&[3.0, 2.0, 1.0, 0.0], &[1, 1, 2, 3], 0.0) - want).abs() < 1e-6);
        // All tied: no preference, no loss.
        assert!(ranking_pairs(&[2, 2, 2], 0).is_empty());
    }

    #[test]
    fn k9_uses_all_36_pairs() {
        let ranks: Vec<u32> = (0..9).collect();
        assert_eq!(ranking_pairs(&ranks, 0).len(), 36);
        assert!((loss(&[0.0; 9], &ranks, 0.0) - 2f64.ln()).abs() < 1e-6);
        // Perfectly separated scores give a small loss, reversed ones a large one.
        let good: Vec<f32> = (0..9).map(|i| 10.0 - 5.0 * i as f32).collect();
        assert!(loss(&good, &ranks, 0.0) < 1e-2);
        let bad: Vec<f32> = good.iter().rev().copied().collect();
        assert!(loss(&bad, &ranks, 0.0) > 10.0);
    }

    #[test]
    fn batch_elements_are_prompts() {
        // A K=2 prompt and a K=3 prompt, scored together; normalizer 2 → mean of per-prompt losses.
        let mut pairs = ranking_pairs(&[0, 1], 0);
        pairs.extend(ranking_pairs(&[0, 1, 2], 2));
        let s = [1.0f32, 0.0, 2.0, 1.0, 0.0];
        let got = ranking_loss(scores::<B>(&s), &pairs, 0.0, 2.0).into_scalar() as f64;
        let want = (nls(1.0) + (nls(1.0) + nls(2.0) + nls(1.0)) / 3.0) / 2.0;
        assert!((got - want).abs() < 1e-6);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let s = [0.3f32, -0.2, 0.9, 0.1];
        let ranks = [1, 0, 3, 2];
        let pairs = ranking_pairs(&ranks, 0);
        let x = scores::<AD>(&s).require_grad();
        let grads = ranking_loss(x.clone(), &pairs, 0.2, 1.0).backward();
        let analytic = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        let h = 1e-3f32;
        for i in 0..s.len() {
            let (mut plus, mut minus) = (s, s);
            plus[i] += h;
            minus[i] -= h;
            let numeric = (loss(&plus, &ranks, 0.2) - loss(&minus, &ranks, 0.2)) / (2.0 * h as f64);
            assert!((numeric - analytic[i] as f64).abs() < 1e-3, "d/ds{i}: {numeric} vs {}", analytic[i]);
        }
    }
}

//! The critic-free objective, one small function per term:
//!
//! ```text
//! r_i        = Σ_s w_s·score_s(response_i)                    (the reward sources)
//! r_i       −= β·Σ_t k1_t                                    (kl = "reward", sequence estimators)
//! A_i        = estimator(r, groups)                          (grpo, dr_grpo, rloo, remax: per response)
//! A_t        = whiten(Σ_{t'≥t} r_t')                          (reinforce_pp: r_t = −β·k1_t + score on the last token)
//! ρ_t        = π/π_old
//! loss_t     = −min(ρ_t·A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high)·A_t)   (dual clip: max with c·A_t where A_t < 0)
//!            + β·kl_t                                        (kl = "loss": k1/k2/k3, optionally × ρ_t detached)
//!            − c_ent·H_t
//! L          = aggregate(loss_t over the optimizer step)     (token_mean, seq_mean_token_mean, …)
//! ```

use burn::tensor::Tensor;
use rlhf_rl::{group_advantages, kl_per_token, remax_advantages, returns_to_go, whiten, GroupBaseline, KlEstimator, ScaleRewards};
use rlhf_runtime::Backend;

use crate::config::Estimator;

/// One advantage per response for the sequence-level estimators (`greedy[g]`: ReMax's baseline of
/// group g); None for REINFORCE++, whose advantages are per token ([`reinforce_pp_advantages`]).
pub fn sequence_advantages(estimator: Estimator, rewards: &[f64], groups: &[usize], scale: ScaleRewards, greedy: Option<&[f64]>) -> Option<Vec<f64>> {
    Some(match estimator {
        Estimator::Grpo => group_advantages(rewards, groups, GroupBaseline::Mean, scale),
        Estimator::DrGrpo => group_advantages(rewards, groups, GroupBaseline::Mean, ScaleRewards::None),
        Estimator::Rloo => group_advantages(rewards, groups, GroupBaseline::LeaveOneOut, ScaleRewards::None),
        Estimator::Remax => remax_advantages(rewards, groups, greedy.expect("ReMax samples a greedy baseline")),
        Estimator::ReinforcePp | Estimator::ReinforcePpBaseline => return None,
    })
}

/// REINFORCE++: per-token rewards (−β·k1_t on every response token, plus the response's score —
/// minus its group's mean for the baseline variant — on its last token), returns to go (γ = 1),
/// whitened over every response token of the batch.
pub fn reinforce_pp_advantages(scores: &[f64], groups: &[usize], baseline: bool, kl: &[Vec<f32>], mask: &[Vec<bool>], beta: f64) -> Vec<Vec<f32>> {
    let scores = if baseline { group_advantages(scores, groups, GroupBaseline::Mean, ScaleRewards::None) } else { scores.to_vec() };
    let rewards: Vec<Vec<f32>> = kl
        .iter()
        .zip(mask)
        .zip(&scores)
        .map(|((kl, mask), &score)| {
            let mut r: Vec<f32> = kl.iter().zip(mask).map(|(&k, &m)| if m { (-beta * f64::from(k)) as f32 } else { 0.0 }).collect();
            if let Some(last) = mask.iter().rposition(|&m| m) {
                r[last] += score as f32;
            }
            r
        })
        .collect();
    whiten(&returns_to_go(&rewards, mask, 1.0), mask)
}

/// A sequence's reward with the KL placed in it: r − β·Σ_t k1_t.
pub fn kl_penalized(reward: f64, kl_sum: f64, beta: f64) -> f64 {
    reward - beta * kl_sum
}

/// Sequence advantages spread over each response's tokens (0 on padding).
pub fn per_token(advantages: &[f64], mask: &[Vec<bool>]) -> Vec<Vec<f32>> {
    advantages.iter().zip(mask).map(|(&a, m)| m.iter().map(|&on| if on { a as f32 } else { 0.0 }).collect()).collect()
}

/// Per group id, whether all its rewards are equal (no learning signal in GRPO); groups are 0..=max.
pub fn zero_std_groups(rewards: &[f64], groups: &[usize]) -> Vec<bool> {
    let n = groups.iter().max().map_or(0, |g| g + 1);
    (0..n)
        .map(|g| {
            let members: Vec<f64> = rewards.iter().zip(groups).filter(|(_, &h)| h == g).map(|(&r, _)| r).collect();
            members.windows(2).all(|w| w[0] == w[1])
        })
        .collect()
}

/// TRL's `reward_std`: the mean over groups of the group's (unbiased) reward std.
pub fn mean_group_std(rewards: &[f64], groups: &[usize]) -> f64 {
    let n = groups.iter().max().map_or(0, |g| g + 1);
    let stds: Vec<f64> = (0..n)
        .map(|g| {
            let m: Vec<f64> = rewards.iter().zip(groups).filter(|(_, &h)| h == g).map(|(&r, _)| r).collect();
            if m.len() < 2 {
                return 0.0;
            }
            let mean = m.iter().sum::<f64>() / m.len() as f64;
            (m.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (m.len() - 1) as f64).sqrt()
        })
        .collect();
    stds.iter().sum::<f64>() / (n.max(1)) as f64
}

/// The KL loss term per token: β·kl_t, times the detached ratio π/π_old when importance-weighted.
///
/// # Shapes
/// - `logp`, `ref_logp`, `old_logp`: [rows, len] → [rows, len]
pub fn kl_loss<B: Backend>(logp: Tensor<B, 2>, ref_logp: Tensor<B, 2>, old_logp: Tensor<B, 2>, estimator: KlEstimator, beta: f64, importance_weighted: bool) -> Tensor<B, 2> {
    let kl = kl_per_token(logp.clone(), ref_logp, estimator) * beta;
    if importance_weighted {
        kl * (logp.detach() - old_logp).exp()
    } else {
        kl
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    type B = rlhf_runtime::Cpu;
    type AD = rlhf_runtime::CpuTrain;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-5
    }

    fn t2<BB: Backend>(v: &[f32], shape: [usize; 2]) -> Tensor<BB, 2> {
        Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
    }

    /// The issue's examples through the estimator switch, and ReMax's greedy baseline.
    #[test]
    fn estimators_by_hand() {
        let (r, g) = ([1.0, 0.0, 0.0, 0.0], [0; 4]);
        let got = |e| sequence_advantages(e, &r, &g, ScaleRewards::Group, Some(&[0.5])).unwrap();
        let want_grpo = [1.5, -0.5, -0.5, -0.5];
        assert!(got(Estimator::Grpo).iter().zip(want_grpo).all(|(a, b)| close(*a, b)));
        // Dr. GRPO ignores scale_rewards: no std.
        assert_eq!(got(Estimator::DrGrpo), vec![0.75, -0.25, -0.25, -0.25]);
        let rloo = got(Estimator::Rloo);
        assert!(close(rloo[0], 1.0) && close(rloo[1], -1.0 / 3.0));
        assert_eq!(got(Estimator::Remax), vec![0.5, -0.5, -0.5, -0.5]);
        assert!(sequence_advantages(Estimator::ReinforcePp, &r, &g, ScaleRewards::Group, None).is_none());
    }

    /// Two one-token... two responses: row 0 has 2 tokens with k1 = [0.2, 0.4], row 1 one token with
    /// k1 = [1.0]; scores 1 and 0; β = 0.5.
    /// Per-token rewards: row 0 [−0.1, −0.2 + 1] = [−0.1, 0.8]; row 1 [−0.5 + 0] = [−0.5].
    /// Returns to go: row 0 [0.7, 0.8]; row 1 [−0.5]. Whitened over the three tokens: mean 1/3,
    /// population var ((0.7−1/3)² + (0.8−1/3)² + (−0.5−1/3)²)/3 = (0.13444 + 0.21778 + 0.69444)/3 = 0.34889.
    /// With the baseline the scores become [0.5, −0.5]: rewards [−0.1, 0.3], [−1.0]; returns [0.2, 0.3], [−1.0].
    #[test]
    fn reinforce_pp_by_hand() {
        let kl = vec![vec![0.2, 0.4], vec![1.0, 9.0]];
        let mask = vec![vec![true, true], vec![true, false]];
        let a = reinforce_pp_advantages(&[1.0, 0.0], &[0, 0], false, &kl, &mask, 0.5);
        let (mean, sd) = (1.0 / 3.0, 0.348_888_9f64.sqrt());
        for (got, want) in [(a[0][0], 0.7), (a[0][1], 0.8), (a[1][0], -0.5)] {
            assert!(close(f64::from(got), (want - mean) / sd), "{a:?}");
        }
        assert_eq!(a[1][1], 0.0);
        let b = reinforce_pp_advantages(&[1.0, 0.0], &[0, 0], true, &kl, &mask, 0.5);
        let vals = [0.2, 0.3, -1.0];
        let m = vals.iter().sum::<f64>() / 3.0;
        let s = (vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / 3.0).sqrt();
        for (got, want) in [(b[0][0], 0.2), (b[0][1], 0.3), (b[1][0], -1.0)] {
            assert!(close(f64::from(got), (want - m) / s), "{b:?}");
        }
    }

    #[test]
    fn kl_in_the_reward_and_over_tokens() {
        assert!(close(kl_penalized(1.0, 0.6, 0.5), 0.7));
        assert_eq!(per_token(&[2.0, -1.0], &[vec![true, true], vec![true, false]]), vec![vec![2.0, 2.0], vec![-1.0, 0.0]]);
    }

    /// Groups 0 = [1, 1, 1] (no spread), 1 = [0, 2]: std of 1 is √2 (unbiased), so reward_std = √2/2.
    #[test]
    fn zero_std_groups_and_reward_std() {
        let (r, g) = ([1.0, 1.0, 1.0, 0.0, 2.0], [0, 0, 0, 1, 1]);
        assert_eq!(zero_std_groups(&r, &g), vec![true, false]);
        assert!(close(mean_group_std(&r, &g), 2f64.sqrt() / 2.0));
    }

    /// β = 0.5, k3 at log π − log π_ref = ln 2 (π_ref/π = 1/2): (0.5 − 1) − ln 0.5 = 0.193147;
    /// × β = 0.0965736. Importance-weighted with π/π_old = e^{0.1}: × 1.105171 = 0.106731.
    /// Its gradient by log π: β·(1 − π_ref/π) = 0.5·0.5 = 0.25 (the weight is detached: × e^{0.1}).
    #[test]
    fn kl_loss_by_hand() {
        let logp = [2f32.ln()];
        let v = kl_loss(t2::<B>(&logp, [1, 1]), t2(&[0.0], [1, 1]), t2(&[2f32.ln() - 0.1], [1, 1]), KlEstimator::K3, 0.5, false).into_scalar();
        assert!(close(f64::from(v), 0.096_573_6));
        let x = t2::<AD>(&logp, [1, 1]).require_grad();
        let w = kl_loss(x.clone(), t2(&[0.0], [1, 1]), t2(&[2f32.ln() - 0.1], [1, 1]), KlEstimator::K3, 0.5, true);
        assert!(close(f64::from(w.clone().into_scalar()), 0.096_573_6 * 0.1f64.exp()));
        let g = x.grad(&w.sum().backward()).unwrap().into_scalar();
        assert!(close(f64::from(g), 0.25 * 0.1f64.exp()));
    }
}

//! Advantage estimators. PPO's GAE over per-token rewards and values; whitening; and the
//! critic-free, group-relative ones, which compare the `n` responses sampled for the same prompt
//! (a group) instead of asking a critic:
//!
//! ```text
//! GRPO         A_i = (r_i − mean_g) / (std_g + eps)      std with Bessel's correction (n − 1)
//! Dr. GRPO     A_i =  r_i − mean_g                        (its constant normaliser is in the loss)
//! RLOO         A_i =  r_i − mean_{j≠i, j∈g} r_j  =  n/(n−1) · (r_i − mean_g)
//! ReMax        A_i =  r_i − r_greedy(g)                   (one greedy rollout per prompt)
//! REINFORCE++  per-token rewards (score − β·k1) → returns to go → whitened over the whole batch
//! ```
//!
//! Where the peers differ, the choice here: GRPO's std is the unbiased one (n − 1), as in TRL and
//! verl (`torch.std`), and eps = 1e-6 is added to it (TRL 1e-4, verl 1e-6). A group of one response
//! has no spread: its advantage is 0 in every estimator.

use serde::{Deserialize, Serialize};

/// Generalised advantage estimation over each row's response tokens. The state after the last
/// response token is terminal (V = 0); masked positions get advantage and return 0.
/// Returns (advantages, returns = advantages + values).
pub fn gae(rewards: &[Vec<f32>], values: &[Vec<f32>], mask: &[Vec<bool>], gamma: f64, lam: f64) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut advantages = Vec::with_capacity(rewards.len());
    let mut returns = Vec::with_capacity(rewards.len());
    for ((r, v), m) in rewards.iter().zip(values).zip(mask) {
        let len = r.len();
        let (mut adv, mut ret) = (vec![0.0f32; len], vec![0.0f32; len]);
        let (mut next_value, mut next_adv) = (0.0f64, 0.0f64);
        for t in (0..len).rev() {
            if !m[t] {
                continue;
            }
            let delta = f64::from(r[t]) + gamma * next_value - f64::from(v[t]);
            next_adv = delta + gamma * lam * next_adv;
            next_value = f64::from(v[t]);
            adv[t] = next_adv as f32;
            ret[t] = (next_adv + f64::from(v[t])) as f32;
        }
        advantages.push(adv);
        returns.push(ret);
    }
    (advantages, returns)
}

/// Σ_{k ≥ t} γ^(k−t) r_k over each row's masked tokens (REINFORCE's return); masked positions 0.
pub fn returns_to_go(rewards: &[Vec<f32>], mask: &[Vec<bool>], gamma: f64) -> Vec<Vec<f32>> {
    rewards
        .iter()
        .zip(mask)
        .map(|(r, m)| {
            let mut out = vec![0.0f32; r.len()];
            let mut running = 0.0f64;
            for t in (0..r.len()).rev() {
                if m[t] {
                    running = f64::from(r[t]) + gamma * running;
                    out[t] = running as f32;
                }
            }
            out
        })
        .collect()
}

/// (x − mean) / std over the masked entries (population variance); masked-out entries become 0.
pub fn whiten(x: &[Vec<f32>], mask: &[Vec<bool>]) -> Vec<Vec<f32>> {
    let picked = || x.iter().flatten().zip(mask.iter().flatten()).filter(|(_, &m)| m).map(|(&v, _)| f64::from(v));
    let n = picked().count().max(1) as f64;
    let mean = picked().sum::<f64>() / n;
    let var = picked().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let inv_std = 1.0 / (var + 1e-8).sqrt();
    x.iter()
        .zip(mask)
        .map(|(row, m)| row.iter().zip(m).map(|(&v, &on)| if on { ((f64::from(v) - mean) * inv_std) as f32 } else { 0.0 }).collect())
        .collect()
}

/// The baseline a group-relative advantage subtracts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBaseline {
    /// The group's mean reward (GRPO, Dr. GRPO).
    Mean,
    /// The mean of the group's other rewards (RLOO).
    LeaveOneOut,
}

/// What a group-relative advantage is divided by (TRL's `scale_rewards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleRewards {
    /// The group's std (GRPO).
    #[default]
    Group,
    /// The std of every reward in the batch (the group mean still subtracted).
    Batch,
    /// Nothing (Dr. GRPO, RLOO).
    None,
}

/// The std eps of GRPO's denominator.
pub const STD_EPS: f64 = 1e-6;

/// Mean and unbiased std (n − 1; 0 for a single value) of `values`.
fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n.max(1.0);
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// One advantage per response from its reward and its group (`groups[i]`: the prompt row `i` was
/// sampled for; any ids, rows of a group need not be adjacent). See the module docs for each
/// combination: (Mean, Group) is GRPO, (Mean, None) Dr. GRPO, (LeaveOneOut, None) RLOO.
pub fn group_advantages(rewards: &[f64], groups: &[usize], baseline: GroupBaseline, scale: ScaleRewards) -> Vec<f64> {
    let members = |g: usize| -> Vec<f64> { rewards.iter().zip(groups).filter(|(_, &h)| h == g).map(|(&r, _)| r).collect() };
    let (_, batch_std) = mean_std(rewards);
    rewards
        .iter()
        .zip(groups)
        .map(|(&r, &g)| {
            let group = members(g);
            let n = group.len() as f64;
            if group.len() < 2 {
                return 0.0;
            }
            let (mean, std) = mean_std(&group);
            let centred = match baseline {
                GroupBaseline::Mean => r - mean,
                GroupBaseline::LeaveOneOut => r - (mean * n - r) / (n - 1.0),
            };
            match scale {
                ScaleRewards::Group => centred / (std + STD_EPS),
                ScaleRewards::Batch => centred / (batch_std + STD_EPS),
                ScaleRewards::None => centred,
            }
        })
        .collect()
}

/// ReMax: each response's reward minus the reward of its group's greedy response
/// (`greedy[g]`, indexed by group id).
pub fn remax_advantages(rewards: &[f64], groups: &[usize], greedy: &[f64]) -> Vec<f64> {
    rewards.iter().zip(groups).map(|(&r, &g)| r - greedy[g]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-5
    }

    fn rows_close(got: &[Vec<f32>], want: &[&[f64]]) {
        for (g, w) in got.iter().zip(want) {
            for (a, b) in g.iter().zip(w.iter()) {
                assert!(close(f64::from(*a), *b), "{got:?} vs {want:?}");
            }
        }
    }

    fn all_close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        assert!(got.iter().zip(want).all(|(a, b)| close(*a, *b)), "{got:?} vs {want:?}");
    }

    #[test]
    fn gae_for_two_responses_of_different_lengths() {
        // γ = 0.9, λ = 0.5.
        // Row 0 (3 tokens): r = [0, 0, 1], V = [0.5, 0.6, 0.7]
        //   δ2 = 1 − 0.7 = 0.3                     A2 = 0.3
        //   δ1 = 0 + 0.9·0.7 − 0.6 = 0.03          A1 = 0.03 + 0.45·0.3 = 0.165
        //   δ0 = 0 + 0.9·0.6 − 0.5 = 0.04          A0 = 0.04 + 0.45·0.165 = 0.11425
        // Row 1 (1 token, then padding whose values must not leak in): r = [2], V = [1.5]
        //   A0 = 2 − 1.5 = 0.5
        let rewards = vec![vec![0.0, 0.0, 1.0], vec![2.0, 0.0, 0.0]];
        let values = vec![vec![0.5, 0.6, 0.7], vec![1.5, 7.0, 7.0]];
        let mask = vec![vec![true, true, true], vec![true, false, false]];
        let (adv, ret) = gae(&rewards, &values, &mask, 0.9, 0.5);
        rows_close(&adv, &[&[0.11425, 0.165, 0.3], &[0.5, 0.0, 0.0]]);
        rows_close(&ret, &[&[0.61425, 0.765, 1.0], &[2.0, 0.0, 0.0]]);
        // γ = λ = 1: advantages are reward-to-go minus the value.
        let (adv, _) = gae(&rewards, &values, &mask, 1.0, 1.0);
        rows_close(&adv, &[&[0.5, 0.4, 0.3], &[0.5, 0.0, 0.0]]);
    }

    #[test]
    fn whitening_uses_only_masked_entries() {
        // Masked entries 1, 2, 3, 6: mean 3, population variance (4 + 1 + 0 + 9)/4 = 3.5.
        let x = vec![vec![1.0, 2.0, 100.0], vec![3.0, 6.0, -50.0]];
        let mask = vec![vec![true, true, false], vec![true, true, false]];
        let w = whiten(&x, &mask);
        let s = 3.5f64.sqrt();
        rows_close(&w, &[&[-2.0 / s, -1.0 / s, 0.0], &[0.0, 3.0 / s, 0.0]]);
    }

    /// γ = 0.5: r = [1, 2, 4] → [1 + 0.5·(2 + 0.5·4), 2 + 0.5·4, 4] = [3, 4, 4]; padding stays 0.
    #[test]
    fn returns_to_go_by_hand() {
        let r = returns_to_go(&[vec![1.0, 2.0, 4.0], vec![5.0, 9.0, 9.0]], &[vec![true; 3], vec![true, false, false]], 0.5);
        rows_close(&r, &[&[3.0, 4.0, 4.0], &[5.0, 0.0, 0.0]]);
    }

    /// The issue's example, one group of 4 with rewards [1, 0, 0, 0]: mean 0.25, unbiased std
    /// √((0.75² + 3·0.25²)/3) = √0.25 = 0.5 → GRPO [1.5, −0.5, −0.5, −0.5] (eps 1e-6 moves it by
    /// 3e-6); RLOO: 1 − 0 = 1 and 0 − 1/3 → [1, −1/3, −1/3, −1/3]; Dr. GRPO: [0.75, −0.25, …].
    #[test]
    fn grpo_rloo_and_dr_grpo_by_hand() {
        let (r, g) = ([1.0, 0.0, 0.0, 0.0], [0, 0, 0, 0]);
        all_close(&group_advantages(&r, &g, GroupBaseline::Mean, ScaleRewards::Group), &[1.5, -0.5, -0.5, -0.5]);
        all_close(&group_advantages(&r, &g, GroupBaseline::LeaveOneOut, ScaleRewards::None), &[1.0, -1.0 / 3.0, -1.0 / 3.0, -1.0 / 3.0]);
        all_close(&group_advantages(&r, &g, GroupBaseline::Mean, ScaleRewards::None), &[0.75, -0.25, -0.25, -0.25]);
    }

    /// Two interleaved groups: a = rows 0, 2 (rewards 2, 0), b = rows 1, 3 (rewards 5, 5). Group a:
    /// mean 1, std √2 → ±1/√2; group b has no spread → 0. Batch scaling divides a's ±1 by the std of
    /// all four rewards [2, 5, 0, 5] (mean 3, unbiased var (1 + 4 + 9 + 4)/3 = 6).
    #[test]
    fn groups_need_not_be_adjacent_and_batch_scaling_uses_every_reward() {
        let (r, g) = ([2.0, 5.0, 0.0, 5.0], [7, 3, 7, 3]);
        let s = 2f64.sqrt();
        all_close(&group_advantages(&r, &g, GroupBaseline::Mean, ScaleRewards::Group), &[1.0 / s, 0.0, -1.0 / s, 0.0]);
        let b = 6f64.sqrt();
        all_close(&group_advantages(&r, &g, GroupBaseline::Mean, ScaleRewards::Batch), &[1.0 / b, 0.0, -1.0 / b, 0.0]);
        // A group of one has no spread.
        all_close(&group_advantages(&[3.0], &[0], GroupBaseline::LeaveOneOut, ScaleRewards::None), &[0.0]);
    }

    /// RLOO is n/(n−1) × the mean-baseline advantage: n = 3, rewards [3, 0, 0]: mean 1 → [2, −1, −1]
    /// × 3/2 = [3, −1.5, −1.5]; leave-one-out directly: 3 − 0, 0 − 1.5, 0 − 1.5.
    #[test]
    fn rloo_is_the_rescaled_mean_baseline() {
        all_close(&group_advantages(&[3.0, 0.0, 0.0], &[0; 3], GroupBaseline::LeaveOneOut, ScaleRewards::None), &[3.0, -1.5, -1.5]);
    }

    #[test]
    fn remax_subtracts_the_greedy_reward_of_the_group() {
        all_close(&remax_advantages(&[1.0, 0.0, 0.5], &[0, 0, 1], &[0.25, 1.0]), &[0.75, -0.25, -0.5]);
    }
}

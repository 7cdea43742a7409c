//! The PPO-ptx objective, one small function per term (InstructGPT §3.5, Ziegler et al. 2019,
//! Schulman et al. 2017):
//!
//! ```text
//! kl_t      = log π(a_t|s_t) − log π_ref(a_t|s_t)                      (k1; k2, k3 selectable)
//! r_t       = −β·kl_t  (+ RM score on the last response token)
//! δ_t       = r_t + γ·V(s_{t+1}) − V(s_t),   A_t = δ_t + γλ·A_{t+1},   R_t = A_t + V(s_t)
//! L_policy  = −mean_t min(ρ_t·A_t, clip(ρ_t, 1−ε, 1+ε)·A_t),  ρ_t = π/π_old
//! L_value   = ½·mean_t max((V − R)², (V_old + clip(V − V_old, ±ε_v) − R)²)
//! L_actor   = L_policy − c_ent·H  + γ_ptx·L_ptx  (or (1−c)·L_ppo + c·L_ptx, ColossalChat's form)
//! ```
//!
//! The KL estimators, GAE and whitening are shared with the other stage-3 estimators (`rlhf-rl`).
//! Host-side pieces (reward shaping, GAE, whitening) work on rows of one rollout: every response
//! token of row `i` is a column `t` with `mask[i][t]` set; padding after a response has stopped is
//! masked out. Device-side pieces (the losses) take `[rows, response_len]` tensors.

use burn::tensor::Tensor;
use rlhf_runtime::Backend;
use serde::{Deserialize, Serialize};

pub use rlhf_rl::{gae, kl_per_token, whiten, KlEstimator};

/// Per-token rewards: −β·kl on every response token, plus the sequence's score on its last
/// response token only. Masked positions get 0.
pub fn shaped_rewards(kl: &[Vec<f32>], mask: &[Vec<bool>], scores: &[f32], beta: f64) -> Vec<Vec<f32>> {
    kl.iter()
        .zip(mask)
        .zip(scores)
        .map(|((kl, mask), &score)| {
            let mut r: Vec<f32> = kl.iter().zip(mask).map(|(&k, &m)| if m { (-beta * f64::from(k)) as f32 } else { 0.0 }).collect();
            if let Some(last) = mask.iter().rposition(|&m| m) {
                r[last] += score;
            }
            r
        })
        .collect()
}

/// The RM score as the environment's reward: divided by the reference std when given (the RM's
/// `reward.json`; its mean was already moved to 0), then clipped to ±`clip` (0 = no clip).
pub fn normalize_score(raw: f32, std: Option<f64>, clip: f64) -> f32 {
    let s = rlhf_model::reward_info::scaled_score(raw, std);
    (if clip > 0.0 { s.clamp(-clip, clip) } else { s }) as f32
}

/// Clipped surrogate policy loss, summed over masked tokens and divided by `normalizer` (the
/// minibatch's response tokens, so micro-batch losses add up to the token mean).
///
/// Also returns, for logging, `[Σ clipped, Σ approx_kl, max ratio]` over masked tokens, where a
/// token is clipped when |ρ − 1| > ε and approx_kl = (ρ − 1) − log ρ (k3 of π_old vs π).
///
/// # Shapes
/// - `logp`, `old_logp`, `advantages`, `mask`: [rows, len] → ([1], [3])
pub fn policy_loss<B: Backend>(
    logp: Tensor<B, 2>,
    old_logp: Tensor<B, 2>,
    advantages: Tensor<B, 2>,
    mask: Tensor<B, 2>,
    clip_eps: f64,
    normalizer: f64,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let log_ratio = logp - old_logp;
    let ratio = log_ratio.clone().exp();
    let unclipped = ratio.clone() * advantages.clone();
    let clipped = ratio.clone().clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantages;
    let loss = (unclipped.min_pair(clipped).neg() * mask.clone()).sum() / normalizer;

    let ratio = ratio.detach();
    let clip_count = ((ratio.clone() - 1.0).abs().greater_elem(clip_eps).float() * mask.clone()).sum();
    let approx_kl = ((ratio.clone() - 1.0 - log_ratio.detach()) * mask.clone()).sum();
    // Masked tokens count as ratio 0 for the max (ratios are positive).
    let ratio_max = (ratio * mask).max();
    (loss, Tensor::cat(vec![clip_count, approx_kl, ratio_max], 0))
}

/// Clipped value loss ½·max((V − R)², (V_old + clip(V − V_old, ±ε_v) − R)²), summed over masked
/// tokens and divided by `normalizer`. `value_clip` = 0 turns the clipping off.
///
/// # Shapes
/// - all inputs [rows, len] → [1]
pub fn value_loss<B: Backend>(
    values: Tensor<B, 2>,
    old_values: Tensor<B, 2>,
    returns: Tensor<B, 2>,
    mask: Tensor<B, 2>,
    value_clip: f64,
    normalizer: f64,
) -> Tensor<B, 1> {
    let unclipped = (values.clone() - returns.clone()).powi_scalar(2);
    let per_token = if value_clip > 0.0 {
        let clipped_values = old_values.clone() + (values - old_values).clamp(-value_clip, value_clip);
        unclipped.max_pair((clipped_values - returns).powi_scalar(2))
    } else {
        unclipped
    };
    (per_token * mask).sum() * (0.5 / normalizer)
}

/// How the pretraining loss joins the PPO loss in the actor's update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PtxMode {
    /// L_ppo + γ·L_ptx: the ptx gradients are accumulated onto the PPO gradients (InstructGPT).
    #[default]
    Accumulate,
    /// (1 − c)·L_ppo + c·L_ptx (ColossalChat's `ptx_coef`).
    Convex,
}

/// Weights (w_ppo, w_ptx) of the actor's two losses.
pub fn ptx_weights(mode: PtxMode, coef: f64) -> (f64, f64) {
    match mode {
        PtxMode::Accumulate => (1.0, coef),
        PtxMode::Convex => (1.0 - coef, coef),
    }
}

/// The adaptive KL controller of Ziegler et al. (2019): β is nudged so the observed KL tracks
/// `target`, at a rate set by `horizon` (in samples).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveKl {
    pub value: f64,
    pub target: f64,
    pub horizon: f64,
}

impl AdaptiveKl {
    /// β ← β·(1 + clip(kl/target − 1, ±0.2)·samples/horizon).
    pub fn update(&mut self, observed_kl: f64, samples: usize) {
        let error = (observed_kl / self.target - 1.0).clamp(-0.2, 0.2);
        self.value *= 1.0 + error * samples as f64 / self.horizon;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    type B = rlhf_runtime::Cpu;
    type AD = rlhf_runtime::CpuTrain;

    fn t2<BB: Backend>(v: &[f32], shape: [usize; 2]) -> Tensor<BB, 2> {
        Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
    }

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

    #[test]
    fn rewards_are_kl_per_token_and_the_score_on_the_last_token_only() {
        // Row 0: 3 response tokens; row 1: 1 token then padding (whose KL entries are garbage).
        let kl = vec![vec![0.1, -0.2, 0.3], vec![0.4, 9.0, 9.0]];
        let mask = vec![vec![true, true, true], vec![true, false, false]];
        let r = shaped_rewards(&kl, &mask, &[2.0, -1.0], 0.5);
        rows_close(&r, &[&[-0.05, 0.1, -0.15 + 2.0], &[-0.2 - 1.0, 0.0, 0.0]]);
    }

    #[test]
    fn scores_are_normalised_then_clipped() {
        assert_eq!(normalize_score(3.0, Some(2.0), 0.0), 1.5);
        assert_eq!(normalize_score(30.0, Some(2.0), 5.0), 5.0);
        assert_eq!(normalize_score(-30.0, None, 5.0), -5.0);
        assert_eq!(normalize_score(1.0, Some(0.0), 5.0), 1.0); // degenerate std: left alone
    }

    #[test]
    fn policy_loss_inside_and_outside_the_clip_range() {
        let eps = 0.2;
        let old = [0.0f32; 4];
        // ratios 1.1 (inside), 1.5 (above, A > 0: clipped to 1.2), 0.5 (below, A > 0: unclipped
        // min keeps 0.5), 1.5 with A < 0 (the min keeps the unclipped, more pessimistic 1.5·A).
        let ratios = [1.1f32, 1.5, 0.5, 1.5];
        let logp: Vec<f32> = ratios.iter().map(|r| r.ln()).collect();
        let adv = [1.0f32, 2.0, 1.0, -1.0];
        let mask = [1.0f32, 1.0, 1.0, 1.0];
        let (loss, stats) = policy_loss(t2::<B>(&logp, [1, 4]), t2(&old, [1, 4]), t2(&adv, [1, 4]), t2(&mask, [1, 4]), eps, 4.0);
        let want = -(1.1 * 1.0 + 1.2 * 2.0 + 0.5 * 1.0 - 1.5 * 1.0) / 4.0;
        assert!(close(loss.into_scalar().into(), want));
        let st = stats.into_data().to_vec::<f32>().unwrap();
        assert_eq!(st[0], 3.0); // |ρ − 1| > 0.2 for 1.5, 0.5, 1.5
        let k3: f64 = ratios.iter().map(|&r| f64::from(r) - 1.0 - f64::from(r).ln()).sum();
        assert!(close(st[1].into(), k3));
        assert!(close(st[2].into(), 1.5));
        // Masked tokens change nothing.
        let (masked, _) = policy_loss(
            t2::<B>(&[logp[0], 5.0], [1, 2]),
            t2(&[0.0, 0.0], [1, 2]),
            t2(&[1.0, 100.0], [1, 2]),
            t2(&[1.0, 0.0], [1, 2]),
            eps,
            1.0,
        );
        assert!(close(masked.into_scalar().into(), -1.1));
    }

    #[test]
    fn clipped_tokens_pass_no_gradient() {
        // ρ = 1.5 > 1 + ε with A > 0: the clipped term wins the min and is constant in θ.
        let logp = t2::<AD>(&[1.5f32.ln(), 1.1f32.ln()], [1, 2]).require_grad();
        let (loss, _) = policy_loss(logp.clone(), t2(&[0.0, 0.0], [1, 2]), t2(&[1.0, 1.0], [1, 2]), t2(&[1.0, 1.0], [1, 2]), 0.2, 1.0);
        let g = logp.grad(&loss.backward()).unwrap().into_data().to_vec::<f32>().unwrap();
        assert_eq!(g[0], 0.0);
        assert!(close(g[1].into(), -1.1)); // d(−ρ·A)/d log π = −ρ·A
    }

    #[test]
    fn value_loss_inside_and_outside_the_clip_range() {
        // Token 0: V moved 0.1 from V_old (inside ε_v = 0.2): ½(V − R)² = ½·0.3² = 0.045.
        // Token 1: V moved 1.0 (outside): clipped V = 0.2, R = 1.0 → max(0, 0.64) → ½·0.64 = 0.32.
        let v = t2::<B>(&[0.6, 1.0], [1, 2]);
        let old = t2::<B>(&[0.5, 0.0], [1, 2]);
        let ret = t2::<B>(&[0.9, 1.0], [1, 2]);
        let mask = t2::<B>(&[1.0, 1.0], [1, 2]);
        let got = value_loss(v.clone(), old.clone(), ret.clone(), mask.clone(), 0.2, 2.0).into_scalar();
        assert!(close(got.into(), (0.045 + 0.32) / 2.0));
        // Without clipping, token 1 has no error.
        let got = value_loss(v, old, ret, mask, 0.0, 2.0).into_scalar();
        assert!(close(got.into(), 0.045 / 2.0));
    }

    #[test]
    fn ptx_accumulation_vs_convex() {
        assert_eq!(ptx_weights(PtxMode::Accumulate, 0.3), (1.0, 0.3));
        assert_eq!(ptx_weights(PtxMode::Convex, 0.3), (0.7, 0.3));
        // Accumulating the two losses' gradients (two backward passes, summed as our accumulator
        // does) equals the gradient of the weighted sum.
        let x = t2::<AD>(&[0.5, -1.0], [1, 2]).require_grad();
        let (w_ppo, w_ptx) = ptx_weights(PtxMode::Convex, 0.25);
        let ppo = |x: Tensor<AD, 2>| x.powi_scalar(2).sum();
        let ptx = |x: Tensor<AD, 2>| (x * 3.0).sum();
        let g1 = x.grad(&(ppo(x.clone()) * w_ppo).backward()).unwrap();
        let g2 = x.grad(&(ptx(x.clone()) * w_ptx).backward()).unwrap();
        let summed = (g1 + g2).into_data().to_vec::<f32>().unwrap();
        let joint = x.grad(&(ppo(x.clone()) * w_ppo + ptx(x.clone()) * w_ptx).backward()).unwrap().into_data().to_vec::<f32>().unwrap();
        assert_eq!(summed, joint);
        // d/dx [0.75·x² + 0.25·3x] = 1.5x + 0.75
        assert!(close(joint[0].into(), 1.5) && close(joint[1].into(), -0.75));
    }

    #[test]
    fn adaptive_kl_moves_towards_the_target() {
        let mut c = AdaptiveKl { value: 0.1, target: 6.0, horizon: 10_000.0 };
        c.update(12.0, 64); // error clipped to +0.2
        assert!(close(c.value, 0.1 * (1.0 + 0.2 * 64.0 / 10_000.0)));
        let mut c = AdaptiveKl { value: 0.1, target: 6.0, horizon: 10_000.0 };
        c.update(5.4, 100); // error −0.1
        assert!(close(c.value, 0.1 * (1.0 - 0.1 * 100.0 / 10_000.0)));
    }
}

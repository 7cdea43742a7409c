//! The policy-gradient loss of the critic-free estimators, term by term: the clipped surrogate with
//! asymmetric (DAPO's clip-higher) and dual clipping, and the ways per-token losses become one number.
//!
//! ```text
//! ρ_t = π/π_old
//! o_t = min(ρ_t·A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high)·A_t)
//! o_t = max(o_t, c·A_t)   where A_t < 0, with dual clip c > 1 (Ye et al. 2020)
//! loss_t = −o_t
//! ```
//!
//! Aggregation (`loss_aggregation`), over the response tokens of the whole optimizer step — every
//! divisor is a count of the step, not of the micro-batch, so micro-batch losses add up to it:
//!
//! | mode | loss | used by |
//! |---|---|---|
//! | `token_mean` | Σ_i Σ_t loss / (tokens of the step) | DAPO, TRL's default |
//! | `seq_mean_token_mean` | Σ_i (Σ_t loss / len_i) / (sequences of the step) | GRPO as published |
//! | `seq_mean_token_sum` | Σ_i Σ_t loss / (sequences of the step) | |
//! | `seq_mean_token_sum_norm` | Σ_i Σ_t loss / (L · sequences of the step), L = the generation budget | Dr. GRPO |

use burn::tensor::Tensor;
use rlhf_runtime::Backend;
use serde::{Deserialize, Serialize};

/// How per-token losses become the step's loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossAggregation {
    #[default]
    TokenMean,
    SeqMeanTokenMean,
    SeqMeanTokenSum,
    SeqMeanTokenSumNorm,
}

/// The counts of an optimizer step the aggregation divides by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepCounts {
    /// Response tokens of the step.
    pub tokens: f64,
    /// Responses of the step.
    pub sequences: f64,
    /// The generation budget (`max_new_tokens`): Dr. GRPO's constant.
    pub max_len: f64,
}

/// The micro-batch's share of the step's loss.
///
/// # Shapes
/// - `per_token`, `mask`: [rows, len] → [1]
pub fn aggregate<B: Backend>(per_token: Tensor<B, 2>, mask: Tensor<B, 2>, mode: LossAggregation, step: StepCounts) -> Tensor<B, 1> {
    let masked = per_token * mask.clone();
    match mode {
        LossAggregation::TokenMean => masked.sum() / step.tokens.max(1.0),
        LossAggregation::SeqMeanTokenMean => (masked.sum_dim(1) / mask.sum_dim(1).clamp_min(1.0)).sum() / step.sequences.max(1.0),
        LossAggregation::SeqMeanTokenSum => masked.sum() / step.sequences.max(1.0),
        LossAggregation::SeqMeanTokenSumNorm => masked.sum() / (step.max_len.max(1.0) * step.sequences.max(1.0)),
    }
}

/// The clip range and the dual clip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clip {
    pub low: f64,
    pub high: f64,
    /// c > 1, or None.
    pub dual: Option<f64>,
}

/// −o_t per token (module docs), and for logging two 0/1 tensors: tokens clipped at the low end
/// (ρ < 1 − ε_low with A < 0) and at the high end (ρ > 1 + ε_high with A > 0), TRL's
/// `clip_ratio/low` and `clip_ratio/high`.
///
/// # Shapes
/// - `logp`, `old_logp`, `advantages`: [rows, len] → three [rows, len]
pub fn clipped_policy_loss<B: Backend>(logp: Tensor<B, 2>, old_logp: Tensor<B, 2>, advantages: Tensor<B, 2>, clip: Clip) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>) {
    let ratio = (logp - old_logp).exp();
    let unclipped = ratio.clone() * advantages.clone();
    let clipped = ratio.clone().clamp(1.0 - clip.low, 1.0 + clip.high) * advantages.clone();
    let mut objective = unclipped.min_pair(clipped);
    if let Some(c) = clip.dual {
        let negative = advantages.clone().lower_elem(0.0);
        objective = objective.clone().mask_where(negative, objective.max_pair(advantages.clone() * c));
    }
    let ratio = ratio.detach();
    let low = ratio.clone().lower_elem(1.0 - clip.low).bool_and(advantages.clone().lower_elem(0.0)).float();
    let high = ratio.greater_elem(1.0 + clip.high).bool_and(advantages.greater_elem(0.0)).float();
    (objective.neg(), low, high)
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

    fn host<const D: usize>(x: Tensor<B, D>) -> Vec<f32> {
        x.into_data().convert::<f32>().to_vec::<f32>().unwrap()
    }

    fn close(a: f32, b: f64) -> bool {
        (f64::from(a) - b).abs() < 1e-5
    }

    /// Two responses: row 0 has 3 tokens with losses [1, 2, 3], row 1 one token with loss 4 (then
    /// padding holding 9s). The step has 10 tokens and 4 sequences in all; L = 8.
    /// token_mean (1 + 2 + 3 + 4)/10 = 1; seq_mean_token_mean (6/3 + 4/1)/4 = 1.5;
    /// seq_mean_token_sum 10/4 = 2.5; seq_mean_token_sum_norm 10/(8·4) = 0.3125.
    #[test]
    fn aggregation_modes_by_hand() {
        let per_token = t2::<B>(&[1.0, 2.0, 3.0, 4.0, 9.0, 9.0], [2, 3]);
        let mask = t2::<B>(&[1.0, 1.0, 1.0, 1.0, 0.0, 0.0], [2, 3]);
        let step = StepCounts { tokens: 10.0, sequences: 4.0, max_len: 8.0 };
        let got = |mode| host(aggregate(per_token.clone(), mask.clone(), mode, step))[0];
        assert!(close(got(LossAggregation::TokenMean), 1.0));
        assert!(close(got(LossAggregation::SeqMeanTokenMean), 1.5));
        assert!(close(got(LossAggregation::SeqMeanTokenSum), 2.5));
        assert!(close(got(LossAggregation::SeqMeanTokenSumNorm), 0.3125));
    }

    /// ε_low = 0.2, ε_high = 0.28 (DAPO), four tokens:
    /// ρ = 1.5, A = 1:   min(1.5, 1.28) = 1.28 → loss −1.28, clipped high
    /// ρ = 1.25, A = 1:  inside the asymmetric range → −1.25 (a symmetric 0.2 would clip it)
    /// ρ = 0.5, A = −1:  min(−0.5, −0.8) = −0.8 → loss 0.8, clipped low
    /// ρ = 4, A = −1:    min(−4, −1.28) = −4; dual clip c = 3: max(−4, −3) = −3 → loss 3
    #[test]
    fn asymmetric_and_dual_clip_by_hand() {
        let ratios = [1.5f32, 1.25, 0.5, 4.0];
        let logp = t2::<B>(&ratios.map(f32::ln), [1, 4]);
        let old = t2::<B>(&[0.0; 4], [1, 4]);
        let adv = t2::<B>(&[1.0, 1.0, -1.0, -1.0], [1, 4]);
        let clip = Clip { low: 0.2, high: 0.28, dual: Some(3.0) };
        let (loss, low, high) = clipped_policy_loss(logp.clone(), old.clone(), adv.clone(), clip);
        let want = [-1.28, -1.25, 0.8, 3.0];
        assert!(host(loss).iter().zip(want).all(|(a, b)| close(*a, b)));
        assert_eq!(host(low), vec![0.0, 0.0, 1.0, 0.0]);
        assert_eq!(host(high), vec![1.0, 0.0, 0.0, 0.0]);
        // Without the dual clip the last token costs 4.
        let (loss, _, _) = clipped_policy_loss(logp, old, adv, Clip { dual: None, ..clip });
        assert!(close(host(loss)[3], 4.0));
    }

    /// Clipped tokens pass no gradient; an unclipped one passes −ρ·A to log π.
    #[test]
    fn clipped_tokens_pass_no_gradient() {
        let logp = t2::<AD>(&[1.5f32.ln(), 1.1f32.ln()], [1, 2]).require_grad();
        let (loss, _, _) = clipped_policy_loss(logp.clone(), t2(&[0.0, 0.0], [1, 2]), t2(&[1.0, 1.0], [1, 2]), Clip { low: 0.2, high: 0.2, dual: None });
        let g = logp.grad(&loss.sum().backward()).unwrap().into_data().to_vec::<f32>().unwrap();
        assert!(close(g[0], 0.0) && close(g[1], -1.1), "{g:?}");
    }
}

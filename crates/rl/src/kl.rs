//! The per-token KL to the reference, estimated from the sampled tokens' log-probabilities alone
//! (Schulman, "Approximating KL divergence", 2020). With r = π_ref/π at a token sampled from π:
//!
//! | estimator | value | E_π[value] | E_π[gradient] as a loss (tokens sampled from π, detached) |
//! |---|---|---|---|
//! | k1 | −log r = log π − log π_ref | KL(π‖π_ref): unbiased | E_π[∇log π] = 0: no KL gradient at all |
//! | k2 | ½ (log r)² | not the KL; ≥ 0 | E_π[(log π − log π_ref) ∇log π] = ∇KL(π‖π_ref): unbiased |
//! | k3 | (r − 1) − log r | KL(π‖π_ref): unbiased, ≥ 0 | E_π[(1 − r) ∇log π] = −E_ref[∇log π] = ∇KL(π_ref‖π): the other KL's gradient, biased |
//!
//! As a per-token *reward* (PPO's −β·kl_t) all three are used as numbers; the bias in the last column
//! concerns only putting the estimate into the loss and differentiating it.

use burn::tensor::Tensor;
use rlhf_runtime::Backend;
use serde::{Deserialize, Serialize};

/// How the per-token KL to the reference is estimated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    /// log π − log π_ref: an unbiased value, negative at some tokens (InstructGPT, TRL's default).
    #[default]
    K1,
    /// ½ (log π − log π_ref)²: never negative; a biased value, but as a loss its gradient is the
    /// KL's (module docs).
    K2,
    /// (π_ref/π − 1) − log(π_ref/π): an unbiased value, never negative; as a loss its gradient is
    /// biased (module docs).
    K3,
}

/// Per-token KL estimate.
///
/// # Shapes
/// - `logp`, `ref_logp`: [rows, len] → [rows, len]
pub fn kl_per_token<B: Backend>(logp: Tensor<B, 2>, ref_logp: Tensor<B, 2>, estimator: KlEstimator) -> Tensor<B, 2> {
    let log_ratio = logp - ref_logp; // log π/π_ref
    match estimator {
        KlEstimator::K1 => log_ratio,
        KlEstimator::K2 => log_ratio.powi_scalar(2) * 0.5,
        KlEstimator::K3 => log_ratio.clone().neg().exp() - 1.0 + log_ratio,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    type B = rlhf_runtime::Cpu;

    fn t2(v: &[f32]) -> Tensor<B, 2> {
        Tensor::from_data(TensorData::new(v.to_vec(), [1, v.len()]), &Default::default())
    }

    fn close(a: f32, b: f64) -> bool {
        (f64::from(a) - b).abs() < 1e-5
    }

    #[test]
    fn kl_estimators_by_hand() {
        // π = 0.5, π_ref = 0.25 (log ratio ln 2); π = 0.2, π_ref = 0.4 (log ratio −ln 2).
        let (logp, ref_logp) = (t2(&[0.5f32.ln(), 0.2f32.ln()]), t2(&[0.25f32.ln(), 0.4f32.ln()]));
        let k = |e| kl_per_token(logp.clone(), ref_logp.clone(), e).into_data().to_vec::<f32>().unwrap();
        let k1 = k(KlEstimator::K1);
        assert!(close(k1[0], 2f64.ln()) && close(k1[1], 0.5f64.ln()));
        // k2 = ½ (ln 2)² = 0.240227 at both.
        let k2 = k(KlEstimator::K2);
        assert!(close(k2[0], 0.5 * 2f64.ln().powi(2)) && close(k2[1], 0.5 * 2f64.ln().powi(2)));
        // k3 = (r − 1) − log r with r = π_ref/π: r = 0.5 → −0.5 + ln 2; r = 2 → 1 − ln 2.
        let k3 = k(KlEstimator::K3);
        assert!(close(k3[0], -0.5 + 2f64.ln()) && close(k3[1], 1.0 - 2f64.ln()));
        assert!(k3.iter().chain(&k2).all(|&v| v >= 0.0));
    }
}

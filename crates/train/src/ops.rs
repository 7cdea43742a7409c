//! Tensor helpers the objectives share.

use burn::tensor::activation::log_softmax;
use burn::tensor::{backend::Backend, Int, Tensor};

/// log π(target) at every position.
///
/// # Shapes
/// - `logits`: [batch, seq, vocab]; `targets`: [batch, seq] → [batch, seq]
pub fn log_probs_from_logits<B: Backend>(logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> Tensor<B, 2> {
    let [b, s, _] = logits.dims();
    log_softmax(logits, 2).gather(2, targets.reshape([b, s, 1])).reshape([b, s])
}

/// Σ x·mask / Σ mask, and 0 (not NaN) when the mask is empty.
pub fn masked_mean<B: Backend, const D: usize>(x: Tensor<B, D>, mask: Tensor<B, D>) -> Tensor<B, 1> {
    let denom = mask.clone().sum().clamp_min(1.0);
    (x * mask).sum() / denom
}

/// Shifts a batch for next-token prediction: inputs are positions 0..T−1, targets 1..T, and the mask
/// of each target.
///
/// # Shapes
/// - `ids`: [batch, T] and `loss_mask`: [batch, T] → ([batch, T−1], [batch, T−1], [batch, T−1])
pub fn shift_for_next_token<B: Backend>(
    ids: Tensor<B, 2, Int>,
    loss_mask: Tensor<B, 2>,
) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>, Tensor<B, 2>) {
    let [b, t] = ids.dims();
    (ids.clone().slice([0..b, 0..t - 1]), ids.slice([0..b, 1..t]), loss_mask.slice([0..b, 1..t]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    type B = rlhf_model::backend::Cpu;

    #[test]
    fn masked_mean_by_hand_and_empty_mask_is_zero() {
        let d = Default::default();
        let x = Tensor::<B, 2>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]), &d);
        let m = Tensor::<B, 2>::from_data(TensorData::new(vec![1.0f32, 0.0, 1.0, 1.0], [2, 2]), &d);
        assert!((masked_mean(x.clone(), m).into_scalar() - 8.0 / 3.0).abs() < 1e-6);
        assert_eq!(masked_mean(x, Tensor::zeros([2, 2], &d)).into_scalar(), 0.0);
    }

    #[test]
    fn log_probs_pick_the_target() {
        let d = Default::default();
        // softmax([0, ln 3]) = [1/4, 3/4]
        let logits = Tensor::<B, 3>::from_data(TensorData::new(vec![0.0f32, 3f32.ln()], [1, 1, 2]), &d);
        let t = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![1i64], [1, 1]), &d);
        assert!((log_probs_from_logits(logits, t).into_scalar() - 0.75f32.ln()).abs() < 1e-6);
    }
}

//! The SFT / pretraining objective: next-token cross-entropy on target tokens only.

use burn::tensor::{backend::Backend, Int, Tensor};
use rlhf_train::ops::log_probs_from_logits;

/// −Σ mask · log π(target) / `normalizer`.
///
/// `normalizer` is the number of target tokens in the whole optimizer step, so the micro-batch
/// losses of a step add up to the mean token loss (accumulation averages). Positions whose mask is
/// 0 (prompt tokens, padding) contribute nothing, whatever their target.
///
/// # Shapes
/// - `logits`: [batch, seq, vocab]; `targets`, `loss_mask`: [batch, seq] → [1]
pub fn sft_loss<B: Backend>(logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>, loss_mask: Tensor<B, 2>, normalizer: f64) -> Tensor<B, 1> {
    (log_probs_from_logits(logits, targets) * loss_mask).sum().neg() / normalizer
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    type B = rlhf_model::backend::Cpu;

    fn t3(v: Vec<f32>, s: [usize; 3]) -> Tensor<B, 3> {
        Tensor::from_data(TensorData::new(v, s), &Default::default())
    }

    #[test]
    fn cross_entropy_by_hand() {
        // Two positions over a vocabulary of 2: p = softmax([0, ln 3]) = [1/4, 3/4] at both.
        let logits = t3(vec![0.0, 3f32.ln(), 0.0, 3f32.ln()], [1, 2, 2]);
        let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![1i64, 0], [1, 2]), &Default::default());
        let both = Tensor::<B, 2>::from_data(TensorData::new(vec![1.0f32, 1.0], [1, 2]), &Default::default());
        let want = -(0.75f64.ln() + 0.25f64.ln()) / 2.0;
        assert!((sft_loss(logits.clone(), targets.clone(), both, 2.0).into_scalar() as f64 - want).abs() < 1e-6);
        // Only the first position is a target.
        let first = Tensor::<B, 2>::from_data(TensorData::new(vec![1.0f32, 0.0], [1, 2]), &Default::default());
        let got = sft_loss(logits, targets, first, 1.0).into_scalar() as f64;
        assert!((got + 0.75f64.ln()).abs() < 1e-6);
    }
}

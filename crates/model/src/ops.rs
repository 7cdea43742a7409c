//! What every stage computes from a model's outputs, written once: log π of chosen tokens, the
//! next-token loss on target tokens, the policy's entropy, and per-token action log-probs and values
//! of a response after its prompt.

use burn::tensor::{Int, Tensor};
use rlhf_runtime::log_probs::target_log_probs;
use rlhf_runtime::Backend;

use crate::error::Result;
use crate::heads::{CausalLm, RewardModel};

/// log π(target) at every position.
///
/// # Shapes
/// - `logits`: [batch, seq, vocab]; `targets`: [batch, seq] → [batch, seq]
pub fn log_probs_from_logits<B: Backend>(logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> Tensor<B, 2> {
    let [b, s, vocab] = logits.dims();
    target_log_probs(logits.reshape([b * s, vocab]), targets.reshape([b * s])).reshape([b, s])
}

/// −Σ mask · log π(target) / `normalizer`: SFT's objective, pretraining's, and PPO-ptx's ptx term.
///
/// `normalizer` is the number of target tokens in the whole optimizer step, so the micro-batch
/// losses of a step add up to the mean token loss (accumulation averages). Positions whose mask is
/// 0 (prompt tokens, padding) contribute nothing, whatever their target.
///
/// # Shapes
/// - `logits`: [batch, seq, vocab]; `targets`, `loss_mask`: [batch, seq] → [1]
pub fn next_token_loss<B: Backend>(logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>, loss_mask: Tensor<B, 2>, normalizer: f64) -> Tensor<B, 1> {
    (log_probs_from_logits(logits, targets) * loss_mask).sum().neg() / normalizer
}

/// Next-token loss of `model` on padded ids: inputs are positions 0..T−1, targets 1..T, each
/// target counted where `loss_mask` is set.
///
/// # Shapes
/// - `ids`, `attention`: [batch, T]; `loss_mask`: [batch, T] → [1]
pub fn lm_loss<B: Backend>(model: &CausalLm<B>, ids: Tensor<B, 2, Int>, attention: Tensor<B, 2, Int>, loss_mask: Tensor<B, 2>, normalizer: f64) -> Result<Tensor<B, 1>> {
    let [b, t] = ids.dims();
    let inputs = ids.clone().slice([0..b, 0..t - 1]);
    let targets = ids.slice([0..b, 1..t]);
    let logits = model.forward(inputs, attention.slice([0..b, 0..t - 1]), None)?;
    Ok(next_token_loss(logits, targets, loss_mask.slice([0..b, 1..t]), normalizer))
}

/// Entropy of the policy at each position, from the logits.
///
/// # Shapes
/// - `logits`: [rows, len, vocab] → [rows, len]
pub fn token_entropy<B: Backend>(logits: Tensor<B, 3>) -> Tensor<B, 2> {
    let [rows, len, vocab] = logits.dims();
    rlhf_runtime::log_probs::token_entropy(logits.reshape([rows * len, vocab])).reshape([rows, len])
}

/// log π(a_t | s_t) of each response token, and optionally the policy entropy there.
/// Positions `prompt_len − 1 .. T − 1` predict the response tokens `prompt_len .. T`.
///
/// # Shapes
/// - `ids`, `attention`: [rows, T] → [rows, T − prompt_len] (twice)
pub fn action_log_probs<B: Backend>(
    model: &CausalLm<B>,
    ids: Tensor<B, 2, Int>,
    attention: Tensor<B, 2, Int>,
    prompt_len: usize,
    with_entropy: bool,
) -> Result<(Tensor<B, 2>, Option<Tensor<B, 2>>)> {
    let [rows, total] = ids.dims();
    let hidden = model.model.forward(ids.clone(), attention, None)?;
    let d = hidden.dims()[2];
    let logits = model.logits(hidden.slice([0..rows, prompt_len - 1..total - 1, 0..d]));
    let actions = ids.slice([0..rows, prompt_len..total]);
    let entropy = with_entropy.then(|| token_entropy(logits.clone()));
    Ok((log_probs_from_logits(logits, actions), entropy))
}

/// V(s_t) for each response token: the value head's output at the position before it.
///
/// # Shapes
/// - `ids`, `attention`: [rows, T] → [rows, T − prompt_len]
pub fn action_values<B: Backend>(critic: &RewardModel<B>, ids: Tensor<B, 2, Int>, attention: Tensor<B, 2, Int>, prompt_len: usize) -> Result<Tensor<B, 2>> {
    let [rows, total] = ids.dims();
    Ok(critic.forward(ids, attention)?.slice([0..rows, prompt_len - 1..total - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    type B = crate::TestBackend;

    fn t3(v: Vec<f32>, s: [usize; 3]) -> Tensor<B, 3> {
        Tensor::from_data(TensorData::new(v, s), &Default::default())
    }

    fn t2(v: Vec<f32>, s: [usize; 2]) -> Tensor<B, 2> {
        Tensor::from_data(TensorData::new(v, s), &Default::default())
    }

    #[test]
    fn log_probs_pick_the_target() {
        // softmax([0, ln 3]) = [1/4, 3/4]
        let logits = t3(vec![0.0, 3f32.ln()], [1, 1, 2]);
        let t = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![1i64], [1, 1]), &Default::default());
        assert!((log_probs_from_logits(logits, t).into_scalar() - 0.75f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn cross_entropy_by_hand() {
        // Two positions over a vocabulary of 2: p = softmax([0, ln 3]) = [1/4, 3/4] at both.
        let logits = t3(vec![0.0, 3f32.ln(), 0.0, 3f32.ln()], [1, 2, 2]);
        let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![1i64, 0], [1, 2]), &Default::default());
        let want = -(0.75f64.ln() + 0.25f64.ln()) / 2.0;
        let got = next_token_loss(logits.clone(), targets.clone(), t2(vec![1.0, 1.0], [1, 2]), 2.0).into_scalar() as f64;
        assert!((got - want).abs() < 1e-6);
        // Only the first position is a target.
        let got = next_token_loss(logits, targets, t2(vec![1.0, 0.0], [1, 2]), 1.0).into_scalar() as f64;
        assert!((got + 0.75f64.ln()).abs() < 1e-6);
    }

    #[test]
    fn entropy_of_uniform_and_certain_distributions() {
        let uniform = t3(vec![0.25f32.ln(); 4], [1, 1, 4]);
        assert!((token_entropy(uniform).into_scalar() as f64 - 4f64.ln()).abs() < 1e-6);
        // p = [1, 0] (log 0 as a large negative number): entropy 0.
        let certain = t3(vec![0.0, -100.0], [1, 1, 2]);
        assert!(token_entropy(certain).into_scalar().abs() < 1e-6);
    }
}

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

/// log(1 + eˣ) = −log σ(−x), so −log σ(x) = softplus(−x): every preference loss is written with it.
/// burn's `log_sigmoid` is computed without overflow and has its own backward, σ(x) here; the
/// composition max(x, 0) + log(1 + e^−|x|) has the same values but a gradient of 0 instead of ½ at
/// exactly x = 0 (both max and |·| have a zero derivative there), which is where DPO starts when
/// the reference's log-probs equal the policy's bit for bit.
pub fn softplus<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    burn::tensor::activation::log_sigmoid(x.neg()).neg()
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

    /// softplus(0) = ln 2 with derivative σ(0) = ½; softplus(x) ≈ x for large x, ≈ eˣ for very negative x
    /// (no overflow either way).
    #[test]
    fn softplus_by_hand_and_its_gradient_at_zero() {
        type AD = burn::backend::Autodiff<B>;
        let x = Tensor::<AD, 1>::from_data(TensorData::new(vec![0.0f32, 100.0, -100.0, 1.0], [4]), &Default::default()).require_grad();
        let y = softplus(x.clone());
        let v = y.clone().into_data().to_vec::<f32>().unwrap();
        assert!((v[0] as f64 - 2f64.ln()).abs() < 1e-6 && (v[1] - 100.0).abs() < 1e-4 && v[2] >= 0.0 && v[2] < 1e-30);
        assert!((v[3] as f64 - (1.0 + 1f64.exp()).ln()).abs() < 1e-6);
        let g = x.grad(&y.sum().backward()).unwrap().into_data().to_vec::<f32>().unwrap();
        let sigma = |t: f64| 1.0 / (1.0 + (-t).exp());
        for (got, at) in g.iter().zip([0.0, 100.0, -100.0, 1.0]) {
            assert!((*got as f64 - sigma(at)).abs() < 1e-6, "d softplus/dx at {at}: {got}");
        }
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

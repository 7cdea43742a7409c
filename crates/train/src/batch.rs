//! Encoded examples as padded device tensors, and the model operations every stage runs on them:
//! the next-token loss of demonstrations or text (SFT, pretraining, PPO-ptx) and the scores of
//! sequences under a reward model (RM training, PPO, evaluation, `rlhf reward score`).

use rlhf_runtime::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rlhf_data::batch::{pad_flags_right, pad_right};
use rlhf_data::encode::SftSample;
use rlhf_model::{CausalLm, RewardModel};

use crate::error::Result;

/// Right-padded ids and attention mask of token sequences, both [batch, len].
pub fn sequence_batch<B: Backend>(seqs: &[Vec<u32>], pad_id: u32, device: &B::Device) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>) {
    let padded = pad_right(seqs, pad_id);
    let shape = [padded.batch, padded.len];
    (Tensor::from_data(TensorData::new(padded.ids, shape), device), Tensor::from_data(TensorData::new(padded.mask, shape), device))
}

/// Padded tensors of a batch of samples: ids, attention mask, loss mask, all [batch, len].
pub fn padded_batch<B: Backend>(samples: &[&SftSample], pad_id: u32, device: &B::Device) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>, Tensor<B, 2>) {
    let ids: Vec<Vec<u32>> = samples.iter().map(|s| s.ids.clone()).collect();
    let (ids_t, attention) = sequence_batch(&ids, pad_id, device);
    let [batch, len] = ids_t.dims();
    let flags: Vec<Vec<bool>> = samples.iter().map(|s| s.loss_mask.clone()).collect();
    let loss_mask = Tensor::from_data(TensorData::new(pad_flags_right(&flags, len), [batch, len]), device);
    (ids_t, attention, loss_mask)
}

/// Next-token loss of `model` on `samples` (targets where their loss mask is set), divided by
/// `normalizer`: the SFT objective, and PPO-ptx's pretraining term.
pub fn lm_loss<B: Backend>(model: &CausalLm<B>, samples: &[&SftSample], pad_id: u32, normalizer: f64, device: &B::Device) -> Result<Tensor<B, 1>> {
    let (ids, attention, mask) = padded_batch::<B>(samples, pad_id, device);
    Ok(rlhf_model::ops::lm_loss(model, ids, attention, mask, normalizer)?)
}

/// Σ_t log π(y_t) over each sequence's response: the tokens from `prompt_lens[i]` to its end, each
/// predicted by the position before it. The logits are made only from the first response position
/// of the batch on, so the prompts cost a body forward but no [tokens, vocab] tensors.
///
/// # Shapes
/// - returns [sequences]
pub fn response_log_probs<B: Backend>(model: &CausalLm<B>, seqs: &[Vec<u32>], prompt_lens: &[usize], pad_id: u32, device: &B::Device) -> Result<Tensor<B, 1>> {
    let (ids, attention) = sequence_batch::<B>(seqs, pad_id, device);
    let [rows, total] = ids.dims();
    // The first position whose next token is a response token, in any row (prompts are ≥ 1 token).
    let start = prompt_lens.iter().copied().min().unwrap_or(1).max(1) - 1;
    let hidden = model.model.forward(ids.clone(), attention, None)?;
    let d = hidden.dims()[2];
    let logits = model.logits(hidden.slice([0..rows, start..total - 1, 0..d]));
    let targets = ids.slice([0..rows, start + 1..total]);
    let width = total - 1 - start;
    let mut mask = vec![0f32; rows * width];
    for (r, (seq, &prompt_len)) in seqs.iter().zip(prompt_lens).enumerate() {
        for position in prompt_len.max(1)..seq.len() {
            mask[r * width + position - start - 1] = 1.0;
        }
    }
    let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [rows, width]), device);
    let log_probs = rlhf_model::ops::log_probs_from_logits(logits, targets) * mask;
    Ok(log_probs.sum_dim(1).reshape([rows]))
}

/// The reward of each sequence, read at its last real token.
///
/// # Shapes
/// - returns [sequences]
pub fn score_sequences<B: Backend>(model: &RewardModel<B>, seqs: &[Vec<u32>], pad_id: u32, device: &B::Device) -> Result<Tensor<B, 1>> {
    let (ids, mask) = sequence_batch(seqs, pad_id, device);
    Ok(model.score(ids, mask)?)
}

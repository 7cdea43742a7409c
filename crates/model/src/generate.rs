//! Batched generation with a KV cache: left-padded prompts, one prefill, then one token per step
//! for the whole batch on the device.

use burn::tensor::activation::log_softmax;
use burn::tensor::ops::PadMode;
use burn::tensor::{Element, ElementConversion, Int, Numeric, Tensor, TensorData};
use rlhf_runtime::Backend;

use crate::error::{ModelError, Result};
use crate::heads::CausalLm;
use crate::sampling::Sampler;

/// What to generate and when to stop.
#[derive(Debug, Clone)]
pub struct GenerateConfig {
    pub max_new_tokens: usize,
    pub sampler: Sampler,
    /// A row stops after emitting any of these (the stop token is kept in its output).
    pub stop_ids: Vec<u32>,
    /// Fills left padding and the positions after a row has stopped.
    pub pad_id: u32,
    /// Seeds the backend RNG before sampling.
    pub seed: Option<u64>,
}

/// Device-side result of [`generate`], in the layout PPO consumes.
#[derive(Debug, Clone)]
pub struct GenerationBatch<B: Backend> {
    /// [batch, prompt_len]: left-padded prompts.
    pub prompt_ids: Tensor<B, 2, Int>,
    /// [batch, prompt_len]
    pub prompt_mask: Tensor<B, 2, Int>,
    /// [batch, steps]: new tokens; `pad_id` after a row stopped.
    pub new_ids: Tensor<B, 2, Int>,
    /// [batch, steps]: 1 for tokens the row really produced (up to and including its stop token).
    pub new_mask: Tensor<B, 2, Int>,
    /// [batch, steps]: log π(token | prefix) under the model's unmodified distribution
    /// (no temperature or filtering), as PPO's behaviour log-probs.
    pub logprobs: Tensor<B, 2>,
}

/// One row of a generation, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub new_ids: Vec<u32>,
    pub logprobs: Vec<f32>,
}

impl<B: Backend> GenerationBatch<B> {
    /// Per-row tokens and log-probs, cut at each row's stop token.
    pub fn to_host(&self) -> Vec<Generation> {
        let [batch, steps] = self.new_ids.dims();
        if steps == 0 {
            return vec![Generation { new_ids: vec![], logprobs: vec![] }; batch];
        }
        let ids = self.new_ids.to_data().convert::<i64>().to_vec::<i64>().expect("int data");
        let mask = self.new_mask.to_data().convert::<i64>().to_vec::<i64>().expect("int data");
        let lp = self.logprobs.to_data().convert::<f32>().to_vec::<f32>().expect("float data");
        (0..batch)
            .map(|b| {
                let row = b * steps..(b + 1) * steps;
                let n = mask[row.clone()].iter().take_while(|&&m| m == 1).count();
                Generation {
                    new_ids: ids[row.clone()].iter().take(n).map(|&i| i as u32).collect(),
                    logprobs: lp[row].iter().take(n).copied().collect(),
                }
            })
            .collect()
    }

    /// Stacks batches generated separately: prompts are left-padded and new tokens right-padded
    /// to the longest, with mask 0 there. Positions follow the mask, so the extra padding changes
    /// no row's meaning.
    pub fn concat(parts: Vec<Self>, pad_id: u32) -> Self {
        let prompt_len = parts.iter().map(|b| b.prompt_ids.dims()[1]).max().unwrap_or(0);
        let steps = parts.iter().map(|b| b.new_ids.dims()[1]).max().unwrap_or(0);
        // Token ids are exact in f32 up to 2^24, far above any vocabulary.
        let pad = pad_id as f32;
        let (mut prompt_ids, mut prompt_mask, mut new_ids, mut new_mask, mut logprobs) = (vec![], vec![], vec![], vec![], vec![]);
        for b in parts {
            let before = prompt_len - b.prompt_ids.dims()[1];
            let after = steps - b.new_ids.dims()[1];
            prompt_ids.push(pad_columns(b.prompt_ids, before, 0, pad));
            prompt_mask.push(pad_columns(b.prompt_mask, before, 0, 0.0));
            new_ids.push(pad_columns(b.new_ids, 0, after, pad));
            new_mask.push(pad_columns(b.new_mask, 0, after, 0.0));
            logprobs.push(pad_columns(b.logprobs, 0, after, 0.0));
        }
        Self {
            prompt_ids: Tensor::cat(prompt_ids, 0),
            prompt_mask: Tensor::cat(prompt_mask, 0),
            new_ids: Tensor::cat(new_ids, 0),
            new_mask: Tensor::cat(new_mask, 0),
            logprobs: Tensor::cat(logprobs, 0),
        }
    }
}

/// `t` with `before` columns of `fill` in front and `after` behind.
fn pad_columns<B: Backend, K: Numeric<B>>(t: Tensor<B, 2, K>, before: usize, after: usize, fill: f32) -> Tensor<B, 2, K>
where
    K::Elem: Element,
{
    if before + after == 0 {
        return t;
    }
    t.pad([(before, after)], PadMode::Constant(fill))
}

/// Left-pads prompts to a common length.
///
/// # Shapes
/// - returns ids and mask, both [batch, longest prompt]
pub fn left_pad<B: Backend>(prompts: &[Vec<u32>], pad_id: u32, device: &B::Device) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>) {
    let len = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(prompts.len() * len);
    let mut mask = Vec::with_capacity(prompts.len() * len);
    for p in prompts {
        let pad = len - p.len();
        ids.extend(std::iter::repeat_n(pad_id as i64, pad).chain(p.iter().map(|&t| t as i64)));
        mask.extend(std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1i64, p.len())));
    }
    let shape = [prompts.len(), len];
    (
        Tensor::from_data(TensorData::new(ids, shape), device),
        Tensor::from_data(TensorData::new(mask, shape), device),
    )
}

/// How often (in steps) the host checks whether every row has stopped. Each check is a device→host
/// sync; checking every step would stall the GPU pipeline.
const STOP_CHECK_EVERY: usize = 8;

/// Generates up to `max_new_tokens` for each prompt. Run it on a model without autodiff
/// (`model.valid()`), or the graph of every step is kept alive.
pub fn generate<B: Backend>(
    model: &CausalLm<B>,
    prompts: &[Vec<u32>],
    cfg: &GenerateConfig,
    device: &B::Device,
) -> Result<GenerationBatch<B>> {
    let vocab = model.config().vocab_size;
    if prompts.is_empty() {
        return Err(ModelError::Invalid("no prompts to generate from".into()));
    }
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(ModelError::Invalid(format!("prompt {i} is empty")));
        }
        if let Some(&t) = p.iter().find(|&&t| t as usize >= vocab) {
            return Err(ModelError::Invalid(format!("prompt {i}: token id {t} is outside the vocabulary of {vocab}")));
        }
    }
    if let Some(seed) = cfg.seed {
        B::seed(device, seed);
    }
    let batch = prompts.len();
    let (prompt_ids, prompt_mask) = left_pad::<B>(prompts, cfg.pad_id, device);
    let prompt_len = prompt_ids.dims()[1];
    let max_len = prompt_len + cfg.max_new_tokens;
    if max_len > model.config().max_position_embeddings {
        return Err(ModelError::Invalid(format!(
            "prompt of {prompt_len} tokens + {} new exceeds the model's {} positions",
            cfg.max_new_tokens,
            model.config().max_position_embeddings
        )));
    }
    let mut cache = model.model.new_cache(batch, max_len, device);
    let stop_ids: Vec<i64> = cfg.stop_ids.iter().map(|&t| t as i64).collect();

    let mut tokens = Vec::with_capacity(cfg.max_new_tokens);
    let mut alive = Vec::with_capacity(cfg.max_new_tokens);
    let mut logprobs = Vec::with_capacity(cfg.max_new_tokens);
    // [batch, 1]: 1 while the row has not emitted a stop token.
    let mut running = Tensor::<B, 2, Int>::ones([batch, 1], device);
    let mut mask = prompt_mask.clone();
    let mut input = prompt_ids.clone();
    for step in 0..cfg.max_new_tokens {
        let hidden = model.model.forward(input, mask.clone(), Some(&mut cache))?;
        let [_, seq, d] = hidden.dims();
        let last = hidden.slice([0..batch, seq - 1..seq, 0..d]);
        let logits = model.logits(last).reshape([batch, vocab]); // [batch, vocab]
        let next = cfg.sampler.select(logits.clone()).reshape([batch, 1]);
        logprobs.push(log_softmax(logits, 1).gather(1, next.clone())); // [batch, 1]
        // Rows that already stopped emit padding.
        let next = next * running.clone() + (running.clone().neg() + 1) * cfg.pad_id as i64;
        alive.push(running.clone());
        tokens.push(next.clone());
        for &id in &stop_ids {
            running = running * next.clone().not_equal_elem(id).int();
        }
        mask = Tensor::cat(vec![mask, Tensor::ones([batch, 1], device)], 1);
        input = next;
        if (step + 1) % STOP_CHECK_EVERY == 0 && running.clone().max().into_scalar().elem::<i64>() == 0 {
            break;
        }
    }
    Ok(GenerationBatch {
        prompt_ids,
        prompt_mask,
        new_ids: cat_or_empty(tokens, batch, device),
        new_mask: cat_or_empty(alive, batch, device),
        logprobs: if logprobs.is_empty() { Tensor::zeros([batch, 0], device) } else { Tensor::cat(logprobs, 1) },
    })
}

fn cat_or_empty<B: Backend>(columns: Vec<Tensor<B, 2, Int>>, batch: usize, device: &B::Device) -> Tensor<B, 2, Int> {
    if columns.is_empty() {
        Tensor::zeros([batch, 0], device)
    } else {
        Tensor::cat(columns, 1)
    }
}


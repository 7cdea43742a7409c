//! Answers written in-process by a model folder, for the teacher/judge tools: K samples per prompt
//! for AI rankings, one answer per question for pairwise judging.

use rlhf_model::{generate, CausalLm, GenerateConfig, Sampler};
use rlhf_runtime::Backend;

/// How answers are sampled.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerSampling {
    /// Answers per prompt.
    pub samples: usize,
    pub max_new_tokens: usize,
    /// 0 decodes greedily.
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub seed: u64,
    /// Rows generated together.
    pub batch_size: usize,
    pub stop_ids: Vec<u32>,
    pub pad_id: u32,
}

/// `samples` answers (token ids, cut at the stop token) per prompt, in prompt order.
pub fn sample_answers<B: Backend>(model: &CausalLm<B>, prompts: &[Vec<u32>], s: &AnswerSampling, device: &B::Device) -> anyhow::Result<Vec<Vec<Vec<u32>>>> {
    let sampler = if s.temperature > 0.0 { Sampler::Sample { temperature: s.temperature, top_k: None, top_p: s.top_p } } else { Sampler::Greedy };
    let k = s.samples.max(1);
    let rows: Vec<Vec<u32>> = prompts.iter().flat_map(|p| std::iter::repeat_n(p.clone(), k)).collect();
    let mut answers = Vec::with_capacity(rows.len());
    for (chunk_no, chunk) in rows.chunks(s.batch_size.max(1)).enumerate() {
        let cfg = GenerateConfig {
            max_new_tokens: s.max_new_tokens,
            sampler: sampler.clone(),
            stop_ids: s.stop_ids.clone(),
            pad_id: s.pad_id,
            seed: Some(s.seed.wrapping_mul(7919).wrapping_add(chunk_no as u64)),
        };
        answers.extend(generate(model, chunk, &cfg, device)?.to_host().into_iter().map(|g| g.new_ids));
    }
    let mut per_prompt = Vec::with_capacity(prompts.len());
    let mut answers = answers.into_iter();
    for _ in prompts {
        per_prompt.push(answers.by_ref().take(k).collect());
    }
    Ok(per_prompt)
}

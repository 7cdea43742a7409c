//! Answers written in-process by a model folder, for the teacher/judge tools: K samples per prompt
//! for AI rankings, one answer per question for pairwise judging.

use std::ops::Range;

use rlhf_model::{generate, CausalLm, GenerateConfig, GenerationBatch, Sampler};
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

/// The seed of chunk `chunk` of a run seeded `seed`: the chunk's draws depend on it alone, whatever
/// the other chunks hold.
pub fn chunk_seed(seed: u64, chunk: usize) -> u64 {
    seed.wrapping_mul(7919).wrapping_add(chunk as u64)
}

/// Generates for `rows` in chunks of `batch_size` with `cfg` (chunk i seeded by [`chunk_seed`], so a
/// run is reproducible whatever the rows), handing each chunk's range in `rows` and its generation to
/// `each`.
pub fn generate_in_chunks<B: Backend>(
    model: &CausalLm<B>,
    rows: &[Vec<u32>],
    batch_size: usize,
    cfg: &GenerateConfig,
    seed: u64,
    device: &B::Device,
    mut each: impl FnMut(Range<usize>, GenerationBatch<B>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let batch_size = batch_size.max(1);
    for (chunk_no, start) in (0..rows.len()).step_by(batch_size).enumerate() {
        let range = start..(start + batch_size).min(rows.len());
        let chunk_cfg = GenerateConfig { seed: Some(chunk_seed(seed, chunk_no)), ..cfg.clone() };
        each(range.clone(), generate(model, &rows[range], &chunk_cfg, device)?)?;
    }
    Ok(())
}

/// `samples` answers (token ids, cut at the stop token) per prompt, in prompt order.
pub fn sample_answers<B: Backend>(model: &CausalLm<B>, prompts: &[Vec<u32>], s: &AnswerSampling, device: &B::Device) -> anyhow::Result<Vec<Vec<Vec<u32>>>> {
    let k = s.samples.max(1);
    let rows: Vec<Vec<u32>> = prompts.iter().flat_map(|p| std::iter::repeat_n(p.clone(), k)).collect();
    let cfg = GenerateConfig {
        max_new_tokens: s.max_new_tokens,
        sampler: Sampler::from_temperature(s.temperature, s.top_p),
        stop_ids: s.stop_ids.clone(),
        pad_id: s.pad_id,
        seed: None,
    };
    let mut answers = Vec::with_capacity(rows.len());
    generate_in_chunks(model, &rows, s.batch_size, &cfg, s.seed, device, |_, g| {
        answers.extend(g.to_host().into_iter().map(|g| g.new_ids));
        Ok(())
    })?;
    Ok(answers.chunks(k).map(<[Vec<u32>]>::to_vec).collect())
}

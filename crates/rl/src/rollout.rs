//! Stage 3's rollout: prompts → `n` sampled responses per prompt, with the response mask, each
//! row's group (the prompt it answers), and the log-probabilities of the sampled tokens under any
//! model (the policy before its update, the reference), computed without autodiff in micro-batches.
//!
//! Rows of one group are adjacent: row `i` answers prompt `i / n`.

use std::ops::Range;

use burn::tensor::{Int, Tensor, TensorData};
use rlhf_model::ops::action_log_probs;
use rlhf_model::{generate_n, CausalLm, GenerateConfig, GenerationBatch};
use rlhf_runtime::Backend;

/// Sampled sequences on the device, and their tokens on the host.
#[derive(Debug, Clone)]
pub struct Sampled<B: Backend> {
    /// [rows, P + S]: left-padded prompt, then the response (padding after a stop).
    pub ids: Tensor<B, 2, Int>,
    pub attention: Tensor<B, 2, Int>,
    /// P: the common (padded) prompt length.
    pub prompt_len: usize,
    /// [rows, S]: 1.0 on response tokens.
    pub action_mask: Tensor<B, 2>,
    /// `action_mask` on the host.
    pub mask: Vec<Vec<bool>>,
    /// Each row's prompt tokens (unpadded) and response tokens (up to and including a stop token).
    pub prompts: Vec<Vec<u32>>,
    pub responses: Vec<Vec<u32>>,
    /// The prompt (of the prompts sampled for) each row answers.
    pub groups: Vec<usize>,
    /// Rows that used the whole budget without emitting a stop token.
    pub truncated: Vec<bool>,
}

impl<B: Backend> Sampled<B> {
    pub fn rows(&self) -> usize {
        self.responses.len()
    }

    /// Response tokens per row.
    pub fn lengths(&self) -> Vec<usize> {
        self.responses.iter().map(Vec::len).collect()
    }

    /// The rows `keep` (in that order) as a batch of their own, laid out as a generation lays them
    /// out (prompts left-padded to the longest, responses right-padded), with `groups` renumbered
    /// 0.. in order of first appearance. Rows from several rollouts are joined with [`Sampled::join`].
    pub fn select(&self, keep: &[usize], pad_id: u32, device: &B::Device) -> Self {
        let pick = |v: &Vec<Vec<u32>>| keep.iter().map(|&r| v[r].clone()).collect::<Vec<_>>();
        let groups = renumber(&keep.iter().map(|&r| self.groups[r]).collect::<Vec<_>>());
        from_host(pick(&self.prompts), pick(&self.responses), groups, keep.iter().map(|&r| self.truncated[r]).collect(), pad_id, device)
    }

    /// Rollouts' rows one after another; groups stay apart (renumbered 0..).
    pub fn join(parts: Vec<Self>, pad_id: u32, device: &B::Device) -> Self {
        let (mut prompts, mut responses, mut groups, mut truncated) = (vec![], vec![], vec![], vec![]);
        let mut offset = 0;
        for p in parts {
            let next = p.groups.iter().max().map_or(offset, |g| offset + g + 1);
            groups.extend(p.groups.iter().map(|g| g + offset));
            offset = next;
            prompts.extend(p.prompts);
            responses.extend(p.responses);
            truncated.extend(p.truncated);
        }
        from_host(prompts, responses, renumber(&groups), truncated, pad_id, device)
    }
}

/// Group ids renumbered 0.. in order of first appearance.
fn renumber(groups: &[usize]) -> Vec<usize> {
    let mut seen: Vec<usize> = Vec::new();
    groups
        .iter()
        .map(|g| match seen.iter().position(|s| s == g) {
            Some(i) => i,
            None => {
                seen.push(*g);
                seen.len() - 1
            }
        })
        .collect()
}

/// A batch built from host tokens: prompts left-padded to the longest, responses right-padded.
pub fn from_host<B: Backend>(prompts: Vec<Vec<u32>>, responses: Vec<Vec<u32>>, groups: Vec<usize>, truncated: Vec<bool>, pad_id: u32, device: &B::Device) -> Sampled<B> {
    let rows = prompts.len();
    let prompt_len = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let steps = responses.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let (mut ids, mut attention, mut mask) = (Vec::with_capacity(rows * (prompt_len + steps)), vec![], vec![]);
    for (p, r) in prompts.iter().zip(&responses) {
        let before = prompt_len - p.len();
        ids.extend(std::iter::repeat_n(i64::from(pad_id), before).chain(p.iter().map(|&t| i64::from(t))));
        ids.extend(r.iter().map(|&t| i64::from(t)).chain(std::iter::repeat_n(i64::from(pad_id), steps - r.len())));
        attention.extend(std::iter::repeat_n(0i64, before).chain(std::iter::repeat_n(1, p.len() + r.len())).chain(std::iter::repeat_n(0, steps - r.len())));
        mask.push((0..steps).map(|t| t < r.len()).collect::<Vec<bool>>());
    }
    let flags: Vec<f32> = mask.iter().flatten().map(|&m| f32::from(u8::from(m))).collect();
    let shape = [rows, prompt_len + steps];
    Sampled {
        ids: Tensor::from_data(TensorData::new(ids, shape), device),
        attention: Tensor::from_data(TensorData::new(attention, shape), device),
        prompt_len,
        action_mask: Tensor::from_data(TensorData::new(flags, [rows, steps]), device),
        mask,
        prompts,
        responses,
        groups,
        truncated,
    }
}

/// The `[rows, cols]` tensor's rows on the host.
pub fn host_rows(t: Tensor<impl Backend, 2>) -> Vec<Vec<f32>> {
    let [rows, cols] = t.dims();
    let v = t.into_data().convert::<f32>().to_vec::<f32>().expect("f32");
    (0..rows).map(|r| v[r * cols..(r + 1) * cols].to_vec()).collect()
}

/// Host rows as a `[rows, cols]` tensor.
pub fn device_rows<B: Backend>(rows: &[Vec<f32>], device: &B::Device) -> Tensor<B, 2> {
    let cols = rows.first().map_or(0, Vec::len);
    Tensor::from_data(TensorData::new(rows.concat(), [rows.len(), cols]), device)
}

/// `n` responses to each prompt from `policy`, about `batch_size` rows generated together (default:
/// all; whole groups, at least one). Each prompt is prefilled once for its `n` rows. The backend RNG
/// is seeded with `seed` once; later batches continue its stream.
pub fn sample<B: Backend>(
    policy: &CausalLm<B>,
    prompts: &[Vec<u32>],
    n: usize,
    gen: &GenerateConfig,
    batch_size: Option<usize>,
    seed: u64,
    device: &B::Device,
) -> anyhow::Result<Sampled<B>> {
    let n = n.max(1);
    let rows: Vec<Vec<u32>> = prompts.iter().flat_map(|p| std::iter::repeat_n(p.clone(), n)).collect();
    let groups: Vec<usize> = (0..rows.len()).map(|r| r / n).collect();
    let prompts_per_batch = (batch_size.unwrap_or(rows.len()) / n).max(1);
    let parts = prompts
        .chunks(prompts_per_batch)
        .enumerate()
        .map(|(i, chunk)| generate_n(policy, chunk, n, &GenerateConfig { seed: (i == 0).then_some(seed), ..gen.clone() }, device))
        .collect::<Result<Vec<_>, _>>()?;
    let out = GenerationBatch::concat(parts, gen.pad_id);
    let prompt_len = out.prompt_ids.dims()[1];
    let steps = out.new_ids.dims()[1];
    let new_ids = out.new_ids.clone().into_data().convert::<i64>().to_vec::<i64>().expect("ids");
    let action_mask = out.new_mask.clone().float();
    let mask: Vec<Vec<bool>> = host_rows(action_mask.clone()).into_iter().map(|r| r.into_iter().map(|m| m > 0.5).collect()).collect();
    let responses: Vec<Vec<u32>> = mask
        .iter()
        .enumerate()
        .map(|(i, m)| new_ids[i * steps..i * steps + m.iter().filter(|&&x| x).count()].iter().map(|&t| t as u32).collect())
        .collect();
    let truncated = responses.iter().map(|r| r.len() >= gen.max_new_tokens && !r.last().is_some_and(|t| gen.stop_ids.contains(t))).collect();
    Ok(Sampled {
        ids: Tensor::cat(vec![out.prompt_ids, out.new_ids], 1),
        attention: Tensor::cat(vec![out.prompt_mask, out.new_mask], 1),
        prompt_len,
        action_mask,
        mask,
        prompts: rows,
        responses,
        groups,
        truncated,
    })
}

/// `f` over rows in chunks of `micro` (≥ 1), the `[rows, cols]` results concatenated back.
pub fn in_chunks<B: Backend>(rows: usize, micro: usize, mut f: impl FnMut(Range<usize>) -> anyhow::Result<Tensor<B, 2>>) -> anyhow::Result<Tensor<B, 2>> {
    let step = micro.max(1);
    let parts = (0..rows).step_by(step).map(|s| f(s..(s + step).min(rows))).collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Tensor::cat(parts, 0))
}

/// The rows `r` of the sequences (ids, attention).
pub fn slice<B: Backend>(s: &Sampled<B>, r: Range<usize>) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>) {
    slice_rows(&s.ids, &s.attention, r)
}

/// The rows `r` of `ids` and `attention` ([rows, T] each).
pub fn slice_rows<B: Backend>(ids: &Tensor<B, 2, Int>, attention: &Tensor<B, 2, Int>, r: Range<usize>) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>) {
    let cols = ids.dims()[1];
    (ids.clone().slice([r.clone(), 0..cols]), attention.clone().slice([r, 0..cols]))
}

/// log π(a_t | s_t) of every response token under `model`, `micro` rows per forward: [rows, S].
pub fn sequence_log_probs<B: Backend>(model: &CausalLm<B>, s: &Sampled<B>, micro: usize) -> anyhow::Result<Tensor<B, 2>> {
    in_chunks(s.rows(), micro, |r| {
        let (ids, attention) = slice(s, r);
        Ok(action_log_probs(model, ids, attention, s.prompt_len, false)?.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = rlhf_runtime::Cpu;

    #[test]
    fn host_batches_are_laid_out_as_generations_are() {
        // Prompts [5, 6] and [7]; responses [1, 2, 3] and [4]; pad 0.
        let s = from_host::<B>(vec![vec![5, 6], vec![7]], vec![vec![1, 2, 3], vec![4]], vec![0, 0], vec![false, true], 0, &Default::default());
        assert_eq!(s.prompt_len, 2);
        assert_eq!(s.ids.clone().into_data().convert::<i64>().to_vec::<i64>().unwrap(), vec![5, 6, 1, 2, 3, 0, 7, 4, 0, 0]);
        assert_eq!(s.attention.clone().into_data().convert::<i64>().to_vec::<i64>().unwrap(), vec![1, 1, 1, 1, 1, 0, 1, 1, 0, 0]);
        assert_eq!(s.mask, vec![vec![true, true, true], vec![true, false, false]]);
        assert_eq!(s.lengths(), vec![3, 1]);
    }

    #[test]
    fn selected_and_joined_rows_keep_their_groups_apart() {
        let d = Default::default();
        let a = from_host::<B>(vec![vec![1]; 4], vec![vec![2]; 4], vec![0, 0, 1, 1], vec![false; 4], 0, &d);
        let kept = a.select(&[2, 3], 0, &d);
        assert_eq!(kept.groups, vec![0, 0]);
        let b = from_host::<B>(vec![vec![3]; 2], vec![vec![4, 5]; 2], vec![0, 0], vec![false; 2], 0, &d);
        let joined = Sampled::join(vec![kept, b], 0, &d);
        assert_eq!(joined.groups, vec![0, 0, 1, 1]);
        assert_eq!(joined.responses, vec![vec![2], vec![2], vec![4, 5], vec![4, 5]]);
        assert_eq!(renumber(&[7, 7, 3, 9, 3]), vec![0, 0, 1, 2, 1]);
    }
}

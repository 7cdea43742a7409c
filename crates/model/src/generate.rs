//! Batched generation with a KV cache: left-padded prompts, one prefill, then one token per step
//! for the whole batch on the device.

use burn::tensor::activation::softmax;
use burn::tensor::ops::PadMode;
use burn::tensor::{Element, ElementConversion, Int, Numeric, Tensor, TensorData};
use rlhf_runtime::log_probs::target_log_probs;
use rlhf_runtime::Backend;

use crate::cache::KvCache;
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
    generate_n(model, prompts, 1, cfg, device)
}

/// `n` responses to every prompt: row `i` of the result answers prompt `i / n`. Each prompt is
/// prefilled once and its KV cache copied to its `n` rows before the first token is drawn, so the
/// rows decode exactly as `n` copies of the prompt would (same shapes, same random draws) for the
/// price of one prefill.
pub fn generate_n<B: Backend>(
    model: &CausalLm<B>,
    prompts: &[Vec<u32>],
    n: usize,
    cfg: &GenerateConfig,
    device: &B::Device,
) -> Result<GenerationBatch<B>> {
    if n == 0 {
        return Err(ModelError::Invalid("0 responses per prompt asked for".into()));
    }
    if let Some(seed) = cfg.seed {
        B::seed(device, seed);
    }
    let mut decoding = Decoding::start(model, prompts, cfg.max_new_tokens, &cfg.stop_ids, cfg.pad_id, device)?;
    for step in 0..cfg.max_new_tokens {
        let mut logits = decoding.next_logits()?;
        if step == 0 && n > 1 {
            let rows = decoding.repeat_rows(n);
            logits = logits.select(0, rows);
        }
        decoding.emit(logits, |logits| cfg.sampler.select(logits));
        if (step + 1) % STOP_CHECK_EVERY == 0 && decoding.running.clone().max().into_scalar().elem::<i64>() == 0 {
            break;
        }
    }
    if cfg.max_new_tokens == 0 && n > 1 {
        decoding.repeat_rows(n);
    }
    Ok(decoding.finish())
}

/// Sampling settings of one row, for batches whose rows come from different requests (the server).
#[derive(Debug, Clone, PartialEq)]
pub struct RowSampling {
    pub max_new_tokens: usize,
    /// 0 picks the most likely token.
    pub temperature: f64,
    pub top_p: Option<f64>,
    /// The row's draws depend on this seed alone, never on the other rows of its batch.
    pub seed: u64,
}

/// What the rows of a [`generate_rows`] batch share.
#[derive(Debug, Clone, PartialEq)]
pub struct RowsConfig {
    /// A row stops after emitting any of these.
    pub stop_ids: Vec<u32>,
    pub pad_id: u32,
    /// Steps between the host's looks at the batch (each is one device sync).
    pub check_every: usize,
}

/// What the host learns at each check of [`generate_rows`].
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Per row: the tokens it produced since the previous check (up to and including a stop token).
    pub new_tokens: Vec<Vec<u32>>,
    /// Per row: it has stopped (stop token, its `max_new_tokens`, or halted by the host).
    pub stopped: Vec<bool>,
}

/// Generates for rows with their own sampling settings and budgets. Every `check_every` steps (and
/// at the end) the host is told what each row produced; it answers with rows to halt (e.g. a stop
/// string appeared, or the client left). Generation ends when every row has stopped.
///
/// Sampling draws one uniform number per row and step from the row's own seeded stream and inverts
/// the row's cumulative distribution on the device, so a row's tokens do not depend on its batch.
pub fn generate_rows<B: Backend>(
    model: &CausalLm<B>,
    prompts: &[Vec<u32>],
    rows: &[RowSampling],
    batch_cfg: &RowsConfig,
    device: &B::Device,
    mut on_progress: impl FnMut(&Progress) -> Vec<usize>,
) -> Result<GenerationBatch<B>> {
    if rows.len() != prompts.len() {
        return Err(ModelError::Invalid(format!("{} prompts but {} sampling rows", prompts.len(), rows.len())));
    }
    let out_of_range = |r: &RowSampling| r.temperature.is_nan() || r.temperature < 0.0 || r.top_p.is_some_and(|p| p.is_nan() || p <= 0.0 || p > 1.0);
    if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| out_of_range(r)) {
        return Err(ModelError::Invalid(format!("row {i}: temperature {} / top_p {:?} out of range", r.temperature, r.top_p)));
    }
    let steps = rows.iter().map(|r| r.max_new_tokens).max().unwrap_or(0);
    let mut decoding = Decoding::start(model, prompts, steps, &batch_cfg.stop_ids, batch_cfg.pad_id, device)?;
    let sampling = RowSampler::new(rows, steps, device);
    let batch = rows.len();
    let budgets = Tensor::<B, 2, Int>::from_data(
        TensorData::new(rows.iter().map(|r| r.max_new_tokens as i64).collect::<Vec<_>>(), [batch, 1]),
        device,
    );
    let check_every = batch_cfg.check_every.max(1);
    let mut reported = 0;
    let mut stopped = vec![false; batch];
    for step in 0..steps {
        decoding.step(|logits| sampling.select(logits, step))?;
        // A row that used its budget stops.
        decoding.running = decoding.running.clone() * budgets.clone().greater_elem(step as i64 + 1).int();
        if (step + 1) % check_every == 0 || step + 1 == steps {
            let halt = decoding.report(&mut reported, &mut stopped, &mut on_progress);
            if !halt.is_empty() {
                let keep: Vec<i64> = (0..batch).map(|b| i64::from(!halt.contains(&b))).collect();
                decoding.running = decoding.running.clone() * Tensor::from_data(TensorData::new(keep, [batch, 1]), device);
                halt.iter().for_each(|&b| stopped[b] = true);
            }
            if stopped.iter().all(|&s| s) {
                break;
            }
        }
    }
    if steps == 0 {
        on_progress(&Progress { new_tokens: vec![vec![]; batch], stopped: vec![true; batch] });
    }
    Ok(decoding.finish())
}

/// The state of one batched decoding: the KV cache, what has been produced, which rows still run.
struct Decoding<'m, B: Backend> {
    model: &'m CausalLm<B>,
    cache: Vec<KvCache<B>>,
    prompt_ids: Tensor<B, 2, Int>,
    prompt_mask: Tensor<B, 2, Int>,
    /// [batch, keys so far]
    mask: Tensor<B, 2, Int>,
    /// The tokens to feed next: the prompts, then each step's token.
    input: Tensor<B, 2, Int>,
    /// [batch, 1]: 1 while the row has not stopped.
    running: Tensor<B, 2, Int>,
    tokens: Vec<Tensor<B, 2, Int>>,
    alive: Vec<Tensor<B, 2, Int>>,
    logprobs: Vec<Tensor<B, 2>>,
    stop_ids: Vec<i64>,
    pad_id: u32,
}

impl<'m, B: Backend> Decoding<'m, B> {
    fn start(model: &'m CausalLm<B>, prompts: &[Vec<u32>], max_new_tokens: usize, stop_ids: &[u32], pad_id: u32, device: &B::Device) -> Result<Self> {
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
        let batch = prompts.len();
        let (prompt_ids, prompt_mask) = left_pad::<B>(prompts, pad_id, device);
        let prompt_len = prompt_ids.dims()[1];
        let max_len = prompt_len + max_new_tokens;
        if max_len > model.config().max_position_embeddings {
            return Err(ModelError::Invalid(format!(
                "prompt of {prompt_len} tokens + {max_new_tokens} new exceeds the model's {} positions",
                model.config().max_position_embeddings
            )));
        }
        Ok(Self {
            model,
            cache: model.model.new_cache(batch, max_len, device),
            mask: prompt_mask.clone(),
            input: prompt_ids.clone(),
            prompt_ids,
            prompt_mask,
            running: Tensor::ones([batch, 1], device),
            tokens: Vec::with_capacity(max_new_tokens),
            alive: Vec::with_capacity(max_new_tokens),
            logprobs: Vec::with_capacity(max_new_tokens),
            stop_ids: stop_ids.iter().map(|&t| t as i64).collect(),
            pad_id,
        })
    }

    /// One token for every row, chosen by `select` from [batch, vocab] logits.
    fn step(&mut self, select: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 1, Int>) -> Result<()> {
        let logits = self.next_logits()?;
        self.emit(logits, select);
        Ok(())
    }

    /// Feeds the pending input through the model (the prompts at first, then the last token) and
    /// returns the next token's logits: [batch, vocab].
    fn next_logits(&mut self) -> Result<Tensor<B, 2>> {
        let batch = self.input.dims()[0];
        let vocab = self.model.config().vocab_size;
        let hidden = self.model.model.forward(self.input.clone(), self.mask.clone(), Some(&mut self.cache))?;
        let [_, seq, d] = hidden.dims();
        let last = hidden.slice([0..batch, seq - 1..seq, 0..d]);
        Ok(self.model.logits(last).reshape([batch, vocab]))
    }

    /// Every row repeated `n` times in place (row `i` becomes rows `i·n .. i·n + n`): the KV cache,
    /// the prompts, the masks and the running flags. Returns the row index used, [batch · n].
    fn repeat_rows(&mut self, n: usize) -> Tensor<B, 1, Int> {
        let batch = self.running.dims()[0];
        let device = self.mask.device();
        let rows: Vec<i64> = (0..batch as i64).flat_map(|r| std::iter::repeat_n(r, n)).collect();
        let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [batch * n]), &device);
        for layer in &mut self.cache {
            layer.select_rows(rows.clone());
        }
        let pick = |t: &Tensor<B, 2, Int>| t.clone().select(0, rows.clone());
        self.prompt_ids = pick(&self.prompt_ids);
        self.prompt_mask = pick(&self.prompt_mask);
        self.mask = pick(&self.mask);
        self.running = pick(&self.running);
        rows
    }

    /// Appends the token `select` picks from `logits` ([batch, vocab]) to every running row.
    fn emit(&mut self, logits: Tensor<B, 2>, select: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 1, Int>) {
        let batch = self.running.dims()[0];
        let next = select(logits.clone()).reshape([batch, 1]);
        // One fused pass per row (log Σ exp, then the chosen logit), not a [batch, vocab] log-softmax.
        self.logprobs.push(target_log_probs(logits, next.clone().reshape([batch])).reshape([batch, 1]));
        // Rows that already stopped emit padding.
        let running = self.running.clone();
        let next = next * running.clone() + (running.clone().neg() + 1) * self.pad_id as i64;
        self.alive.push(running.clone());
        self.tokens.push(next.clone());
        let mut running = running;
        for &id in &self.stop_ids {
            running = running * next.clone().not_equal_elem(id).int();
        }
        self.running = running;
        let device = self.mask.device();
        self.mask = Tensor::cat(vec![self.mask.clone(), Tensor::ones([batch, 1], &device)], 1);
        self.input = next;
    }

    /// Reads the tokens produced since column `reported` and which rows still run (one sync), tells
    /// the host, and returns the rows it wants halted.
    fn report(&self, reported: &mut usize, stopped: &mut [bool], on_progress: &mut impl FnMut(&Progress) -> Vec<usize>) -> Vec<usize> {
        let batch = stopped.len();
        let from = *reported;
        let columns = self.tokens.len() - from;
        let ids = Tensor::cat(self.tokens[from..].to_vec(), 1).into_data().convert::<i64>().to_vec::<i64>().expect("int data");
        let alive = Tensor::cat(self.alive[from..].to_vec(), 1).into_data().convert::<i64>().to_vec::<i64>().expect("int data");
        let running = self.running.clone().into_data().convert::<i64>().to_vec::<i64>().expect("int data");
        *reported = self.tokens.len();
        let mut new_tokens = Vec::with_capacity(batch);
        for b in 0..batch {
            let row = b * columns..(b + 1) * columns;
            new_tokens.push(ids[row.clone()].iter().zip(&alive[row]).filter(|(_, &a)| a == 1).map(|(&t, _)| t as u32).collect());
            stopped[b] |= running[b] == 0;
        }
        on_progress(&Progress { new_tokens, stopped: stopped.to_vec() })
    }

    fn finish(self) -> GenerationBatch<B> {
        let batch = self.running.dims()[0];
        let device = self.mask.device();
        GenerationBatch {
            prompt_ids: self.prompt_ids,
            prompt_mask: self.prompt_mask,
            new_ids: cat_or_empty(self.tokens, batch, &device),
            new_mask: cat_or_empty(self.alive, batch, &device),
            logprobs: if self.logprobs.is_empty() { Tensor::zeros([batch, 0], &device) } else { Tensor::cat(self.logprobs, 1) },
        }
    }
}

/// Per-row sampling on the device: greedy rows take the argmax; the others invert their
/// cumulative distribution at a uniform number drawn from their own seeded stream.
struct RowSampler<B: Backend> {
    /// [batch, 1]: 1 for greedy rows.
    greedy: Tensor<B, 2, Int>,
    /// [batch, 1]: temperatures (1 for greedy rows, which never use them).
    temperature: Tensor<B, 2>,
    /// [batch, 1]: nucleus mass, 2 (never reached) for rows without top-p; None when no row has one.
    top_p: Option<Tensor<B, 2>>,
    /// [batch, steps]: each row's uniform numbers in (0, 1), one per step.
    uniforms: Tensor<B, 2>,
}

impl<B: Backend> RowSampler<B> {
    fn new(rows: &[RowSampling], steps: usize, device: &B::Device) -> Self {
        use rand::{Rng, SeedableRng};
        let batch = rows.len();
        let column = |f: &dyn Fn(&RowSampling) -> f32| Tensor::<B, 2>::from_data(TensorData::new(rows.iter().map(f).collect::<Vec<f32>>(), [batch, 1]), device);
        let uniforms: Vec<f32> = rows
            .iter()
            .flat_map(|r| {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(r.seed);
                // 24 random bits, centred in their interval: never 0, never 1.
                (0..steps).map(move |_| ((rng.random::<u32>() >> 8) as f32 + 0.5) / (1u32 << 24) as f32)
            })
            .collect();
        Self {
            greedy: column(&|r| f32::from(r.temperature == 0.0)).int(),
            temperature: column(&|r| if r.temperature == 0.0 { 1.0 } else { r.temperature as f32 }),
            top_p: rows.iter().any(|r| r.top_p.is_some_and(|p| p < 1.0)).then(|| column(&|r| r.top_p.map_or(2.0, |p| p as f32))),
            uniforms: Tensor::from_data(TensorData::new(uniforms, [batch, steps]), device),
        }
    }

    /// # Shapes
    /// - `logits`: [batch, vocab] → [batch]
    fn select(&self, logits: Tensor<B, 2>, step: usize) -> Tensor<B, 1, Int> {
        let [batch, vocab] = logits.dims();
        let best = logits.clone().argmax(1); // [batch, 1]
        let mut scaled = logits / self.temperature.clone();
        if let Some(p) = &self.top_p {
            scaled = crate::sampling::keep_nucleus(scaled, p.clone());
        }
        let cdf = softmax(scaled, 1).cumsum(1); // [batch, vocab]
        let total = cdf.clone().slice([0..batch, vocab - 1..vocab]);
        let target = self.uniforms.clone().slice([0..batch, step..step + 1]) * total; // [batch, 1]
        // The first token whose cumulative mass reaches the target = how many stay below it.
        let drawn = cdf.lower(target.expand([batch, vocab])).int().sum_dim(1).clamp_max(vocab as i64 - 1);
        let greedy = self.greedy.clone();
        (best * greedy.clone() + drawn * (greedy.neg() + 1)).reshape([batch])
    }
}

fn cat_or_empty<B: Backend>(columns: Vec<Tensor<B, 2, Int>>, batch: usize, device: &B::Device) -> Tensor<B, 2, Int> {
    if columns.is_empty() {
        Tensor::zeros([batch, 0], device)
    } else {
        Tensor::cat(columns, 1)
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;

    fn row(temperature: f64, top_p: Option<f64>, seed: u64) -> RowSampling {
        RowSampling { max_new_tokens: 1, temperature, top_p, seed }
    }

    /// Draws of many rows from one distribution: probs [0.6, 0.3, 0.1].
    fn draws(rows: &[RowSampling]) -> Vec<i64> {
        let device = Default::default();
        let logits: Vec<f32> = rows.iter().flat_map(|_| [0.6f32.ln(), 0.3f32.ln(), 0.1f32.ln()]).collect();
        let logits = Tensor::<TestBackend, 2>::from_data(TensorData::new(logits, [rows.len(), 3]), &device);
        RowSampler::<TestBackend>::new(rows, 1, &device).select(logits, 0).into_data().convert::<i64>().to_vec().unwrap()
    }

    #[test]
    fn row_sampling_inverts_each_rows_distribution() {
        let rows: Vec<_> = (0..6000).map(|s| row(1.0, None, s)).collect();
        let ids = draws(&rows);
        for (token, p) in [(0, 0.6), (1, 0.3), (2, 0.1)] {
            let freq = ids.iter().filter(|&&i| i == token).count() as f64 / ids.len() as f64;
            assert!((freq - p).abs() < 0.02, "token {token}: {freq} vs {p}");
        }
        // Nucleus 0.7: the third token (mass before it 0.9) is never drawn; greedy rows take the argmax.
        let nucleus: Vec<_> = (0..2000).map(|s| row(1.0, Some(0.7), s)).collect();
        assert!(draws(&nucleus).iter().all(|&i| i < 2));
        assert!(draws(&[row(0.0, None, 1), row(0.0, None, 2)]).iter().all(|&i| i == 0));
    }

    #[test]
    fn a_rows_draw_depends_on_its_seed_not_on_its_batch() {
        let alone: Vec<i64> = (0..40).map(|s| draws(&[row(1.0, None, s)])[0]).collect();
        let mixed: Vec<_> = (0..40).map(|s| row(if s % 3 == 0 { 0.0 } else { 1.0 }, (s % 4 == 0).then_some(0.95), s)).collect();
        let together = draws(&mixed);
        for s in 0..40 {
            if s % 3 != 0 && s % 4 != 0 {
                assert_eq!(together[s], alone[s], "row {s}");
            }
        }
        assert!(alone.iter().any(|&i| i != alone[0]), "40 draws all equal");
    }
}

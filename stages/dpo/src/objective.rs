//! The DPO objective on the shared run loop: one batch element is one prompt with its K ranked
//! responses (K forwards, never K²), the loss of the element its pairs' mean (`all_pairs`, the
//! reward stage's grouping), its Plackett-Luce terms' sum, or its KTO responses' mean; a step's
//! loss is the mean over its prompts.

use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use rlhf_data::batch::EpochOrder;
use rlhf_data::encode::{ranking_pairs, Pair, RankingSample};
use rlhf_eval::{ranking_stats, RankingStats};
use rlhf_model::CausalLm;
use rlhf_runtime::{AutodiffBackend, Backend};
use rlhf_train::batch::response_log_probs;
use rlhf_train::trainer::Diagnostics;
use rlhf_train::{Objective, TrainError};

use crate::config::{DpoSettings, IpoNormalize, Loss, RankingLoss};
use crate::loss;

/// One prompt's ranked responses (a K = 2 preference pair is a ranking), and for KTO the prompt
/// followed by another record's response, whose log-ratio estimates KL(π ‖ π_ref).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ranking: RankingSample,
    pub mismatched: Option<Vec<u32>>,
}

impl Example {
    /// Every sequence the losses read: the K responses, then the mismatched one.
    pub fn sequences(&self) -> impl Iterator<Item = &Vec<u32>> {
        self.ranking.sequences.iter().chain(&self.mismatched)
    }

    pub fn sequence_count(&self) -> usize {
        self.ranking.sequences.len() + usize::from(self.mismatched.is_some())
    }

    /// Whether the ranking states a preference (at least one untied pair).
    pub fn has_pairs(&self) -> bool {
        self.ranking.has_preference()
    }

    /// KTO's responses and whether each is desirable: a record of one labelled completion (rank 0:
    /// desirable, 1: not), or from a ranking its best-ranked responses (desirable) and its
    /// worst-ranked (undesirable), those in between unused.
    pub fn kto_items(&self) -> Vec<(usize, bool)> {
        let ranks = &self.ranking.ranks;
        if ranks.len() == 1 {
            return vec![(0, ranks[0] == 0)];
        }
        if !self.has_pairs() {
            return vec![];
        }
        (0..ranks.len()).filter(|&i| ranks[i] == self.best_rank() || ranks[i] == self.worst_rank()).map(|i| (i, ranks[i] == self.best_rank())).collect()
    }

    /// Whether `loss` learns anything from this example.
    pub fn trains(&self, loss: Loss) -> bool {
        match loss {
            Loss::Kto => !self.kto_items().is_empty(),
            _ => self.has_pairs(),
        }
    }

    fn best_rank(&self) -> u32 {
        self.ranking.ranks.iter().copied().min().unwrap_or(0)
    }

    fn worst_rank(&self) -> u32 {
        self.ranking.ranks.iter().copied().max().unwrap_or(0)
    }
}

/// A micro-batch's sequences, flat in example order.
pub struct Flat {
    pub sequences: Vec<Vec<u32>>,
    pub prompt_lens: Vec<usize>,
    /// Response tokens of each sequence.
    pub tokens: Vec<f32>,
    /// Index of each example's first sequence.
    pub starts: Vec<usize>,
}

pub fn flatten(examples: &[&Example]) -> Flat {
    let mut flat = Flat { sequences: Vec::new(), prompt_lens: Vec::new(), tokens: Vec::new(), starts: Vec::new() };
    for e in examples {
        flat.starts.push(flat.sequences.len());
        for s in e.sequences() {
            flat.prompt_lens.push(e.ranking.prompt_len);
            flat.tokens.push(s.len().saturating_sub(e.ranking.prompt_len).max(1) as f32);
            flat.sequences.push(s.clone());
        }
    }
    flat
}

/// Where the reference's log-probabilities come from.
pub enum ReferenceLogps<B: Backend> {
    /// The loss needs none (SimPO, ORPO).
    None,
    /// Computed once before training: Σ log π_ref of every sequence of every train / eval example.
    Precomputed { train: Vec<Vec<f32>>, eval: Vec<Vec<f32>> },
    /// A frozen model run on every micro-batch (with LoRA, the policy's base with adapters off).
    Online(CausalLm<B>),
}

/// Which split an example list comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Eval,
}

pub struct DpoObjective<B: AutodiffBackend> {
    pub train: Vec<Example>,
    pub eval: Vec<Example>,
    pub settings: DpoSettings,
    pub reference: ReferenceLogps<B::InnerBackend>,
    pub batch_size: usize,
    pub micro_batch_size: usize,
    pub pad_id: u32,
    pub device: B::Device,
    order: EpochOrder,
}

/// Per-sequence numbers on the host, for the metrics.
struct HostValues {
    logp: Vec<f64>,
    /// The implicit reward of each sequence: β(logp − ref), or β·logp/|y| without a reference.
    reward: Vec<f64>,
}

fn host_f64<B: Backend>(x: Tensor<B, 1>) -> Vec<f64> {
    x.into_data().convert::<f64>().to_vec::<f64>().expect("f64")
}

fn float<B: Backend>(v: Vec<f32>, device: &B::Device) -> Tensor<B, 1> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

fn index<B: Backend>(v: Vec<usize>, device: &B::Device) -> Tensor<B, 1, Int> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v.into_iter().map(|i| i as i64).collect::<Vec<_>>(), [n]), device)
}

fn other(e: impl std::fmt::Display) -> TrainError {
    TrainError::Other(format!("{e:#}"))
}

impl<B: AutodiffBackend> DpoObjective<B> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(train: Vec<Example>, eval: Vec<Example>, settings: DpoSettings, reference: ReferenceLogps<B::InnerBackend>, cfg: &rlhf_train::TrainConfig, seed: u64, pad_id: u32, device: B::Device) -> Self {
        Self {
            order: EpochOrder::new(train.len(), seed),
            train,
            eval,
            settings,
            reference,
            batch_size: cfg.batch_size,
            micro_batch_size: cfg.micro_batch_size,
            pad_id,
            device,
        }
    }

    fn examples(&self, split: Split, indices: &[usize]) -> Vec<&Example> {
        let all = if split == Split::Train { &self.train } else { &self.eval };
        indices.iter().map(|&i| &all[i]).collect()
    }

    /// The reference's Σ log π of each sequence of `indices` (flat), or None for a reference-free loss.
    fn reference_values(&self, split: Split, indices: &[usize], flat: &Flat) -> anyhow::Result<Option<Vec<f32>>> {
        Ok(match &self.reference {
            ReferenceLogps::None => None,
            ReferenceLogps::Precomputed { train, eval } => {
                let table = if split == Split::Train { train } else { eval };
                Some(indices.iter().flat_map(|&i| table[i].iter().copied()).collect())
            }
            ReferenceLogps::Online(model) => {
                let logp = response_log_probs(model, &flat.sequences, &flat.prompt_lens, self.pad_id, &self.device)?;
                Some(logp.into_data().convert::<f32>().to_vec::<f32>().expect("f32"))
            }
        })
    }

    /// The loss of `indices` of `split` under `policy`, divided by `normalizer`, and its metrics
    /// divided the same way; on any backend (training's autodiff one, evaluation's inner one).
    fn batch_loss<BB: Backend>(&self, policy: &CausalLm<BB>, split: Split, indices: &[usize], normalizer: f64, device: &BB::Device) -> anyhow::Result<(Tensor<BB, 1>, Diagnostics)> {
        let examples = self.examples(split, indices);
        let flat = flatten(&examples);
        let reference = self.reference_values(split, indices, &flat)?;
        let logp = response_log_probs(policy, &flat.sequences, &flat.prompt_lens, self.pad_id, device)?;
        let tokens = float::<BB>(flat.tokens.clone(), device);
        let reference_t = reference.clone().map(|r| float::<BB>(r, device));
        let s = &self.settings;
        let logp_host = host_f64(logp.clone());
        let log_ratio = |i: usize| logp_host[i] - reference.as_ref().map_or(0.0, |r| f64::from(r[i]));
        let reward: Vec<f64> = (0..flat.sequences.len())
            .map(|i| if s.loss.uses_reference() { s.beta * log_ratio(i) } else { s.beta * logp_host[i] / f64::from(flat.tokens[i]) })
            .collect();
        let host = HostValues { logp: logp_host.clone(), reward };
        // logp − ref, the quantity every reference-based loss starts from.
        let ratio = || match &reference_t {
            Some(r) => logp.clone() - r.clone(),
            None => logp.clone(),
        };
        let mean_logp = || logp.clone() / tokens.clone();
        let preference = match (s.loss, s.ranking_loss) {
            (Loss::Kto, _) => {
                let (loss, kl) = self.kto(&examples, &flat, ratio(), &log_ratio, device);
                let mut metrics = kto_metrics(&examples, &flat, &host);
                metrics.push(("kl", kl / normalizer));
                let nll = self.nll(&examples, &flat, mean_logp(), normalizer, device);
                return Ok((loss / normalizer + nll, metrics));
            }
            (_, RankingLoss::PlackettLuce) => {
                let terms: Vec<loss::ListTerm> = examples.iter().zip(&flat.starts).flat_map(|(e, &at)| loss::plackett_luce_terms(&e.ranking.ranks, at)).collect();
                if terms.is_empty() {
                    logp.clone().sum() * 0.0
                } else {
                    loss::plackett_luce_loss(ratio() * s.beta, &terms).sum()
                }
            }
            (kind, RankingLoss::AllPairs) => {
                let pairs: Vec<Pair> = examples.iter().zip(&flat.starts).flat_map(|(e, &at)| ranking_pairs(&e.ranking.ranks, at)).collect();
                if pairs.is_empty() {
                    logp.clone().sum() * 0.0
                } else {
                    let u = match kind {
                        Loss::Sigmoid | Loss::Robust | Loss::Hinge => ratio(),
                        Loss::Ipo if s.ipo_normalize == IpoNormalize::TokenMean => ratio() / tokens.clone(),
                        Loss::Ipo => ratio(),
                        Loss::Simpo => mean_logp(),
                        Loss::Orpo => loss::log_odds(mean_logp()),
                        Loss::Kto => unreachable!("handled above"),
                    };
                    let better = index::<BB>(pairs.iter().map(|p| p.better).collect(), device);
                    let worse = index::<BB>(pairs.iter().map(|p| p.worse).collect(), device);
                    let d = u.clone().select(0, better) - u.select(0, worse);
                    let per_pair = match kind {
                        Loss::Sigmoid => loss::sigmoid_loss(d, s.beta, s.label_smoothing),
                        Loss::Robust => loss::robust_loss(d, s.beta, s.label_smoothing),
                        Loss::Hinge => loss::hinge_loss(d, s.beta),
                        Loss::Ipo => loss::ipo_loss(d, s.beta),
                        Loss::Simpo => loss::simpo_loss(d, s.beta, s.simpo_gamma, s.label_smoothing),
                        Loss::Orpo => loss::odds_ratio_loss(d, s.beta),
                        Loss::Kto => unreachable!("handled above"),
                    };
                    (per_pair * float::<BB>(pairs.iter().map(|p| p.weight).collect(), device)).sum()
                }
            }
        };
        let nll = self.nll(&examples, &flat, mean_logp(), normalizer, device);
        Ok((preference / normalizer + nll, pair_metrics(&examples, &flat, &host, normalizer)))
    }

    /// (nll_coef + 1 for ORPO) × the mean token NLL of each prompt's best-ranked responses (KTO: its
    /// desirable ones), summed over prompts and divided by `normalizer`; zero when there is no such term.
    fn nll<BB: Backend>(&self, examples: &[&Example], flat: &Flat, mean_logp: Tensor<BB, 1>, normalizer: f64, device: &BB::Device) -> Tensor<BB, 1> {
        let coef = self.settings.nll_coef + if self.settings.loss == Loss::Orpo { 1.0 } else { 0.0 };
        if coef == 0.0 {
            return mean_logp.sum() * 0.0;
        }
        let mut weights = vec![0f32; flat.sequences.len()];
        for (e, &at) in examples.iter().zip(&flat.starts) {
            let best: Vec<usize> = match self.settings.loss {
                Loss::Kto => e.kto_items().into_iter().filter(|&(_, good)| good).map(|(i, _)| i).collect(),
                _ if e.has_pairs() => (0..e.ranking.ranks.len()).filter(|&i| e.ranking.ranks[i] == e.best_rank()).collect(),
                _ => vec![],
            };
            for i in &best {
                weights[at + i] = 1.0 / best.len() as f32;
            }
        }
        (mean_logp * float::<BB>(weights, device)).sum().neg() * (coef / normalizer)
    }

    /// KTO over each prompt's desirable and undesirable responses ([`Example::kto_items`]), the mean
    /// per prompt, summed; and the reference point z₀ × prompts (for the `kl` metric).
    fn kto<BB: Backend>(&self, examples: &[&Example], flat: &Flat, ratio: Tensor<BB, 1>, log_ratio: &dyn Fn(usize) -> f64, device: &BB::Device) -> (Tensor<BB, 1>, f64) {
        let s = &self.settings;
        let mismatched: Vec<f64> = examples.iter().zip(&flat.starts).filter(|(e, _)| e.mismatched.is_some()).map(|(e, &at)| log_ratio(at + e.ranking.sequences.len())).collect();
        let z0 = loss::kto_reference_point(&mismatched);
        let (mut items, mut desirable, mut weights) = (Vec::new(), Vec::new(), Vec::new());
        let mut prompts = 0.0;
        for (e, &at) in examples.iter().zip(&flat.starts) {
            let chosen = e.kto_items();
            if chosen.is_empty() {
                continue;
            }
            prompts += 1.0;
            for &(i, good) in &chosen {
                items.push(at + i);
                desirable.push(if good { 1.0 } else { 0.0 });
                weights.push(1.0 / chosen.len() as f32);
            }
        }
        if items.is_empty() {
            return (ratio.sum() * 0.0, 0.0);
        }
        let r = ratio.select(0, index::<BB>(items, device));
        let per_item = loss::kto_loss(r, float::<BB>(desirable, device), z0, s.beta, s.desirable_weight, s.undesirable_weight);
        ((per_item * float::<BB>(weights, device)).sum(), z0 * prompts)
    }
}

/// Pairwise metrics with TRL's names (rewards: β(logp − ref), or β·logp/|y| without a
/// reference): each prompt's pair mean, summed over prompts and divided by `normalizer`; with the
/// reward stage's pairwise and top-1 accuracy of the implicit rewards against the rankings.
fn pair_metrics(examples: &[&Example], flat: &Flat, host: &HostValues, normalizer: f64) -> Diagnostics {
    let (mut chosen, mut rejected, mut accurate, mut logp_chosen, mut logp_rejected) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let mut rewards = Vec::new();
    let mut rankings = Vec::new();
    for (e, &at) in examples.iter().zip(&flat.starts) {
        for p in ranking_pairs(&e.ranking.ranks, at) {
            let w = f64::from(p.weight);
            chosen += w * host.reward[p.better];
            rejected += w * host.reward[p.worse];
            accurate += w * f64::from(u8::from(host.reward[p.better] > host.reward[p.worse]));
            logp_chosen += w * host.logp[p.better];
            logp_rejected += w * host.logp[p.worse];
        }
        rewards.extend((0..e.ranking.sequences.len()).map(|i| host.reward[at + i] as f32));
        rankings.push(&e.ranking);
    }
    let st: RankingStats = ranking_stats(&rewards, &rankings);
    let n = normalizer;
    vec![
        ("rewards/chosen", chosen / n),
        ("rewards/rejected", rejected / n),
        ("rewards/margins", (chosen - rejected) / n),
        ("rewards/accuracies", accurate / n),
        ("logps/chosen", logp_chosen / n),
        ("logps/rejected", logp_rejected / n),
        ("pairwise_acc", st.pairwise_acc / n),
        ("top1_acc", st.top1_acc / n),
    ]
}

/// KTO's metrics as TRL logs them: sums and counts over the step's desirable (`chosen`) and
/// undesirable (`rejected`) responses — an unpaired record has only one of the two, so a mean per
/// prompt does not exist; `rewards/chosen_sum / count/chosen` is the mean.
fn kto_metrics(examples: &[&Example], flat: &Flat, host: &HostValues) -> Diagnostics {
    let mut sums = [0.0; 6];
    for (e, &at) in examples.iter().zip(&flat.starts) {
        for (i, good) in e.kto_items() {
            let k = if good { 0 } else { 1 };
            sums[k] += host.reward[at + i];
            sums[2 + k] += host.logp[at + i];
            sums[4 + k] += 1.0;
        }
    }
    vec![
        ("rewards/chosen_sum", sums[0]),
        ("rewards/rejected_sum", sums[1]),
        ("logps/chosen_sum", sums[2]),
        ("logps/rejected_sum", sums[3]),
        ("count/chosen", sums[4]),
        ("count/rejected", sums[5]),
    ]
}

impl<B: AutodiffBackend> Objective<B, CausalLm<B>> for DpoObjective<B> {
    /// Stream positions of the prompts of a micro-batch.
    type Batch = Vec<usize>;

    fn step_batches(&self, step: usize) -> Vec<Vec<usize>> {
        EpochOrder::step_positions(step, self.batch_size, self.micro_batch_size)
    }

    /// Prompts of the step the loss learns from: the loss is the mean over them.
    fn normalizer(&self, batches: &[Vec<usize>]) -> f64 {
        batches.iter().flatten().filter(|&&p| self.train[self.order.at(p)].trains(self.settings.loss)).count().max(1) as f64
    }

    fn tokens(&self, batch: &Vec<usize>) -> usize {
        batch.iter().map(|&p| self.train[self.order.at(p)].sequences().map(Vec::len).sum::<usize>()).sum()
    }

    fn loss(&self, model: &CausalLm<B>, batch: &Vec<usize>, normalizer: f64) -> rlhf_train::Result<(Tensor<B, 1>, Diagnostics)> {
        let indices: Vec<usize> = batch.iter().map(|&p| self.order.at(p)).collect();
        self.batch_loss(model, Split::Train, &indices, normalizer, &self.device).map_err(other)
    }

    fn evaluate(&self, model: &CausalLm<B::InnerBackend>) -> rlhf_train::Result<Vec<(String, f64)>> {
        if self.eval.is_empty() {
            return Ok(vec![]);
        }
        let n = self.eval.iter().filter(|e| e.trains(self.settings.loss)).count().max(1) as f64;
        let mut totals: Vec<(String, f64)> = Vec::new();
        let all: Vec<usize> = (0..self.eval.len()).collect();
        for chunk in all.chunks(self.micro_batch_size.max(1)) {
            let (loss, metrics) = self.batch_loss(model, Split::Eval, chunk, n, &self.device).map_err(other)?;
            let loss = loss.into_scalar().elem::<f64>();
            for (k, v) in std::iter::once(("loss", loss)).chain(metrics) {
                let name = format!("eval_{k}");
                match totals.iter_mut().find(|(t, _)| *t == name) {
                    Some((_, acc)) => *acc += v,
                    None => totals.push((name, v)),
                }
            }
        }
        Ok(totals)
    }
}

/// The reference's Σ log π of every sequence of `examples`, `chunk` examples per forward.
pub fn reference_pass<B: Backend>(model: &CausalLm<B>, examples: &[Example], chunk: usize, pad_id: u32, device: &B::Device) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(examples.len());
    for group in examples.chunks(chunk.max(1)) {
        let refs: Vec<&Example> = group.iter().collect();
        let flat = flatten(&refs);
        let values = response_log_probs(model, &flat.sequences, &flat.prompt_lens, pad_id, device)?.into_data().convert::<f32>().to_vec::<f32>().expect("f32");
        for (e, &at) in group.iter().zip(&flat.starts) {
            out.push(values[at..at + e.sequence_count()].to_vec());
        }
    }
    Ok(out)
}

/// KTO's mismatched sequences: each example's prompt followed by the best-ranked response of the
/// next example in a seeded shuffle (a fixed pairing, so the reference's log-probs of these
/// sequences can be computed once), cut to `max_len`.
pub fn mismatched_sequences(rankings: &[RankingSample], seed: u64, max_len: usize) -> Vec<Vec<u32>> {
    let n = rankings.len();
    let order = rlhf_data::batch::shuffled(n, seed, 0);
    let mut next = vec![0; n];
    for (k, &i) in order.iter().enumerate() {
        next[i] = order[(k + 1) % n];
    }
    (0..n)
        .map(|i| {
            let donor = &rankings[next[i]];
            let response = &donor.sequences[donor.best_response()][donor.prompt_len..];
            let prompt = &rankings[i].sequences[0][..rankings[i].prompt_len];
            let mut seq: Vec<u32> = prompt.iter().chain(response).copied().collect();
            seq.truncate(max_len.max(prompt.len() + 1));
            seq
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranking(prompt: &[u32], responses: &[&[u32]], ranks: &[u32]) -> RankingSample {
        RankingSample { sequences: responses.iter().map(|r| prompt.iter().chain(r.iter()).copied().collect()).collect(), ranks: ranks.to_vec(), prompt_len: prompt.len() }
    }

    #[test]
    fn flat_sequences_count_response_tokens_and_keep_example_starts() {
        let a = Example { ranking: ranking(&[1, 2], &[&[3], &[4, 5]], &[0, 1]), mismatched: Some(vec![1, 2, 9, 9, 9]) };
        let b = Example { ranking: ranking(&[7], &[&[8, 8], &[6], &[5]], &[1, 0, 2]), mismatched: None };
        let flat = flatten(&[&a, &b]);
        assert_eq!(flat.starts, vec![0, 3]);
        assert_eq!(flat.tokens, vec![1.0, 2.0, 3.0, 2.0, 1.0, 1.0]);
        assert_eq!(flat.prompt_lens, vec![2, 2, 2, 1, 1, 1]);
    }

    #[test]
    fn kto_items_from_rankings_and_labelled_completions() {
        let k4 = Example { ranking: ranking(&[1], &[&[2], &[3], &[4], &[5]], &[2, 0, 1, 2]), mismatched: None };
        // Best (rank 0) desirable; the two worst (rank 2) undesirable; rank 1 unused.
        assert_eq!(k4.kto_items(), vec![(0, false), (1, true), (3, false)]);
        let good = Example { ranking: ranking(&[1], &[&[2]], &[0]), mismatched: None };
        let bad = Example { ranking: ranking(&[1], &[&[2]], &[1]), mismatched: None };
        assert_eq!((good.kto_items(), bad.kto_items()), (vec![(0, true)], vec![(0, false)]));
        // A labelled completion teaches KTO only; an all-tied ranking teaches nothing.
        assert!(good.trains(Loss::Kto) && !good.trains(Loss::Sigmoid));
        let tied = Example { ranking: ranking(&[1], &[&[2], &[3]], &[0, 0]), mismatched: None };
        assert!(!tied.trains(Loss::Kto) && !tied.trains(Loss::Sigmoid));
    }

    #[test]
    fn mismatched_pairs_join_a_prompt_with_another_records_best_response() {
        let r = vec![ranking(&[1], &[&[10], &[11]], &[1, 0]), ranking(&[2], &[&[20], &[21]], &[0, 1]), ranking(&[3], &[&[30], &[31]], &[0, 1])];
        let m = mismatched_sequences(&r, 5, 16);
        let best = [11, 20, 30];
        for (i, seq) in m.iter().enumerate() {
            assert_eq!(seq[0], i as u32 + 1, "each keeps its own prompt");
            assert_ne!(seq[1], best[i], "and takes a response from another record");
            assert!(best.contains(&seq[1]));
        }
        // Every record donates once: a permutation.
        let mut donors: Vec<u32> = m.iter().map(|s| s[1]).collect();
        donors.sort();
        assert_eq!(donors, vec![11, 20, 30]);
        assert_eq!(m, mismatched_sequences(&r, 5, 16), "seeded");
    }
}

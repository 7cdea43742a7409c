//! The SFT / pretraining objective: next-token cross-entropy on target tokens only
//! ([`rlhf_model::ops::next_token_loss`]: assistant tokens of conversations, or every token of text),
//! averaged over the target tokens of the whole optimizer step.

use rlhf_runtime::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use rlhf_data::batch::EpochOrder;
use rlhf_data::encode::SftSample;
use rlhf_model::CausalLm;
use rlhf_train::batch::lm_loss;
use rlhf_train::{Objective, TrainConfig};

/// Samples as micro-batches, drawn in a seeded order that is a pure function of the step.
pub struct SftObjective<B: AutodiffBackend> {
    pub train: Vec<SftSample>,
    pub eval: Vec<SftSample>,
    pub batch_size: usize,
    pub micro_batch_size: usize,
    pub pad_id: u32,
    pub device: B::Device,
    order: EpochOrder,
}

impl<B: AutodiffBackend> SftObjective<B> {
    pub fn new(train: Vec<SftSample>, eval: Vec<SftSample>, cfg: &TrainConfig, seed: u64, pad_id: u32, device: B::Device) -> Self {
        Self {
            order: EpochOrder::new(train.len(), seed),
            train,
            eval,
            batch_size: cfg.batch_size,
            micro_batch_size: cfg.micro_batch_size,
            pad_id,
            device,
        }
    }

    fn sample_at(&self, position: usize) -> &SftSample {
        &self.train[self.order.at(position)]
    }
}

impl<B: AutodiffBackend> Objective<B, CausalLm<B>> for SftObjective<B> {
    type Batch = Vec<usize>;

    fn step_batches(&self, step: usize) -> Vec<Vec<usize>> {
        EpochOrder::step_positions(step, self.batch_size, self.micro_batch_size)
    }

    /// Target tokens of the whole step: micro-batch losses then add up to the mean token loss.
    fn normalizer(&self, batches: &[Vec<usize>]) -> f64 {
        batches.iter().flatten().map(|&i| self.sample_at(i).targets()).sum::<usize>().max(1) as f64
    }

    fn tokens(&self, batch: &Vec<usize>) -> usize {
        batch.iter().map(|&i| self.sample_at(i).ids.len()).sum()
    }

    fn loss(&self, model: &CausalLm<B>, batch: &Vec<usize>, normalizer: f64) -> rlhf_train::Result<(Tensor<B, 1>, Vec<(&'static str, f64)>)> {
        let samples: Vec<&SftSample> = batch.iter().map(|&i| self.sample_at(i)).collect();
        Ok((lm_loss(model, &samples, self.pad_id, normalizer, &self.device)?, vec![]))
    }

    fn evaluate(&self, model: &CausalLm<B::InnerBackend>) -> rlhf_train::Result<Vec<(String, f64)>> {
        if self.eval.is_empty() {
            return Ok(vec![]);
        }
        let total = self.eval.iter().map(SftSample::targets).sum::<usize>().max(1) as f64;
        let mut loss = 0.0;
        for chunk in self.eval.chunks(self.micro_batch_size) {
            let refs: Vec<&SftSample> = chunk.iter().collect();
            loss += lm_loss(model, &refs, self.pad_id, total, &self.device)?.into_scalar().elem::<f64>();
        }
        Ok(vec![("eval_loss".into(), loss)])
    }
}

//! Choosing the next token for a whole batch, on the device.

use burn::tensor::{Distribution, Int, Tensor};
use rlhf_runtime::Backend;

/// How the next token is chosen from the logits.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampler {
    /// The most likely token.
    Greedy,
    /// A draw from softmax(logits / temperature), restricted to the `top_k` most likely tokens and to
    /// the smallest set whose probability reaches `top_p` (nucleus), when given.
    Sample { temperature: f64, top_k: Option<usize>, top_p: Option<f64> },
}

impl Sampler {
    /// Greedy at temperature 0 (or below), else a draw at `temperature` within the nucleus `top_p`.
    pub fn from_temperature(temperature: f64, top_p: Option<f64>) -> Self {
        if temperature > 0.0 {
            Sampler::Sample { temperature, top_k: None, top_p }
        } else {
            Sampler::Greedy
        }
    }

    /// Next token of every row.
    ///
    /// Sampling uses the Gumbel-max trick: argmax(logits' + g) with g = −log(−log U) is an exact
    /// draw from softmax(logits'), and needs no cumulative sum or host round-trip.
    /// The backend's RNG is used, so seed it (`B::seed`) for reproducible draws.
    ///
    /// # Shapes
    /// - `logits`: [batch, vocab] → [batch]
    pub fn select<B: Backend>(&self, logits: Tensor<B, 2>) -> Tensor<B, 1, Int> {
        let [batch, _] = logits.dims();
        match self {
            Sampler::Greedy => logits.argmax(1).reshape([batch]),
            Sampler::Sample { temperature, .. } => {
                let filtered = self.filtered_logits(logits / temperature.max(1e-6));
                let uniform = Tensor::<B, 2>::random(filtered.shape(), Distribution::Uniform(1e-10, 1.0), &filtered.device());
                let gumbel = uniform.log().neg().log().neg();
                (filtered + gumbel).argmax(1).reshape([batch])
            }
        }
    }

    /// Logits with everything outside top-k / top-p set to −∞ (temperature already applied).
    ///
    /// # Shapes
    /// - `logits`: [batch, vocab] → same
    pub fn filtered_logits<B: Backend>(&self, logits: Tensor<B, 2>) -> Tensor<B, 2> {
        let Sampler::Sample { top_k, top_p, .. } = self else { return logits };
        let [batch, vocab] = logits.dims();
        let mut logits = logits;
        if let Some(k) = top_k.filter(|&k| k > 0 && k < vocab) {
            // The k-th largest logit is the threshold; ties with it are kept.
            let kth = logits.clone().topk(k, 1).slice([0..batch, k - 1..k]); // [batch, 1]
            let below = logits.clone().lower(kth.expand([batch, vocab]));
            logits = logits.mask_fill(below, f32::NEG_INFINITY);
        }
        if let Some(p) = top_p.filter(|&p| p < 1.0) {
            let p = Tensor::<B, 2>::full([batch, 1], p, &logits.device());
            logits = keep_nucleus(logits, p);
        }
        logits
    }
}

/// Logits with every token outside each row's nucleus set to −∞: sorted by probability, token i stays
/// iff the mass before it is < p (so the first always stays).
///
/// # Shapes
/// - `logits`: [batch, vocab], `p`: [batch, 1] → [batch, vocab]
pub fn keep_nucleus<B: Backend>(logits: Tensor<B, 2>, p: Tensor<B, 2>) -> Tensor<B, 2> {
    let [batch, vocab] = logits.dims();
    let sorted = logits.clone().sort_descending(1);
    let probs = burn::tensor::activation::softmax(sorted.clone(), 1);
    let mass_before = probs.clone().cumsum(1) - probs;
    let dropped = mass_before.greater_equal(p.expand([batch, vocab]));
    // Threshold = smallest kept sorted logit.
    let threshold = sorted.mask_fill(dropped, f32::INFINITY).min_dim(1); // [batch, 1]
    let below = logits.clone().lower(threshold.expand([batch, vocab]));
    logits.mask_fill(below, f32::NEG_INFINITY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use burn::tensor::TensorData;

    fn logits(rows: Vec<Vec<f32>>) -> Tensor<TestBackend, 2> {
        let (b, v) = (rows.len(), rows[0].len());
        Tensor::from_data(TensorData::new(rows.concat(), [b, v]), &Default::default())
    }

    fn kept(sampler: &Sampler, rows: Vec<Vec<f32>>) -> Vec<Vec<bool>> {
        let v = rows[0].len();
        let out = sampler.filtered_logits(logits(rows)).into_data().to_vec::<f32>().unwrap();
        out.chunks(v).map(|r| r.iter().map(|x| x.is_finite()).collect()).collect()
    }

    #[test]
    fn greedy_picks_argmax_per_row() {
        let ids = Sampler::Greedy.select(logits(vec![vec![0.1, 3.0, -1.0], vec![5.0, 0.0, 4.9]]));
        assert_eq!(ids.into_data().convert::<i64>().to_vec::<i64>().unwrap(), vec![1, 0]);
    }

    #[test]
    fn top_k_keeps_k_largest_with_their_ids() {
        let s = Sampler::Sample { temperature: 1.0, top_k: Some(2), top_p: None };
        // Row 2 puts the largest values at the end: the ids must follow the values.
        let got = kept(&s, vec![vec![1.0, 4.0, 3.0, 0.0], vec![0.0, 1.0, 2.0, 3.0]]);
        assert_eq!(got, vec![vec![false, true, true, false], vec![false, false, true, true]]);
    }

    #[test]
    fn top_p_keeps_smallest_set_reaching_p() {
        // probs = softmax(ln [0.5, 0.3, 0.15, 0.05]) = [0.5, 0.3, 0.15, 0.05]
        let row: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let s = |p| Sampler::Sample { temperature: 1.0, top_k: None, top_p: Some(p) };
        // p = 0.7: 0.5 < 0.7 so the second is needed (mass before it 0.5 < 0.7); mass before third = 0.8.
        assert_eq!(kept(&s(0.7), vec![row.clone()]), vec![vec![true, true, false, false]]);
        // p = 0.4: the first alone reaches it.
        assert_eq!(kept(&s(0.4), vec![row.clone()]), vec![vec![true, false, false, false]]);
        // p = 0.9: 0.5 + 0.3 = 0.8 < 0.9 → three tokens.
        assert_eq!(kept(&s(0.9), vec![row]), vec![vec![true, true, true, false]]);
    }

    #[test]
    fn sampling_follows_the_distribution_and_never_picks_filtered_tokens() {
        let device = Default::default();
        <TestBackend as burn::tensor::backend::Backend>::seed(&device, 7);
        let s = Sampler::Sample { temperature: 1.0, top_k: Some(2), top_p: None };
        // probs over the two kept tokens: 0.75 / 0.25.
        let row = vec![0.75f32.ln(), 0.25f32.ln(), -30.0];
        let rows = 4000;
        let ids = s.select(logits(vec![row; rows])).into_data().convert::<i64>().to_vec::<i64>().unwrap();
        let first = ids.iter().filter(|&&i| i == 0).count() as f64 / rows as f64;
        assert!(ids.iter().all(|&i| i == 0 || i == 1));
        assert!((first - 0.75).abs() < 0.03, "frequency of token 0 = {first}");
    }
}

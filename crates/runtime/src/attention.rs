//! The attention probabilities as one op: p = softmax(scale · scores + bias) over the keys, with
//! the causal/padding bias shared by every head of a sequence.
//!
//! Composed from burn ops this is a scalar product, a broadcast addition of the bias, and the
//! five passes of softmax (max, shift, exp, sum, divide), each kept for backward. Here forward is
//! one pass per row and keeps only p; backward is dL/dscores = scale · p ⊙ (g − Σ_k g p).

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::activation::softmax;
use burn::tensor::ops::FloatTensor;
use burn::tensor::Tensor;

use crate::rows::float;
use crate::Backend;

/// # Shapes
/// - `scores`: [batch, heads, seq, keys]; `bias`: [batch, seq, keys] → like `scores`
pub fn attention_probs<B: Backend>(scores: Tensor<B, 4>, scale: f32, bias: Tensor<B, 3>) -> Tensor<B, 4> {
    float(B::attention_probs(scores.into_primitive().tensor(), scale, bias.into_primitive().tensor()))
}

/// The composition of burn ops.
pub(crate) fn attention_probs_composed<B: burn::tensor::backend::Backend>(scores: FloatTensor<B>, scale: f32, bias: FloatTensor<B>) -> FloatTensor<B> {
    let scores = float::<B, 4>(scores);
    let [batch, _, seq, keys] = scores.dims();
    let bias = float::<B, 3>(bias).reshape([batch, 1, seq, keys]);
    softmax(scores * scale + bias, 3).into_primitive().tensor()
}

/// The composition of dL/dscores = scale · p ⊙ (g − Σ_k g p).
pub(crate) fn attention_probs_backward_composed<B: burn::tensor::backend::Backend>(probs: FloatTensor<B>, scale: f32, grad: FloatTensor<B>) -> FloatTensor<B> {
    let (p, g) = (float::<B, 4>(probs), float::<B, 4>(grad));
    let dot = (g.clone() * p.clone()).sum_dim(3);
    (p * (g - dot) * scale).into_primitive().tensor()
}

/// Under autodiff: one op keeping p (the bias is a constant).
pub(crate) fn attention_probs_tracked<B: Backend, C: CheckpointStrategy>(
    scores: FloatTensor<Autodiff<B, C>>,
    scale: f32,
    bias: FloatTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    #[derive(Debug)]
    struct AttentionProbs;

    impl<B: Backend> Backward<B, 1> for AttentionProbs {
        /// p and the scale.
        type State = (FloatTensor<B>, f32);

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (probs, scale) = ops.state;
            unary::<B, _>(ops.parents, ops.node, grads, |grad| B::attention_probs_backward(probs, scale, grad));
        }
    }

    let probs = B::attention_probs(scores.primitive, scale, bias.primitive);
    match AttentionProbs.prepare::<C>([scores.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish((probs.clone(), scale), probs),
        OpsKind::UnTracked(prep) => prep.finish(probs),
    }
}

/// burn-flex: one loop per row (f32; anything else takes the composition).
pub(crate) mod flex {
    use burn_flex::FlexTensor;

    use crate::rows::flex::{f32_contiguous, for_rows, tensor};

    /// Below this many scores one core does it all.
    const PARALLEL_ELEMENTS: usize = 1 << 16;

    pub fn attention_probs(scores: &FlexTensor, scale: f32, bias: &FlexTensor) -> Option<FlexTensor> {
        let dims = scores.layout().shape().to_vec();
        let (heads, seq, keys) = (dims[1], dims[2], dims[3]);
        let (scores, bias) = (f32_contiguous(scores)?, f32_contiguous(bias)?);
        let (s, bias) = (scores.as_slice::<f32>()?, bias.as_slice::<f32>()?);
        if bias.len() != dims[0] * seq * keys {
            return None;
        }
        let mut out = vec![0f32; s.len()];
        for_rows(&mut out, keys, s.len() >= PARALLEL_ELEMENTS, |r, o| {
            // Row r is (batch, head, query) = (r / (heads·seq), ·, r % seq).
            let bias_row = ((r / (heads * seq)) * seq + r % seq) * keys;
            let (s, b) = (&s[r * keys..(r + 1) * keys], &bias[bias_row..bias_row + keys]);
            let mut max = f32::NEG_INFINITY;
            for ((o, &s), &b) in o.iter_mut().zip(s).zip(b) {
                *o = s * scale + b;
                max = max.max(*o);
            }
            let mut sum = 0f32;
            for o in o.iter_mut() {
                *o = (*o - max).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            o.iter_mut().for_each(|o| *o *= inv);
        });
        Some(tensor(out, dims))
    }

    pub fn attention_probs_backward(probs: &FlexTensor, scale: f32, grad: &FlexTensor) -> Option<FlexTensor> {
        let dims = probs.layout().shape().to_vec();
        let keys = dims[3];
        let (probs, grad) = (f32_contiguous(probs)?, f32_contiguous(grad)?);
        let (p, g) = (probs.as_slice::<f32>()?, grad.as_slice::<f32>()?);
        let mut out = vec![0f32; p.len()];
        for_rows(&mut out, keys, p.len() >= PARALLEL_ELEMENTS, |r, o| {
            let (p, g) = (&p[r * keys..(r + 1) * keys], &g[r * keys..(r + 1) * keys]);
            let dot: f32 = p.iter().zip(g).map(|(p, g)| p * g).sum();
            for ((o, &p), &g) in o.iter_mut().zip(p).zip(g) {
                *o = scale * p * (g - dot);
            }
        });
        Some(tensor(out, dims))
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, ElementConversion, TensorData};

    use super::*;
    use crate::{Cpu, CpuTrain};

    /// Causal + left-padding bias as the model builds it (−1e9 where masked; the second row's
    /// first two keys are padding).
    fn bias<B: burn::tensor::backend::Backend>(batch: usize, seq: usize) -> Tensor<B, 3> {
        let v: Vec<f32> = (0..batch)
            .flat_map(|b| (0..seq).flat_map(move |i| (0..seq).map(move |j| if j > i || (b == 1 && j < 2) { -1e9 } else { 0.0 })))
            .collect();
        Tensor::from_data(TensorData::new(v, [batch, seq, seq]), &Default::default())
    }

    fn scores<B: burn::tensor::backend::Backend>(batch: usize, heads: usize, seq: usize, seed: u64) -> Tensor<B, 4> {
        let device = Default::default();
        B::seed(&device, seed);
        Tensor::random([batch, heads, seq, seq], Distribution::Normal(0.0, 3.0), &device)
    }

    fn max_abs_diff<B: burn::tensor::backend::Backend>(a: Tensor<B, 4>, b: Tensor<B, 4>) -> f32 {
        (a - b).abs().max().into_scalar().elem()
    }

    const SHAPES: [(usize, usize, usize); 2] = [(2, 3, 7), (4, 8, 48)];

    #[test]
    fn forward_matches_the_composition() {
        for (batch, heads, seq) in SHAPES {
            let (s, b) = (scores::<Cpu>(batch, heads, seq, 1), bias::<Cpu>(batch, seq));
            let want = float::<Cpu, 4>(attention_probs_composed::<Cpu>(s.clone().into_primitive().tensor(), 0.3, b.clone().into_primitive().tensor()));
            assert!(max_abs_diff(attention_probs(s, 0.3, b), want) < 1e-6);
        }
    }

    /// dL/dscores of L = Σ w·p through the op equals burn's autodiff of the composition; masked
    /// keys get zero gradient through both.
    #[test]
    fn gradient_matches_the_autodiff_of_the_composition() {
        for (batch, heads, seq) in SHAPES {
            let b = bias::<CpuTrain>(batch, seq);
            let w = scores::<CpuTrain>(batch, heads, seq, 2);
            let grad = |fused: bool| {
                let s = scores::<CpuTrain>(batch, heads, seq, 1).require_grad();
                let p = if fused {
                    attention_probs(s.clone(), 0.3, b.clone())
                } else {
                    float(attention_probs_composed::<CpuTrain>(s.clone().into_primitive().tensor(), 0.3, b.clone().into_primitive().tensor()))
                };
                s.grad(&(p * w.clone()).sum().backward()).expect("tracked")
            };
            let fused = grad(true);
            assert!(max_abs_diff(fused.clone(), grad(false)) < 1e-5);
            // The composition of the backward (every backend but burn-flex).
            let p = attention_probs(scores::<Cpu>(batch, heads, seq, 1), 0.3, b.clone().inner());
            let composed = float::<Cpu, 4>(attention_probs_backward_composed::<Cpu>(p.into_primitive().tensor(), 0.3, w.clone().inner().into_primitive().tensor()));
            assert!(max_abs_diff(composed, fused) < 1e-5);
        }
    }
}

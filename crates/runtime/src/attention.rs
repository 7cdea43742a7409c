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
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{FloatDType, Tensor};

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

/// One layer's attention output softmax(scale · q kᵀ + bias) · v ([`Backend::attention_output`]).
///
/// # Shapes
/// - `q`: [batch, heads, seq, head_dim]; `k`, `v`: [batch, kv_heads, keys, head_dim];
///   `bias`: [batch, seq, keys] → [batch, heads, seq, head_dim] in v's dtype
pub fn attention_output<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, scale: f32, bias: Tensor<B, 3>) -> Tensor<B, 4> {
    let prim = |t: Tensor<B, 4>| t.into_primitive().tensor();
    float(B::attention_output(prim(q), prim(k), prim(v), scale, bias.into_primitive().tensor()))
}

/// Scores in f32, [`attention_probs`], then the probabilities in v's dtype times v. Query heads that
/// share a kv head are stacked along the sequence axis ([batch, kv_heads, rep · seq, head_dim]), so
/// K and V are never copied `rep` times.
pub(crate) fn attention_output_composed<B: Backend>(q: FloatTensor<B>, k: FloatTensor<B>, v: FloatTensor<B>, scale: f32, bias: FloatTensor<B>) -> FloatTensor<B> {
    let (q, k, v, bias) = (float::<B, 4>(q), float::<B, 4>(k), float::<B, 4>(v), float::<B, 3>(bias));
    let ([batch, heads, seq, head_dim], [_, kv_heads, keys, _]) = (q.dims(), k.dims());
    let rep = heads / kv_heads;
    let q = if rep == 1 { q } else { q.reshape([batch, kv_heads, rep * seq, head_dim]) };
    let scores = q.matmul(k.swap_dims(2, 3)).cast(FloatDType::F32).reshape([batch, heads, seq, keys]);
    let probs = attention_probs(scores, scale, bias).reshape([batch, kv_heads, rep * seq, keys]).cast(v.dtype());
    probs.matmul(v).reshape([batch, heads, seq, head_dim]).into_primitive().tensor()
}

/// burn's own attention op (`module::attention`), for backends with a fused kernel: burn-cuda's
/// autotuner picks a flash-attention kernel when the op has no additive bias and the default
/// scale, so the bias becomes a boolean mask here. A query that sees no key at all (a left-padding
/// position) attends to every key instead of none: a fully masked row is 0/0 in a flash kernel,
/// and a NaN there would reach real tokens through the next layer's values; its own output is
/// never read, and real queries never see padding keys. K and V are repeated to the query heads
/// (the kernel takes one kv head per query head).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn attention_output_fused<B: burn::tensor::backend::Backend>(q: FloatTensor<B>, k: FloatTensor<B>, v: FloatTensor<B>, scale: f32, bias: FloatTensor<B>) -> FloatTensor<B> {
    let (q, k, v, bias) = (float::<B, 4>(q), float::<B, 4>(k), float::<B, 4>(v), float::<B, 3>(bias));
    let ([batch, heads, _, head_dim], [_, kv_heads, keys, _]) = (q.dims(), k.dims());
    let rep = heads / kv_heads;
    let per_query_head = |t: Tensor<B, 4>| if rep == 1 { t } else { t.unsqueeze_dim::<5>(2).repeat_dim(2, rep).reshape([batch, heads, keys, head_dim]) };
    let (k, v) = (per_query_head(k), per_query_head(v));
    let bias = bias.cast(FloatDType::F32);
    let sees_nothing = bias.clone().max_dim(2).lower_elem(MASKED_BELOW).repeat_dim(2, keys);
    let mask = bias.mask_fill(sees_nothing, 0.0).lower_elem(MASKED_BELOW).unsqueeze_dim::<4>(1).repeat_dim(1, heads);
    let default_scale = 1.0 / (head_dim as f64).sqrt();
    let options = AttentionModuleOptions {
        scale: ((scale as f64 - default_scale).abs() > 1e-7 * default_scale).then_some(scale as f64),
        softcap: None,
        is_causal: false,
    };
    let dtype = v.dtype();
    burn::tensor::module::attention(q, k, v, Some(mask), None, options).cast(dtype).into_primitive().tensor()
}

/// A bias below this marks a masked key (the model's masked bias is −1e9; visible keys have 0).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
const MASKED_BELOW: f32 = -1.0e4;

/// burn-flex: one loop per row (f32; anything else takes the composition).
pub(crate) mod flex {
    use burn_flex::FlexTensor;

    use crate::rows::flex::{f32_contiguous, new_rows, tensor};
    use crate::vector_exp::exp_shifted_in_place;

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
        let out = new_rows(s.len(), keys, s.len() >= PARALLEL_ELEMENTS, |r, o| {
            // Row r is (batch, head, query) = (r / (heads·seq), ·, r % seq).
            let bias_row = ((r / (heads * seq)) * seq + r % seq) * keys;
            let (s, b) = (&s[r * keys..(r + 1) * keys], &bias[bias_row..bias_row + keys]);
            let mut max = f32::NEG_INFINITY;
            for ((o, &s), &b) in o.iter_mut().zip(s).zip(b) {
                *o = s * scale + b;
                max = max.max(*o);
            }
            let sum = exp_shifted_in_place(o, max);
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
        let out = new_rows(p.len(), keys, p.len() >= PARALLEL_ELEMENTS, |r, o| {
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

    fn normal<B: burn::tensor::backend::Backend>(shape: [usize; 4], seed: u64) -> Tensor<B, 4> {
        let device = Default::default();
        B::seed(&device, seed);
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &device)
    }

    /// burn's attention op with the bias turned into a mask (CUDA's fused path, run here on
    /// burn-flex's kernels) equals the composition on every query that sees a key — grouped
    /// heads, a KV cache (one query, many keys), left padding, and a shape large enough for
    /// burn-flex's tiled flash kernel — and stays finite on queries that see none.
    #[test]
    fn fused_attention_output_matches_the_composition() {
        // (batch, heads, kv_heads, queries, past keys, head_dim); row 1 of a batch has two padding keys.
        for (batch, heads, kv_heads, seq, past, hd) in [(2, 4, 2, 7, 0, 8), (2, 4, 4, 1, 9, 8), (2, 2, 1, 64, 4100, 16)] {
            let keys = past + seq;
            let sees = |b: usize, i: usize, j: usize| j <= past + i && !(b == 1 && j < 2);
            let bias: Vec<f32> = (0..batch).flat_map(|b| (0..seq).flat_map(move |i| (0..keys).map(move |j| if sees(b, i, j) { 0.0 } else { -1e9 }))).collect();
            let bias = Tensor::<Cpu, 3>::from_data(TensorData::new(bias, [batch, seq, keys]), &Default::default());
            let (q, k, v) = (normal::<Cpu>([batch, heads, seq, hd], 1), normal::<Cpu>([batch, kv_heads, keys, hd], 2), normal::<Cpu>([batch, kv_heads, keys, hd], 3));
            let scale = 1.0 / (hd as f32).sqrt();
            let run = |fused: bool| {
                let (q, k, v, b) = (q.clone().into_primitive().tensor(), k.clone().into_primitive().tensor(), v.clone().into_primitive().tensor(), bias.clone().into_primitive().tensor());
                let out = if fused { attention_output_fused::<Cpu>(q, k, v, scale, b) } else { attention_output_composed::<Cpu>(q, k, v, scale, b) };
                float::<Cpu, 4>(out).into_data().to_vec::<f32>().unwrap()
            };
            let (fused, composed) = (run(true), run(false));
            assert!(fused.iter().all(|x| x.is_finite()), "{seq} queries, {keys} keys");
            let mut compared = 0;
            for (row, (f, c)) in fused.chunks(hd).zip(composed.chunks(hd)).enumerate() {
                let (b, i) = (row / (heads * seq), row % seq);
                if (0..keys).any(|j| sees(b, i, j)) {
                    let diff = f.iter().zip(c).map(|(f, c)| (f - c).abs()).fold(0f32, f32::max);
                    assert!(diff < 1e-5, "{seq} queries, {keys} keys, row {row}: {diff}");
                    compared += 1;
                }
            }
            assert!(compared > 0);
        }
    }

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

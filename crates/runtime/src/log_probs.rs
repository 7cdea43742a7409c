//! Log-probabilities of chosen tokens and the policy's entropy, straight from logits: the
//! cross-entropy of every stage (SFT, the ptx term, PPO's ratio) and PPO's entropy bonus.
//!
//! Composed from burn ops, `log_softmax(x).gather(t)` keeps several [rows, vocab] tensors alive for
//! backward and makes a dozen passes over them (the shift, exp, sum, the subtraction, then in
//! backward a zero tensor, the scatter, the sums and products of each op's gradient). Here each is
//! one op: forward keeps the logits (which the unembedding product made anyway) and one number per
//! row, log Σ exp; backward writes dL/dlogits in one pass:
//!
//! - log p(t) = x_t − lse, with lse = log Σ_j exp x_j;  ∂/∂x_j = δ_jt − p_j
//! - H = −Σ_j p_j log p_j = lse − Σ_j p_j x_j;          ∂H/∂x_j = −p_j (log p_j + H)
//!
//! The plain compositions are the default on every backend; burn-flex (CPU) runs each row in one
//! loop, rows split across cores when the tensor is big enough.

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Int, Tensor};

use crate::rows::{float, prim};
use crate::Backend;

/// log softmax(logits)[target] of each row.
///
/// # Shapes
/// - `logits`: [rows, vocab]; `targets`: [rows] → [rows]
pub fn target_log_probs<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    float(B::target_log_probs(prim(logits), targets.into_primitive()))
}

/// Entropy of softmax(logits) of each row.
///
/// # Shapes
/// - `logits`: [rows, vocab] → [rows]
pub fn token_entropy<B: Backend>(logits: Tensor<B, 2>) -> Tensor<B, 1> {
    float(B::token_entropy(prim(logits)))
}

/// log Σ_j exp x_j of each row, shifted by the row's maximum.
///
/// # Shapes
/// - `x`: [rows, vocab] → [rows, 1]
fn log_sum_exp<B: burn::tensor::backend::Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let max = x.clone().max_dim(1);
    (x - max.clone()).exp().sum_dim(1).log() + max
}

/// The composition of burn ops: (log p(target), lse) per row.
pub(crate) fn log_softmax_gather<B: burn::tensor::backend::Backend>(logits: FloatTensor<B>, targets: IntTensor<B>) -> (FloatTensor<B>, FloatTensor<B>) {
    let x = float::<B, 2>(logits);
    let rows = x.dims()[0];
    let lse = log_sum_exp(x.clone());
    let targets = Tensor::<B, 1, Int>::from_primitive(targets).reshape([rows, 1]);
    let logp = x.gather(1, targets) - lse.clone();
    (prim(logp.reshape([rows])), prim(lse.reshape([rows])))
}

/// The composition: grad_i · (δ_jt − p_ij).
pub(crate) fn log_softmax_gather_backward<B: burn::tensor::backend::Backend>(
    logits: FloatTensor<B>,
    lse: FloatTensor<B>,
    targets: IntTensor<B>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let x = float::<B, 2>(logits);
    let rows = x.dims()[0];
    let grad = float::<B, 1>(grad).reshape([rows, 1]);
    let p = (x - float::<B, 1>(lse).reshape([rows, 1])).exp();
    let targets = Tensor::<B, 1, Int>::from_primitive(targets).reshape([rows, 1]);
    prim((p * grad.clone().neg()).scatter(1, targets, grad, burn::tensor::IndexingUpdateOp::Add))
}

/// The composition: (H, lse) per row.
pub(crate) fn softmax_entropy<B: burn::tensor::backend::Backend>(logits: FloatTensor<B>) -> (FloatTensor<B>, FloatTensor<B>) {
    let x = float::<B, 2>(logits);
    let rows = x.dims()[0];
    let lse = log_sum_exp(x.clone());
    let p = (x.clone() - lse.clone()).exp();
    let entropy = lse.clone() - (p * x).sum_dim(1);
    (prim(entropy.reshape([rows])), prim(lse.reshape([rows])))
}

/// The composition: −grad_i · p_ij (log p_ij + H_i).
pub(crate) fn softmax_entropy_backward<B: burn::tensor::backend::Backend>(
    logits: FloatTensor<B>,
    lse: FloatTensor<B>,
    entropy: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let x = float::<B, 2>(logits);
    let rows = x.dims()[0];
    let column = |t: FloatTensor<B>| float::<B, 1>(t).reshape([rows, 1]);
    let log_p = x - column(lse);
    prim(log_p.clone().exp() * (log_p + column(entropy)) * column(grad).neg())
}

/// Under autodiff each is one op whose backward is the inner backend's `…_backward`.
pub(crate) fn target_log_probs_tracked<B: Backend, C: CheckpointStrategy>(
    logits: FloatTensor<Autodiff<B, C>>,
    targets: IntTensor<B>,
) -> FloatTensor<Autodiff<B, C>> {
    #[derive(Debug)]
    struct TargetLogProbs;

    impl<B: Backend> Backward<B, 1> for TargetLogProbs {
        /// The logits (shared with the unembedding product's output), lse and the targets.
        type State = (FloatTensor<B>, FloatTensor<B>, IntTensor<B>);

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (logits, lse, targets) = ops.state;
            unary::<B, _>(ops.parents, ops.node, grads, |grad| B::log_softmax_gather_backward(logits, lse, targets, grad));
        }
    }

    let (logp, lse) = B::log_softmax_gather(logits.primitive.clone(), targets.clone());
    match TargetLogProbs.prepare::<C>([logits.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish((logits.primitive, lse, targets), logp),
        OpsKind::UnTracked(prep) => prep.finish(logp),
    }
}

pub(crate) fn token_entropy_tracked<B: Backend, C: CheckpointStrategy>(logits: FloatTensor<Autodiff<B, C>>) -> FloatTensor<Autodiff<B, C>> {
    #[derive(Debug)]
    struct TokenEntropy;

    impl<B: Backend> Backward<B, 1> for TokenEntropy {
        /// The logits, lse and H.
        type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (logits, lse, entropy) = ops.state;
            unary::<B, _>(ops.parents, ops.node, grads, |grad| B::softmax_entropy_backward(logits, lse, entropy, grad));
        }
    }

    let (entropy, lse) = B::softmax_entropy(logits.primitive.clone());
    match TokenEntropy.prepare::<C>([logits.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish((logits.primitive, lse, entropy.clone()), entropy),
        OpsKind::UnTracked(prep) => prep.finish(entropy),
    }
}

/// burn-flex's rows in plain loops (f32 logits; anything else takes the composition).
pub(crate) mod flex {
    use burn::tensor::DType;
    use burn_flex::FlexTensor;

    use crate::rows::flex::{f32_contiguous, for_rows, new_rows, tensor};
    use crate::vector_exp::{exp_shifted, sum_exp_shifted, sums_exp_shifted_weighted};

    /// Below this many logits a tensor is done on one core (thread hand-off would cost more).
    const PARALLEL_ELEMENTS: usize = 1 << 18;

    /// The f32 rows of a [rows, vocab] tensor (None: not f32).
    fn rows_of(t: &FlexTensor) -> Option<(FlexTensor, usize, usize)> {
        let dims = t.layout().shape().to_vec();
        Some((f32_contiguous(t)?, dims[0], dims[1]))
    }

    fn targets_of(t: &FlexTensor) -> Vec<i64> {
        let t = t.to_contiguous();
        match t.dtype() {
            DType::I32 => t.as_slice::<i32>().expect("contiguous").iter().map(|&v| v as i64).collect(),
            DType::I64 => t.as_slice::<i64>().expect("contiguous").to_vec(),
            other => panic!("token ids must be i32 or i64, got {other:?}"),
        }
    }

    /// (max, Σ exp(x − max)) of a row.
    fn shifted_sum(row: &[f32]) -> (f32, f32) {
        let max = row_max(row);
        (max, sum_exp_shifted(row, max))
    }

    fn row_max(row: &[f32]) -> f32 {
        row.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    }

    fn target_index(target: i64, vocab: usize) -> usize {
        assert!((0..vocab as i64).contains(&target), "token id {target} outside the vocabulary of {vocab} logits");
        target as usize
    }

    pub fn log_softmax_gather(logits: &FlexTensor, targets: &FlexTensor) -> Option<(FlexTensor, FlexTensor)> {
        let (x, rows, vocab) = rows_of(logits)?;
        let x = x.as_slice::<f32>()?;
        let targets = targets_of(targets);
        let mut out = vec![[0f32; 2]; rows];
        for_rows(&mut out, 1, rows * vocab >= PARALLEL_ELEMENTS, |i, o| {
            let row = &x[i * vocab..(i + 1) * vocab];
            let (max, sum) = shifted_sum(row);
            let lse = max + sum.ln();
            o[0] = [row[target_index(targets[i], vocab)] - lse, lse];
        });
        let (logp, lse) = out.into_iter().map(|[a, b]| (a, b)).unzip();
        Some((tensor(logp, vec![rows]), tensor(lse, vec![rows])))
    }

    pub fn log_softmax_gather_backward(logits: &FlexTensor, lse: &FlexTensor, targets: &FlexTensor, grad: &FlexTensor) -> Option<FlexTensor> {
        let (x, rows, vocab) = rows_of(logits)?;
        let x = x.as_slice::<f32>()?;
        let (lse, grad, targets) = (f32_contiguous(lse)?, f32_contiguous(grad)?, targets_of(targets));
        let (lse, grad) = (lse.as_slice::<f32>()?, grad.as_slice::<f32>()?);
        let out = new_rows(rows * vocab, vocab, rows * vocab >= PARALLEL_ELEMENTS, |i, o| {
            let row = &x[i * vocab..(i + 1) * vocab];
            let (g, lse) = (grad[i], lse[i]);
            exp_shifted(o, row, lse);
            o.iter_mut().for_each(|o| *o *= -g);
            o[target_index(targets[i], vocab)] += g;
        });
        Some(tensor(out, vec![rows, vocab]))
    }

    pub fn softmax_entropy(logits: &FlexTensor) -> Option<(FlexTensor, FlexTensor)> {
        let (x, rows, vocab) = rows_of(logits)?;
        let x = x.as_slice::<f32>()?;
        let mut out = vec![[0f32; 2]; rows];
        for_rows(&mut out, 1, rows * vocab >= PARALLEL_ELEMENTS, |i, o| {
            let row = &x[i * vocab..(i + 1) * vocab];
            let max = row_max(row);
            // Σ e_j and Σ e_j·x_j in one pass: H = lse − Σ p_j x_j.
            let (sum, weighted) = sums_exp_shifted_weighted(row, max);
            let lse = max + sum.ln();
            o[0] = [lse - weighted / sum, lse];
        });
        let (entropy, lse) = out.into_iter().map(|[a, b]| (a, b)).unzip();
        Some((tensor(entropy, vec![rows]), tensor(lse, vec![rows])))
    }

    pub fn softmax_entropy_backward(logits: &FlexTensor, lse: &FlexTensor, entropy: &FlexTensor, grad: &FlexTensor) -> Option<FlexTensor> {
        let (x, rows, vocab) = rows_of(logits)?;
        let x = x.as_slice::<f32>()?;
        let (lse, entropy, grad) = (f32_contiguous(lse)?, f32_contiguous(entropy)?, f32_contiguous(grad)?);
        let (lse, entropy, grad) = (lse.as_slice::<f32>()?, entropy.as_slice::<f32>()?, grad.as_slice::<f32>()?);
        let out = new_rows(rows * vocab, vocab, rows * vocab >= PARALLEL_ELEMENTS, |i, o| {
            let row = &x[i * vocab..(i + 1) * vocab];
            let (g, lse, h) = (grad[i], lse[i], entropy[i]);
            exp_shifted(o, row, lse); // p_j
            for (o, &x) in o.iter_mut().zip(row) {
                *o = -g * *o * ((x - lse) + h);
            }
        });
        Some(tensor(out, vec![rows, vocab]))
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::{log_softmax, softmax};
    use burn::tensor::{Distribution, TensorData};

    use super::*;
    use crate::{Cpu, CpuTrain};

    /// Logits with a wide spread (as a trained LM's), targets, and a 0/1 mask (padding).
    fn inputs<B: burn::tensor::backend::Backend>(rows: usize, vocab: usize, seed: u64) -> (Tensor<B, 2>, Tensor<B, 1, Int>, Tensor<B, 1>) {
        let device = Default::default();
        B::seed(&device, seed);
        let logits = Tensor::<B, 2>::random([rows, vocab], Distribution::Normal(0.0, 4.0), &device);
        let targets = Tensor::<B, 1, Int>::from_data(TensorData::new((0..rows).map(|i| ((i * 7919) % vocab) as i64).collect(), [rows]), &device);
        let mask = Tensor::<B, 1>::from_data(TensorData::new((0..rows).map(|i| if i % 5 == 3 { 0.0f32 } else { 1.0 }).collect(), [rows]), &device);
        (logits, targets, mask)
    }

    fn plain_log_probs<B: burn::tensor::backend::Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
        let rows = targets.dims()[0];
        log_softmax(logits, 1).gather(1, targets.reshape([rows, 1])).reshape([rows])
    }

    fn plain_entropy<B: burn::tensor::backend::Backend>(logits: Tensor<B, 2>) -> Tensor<B, 1> {
        let rows = logits.dims()[0];
        (softmax(logits.clone(), 1) * log_softmax(logits, 1)).sum_dim(1).neg().reshape([rows])
    }

    fn max_abs_diff<B: burn::tensor::backend::Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
        (a - b).abs().max().into_scalar().elem()
    }

    use burn::tensor::ElementConversion;

    /// Both sizes: one core (small) and rows split across cores (≥ 2^18 logits).
    const SHAPES: [(usize, usize); 2] = [(37, 61), (300, 1000)];

    #[test]
    fn forwards_match_the_plain_composition() {
        for (rows, vocab) in SHAPES {
            let (logits, targets, _) = inputs::<Cpu>(rows, vocab, 1);
            let want = plain_log_probs(logits.clone(), targets.clone());
            // burn-flex's loops, and the composition every other backend runs.
            assert!(max_abs_diff(target_log_probs(logits.clone(), targets.clone()), want.clone()) < 1e-4);
            let (composed, _) = super::log_softmax_gather::<Cpu>(logits.clone().into_primitive().tensor(), targets.into_primitive());
            assert!(max_abs_diff(float::<Cpu, 1>(composed), want) < 1e-4);
            let want = plain_entropy(logits.clone());
            assert!(max_abs_diff(token_entropy(logits.clone()), want.clone()) < 1e-4);
            let (composed, _) = super::softmax_entropy::<Cpu>(logits.into_primitive().tensor());
            assert!(max_abs_diff(float::<Cpu, 1>(composed), want) < 1e-4);
        }
    }

    /// dL/dlogits of L = Σ mask·(a·log p(t) + b·H) through the fused ops equals burn's autodiff of
    /// the plain ops (masked rows get zero gradient through both).
    #[test]
    fn gradients_match_the_autodiff_of_the_plain_composition() {
        for (rows, vocab) in SHAPES {
            let (logits, targets, mask) = inputs::<CpuTrain>(rows, vocab, 2);
            let loss = |fused: bool| {
                let x = logits.clone().detach().require_grad();
                let (logp, h) = if fused {
                    (target_log_probs(x.clone(), targets.clone()), token_entropy(x.clone()))
                } else {
                    (plain_log_probs(x.clone(), targets.clone()), plain_entropy(x.clone()))
                };
                let l = ((logp * 0.7 + h * -0.3) * mask.clone()).sum();
                let grads = l.backward();
                x.grad(&grads).expect("tracked")
            };
            let (fused, plain) = (loss(true), loss(false));
            assert!(max_abs_diff(fused.clone(), plain) < 1e-4, "rows {rows} vocab {vocab}");
            // The composition's backward (every backend but burn-flex) too.
            let x = logits.clone().inner();
            let rows_grad = Tensor::<Cpu, 1>::ones([rows], &Default::default()) * mask.clone().inner();
            let (_, lse) = super::log_softmax_gather::<Cpu>(prim(x.clone()), targets.clone().inner().into_primitive());
            let (h, lse_h) = super::softmax_entropy::<Cpu>(prim(x.clone()));
            let composed = float::<Cpu, 2>(super::log_softmax_gather_backward::<Cpu>(prim(x.clone()), lse, targets.clone().inner().into_primitive(), prim(rows_grad.clone() * 0.7)))
                + float::<Cpu, 2>(super::softmax_entropy_backward::<Cpu>(prim(x), lse_h, h, prim(rows_grad * -0.3)));
            assert!(max_abs_diff(composed, fused) < 1e-4, "rows {rows} vocab {vocab}");
        }
    }

    #[test]
    fn by_hand() {
        // softmax([0, ln 3]) = [1/4, 3/4]: log p(1) = ln 3/4, H = −(¼ ln ¼ + ¾ ln ¾);
        // d log p(1)/dx = [−1/4, 1/4].
        let x = Tensor::<CpuTrain, 2>::from_data(TensorData::new(vec![0.0f32, 3f32.ln()], [1, 2]), &Default::default()).require_grad();
        let t = Tensor::<CpuTrain, 1, Int>::from_data(TensorData::new(vec![1i64], [1]), &Default::default());
        let logp = target_log_probs(x.clone(), t);
        assert!((logp.clone().into_scalar() - 0.75f32.ln()).abs() < 1e-6);
        let h: f32 = token_entropy(x.clone().inner()).into_scalar();
        assert!((h + 0.25 * 0.25f32.ln() + 0.75 * 0.75f32.ln()).abs() < 1e-6);
        let g = x.grad(&logp.sum().backward()).unwrap().into_data().to_vec::<f32>().unwrap();
        assert!((g[0] + 0.25).abs() < 1e-6 && (g[1] - 0.25).abs() < 1e-6, "{g:?}");
    }
}

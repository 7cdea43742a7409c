//! RMSNorm as one op: y = x · r · w, r = 1/√(mean(x²) + ε) per row (LLaMA, Qwen2).
//!
//! Composed from burn ops it is a square, a mean, an addition, a square root, a reciprocal and two
//! broadcast products, each kept for backward. Here forward keeps x, w and r (one number per row):
//! with n = x·r and h = g·w,
//!   dL/dx = r · (h − n · mean(h·n)),   dL/dw = Σ_rows g·n.

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::ops::FloatTensor;
use burn::tensor::Tensor;

use crate::rows::{both_gradients_in_one_pass, float, prim};
use crate::Backend;

/// # Shapes
/// - `x`: [rows, d]; `weight`: [d] → [rows, d]
pub fn rms_norm<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 1>, eps: f32) -> Tensor<B, 2> {
    float(B::rms_norm(prim(x), prim(weight), eps))
}

/// The composition: (y, r).
pub(crate) fn rms_norm_composed<B: burn::tensor::backend::Backend>(x: FloatTensor<B>, weight: FloatTensor<B>, eps: f32) -> (FloatTensor<B>, FloatTensor<B>) {
    let x = float::<B, 2>(x);
    let rows = x.dims()[0];
    let r = (x.clone().square().mean_dim(1) + eps).sqrt().recip();
    let y = x * r.clone() * float::<B, 1>(weight).unsqueeze::<2>();
    (prim(y), prim(r.reshape([rows])))
}

/// The composition: (dL/dx, dL/dw).
pub(crate) fn rms_norm_backward_composed<B: burn::tensor::backend::Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    r: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let (x, g) = (float::<B, 2>(x), float::<B, 2>(grad));
    let [rows, d] = x.dims();
    let r = float::<B, 1>(r).reshape([rows, 1]);
    let n = x * r.clone();
    let h = g.clone() * float::<B, 1>(weight).unsqueeze::<2>();
    let dx = (h.clone() - n.clone() * (h * n.clone()).mean_dim(1)) * r;
    let dw = (g * n).sum_dim(0).reshape([d]);
    (prim(dx), prim(dw))
}

/// Under autodiff: one op with two parents, x and the weight.
pub(crate) fn rms_norm_tracked<B: Backend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    weight: FloatTensor<Autodiff<B, C>>,
    eps: f32,
) -> FloatTensor<Autodiff<B, C>> {
    #[derive(Debug)]
    struct RmsNorm;

    impl<B: Backend> Backward<B, 2> for RmsNorm {
        /// x, w and r.
        type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
            both_gradients_in_one_pass::<B, _>(ops, grads, |(x, w, r), grad| B::rms_norm_backward(x.clone(), w.clone(), r.clone(), grad));
        }
    }

    let (y, r) = B::rms_norm_forward(x.primitive.clone(), weight.primitive.clone(), eps);
    match RmsNorm.prepare::<C>([x.node.clone(), weight.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish((x.primitive, weight.primitive, r), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

/// burn-flex: one loop per row (f32; anything else takes the composition).
pub(crate) mod flex {
    use burn_flex::FlexTensor;
    use rayon::prelude::*;

    use crate::rows::flex::{f32_contiguous, new_rows, tensor};

    /// Below this many elements one core does it all.
    const PARALLEL_ELEMENTS: usize = 1 << 16;

    pub fn rms_norm(x: &FlexTensor, weight: &FlexTensor, eps: f32) -> Option<(FlexTensor, FlexTensor)> {
        let dims = x.layout().shape().to_vec();
        let d = dims[1];
        let (x, w) = (f32_contiguous(x)?, f32_contiguous(weight)?);
        let (x, w) = (x.as_slice::<f32>()?, w.as_slice::<f32>()?);
        let mut y = vec![0f32; x.len()];
        let mut r = vec![0f32; dims[0]];
        let row = |(i, (y, r)): (usize, (&mut [f32], &mut f32))| {
            let x = &x[i * d..(i + 1) * d];
            *r = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() / d as f32 + eps).sqrt();
            for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                *y = x * *r * w;
            }
        };
        if x.len() >= PARALLEL_ELEMENTS {
            y.par_chunks_mut(d).zip(r.par_iter_mut()).enumerate().for_each(row);
        } else {
            y.chunks_mut(d).zip(r.iter_mut()).enumerate().for_each(row);
        }
        Some((tensor(y, dims.clone()), tensor(r, vec![dims[0]])))
    }

    pub fn rms_norm_backward(x: &FlexTensor, weight: &FlexTensor, r: &FlexTensor, grad: &FlexTensor) -> Option<(FlexTensor, FlexTensor)> {
        let dims = x.layout().shape().to_vec();
        let d = dims[1];
        let (x, w, r, g) = (f32_contiguous(x)?, f32_contiguous(weight)?, f32_contiguous(r)?, f32_contiguous(grad)?);
        let (x, w, r, g) = (x.as_slice::<f32>()?, w.as_slice::<f32>()?, r.as_slice::<f32>()?, g.as_slice::<f32>()?);
        let dx = new_rows(x.len(), d, x.len() >= PARALLEL_ELEMENTS, |i, dx| {
            let (x, g, r) = (&x[i * d..(i + 1) * d], &g[i * d..(i + 1) * d], r[i]);
            let mean_hn = x.iter().zip(g).zip(w).map(|((x, g), w)| g * w * x * r).sum::<f32>() / d as f32;
            for (((dx, &x), &g), &w) in dx.iter_mut().zip(x).zip(g).zip(w) {
                *dx = r * (g * w - x * r * mean_hn);
            }
        });
        // dL/dw summed over rows in order (the same sum on any number of cores).
        let mut dw = vec![0f32; d];
        for i in 0..dims[0] {
            let (x, g, r) = (&x[i * d..(i + 1) * d], &g[i * d..(i + 1) * d], r[i]);
            for ((dw, &x), &g) in dw.iter_mut().zip(x).zip(g) {
                *dw += g * x * r;
            }
        }
        Some((tensor(dx, dims), tensor(dw, vec![d])))
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, ElementConversion};

    use super::*;
    use crate::{Cpu, CpuTrain};

    fn inputs<B: burn::tensor::backend::Backend>(rows: usize, d: usize) -> (Tensor<B, 2>, Tensor<B, 1>, Tensor<B, 2>) {
        let device = Default::default();
        B::seed(&device, 5);
        (
            Tensor::random([rows, d], Distribution::Normal(0.0, 2.0), &device),
            Tensor::random([d], Distribution::Normal(1.0, 0.3), &device),
            Tensor::random([rows, d], Distribution::Normal(0.0, 1.0), &device),
        )
    }

    fn max_abs_diff<B: burn::tensor::backend::Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
        (a - b).abs().max().into_scalar().elem()
    }

    const SHAPES: [(usize, usize); 2] = [(7, 16), (1024, 128)];

    #[test]
    fn forward_matches_the_composition() {
        for (rows, d) in SHAPES {
            let (x, w, _) = inputs::<Cpu>(rows, d);
            let (want, _) = rms_norm_composed::<Cpu>(prim(x.clone()), prim(w.clone()), 1e-6);
            assert!(max_abs_diff(rms_norm(x, w, 1e-6), float::<Cpu, 2>(want)) < 1e-5);
        }
    }

    /// dL/dx and dL/dw of L = Σ v·y through the op equal burn's autodiff of the composition.
    #[test]
    fn gradients_match_the_autodiff_of_the_composition() {
        for (rows, d) in SHAPES {
            let (x0, w0, v) = inputs::<CpuTrain>(rows, d);
            let grads = |fused: bool| {
                let (x, w) = (x0.clone().require_grad(), w0.clone().require_grad());
                let y = if fused { rms_norm(x.clone(), w.clone(), 1e-6) } else { float(rms_norm_composed::<CpuTrain>(prim(x.clone()), prim(w.clone()), 1e-6).0) };
                let g = (y * v.clone()).sum().backward();
                (x.grad(&g).expect("x"), w.grad(&g).expect("w"))
            };
            let ((fx, fw), (px, pw)) = (grads(true), grads(false));
            assert!(max_abs_diff(fx.clone(), px) < 1e-4, "dx, rows {rows}");
            // dw sums over every row: relative to its size.
            let scale: f32 = pw.clone().abs().max().into_scalar().elem();
            assert!(max_abs_diff(fw.clone(), pw) < 1e-5 * scale.max(1.0), "dw, rows {rows}");
            // The composed backward (every backend but burn-flex).
            let (x, w) = (x0.clone().inner(), w0.clone().inner());
            let (_, r) = rms_norm_composed::<Cpu>(prim(x.clone()), prim(w.clone()), 1e-6);
            let (cx, cw) = rms_norm_backward_composed::<Cpu>(prim(x), prim(w), r, prim(v.clone().inner()));
            assert!(max_abs_diff(float::<Cpu, 2>(cx), fx) < 1e-4);
            assert!(max_abs_diff(float::<Cpu, 1>(cw), fw) < 1e-5 * scale.max(1.0));
        }
    }
}

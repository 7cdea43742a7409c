//! SwiGLU's gating as one op: y = silu(g) · u = g·σ(g)·u (LLaMA, Qwen2 MLPs, between the gate/up
//! projections and the down projection).
//!
//! Composed from burn ops it is a sigmoid, two products and, under autodiff, four [tokens, ffn]
//! tensors kept for backward (σ(g), g, silu(g), u). Here forward keeps only g and u, and backward
//! writes both gradients in one pass: with s = σ(g),
//!   dL/dg = d·u·s·(1 + g·(1 − s)),   dL/du = d·g·s.

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::activation::{sigmoid, silu};
use burn::tensor::ops::FloatTensor;
use burn::tensor::Tensor;

use crate::rows::{both_gradients_in_one_pass, float, prim};
use crate::Backend;

/// # Shapes
/// - `gate`, `up`: [batch, seq, ffn] → same
pub fn swiglu<B: Backend>(gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Tensor<B, 3> {
    float(B::swiglu(prim(gate), prim(up)))
}

/// The composition: silu(g)·u.
pub(crate) fn swiglu_composed<B: burn::tensor::backend::Backend>(gate: FloatTensor<B>, up: FloatTensor<B>) -> FloatTensor<B> {
    prim(silu(float::<B, 3>(gate)) * float::<B, 3>(up))
}

/// The composition: (dL/dg, dL/du).
pub(crate) fn swiglu_backward_composed<B: burn::tensor::backend::Backend>(
    gate: FloatTensor<B>,
    up: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let (g, u, d) = (float::<B, 3>(gate), float::<B, 3>(up), float::<B, 3>(grad));
    let s = sigmoid(g.clone());
    let d_gate = d.clone() * u * s.clone() * ((s.clone().neg() + 1.0) * g.clone() + 1.0);
    let d_up = d * g * s;
    (prim(d_gate), prim(d_up))
}

/// Under autodiff: one op with two parents, the gate and up projections.
pub(crate) fn swiglu_tracked<B: Backend, C: CheckpointStrategy>(gate: FloatTensor<Autodiff<B, C>>, up: FloatTensor<Autodiff<B, C>>) -> FloatTensor<Autodiff<B, C>> {
    #[derive(Debug)]
    struct SwiGlu;

    impl<B: Backend> Backward<B, 2> for SwiGlu {
        /// g and u.
        type State = (FloatTensor<B>, FloatTensor<B>);

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
            both_gradients_in_one_pass::<B, _>(ops, grads, |(g, u), grad| B::swiglu_backward(g.clone(), u.clone(), grad));
        }
    }

    let y = B::swiglu(gate.primitive.clone(), up.primitive.clone());
    match SwiGlu.prepare::<C>([gate.node.clone(), up.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish((gate.primitive, up.primitive), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

/// burn-flex: one pass over the elements (f32 of one shape; anything else takes the composition).
pub(crate) mod flex {
    use burn_flex::FlexTensor;
    use rayon::prelude::*;

    use crate::rows::flex::{f32_contiguous, new_rows, tensor};
    use crate::vector_exp::{silu_mul, silu_mul_backward};

    /// Below this many elements one core does it all; above, pieces of this many go to the cores.
    const PARALLEL_ELEMENTS: usize = 1 << 18;
    const PIECE: usize = 1 << 14;

    pub fn swiglu(gate: &FlexTensor, up: &FlexTensor) -> Option<FlexTensor> {
        let dims = gate.layout().shape().to_vec();
        if up.layout().shape().to_vec() != dims {
            return None;
        }
        let (g, u) = (f32_contiguous(gate)?, f32_contiguous(up)?);
        let (g, u) = (g.as_slice::<f32>()?, u.as_slice::<f32>()?);
        let y = new_rows(g.len(), PIECE, g.len() >= PARALLEL_ELEMENTS, |i, y| {
            let piece = i * PIECE..i * PIECE + y.len();
            silu_mul(y, &g[piece.clone()], &u[piece]);
        });
        Some(tensor(y, dims))
    }

    pub fn swiglu_backward(gate: &FlexTensor, up: &FlexTensor, grad: &FlexTensor) -> Option<(FlexTensor, FlexTensor)> {
        let dims = gate.layout().shape().to_vec();
        if up.layout().shape().to_vec() != dims || grad.layout().shape().to_vec() != dims {
            return None;
        }
        let (g, u, d) = (f32_contiguous(gate)?, f32_contiguous(up)?, f32_contiguous(grad)?);
        let (g, u, d) = (g.as_slice::<f32>()?, u.as_slice::<f32>()?, d.as_slice::<f32>()?);
        let (mut d_gate, mut d_up) = (vec![0f32; g.len()], vec![0f32; g.len()]);
        if g.len() >= PARALLEL_ELEMENTS {
            d_gate
                .par_chunks_mut(PIECE)
                .zip(d_up.par_chunks_mut(PIECE))
                .zip(g.par_chunks(PIECE).zip(u.par_chunks(PIECE)).zip(d.par_chunks(PIECE)))
                .for_each(|((dg, du), ((g, u), d))| silu_mul_backward(dg, du, g, u, d));
        } else {
            silu_mul_backward(&mut d_gate, &mut d_up, g, u, d);
        }
        Some((tensor(d_gate, dims.clone()), tensor(d_up, dims)))
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, ElementConversion};

    use super::*;
    use crate::{Cpu, CpuTrain};

    /// Gate pre-activations spread wide (both tails of σ), up values, and an upstream gradient.
    fn inputs<B: burn::tensor::backend::Backend>(shape: [usize; 3]) -> (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>) {
        let device = Default::default();
        B::seed(&device, 11);
        (
            Tensor::random(shape, Distribution::Normal(0.0, 4.0), &device),
            Tensor::random(shape, Distribution::Normal(0.0, 1.0), &device),
            Tensor::random(shape, Distribution::Normal(0.0, 1.0), &device),
        )
    }

    fn max_abs_diff<B: burn::tensor::backend::Backend>(a: Tensor<B, 3>, b: Tensor<B, 3>) -> f32 {
        (a - b).abs().max().into_scalar().elem()
    }

    /// A small one (one core, a remainder past the vector width) and one split across cores.
    const SHAPES: [[usize; 3]; 2] = [[2, 3, 37], [4, 64, 1100]];

    #[test]
    fn forward_matches_the_composition() {
        for shape in SHAPES {
            let (g, u, _) = inputs::<Cpu>(shape);
            let want = float::<Cpu, 3>(swiglu_composed::<Cpu>(prim(g.clone()), prim(u.clone())));
            assert!(max_abs_diff(swiglu(g, u), want) < 1e-5, "{shape:?}");
        }
    }

    /// dL/dg and dL/du of L = Σ v·y through the op equal burn's autodiff of the composition.
    #[test]
    fn gradients_match_the_autodiff_of_the_composition() {
        for shape in SHAPES {
            let (g0, u0, v) = inputs::<CpuTrain>(shape);
            let grads = |fused: bool| {
                let (g, u) = (g0.clone().require_grad(), u0.clone().require_grad());
                let y = if fused { swiglu(g.clone(), u.clone()) } else { float(swiglu_composed::<CpuTrain>(prim(g.clone()), prim(u.clone()))) };
                let grads = (y * v.clone()).sum().backward();
                (g.grad(&grads).expect("gate"), u.grad(&grads).expect("up"))
            };
            let ((fg, fu), (pg, pu)) = (grads(true), grads(false));
            assert!(max_abs_diff(fg.clone(), pg) < 1e-4, "d gate {shape:?}");
            assert!(max_abs_diff(fu.clone(), pu) < 1e-4, "d up {shape:?}");
            // The composed backward (every backend but burn-flex).
            let (cg, cu) = swiglu_backward_composed::<Cpu>(prim(g0.clone().inner()), prim(u0.clone().inner()), prim(v.clone().inner()));
            assert!(max_abs_diff(float::<Cpu, 3>(cg), fg) < 1e-4);
            assert!(max_abs_diff(float::<Cpu, 3>(cu), fu) < 1e-4);
        }
    }
}

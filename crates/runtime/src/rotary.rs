//! Rotary position embedding as one op: y = x·cos + rotate_half(x)·sin, rotate_half([x₁, x₂]) =
//! [−x₂, x₁] (HF's `apply_rotary_pos_emb`).
//!
//! Composed from burn ops it slices both halves, negates, concatenates and broadcasts cos/sin over
//! the heads of a transposed (strided) view: six passes, each a strided iteration, and the same
//! again in backward. Here forward is one pass, and backward is the op itself with −sin: HF's
//! tables repeat their halves (cos = [c, c], sin = [s, s]), so the transpose of the rotation,
//! [g₁c + g₂s, g₂c − g₁s], is rotary(g, cos, −sin).

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::Backend;

/// # Shapes
/// - `x`: [batch, heads, seq, head_dim]; `cos`, `sin`: [batch, 1, seq, head_dim] → like `x`
pub fn rotary<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>) -> Tensor<B, 4> {
    let prim = |t: Tensor<B, 4>| t.into_primitive().tensor();
    Tensor::from_primitive(TensorPrimitive::Float(B::rotary(prim(x), prim(cos), prim(sin))))
}

/// The composition of burn ops.
pub(crate) fn rotary_composed<B: burn::tensor::backend::Backend>(x: FloatTensor<B>, cos: FloatTensor<B>, sin: FloatTensor<B>) -> FloatTensor<B> {
    let float = |t: FloatTensor<B>| Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(t));
    let (x, cos, sin) = (float(x), float(cos), float(sin));
    let [b, h, s, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().slice([0..b, 0..h, 0..s, 0..half]);
    let x2 = x.clone().slice([0..b, 0..h, 0..s, half..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    (x * cos + rotated * sin).into_primitive().tensor()
}

/// Under autodiff: one op; cos and sin are constants (tables, never trained).
pub(crate) fn rotary_tracked<B: Backend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    cos: FloatTensor<Autodiff<B, C>>,
    sin: FloatTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    #[derive(Debug)]
    struct Rotary;

    impl<B: Backend> Backward<B, 1> for Rotary {
        /// cos and −sin.
        type State = (FloatTensor<B>, FloatTensor<B>);

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (cos, neg_sin) = ops.state;
            unary::<B, _>(ops.parents, ops.node, grads, |grad| B::rotary(grad, cos, neg_sin));
        }
    }

    let (cos, sin) = (cos.primitive, sin.primitive);
    let y = B::rotary(x.primitive, cos.clone(), sin.clone());
    match Rotary.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish((cos, B::float_neg(sin)), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

/// burn-flex: one pass over `x` in whatever strides it has (the heads view is a transpose).
pub(crate) mod flex {
    use burn::tensor::DType;
    use burn_flex::FlexTensor;

    use crate::rows::flex::{new_rows, tensor};

    /// Below this many elements one core does it all.
    const PARALLEL_ELEMENTS: usize = 1 << 16;

    pub fn rotary(x: &FlexTensor, cos: &FlexTensor, sin: &FlexTensor) -> Option<FlexTensor> {
        if [x, cos, sin].iter().any(|t| t.dtype() != DType::F32) {
            return None;
        }
        let dims = x.layout().shape().to_vec();
        let (b, h, s, d) = (dims[0], dims[1], dims[2], dims[3]);
        let half = d / 2;
        let (cos, sin) = (cos.to_contiguous(), sin.to_contiguous());
        let (cos, sin) = (cos.as_slice::<f32>()?, sin.as_slice::<f32>()?);
        if cos.len() != b * s * d || sin.len() != cos.len() {
            return None;
        }
        let strides = x.layout().strides().to_vec();
        let offset = x.layout().start_offset() as isize;
        let data: &[f32] = x.storage();
        // One (batch, head) pair's [seq, head_dim] rows per chunk.
        let rotate = |pair: usize, o: &mut [f32]| {
            let (bi, hi) = (pair / h, pair % h);
            for si in 0..s {
                let base = offset + bi as isize * strides[0] + hi as isize * strides[1] + si as isize * strides[2];
                let at = |j: usize| data[(base + j as isize * strides[3]) as usize];
                let table = (bi * s + si) * d;
                let (c, sn) = (&cos[table..table + d], &sin[table..table + d]);
                let row = &mut o[si * d..(si + 1) * d];
                for j in 0..half {
                    let (x1, x2) = (at(j), at(j + half));
                    row[j] = x1 * c[j] - x2 * sn[j];
                    row[j + half] = x2 * c[j + half] + x1 * sn[j + half];
                }
            }
        };
        let out = new_rows(b * h * s * d, s * d, b * h * s * d >= PARALLEL_ELEMENTS, rotate);
        Some(tensor(out, dims))
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, ElementConversion, TensorData};

    use super::*;
    use crate::{Cpu, CpuTrain};

    /// HF-style tables (halves repeated), as the model builds them.
    fn tables<B: burn::tensor::backend::Backend>(batch: usize, seq: usize, d: usize) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let device = Default::default();
        let half = d / 2;
        let (mut cos, mut sin) = (vec![], vec![]);
        for bi in 0..batch {
            for p in 0..seq {
                for _ in 0..2 {
                    for i in 0..half {
                        // Left padding shifts positions per row.
                        let angle = (p + bi) as f32 / 10000f32.powf(2.0 * i as f32 / d as f32);
                        cos.push(angle.cos());
                        sin.push(angle.sin());
                    }
                }
            }
        }
        let t = |v: Vec<f32>| Tensor::<B, 4>::from_data(TensorData::new(v, [batch, 1, seq, d]), &device);
        (t(cos), t(sin))
    }

    fn max_abs_diff<B: burn::tensor::backend::Backend>(a: Tensor<B, 4>, b: Tensor<B, 4>) -> f32 {
        (a - b).abs().max().into_scalar().elem()
    }

    /// The heads view the model passes: [batch, seq, heads, d] transposed to [batch, heads, seq, d].
    fn heads_view<B: burn::tensor::backend::Backend>(batch: usize, heads: usize, seq: usize, d: usize) -> Tensor<B, 4> {
        let device = Default::default();
        B::seed(&device, 3);
        Tensor::<B, 4>::random([batch, seq, heads, d], Distribution::Normal(0.0, 1.0), &device).swap_dims(1, 2)
    }

    #[test]
    fn forward_matches_the_composition_on_strided_views() {
        for (batch, heads, seq, d) in [(2, 3, 5, 8), (4, 8, 64, 32)] {
            let x = heads_view::<Cpu>(batch, heads, seq, d);
            let (cos, sin) = tables::<Cpu>(batch, seq, d);
            let want = Tensor::<Cpu, 4>::from_primitive(TensorPrimitive::Float(rotary_composed::<Cpu>(
                x.clone().into_primitive().tensor(),
                cos.clone().into_primitive().tensor(),
                sin.clone().into_primitive().tensor(),
            )));
            assert!(max_abs_diff(rotary(x, cos, sin), want) < 1e-6);
        }
    }

    /// dL/dx of L = Σ w·rotary(x) equals burn's autodiff of the composition.
    #[test]
    fn gradient_matches_the_autodiff_of_the_composition() {
        for (batch, heads, seq, d) in [(2, 3, 5, 8), (4, 8, 64, 32)] {
            let (cos, sin) = tables::<CpuTrain>(batch, seq, d);
            let w = heads_view::<CpuTrain>(batch, heads, seq, d).swap_dims(1, 2).reshape([batch, heads, seq, d]);
            let grad = |fused: bool| {
                let x = heads_view::<CpuTrain>(batch, heads, seq, d).detach().require_grad();
                let y = if fused {
                    rotary(x.clone(), cos.clone(), sin.clone())
                } else {
                    Tensor::from_primitive(TensorPrimitive::Float(rotary_composed::<CpuTrain>(
                        x.clone().into_primitive().tensor(),
                        cos.clone().into_primitive().tensor(),
                        sin.clone().into_primitive().tensor(),
                    )))
                };
                x.grad(&(y * w.clone()).sum().backward()).expect("tracked")
            };
            assert!(max_abs_diff(grad(true), grad(false)) < 1e-5);
        }
    }
}

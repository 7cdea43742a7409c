//! What the fused ops (`log_probs`, `rotary`, `attention`, `rms_norm`, `swiglu`) share: moving
//! between tensors and primitives, a two-gradient backward, and running burn-flex rows in plain loops.

use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{binary, Ops};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

pub(crate) fn float<B: burn::tensor::backend::Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

pub(crate) fn prim<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// The backward of a two-parent op whose two gradients come from one pass (`compute`, given the
/// op's saved state and the output's gradient): it runs once, and each parent takes its half.
pub(crate) fn both_gradients_in_one_pass<B: burn::tensor::backend::Backend, S>(
    ops: Ops<S, 2>,
    grads: &mut Gradients,
    compute: impl Fn(&S, FloatTensor<B>) -> (FloatTensor<B>, FloatTensor<B>),
) {
    let Ops { parents, node, state } = ops;
    let both = std::cell::OnceCell::new();
    binary::<B, _, _>(
        parents,
        node,
        grads,
        |grad| both.get_or_init(|| compute(&state, grad)).0.clone(),
        |grad| both.get_or_init(|| compute(&state, grad)).1.clone(),
    );
}

pub(crate) mod flex {
    use burn::tensor::{DType, Shape, TensorData};
    use std::mem::MaybeUninit;

    use burn_flex::FlexTensor;
    use rayon::prelude::*;

    /// The tensor in row-major order (None: not f32 — the caller takes the composition).
    pub fn f32_contiguous(t: &FlexTensor) -> Option<FlexTensor> {
        (t.dtype() == DType::F32).then(|| t.to_contiguous())
    }

    pub fn tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values, Shape::from(shape)))
    }

    /// Runs `f(row, out_row)` over `out`'s rows of `row_len`, split across cores when `parallel` (as
    /// [`new_rows`]).
    pub fn for_rows<T: Send>(out: &mut [T], row_len: usize, parallel: bool, f: impl Fn(usize, &mut [T]) + Sync) {
        if parallel {
            out.par_chunks_mut(row_len).enumerate().for_each(|(i, o)| f(i, o));
        } else {
            out.chunks_mut(row_len).enumerate().for_each(|(i, o)| f(i, o));
        }
    }

    /// A new buffer of `len` elements filled by `f(row, out_row)` over its rows of `row_len`, split
    /// across cores when `parallel` (the caller's size threshold: below it, thread hand-off costs
    /// more than it saves). Each row is computed the same way on any thread, so results do not
    /// depend on the split. Each piece is zeroed by the core that fills it, just before, instead of
    /// the whole buffer on the calling thread first (a memset of the step's largest buffers, on one
    /// core; measured: see docs/performance.md).
    pub fn new_rows(len: usize, row_len: usize, parallel: bool, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
        let mut out = Vec::with_capacity(len);
        let fill = |i: usize, row: &mut [MaybeUninit<f32>]| {
            row.fill(MaybeUninit::new(0.0));
            // SAFETY: every element of `row` was initialised on the line above.
            f(i, unsafe { &mut *(row as *mut [MaybeUninit<f32>] as *mut [f32]) })
        };
        let spare = &mut out.spare_capacity_mut()[..len];
        if parallel {
            spare.par_chunks_mut(row_len).enumerate().for_each(|(i, o)| fill(i, o));
        } else {
            spare.chunks_mut(row_len).enumerate().for_each(|(i, o)| fill(i, o));
        }
        // SAFETY: the rows cover all `len` elements, and `fill` initialised each.
        unsafe { out.set_len(len) };
        out
    }
}

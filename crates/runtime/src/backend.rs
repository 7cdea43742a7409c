//! Our backend traits: burn's, plus the ops we implement ourselves. Every model and stage is generic
//! over [`Backend`] / [`AutodiffBackend`] (not burn's traits), so an op added here reaches all of them,
//! with a backward of its own where burn's composition would cost too much.
//!
//! The one such op so far is [`Backend::quantized_matmul`]: `x · W` for a frozen weight stored
//! block-quantized (QLoRA-style frozen bases). Composed from burn ops under autodiff, the
//! dequantized f32 `W` would be saved for backward in every layer, erasing the saving; our backward
//! keeps only the quantized form and rebuilds `W` when the gradient of `x` is needed. burn 0.21's own
//! quantized tensors cannot serve: its autodiff backend leaves `quantize`/`dequantize` unimplemented.

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Int, Tensor, TensorPrimitive};

use crate::checkpoint::Checkpointable;
use crate::quant::{dequantize, QuantFormat};

/// burn's backend plus our own ops (default implementations: the plain composition of burn ops).
pub trait Backend: burn::tensor::backend::Backend {
    /// `x · W` where `W` ([d_in, d_out]) is held block-quantized as `w`; `W` is rebuilt in `x`'s
    /// dtype (f32 or bf16), so the product runs in the caller's precision.
    ///
    /// # Shapes
    /// - `x`: [rows, d_in] → [rows, d_out]
    fn quantized_matmul(x: FloatTensor<Self>, w: QuantizedWeight<Self>) -> FloatTensor<Self> {
        let x = Tensor::<Self, 2>::from_primitive(TensorPrimitive::Float(x));
        let w = w.dequantize().cast(x.dtype());
        x.matmul(w).into_primitive().tensor()
    }

    /// `segment`'s forward; under autodiff, gradient-checkpointed (see [`crate::checkpoint`]):
    /// only `x` is kept, and backward runs the segment again.
    ///
    /// # Shapes
    /// - `x`: [batch, seq, hidden] → same
    fn checkpointed<S: Checkpointable>(segment: &S::On<Self>, x: FloatTensor<Self>) -> FloatTensor<Self> {
        S::forward::<Self>(segment, Tensor::from_primitive(TensorPrimitive::Float(x))).into_primitive().tensor()
    }
}

/// A training backend whose inference backend is one of ours too.
pub trait AutodiffBackend: Backend + burn::tensor::backend::AutodiffBackend<InnerBackend: Backend> {}

impl<B> AutodiffBackend for B where B: Backend + burn::tensor::backend::AutodiffBackend<InnerBackend: Backend> {}

impl Backend for crate::Cpu {}

#[cfg(feature = "cuda")]
impl Backend for crate::Gpu {}

/// The primitives of a block-quantized weight, as an op sees them (see [`crate::quant`]).
#[derive(Clone, Debug)]
pub struct QuantizedWeight<B: burn::tensor::backend::Backend> {
    /// [d_in / values_per_word, d_out] packed codes.
    pub packed: IntTensor<B>,
    /// [d_in / block, d_out] one scale per block of `block` rows of a column.
    pub scales: FloatTensor<B>,
    pub format: QuantFormat,
}

impl<B: burn::tensor::backend::Backend> QuantizedWeight<B> {
    /// W as a dense f32 tensor [d_in, d_out].
    pub fn dequantize(self) -> Tensor<B, 2> {
        dequantize(
            Tensor::<B, 2, Int>::from_primitive(self.packed),
            Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(self.scales)),
            self.format,
        )
    }
}

/// Under autodiff `W` is a constant: only `x` can need a gradient, dL/dx = dL/dy · Wᵀ.
impl<B: Backend, C: CheckpointStrategy> Backend for Autodiff<B, C> {
    fn quantized_matmul(x: FloatTensor<Self>, w: QuantizedWeight<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct QuantizedMatmul;

        impl<B: Backend> Backward<B, 1> for QuantizedMatmul {
            /// The quantized weight (shared with the module, so saving it costs nothing).
            type State = QuantizedWeight<B>;

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let w = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    let grad = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(grad));
                    let w = w.dequantize().cast(grad.dtype());
                    grad.matmul(w.transpose()).into_primitive().tensor()
                });
            }
        }

        // The scales are never tracked (frozen base): their inner primitive is all the op needs.
        let w = QuantizedWeight::<B> { packed: w.packed, scales: w.scales.primitive, format: w.format };
        match QuantizedMatmul.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(w.clone(), B::quantized_matmul(x.primitive, w)),
            OpsKind::UnTracked(prep) => prep.finish(B::quantized_matmul(x.primitive, w)),
        }
    }

    fn checkpointed<S: Checkpointable>(segment: &S::On<Self>, x: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::checkpoint::checkpointed::<S, B, C>(segment, x)
    }
}

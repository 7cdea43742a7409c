//! Our backend traits: burn's, plus the ops we implement ourselves. Every model and stage is generic
//! over [`Backend`] / [`AutodiffBackend`] (not burn's traits), so an op added here reaches all of them,
//! with a backward of its own where burn's composition would cost too much.
//!
//! The trait holds: [`Backend::quantized_matmul`] and [`Backend::dequantize_weight`] (QLoRA-style
//! frozen bases, `--quant` inference), the row ops
//! `target_log_probs` and `token_entropy` (with their forward/backward halves), `rotary`,
//! `attention_probs` and `attention_output`, `rms_norm`, `swiglu`, `adamw_step`, and `checkpointed`
//! (gradient checkpointing of a block). Each default is the plain composition of burn ops, which every
//! backend runs; the CPU backend overrides the row kernels, CUDA inference overrides
//! `attention_output`, and `Autodiff` gives the differentiable ops a backward of their own.
//!
//! `quantized_matmul` is `x · W` for a frozen weight stored block-quantized. Composed from burn ops
//! under autodiff, the dequantized f32 `W` would be saved for backward in every layer, erasing the
//! saving; our backward keeps only the quantized form and rebuilds `W` when the gradient of `x` is
//! needed. burn 0.21's own quantized tensors cannot serve: its autodiff backend leaves
//! `quantize`/`dequantize` unimplemented.

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Int, Tensor, TensorPrimitive};

use crate::adamw::{AdamWOutput, AdamWStep};
use crate::checkpoint::Checkpointable;
use crate::log_probs::flex;
use crate::quant::{dequantize, QuantFormat};

/// burn's backend plus our own ops (default implementations: the plain composition of burn ops).
pub trait Backend: burn::tensor::backend::Backend {
    /// `x · W` where `W` ([d_in, d_out]) is held block-quantized as `w`; `W` is rebuilt in `x`'s
    /// dtype (f32 or bf16), so the product runs in the caller's precision.
    ///
    /// # Shapes
    /// - `x`: [rows, d_in] → [rows, d_out]
    fn quantized_matmul(x: FloatTensor<Self>, w: QuantizedWeight<Self>) -> FloatTensor<Self> {
        quantized_matmul_rebuilt::<Self>(x, w)
    }

    /// W [d_in, d_out] in f32 from its codes and scales (the composition of burn ops in
    /// [`crate::quant::dequantize`]; the CPU rebuilds it in one pass, to the same bits).
    fn dequantize_weight(w: QuantizedWeight<Self>) -> FloatTensor<Self> {
        w.dequantize().into_primitive().tensor()
    }

    /// log softmax(logits)[target] of each row ([`crate::log_probs`]); under autodiff one op.
    ///
    /// # Shapes
    /// - `logits`: [rows, vocab]; `targets`: [rows] → [rows]
    fn target_log_probs(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        Self::log_softmax_gather(logits, targets).0
    }

    /// Entropy of softmax(logits) of each row; under autodiff one op.
    ///
    /// # Shapes
    /// - `logits`: [rows, vocab] → [rows]
    fn token_entropy(logits: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::softmax_entropy(logits).0
    }

    /// (log p(target), log Σ exp) of each row: [`Backend::target_log_probs`]'s forward.
    fn log_softmax_gather(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        crate::log_probs::log_softmax_gather::<Self>(logits, targets)
    }

    /// dL/dlogits = grad_i · (δ_jt − p_ij), [rows, vocab].
    fn log_softmax_gather_backward(logits: FloatTensor<Self>, lse: FloatTensor<Self>, targets: IntTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::log_probs::log_softmax_gather_backward::<Self>(logits, lse, targets, grad)
    }

    /// (H, log Σ exp) of each row: [`Backend::token_entropy`]'s forward.
    fn softmax_entropy(logits: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        crate::log_probs::softmax_entropy::<Self>(logits)
    }

    /// dL/dlogits = −grad_i · p_ij (log p_ij + H_i), [rows, vocab].
    fn softmax_entropy_backward(logits: FloatTensor<Self>, lse: FloatTensor<Self>, entropy: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::log_probs::softmax_entropy_backward::<Self>(logits, lse, entropy, grad)
    }

    /// Rotary position embedding ([`crate::rotary`]); under autodiff one op.
    ///
    /// # Shapes
    /// - `x`: [batch, heads, seq, head_dim]; `cos`, `sin`: [batch, 1, seq, head_dim] → like `x`
    fn rotary(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::rotary::rotary_composed::<Self>(x, cos, sin)
    }

    /// softmax(scale · scores + bias) over the keys ([`crate::attention`]); under autodiff one op.
    ///
    /// # Shapes
    /// - `scores`: [batch, heads, seq, keys]; `bias`: [batch, seq, keys] → like `scores`
    fn attention_probs(scores: FloatTensor<Self>, scale: f32, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::attention::attention_probs_composed::<Self>(scores, scale, bias)
    }

    /// dL/dscores = scale · p ⊙ (g − Σ_k g p).
    fn attention_probs_backward(probs: FloatTensor<Self>, scale: f32, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::attention::attention_probs_backward_composed::<Self>(probs, scale, grad)
    }

    /// One layer's attention, softmax(scale · q kᵀ + bias) · v, query heads grouped over the kv
    /// heads ([`crate::attention::attention_output`]): two matmuls around
    /// [`Backend::attention_probs`], or a backend's fused kernel where one exists.
    ///
    /// # Shapes
    /// - `q`: [batch, heads, seq, head_dim]; `k`, `v`: [batch, kv_heads, keys, head_dim];
    ///   `bias`: [batch, seq, keys] → [batch, heads, seq, head_dim]
    fn attention_output(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, scale: f32, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::attention::attention_output_composed::<Self>(q, k, v, scale, bias)
    }

    /// RMSNorm x · r · w ([`crate::rms_norm`]); under autodiff one op.
    ///
    /// # Shapes
    /// - `x`: [rows, d]; `weight`: [d] → [rows, d]
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f32) -> FloatTensor<Self> {
        Self::rms_norm_forward(x, weight, eps).0
    }

    /// (y, r = 1/√(mean(x²) + ε) per row): [`Backend::rms_norm`]'s forward.
    fn rms_norm_forward(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f32) -> (FloatTensor<Self>, FloatTensor<Self>) {
        crate::rms_norm::rms_norm_composed::<Self>(x, weight, eps)
    }

    /// (dL/dx, dL/dw).
    fn rms_norm_backward(x: FloatTensor<Self>, weight: FloatTensor<Self>, r: FloatTensor<Self>, grad: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        crate::rms_norm::rms_norm_backward_composed::<Self>(x, weight, r, grad)
    }

    /// SwiGLU's gating silu(g)·u ([`crate::swiglu`]); under autodiff one op.
    ///
    /// # Shapes
    /// - `gate`, `up`: [batch, seq, ffn] → same
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::swiglu::swiglu_composed::<Self>(gate, up)
    }

    /// (dL/dg, dL/du).
    fn swiglu_backward(gate: FloatTensor<Self>, up: FloatTensor<Self>, grad: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        crate::swiglu::swiglu_backward_composed::<Self>(gate, up, grad)
    }

    /// One AdamW step of one parameter ([`crate::adamw`]): (p, m, v) after the step; `moments` is
    /// None on the parameter's first step. The optimizer runs it on the inference backend.
    fn adamw_step<const D: usize>(param: Tensor<Self, D>, grad: Tensor<Self, D>, moments: Option<(Tensor<Self, D>, Tensor<Self, D>)>, step: &AdamWStep) -> AdamWOutput<Self, D> {
        crate::adamw::adamw_composed(param, grad, moments, step)
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

/// `x · W` with W rebuilt whole ([`Backend::dequantize_weight`]) in `x`'s dtype, then one matmul.
fn quantized_matmul_rebuilt<B: Backend>(x: FloatTensor<B>, w: QuantizedWeight<B>) -> FloatTensor<B> {
    let x = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(x));
    let w = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(B::dequantize_weight(w))).cast(x.dtype());
    x.matmul(w).into_primitive().tensor()
}

/// A training backend whose inference backend is one of ours too.
pub trait AutodiffBackend: Backend + burn::tensor::backend::AutodiffBackend<InnerBackend: Backend> {}

impl<B> AutodiffBackend for B where B: Backend + burn::tensor::backend::AutodiffBackend<InnerBackend: Backend> {}

/// burn-flex: RMSNorm, attention softmax, rotary, SwiGLU, log-prob and entropy rows in plain loops
/// ([`crate::rms_norm`], [`crate::attention`], [`crate::rotary`], [`crate::swiglu`], [`crate::log_probs`]),
/// AdamW's update in one pass ([`crate::adamw`]), and products with quantized weights read from
/// their codes ([`crate::quant_matmul`]).
impl Backend for crate::Cpu {
    /// Few rows (decoding): read straight from the codes ([`crate::quant_matmul`]); many rows: W
    /// rebuilt in one pass, then one GEMM.
    fn quantized_matmul(x: FloatTensor<Self>, w: QuantizedWeight<Self>) -> FloatTensor<Self> {
        crate::quant_matmul::flex::quantized_matmul(&x, &w).unwrap_or_else(|| quantized_matmul_rebuilt::<Self>(x, w))
    }

    fn dequantize_weight(w: QuantizedWeight<Self>) -> FloatTensor<Self> {
        crate::quant_matmul::flex::dequantize(&w).unwrap_or_else(|| w.dequantize().into_primitive().tensor())
    }

    fn rms_norm_forward(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f32) -> (FloatTensor<Self>, FloatTensor<Self>) {
        crate::rms_norm::flex::rms_norm(&x, &weight, eps).unwrap_or_else(|| crate::rms_norm::rms_norm_composed::<Self>(x, weight, eps))
    }

    fn rms_norm_backward(x: FloatTensor<Self>, weight: FloatTensor<Self>, r: FloatTensor<Self>, grad: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        crate::rms_norm::flex::rms_norm_backward(&x, &weight, &r, &grad)
            .unwrap_or_else(|| crate::rms_norm::rms_norm_backward_composed::<Self>(x, weight, r, grad))
    }

    fn attention_probs(scores: FloatTensor<Self>, scale: f32, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::attention::flex::attention_probs(&scores, scale, &bias).unwrap_or_else(|| crate::attention::attention_probs_composed::<Self>(scores, scale, bias))
    }

    fn attention_probs_backward(probs: FloatTensor<Self>, scale: f32, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::attention::flex::attention_probs_backward(&probs, scale, &grad)
            .unwrap_or_else(|| crate::attention::attention_probs_backward_composed::<Self>(probs, scale, grad))
    }

    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::swiglu::flex::swiglu(&gate, &up).unwrap_or_else(|| crate::swiglu::swiglu_composed::<Self>(gate, up))
    }

    fn swiglu_backward(gate: FloatTensor<Self>, up: FloatTensor<Self>, grad: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        crate::swiglu::flex::swiglu_backward(&gate, &up, &grad).unwrap_or_else(|| crate::swiglu::swiglu_backward_composed::<Self>(gate, up, grad))
    }

    fn rotary(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::rotary::flex::rotary(&x, &cos, &sin).unwrap_or_else(|| crate::rotary::rotary_composed::<Self>(x, cos, sin))
    }

    fn log_softmax_gather(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        flex::log_softmax_gather(&logits, &targets).unwrap_or_else(|| crate::log_probs::log_softmax_gather::<Self>(logits, targets))
    }

    fn log_softmax_gather_backward(logits: FloatTensor<Self>, lse: FloatTensor<Self>, targets: IntTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        flex::log_softmax_gather_backward(&logits, &lse, &targets, &grad)
            .unwrap_or_else(|| crate::log_probs::log_softmax_gather_backward::<Self>(logits, lse, targets, grad))
    }

    fn softmax_entropy(logits: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        flex::softmax_entropy(&logits).unwrap_or_else(|| crate::log_probs::softmax_entropy::<Self>(logits))
    }

    fn softmax_entropy_backward(logits: FloatTensor<Self>, lse: FloatTensor<Self>, entropy: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        flex::softmax_entropy_backward(&logits, &lse, &entropy, &grad)
            .unwrap_or_else(|| crate::log_probs::softmax_entropy_backward::<Self>(logits, lse, entropy, grad))
    }

    fn adamw_step<const D: usize>(param: Tensor<Self, D>, grad: Tensor<Self, D>, moments: Option<(Tensor<Self, D>, Tensor<Self, D>)>, step: &AdamWStep) -> AdamWOutput<Self, D> {
        let all_f32 = [Some(&param), Some(&grad), moments.as_ref().map(|m| &m.0), moments.as_ref().map(|m| &m.1)]
            .into_iter()
            .flatten()
            .all(|t| t.dtype() == burn::tensor::DType::F32 && t.dims() == param.dims());
        if !all_f32 {
            return crate::adamw::adamw_composed(param, grad, moments, step);
        }
        let moments = moments.map(|(m, v)| (m.into_primitive().tensor(), v.into_primitive().tensor()));
        let (p, m, v) = crate::adamw::flex::adamw_step(&param.into_primitive().tensor(), grad.into_primitive().tensor(), moments, step);
        let wrap = |t| Tensor::from_primitive(TensorPrimitive::Float(t));
        (wrap(p), wrap(m), wrap(v))
    }
}

/// burn-cuda without autodiff (generation, scoring, serving): burn's attention op, which its
/// autotuner runs as a flash-attention kernel where one applies (else burn's composition). burn-flex
/// has one too, but on the CPU it measured slower than the composition around our softmax op
/// (measured: see docs/performance.md), so the CPU keeps that.
#[cfg(feature = "cuda")]
impl Backend for crate::Gpu {
    fn attention_output(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, scale: f32, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::attention::attention_output_fused::<Self>(q, k, v, scale, bias)
    }
}

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
                    let w = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(B::dequantize_weight(w))).cast(grad.dtype());
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

    fn target_log_probs(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        crate::log_probs::target_log_probs_tracked::<B, C>(logits, targets)
    }

    fn token_entropy(logits: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::log_probs::token_entropy_tracked::<B, C>(logits)
    }

    fn rotary(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::rotary::rotary_tracked::<B, C>(x, cos, sin)
    }

    fn attention_probs(scores: FloatTensor<Self>, scale: f32, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::attention::attention_probs_tracked::<B, C>(scores, scale, bias)
    }

    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f32) -> FloatTensor<Self> {
        crate::rms_norm::rms_norm_tracked::<B, C>(x, weight, eps)
    }

    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::swiglu::swiglu_tracked::<B, C>(gate, up)
    }
}

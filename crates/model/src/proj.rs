//! A projection of a decoder block: a dense linear map, or one whose frozen weight is stored
//! block-quantized (`[lora] base_quant`, QLoRA-style; format in [`rlhf_runtime::quant`]).

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Int, Tensor};
use rlhf_runtime::quant::{dequantize, quantize_host, quantize_host_transposed, to_device, BaseQuant, QuantFormat};
use rlhf_runtime::{Backend, Precision, QuantizedWeight};

use crate::precision::{in_compute, in_f32};

/// y = x·W + b with W [d_in, d_out], dense or quantized.
#[derive(Module, Debug)]
pub enum Proj<B: Backend> {
    Dense(Linear<B>),
    Quantized(QuantLinear<B>),
}

/// A frozen linear map whose weight is kept as packed integer codes + per-block scales, and rebuilt
/// in f32 only for the product that needs it (forward, and the input gradient in backward).
#[derive(Module, Debug)]
pub struct QuantLinear<B: Backend> {
    /// [d_in / codes per word, d_out]
    pub packed: Tensor<B, 2, Int>,
    /// [d_in / block, d_out]
    pub scales: Tensor<B, 2>,
    /// [d_out], kept dense (and frozen).
    pub bias: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    pub format: QuantFormat,
}

impl<B: Backend> From<Linear<B>> for Proj<B> {
    fn from(linear: Linear<B>) -> Self {
        Proj::Dense(linear)
    }
}

impl<B: Backend> Proj<B> {
    /// # Shapes
    /// - `x`: [batch, seq, d_in] → [batch, seq, d_out], as ONE [batch·seq, d_in] GEMM.
    ///
    /// burn's default `linear` broadcasts the weight over the batch and runs one GEMM per row,
    /// re-packing the weight for every row: with one-token rows (generation) that packing dominated
    /// the step time.
    ///
    /// The product runs in `precision` (operands cast, f32 accumulation) and the output stays in
    /// it, as under torch autocast: what follows a projection (rotary, SiLU, the next product) runs
    /// in bf16 too and keeps bf16 activations; the block casts back to f32 where the residual
    /// stream takes it.
    pub fn forward(&self, x: Tensor<B, 3>, precision: Precision) -> Tensor<B, 3> {
        let [batch, seq, d_in] = x.dims();
        let x = in_compute(x.reshape([batch * seq, d_in]), precision);
        let (y, bias) = match self {
            Proj::Dense(linear) => (x.matmul(in_compute(linear.weight.val(), precision)), &linear.bias),
            Proj::Quantized(q) => (q.matmul(x), &q.bias),
        };
        let y = match bias {
            Some(b) => y + in_compute(b.val(), precision).unsqueeze::<2>(),
            None => y,
        };
        let d_out = y.dims()[1];
        y.reshape([batch, seq, d_out])
    }

    /// [d_in, d_out]
    pub fn dims(&self) -> [usize; 2] {
        match self {
            Proj::Dense(linear) => linear.weight.dims(),
            Proj::Quantized(q) => [q.format.d_in, q.format.d_out],
        }
    }

    /// The weight as a dense tensor (rebuilt from the codes when quantized).
    pub fn weight(&self) -> Tensor<B, 2> {
        match self {
            Proj::Dense(linear) => linear.weight.val(),
            Proj::Quantized(q) => dequantize(q.packed.clone(), q.scales.clone(), q.format),
        }
    }

    pub fn bias(&self) -> Option<Tensor<B, 1>> {
        match self {
            Proj::Dense(linear) => linear.bias.as_ref().map(Param::val),
            Proj::Quantized(q) => q.bias.as_ref().map(Param::val),
        }
    }

    /// A dense map with `delta` added to the weight (merging an adapter; a quantized weight is
    /// rebuilt first, as PEFT merges into a 4/8-bit base). The sum is f32 (a bf16-stored base is
    /// widened first).
    pub fn add_to_weight(&mut self, delta: Tensor<B, 2>) {
        let weight = Param::from_tensor(in_f32(self.weight()) + in_f32(delta));
        match self {
            Proj::Dense(linear) => linear.weight = weight,
            Proj::Quantized(q) => *self = Proj::Dense(Linear { weight, bias: q.bias.clone() }),
        }
    }

    /// Stores the weight as `quant` codes (it must already be frozen); the f32 weight is dropped.
    pub fn quantize(&mut self, quant: BaseQuant) -> Result<(), String> {
        let Proj::Dense(linear) = self else { return Ok(()) };
        let [d_in, d_out] = linear.weight.dims();
        let format = QuantFormat::new(quant, d_in, d_out)?;
        let weight = linear.weight.val();
        let device = weight.device();
        let host: Vec<f32> = weight.into_data().convert::<f32>().to_vec().expect("f32 weight data");
        let (packed, scales) = quantize_host(&host, format);
        let (packed, scales) = to_device::<B>(packed, scales, format, &device);
        *self = Proj::Quantized(QuantLinear { packed, scales, bias: linear.bias.clone(), format });
        Ok(())
    }

    /// `x · Eᵀ` held as `quant` codes, from E [d_out, d_in] (an LM head, or the tied embedding)
    /// read once on the host, without a transposed copy.
    pub fn quantized_transpose_of(e: Tensor<B, 2>, quant: BaseQuant) -> Result<Self, String> {
        let [d_out, d_in] = e.dims();
        let format = QuantFormat::new(quant, d_in, d_out)?;
        let device = e.device();
        let data = e.into_data().convert::<f32>();
        let (packed, scales) = quantize_host_transposed(data.as_slice::<f32>().expect("f32 weight data"), format);
        let (packed, scales) = to_device::<B>(packed, scales, format, &device);
        Ok(Proj::Quantized(QuantLinear { packed, scales, bias: None, format }))
    }

    /// Bytes of the weight as stored.
    pub fn weight_bytes(&self) -> usize {
        match self {
            Proj::Dense(linear) => linear.weight.num_params() * 4,
            Proj::Quantized(q) => q.format.bytes(),
        }
    }
}

impl<B: Backend> QuantLinear<B> {
    /// x [rows, d_in] · W → [rows, d_out], through the backend's quantized matmul (its backward
    /// keeps only the codes).
    fn matmul(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let w = QuantizedWeight::<B> {
            packed: self.packed.clone().into_primitive(),
            scales: self.scales.clone().into_primitive().tensor(),
            format: self.format,
        };
        Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(B::quantized_matmul(x.into_primitive().tensor(), w)))
    }
}

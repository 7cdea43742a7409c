//! Mixed precision (`precision = "bf16"`): where casts go.
//!
//! Every op site casts its own operands, so a tensor's storage dtype never decides correctness and a
//! cast to the dtype a tensor already has costs nothing (burn returns it unchanged; in f32 runs every
//! cast below is a no-op). Matmul operands go to the compute dtype ([`in_compute`]); the residual
//! stream, norms, softmax, log-softmax and losses stay f32 ([`in_f32`]). burn's cast has a backward
//! that returns the input's dtype, so an f32 master weight used in a bf16 matmul gets an f32
//! gradient, as under torch autocast.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{FloatDType, Tensor};
use rlhf_runtime::{Backend, Precision};

/// `x` in the dtype matmuls run in.
pub fn in_compute<B: Backend, const D: usize>(x: Tensor<B, D>, precision: Precision) -> Tensor<B, D> {
    x.cast(precision.dtype())
}

/// `x` in f32.
pub fn in_f32<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.cast(FloatDType::F32)
}

/// Stores weight matrices (rank ≥ 2: projections, embeddings, heads) in `dtype`: every one
/// ([`store_weights`]) or only those that do not train ([`store_frozen_weights`]: a LoRA base, a frozen
/// reference or reward model). Vectors (norms, biases) stay f32; they are small and meet f32 tensors.
struct StoreWeights {
    dtype: FloatDType,
    frozen_only: bool,
}

impl<B: Backend> ModuleMapper<B> for StoreWeights {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if D < 2 || (self.frozen_only && param.is_require_grad()) {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        let tensor = tensor.cast(self.dtype);
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// `module` with every weight matrix stored in `precision`'s dtype (inference copies: generation,
/// scoring, serving). f32 leaves it as it is.
pub fn store_weights<B: Backend, M: Module<B>>(module: M, precision: Precision) -> M {
    if precision == Precision::F32 {
        return module;
    }
    module.map(&mut StoreWeights { dtype: precision.dtype(), frozen_only: false })
}

/// `module` with its frozen weight matrices stored in `precision`'s dtype; trained ones stay f32
/// masters.
pub fn store_frozen_weights<B: Backend, M: Module<B>>(module: M, precision: Precision) -> M {
    if precision == Precision::F32 {
        return module;
    }
    module.map(&mut StoreWeights { dtype: precision.dtype(), frozen_only: true })
}

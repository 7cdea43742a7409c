//! Where work runs. `--device` plus a precision setting become burn backend types here and nowhere
//! else: every command and stage hands a [`Task`] to [`dispatch`], which picks the backend.
//!
//! One task kind serves training and inference: a task gets an autodiff backend `B`; inference code
//! uses its inner backend (`Infer<B>`, no autograd graph, no overhead). Adding a device kind is one
//! new arm in [`dispatch`]. Precision is not a backend type: burn tensors carry their own dtype, and
//! the model casts per op ([`Precision`]).
//!
//! CPU is burn-flex, not NdArray (faster, measured: see docs/performance.md; NdArray's reshape
//! copies every standard-layout matmul input, weights included, and its `simd` feature uses
//! approximate math that moved fixture logits by 1e-4). CUDA is burn-cuda behind
//! the `cuda` feature. A CPU run never touches CUDA; asking for CUDA where there is none is an error,
//! not a panic.

use std::fmt;
use std::str::FromStr;

mod allocator;
pub mod adamw;
pub mod attention;
pub mod backend;
pub mod checkpoint;
pub mod log_probs;
pub mod quant;
pub mod quant_matmul;
pub mod rms_norm;
pub mod rotary;
mod rows;
pub mod swiglu;
mod vector_exp;

pub use backend::{AutodiffBackend, Backend, QuantizedWeight};
#[cfg(test)]
use burn::tensor::ElementConversion;
use serde::{Deserialize, Serialize};

/// The CPU backend (inference).
pub type Cpu = burn::backend::Flex<f32>;
/// The CPU backend with autodiff (training).
pub type CpuTrain = burn::backend::Autodiff<Cpu>;
/// The CUDA backend (inference).
#[cfg(feature = "cuda")]
pub type Gpu = burn::backend::Cuda<f32, i32>;
/// The CUDA backend with autodiff (training).
#[cfg(feature = "cuda")]
pub type GpuTrain = burn::backend::Autodiff<Gpu>;

/// The inference backend of a task's autodiff backend.
pub type Infer<B> = <B as burn::tensor::backend::AutodiffBackend>::InnerBackend;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("this binary was built without CUDA support: rebuild with `--features cuda`")]
    NoCudaBuild,
    #[error("CUDA device {index} is not usable (is an NVIDIA driver and GPU present?): {why}")]
    CudaUnusable { index: usize, why: String },
    #[error("CUDA device {index} cannot compute in bf16: use precision = \"f32\"")]
    NoBf16 { index: usize },
}

/// `--device cpu | cuda | cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => Ok(DeviceSpec::Cuda(i)),
                _ => Err(format!("unknown device {s:?} (expected cpu, cuda or cuda:N)")),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// The number format matmuls and attention are computed in.
///
/// `Bf16` is mixed precision, as torch autocast: trained parameters, their gradients and AdamW's
/// moments stay f32 (the master copy), each matmul casts its operands to bf16 and accumulates in
/// f32, and everything numerically touchy — the residual stream, norms, softmax / log-softmax,
/// losses, advantages — stays f32. Frozen weights are stored in bf16 (half their memory). burn
/// tensors carry their own dtype, so one backend type serves both: precision is a property of the
/// model ([`Precision::dtype`]), not of the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    /// The dtype matmul operands (and the KV cache) are cast to.
    pub fn dtype(self) -> burn::tensor::FloatDType {
        match self {
            Precision::F32 => burn::tensor::FloatDType::F32,
            Precision::Bf16 => burn::tensor::FloatDType::BF16,
        }
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("unknown precision {s:?} (expected f32 or bf16)")),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// Where and how a task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Runtime {
    pub device: DeviceSpec,
    pub precision: Precision,
}

impl From<DeviceSpec> for Runtime {
    fn from(device: DeviceSpec) -> Self {
        Self { device, precision: Precision::default() }
    }
}

/// Work that runs on any backend. Training uses `B`; inference uses [`Infer<B>`].
pub trait Task {
    type Output;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output;
}

/// Work that needs no gradients (generation, scoring, evaluation): written against a plain backend,
/// and run through [`dispatch`] as `Inference(task)` on the inner backend of the one it picks.
pub trait InferenceTask {
    type Output;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output;
}

/// Adapts an [`InferenceTask`] to [`dispatch`].
pub struct Inference<T>(pub T);

impl<T: InferenceTask> Task for Inference<T> {
    type Output = T::Output;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> T::Output {
        self.0.run::<Infer<B>>(device)
    }
}

/// Runs `task` on the backend `runtime` names.
pub fn dispatch<T: Task>(runtime: impl Into<Runtime>, task: T) -> Result<T::Output, RuntimeError> {
    let Runtime { device, precision } = runtime.into();
    match device {
        DeviceSpec::Cpu => {
            allocator::keep_freed_memory();
            Ok(task.run::<CpuTrain>(Default::default()))
        }
        DeviceSpec::Cuda(index) => {
            #[cfg(feature = "cuda")]
            {
                let device = cuda_device(index)?;
                if precision == Precision::Bf16 && !<Gpu as burn::tensor::backend::Backend>::supports_dtype(&device, burn::tensor::DType::BF16) {
                    return Err(RuntimeError::NoBf16 { index });
                }
                Ok(task.run::<GpuTrain>(device))
            }
            #[cfg(not(feature = "cuda"))]
            {
                let _ = (index, precision, task);
                Err(RuntimeError::NoCudaBuild)
            }
        }
    }
}

/// Probes CUDA device `index` with one tiny round-trip; the driver's panic becomes an error.
#[cfg(feature = "cuda")]
pub fn cuda_device(index: usize) -> Result<burn::backend::cuda::CudaDevice, RuntimeError> {
    use burn::tensor::Tensor;
    let device = burn::backend::cuda::CudaDevice::new(index);
    let probe_device = device.clone();
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let probe = std::panic::catch_unwind(move || Tensor::<Gpu, 1>::from_floats([1.0, 2.0], &probe_device).sum().into_scalar());
    std::panic::set_hook(previous_hook);
    match probe {
        Ok(3.0) => Ok(device),
        Ok(v) => Err(RuntimeError::CudaUnusable { index, why: format!("it answered 1 + 2 = {v}") }),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown error".into());
            Err(RuntimeError::CudaUnusable { index, why })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(3)));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("tpu".parse::<DeviceSpec>().is_err());
    }

    /// d/dx Σ x² at x = [1, 2], on the training backend.
    struct Grad;
    impl Task for Grad {
        type Output = Vec<f32>;
        fn run<B: AutodiffBackend>(self, device: B::Device) -> Vec<f32> {
            let x = burn::tensor::Tensor::<B, 1>::from_floats([1.0, 2.0], &device).require_grad();
            let grads = x.clone().powi_scalar(2).sum().backward();
            x.grad(&grads).unwrap().into_data().convert::<f32>().to_vec().unwrap()
        }
    }

    struct Sum;
    impl InferenceTask for Sum {
        type Output = f32;
        fn run<B: Backend>(self, device: B::Device) -> f32 {
            burn::tensor::Tensor::<B, 1>::from_floats([1.0, 2.0], &device).sum().into_scalar().elem::<f32>()
        }
    }

    #[test]
    fn one_dispatch_runs_training_and_inference_work_and_cuda_without_a_gpu_is_an_error() {
        assert_eq!(dispatch(DeviceSpec::Cpu, Grad).unwrap(), vec![2.0, 4.0]);
        assert_eq!(dispatch(DeviceSpec::Cpu, Inference(Sum)).unwrap(), 3.0);
        #[cfg(not(feature = "cuda"))]
        assert!(matches!(dispatch(DeviceSpec::Cuda(0), Inference(Sum)), Err(RuntimeError::NoCudaBuild)));
    }
}

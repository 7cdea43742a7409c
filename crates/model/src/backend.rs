//! Backends and `--device` selection: burn-flex on CPU, burn-cuda (feature `cuda`) on NVIDIA GPUs.
//!
//! Flex over NdArray, measured here (2 cores, `rlhf bench generate`): 2016 vs 1353 tokens/s.
//! NdArray's reshape copies every standard-layout input of a matmul (weights included), and its
//! `simd` feature uses approximate math that moved fixture logits by 1e-4.
//! A CPU run never touches CUDA; asking for CUDA where there is none is an error, not a panic.

use std::fmt;
use std::str::FromStr;

use burn::tensor::backend::{AutodiffBackend, Backend};

use crate::error::{ModelError, Result};

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

/// `--device cpu | cuda | cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
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

/// Work that runs on any backend; [`dispatch`] picks the backend from a [`DeviceSpec`].
pub trait BackendTask {
    type Output;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output;
}

/// Training work: runs on an autodiff backend chosen by [`dispatch_train`].
pub trait TrainTask {
    type Output;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output;
}

/// Runs `task` on the inference backend for `spec`.
pub fn dispatch<T: BackendTask>(spec: DeviceSpec, task: T) -> Result<T::Output> {
    match spec {
        DeviceSpec::Cpu => Ok(task.run::<Cpu>(Default::default())),
        DeviceSpec::Cuda(index) => {
            #[cfg(feature = "cuda")]
            {
                let device = cuda_device(index)?;
                Ok(task.run::<Gpu>(device))
            }
            #[cfg(not(feature = "cuda"))]
            {
                let _ = (index, task);
                Err(no_cuda_build())
            }
        }
    }
}

/// Runs `task` on the autodiff backend for `spec`.
pub fn dispatch_train<T: TrainTask>(spec: DeviceSpec, task: T) -> Result<T::Output> {
    match spec {
        DeviceSpec::Cpu => Ok(task.run::<CpuTrain>(Default::default())),
        DeviceSpec::Cuda(index) => {
            #[cfg(feature = "cuda")]
            {
                let device = cuda_device(index)?;
                Ok(task.run::<GpuTrain>(device))
            }
            #[cfg(not(feature = "cuda"))]
            {
                let _ = (index, task);
                Err(no_cuda_build())
            }
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn no_cuda_build() -> ModelError {
    ModelError::Invalid("this binary was built without CUDA support: rebuild with `--features cuda`".into())
}

/// Probes CUDA device `index` with one tiny round-trip; the driver's panic becomes an error.
#[cfg(feature = "cuda")]
pub fn cuda_device(index: usize) -> Result<burn::backend::cuda::CudaDevice> {
    use burn::tensor::Tensor;
    let device = burn::backend::cuda::CudaDevice::new(index);
    let probe_device = device.clone();
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let probe = std::panic::catch_unwind(move || {
        Tensor::<Gpu, 1>::from_floats([1.0, 2.0], &probe_device).sum().into_scalar()
    });
    std::panic::set_hook(previous_hook);
    match probe {
        Ok(v) if v == 3.0 => Ok(device),
        Ok(v) => Err(ModelError::Invalid(format!("CUDA device {index} answered 1 + 2 = {v}"))),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown error".into());
            Err(ModelError::Invalid(format!("CUDA device {index} is not usable (is an NVIDIA driver and GPU present?): {why}")))
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
}

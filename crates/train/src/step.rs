//! The one update path. Every optimizer step of every stage — SFT and pretraining, the reward model,
//! PPO's actor and critic — goes through a [`Trainable`]:
//!
//! micro-batch losses (each already divided by the step's normaliser) → gradients summed, so they
//! average (and, data-parallel, summed across ranks: [`crate::data_parallel`]) → non-finite check (stop with an error naming the module; nothing is stepped) → global-norm
//! clip → AdamW step at the scheduled lr → diagnostics.
//!
//! A `Trainable` is also what a checkpoint holds: the module and its optimizer state, under its name.

use std::path::Path;

use burn::module::{AutodiffModule, Module};
use burn::optim::{adaptor::OptimizerAdaptor, GradientsAccumulator, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use rlhf_runtime::AutodiffBackend;
use burn::tensor::Tensor;
use rlhf_model::Adapted;

use crate::data_parallel::{sum_gradients, GradientSum};
use crate::error::{Result, TrainError};
use crate::optim::{clip_global_norm, AdamW, OptimConfig};

/// A module being trained, with its optimizer and the gradients of the step in progress.
pub struct Trainable<B: AutodiffBackend, M: AutodiffModule<B>> {
    /// Names the module in errors and checkpoint files (`model`, `actor`, `critic`).
    pub name: &'static str,
    pub module: M,
    optim: OptimizerAdaptor<AdamW, M, B>,
    config: OptimConfig,
    grads: GradientsAccumulator<M>,
    /// Σ of the micro-batch loss values of the step in progress.
    loss: f64,
    device: B::Device,
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// The step's loss: the sum of its micro-batch losses (each divided by the normaliser).
    pub loss: f64,
    /// ‖g‖₂ over all parameters before clipping.
    pub grad_norm: f64,
    /// Data-parallel only (else `None`): the gradient sum across ranks.
    pub sum: Option<GradientSum>,
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> Trainable<B, M> {
    pub fn new(name: &'static str, module: M, config: &OptimConfig, device: &B::Device) -> Self {
        Self {
            name,
            module,
            optim: config.adamw::<B, M>(),
            config: *config,
            grads: GradientsAccumulator::new(),
            loss: 0.0,
            device: device.clone(),
        }
    }

    /// Backpropagates one micro-batch's `loss` (already divided by the step's normaliser) and adds
    /// its gradients to the step's; `value` is the loss as the caller read it on the host.
    pub fn backward(&mut self, loss: Tensor<B, 1>, value: f64) {
        let grads = GradientsParams::from_grads(loss.backward(), &self.module);
        self.grads.accumulate(&self.module, grads);
        self.loss += value;
    }

    /// Ends the step: refuses a non-finite loss or gradient norm (naming the module; the module is
    /// left as it was), clips the global gradient norm, and takes an AdamW step at `lr`.
    /// `step` (1-based) and `last_checkpoint` only go into the error message.
    pub fn step(&mut self, lr: f64, step: usize, last_checkpoint: &str) -> Result<StepReport> {
        let loss = std::mem::take(&mut self.loss);
        let mut grads = std::mem::replace(&mut self.grads, GradientsAccumulator::new()).grads();
        // Before the checks, so every rank sees the same sums and stops (or steps) together.
        let world = rlhf_dist::world();
        let (loss, sum) = match world.is_distributed() {
            true => {
                let (loss, sum) = sum_gradients(world, &self.module, &mut grads, loss, &self.device);
                (loss, Some(sum))
            }
            false => (loss, None),
        };
        let stop = |what: &'static str, value: f64| TrainError::NonFinite { module: self.name, what, value, step, last_checkpoint: last_checkpoint.to_string() };
        if !loss.is_finite() {
            return Err(stop("loss", loss));
        }
        let grad_norm = clip_global_norm(&self.module, &mut grads, self.config.grad_clip);
        if !grad_norm.is_finite() {
            return Err(stop("gradient norm", grad_norm));
        }
        self.module = self.optim.step(lr, self.module.clone(), grads);
        Ok(StepReport { loss, grad_norm, sum })
    }
}

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::new()
}

/// Something a checkpoint holds, written into and read from the checkpoint's folder.
pub trait Checkpointed {
    fn save_into(&self, dir: &Path) -> Result<()>;
    fn load_from(&mut self, dir: &Path) -> Result<()>;
}

impl<B: AutodiffBackend, M: AutodiffModule<B> + Adapted<B>> Checkpointed for Trainable<B, M> {
    /// `DIR/<name>.mpk` (the module; with LoRA only its adapters and fully trained heads — the frozen
    /// base is never written) and `DIR/<name>_optim.mpk` (AdamW's moments and step count).
    fn save_into(&self, dir: &Path) -> Result<()> {
        let ck = |e: burn::record::RecorderError| TrainError::Checkpoint { path: dir.to_path_buf(), message: e.to_string() };
        match self.module.adapter_state() {
            Some(adapters) => Recorder::<B>::record(&recorder(), adapters.into_record(), dir.join(self.name)).map_err(ck)?,
            None => Recorder::<B>::record(&recorder(), self.module.clone().into_record(), dir.join(self.name)).map_err(ck)?,
        }
        Recorder::<B>::record(&recorder(), self.optim.to_record(), dir.join(format!("{}_optim", self.name))).map_err(ck)
    }

    fn load_from(&mut self, dir: &Path) -> Result<()> {
        let ck = |e: burn::record::RecorderError| TrainError::Checkpoint { path: dir.to_path_buf(), message: e.to_string() };
        self.module = match self.module.adapter_state() {
            Some(adapters) => {
                let record = Recorder::<B>::load(&recorder(), dir.join(self.name), &self.device).map_err(ck)?;
                self.module.clone().with_adapter_state(adapters.load_record(record))
            }
            None => {
                let record = Recorder::<B>::load(&recorder(), dir.join(self.name), &self.device).map_err(ck)?;
                self.module.clone().load_record(record)
            }
        };
        let optim = Recorder::<B>::load(&recorder(), dir.join(format!("{}_optim", self.name)), &self.device).map_err(ck)?;
        self.optim = self.config.adamw::<B, M>().load_record(optim);
        self.grads = GradientsAccumulator::new();
        self.loss = 0.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::{Module, Param};
    use burn::tensor::TensorData;

    type AD = rlhf_runtime::CpuTrain;

    #[derive(Module, Debug)]
    struct Scalar<B: rlhf_runtime::Backend> {
        w: Param<Tensor<B, 1>>,
    }

    impl<B: rlhf_runtime::Backend> Adapted<B> for Scalar<B> {}

    fn scalar(v: f32) -> Trainable<AD, Scalar<AD>> {
        let d = Default::default();
        let w = Param::from_tensor(Tensor::<AD, 1>::from_data(TensorData::new(vec![v], [1]), &d));
        let cfg = OptimConfig { grad_clip: 0.0, ..OptimConfig::default() };
        Trainable::new("toy", Scalar { w }, &cfg, &d)
    }

    fn w(t: &Trainable<AD, Scalar<AD>>) -> f32 {
        t.module.w.val().into_scalar()
    }

    #[test]
    fn micro_batch_gradients_sum_and_adam_moves_against_them() {
        let mut t = scalar(1.0);
        // Two micro-batches of loss w²/2 each: summed gradient 2w = 2; loss value 1.
        for _ in 0..2 {
            let loss = t.module.w.val().powi_scalar(2) * 0.5;
            t.backward(loss.sum(), 0.5);
        }
        let r = t.step(0.1, 1, "none").unwrap();
        assert_eq!(r.loss, 1.0);
        assert!((r.grad_norm - 2.0).abs() < 1e-6);
        // AdamW's first step moves by lr·sign(g) (bias-corrected m/√v = 1).
        assert!((w(&t) - 0.9).abs() < 1e-5, "{}", w(&t));
    }

    #[test]
    fn non_finite_loss_is_refused_naming_the_module_and_nothing_moves() {
        let mut t = scalar(1.0);
        let loss = t.module.w.val().sum();
        t.backward(loss, f64::NAN);
        let e = t.step(0.1, 7, "ckpt/step-6").unwrap_err().to_string();
        assert!(e.contains("toy") && e.contains("loss") && e.contains("step 7") && e.contains("ckpt/step-6"), "{e}");
        assert_eq!(w(&t), 1.0);
        // The refused step's gradients are gone: the next step starts clean.
        let loss = t.module.w.val().sum();
        t.backward(loss, 1.0);
        assert!((t.step(0.1, 7, "none").unwrap().grad_norm - 1.0).abs() < 1e-6);
    }

    #[test]
    fn checkpoint_round_trip_restores_module_and_optimizer() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = scalar(1.0);
        let take_step = |t: &mut Trainable<AD, Scalar<AD>>| {
            let loss = t.module.w.val().powi_scalar(2).sum();
            t.backward(loss, 0.0);
            t.step(0.1, 1, "none").unwrap();
        };
        take_step(&mut a);
        a.save_into(dir.path()).unwrap();
        let mut b = scalar(5.0);
        b.load_from(dir.path()).unwrap();
        assert_eq!(w(&a), w(&b));
        // Same optimizer state: the next steps agree exactly.
        take_step(&mut a);
        take_step(&mut b);
        assert_eq!(w(&a), w(&b));
    }
}

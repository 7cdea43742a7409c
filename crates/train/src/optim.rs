//! AdamW with every knob explicit, and clipping by the **global** gradient norm (burn's
//! `GradientClipping::Norm` clips each tensor on its own, which is not what users expect).

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWState, AdaptiveMomentumState, GradientsParams, LearningRate, SimpleOptimizer};
use burn::optim::adaptor::OptimizerAdaptor;
use rlhf_runtime::adamw::{adamw_step, AdamWStep};
use rlhf_runtime::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    #[serde(default = "default_beta1")]
    pub beta1: f32,
    #[serde(default = "default_beta2")]
    pub beta2: f32,
    #[serde(default = "default_eps")]
    pub eps: f32,
    /// Decoupled weight decay (burn's default is 1e-4; ours is explicit).
    #[serde(default)]
    pub weight_decay: f32,
    /// Clip the global gradient norm to this value; 0 disables.
    #[serde(default = "default_clip")]
    pub grad_clip: f64,
}

fn default_beta1() -> f32 {
    0.9
}
fn default_beta2() -> f32 {
    0.95
}
fn default_eps() -> f32 {
    1e-8
}
fn default_clip() -> f64 {
    1.0
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self { beta1: default_beta1(), beta2: default_beta2(), eps: default_eps(), weight_decay: 0.0, grad_clip: default_clip() }
    }
}

impl OptimConfig {
    pub fn adamw<B: AutodiffBackend, M: AutodiffModule<B>>(&self) -> OptimizerAdaptor<AdamW, M, B> {
        OptimizerAdaptor::from(AdamW { config: *self })
    }
}

/// AdamW as burn's `AdamW` computes it (the same arithmetic in the same order, the same state
/// record, so checkpoints of either load in the other), each parameter's update one backend op
/// ([`rlhf_runtime::adamw`]): one pass on the CPU instead of about twelve.
#[derive(Debug, Clone)]
pub struct AdamW {
    config: OptimConfig,
}

impl<B: rlhf_runtime::Backend> SimpleOptimizer<B> for AdamW {
    type State<const D: usize> = AdamWState<B, D>;

    fn step<const D: usize>(&self, lr: LearningRate, tensor: Tensor<B, D>, grad: Tensor<B, D>, state: Option<Self::State<D>>) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let (time, moments) = match state {
            Some(AdamWState { momentum: AdaptiveMomentumState { time, moment_1, moment_2, .. } }) => (time + 1, Some((moment_1, moment_2))),
            None => (1, None),
        };
        let c = &self.config;
        let step = AdamWStep { lr, beta_1: c.beta1, beta_2: c.beta2, epsilon: c.eps, weight_decay: c.weight_decay, time };
        let (tensor, moment_1, moment_2) = adamw_step(tensor, grad, moments, &step);
        (tensor, Some(AdamWState { momentum: AdaptiveMomentumState { time, moment_1, moment_2, max_moment_2: None } }))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

/// The ids of a module's float parameters, with their ranks.
struct ParamIds(Vec<(ParamId, usize)>);

impl<B: rlhf_runtime::Backend> ModuleVisitor<B> for ParamIds {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push((param.id, D));
    }
}

fn param_ids<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M) -> Vec<(ParamId, usize)> {
    let mut v = ParamIds(Vec::new());
    model.visit(&mut v);
    v.0
}

/// Applies `f` to every gradient tensor of `model` in `grads` (ranks 1–3, all our modules have).
fn for_each_grad<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &mut GradientsParams,
    mut f: impl FnMut(&mut GradientsParams, ParamId, usize),
) {
    for (id, rank) in param_ids(model) {
        f(grads, id, rank);
    }
}

/// ‖g‖₂ over all gradients of `model`.
pub fn global_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M, grads: &mut GradientsParams) -> f64 {
    let mut sum_sq: Option<Tensor<B::InnerBackend, 1>> = None;
    for_each_grad(model, grads, |g, id, rank| {
        let sq = match rank {
            1 => g.get::<B::InnerBackend, 1>(id).map(|t| t.square().sum()),
            2 => g.get::<B::InnerBackend, 2>(id).map(|t| t.square().sum()),
            3 => g.get::<B::InnerBackend, 3>(id).map(|t| t.square().sum()),
            _ => None,
        };
        if let Some(sq) = sq {
            sum_sq = Some(match sum_sq.take() {
                Some(acc) => acc + sq,
                None => sq,
            });
        }
    });
    // One device→host read per step.
    sum_sq.map_or(0.0, |s| s.into_scalar().elem::<f64>().sqrt())
}

/// Scales every gradient by `factor`.
pub fn scale_grads<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M, grads: &mut GradientsParams, factor: f64) {
    for_each_grad(model, grads, |g, id, rank| match rank {
        1 => {
            if let Some(t) = g.remove::<B::InnerBackend, 1>(id) {
                g.register(id, t * factor)
            }
        }
        2 => {
            if let Some(t) = g.remove::<B::InnerBackend, 2>(id) {
                g.register(id, t * factor)
            }
        }
        3 => {
            if let Some(t) = g.remove::<B::InnerBackend, 3>(id) {
                g.register(id, t * factor)
            }
        }
        _ => {}
    });
}

/// Clips the global gradient norm to `max_norm` (if > 0); returns the norm before clipping.
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let norm = global_grad_norm(model, grads);
    if max_norm > 0.0 && norm > max_norm {
        scale_grads(model, grads, max_norm / (norm + 1e-6));
    }
    norm
}

#[cfg(test)]
mod tests {
    use burn::module::{Module, Param};
    use burn::optim::{AdamWConfig, Optimizer};
    use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
    use burn::tensor::Distribution;

    use super::*;

    type AD = rlhf_runtime::CpuTrain;

    /// A weight used transposed (a strided gradient, like a tied unembedding's), one large enough
    /// for the update to be split across cores, and a vector.
    #[derive(Module, Debug)]
    struct Toy<B: rlhf_runtime::Backend> {
        w: Param<Tensor<B, 2>>,
        big: Param<Tensor<B, 2>>,
        b: Param<Tensor<B, 1>>,
    }

    fn toy() -> Toy<AD> {
        let d = Default::default();
        <AD as burn::tensor::backend::Backend>::seed(&d, 3);
        let init = |shape: [usize; 2]| Param::from_tensor(Tensor::<AD, 2>::random(shape, Distribution::Normal(0.0, 0.5), &d));
        Toy { w: init([6, 5]), big: init([600, 512]), b: Param::from_tensor(Tensor::random([5], Distribution::Normal(0.0, 0.5), &d)) }
    }

    /// The gradients of a loss whose input is drawn from `seed` (so two modules can get the same).
    fn grads_of(m: &Toy<AD>, step: usize, seed: u64) -> GradientsParams {
        let d = Default::default();
        <AD as burn::tensor::backend::Backend>::seed(&d, seed);
        let x = Tensor::<AD, 2>::random([4, 5], Distribution::Normal(0.0, 1.0), &d);
        let y = x.matmul(m.w.val().transpose()).tanh().sum() + (m.big.val() * (step as f32 + 1.0)).powi_scalar(2).sum() + m.b.val().exp().sum();
        GradientsParams::from_grads(y.backward(), m)
    }

    fn bits(m: &Toy<AD>) -> Vec<Vec<u32>> {
        let flat = |t: Tensor<AD, 2>| t.into_data().to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect();
        vec![flat(m.w.val()), flat(m.big.val()), flat(m.b.val().unsqueeze())]
    }

    fn burns_adamw(cfg: &OptimConfig) -> OptimizerAdaptor<burn::optim::AdamW, Toy<AD>, AD> {
        AdamWConfig::new().with_beta_1(cfg.beta1).with_beta_2(cfg.beta2).with_epsilon(cfg.eps).with_weight_decay(cfg.weight_decay).init()
    }

    /// burn's own AdamW is the reference: three steps (the first without moments), with weight decay,
    /// give the same bits.
    #[test]
    fn our_adamw_takes_burns_steps_bit_for_bit() {
        let cfg = OptimConfig { weight_decay: 0.1, ..OptimConfig::default() };
        let mut burns = burns_adamw(&cfg);
        let mut ours = cfg.adamw::<AD, Toy<AD>>();
        let (mut a, mut b) = (toy(), toy());
        assert_eq!(bits(&a), bits(&b));
        for step in 0..3 {
            let (ga, gb) = (grads_of(&a, step, 10 + step as u64), grads_of(&b, step, 10 + step as u64));
            a = burns.step(1e-2, a, ga);
            b = ours.step(1e-2, b, gb);
            assert_eq!(bits(&a), bits(&b), "after step {}", step + 1);
        }
    }

    /// A checkpoint of burn's optimizer state loads into ours (same record), and the next step agrees.
    #[test]
    fn burns_optimizer_checkpoint_loads_into_ours() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = OptimConfig::default();
        let mut burns = burns_adamw(&cfg);
        let mut a = toy();
        let g = grads_of(&a, 0, 4);
        a = burns.step(1e-2, a, g);
        let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        Recorder::<AD>::record(&recorder, burns.to_record(), dir.path().join("optim")).unwrap();
        let mut ours = cfg.adamw::<AD, Toy<AD>>().load_record(Recorder::<AD>::load(&recorder, dir.path().join("optim"), &Default::default()).unwrap());
        let b = a.clone();
        let (ga, gb) = (grads_of(&a, 1, 7), grads_of(&b, 1, 7));
        assert_eq!(bits(&burns.step(1e-2, a, ga)), bits(&ours.step(1e-2, b, gb)));
    }
}

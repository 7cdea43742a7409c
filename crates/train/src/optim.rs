//! AdamW with every knob explicit, and clipping by the **global** gradient norm (burn's
//! `GradientClipping::Norm` clips each tensor on its own, which is not what users expect).

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamW, AdamWConfig, GradientsParams};
use burn::optim::adaptor::OptimizerAdaptor;
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
        AdamWConfig::new()
            .with_beta_1(self.beta1)
            .with_beta_2(self.beta2)
            .with_epsilon(self.eps)
            .with_weight_decay(self.weight_decay)
            .init()
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

//! One parameter's AdamW update as one op (Loshchilov & Hutter's decoupled weight decay, with Adam's
//! bias corrections):
//!   m ← β₁·m + (1 − β₁)·g,   v ← β₂·v + (1 − β₂)·g²,
//!   p ← p·(1 − lr·λ) − lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε).
//!
//! The composition is burn's `AdamW` (burn-optim 0.21), op for op and in the same order, so a
//! backend that keeps it (CUDA) computes exactly what burn's optimizer did. Composed, a step is about
//! twelve passes over each parameter's elements, each writing a new tensor, on burn-flex all on one
//! core (measured: see docs/performance.md). burn-flex's override is one pass
//! with the same f32 operations in the same order — the same bits — writing the moments in place
//! and the new parameter into the gradient's buffer, split across cores when large.

use burn::tensor::Tensor;

use crate::Backend;

/// One AdamW step's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    /// Decoupled weight decay λ.
    pub weight_decay: f32,
    /// The step's 1-based count t (the bias corrections' exponent).
    pub time: usize,
}

impl AdamWStep {
    /// (1 − β₁ᵗ, 1 − β₂ᵗ), in f32 as burn computes them.
    fn bias_corrections(&self) -> (f32, f32) {
        let t = self.time as i32;
        (1f32 - self.beta_1.powi(t), 1f32 - self.beta_2.powi(t))
    }

    /// (1 − β₁, 1 − β₂): the new gradient's weights in the moments.
    fn factors(&self) -> (f32, f32) {
        (1.0 - self.beta_1, 1.0 - self.beta_2)
    }

    /// 1 − lr·λ, the share of each weight kept this step; None without decay (burn then leaves p
    /// untouched rather than multiplying by 1).
    fn keep(&self) -> Option<f64> {
        let decay_rate = self.lr * self.weight_decay as f64;
        (decay_rate != 0.0).then_some(1.0 - decay_rate)
    }
}

/// (p, m, v) after one step from gradient `grad`; `moments` is None on a parameter's first step
/// (then m = (1 − β₁)·g and v = (1 − β₂)·g², as burn starts them).
pub type AdamWOutput<B, const D: usize> = (Tensor<B, D>, Tensor<B, D>, Tensor<B, D>);

/// The composition (burn's `AdamW::step` and `AdaptiveMomentumW::transform`, amsgrad and cautious
/// weight decay off).
pub(crate) fn adamw_composed<B: burn::tensor::backend::Backend, const D: usize>(
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
    moments: Option<(Tensor<B, D>, Tensor<B, D>)>,
    step: &AdamWStep,
) -> AdamWOutput<B, D> {
    let (factor_1, factor_2) = step.factors();
    let (moment_1, moment_2) = match moments {
        Some((m, v)) => (
            m.mul_scalar(step.beta_1).add(grad.clone().mul_scalar(factor_1)),
            v.mul_scalar(step.beta_2).add(grad.square().mul_scalar(factor_2)),
        ),
        None => (grad.clone().mul_scalar(factor_1), grad.square().mul_scalar(factor_2)),
    };
    let (c1, c2) = step.bias_corrections();
    let delta = moment_1.clone().div_scalar(c1).div(moment_2.clone().div_scalar(c2).sqrt().add_scalar(step.epsilon));
    let decayed = match step.keep() {
        Some(keep) => param.mul_scalar(keep),
        None => param,
    };
    (decayed - delta.mul_scalar(step.lr), moment_1, moment_2)
}

/// One AdamW step of one parameter ([`Backend::adamw_step`]).
pub fn adamw_step<B: Backend, const D: usize>(
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
    moments: Option<(Tensor<B, D>, Tensor<B, D>)>,
    step: &AdamWStep,
) -> AdamWOutput<B, D> {
    B::adamw_step(param, grad, moments, step)
}

/// burn-flex: one pass (f32 tensors of one shape; anything else takes the composition).
pub(crate) mod flex {
    use burn::tensor::DType;
    use burn_flex::FlexTensor;
    use rayon::prelude::*;

    use super::AdamWStep;

    /// Below this many elements one core does it all; above, pieces of this many go to the cores.
    const PARALLEL_ELEMENTS: usize = 1 << 18;
    const PIECE: usize = 1 << 14;

    /// The step's constants, each rounded to f32 as burn's scalar ops round them.
    struct Constants {
        beta_1: f32,
        beta_2: f32,
        factor_1: f32,
        factor_2: f32,
        c1: f32,
        c2: f32,
        epsilon: f32,
        lr: f32,
        /// 1 − lr·λ; None without decay (burn then leaves p untouched).
        keep: Option<f32>,
        /// No moments yet: m = (1 − β₁)·g, v = (1 − β₂)·g².
        first: bool,
    }

    /// One element: updates `m`, `v` and returns the new parameter. The same operations in the
    /// same order as the composition (no fused multiply-add), so the same bits.
    #[inline(always)]
    fn update(p: f32, g: f32, m: &mut f32, v: &mut f32, k: &Constants) -> f32 {
        if k.first {
            *m = g * k.factor_1;
            *v = (g * g) * k.factor_2;
        } else {
            *m = *m * k.beta_1 + g * k.factor_1;
            *v = *v * k.beta_2 + (g * g) * k.factor_2;
        }
        let delta = (*m / k.c1) / ((*v / k.c2).sqrt() + k.epsilon);
        let decayed = match k.keep {
            Some(keep) => p * keep,
            None => p,
        };
        decayed - delta * k.lr
    }

    /// (p, m, v). The new parameter is written over the gradient (which the step consumes), the
    /// moments in place; a buffer still shared elsewhere is copied first (burn-flex copies on write),
    /// a strided one (the gradient of a weight used transposed) made row-major. All four are f32 of
    /// one shape (the caller checks).
    pub fn adamw_step(param: &FlexTensor, grad: FlexTensor, moments: Option<(FlexTensor, FlexTensor)>, step: &AdamWStep) -> (FlexTensor, FlexTensor, FlexTensor) {
        let shape = param.layout().shape().to_vec();
        let p = param.to_contiguous();
        let mut g = grad.to_contiguous();
        let first = moments.is_none();
        let (mut m, mut v) = match moments {
            Some((m, v)) => (m.to_contiguous(), v.to_contiguous()),
            // Written before read (`first`); zeros only to have buffers.
            None => (FlexTensor::zeros(shape.clone().into(), DType::F32), FlexTensor::zeros(shape.clone().into(), DType::F32)),
        };
        let ((c1, c2), (factor_1, factor_2)) = (step.bias_corrections(), step.factors());
        let k = Constants {
            beta_1: step.beta_1,
            beta_2: step.beta_2,
            factor_1,
            factor_2,
            c1,
            c2,
            epsilon: step.epsilon,
            lr: step.lr as f32,
            keep: step.keep().map(|keep| keep as f32),
            first,
        };
        let p_in: &[f32] = p.storage();
        let (g_out, m_out, v_out): (&mut [f32], &mut [f32], &mut [f32]) = (g.storage_mut(), m.storage_mut(), v.storage_mut());
        let run = |p: &[f32], g: &mut [f32], m: &mut [f32], v: &mut [f32]| {
            for (((p, g), m), v) in p.iter().zip(g.iter_mut()).zip(m.iter_mut()).zip(v.iter_mut()) {
                *g = update(*p, *g, m, v, &k);
            }
        };
        if p_in.len() >= PARALLEL_ELEMENTS {
            p_in.par_chunks(PIECE)
                .zip(g_out.par_chunks_mut(PIECE))
                .zip(m_out.par_chunks_mut(PIECE).zip(v_out.par_chunks_mut(PIECE)))
                .for_each(|((p, g), (m, v))| run(p, g, m, v));
        } else {
            run(p_in, g_out, m_out, v_out);
        }
        (g, m, v)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, TensorData};

    use super::*;
    use crate::Cpu;

    fn bits<const D: usize>(t: Tensor<Cpu, D>) -> Vec<u32> {
        t.into_data().to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
    }

    fn random<const D: usize>(shape: [usize; D], std: f64) -> Tensor<Cpu, D> {
        Tensor::random(shape, Distribution::Normal(0.0, std), &Default::default())
    }

    /// Three steps of the fused op and of the composition from the same start give the same bits:
    /// with and without weight decay, one core and split, and a transposed (strided) gradient.
    #[test]
    fn fused_steps_equal_the_composition_bit_for_bit() {
        <Cpu as burn::tensor::backend::Backend>::seed(&Default::default(), 5);
        for (shape, weight_decay) in [([3, 37], 0.0), ([3, 37], 0.1), ([640, 512], 0.01)] {
            let param = random(shape, 0.5);
            let (mut fused, mut composed) = ((param.clone(), None), (param, None));
            for time in 1..=3 {
                let step = AdamWStep { lr: 1e-3 * time as f64, beta_1: 0.9, beta_2: 0.95, epsilon: 1e-8, weight_decay, time };
                // Gradients of very different sizes (v spans many binades), one of them transposed.
                let grad = random([shape[1], shape[0]], 10f64.powi(time as i32 - 2)).transpose();
                let (p, m, v) = adamw_step::<Cpu, 2>(fused.0, grad.clone(), fused.1, &step);
                fused = (p, Some((m, v)));
                let (p, m, v) = adamw_composed::<Cpu, 2>(composed.0, grad, composed.1, &step);
                composed = (p, Some((m, v)));
            }
            let ((fp, Some((fm, fv))), (cp, Some((cm, cv)))) = (fused, composed) else { unreachable!() };
            assert_eq!(bits(fp), bits(cp), "parameter, {shape:?}, λ = {weight_decay}");
            assert_eq!(bits(fm), bits(cm), "first moment, {shape:?}");
            assert_eq!(bits(fv), bits(cv), "second moment, {shape:?}");
        }
    }

    /// The first step by hand: m̂ = g, v̂ = g², so p moves by lr·g/(|g| + ε) = lr·sign(g) (plus decay).
    #[test]
    fn first_step_moves_each_weight_by_lr_against_its_gradient() {
        let d = Default::default();
        let param = Tensor::<Cpu, 1>::from_data(TensorData::new(vec![1.0f32, -2.0, 0.5], [3]), &d);
        let grad = Tensor::<Cpu, 1>::from_data(TensorData::new(vec![0.3f32, -4.0, 0.0], [3]), &d);
        let step = AdamWStep { lr: 0.1, beta_1: 0.9, beta_2: 0.999, epsilon: 1e-8, weight_decay: 0.5, time: 1 };
        let (p, m, v) = adamw_step::<Cpu, 1>(param, grad, None, &step);
        let p = p.into_data().to_vec::<f32>().unwrap();
        let want = [1.0 * 0.95 - 0.1, -2.0 * 0.95 + 0.1, 0.5 * 0.95];
        for (got, want) in p.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{p:?}");
        }
        let m = m.into_data().to_vec::<f32>().unwrap();
        let v = v.into_data().to_vec::<f32>().unwrap();
        // (1 − β₂ in f32 is 0.00099998713.)
        assert!((m[1] - 0.1 * -4.0).abs() < 1e-6 && (v[1] - 0.001 * 16.0).abs() < 1e-6, "{m:?} {v:?}");
    }
}

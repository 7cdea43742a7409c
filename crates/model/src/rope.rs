//! Rotary position embeddings in Hugging Face's "rotate-half" convention.
//!
//! HF LLaMA pairs dimension `i` with `i + head_dim/2` (the first and second halves of a head), whereas
//! burn's `RotaryEncoding` pairs neighbours `2i, 2i+1`. Checkpoints are trained with HF's pairing, so we
//! implement it directly rather than permuting q/k weights.

use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};
use rlhf_runtime::Backend;

use crate::config::{RopeScaling, TransformerConfig};

/// The rotary frequencies of one head, `head_dim / 2` of them.
///
/// θ_i = base^(−2i/head_dim) (HF `_compute_default_rope_parameters`), then rescaled as `scaling`
/// says. Everything in f32 and in transformers' order of operations (torch evaluates `c / t` as
/// `t.reciprocal() * c`), so the frequencies equal its `inv_freq` bit for bit.
pub fn inv_freq(head_dim: usize, base: f64, scaling: Option<&RopeScaling>) -> Vec<f32> {
    let plain = (0..head_dim / 2).map(|i| 1.0 / (base as f32).powf((2 * i) as f32 / head_dim as f32));
    match scaling {
        None => plain.collect(),
        Some(&RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
            // `_compute_llama3_parameters`: thresholds are Python floats, compared in f32.
            let original = original_max_position_embeddings as f64;
            let low_freq_wavelen = (original / low_freq_factor) as f32;
            let high_freq_wavelen = (original / high_freq_factor) as f32;
            let (factor, low, band) = (factor as f32, low_freq_factor as f32, (high_freq_factor - low_freq_factor) as f32);
            plain
                .map(|f| {
                    let wavelen = (1.0 / f) * std::f64::consts::TAU as f32;
                    if wavelen < high_freq_wavelen {
                        f
                    } else if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        let smooth = ((1.0 / wavelen) * original as f32 - low) / band;
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

/// Precomputed cos/sin tables, one row per position.
#[derive(Module, Debug)]
pub struct Rope<B: Backend> {
    /// [max_positions, head_dim]: cos(pos · θ_i), each frequency repeated for both halves.
    cos: Tensor<B, 2>,
    /// [max_positions, head_dim]
    sin: Tensor<B, 2>,
}

impl<B: Backend> Rope<B> {
    /// Tables for every position the config allows, with its `rope_theta` and scaling.
    pub fn from_config(cfg: &TransformerConfig, device: &B::Device) -> Self {
        let inv_freq = inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling.as_ref());
        let (max_positions, head_dim) = (cfg.max_position_embeddings, cfg.head_dim);
        let mut cos = Vec::with_capacity(max_positions * head_dim);
        let mut sin = Vec::with_capacity(max_positions * head_dim);
        // Angles in f32, as HF's `inv_freq @ position_ids`.
        for pos in 0..max_positions {
            for _ in 0..2 {
                for f in &inv_freq {
                    let angle = (pos as f32) * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let shape = [max_positions, head_dim];
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
        }
    }

    /// cos and sin for the given positions.
    ///
    /// # Shapes
    /// - `positions`: [batch, seq]
    /// - returns two [batch, 1, seq, head_dim] tensors, ready to broadcast over heads.
    pub fn tables(&self, positions: Tensor<B, 2, Int>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [batch, seq] = positions.dims();
        let head_dim = self.cos.dims()[1];
        let flat = positions.reshape([batch * seq]);
        let pick = |t: &Tensor<B, 2>| t.clone().select(0, flat.clone()).reshape([batch, 1, seq, head_dim]);
        (pick(&self.cos), pick(&self.sin))
    }
}

/// x·cos + rotate_half(x)·sin, with rotate_half([x1, x2]) = [−x2, x1].
///
/// # Shapes
/// - `x`: [batch, heads, seq, head_dim]; `cos`, `sin`: [batch, 1, seq, head_dim]
pub fn apply_rotary<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>) -> Tensor<B, 4> {
    rlhf_runtime::rotary::rotary(x, cos, sin)
}


#[cfg(test)]
mod tests {
    use super::*;

    /// Llama-3.1-8B's settings; expected values are transformers 5.23's `inv_freq` (printed as f64).
    #[test]
    fn llama3_frequencies_of_llama_3_1_equal_transformers() {
        let scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let got = inv_freq(128, 500_000.0, Some(&scaling));
        assert_eq!(got.len(), 64);
        // 0..=28 kept, 29..=34 blended, 35.. divided by the factor.
        let want = [
            (0, 1.0),
            (28, 0.0032114461064338684),
            (29, 0.0021665706299245358),
            (31, 0.0008567514596506953),
            (34, 0.0001785077911335975),
            (35, 9.556212171446532e-05),
            (63, 3.068925877869333e-07),
        ];
        for (i, v) in want {
            assert_eq!(got[i], v as f32, "inv_freq[{i}]");
        }
        let plain = inv_freq(128, 500_000.0, None);
        assert_eq!(got[..29], plain[..29]);
        assert!(got[35..].iter().zip(&plain[35..]).all(|(g, p)| *g == p / 8.0));
    }
}

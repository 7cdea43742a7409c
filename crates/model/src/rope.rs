//! Rotary position embeddings in Hugging Face's "rotate-half" convention.
//!
//! HF LLaMA pairs dimension `i` with `i + head_dim/2` (the first and second halves of a head), whereas
//! burn's `RotaryEncoding` pairs neighbours `2i, 2i+1`. Checkpoints are trained with HF's pairing, so we
//! implement it directly rather than permuting q/k weights.

use burn::module::Module;
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

/// Precomputed cos/sin tables, one row per position.
#[derive(Module, Debug)]
pub struct Rope<B: Backend> {
    /// [max_positions, head_dim]: cos(pos · θ_i), each frequency repeated for both halves.
    cos: Tensor<B, 2>,
    /// [max_positions, head_dim]
    sin: Tensor<B, 2>,
}

impl<B: Backend> Rope<B> {
    /// θ_i = base^(−2i/head_dim), i < head_dim/2 (HF `_compute_default_rope_parameters`).
    pub fn new(head_dim: usize, max_positions: usize, base: f64, device: &B::Device) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_positions * head_dim);
        let mut sin = Vec::with_capacity(max_positions * head_dim);
        // Frequencies in f32 as HF computes inv_freq; the angle itself in f64 for long contexts.
        let inv_freq: Vec<f32> =
            (0..half).map(|i| 1.0 / (base as f32).powf((2 * i) as f32 / head_dim as f32)).collect();
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
    let [b, h, s, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().slice([0..b, 0..h, 0..s, 0..half]);
    let x2 = x.clone().slice([0..b, 0..h, 0..s, half..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos + rotated * sin
}


//! Block-wise absmax weight quantization for frozen bases (QLoRA-style `base_quant`).
//!
//! A weight W [d_in, d_out] is cut, per output column, into blocks of `block` consecutive input rows;
//! each block keeps one f32 absmax m = max|w| and a code per weight for w / m ∈ [−1, 1]:
//! - `q8` / `q4`: integers q = round(w / m · q_max), q_max = 127 / 7 (symmetric absmax);
//! - `nf4`: the nearest of QLoRA's 16 NormalFloat levels (quantiles of N(0, 1) scaled to [−1, 1],
//!   Dettmers et al. 2023 §3), denser near 0 where normally distributed weights are.
//!
//! Codes are stored non-negative and packed `32 / bits` to an i32 word along d_in, so a 4-bit base
//! costs 0.5 bytes per weight (+ 4 bytes per block for the absmax) on every backend, with no
//! sub-byte dtype needed. Rounding to the nearest level bounds each weight's error by half a step.

use burn::tensor::backend::Backend as BurnBackend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// Weights per block (along d_in) when d_in allows it; bitsandbytes' block size.
pub const BLOCK: usize = 64;

/// QLoRA's NormalFloat-4 levels (Dettmers et al. 2023, Appendix E), code 0..15.
pub const NF4_LEVELS: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// How a frozen base is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseQuant {
    /// 8-bit integer codes.
    Q8,
    /// 4-bit integer codes.
    Q4,
    /// 4-bit NormalFloat codes (QLoRA's choice).
    Nf4,
}

impl std::str::FromStr for BaseQuant {
    type Err = String;

    /// The names configs use (`q8`, `q4`, `nf4`), for command-line flags.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "q8" => Ok(BaseQuant::Q8),
            "q4" => Ok(BaseQuant::Q4),
            "nf4" => Ok(BaseQuant::Nf4),
            _ => Err(format!("unknown base quantization {s:?} (expected q8, q4 or nf4)")),
        }
    }
}

impl std::fmt::Display for BaseQuant {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            BaseQuant::Q8 => "q8",
            BaseQuant::Q4 => "q4",
            BaseQuant::Nf4 => "nf4",
        })
    }
}

impl BaseQuant {
    pub fn bits(self) -> u32 {
        match self {
            BaseQuant::Q8 => 8,
            BaseQuant::Q4 | BaseQuant::Nf4 => 4,
        }
    }

    /// Largest integer code magnitude (integer kinds).
    fn q_max(self) -> f32 {
        ((1u32 << (self.bits() - 1)) - 1) as f32
    }

    /// The stored code (0 ..= 2^bits − 1) of a weight scaled to [−1, 1].
    fn encode(self, unit: f32) -> u32 {
        match self {
            BaseQuant::Q8 | BaseQuant::Q4 => {
                let q = (unit * self.q_max()).round().clamp(-self.q_max(), self.q_max());
                (q as i32 + (1 << (self.bits() - 1))) as u32
            }
            BaseQuant::Nf4 => {
                let nearest = |i: &usize| (NF4_LEVELS[*i] - unit).abs();
                (0..16).min_by(|a, b| nearest(a).total_cmp(&nearest(b))).expect("16 levels") as u32
            }
        }
    }
}

/// The layout of one quantized weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantFormat {
    pub quant: BaseQuant,
    /// Input rows per absmax.
    pub block: usize,
    pub d_in: usize,
    pub d_out: usize,
}

impl QuantFormat {
    /// Codes per i32 word.
    pub fn per_word(&self) -> usize {
        (32 / self.quant.bits()) as usize
    }

    /// The format for a [d_in, d_out] weight, or why it cannot be packed.
    pub fn new(quant: BaseQuant, d_in: usize, d_out: usize) -> Result<Self, String> {
        let bits = quant.bits();
        let per_word = (32 / bits) as usize;
        if !d_in.is_multiple_of(per_word) {
            return Err(format!("{d_in} input features are not a multiple of {per_word} ({bits}-bit codes per 32-bit word)"));
        }
        // The largest block ≤ BLOCK that tiles d_in in whole words (d_in = 896 → 64; 176 at 4 bits →
        // 16), so no word straddles two scales; per_word itself always qualifies.
        let block = (per_word..=BLOCK.max(per_word).min(d_in))
            .rev()
            .find(|b| d_in.is_multiple_of(*b) && b.is_multiple_of(per_word))
            .unwrap_or(per_word);
        Ok(Self { quant, block, d_in, d_out })
    }

    /// Bytes the quantized weight occupies (codes + absmax per block).
    pub fn bytes(&self) -> usize {
        self.d_in / self.per_word() * self.d_out * 4 + self.d_in / self.block * self.d_out * 4
    }
}

/// Quantizes a row-major [d_in, d_out] weight: (packed codes [d_in / per_word, d_out], absmax
/// [d_in / block, d_out]).
pub fn quantize_host(w: &[f32], format: QuantFormat) -> (Vec<i32>, Vec<f32>) {
    let (d_in, d_out) = (format.d_in, format.d_out);
    assert_eq!(w.len(), d_in * d_out, "weight of {} values is not [{d_in}, {d_out}]", w.len());
    quantize_with(|i, j| w[i * d_out + j], format)
}

/// [`quantize_host`] of W = Eᵀ from E itself, row-major [d_out, d_in] (an LM head, a tied
/// embedding): no transposed copy is made.
pub fn quantize_host_transposed(e: &[f32], format: QuantFormat) -> (Vec<i32>, Vec<f32>) {
    let (d_in, d_out) = (format.d_in, format.d_out);
    assert_eq!(e.len(), d_in * d_out, "weight of {} values is not [{d_out}, {d_in}]", e.len());
    quantize_with(|i, j| e[j * d_in + i], format)
}

/// The codes and scales of the weight whose element (input row i, output column j) is `w(i, j)`.
fn quantize_with(w: impl Fn(usize, usize) -> f32, format: QuantFormat) -> (Vec<i32>, Vec<f32>) {
    let QuantFormat { quant, block, d_in, d_out } = format;
    let mut absmax = vec![0f32; d_in / block * d_out];
    for b in 0..d_in / block {
        for j in 0..d_out {
            let m = (b * block..(b + 1) * block).map(|i| w(i, j).abs()).fold(0f32, f32::max);
            // An all-zero block keeps 1: its weights encode to 0 either way.
            absmax[b * d_out + j] = if m > 0.0 { m } else { 1.0 };
        }
    }
    let code = |i: usize, j: usize| quant.encode(w(i, j) / absmax[i / block * d_out + j]);
    let (per_word, bits) = (format.per_word(), quant.bits() as usize);
    let mut packed = vec![0i32; d_in / per_word * d_out];
    for p in 0..d_in / per_word {
        for j in 0..d_out {
            let word = (0..per_word).fold(0u32, |word, k| word | code(p * per_word + k, j) << (bits * k));
            packed[p * d_out + j] = word as i32;
        }
    }
    (packed, absmax)
}

/// Device tensors for [`quantize_host`]'s output.
pub fn to_device<B: BurnBackend>(packed: Vec<i32>, absmax: Vec<f32>, format: QuantFormat, device: &B::Device) -> (Tensor<B, 2, Int>, Tensor<B, 2>) {
    let rows = format.d_in / format.per_word();
    let packed = Tensor::from_data(TensorData::new(packed, [rows, format.d_out]), device);
    let absmax = Tensor::from_data(TensorData::new(absmax, [format.d_in / format.block, format.d_out]), device);
    (packed, absmax)
}

/// W [d_in, d_out] back from its packed codes and block absmax (device ops only).
pub fn dequantize<B: BurnBackend>(packed: Tensor<B, 2, Int>, absmax: Tensor<B, 2>, format: QuantFormat) -> Tensor<B, 2> {
    let QuantFormat { quant, block, d_in, d_out } = format;
    let bits = quant.bits() as i64;
    let mask = (1i64 << bits) - 1;
    // Code k of every word holds input row (word row · per_word + k).
    let codes: Vec<Tensor<B, 2, Int>> = (0..format.per_word() as i64)
        .map(|k| packed.clone().bitwise_right_shift_scalar((bits * k).elem()).bitwise_and_scalar(mask.elem()))
        .collect();
    let codes = Tensor::stack::<3>(codes, 1).reshape([d_in / block, block, d_out]);
    // Each weight as a fraction of its block's absmax, in [−1, 1].
    let unit = match quant {
        BaseQuant::Q8 | BaseQuant::Q4 => (codes.float() - (1i64 << (bits - 1)) as f64) / quant.q_max() as f64,
        BaseQuant::Nf4 => {
            let levels = Tensor::<B, 1>::from_floats(NF4_LEVELS, &absmax.device());
            levels.select(0, codes.reshape([d_in * d_out])).reshape([d_in / block, block, d_out])
        }
    };
    (unit * absmax.unsqueeze_dim::<3>(1)).reshape([d_in, d_out])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cpu;

    fn weight(d_in: usize, d_out: usize) -> Vec<f32> {
        (0..d_in * d_out).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * if i % 13 == 0 { 3.0 } else { 0.2 }).collect()
    }

    /// Hand-worked: one block [0.5, −1.0, 0.25, 0] in a column, 8 bits: absmax 1, codes
    /// 64 (63.5 rounds away from 0), −127, 32 (31.75), 0, each stored + 128.
    #[test]
    fn codes_and_scales_by_hand() {
        let f = QuantFormat::new(BaseQuant::Q8, 4, 1).unwrap();
        assert_eq!((f.block, f.per_word()), (4, 4));
        let (packed, scales) = quantize_host(&[0.5, -1.0, 0.25, 0.0], f);
        assert_eq!(scales, vec![1.0]);
        let stored: [u32; 4] = [64 + 128, 128 - 127, 32 + 128, 128];
        assert_eq!(packed, vec![(stored[0] | stored[1] << 8 | stored[2] << 16 | stored[3] << 24) as i32]);
        let (p, s) = to_device::<Cpu>(packed, scales, f, &Default::default());
        let w: Vec<f32> = dequantize(p, s, f).into_data().to_vec().unwrap();
        let expect = [64.0 / 127.0, -1.0, 32.0 / 127.0, 0.0];
        for (a, b) in w.iter().zip(expect) {
            assert!((a - b).abs() < 1e-7, "{w:?}");
        }
    }

    #[test]
    fn round_trip_error_is_at_most_half_a_step() {
        for (quant, d_in, d_out) in [(BaseQuant::Q8, 128, 24), (BaseQuant::Q4, 96, 10), (BaseQuant::Q4, 8, 3), (BaseQuant::Nf4, 128, 7)] {
            let w = weight(d_in, d_out);
            let f = QuantFormat::new(quant, d_in, d_out).unwrap();
            let (packed, absmax) = quantize_host(&w, f);
            let (p, s) = to_device::<Cpu>(packed, absmax.clone(), f, &Default::default());
            let back: Vec<f32> = dequantize(p, s, f).into_data().to_vec().unwrap();
            for i in 0..d_in {
                for j in 0..d_out {
                    let m = absmax[i / f.block * d_out + j];
                    let (x, err) = (w[i * d_out + j], (back[i * d_out + j] - w[i * d_out + j]).abs());
                    // Half the gap between the two levels around w / m.
                    let step = match quant {
                        BaseQuant::Nf4 => NF4_LEVELS.windows(2).find(|l| l[0] <= x / m && x / m <= l[1]).map_or(0.0, |l| l[1] - l[0]) * m,
                        _ => m / quant.q_max(),
                    };
                    assert!(err <= step / 2.0 + 1e-6, "{quant:?} [{i},{j}] err {err} step {step}");
                }
            }
        }
    }

    /// NF4 by hand: one block [0.3, −0.6, 0, 0.1, 0…] (absmax 0.6), as fractions 0.5 → level 12
    /// (0.4407; 0.5626 is farther), −1 → 0, 0 → 7, 0.1667 → 9 (0.1609); codes packed 4 bits apart.
    #[test]
    fn nf4_codes_by_hand() {
        let f = QuantFormat::new(BaseQuant::Nf4, 8, 1).unwrap();
        let (packed, absmax) = quantize_host(&[0.3, -0.6, 0.0, 0.1, 0.0, 0.0, 0.0, 0.0], f);
        assert_eq!(absmax, vec![0.6]);
        let codes: [u32; 8] = [12, 0, 7, 9, 7, 7, 7, 7];
        assert_eq!(packed, vec![codes.iter().enumerate().fold(0u32, |w, (k, c)| w | c << (4 * k)) as i32]);
        let (p, s) = to_device::<Cpu>(packed, absmax, f, &Default::default());
        let w: Vec<f32> = dequantize(p, s, f).into_data().to_vec().unwrap();
        let expect = [0.440_709_83 * 0.6, -0.6, 0.0, 0.160_930_2 * 0.6, 0.0, 0.0, 0.0, 0.0];
        for (a, b) in w.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{w:?}");
        }
    }

    /// Quantizing E [d_out, d_in] directly gives the codes of its transposed copy.
    #[test]
    fn transposed_input_gives_the_same_codes() {
        let (d_in, d_out) = (64, 24);
        let w = weight(d_in, d_out);
        let e: Vec<f32> = (0..d_out * d_in).map(|k| w[(k % d_in) * d_out + k / d_in]).collect();
        for quant in [BaseQuant::Q8, BaseQuant::Nf4] {
            let f = QuantFormat::new(quant, d_in, d_out).unwrap();
            assert_eq!(quantize_host_transposed(&e, f), quantize_host(&w, f), "{quant:?}");
        }
    }

    #[test]
    fn formats_that_cannot_pack_are_refused() {
        assert!(QuantFormat::new(BaseQuant::Q4, 12, 4).unwrap_err().contains("multiple of 8"));
        assert_eq!(QuantFormat::new(BaseQuant::Q8, 896, 1).unwrap().block, 64);
        // Blocks hold whole words: 100 rows of 8-bit codes (4 per word) → 20, not 50.
        assert_eq!(QuantFormat::new(BaseQuant::Q8, 100, 1).unwrap().block, 20);
        assert_eq!(QuantFormat::new(BaseQuant::Q4, 176, 1).unwrap().block, 16);
    }
}

#[cfg(test)]
mod backward_tests {
    use super::*;
    use crate::{Backend, CpuTrain, QuantizedWeight};
    use burn::tensor::{Distribution, TensorPrimitive};

    /// The quantized matmul's own backward gives the input gradient of the plain composition
    /// x·dequantize(W) (which would save the f32 W), and the same output.
    #[test]
    fn quantized_matmul_backward_matches_the_plain_composition() {
        let d = Default::default();
        <CpuTrain as burn::tensor::backend::Backend>::seed(&d, 5);
        for quant in [BaseQuant::Q8, BaseQuant::Q4] {
            let f = QuantFormat::new(quant, 64, 24).unwrap();
            let w: Vec<f32> = Tensor::<CpuTrain, 2>::random([64, 24], Distribution::Normal(0.0, 0.1), &d).into_data().to_vec().unwrap();
            let (packed, scales) = quantize_host(&w, f);
            let (packed, scales) = to_device::<CpuTrain>(packed, scales, f, &d);
            let x0 = Tensor::<CpuTrain, 2>::random([5, 64], Distribution::Normal(0.0, 1.0), &d);
            let upstream = Tensor::<CpuTrain, 2>::random([5, 24], Distribution::Normal(0.0, 1.0), &d);

            let x = x0.clone().detach().require_grad();
            let weight = QuantizedWeight::<CpuTrain> { packed: packed.clone().into_primitive(), scales: scales.clone().into_primitive().tensor(), format: f };
            let y = Tensor::<CpuTrain, 2>::from_primitive(TensorPrimitive::Float(CpuTrain::quantized_matmul(x.clone().into_primitive().tensor(), weight)));
            let grads = (y.clone() * upstream.clone()).sum().backward();
            let gx: Vec<f32> = x.grad(&grads).unwrap().into_data().to_vec().unwrap();

            let x_plain = x0.detach().require_grad();
            let y_plain = x_plain.clone().matmul(dequantize(packed, scales, f));
            let grads = (y_plain.clone() * upstream).sum().backward();
            let gx_plain: Vec<f32> = x_plain.grad(&grads).unwrap().into_data().to_vec().unwrap();

            let max = |a: Vec<f32>, b: Vec<f32>| a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
            assert!(max(y.into_data().to_vec().unwrap(), y_plain.into_data().to_vec().unwrap()) <= 1e-6, "{quant:?} output");
            assert!(max(gx, gx_plain) <= 1e-5, "{quant:?} input gradient");
        }
    }
}

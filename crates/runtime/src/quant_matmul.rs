//! CPU kernels for block-quantized weights ([`crate::quant`]): `x · W` read straight from the codes
//! and scales for the few rows of a decoding step, and `W` rebuilt in one pass for the many rows of
//! a prefill or a training step (then one GEMM).
//!
//! Decoding is bound by the bytes it reads: rebuilding a 4-bit `W` whole in f32 before every
//! product moved 8× more bytes than the codes hold (plus a dozen burn ops per projection), so a
//! quantized base generated slower than f32. Here `x · W` reads each packed word once, in memory
//! order (see `Kernel::columns`): its codes are
//! turned into unit values in registers (code − 2^(bits−1) for the integer kinds; QLoRA's level
//! table for nf4), every row of `x` takes one partial sum from them, and the block's scale
//! (absmax / q_max; absmax for nf4) multiplies that sum once. The AVX2 path holds 8 columns per
//! register; other CPUs run the same arithmetic lane by lane.
//!
//! Results: the same weights as [`crate::quant::dequantize`] (the rebuild is bit-identical to it);
//! the decoding product sums in another order than a GEMM and applies each block's scale to a
//! partial sum, so it agrees with dequantize-then-matmul to f32 rounding (checked below: 1e-5
//! relative).

use rayon::prelude::*;

use crate::quant::{BaseQuant, QuantFormat, NF4_LEVELS};

/// Up to this many rows the product reads the codes directly (decoding, rollouts); more rows
/// amortise one rebuild of W over a GEMM. The crossover was not measured: 8 is one AVX2 register's
/// lanes, and covers batch-8 decoding.
pub const DIRECT_ROWS: usize = 8;

/// Below this many weights one core does the whole direct product: waking the other core for each
/// of a decoding step's ~200 products cost more than it saved (SmolLM2-135M q4, batch 1: 37 tokens/s
/// split across two cores, 58 on one; measured). A 7B model's projections are above it.
const PARALLEL_WEIGHTS: usize = 1 << 23;

/// Below this many weights one core rebuilds W (a prefill or training step: one rebuild per product).
const PARALLEL_REBUILD: usize = 1 << 15;

/// W [d_in, d_out] (row-major) from its packed codes and block absmax: the same f32 operations as
/// [`crate::quant::dequantize`] ((code − 2^(bits−1)) / q_max · absmax; level · absmax), so the same bits.
pub fn dequantize_host(packed: &[i32], absmax: &[f32], f: QuantFormat) -> Vec<f32> {
    let QuantFormat { quant, block, d_in, d_out } = f;
    let (per_word, bits) = (f.per_word(), quant.bits());
    let mask = (1u32 << bits) - 1;
    let half = (1u32 << (bits - 1)) as f32;
    let q_max = half - 1.0;
    let mut w = vec![0f32; d_in * d_out];
    let rows_of_word = per_word * d_out;
    let fill = |p: usize, out: &mut [f32]| {
        let words = &packed[p * d_out..(p + 1) * d_out];
        for k in 0..per_word {
            let i = p * per_word + k;
            let scales = &absmax[i / block * d_out..(i / block + 1) * d_out];
            let row = &mut out[k * d_out..(k + 1) * d_out];
            let shift = bits * k as u32;
            match quant {
                BaseQuant::Q8 | BaseQuant::Q4 => {
                    for ((o, &word), &m) in row.iter_mut().zip(words).zip(scales) {
                        let code = (word as u32 >> shift) & mask;
                        *o = (code as f32 - half) / q_max * m;
                    }
                }
                BaseQuant::Nf4 => {
                    for ((o, &word), &m) in row.iter_mut().zip(words).zip(scales) {
                        *o = NF4_LEVELS[((word as u32 >> shift) & mask) as usize] * m;
                    }
                }
            }
        }
    };
    if d_in * d_out >= PARALLEL_REBUILD {
        w.par_chunks_mut(rows_of_word).enumerate().for_each(|(p, out)| fill(p, out));
    } else {
        w.chunks_mut(rows_of_word).enumerate().for_each(|(p, out)| fill(p, out));
    }
    w
}

/// y [rows, d_out] = x [rows, d_in] · W, reading W's codes directly (rows ≤ [`DIRECT_ROWS`] is
/// where it pays; any count is correct). Every word lies inside one block ([`QuantFormat::new`]).
pub fn matmul_host(x: &[f32], rows: usize, packed: &[i32], absmax: &[f32], f: QuantFormat) -> Vec<f32> {
    let (d_in, d_out) = (f.d_in, f.d_out);
    assert_eq!(x.len(), rows * d_in, "x is not [{rows}, {d_in}]");
    let table = ScaleTable::new(absmax, f);
    let kernel = Kernel { x, rows, packed, table: &table, f };
    let mut y = vec![0f32; rows * d_out];
    let threads = rayon::current_num_threads();
    if threads > 1 && d_in * d_out >= PARALLEL_WEIGHTS && d_out >= 2 * TILE {
        // Column ranges in whole tiles, one per core; each writes its own copy, gathered after.
        let per = d_out.div_ceil(threads).div_ceil(TILE) * TILE;
        let parts: Vec<(usize, Vec<f32>)> = (0..d_out)
            .step_by(per)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|j0| {
                let j1 = (j0 + per).min(d_out);
                let mut part = vec![0f32; rows * (j1 - j0)];
                kernel.columns(j0, j1, &mut part);
                (j0, part)
            })
            .collect();
        for (j0, part) in parts {
            let width = part.len() / rows;
            for r in 0..rows {
                y[r * d_out + j0..r * d_out + j0 + width].copy_from_slice(&part[r * width..(r + 1) * width]);
            }
        }
    } else {
        kernel.columns(0, d_out, &mut y);
    }
    y
}

/// Column ranges split across cores are whole multiples of this (one AVX2 register's lanes, twice).
const TILE: usize = 16;

/// Per (block, column): the weight of a code is `(code − 2^(bits−1)) · scale` (integer kinds, scale =
/// absmax / q_max) or `level[code] · scale` (nf4, scale = absmax).
struct ScaleTable {
    scale: Vec<f32>,
}

impl ScaleTable {
    fn new(absmax: &[f32], f: QuantFormat) -> Self {
        match f.quant {
            BaseQuant::Nf4 => Self { scale: absmax.to_vec() },
            q => {
                let q_max = ((1u32 << (q.bits() - 1)) - 1) as f32;
                Self { scale: absmax.iter().map(|m| m / q_max).collect() }
            }
        }
    }
}

struct Kernel<'a> {
    x: &'a [f32],
    rows: usize,
    packed: &'a [i32],
    table: &'a ScaleTable,
    f: QuantFormat,
}

impl Kernel<'_> {
    /// Columns j0..j1 of y into `out` ([rows, j1 − j0]).
    ///
    /// The walk is the weight's memory order: packed row by packed row, each swept across the
    /// columns, so the codes stream in sequentially (walking down one column tile at a time strided by
    /// a whole row per load: SmolLM2-135M q4 at batch 1 made 25 tokens/s that way, 31 in memory order,
    /// 37 with the prefetch below; measured before the LM head was quantized). Each word
    /// (`per_word` input rows of one column) gives every row of x one partial sum
    /// Σ_k x[i_k] · u(code_k), scaled once by its block's scale and added to y.
    fn columns(&self, j0: usize, j1: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked on the line above).
            return unsafe { avx2::columns(self, j0, j1, out) };
        }
        self.columns_lanewise(j0, j1, out);
    }

    /// The unit value of a stored code: code − 2^(bits−1) (integer kinds) or its nf4 level.
    #[inline(always)]
    fn unit(&self, code: u32) -> f32 {
        match self.f.quant {
            BaseQuant::Nf4 => NF4_LEVELS[code as usize],
            q => code as f32 - (1u32 << (q.bits() - 1)) as f32,
        }
    }

    /// Any CPU: the same sums as the AVX2 path's lanes, one column at a time.
    fn columns_lanewise(&self, j0: usize, j1: usize, out: &mut [f32]) {
        let (per_word, bits, d_out, d_in) = (self.f.per_word(), self.f.quant.bits(), self.f.d_out, self.f.d_in);
        let mask = (1u32 << bits) - 1;
        let width = j1 - j0;
        for p in 0..d_in / per_word {
            let b = p * per_word / self.f.block;
            for j in j0..j1 {
                let word = self.packed[p * d_out + j] as u32;
                let scale = self.table.scale[b * d_out + j];
                for r in 0..self.rows {
                    let x = &self.x[r * d_in + p * per_word..r * d_in + (p + 1) * per_word];
                    let mut partial = 0f32;
                    for (k, &xk) in x.iter().enumerate() {
                        partial = xk.mul_add(self.unit((word >> (bits * k as u32)) & mask), partial);
                    }
                    let y = &mut out[r * width + j - j0];
                    *y = partial.mul_add(scale, *y);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Kernel;
    use crate::quant::{BaseQuant, NF4_LEVELS};

    /// Columns j0..j1, 8 at a time; the last < 8 columns lane by lane.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn columns(k: &Kernel, j0: usize, j1: usize, out: &mut [f32]) {
        let vector_end = j0 + (j1 - j0) / 8 * 8;
        match (k.f.quant, k.f.per_word()) {
            (BaseQuant::Nf4, 8) => sweep::<8, true>(k, j0, vector_end, j1 - j0, out),
            (_, 8) => sweep::<8, false>(k, j0, vector_end, j1 - j0, out),
            (_, 4) => sweep::<4, false>(k, j0, vector_end, j1 - j0, out),
            _ => unreachable!("codes are 4 or 8 bits"),
        }
        if vector_end < j1 {
            let width = j1 - j0;
            let mut rest = vec![0f32; k.rows * (j1 - vector_end)];
            k.columns_lanewise(vector_end, j1, &mut rest);
            for r in 0..k.rows {
                let n = j1 - vector_end;
                out[r * width + vector_end - j0..(r + 1) * width].copy_from_slice(&rest[r * n..(r + 1) * n]);
            }
        }
    }

    /// `PER` codes per word; `NF4`: levels by table, else code − 2^(bits−1).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn sweep<const PER: usize, const NF4: bool>(k: &Kernel, j0: usize, j1: usize, width: usize, out: &mut [f32]) {
        let f = k.f;
        let bits = (32 / PER) as i32;
        let (d_out, d_in) = (f.d_out, f.d_in);
        let mask = _mm256_set1_epi32(((1u32 << bits) - 1) as i32);
        let half = _mm256_set1_epi32(1 << (bits - 1));
        let (lo, hi) = (_mm256_loadu_ps(NF4_LEVELS.as_ptr()), _mm256_loadu_ps(NF4_LEVELS.as_ptr().add(8)));
        let (packed, scales, x, y) = (k.packed.as_ptr(), k.table.scale.as_ptr(), k.x.as_ptr(), out.as_mut_ptr());
        for p in 0..d_in / PER {
            let b = p * PER / f.block;
            let mut j = j0;
            while j < j1 {
                // The word's PER codes as unit values, in registers.
                // The same columns one packed row on: fetched while this row's sums run (the
                // hardware prefetchers left each word a miss to memory here, measured).
                _mm_prefetch::<_MM_HINT_T0>(packed.add((p + 1) * d_out + j) as *const i8);
                let mut words = _mm256_loadu_si256(packed.add(p * d_out + j) as *const __m256i);
                let shift = _mm_cvtsi32_si128(bits);
                let mut unit = [_mm256_setzero_ps(); PER];
                for u in unit.iter_mut() {
                    let code = _mm256_and_si256(words, mask);
                    words = _mm256_srl_epi32(words, shift);
                    *u = if NF4 {
                        // Levels 0..7 from `lo`, 8..15 from `hi`: bit 3 of the code picks.
                        let from_lo = _mm256_permutevar8x32_ps(lo, code);
                        let from_hi = _mm256_permutevar8x32_ps(hi, code);
                        _mm256_blendv_ps(from_lo, from_hi, _mm256_castsi256_ps(_mm256_slli_epi32::<28>(code)))
                    } else {
                        _mm256_cvtepi32_ps(_mm256_sub_epi32(code, half))
                    };
                }
                let scale = _mm256_loadu_ps(scales.add(b * d_out + j));
                for r in 0..k.rows {
                    let xr = x.add(r * d_in + p * PER);
                    let mut partial = _mm256_mul_ps(_mm256_broadcast_ss(&*xr), unit[0]);
                    for (c, u) in unit.iter().enumerate().skip(1) {
                        partial = _mm256_fmadd_ps(_mm256_broadcast_ss(&*xr.add(c)), *u, partial);
                    }
                    let at = y.add(r * width + j - j0);
                    _mm256_storeu_ps(at, _mm256_fmadd_ps(partial, scale, _mm256_loadu_ps(at)));
                }
                j += 8;
            }
        }
    }
}

/// burn-flex glue: f32 activations and i32 codes (anything else: None, the caller composes).
pub(crate) mod flex {
    use burn::tensor::DType;
    use burn_flex::FlexTensor;

    use super::{dequantize_host, matmul_host, DIRECT_ROWS};
    use crate::rows::flex::{f32_contiguous, tensor};
    use crate::{Cpu, QuantizedWeight};

    fn codes(w: &QuantizedWeight<Cpu>) -> Option<(FlexTensor, FlexTensor)> {
        (w.packed.dtype() == DType::I32).then(|| w.packed.to_contiguous()).zip(f32_contiguous(&w.scales))
    }

    pub fn dequantize(w: &QuantizedWeight<Cpu>) -> Option<FlexTensor> {
        let (packed, scales) = codes(w)?;
        let f = w.format;
        Some(tensor(dequantize_host(packed.as_slice::<i32>()?, scales.as_slice::<f32>()?, f), vec![f.d_in, f.d_out]))
    }

    /// `x · W` for [`DIRECT_ROWS`] rows or fewer (None for more: a rebuild and a GEMM serve them).
    pub fn quantized_matmul(x: &FlexTensor, w: &QuantizedWeight<Cpu>) -> Option<FlexTensor> {
        let f = w.format;
        let &[rows, d_in] = x.layout().shape().to_vec().as_slice() else { return None };
        if rows > DIRECT_ROWS || d_in != f.d_in {
            return None;
        }
        let x = f32_contiguous(x)?;
        let (packed, scales) = codes(w)?;
        Some(tensor(matmul_host(x.as_slice::<f32>()?, rows, packed.as_slice::<i32>()?, scales.as_slice::<f32>()?, f), vec![rows, f.d_out]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize_host;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0 - 1.0) * if i % 13 == 0 { 3.0 } else { 0.2 }).collect()
    }

    /// Reference: W rebuilt, then y = x·W summed in f64.
    fn reference(x: &[f32], rows: usize, w: &[f32], d_in: usize, d_out: usize) -> Vec<f32> {
        let mut y = vec![0f32; rows * d_out];
        for r in 0..rows {
            for j in 0..d_out {
                y[r * d_out + j] = (0..d_in).map(|i| x[r * d_in + i] as f64 * w[i * d_out + j] as f64).sum::<f64>() as f32;
            }
        }
        y
    }

    /// Every kind, row counts from 1 to 11 (the kernel takes any count; more than 8 never reach it from
    /// the backend), column counts with a tail past the vector width, and a product above
    /// `PARALLEL_WEIGHTS` (split across cores when there are two).
    #[test]
    fn direct_product_matches_the_rebuilt_weight() {
        for quant in [BaseQuant::Q8, BaseQuant::Q4, BaseQuant::Nf4] {
            for (d_in, d_out) in [(64, 77), (128, 40), (256, 300), (576, 1536), (4096, 2050)] {
                let f = QuantFormat::new(quant, d_in, d_out).unwrap();
                let (packed, absmax) = quantize_host(&values(d_in * d_out, 1), f);
                let w = dequantize_host(&packed, &absmax, f);
                for rows in [1, 2, 3, 5, 8, 11] {
                    if d_in * d_out > 1 << 18 && rows > 3 {
                        continue;
                    }
                    let x = values(rows * d_in, rows + 2);
                    let got = matmul_host(&x, rows, &packed, &absmax, f);
                    let want = reference(&x, rows, &w, d_in, d_out);
                    let norm = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    assert!(err <= 1e-5 * norm.max(1.0), "{quant:?} [{d_in}, {d_out}] rows {rows}: max error {err} (max |y| {norm})");
                }
            }
        }
    }

    /// The one-pass rebuild gives the burn composition's weights bit for bit (training's forward and
    /// backward on many rows go through it).
    #[test]
    fn rebuild_is_the_composition_bit_for_bit() {
        use crate::quant::{dequantize, to_device};
        use crate::Cpu;
        for quant in [BaseQuant::Q8, BaseQuant::Q4, BaseQuant::Nf4] {
            let f = QuantFormat::new(quant, 176, 96).unwrap();
            let (packed, absmax) = quantize_host(&values(176 * 96, 5), f);
            let fast = dequantize_host(&packed, &absmax, f);
            let (p, a) = to_device::<Cpu>(packed, absmax, f, &Default::default());
            let composed: Vec<f32> = dequantize(p, a, f).into_data().to_vec().unwrap();
            assert!(fast.iter().zip(&composed).all(|(x, y)| x.to_bits() == y.to_bits()), "{quant:?}");
        }
    }

    /// The lane-by-lane path (CPUs without AVX2) computes the same products.
    #[test]
    fn lanewise_path_matches_too() {
        for quant in [BaseQuant::Q8, BaseQuant::Nf4] {
            let f = QuantFormat::new(quant, 128, 40).unwrap();
            let (packed, absmax) = quantize_host(&values(128 * 40, 3), f);
            let table = ScaleTable::new(&absmax, f);
            let x = values(3 * 128, 4);
            let k = Kernel { x: &x, rows: 3, packed: &packed, table: &table, f };
            let mut lanewise = vec![0f32; 3 * 40];
            k.columns_lanewise(0, 40, &mut lanewise);
            let want = reference(&x, 3, &dequantize_host(&packed, &absmax, f), 128, 40);
            let err = lanewise.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err < 1e-5, "{quant:?}: {err}");
        }
    }

    /// Hand-worked: one column, 8 input rows as one q4 word. Weights [0.7, −0.35, 0, 0.1, 0.7, 0, 0, 0]
    /// have absmax 0.7: codes round(w/0.7·7) = 7, −3.5 → −4 (away from 0), 0, 1, 7, 0, 0, 0 (+8 stored);
    /// rebuilt 0.7, −0.4, 0, 0.1, 0.7, 0, 0, 0. With x = [1, 1, 2, 0, 1, 0, 0, 0]:
    /// y = 0.7 − 0.4 + 0 + 0 + 0.7 = 1.0.
    #[test]
    fn one_word_by_hand() {
        let f = QuantFormat::new(BaseQuant::Q4, 8, 1).unwrap();
        let (packed, absmax) = quantize_host(&[0.7, -0.35, 0.0, 0.1, 0.7, 0.0, 0.0, 0.0], f);
        let w = dequantize_host(&packed, &absmax, f);
        let want = [0.7, -0.4, 0.0, 0.1, 0.7, 0.0, 0.0, 0.0];
        assert!(w.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{w:?}");
        let y = matmul_host(&[1.0, 1.0, 2.0, 0.0, 1.0, 0.0, 0.0, 0.0], 1, &packed, &absmax, f);
        assert!((y[0] - 1.0).abs() < 1e-6, "{y:?}");
    }
}

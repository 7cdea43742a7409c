//! exp over rows of f32 in SIMD registers, for the CPU kernels of softmax-shaped ops (attention
//! probabilities, log-probabilities of targets, entropy) and SwiGLU's sigmoid.
//!
//! `f32::exp` is a call into libm per element, a visible share of an SFT step on the
//! vocabulary-wide softmax alone (measured: see docs/performance.md). Here exp is Cody–Waite range
//! reduction plus a degree-6 polynomial (Cephes' `expf` coefficients), written lane by lane so the
//! compiler vectorises it; it is built three times (AVX-512, AVX2, the baseline) and picked at run
//! time. Every path does the same IEEE operations in the same order (no fused multiply-add), so
//! results do not depend on the CPU's vector width. Accuracy: within 2 ulp of exp over
//! [−86.5, 88.72]; below that range it flushes to 0 (exp < 3e-38: nothing a softmax sum can see);
//! above it is +∞; NaN stays NaN.

/// Width of one accumulator block: one AVX-512 register of f32.
const LANES: usize = 16;

const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two: `n·LN2_HI` is exact for the |n| ≤ 128 that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5·2²³: adding it rounds to an integer held in the low mantissa bits.
const ROUNDER: f32 = 12_582_912.0;
const LOWEST: f32 = -86.5;
const HIGHEST: f32 = 88.72;

/// exp(x) of one lane, branch-free so that a loop of it vectorises.
#[inline(always)]
fn exp_lane(x: f32) -> f32 {
    let clamped = x.clamp(LOWEST, HIGHEST);
    let t = clamped * LOG2_E + ROUNDER;
    let n = t - ROUNDER; // round(x·log2 e)
    let r = (clamped - n * LN2_HI) - n * LN2_LO; // x − n·ln 2, |r| ≤ ln 2 / 2
    let r2 = r * r;
    let p = (((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r + 0.5) * r2 + r + 1.0;
    // 2^(n−1) from n's low bits in t, times 2: n reaches 128 near the top of the range.
    let half_scale = f32::from_bits((t.to_bits() << 23).wrapping_add(126 << 23));
    let y = p * half_scale * 2.0;
    let y = if x < LOWEST { 0.0 } else if x > HIGHEST { f32::INFINITY } else { y };
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// The kernels, written once; each dispatch target below inlines them under its own features.
mod body {
    use super::{exp_lane, LANES};

    #[inline(always)]
    pub fn sum_exp_shifted(row: &[f32], shift: f32) -> f32 {
        let mut acc = [0f32; LANES];
        let chunks = row.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for i in 0..LANES {
                acc[i] += exp_lane(c[i] - shift);
            }
        }
        for (a, &x) in acc.iter_mut().zip(rest) {
            *a += exp_lane(x - shift);
        }
        acc.iter().sum()
    }

    #[inline(always)]
    pub fn sums_exp_shifted_weighted(row: &[f32], shift: f32) -> (f32, f32) {
        let (mut sum, mut weighted) = ([0f32; LANES], [0f32; LANES]);
        let chunks = row.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for i in 0..LANES {
                let e = exp_lane(c[i] - shift);
                sum[i] += e;
                weighted[i] += e * c[i];
            }
        }
        for ((s, w), &x) in sum.iter_mut().zip(weighted.iter_mut()).zip(rest) {
            let e = exp_lane(x - shift);
            *s += e;
            *w += e * x;
        }
        (sum.iter().sum(), weighted.iter().sum())
    }

    #[inline(always)]
    pub fn exp_shifted(out: &mut [f32], row: &[f32], shift: f32) {
        for (o, &x) in out.iter_mut().zip(row) {
            *o = exp_lane(x - shift);
        }
    }

    #[inline(always)]
    pub fn exp_shifted_in_place(row: &mut [f32], shift: f32) -> f32 {
        let mut acc = [0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for i in 0..LANES {
                c[i] = exp_lane(c[i] - shift);
                acc[i] += c[i];
            }
        }
        for (a, x) in acc.iter_mut().zip(chunks.into_remainder()) {
            *x = exp_lane(*x - shift);
            *a += *x;
        }
        acc.iter().sum()
    }

    /// SwiGLU's sigmoid, s = σ(g) = 1 / (1 + exp(−g)).
    #[inline(always)]
    fn sigmoid(g: f32) -> f32 {
        1.0 / (1.0 + exp_lane(-g))
    }

    /// y = g·σ(g)·u.
    #[inline(always)]
    pub fn silu_mul(out: &mut [f32], gate: &[f32], up: &[f32]) {
        for ((y, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *y = g * sigmoid(g) * u;
        }
    }

    /// dL/dg = d·u·s·(1 + g·(1 − s)), dL/du = d·g·s.
    #[inline(always)]
    pub fn silu_mul_backward(d_gate: &mut [f32], d_up: &mut [f32], gate: &[f32], up: &[f32], grad: &[f32]) {
        for ((((dg, du), &g), &u), &d) in d_gate.iter_mut().zip(d_up.iter_mut()).zip(gate).zip(up).zip(grad) {
            let s = sigmoid(g);
            *dg = d * u * s * (1.0 + g * (1.0 - s));
            *du = d * g * s;
        }
    }
}

/// One module per instruction set, the same kernels compiled with its features enabled.
macro_rules! compiled_for {
    ($name:ident, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        mod $name {
            #[target_feature(enable = $features)]
            pub unsafe fn sum_exp_shifted(row: &[f32], shift: f32) -> f32 {
                super::body::sum_exp_shifted(row, shift)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn sums_exp_shifted_weighted(row: &[f32], shift: f32) -> (f32, f32) {
                super::body::sums_exp_shifted_weighted(row, shift)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn exp_shifted(out: &mut [f32], row: &[f32], shift: f32) {
                super::body::exp_shifted(out, row, shift)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn exp_shifted_in_place(row: &mut [f32], shift: f32) -> f32 {
                super::body::exp_shifted_in_place(row, shift)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn silu_mul(out: &mut [f32], gate: &[f32], up: &[f32]) {
                super::body::silu_mul(out, gate, up)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn silu_mul_backward(d_gate: &mut [f32], d_up: &mut [f32], gate: &[f32], up: &[f32], grad: &[f32]) {
                super::body::silu_mul_backward(d_gate, d_up, gate, up, grad)
            }
        }
    };
}

compiled_for!(avx512, "avx512f");
compiled_for!(avx2, "avx2");

/// The instruction set the kernels run with on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2,
    Baseline,
}

fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        // std caches the CPUID answers: this is a load and a test per call.
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return Isa::Avx2;
        }
    }
    Isa::Baseline
}

/// Runs one kernel on the widest instruction set this CPU has.
macro_rules! dispatch {
    ($kernel:ident($($arg:expr),*)) => {
        match isa() {
            // SAFETY: the CPU was just checked to have the features the module was compiled for.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::$kernel($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::$kernel($($arg),*) },
            _ => body::$kernel($($arg),*),
        }
    };
}

/// Σ_i exp(row_i − shift).
pub fn sum_exp_shifted(row: &[f32], shift: f32) -> f32 {
    dispatch!(sum_exp_shifted(row, shift))
}

/// (Σ_i e_i, Σ_i e_i·row_i) with e_i = exp(row_i − shift).
pub fn sums_exp_shifted_weighted(row: &[f32], shift: f32) -> (f32, f32) {
    dispatch!(sums_exp_shifted_weighted(row, shift))
}

/// out_i = exp(row_i − shift).
pub fn exp_shifted(out: &mut [f32], row: &[f32], shift: f32) {
    assert_eq!(out.len(), row.len(), "exp_shifted: output and input lengths differ");
    dispatch!(exp_shifted(out, row, shift))
}

/// row_i ← exp(row_i − shift); returns Σ_i of the new row.
pub fn exp_shifted_in_place(row: &mut [f32], shift: f32) -> f32 {
    dispatch!(exp_shifted_in_place(row, shift))
}

/// out_i = g_i·σ(g_i)·u_i (SwiGLU's silu(gate)·up).
pub fn silu_mul(out: &mut [f32], gate: &[f32], up: &[f32]) {
    assert!(out.len() == gate.len() && gate.len() == up.len(), "silu_mul: lengths differ");
    dispatch!(silu_mul(out, gate, up))
}

/// SwiGLU's gradients: dL/dg_i = d_i·u_i·s_i·(1 + g_i(1 − s_i)), dL/du_i = d_i·g_i·s_i.
pub fn silu_mul_backward(d_gate: &mut [f32], d_up: &mut [f32], gate: &[f32], up: &[f32], grad: &[f32]) {
    let n = gate.len();
    assert!(d_gate.len() == n && d_up.len() == n && up.len() == n && grad.len() == n, "silu_mul_backward: lengths differ");
    dispatch!(silu_mul_backward(d_gate, d_up, gate, up, grad))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two finite positive f32.
    fn ulps(a: f32, b: f32) -> u32 {
        a.to_bits().abs_diff(b.to_bits())
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_correctly_rounded_value() {
        let mut worst = 0;
        let mut x = LOWEST;
        while x <= HIGHEST {
            let exact = (x as f64).exp() as f32;
            worst = worst.max(ulps(exp_lane(x), exact));
            x += 1.37e-3;
        }
        for x in [0.0f32, 1e-8, -1e-8, 0.5, -0.5, 1.0, -1.0, 10.0, -10.0, 88.7, -86.4] {
            worst = worst.max(ulps(exp_lane(x), (x as f64).exp() as f32));
        }
        assert!(worst <= 2, "worst error {worst} ulp");
    }

    #[test]
    fn the_edges_flush_saturate_and_keep_nan() {
        assert_eq!(exp_lane(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_lane(-1e9), 0.0);
        assert_eq!(exp_lane(-90.0), 0.0);
        assert_eq!(exp_lane(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_lane(100.0), f32::INFINITY);
        assert!(exp_lane(88.72).is_finite());
        assert!(exp_lane(f32::NAN).is_nan());
        assert_eq!(exp_lane(0.0), 1.0);
    }

    type Results = (f32, (f32, f32), Vec<f32>, Vec<f32>, f32);

    /// Every kernel on `row`, compiled for `isa`.
    fn kernels_on(isa: Isa, row: &[f32], shift: f32) -> Results {
        let mut out = vec![0f32; row.len()];
        let mut in_place = row.to_vec();
        macro_rules! all {
            ($m:ident) => {{
                $m::exp_shifted(&mut out, row, shift);
                let s = $m::exp_shifted_in_place(&mut in_place, shift);
                ($m::sum_exp_shifted(row, shift), $m::sums_exp_shifted_weighted(row, shift), out, in_place, s)
            }};
        }
        match isa {
            // SAFETY: the test passes only instruction sets this CPU reported.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { all!(avx512) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { all!(avx2) },
            _ => all!(body),
        }
    }

    /// Every instruction set gives the same bits, on a row whose length leaves a remainder.
    #[test]
    fn each_kernel_matches_the_scalar_definition_on_every_instruction_set() {
        let row: Vec<f32> = (0..1003).map(|i| ((i * 7919) % 2001) as f32 * 0.01 - 12.0).collect();
        let shift = 3.25;
        let exps: Vec<f32> = row.iter().map(|&x| exp_lane(x - shift)).collect();
        let plain_sum: f32 = exps.iter().sum();
        let plain_weighted: f32 = exps.iter().zip(&row).map(|(e, x)| e * x).sum();
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * b.abs();

        let mut isas = vec![Isa::Baseline];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                isas.push(Isa::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                isas.push(Isa::Avx512);
            }
        }
        let results: Vec<Results> = isas.iter().map(|&isa| kernels_on(isa, &row, shift)).collect();
        for (isa, (sum, (s2, weighted), out, in_place, s3)) in isas.iter().zip(&results) {
            assert_eq!(out, &exps, "{isa:?}");
            assert_eq!(in_place, &exps, "{isa:?}");
            assert!(close(*sum, plain_sum) && close(*s2, plain_sum) && close(*s3, plain_sum), "{isa:?}: {sum} vs {plain_sum}");
            assert!(close(*weighted, plain_weighted), "{isa:?}: {weighted} vs {plain_weighted}");
        }
        // The same blocked summation order everywhere: identical bits across instruction sets.
        assert!(results.windows(2).all(|w| w[0] == w[1]), "instruction sets disagree");
    }
}

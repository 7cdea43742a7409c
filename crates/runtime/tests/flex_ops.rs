//! The CPU backend's changed paths (vendor/README.md) against arithmetic done here by hand: copies
//! of permuted and sliced layouts, and matmuls whose output gemm writes into uninitialised memory.

use burn::tensor::{Tensor, TensorData};
use rlhf_runtime::Cpu;

/// 0, 1, 2, … as a tensor of `shape`, so every element's value is its row-major index.
fn iota<const D: usize>(shape: [usize; D]) -> Tensor<Cpu, D> {
    let n: usize = shape.iter().product();
    Tensor::from_data(TensorData::new((0..n).map(|i| i as f32).collect::<Vec<_>>(), shape), &Default::default())
}

fn values<const D: usize>(t: Tensor<Cpu, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

/// Row-major index of `index` in `shape`.
fn flat(index: &[usize], shape: &[usize]) -> usize {
    index.iter().zip(shape).fold(0, |acc, (&i, &n)| acc * n + i)
}

/// [b, h, s, d] viewed as [b, s, h, d] and made contiguous by a reshape (attention's merge of heads),
/// small (one core) and at 2¹⁸ elements (split across cores).
#[test]
fn swapped_heads_merge_into_the_right_order() {
    for [b, h, s, d] in [[2, 3, 5, 16], [4, 8, 128, 64], [1, 2, 3, 9]] {
        let merged = values(iota([b, h, s, d]).swap_dims(1, 2).reshape([b, s, h * d]));
        for (bi, si, hi, di) in (0..b).flat_map(|bi| (0..s).flat_map(move |si| (0..h).flat_map(move |hi| (0..d).map(move |di| (bi, si, hi, di))))) {
            let got = merged[flat(&[bi, si, hi * d + di], &[b, s, h * d])];
            assert_eq!(got, flat(&[bi, hi, si, di], &[b, h, s, d]) as f32, "[{b}, {h}, {s}, {d}] at ({bi}, {si}, {hi}, {di})");
        }
    }
}

/// A permutation of five dims over a slice (a start offset, gaps between runs).
#[test]
fn permuted_slice_copies_every_element_once() {
    let (shape, start) = ([3, 4, 2, 5, 12], 2);
    let sliced = iota(shape).narrow(4, start, 8); // [3, 4, 2, 5, 8]
    let out = values(sliced.permute([2, 0, 3, 1, 4]).reshape([2 * 3 * 5 * 4 * 8])); // [2, 3, 5, 4, 8]
    let mut at = 0;
    for c in 0..2 {
        for a in 0..3 {
            for d in 0..5 {
                for b in 0..4 {
                    for e in 0..8 {
                        assert_eq!(out[at], flat(&[a, b, c, d, e + start], &shape) as f32);
                        at += 1;
                    }
                }
            }
        }
    }
}

/// Σₖ a[i, k]·b[k, j] in f64 over row-major `a` [m, k] and `b` [k, n].
fn product(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64).sum();
        }
    }
    c
}

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()), "{what}: element {i}: {g} vs {w}");
    }
}

/// Deterministic values in [−1, 1).
fn waves<const D: usize>(shape: [usize; D], phase: f32) -> Tensor<Cpu, D> {
    let n: usize = shape.iter().product();
    Tensor::from_data(TensorData::new((0..n).map(|i| (i as f32 * 0.37 + phase).sin()).collect::<Vec<_>>(), shape), &Default::default())
}

/// 2D products (one core, and above the threaded-matmul size), with a transposed operand, and
/// k = 0, which must give zeros although nothing is multiplied.
#[test]
fn matmul_writes_every_output_element() {
    for (m, k, n) in [(3, 5, 7), (256, 256, 256), (64, 1, 33)] {
        let (a, b) = (waves([m, k], 0.1), waves([n, k], 0.7));
        let want = product(&values(a.clone()), &values(b.clone().transpose()), m, k, n);
        assert_close(&values(a.matmul(b.transpose())), &want, &format!("{m}×{k}×{n}"));
    }
    let empty = Tensor::<Cpu, 2>::zeros([4, 0], &Default::default()).matmul(Tensor::zeros([0, 6], &Default::default()));
    assert_eq!(values(empty), vec![0.0; 24]);
}

/// Batched products: one core, split by batch, and a broadcast batch dim.
#[test]
fn batched_matmul_writes_every_matrix() {
    for (batch, m, k, n) in [(2, 3, 4, 5), (16, 64, 64, 64), (3, 200, 200, 200)] {
        let (a, b) = (waves([batch, m, k], 0.3), waves([batch, k, n], 0.9));
        let got = values(a.clone().matmul(b.clone()));
        for i in 0..batch {
            let (ai, bi) = (values(a.clone().narrow(0, i, 1)), values(b.clone().narrow(0, i, 1)));
            assert_close(&got[i * m * n..(i + 1) * m * n], &product(&ai, &bi, m, k, n), &format!("batch {i} of {batch}×{m}×{k}×{n}"));
        }
    }
    let (a, b) = (waves([4, 6, 8], 0.2), waves([1, 8, 5], 0.4));
    let got = values(a.clone().matmul(b.clone()));
    for i in 0..4 {
        assert_close(&got[i * 30..(i + 1) * 30], &product(&values(a.clone().narrow(0, i, 1)), &values(b.clone()), 6, 8, 5), &format!("broadcast batch {i}"));
    }
}

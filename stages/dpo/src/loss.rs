//! The preference losses, each a pure function of per-sequence quantities.
//!
//! Notation: for a response y to prompt x, `logp` = Σ_t log π(y_t | x, y_<t) over the response
//! tokens, `ref` the same under the frozen reference, |y| the response's token count. For a pair
//! (w better than l) every pairwise loss reads one number per response, u, and the difference
//! d = u_w − u_l:
//!
//! | loss      | u                          | ℓ(d)                                           |
//! |-----------|----------------------------|------------------------------------------------|
//! | `sigmoid` | logp − ref                 | −(1−ε) log σ(βd) − ε log σ(−βd)   (DPO; cDPO)  |
//! | `robust`  | logp − ref                 | [−(1−ε) log σ(βd) + ε log σ(−βd)] / (1 − 2ε)   |
//! | `hinge`   | logp − ref                 | max(0, 1 − βd)                    (SLiC)       |
//! | `ipo`     | (logp − ref)/|y| (or sum)  | (d − 1/(2β))²                                  |
//! | `simpo`   | logp/|y|                   | −(1−ε) log σ(βd − γ) − ε log σ(−(βd − γ))      |
//! | `orpo`    | log odds(logp/|y|)         | −β log σ(d)   (+ the chosen response's NLL)    |
//!
//! with log odds(a) = a − log(1 − eᵃ) (a the mean token log-probability). Plackett-Luce ranks K
//! responses at once with sᵢ = β(logpᵢ − refᵢ); KTO scores single responses against a reference
//! point z₀. Each function returns one loss per pair (or term, or response); the objective weights
//! and sums them.

use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::{Int, Tensor, TensorData};
use rlhf_model::ops::softplus;
use rlhf_runtime::Backend;

/// −(1−ε) log σ(βd) − ε log σ(−βd): DPO (ε = 0) and conservative DPO (labels flipped with
/// probability ε).
pub fn sigmoid_loss<B: Backend>(d: Tensor<B, 1>, beta: f64, label_smoothing: f64) -> Tensor<B, 1> {
    let x = d * beta;
    softplus(x.clone().neg()) * (1.0 - label_smoothing) + softplus(x) * label_smoothing
}

/// Robust DPO (Chowdhury et al. 2024): the unbiased loss under label noise ε,
/// [−(1−ε) log σ(βd) + ε log σ(−βd)] / (1 − 2ε). ε must be below ½.
pub fn robust_loss<B: Backend>(d: Tensor<B, 1>, beta: f64, label_smoothing: f64) -> Tensor<B, 1> {
    let x = d * beta;
    (softplus(x.clone().neg()) * (1.0 - label_smoothing) - softplus(x) * label_smoothing) / (1.0 - 2.0 * label_smoothing)
}

/// SLiC's hinge: max(0, 1 − βd).
pub fn hinge_loss<B: Backend>(d: Tensor<B, 1>, beta: f64) -> Tensor<B, 1> {
    relu((d * beta).neg() + 1.0)
}

/// IPO (Azar et al. 2023): (d − 1/(2β))², a squared distance to a fixed margin instead of a
/// sigmoid that keeps pushing d up.
pub fn ipo_loss<B: Backend>(d: Tensor<B, 1>, beta: f64) -> Tensor<B, 1> {
    (d - 1.0 / (2.0 * beta)).powi_scalar(2)
}

/// SimPO (Meng et al. 2024): −log σ(βd − γ) on length-normalised log-probabilities, no reference;
/// ε smooths the labels as in cDPO.
pub fn simpo_loss<B: Backend>(d: Tensor<B, 1>, beta: f64, gamma: f64, label_smoothing: f64) -> Tensor<B, 1> {
    let x = d * beta - gamma;
    softplus(x.clone().neg()) * (1.0 - label_smoothing) + softplus(x) * label_smoothing
}

/// log(p / (1 − p)) of p = eᵃ, a = a response's mean token log-probability (ORPO). a is kept
/// below −1e-7 so a response of probability 1 does not make log(1 − p) infinite.
pub fn log_odds<B: Backend>(mean_logp: Tensor<B, 1>) -> Tensor<B, 1> {
    let a = mean_logp.clamp_max(-1e-7);
    a.clone() - a.exp().neg().log1p()
}

/// ORPO's odds-ratio term (Hong et al. 2024), −β log σ(d) with d the difference of log odds; the
/// objective adds the chosen response's NLL.
pub fn odds_ratio_loss<B: Backend>(d: Tensor<B, 1>, beta: f64) -> Tensor<B, 1> {
    softplus(d.neg()) * beta
}

/// One term of a Plackett-Luce ranking: response `first` is picked from itself and the `rest`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListTerm {
    pub first: usize,
    pub rest: Vec<usize>,
}

/// The terms of a ranking (lower rank = better), offset by `at` (the index of its first response
/// in the flat list). Without ties this is the Plackett-Luce likelihood of the order: response k
/// is chosen first among itself and every response ranked below it, for each k but the last.
/// With ties, a response competes only with those strictly below it (tied responses state no
/// preference, as in the pairwise losses); the worst-ranked responses have no term.
pub fn plackett_luce_terms(ranks: &[u32], at: usize) -> Vec<ListTerm> {
    (0..ranks.len())
        .filter_map(|i| {
            let rest: Vec<usize> = (0..ranks.len()).filter(|&j| ranks[j] > ranks[i]).map(|j| at + j).collect();
            (!rest.is_empty()).then_some(ListTerm { first: at + i, rest })
        })
        .collect()
}

/// −[s_first − log(e^s_first + Σ_rest e^s_j)] for each term: the listwise DPO of the DPO paper's
/// appendix A.3, sᵢ = β(logpᵢ − refᵢ). With K = 2 it is −log σ(s_w − s_l), sigmoid DPO.
///
/// # Shapes
/// - `scores`: [responses] → [terms]
pub fn plackett_luce_loss<B: Backend>(scores: Tensor<B, 1>, terms: &[ListTerm]) -> Tensor<B, 1> {
    let device = scores.device();
    let n = scores.dims()[0];
    let mut members = vec![0f32; terms.len() * n];
    for (t, term) in terms.iter().enumerate() {
        for &j in std::iter::once(&term.first).chain(&term.rest) {
            members[t * n + j] = 1.0;
        }
    }
    let members = Tensor::<B, 2>::from_data(TensorData::new(members, [terms.len(), n]), &device);
    // log Σ exp over each term's members, shifted by the largest score (a constant).
    let shift = scores.clone().detach().max();
    let exp = (scores.clone() - shift.clone().reshape([1])).exp().reshape([1, n]);
    let log_sum = (members * exp).sum_dim(1).reshape([terms.len()]).log() + shift.reshape([1]);
    let firsts = Tensor::<B, 1, Int>::from_data(TensorData::new(terms.iter().map(|t| t.first as i64).collect::<Vec<_>>(), [terms.len()]), &device);
    log_sum - scores.select(0, firsts)
}

/// KTO (Ethayarajh et al. 2024) for single responses with r = logp − ref and reference point z₀
/// (a constant: the estimated KL, detached by the caller): desirable responses
/// λ_D (1 − σ(β(r − z₀))), undesirable ones λ_U (1 − σ(β(z₀ − r))).
///
/// # Shapes
/// - `r`, `desirable` (1.0 or 0.0): [responses] → [responses]
pub fn kto_loss<B: Backend>(r: Tensor<B, 1>, desirable: Tensor<B, 1>, z0: f64, beta: f64, desirable_weight: f64, undesirable_weight: f64) -> Tensor<B, 1> {
    let good = (sigmoid((r.clone() - z0) * beta).neg() + 1.0) * desirable_weight;
    let bad = (sigmoid((r.neg() + z0) * beta).neg() + 1.0) * undesirable_weight;
    good * desirable.clone() + bad * (desirable.neg() + 1.0)
}

/// KTO's reference point: the mean log-ratio of mismatched (prompt, response) pairs — an estimate
/// of KL(π ‖ π_ref) — clamped at 0. A number, so no gradient flows through it.
pub fn kto_reference_point(mismatched_log_ratios: &[f64]) -> f64 {
    if mismatched_log_ratios.is_empty() {
        return 0.0;
    }
    (mismatched_log_ratios.iter().sum::<f64>() / mismatched_log_ratios.len() as f64).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = rlhf_runtime::Cpu;
    type AD = rlhf_runtime::CpuTrain;

    fn t<BB: Backend>(v: &[f64]) -> Tensor<BB, 1> {
        Tensor::from_data(TensorData::new(v.iter().map(|&x| x as f32).collect::<Vec<_>>(), [v.len()]), &Default::default())
    }

    fn host(x: Tensor<B, 1>) -> Vec<f64> {
        x.into_data().convert::<f64>().to_vec::<f64>().unwrap()
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }

    /// −log σ(x) = log(1 + e^−x)
    fn nls(x: f64) -> f64 {
        (1.0 + (-x).exp()).ln()
    }

    /// The example: policy −10 / −12, reference −11 / −11, β = 0.1.
    /// d = (−10 + 11) − (−12 + 11) = 2; βd = 0.2; −log σ(0.2) = log(1 + e^−0.2) = 0.598139.
    #[test]
    fn sigmoid_dpo_by_hand() {
        let d = (-10.0 - -11.0) - (-12.0 - -11.0);
        close(host(sigmoid_loss(t::<B>(&[d]), 0.1, 0.0))[0], 0.598139);
        // At step 0 policy = reference: d = 0 and every β gives ln 2.
        for beta in [0.01, 0.1, 1.0, 10.0] {
            close(host(sigmoid_loss(t::<B>(&[0.0]), beta, 0.0))[0], 2f64.ln());
        }
        // cDPO with ε = 0.1: 0.9 · 0.598139 + 0.1 · log(1 + e^0.2) (= 0.798139) = 0.618139.
        close(host(sigmoid_loss(t::<B>(&[2.0]), 0.1, 0.1))[0], 0.9 * nls(0.2) + 0.1 * nls(-0.2));
        close(0.9 * nls(0.2) + 0.1 * nls(-0.2), 0.618139);
    }

    /// The first step starts at d = 0 exactly when the reference's log-probs are the policy's: the
    /// gradient there is −β·σ(0) = −β/2, not 0.
    #[test]
    fn sigmoid_dpo_gradient_at_the_reference() {
        let d = t::<AD>(&[0.0]).require_grad();
        let grads = sigmoid_loss(d.clone(), 0.1, 0.0).sum().backward();
        close(d.grad(&grads).unwrap().into_scalar() as f64, -0.05);
    }

    /// Robust DPO, ε = 0.1, βd = 0.2: (0.9 · 0.598139 − 0.1 · 0.798139) / 0.8 = 0.573131.
    #[test]
    fn robust_dpo_by_hand() {
        close(host(robust_loss(t::<B>(&[2.0]), 0.1, 0.1))[0], (0.9 * nls(0.2) - 0.1 * nls(-0.2)) / 0.8);
        close((0.9 * nls(0.2) - 0.1 * nls(-0.2)) / 0.8, 0.573131);
        // ε = 0 is plain DPO.
        close(host(robust_loss(t::<B>(&[2.0]), 0.1, 0.0))[0], nls(0.2));
    }

    /// Hinge, β = 0.1: d = 2 → 1 − 0.2 = 0.8; d = 20 → 0 (past the margin).
    #[test]
    fn hinge_by_hand() {
        let got = host(hinge_loss(t::<B>(&[2.0, 20.0, -5.0]), 0.1));
        close(got[0], 0.8);
        close(got[1], 0.0);
        close(got[2], 1.5);
    }

    /// IPO, β = 0.1: target 1/(2β) = 5; d = 2 → 9; d = 5 → 0; d = 7 → 4 (overshooting costs too).
    #[test]
    fn ipo_by_hand() {
        let got = host(ipo_loss(t::<B>(&[2.0, 5.0, 7.0]), 0.1));
        close(got[0], 9.0);
        close(got[1], 0.0);
        close(got[2], 4.0);
    }

    /// SimPO, β = 2, γ = 0.5: mean token log-probs −1.0 (w) and −1.5 (l): d = 0.5, βd − γ = 0.5,
    /// −log σ(0.5) = 0.474077.
    #[test]
    fn simpo_by_hand() {
        close(host(simpo_loss(t::<B>(&[0.5]), 2.0, 0.5, 0.0))[0], nls(0.5));
        close(nls(0.5), 0.474077);
    }

    /// ORPO: a = ln 0.5 → odds 1, log odds 0; a = ln 0.2 → odds 0.25, log odds −1.386294.
    /// d = 1.386294, β = 0.1: 0.1 · log(1 + e^−1.386294) = 0.1 · log(1.25) = 0.022314.
    #[test]
    fn orpo_by_hand() {
        let lo = host(log_odds(t::<B>(&[0.5f64.ln(), 0.2f64.ln()])));
        close(lo[0], 0.0);
        close(lo[1], 0.25f64.ln());
        close(host(odds_ratio_loss(t::<B>(&[lo[0] - lo[1]]), 0.1))[0], 0.1 * 1.25f64.ln());
    }

    #[test]
    fn plackett_luce_terms_follow_the_ranking_and_skip_ties() {
        // Ranks 2, 0, 1 (response 1 best, then 2, then 0): terms 1 over {0, 2}, 2 over {0}.
        let terms = plackett_luce_terms(&[2, 0, 1], 10);
        assert_eq!(terms, vec![ListTerm { first: 11, rest: vec![10, 12] }, ListTerm { first: 12, rest: vec![10] }]);
        // Tied best pair over one worse response: each beats only the worse one.
        let tied = plackett_luce_terms(&[0, 0, 1], 0);
        assert_eq!(tied, vec![ListTerm { first: 0, rest: vec![2] }, ListTerm { first: 1, rest: vec![2] }]);
        assert!(plackett_luce_terms(&[3, 3], 0).is_empty());
    }

    /// K = 3 ranked 0 > 1 > 2 with s = [1, 0, −1]:
    /// term 0: log(e¹ + e⁰ + e⁻¹) − 1 = log(4.086161) − 1 = 0.407606;
    /// term 1: log(e⁰ + e⁻¹) − 0 = log(1.367879) = 0.313262. Sum 0.720868.
    #[test]
    fn plackett_luce_by_hand() {
        let s = [1.0, 0.0, -1.0];
        let got = host(plackett_luce_loss(t::<B>(&s), &plackett_luce_terms(&[0, 1, 2], 0)));
        let e = |x: f64| x.exp();
        close(got[0], (e(1.0) + e(0.0) + e(-1.0)).ln() - 1.0);
        close(got[1], (e(0.0) + e(-1.0)).ln());
        close(got[0], 0.407606);
        close(got[1], 0.313262);
    }

    /// With K = 2, Plackett-Luce is sigmoid DPO: −log σ(s_w − s_l), s = β(logp − ref).
    #[test]
    fn plackett_luce_with_two_responses_is_sigmoid_dpo() {
        let beta = 0.1;
        // The example: s_w = 0.1 · (−10 + 11) = 0.1, s_l = 0.1 · (−12 + 11) = −0.1.
        let pl = host(plackett_luce_loss(t::<B>(&[0.1, -0.1]), &plackett_luce_terms(&[0, 1], 0)));
        let dpo = host(sigmoid_loss(t::<B>(&[2.0]), beta, 0.0));
        assert_eq!(pl.len(), 1);
        close(pl[0], dpo[0]);
        // Worse response listed first: the same.
        let pl = host(plackett_luce_loss(t::<B>(&[-0.1, 0.1]), &plackett_luce_terms(&[1, 0], 0)));
        close(pl[0], dpo[0]);
    }

    /// The gradient of Plackett-Luce flows into every member's score: d/ds_first = p_first − 1,
    /// d/ds_j = p_j, with p the softmax over the term's members. K = 2, s = [0, 0]: −½, ½.
    #[test]
    fn plackett_luce_gradient_by_hand() {
        let s = t::<AD>(&[0.0, 0.0]).require_grad();
        let loss = plackett_luce_loss(s.clone(), &plackett_luce_terms(&[0, 1], 0)).sum();
        let grads = loss.backward();
        let g = s.grad(&grads).unwrap().into_data().convert::<f64>().to_vec::<f64>().unwrap();
        close(g[0], -0.5);
        close(g[1], 0.5);
    }

    /// KTO, β = 0.1, z₀ = 1: desirable r = 3 → 1 − σ(0.2) = 0.450166; undesirable r = −1 →
    /// 1 − σ(0.1 · (1 − (−1))) = 1 − σ(0.2), weighted 2 → 0.900332.
    #[test]
    fn kto_by_hand() {
        let got = host(kto_loss(t::<B>(&[3.0, -1.0]), t::<B>(&[1.0, 0.0]), 1.0, 0.1, 1.0, 2.0));
        let one_minus_sigma = 1.0 - 1.0 / (1.0 + (-0.2f64).exp());
        close(got[0], one_minus_sigma);
        close(got[1], 2.0 * one_minus_sigma);
        close(one_minus_sigma, 0.450166);
    }

    /// The reference point is a mean clamped at 0 — a plain number, so it carries no gradient:
    /// the loss's gradient in r is the same as with z₀ written in as a constant.
    #[test]
    fn kto_reference_point_is_clamped_and_detached() {
        close(kto_reference_point(&[1.0, 2.0, 3.0]), 2.0);
        close(kto_reference_point(&[-1.0, -2.0]), 0.0);
        close(kto_reference_point(&[]), 0.0);
        // d/dr [1 − σ(β(r − z₀))] = −β σ(1 − σ) at r − z₀ = 0: −0.1 · 0.25 = −0.025.
        let r = t::<AD>(&[2.0]).require_grad();
        let z0 = kto_reference_point(&[2.0]);
        let grads = kto_loss(r.clone(), t::<AD>(&[1.0]), z0, 0.1, 1.0, 1.0).sum().backward();
        close(r.grad(&grads).unwrap().into_scalar() as f64, -0.025);
    }
}

//! How a reward model's scores agree with K-way human (or AI) rankings.

use rlhf_data::encode::{ranking_pairs, RankingSample};

/// Per-prompt ranking metrics, summed over prompts with at least one untied pair.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct RankingStats {
    pub prompts: f64,
    /// Share of a prompt's pairs the scores order correctly.
    pub pairwise_acc: f64,
    /// 1 when the best-scored response is a best-ranked one.
    pub top1_acc: f64,
    /// Mean score of the best-ranked responses.
    pub chosen_score: f64,
    /// Mean score of the worst-ranked responses.
    pub rejected_score: f64,
}

impl RankingStats {
    pub fn add(&mut self, other: &RankingStats) {
        self.prompts += other.prompts;
        self.pairwise_acc += other.pairwise_acc;
        self.top1_acc += other.top1_acc;
        self.chosen_score += other.chosen_score;
        self.rejected_score += other.rejected_score;
    }
}

/// `scores` holds the responses of `samples` in order.
pub fn ranking_stats(scores: &[f32], samples: &[&RankingSample]) -> RankingStats {
    let mut st = RankingStats::default();
    let mut at = 0;
    for s in samples {
        let k = s.ranks.len();
        let r = &scores[at..at + k];
        at += k;
        let pairs = ranking_pairs(&s.ranks, 0);
        if pairs.is_empty() {
            continue;
        }
        st.prompts += 1.0;
        st.pairwise_acc += pairs.iter().filter(|p| r[p.better] > r[p.worse]).count() as f64 / pairs.len() as f64;
        let best_rank = *s.ranks.iter().min().expect("k ≥ 2");
        let worst_rank = *s.ranks.iter().max().expect("k ≥ 2");
        let top = (0..k).max_by(|&a, &b| r[a].total_cmp(&r[b])).expect("k ≥ 2");
        st.top1_acc += f64::from(u8::from(s.ranks[top] == best_rank));
        let mean_of = |rank: u32| {
            let v: Vec<f64> = (0..k).filter(|&i| s.ranks[i] == rank).map(|i| f64::from(r[i])).collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        st.chosen_score += mean_of(best_rank);
        st.rejected_score += mean_of(worst_rank);
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ranks: &[u32]) -> RankingSample {
        RankingSample { sequences: vec![vec![1]; ranks.len()], ranks: ranks.to_vec(), prompt_len: 0 }
    }

    #[test]
    fn accuracy_top1_and_scores_by_hand() {
        // Prompt 1 (K = 3, ranks 0 < 1 < 2): scores 0.5, 0.9, 0.1 → pairs (0,1) wrong, (0,2) right,
        // (1,2) right: 2/3; the top score (0.9) is rank 1, not the best: top-1 0.
        // Prompt 2 (K = 2, ranks 1, 0): scores 0.0, 1.0 → right: 1; top-1 1.
        // Prompt 3 (all tied): no pairs, not counted.
        let (a, b, c) = (sample(&[0, 1, 2]), sample(&[1, 0]), sample(&[4, 4]));
        let scores = [0.5, 0.9, 0.1, 0.0, 1.0, 7.0, 7.0];
        let st = ranking_stats(&scores, &[&a, &b, &c]);
        assert_eq!(st.prompts, 2.0);
        assert!((st.pairwise_acc - (2.0 / 3.0 + 1.0)).abs() < 1e-12);
        assert_eq!(st.top1_acc, 1.0);
        assert!((st.chosen_score - (0.5 + 1.0)).abs() < 1e-6);
        assert!((st.rejected_score - (0.1 + 0.0)).abs() < 1e-6);
    }
}

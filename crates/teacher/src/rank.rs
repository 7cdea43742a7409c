//! AI rankings for the reward model (RLAIF: Bai et al. 2022, Lee et al. 2023): a judge model orders
//! K responses to a prompt, listwise, in one request. Responses can be shown in a shuffled order and
//! the question re-asked in other orders; the orders' rankings are averaged (disagreements become
//! ties, which carry no loss in stage 2) and their agreement is measured with Kendall's τ.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::client::{ChatMessage, ChatRequest, Client};

/// The request for one listwise ranking; `responses` are shown as [1] … [K] in the given order.
pub fn rank_prompt(question: &str, responses: &[&str]) -> String {
    let k = responses.len();
    let example: Vec<String> = (1..=k).rev().map(|i| i.to_string()).collect();
    let mut s = format!(
        "Please act as an impartial judge. Below are a user question and {k} responses written by AI assistants, \
         labelled [1] to [{k}]. Rank the responses from best to worst by how well they follow the user's \
         instructions and answer the question: helpfulness, accuracy, relevance, depth and harmlessness. Do not \
         let the order of the responses, their length, or their labels influence you. Begin with a short \
         explanation, then give your ranking on the last line strictly in this format, every label exactly once, \
         best first: [[{}]]\n\n[User Question]\n{question}\n",
        example.join(" > ")
    );
    for (i, r) in responses.iter().enumerate() {
        s.push_str(&format!("\n[Response {}]\n{r}\n[End of Response {}]\n", i + 1, i + 1));
    }
    s
}

/// The ranking in a judge's answer: the last `[[…]]` whose numbers are exactly 1 … k once each (in
/// any separator: `>`, commas, spaces). Returns shown positions from 0, best first.
pub fn parse_ranking(text: &str, k: usize) -> Option<Vec<usize>> {
    let mut end = text.len();
    while let Some(close) = text[..end].rfind("]]") {
        end = close;
        let Some(open) = text[..close].rfind("[[") else { break };
        let numbers: Vec<usize> = text[open + 2..close].split(|c: char| !c.is_ascii_digit()).filter(|t| !t.is_empty()).filter_map(|t| t.parse().ok()).collect();
        let mut sorted = numbers.clone();
        sorted.sort_unstable();
        if sorted == (1..=k).collect::<Vec<_>>() {
            return Some(numbers.into_iter().map(|n| n - 1).collect());
        }
    }
    None
}

/// Rank (0 = best) of every original response, from a ranking of a shown order:
/// `shown[i]` is the original index shown at position i, `ranking` the shown positions best first.
pub fn original_ranks(shown: &[usize], ranking: &[usize]) -> Vec<usize> {
    let mut ranks = vec![0; shown.len()];
    for (rank, &position) in ranking.iter().enumerate() {
        ranks[shown[position]] = rank;
    }
    ranks
}

/// Kendall's τ-a of two rankings of the same items: (concordant − discordant pairs) / all pairs.
pub fn kendall_tau(a: &[usize], b: &[usize]) -> f64 {
    let n = a.len();
    let pairs = n * n.saturating_sub(1) / 2;
    if pairs == 0 {
        return 1.0;
    }
    let mut score = 0i64;
    for i in 0..n {
        for j in i + 1..n {
            let (x, y) = (a[i] as i64 - a[j] as i64, b[i] as i64 - b[j] as i64);
            score += (x * y).signum();
        }
    }
    score as f64 / pairs as f64
}

/// One ranking from several: responses ordered by their mean rank, equal means tied; ranks from 1.
pub fn combine(rankings: &[Vec<usize>]) -> Vec<u32> {
    let k = rankings.first().map_or(0, Vec::len);
    // Sums instead of means: same order, exact.
    let sums: Vec<usize> = (0..k).map(|i| rankings.iter().map(|r| r[i]).sum()).collect();
    sums.iter().map(|s| 1 + sums.iter().filter(|&t| t < s).count() as u32).collect()
}

/// Settings of the ranking job.
#[derive(Debug, Clone)]
pub struct RankConfig {
    /// Orders each prompt's responses are judged in (1: once).
    pub orders: usize,
    /// Shuffle the first order too (later orders are always shuffled).
    pub shuffle: bool,
    pub seed: u64,
    pub max_tokens: u32,
}

/// Responses to one prompt, to be ranked.
#[derive(Debug, Clone)]
pub struct RankItem {
    pub prompt: Vec<ChatMessage>,
    pub responses: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RankSummary {
    pub written: usize,
    /// Prompts dropped because no order got a parseable ranking.
    pub unranked: usize,
    /// Judgements without a parseable ranking.
    pub unparsed: usize,
    /// Mean Kendall τ between the first two parsed orders of a prompt (None with one order).
    pub agreement: Option<f64>,
    /// Share of prompts whose first two orders put the same response first.
    pub same_best: Option<f64>,
}

/// The question as the judge reads it: the last user message, with any earlier turns before it.
pub fn question_text(prompt: &[ChatMessage]) -> String {
    match prompt {
        [only] => only.content.clone(),
        _ => prompt.iter().map(|m| format!("[{}]\n{}", m.role, m.content)).collect::<Vec<_>>().join("\n\n"),
    }
}

/// Asks the judge to rank every item's responses in `cfg.orders` orders; writes the ranked items as
/// `{"prompt", "completions", "ranking"}` JSONL (lower rank is better; ties where orders disagree).
pub fn rank(items: &[RankItem], cfg: &RankConfig, client: &Client, out: &Path) -> anyhow::Result<RankSummary> {
    let orders = cfg.orders.max(1);
    let mut shown_orders = Vec::with_capacity(items.len() * orders);
    let mut requests = Vec::with_capacity(items.len() * orders);
    for (i, item) in items.iter().enumerate() {
        let k = item.responses.len();
        let question = question_text(&item.prompt);
        for o in 0..orders {
            let mut shown: Vec<usize> = (0..k).collect();
            if cfg.shuffle || o > 0 {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed ^ ((i as u64) << 8 | o as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                shown.shuffle(&mut rng);
            }
            let texts: Vec<&str> = shown.iter().map(|&j| item.responses[j].as_str()).collect();
            requests.push(ChatRequest {
                messages: vec![ChatMessage::user(rank_prompt(&question, &texts))],
                temperature: Some(0.0),
                max_tokens: Some(cfg.max_tokens),
                ..Default::default()
            });
            shown_orders.push(shown);
        }
    }
    let answers = client.chat_many(&requests, Some("rank: judgements"));
    let mut summary = RankSummary::default();
    let (mut taus, mut same_best) = (vec![], vec![]);
    let mut lines = String::new();
    let mut answers = answers.into_iter();
    let mut shown_orders = shown_orders.into_iter();
    for item in items {
        let k = item.responses.len();
        let mut rankings = vec![];
        for _ in 0..orders {
            let (answer, shown) = (answers.next().expect("one answer per request")?, shown_orders.next().expect("one order per request"));
            match parse_ranking(answer.text(), k) {
                Some(r) => rankings.push(original_ranks(&shown, &r)),
                None => summary.unparsed += 1,
            }
        }
        if rankings.is_empty() {
            summary.unranked += 1;
            continue;
        }
        if let [a, b, ..] = rankings.as_slice() {
            taus.push(kendall_tau(a, b));
            let best = |r: &Vec<usize>| r.iter().position(|&x| x == 0);
            same_best.push(f64::from(u8::from(best(a) == best(b))));
        }
        let prompt: Vec<serde_json::Value> = item.prompt.iter().map(|m| serde_json::json!({ "from": m.role, "content": m.content })).collect();
        let record = serde_json::json!({ "prompt": prompt, "completions": item.responses, "ranking": combine(&rankings) });
        lines.push_str(&record.to_string());
        lines.push('\n');
        summary.written += 1;
    }
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    summary.agreement = mean(&taus);
    summary.same_best = mean(&same_best);
    rlhf_files::write_atomic(out, &lines)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_complete_permutation_is_the_ranking() {
        assert_eq!(parse_ranking("Response 3 is best. [[3 > 1 > 4 > 2]]", 4), Some(vec![2, 0, 3, 1]));
        // The format example quoted first, the answer last; commas and spaces work too.
        assert_eq!(parse_ranking("format [[4 > 3 > 2 > 1]] … final: [[2, 1, 3, 4]]", 4), Some(vec![1, 0, 2, 3]));
        // An incomplete or repeated list is skipped in favour of an earlier complete one.
        assert_eq!(parse_ranking("[[1 > 2 > 3 > 4]] then [[1 > 1 > 2 > 3]]", 4), Some(vec![0, 1, 2, 3]));
        assert_eq!(parse_ranking("[[1 > 2 > 3]]", 4), None);
        assert_eq!(parse_ranking("答案：[[2>1]]", 2), Some(vec![1, 0]));
        assert_eq!(parse_ranking("I like them all.", 4), None);
    }

    /// Shown order [2, 0, 3, 1] (original index at each position); the judge ranks shown positions
    /// 1 > 3 > 0 > 2, i.e. originals 0 > 1 > 2 > 3.
    #[test]
    fn ranks_map_back_through_the_shuffle() {
        assert_eq!(original_ranks(&[2, 0, 3, 1], &[1, 3, 0, 2]), vec![0, 1, 2, 3]);
        assert_eq!(original_ranks(&[0, 1, 2], &[2, 0, 1]), vec![1, 2, 0]);
    }

    /// [0,1,2,3] vs [1,0,2,3]: one discordant pair of six → (5 − 1) / 6.
    #[test]
    fn kendall_tau_by_hand() {
        assert!((kendall_tau(&[0, 1, 2, 3], &[1, 0, 2, 3]) - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(kendall_tau(&[0, 1, 2], &[2, 1, 0]), -1.0);
        assert_eq!(kendall_tau(&[0, 1, 2], &[0, 1, 2]), 1.0);
    }

    /// Two orders that swap the top two: sums [1, 1, 4, 6] → ranks 1, 1, 3, 4.
    #[test]
    fn disagreements_become_ties() {
        assert_eq!(combine(&[vec![0, 1, 2, 3], vec![1, 0, 2, 3]]), vec![1, 1, 3, 4]);
        assert_eq!(combine(&[vec![2, 0, 1]]), vec![3, 1, 2]);
    }
}

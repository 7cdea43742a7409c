//! Pairwise judging (Zheng et al. 2023, "Judging LLM-as-a-judge", MT-bench's pairwise prompt): a judge
//! model reads a question and two answers and gives a verdict `[[A]]`, `[[B]]` or `[[C]]` (tie). Each
//! pair is judged in both orders to cancel position bias; a pair whose two verdicts disagree counts as
//! a tie. The result is win / tie / loss of model A with a 95% interval on its score.

/// One judge's verdict on an ordered pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    First,
    Second,
    Tie,
}

/// The request for one verdict, with `first` shown as Assistant A. A reference answer (math,
/// reasoning, code) is shown to the judge as MT-bench does, to check correctness against.
pub fn judge_prompt(question: &str, reference: Option<&str>, first: &str, second: &str) -> String {
    let reference = reference.map_or(String::new(), |r| {
        format!("[The Start of Reference Answer]\n{r}\n[The End of Reference Answer]\n\nUse the reference answer to check the correctness of the two responses.\n\n")
    });
    format!(
        "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants \
         to the user question shown below. Choose the assistant that follows the user's instructions and answers \
         the question better, considering helpfulness, relevance, accuracy, depth, creativity and level of detail. \
         Do not let the order in which the responses were presented, their length, or the assistants' names \
         influence you. Begin with a short explanation comparing the two responses, then give your final verdict \
         strictly in this format: \"[[A]]\" if assistant A is better, \"[[B]]\" if assistant B is better, and \
         \"[[C]]\" for a tie.\n\n[User Question]\n{question}\n\n{reference}[The Start of Assistant A's Answer]\n{first}\n\
         [The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n{second}\n[The End of Assistant B's Answer]"
    )
}

/// The verdict of a judge's answer: the last `[[A]]` / `[[B]]` / `[[C]]` in it (a judge may quote the
/// format before deciding); None when there is none.
pub fn parse_verdict(text: &str) -> Option<Verdict> {
    [("[[A]]", Verdict::First), ("[[B]]", Verdict::Second), ("[[C]]", Verdict::Tie)]
        .iter()
        .filter_map(|(mark, v)| text.rfind(mark).map(|at| (at, *v)))
        .max_by_key(|(at, _)| *at)
        .map(|(_, v)| v)
}

/// The outcome for model A of one pair judged in both orders: `a_first` with A shown first,
/// `b_first` with B shown first. Agreement decides; disagreement, or a missing verdict, is a tie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Win,
    Tie,
    Loss,
}

pub fn outcome(a_first: Option<Verdict>, b_first: Option<Verdict>) -> Outcome {
    match (a_first, b_first) {
        (Some(Verdict::First), Some(Verdict::Second)) => Outcome::Win,
        (Some(Verdict::Second), Some(Verdict::First)) => Outcome::Loss,
        _ => Outcome::Tie,
    }
}

/// Win / tie / loss counts and A's score (win 1, tie ½, loss 0) with a 95% normal interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tally {
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
    pub score: f64,
    /// score ± 1.96 · sd / √n, with the sample standard deviation of the per-pair scores.
    pub interval: (f64, f64),
}

pub fn tally(outcomes: &[Outcome]) -> Tally {
    let count = |o: Outcome| outcomes.iter().filter(|&&x| x == o).count();
    let (wins, ties, losses) = (count(Outcome::Win), count(Outcome::Tie), count(Outcome::Loss));
    let n = outcomes.len();
    if n == 0 {
        return Tally { wins, ties, losses, score: 0.5, interval: (0.0, 1.0) };
    }
    let points: Vec<f64> = outcomes.iter().map(|o| match o { Outcome::Win => 1.0, Outcome::Tie => 0.5, Outcome::Loss => 0.0 }).collect();
    let score = points.iter().sum::<f64>() / n as f64;
    let var = if n > 1 { points.iter().map(|p| (p - score).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.25 };
    let half = 1.96 * (var / n as f64).sqrt();
    Tally { wins, ties, losses, score, interval: ((score - half).max(0.0), (score + half).min(1.0)) }
}

/// A question and the two answers to compare.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub question: String,
    pub reference: Option<String>,
    pub a: String,
    pub b: String,
}

/// Both verdicts on one pair (each judge answer kept) and the outcome for A.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgment {
    pub a_first: Option<Verdict>,
    pub b_first: Option<Verdict>,
    pub outcome: Outcome,
    pub a_first_text: String,
    pub b_first_text: String,
}

impl Judgment {
    /// Position consistency: both orders gave a verdict and they agree (the same answer won, or a tie
    /// twice).
    pub fn consistent(&self) -> bool {
        use Verdict::*;
        matches!((self.a_first, self.b_first), (Some(First), Some(Second)) | (Some(Second), Some(First)) | (Some(Tie), Some(Tie)))
    }
}

/// Judges every pair in both orders (two requests per pair, sent together with the client's
/// concurrency and cache).
pub fn judge_pairs(pairs: &[Pair], client: &crate::Client, max_tokens: u32) -> anyhow::Result<Vec<Judgment>> {
    let ask = |first: &str, second: &str, p: &Pair| crate::ChatRequest {
        messages: vec![crate::ChatMessage::user(judge_prompt(&p.question, p.reference.as_deref(), first, second))],
        temperature: Some(0.0),
        max_tokens: Some(max_tokens),
        ..Default::default()
    };
    let requests: Vec<crate::ChatRequest> = pairs.iter().flat_map(|p| [ask(&p.a, &p.b, p), ask(&p.b, &p.a, p)]).collect();
    let mut answers = client.chat_many(&requests, Some("judge: verdicts")).into_iter();
    let mut out = Vec::with_capacity(pairs.len());
    for _ in pairs {
        let a_first_text = answers.next().expect("two answers per pair")?.text().to_string();
        let b_first_text = answers.next().expect("two answers per pair")?.text().to_string();
        let (a_first, b_first) = (parse_verdict(&a_first_text), parse_verdict(&b_first_text));
        out.push(Judgment { a_first, b_first, outcome: outcome(a_first, b_first), a_first_text, b_first_text });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_verdict_mark_counts() {
        assert_eq!(parse_verdict("A is more accurate. [[A]]"), Some(Verdict::First));
        assert_eq!(parse_verdict("Format: \"[[A]]\" … my verdict: [[B]]"), Some(Verdict::Second));
        assert_eq!(parse_verdict("两者相当。[[C]]"), Some(Verdict::Tie));
        assert_eq!(parse_verdict("I cannot decide."), None);
    }

    #[test]
    fn both_orders_must_agree() {
        use Verdict::*;
        assert_eq!(outcome(Some(First), Some(Second)), Outcome::Win);
        assert_eq!(outcome(Some(Second), Some(First)), Outcome::Loss);
        // Position bias: the judge always prefers the first shown.
        assert_eq!(outcome(Some(First), Some(First)), Outcome::Tie);
        assert_eq!(outcome(Some(Tie), Some(Second)), Outcome::Tie);
        assert_eq!(outcome(None, Some(Second)), Outcome::Tie);
    }

    #[test]
    fn consistency_needs_both_verdicts_to_agree() {
        use Verdict::*;
        let j = |a, b| Judgment { a_first: a, b_first: b, outcome: outcome(a, b), a_first_text: String::new(), b_first_text: String::new() };
        assert!(j(Some(First), Some(Second)).consistent() && j(Some(Tie), Some(Tie)).consistent());
        assert!(!j(Some(First), Some(First)).consistent() && !j(None, Some(Second)).consistent() && !j(Some(Tie), Some(First)).consistent());
    }

    /// 2 wins, 1 tie, 1 loss: points 1, 1, ½, 0 → score 0.625; squared deviations 0.140625 (twice),
    /// 0.015625, 0.390625 → sample variance 0.6875/3; half-width 1.96·√(0.6875/12) = 0.4691; the
    /// upper end is clipped to 1.
    #[test]
    fn tally_by_hand() {
        use Outcome::*;
        let t = tally(&[Win, Win, Tie, Loss]);
        assert_eq!((t.wins, t.ties, t.losses), (2, 1, 1));
        assert!((t.score - 0.625).abs() < 1e-12);
        let half = 1.96 * (0.6875f64 / 12.0).sqrt();
        assert!((half - 0.469_139).abs() < 1e-6);
        assert!((t.interval.0 - (0.625 - half)).abs() < 1e-12 && (t.interval.1 - 1.0).abs() < 1e-12, "{t:?}");
    }
}

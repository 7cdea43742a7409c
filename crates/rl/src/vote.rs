//! Self-consistency (Wang et al. 2022): sample a question K times, read each sample's final answer
//! with an [`Extractor`](crate::verifiers::Extractor), and take the answer most samples reach.
//!
//! Conventions (peers differ; these are ours):
//! - answers are compared by [`answer_key`]: numbers as numbers (`72`, `72.0`, `1,234` = `1234`,
//!   full-width digits as ASCII), other text trimmed, lower-cased, inner spaces collapsed;
//! - a sample whose answer cannot be extracted (or is only punctuation) is counted (`no_answer`),
//!   never voted;
//! - the share is votes / all K samples, the unextractable included, so a question where 3 of 8
//!   samples answer (all alike) has share 0.375, not 1;
//! - a tie goes to the answer that appeared first in sample order (deterministic for a seed), and
//!   the chosen path is the first sample that reached the winning answer.

use crate::verifiers::parse_number;

/// What answers are compared by: a number's value written canonically (`72.0` → `72`, `-0.50` →
/// `-0.5`), else the text trimmed of spaces and a final full stop, lower-cased, inner spaces
/// collapsed.
pub fn answer_key(answer: &str) -> String {
    if let Some(x) = parse_number(answer) {
        // f64's Display is the shortest text that reads back as the same value, without exponent.
        return if x == 0.0 { "0".into() } else { x.to_string() };
    }
    let text = answer.trim().trim_end_matches(['.', '。']).trim();
    text.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// The outcome of one question's vote.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Vote {
    /// The winning answer's key; None when no sample had an answer.
    pub answer: Option<String>,
    /// Samples that reached it.
    pub votes: usize,
    /// All samples, the unextractable included.
    pub samples: usize,
    /// Samples without an extractable answer.
    pub no_answer: usize,
    /// Index of the first sample that reached the winning answer (the chosen reasoning path).
    pub path: Option<usize>,
    /// Every answer with its votes, most voted first (ties in order of first appearance).
    pub tally: Vec<(String, usize)>,
}

impl Vote {
    /// votes / samples; 0 for no samples.
    pub fn share(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            self.votes as f64 / self.samples as f64
        }
    }

    /// The samples (indices, in order) whose answer is the winning one.
    pub fn agreeing(&self, answers: &[Option<String>]) -> Vec<usize> {
        let Some(winner) = &self.answer else { return vec![] };
        answers.iter().enumerate().filter(|(_, a)| a.as_deref().map(answer_key).as_ref() == Some(winner)).map(|(i, _)| i).collect()
    }
}

/// The majority among one question's extracted answers (None = the sample had none).
pub fn majority(answers: &[Option<String>]) -> Vote {
    // (key, votes, first sample), in order of first appearance.
    let mut tally: Vec<(String, usize, usize)> = Vec::new();
    let mut no_answer = 0;
    for (i, a) in answers.iter().enumerate() {
        // An answer that is only punctuation ("." → "") is no answer.
        let Some(key) = a.as_deref().map(answer_key).filter(|k| !k.is_empty()) else {
            no_answer += 1;
            continue;
        };
        match tally.iter_mut().find(|(k, ..)| *k == key) {
            Some(entry) => entry.1 += 1,
            None => tally.push((key, 1, i)),
        }
    }
    // A stable sort keeps first appearance among equal counts.
    tally.sort_by(|a, b| b.1.cmp(&a.1));
    let winner = tally.first().cloned();
    Vote {
        answer: winner.as_ref().map(|w| w.0.clone()),
        votes: winner.as_ref().map_or(0, |w| w.1),
        samples: answers.len(),
        no_answer,
        path: winner.map(|w| w.2),
        tally: tally.into_iter().map(|(k, n, _)| (k, n)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verifiers::Extractor;

    fn ex(name: &str) -> Extractor {
        name.parse().unwrap()
    }

    #[test]
    fn extractors_on_written_answers() {
        // Several boxes: the last counts, braces nested.
        let boxed = r"First \boxed{3}, no wait: \boxed{\frac{1}{2}}.";
        assert_eq!(ex("boxed").answer("", boxed).as_deref(), Some(r"\frac{1}{2}"));
        assert_eq!(ex("final").answer("", boxed).as_deref(), Some(r"\frac{1}{2}"));
        assert_eq!(ex("gsm8k").answer("", boxed), None);
        // GSM8K: after the last ####, thousands separators kept for the key to read.
        let gsm = "She pays 2 × 617 = 1,234 dollars.\n#### 1,234";
        assert_eq!(ex("gsm8k").answer("", gsm).as_deref(), Some("1,234"));
        assert_eq!(ex("boxed").answer("", gsm), None);
        assert_eq!(answer_key("1,234"), "1234");
        // Prose with a negative number, and Chinese text with full-width digits.
        assert_eq!(ex("last_number").answer("", "It falls to -3 degrees, then stays.").as_deref(), Some("-3"));
        assert_eq!(ex("last_number").answer("", "所以小明一共有１２个苹果。").map(|a| answer_key(&a)).as_deref(), Some("12"));
        assert_eq!(ex("last_number").answer("", "答案是 4,500 元").as_deref(), Some("4500"));
        // A pattern's first group, at its last match.
        let re = ex(r"regex:[Aa]nswer:\s*(\S+)");
        assert_eq!(re.answer("", "Answer: 4. Hmm, answer: 5").as_deref(), Some("5"));
        assert_eq!(re.answer("", "no such line"), None);
        // The demo's reading: a sum's last number, the larger number's first, a number word.
        assert_eq!(ex("demo").answer("What is 3 plus 5?", "3 plus 5 is 8.").as_deref(), Some("8"));
        assert_eq!(ex("demo").answer("Which is bigger, 7 or 12?", "12 is bigger than 7.").as_deref(), Some("12"));
        assert_eq!(ex("demo").answer("用汉字写出数字7。", "七。").as_deref(), Some("七"));
        assert_eq!(ex("demo").answer("Write the number 7 in words.", "It is 七.").as_deref(), Some("seven"));
        assert_eq!(ex("demo").answer("Write the number 7 in words.", "seven or eight."), None);
        assert_eq!(ex("demo").answer("not a demo prompt", "8"), None);
    }

    #[test]
    fn extractor_names_round_trip_and_unknown_ones_are_errors() {
        for name in ["final", "boxed", "gsm8k", "last_number", "demo", r"regex:=\s*(\d+)"] {
            assert_eq!(ex(name).to_string(), name);
        }
        assert!("last".parse::<Extractor>().unwrap_err().contains("unknown extractor \"last\""));
        assert!("regex:(".parse::<Extractor>().is_err());
    }

    #[test]
    fn answer_keys_compare_numbers_as_numbers() {
        assert_eq!(answer_key("72.0"), "72");
        assert_eq!(answer_key("$72"), "72");
        assert_eq!(answer_key("-0.50"), "-0.5");
        assert_eq!(answer_key("-0"), "0");
        assert_eq!(answer_key("3/4"), "0.75");
        assert_eq!(answer_key("  Seven  Apples. "), "seven apples");
    }

    /// Eight samples: 12, 12.0, 7, none, 7, 12, none, 9 → 12 has 3 votes (samples 0, 1, 5), 7 has 2,
    /// 9 has 1; 2 without an answer; share 3/8 = 0.375; the path is sample 0.
    #[test]
    fn majority_by_hand() {
        let a = |s: &str| Some(s.to_string());
        let answers = [a("12"), a("12.0"), a("7"), None, a("7"), a("12"), None, a("9")];
        let v = majority(&answers);
        assert_eq!(v.answer.as_deref(), Some("12"));
        assert_eq!((v.votes, v.samples, v.no_answer, v.path), (3, 8, 2, Some(0)));
        assert_eq!(v.share(), 0.375);
        assert_eq!(v.tally, [("12".to_string(), 3), ("7".to_string(), 2), ("9".to_string(), 1)]);
        assert_eq!(v.agreeing(&answers), [0, 1, 5]);
    }

    /// Ties go to the answer that came first: 5, 4, 4, 5 → 5 (sample 0); none, 4, 5 → 4 (sample 1).
    #[test]
    fn ties_go_to_the_first_answer_given() {
        let a = |s: &str| Some(s.to_string());
        let v = majority(&[a("5"), a("4"), a("4"), a("5")]);
        assert_eq!((v.answer.as_deref(), v.votes, v.path), (Some("5"), 2, Some(0)));
        let v = majority(&[None, a("4"), a("5")]);
        assert_eq!((v.answer.as_deref(), v.votes, v.path, v.no_answer), (Some("4"), 1, Some(1), 1));
    }

    #[test]
    fn no_answer_at_all() {
        let v = majority(&[None, Some(".".into())]);
        assert_eq!((v.answer.clone(), v.votes, v.samples, v.no_answer, v.path), (None, 0, 2, 2, None));
        assert_eq!(v.share(), 0.0);
        assert!(v.agreeing(&[None, Some(".".into())]).is_empty());
        assert_eq!(majority(&[]).share(), 0.0);
    }
}

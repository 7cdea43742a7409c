//! Rule-based rewards ("verifiable rewards"): each a pure function of the response (and a field of
//! the prompt's record), returning a score, or None where it does not apply (a record without the
//! field it checks against).
//!
//! | verifier | score |
//! |---|---|
//! | `math_answer` | 1 when the response's final answer — by default (`extract = "final"`) its last `\boxed{…}`, else what follows its last `####`; or as another [`Extractor`] reads it (`last_number`, `boxed`, `gsm8k`, `demo`, `regex:…`) — equals the record's answer as a number (GSM8K's `"… #### 42"` is read the same way); 0 otherwise, an answer-less response included |
//! | `exact`, `contains` | 1 when the trimmed response equals / contains the record's field |
//! | `regex` | 1 when the pattern matches somewhere in the response |
//! | `format` | 1 when the pattern matches the whole response |
//! | `overlong` | DAPO's soft overlong penalty: 0 up to `max_len − buffer` tokens, then falling linearly to −1 at `max_len`, −1 beyond |
//! | `repetition` | −(1 − distinct n-grams / n-grams) of the response's tokens: 0 without repeats |

use std::fmt;
use std::str::FromStr;

/// The final answer of a math response: the content of its last `\boxed{…}` (braces nested), else
/// the rest of the line after its last `####`.
pub fn final_answer(text: &str) -> Option<String> {
    if text.contains("\\boxed{") {
        return last_boxed(text);
    }
    gsm8k_answer(text)
}

/// The content of the last `\boxed{…}` (braces nested); None without one or when it is unclosed.
pub fn last_boxed(text: &str) -> Option<String> {
    let at = text.rfind("\\boxed{")?;
    let mut depth = 0usize;
    let body = &text[at + "\\boxed{".len()..];
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(body[..i].trim().to_string()),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// The rest of the line after the last `####` (GSM8K's form), when not empty.
pub fn gsm8k_answer(text: &str) -> Option<String> {
    let at = text.rfind("####")?;
    let rest = text[at + 4..].lines().next().unwrap_or("").trim();
    (!rest.is_empty()).then(|| rest.to_string())
}

/// How a response's final answer is found: `final`, `boxed`, `gsm8k`, `last_number`, `demo` or
/// `regex:PATTERN` in configs and on the command line.
#[derive(Debug, Clone, Default)]
pub enum Extractor {
    /// The last `\boxed{…}`, else what follows the last `####` (the strict form a prompt asks for).
    #[default]
    Final,
    /// The content of the last `\boxed{…}` (braces nested).
    Boxed,
    /// The rest of the line after the last `####` (GSM8K's form).
    Gsm8k,
    /// The last number anywhere in the response (lenient, for answers in prose).
    LastNumber,
    /// The embedded demo's reading, as its oracle judges: the sum's last number, the larger
    /// number's first, the number word named, in the form of the record's `answer` (needs the
    /// prompt).
    Demo,
    /// The first capture group (else the whole match) of the pattern's last match.
    Regex(regex::Regex),
}

impl Extractor {
    /// The final answer of `response` to `prompt` (only `demo` reads the prompt), or None.
    pub fn answer(&self, prompt: &str, response: &str) -> Option<String> {
        match self {
            Extractor::Final => final_answer(response),
            Extractor::Boxed => last_boxed(response),
            Extractor::Gsm8k => gsm8k_answer(response),
            Extractor::LastNumber => last_number(response),
            Extractor::Demo => rlhf_data::demo::stated_answer(prompt, response),
            Extractor::Regex(pattern) => {
                let caps = pattern.captures_iter(response).last()?;
                let m = caps.get(1).or_else(|| caps.get(0))?;
                Some(m.as_str().trim().to_string()).filter(|s| !s.is_empty())
            }
        }
    }
}

impl FromStr for Extractor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "final" => Extractor::Final,
            "boxed" => Extractor::Boxed,
            "gsm8k" => Extractor::Gsm8k,
            "last_number" => Extractor::LastNumber,
            "demo" => Extractor::Demo,
            _ => match s.strip_prefix("regex:") {
                Some(p) => Extractor::Regex(regex::Regex::new(p).map_err(|e| format!("extractor {s:?}: {e}"))?),
                None => return Err(format!("unknown extractor {s:?} (expected final, boxed, gsm8k, last_number, demo or regex:PATTERN)")),
            },
        })
    }
}

impl fmt::Display for Extractor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Extractor::Final => f.write_str("final"),
            Extractor::Boxed => f.write_str("boxed"),
            Extractor::Gsm8k => f.write_str("gsm8k"),
            Extractor::LastNumber => f.write_str("last_number"),
            Extractor::Demo => f.write_str("demo"),
            Extractor::Regex(p) => write!(f, "regex:{}", p.as_str()),
        }
    }
}

impl PartialEq for Extractor {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl serde::Serialize for Extractor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Extractor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The last number in `text`: digits with an optional minus sign, thousands commas and decimals
/// (`-1,234.5`); a sentence's full stop is not a decimal point.
pub fn last_number(text: &str) -> Option<String> {
    static NUMBER: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?").expect("a valid pattern"));
    NUMBER.find_iter(text).last().map(|m| m.as_str().replace(',', ""))
}

/// A number as people write answers: `42`, `-3.5`, `1,234`, `$12`, `12.` , `3/4`, `50%` (= 50).
/// Full-width digits and signs (`１２`, `－３．５`, as Chinese and Japanese text writes them) read as ASCII.
pub fn parse_number(s: &str) -> Option<f64> {
    let cleaned: String = s
        .trim()
        .chars()
        .map(|c| match c {
            '０'..='９' => char::from(b'0' + (c as u32 - '０' as u32) as u8),
            '．' => '.',
            '－' => '-',
            '，' => ',',
            c => c,
        })
        .filter(|c| !matches!(c, ',' | '$' | ' ' | '%'))
        .collect();
    let cleaned = cleaned.trim_end_matches('.');
    if let Some((a, b)) = cleaned.split_once('/') {
        let (a, b) = (a.parse::<f64>().ok()?, b.parse::<f64>().ok()?);
        return (b != 0.0).then(|| a / b);
    }
    cleaned.parse::<f64>().ok().filter(|x| x.is_finite())
}

/// Two answers as numbers, equal to a relative 1e-6 (or as trimmed text when either is not a number).
fn same_answer(got: &str, want: &str) -> bool {
    match (parse_number(got), parse_number(want)) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-6 * b.abs().max(1.0),
        _ => got.trim() == want.trim(),
    }
}

/// The answer a record's answer field states: GSM8K ships the worked solution with the number after
/// `####`; a plain field is the answer itself.
pub fn expected_answer(record_answer: &str) -> String {
    final_answer(record_answer).unwrap_or_else(|| record_answer.trim().to_string())
}

/// `math_answer`: None when the record has no answer.
pub fn math_answer(prompt: &str, response: &str, record_answer: Option<&str>, extract: &Extractor) -> Option<f64> {
    let want = expected_answer(record_answer?);
    Some(match extract.answer(prompt, response) {
        Some(got) if same_answer(&got, &want) => 1.0,
        _ => 0.0,
    })
}

pub fn exact(response: &str, target: Option<&str>) -> Option<f64> {
    target.map(|t| f64::from(u8::from(response.trim() == t.trim())))
}

pub fn contains(response: &str, target: Option<&str>) -> Option<f64> {
    target.map(|t| f64::from(u8::from(response.contains(t.trim()))))
}

/// `regex`: the pattern matches somewhere in the response.
pub fn regex_match(response: &str, pattern: &regex::Regex) -> f64 {
    f64::from(u8::from(pattern.is_match(response)))
}

/// `format`: the pattern matches the whole response (it is anchored here).
pub fn whole_match(response: &str, pattern: &regex::Regex) -> f64 {
    f64::from(u8::from(pattern.find(response).is_some_and(|m| m.start() == 0 && m.end() == response.len())))
}

/// DAPO's soft overlong penalty for a response of `len` tokens.
pub fn overlong_penalty(len: usize, max_len: usize, buffer: usize) -> f64 {
    let start = max_len.saturating_sub(buffer);
    if len <= start {
        0.0
    } else if len <= max_len && buffer > 0 {
        -((len - start) as f64) / buffer as f64
    } else {
        -1.0
    }
}

/// −(1 − distinct n-grams / n-grams) over `tokens`; 0 when there is no n-gram.
pub fn repetition_penalty(tokens: &[u32], n: usize) -> f64 {
    if n == 0 || tokens.len() < n {
        return 0.0;
    }
    let grams: Vec<&[u32]> = tokens.windows(n).collect();
    let distinct: std::collections::HashSet<&[u32]> = grams.iter().copied().collect();
    -(1.0 - distinct.len() as f64 / grams.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_answers_from_boxes_and_hashes() {
        assert_eq!(final_answer(r"so \boxed{2} then \boxed{\frac{1}{2}} done").as_deref(), Some(r"\frac{1}{2}"));
        assert_eq!(final_answer("Natalia sold 48/2 = 24 clips.\n#### 72").as_deref(), Some("72"));
        assert_eq!(final_answer("#### 1 #### 2").as_deref(), Some("2"));
        assert_eq!(final_answer(r"\boxed{unclosed"), None);
        assert_eq!(final_answer("no answer here"), None);
    }

    #[test]
    fn numbers_as_answers_are_written() {
        for (s, want) in [("42", 42.0), ("-3.5", -3.5), ("1,234", 1234.0), ("$12", 12.0), ("12.", 12.0), ("3/4", 0.75), ("50%", 50.0)] {
            assert_eq!(parse_number(s), Some(want), "{s}");
        }
        assert_eq!(parse_number("１２"), Some(12.0));
        assert_eq!(parse_number("－３．５"), Some(-3.5));
        assert_eq!(parse_number("x"), None);
        assert_eq!(parse_number("1/0"), None);
    }

    /// GSM8K's record answer "… #### 72": a response ending "#### 72.0" or "\boxed{72}" is right,
    /// "#### 71" wrong, one without a final answer wrong; a record without an answer: not applicable.
    #[test]
    fn math_answer_against_a_gsm8k_record() {
        let record = Some("She sold 48 + 24 = 72 clips.\n#### 72");
        let strict = |r: &str, a: Option<&str>| math_answer("", r, a, &Extractor::Final);
        assert_eq!(strict("so #### 72.0", record), Some(1.0));
        assert_eq!(strict(r"The answer is \boxed{72}.", record), Some(1.0));
        assert_eq!(strict("#### 71", record), Some(0.0));
        assert_eq!(strict("72", record), Some(0.0));
        assert_eq!(strict("#### 72", None), None);
        // A plain answer field, and 1,000 against 1000.
        assert_eq!(strict(r"\boxed{1,000}", Some("1000")), Some(1.0));
    }

    /// The last number, wherever it is: "16 - 10 = 6 apples left." → 6 (the full stop is not a
    /// decimal point); "1,234" → 1234; "-3 degrees" → −3; "剩下12个。" → 12; no number → wrong.
    #[test]
    fn math_answer_by_the_last_number() {
        assert_eq!(last_number("So, Sara has 16 - 10 = 6 apples left.").as_deref(), Some("6"));
        assert_eq!(last_number("They paid $1,234.50 in all").as_deref(), Some("1234.50"));
        assert_eq!(last_number("It is -3 degrees.").as_deref(), Some("-3"));
        assert_eq!(last_number("小明还剩下12个苹果。").as_deref(), Some("12"));
        assert_eq!(last_number("none at all"), None);
        let lenient = |r: &str| math_answer("", r, Some("6"), &Extractor::LastNumber);
        assert_eq!(lenient("So, Sara has 16 - 10 = 6 apples left."), Some(1.0));
        assert_eq!(lenient("6 apples, or maybe 7"), Some(0.0));
        assert_eq!(lenient("I do not know"), Some(0.0));
        // The record's answer is read as before: GSM8K's "#### 6" too.
        assert_eq!(math_answer("", "she has 6", Some("… #### 6"), &Extractor::LastNumber), Some(1.0));
    }

    #[test]
    fn text_and_pattern_verifiers() {
        assert_eq!(exact(" Paris ", Some("Paris")), Some(1.0));
        assert_eq!(exact("Paris, France", Some("Paris")), Some(0.0));
        assert_eq!(contains("Paris, France", Some("Paris")), Some(1.0));
        assert_eq!(contains("x", None), None);
        let think = regex::Regex::new(r"(?s)<think>.*</think>\s*\S.*").unwrap();
        assert_eq!(whole_match("<think>hm</think> 42", &think), 1.0);
        assert_eq!(whole_match("42 <think>hm</think> 42", &think), 0.0);
        assert_eq!(regex_match("42 <think>hm</think> 42", &think), 1.0);
    }

    /// max_len 100, buffer 20: 80 tokens → 0; 90 → −10/20 = −0.5; 100 → −1; 120 → −1.
    #[test]
    fn overlong_penalty_by_hand() {
        assert_eq!(overlong_penalty(80, 100, 20), 0.0);
        assert_eq!(overlong_penalty(90, 100, 20), -0.5);
        assert_eq!(overlong_penalty(100, 100, 20), -1.0);
        assert_eq!(overlong_penalty(120, 100, 20), -1.0);
    }

    /// Tokens [1, 2, 1, 2, 1] with n = 2: bigrams 12, 21, 12, 21 → 2 distinct of 4 → −0.5.
    #[test]
    fn repetition_penalty_by_hand() {
        assert_eq!(repetition_penalty(&[1, 2, 1, 2, 1], 2), -0.5);
        assert_eq!(repetition_penalty(&[1, 2, 3, 4], 2), 0.0);
        assert_eq!(repetition_penalty(&[1], 2), 0.0);
    }
}

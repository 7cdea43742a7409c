//! The embedded bilingual demo: small arithmetic / number tasks in English and Chinese, data for every
//! stage, and an **oracle** that scores any response to a demo prompt.
//!
//! Quality is what a user would call quality, not length: the answer is right (1.0), in the prompt's
//! language (0.5), and in the expected form — one sentence ending in `.` / `。`, at most 40 characters
//! (0.5). The SFT demonstrations come from a noisy demonstrator (some answers wrong, in the wrong
//! language or rambling), so SFT alone imitates those flaws; the K = 4 rankings are ordered by the
//! oracle with some label noise, so a reward model can learn it and PPO can beat SFT.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::error::{DataError, Result};

const EN_WORDS: [&str; 11] = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"];
const ZH_WORDS: [&str; 11] = ["零", "一", "二", "三", "四", "五", "六", "七", "八", "九", "十"];

/// Demo tasks. Operands are small so a ~1M-parameter model can learn them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// a + b, a, b ≤ 9
    Add(u32, u32),
    /// the larger of two different numbers ≤ 20
    Bigger(u32, u32),
    /// a number ≤ 10 written as a word
    Word(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

/// A demo prompt: task and language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoPrompt {
    pub task: Task,
    pub lang: Lang,
}

impl DemoPrompt {
    pub fn text(&self) -> String {
        match (self.task, self.lang) {
            (Task::Add(a, b), Lang::En) => format!("What is {a} plus {b}?"),
            (Task::Add(a, b), Lang::Zh) => format!("{a}加{b}等于多少？"),
            (Task::Bigger(a, b), Lang::En) => format!("Which is bigger, {a} or {b}?"),
            (Task::Bigger(a, b), Lang::Zh) => format!("{a}和{b}哪个大？"),
            (Task::Word(n), Lang::En) => format!("Write the number {n} in words."),
            (Task::Word(n), Lang::Zh) => format!("用汉字写出数字{n}。"),
        }
    }

    /// Recognises a demo prompt's text (the oracle's way in).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let nums = integers(text);
        let zh = has_cjk(text);
        let lang = if zh { Lang::Zh } else { Lang::En };
        let task = if (text.starts_with("What is ") && text.contains(" plus ")) || (zh && text.contains('加') && text.contains("等于多少")) {
            Task::Add(*nums.first()?, *nums.get(1)?)
        } else if text.starts_with("Which is bigger") || (zh && text.contains("哪个大")) {
            Task::Bigger(*nums.first()?, *nums.get(1)?)
        } else if text.starts_with("Write the number") || text.starts_with("用汉字写出数字") {
            Task::Word(*nums.first()?)
        } else {
            return None;
        };
        let p = DemoPrompt { task, lang };
        (p.text() == text).then_some(p)
    }

    fn answer_value(&self) -> u32 {
        match self.task {
            Task::Add(a, b) => a + b,
            Task::Bigger(a, b) => a.max(b),
            Task::Word(n) => n,
        }
    }

    /// The ideal answer, in `lang` (a demonstrator may pick the wrong one) with `value` as its answer.
    fn answer(&self, lang: Lang, value: u32) -> String {
        match (self.task, lang) {
            (Task::Add(a, b), Lang::En) => format!("{a} plus {b} is {value}."),
            (Task::Add(a, b), Lang::Zh) => format!("{a}加{b}等于{value}。"),
            (Task::Bigger(..), Lang::En) => format!("{value} is bigger."),
            (Task::Bigger(..), Lang::Zh) => format!("{value}更大。"),
            (Task::Word(n), Lang::En) => format!("{n} is {}.", EN_WORDS[value.min(10) as usize]),
            (Task::Word(n), Lang::Zh) => format!("{n}写作{}。", ZH_WORDS[value.min(10) as usize]),
        }
    }

    pub fn ideal_answer(&self) -> String {
        self.answer(self.lang, self.answer_value())
    }

    /// What a verifier checks a response against (the record's `answer` field): the number, or for
    /// the word task the number word in the prompt's language.
    pub fn answer_field(&self) -> String {
        self.written_answer(self.answer_value())
    }

    /// `value` as the answer field writes it: a number, or for the word task the number word in
    /// the prompt's language.
    fn written_answer(&self, value: u32) -> String {
        match (self.task, self.lang) {
            (Task::Word(_), Lang::En) => EN_WORDS[value as usize].to_string(),
            (Task::Word(_), Lang::Zh) => ZH_WORDS[value as usize].to_string(),
            _ => value.to_string(),
        }
    }

    fn record(&self) -> serde_json::Value {
        json!({ "prompt": self.text(), "answer": self.answer_field() })
    }
}

fn has_cjk(s: &str) -> bool {
    s.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c))
}

fn integers(s: &str) -> Vec<u32> {
    s.split(|c: char| !c.is_ascii_digit()).filter(|t| !t.is_empty() && t.len() < 6).filter_map(|t| t.parse().ok()).collect()
}

/// The oracle's verdict on one response.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OracleScore {
    /// The answer is right: 1.0.
    pub correct: bool,
    /// Written in the prompt's language: 0.5.
    pub language: bool,
    /// One sentence ending in the language's full stop, ≤ 40 characters: 0.5.
    pub format: bool,
}

impl OracleScore {
    pub fn total(&self) -> f64 {
        f64::from(u8::from(self.correct)) + 0.5 * f64::from(u8::from(self.language)) + 0.5 * f64::from(u8::from(self.format))
    }
}

/// The answer `response` states, as the oracle reads it and in the form of the record's `answer`
/// field: a sum's last number, the larger number's first ("7 is bigger."), the one number word
/// named (in either language) as the prompt's language writes it; None when there is none, when
/// several number words are named, or when `prompt` is not a demo prompt.
pub fn stated_answer(prompt: &str, response: &str) -> Option<String> {
    let p = DemoPrompt::parse(prompt)?;
    stated_value(&p, response.trim()).map(|v| p.written_answer(v))
}

fn stated_value(p: &DemoPrompt, r: &str) -> Option<u32> {
    match p.task {
        Task::Add(..) => integers(r).last().copied(),
        Task::Bigger(..) => integers(r).first().copied(),
        Task::Word(_) => {
            let en = r.to_lowercase();
            let en_words: Vec<&str> = en.split(|c: char| !c.is_ascii_alphabetic()).collect();
            let named: Vec<usize> = (0..=10).filter(|&i| en_words.contains(&EN_WORDS[i]) || r.contains(ZH_WORDS[i])).collect();
            match named[..] {
                [one] => Some(one as u32),
                _ => None,
            }
        }
    }
}

/// Scores `response` to the demo prompt `prompt`; None when `prompt` is not a demo prompt.
pub fn oracle(prompt: &str, response: &str) -> Option<OracleScore> {
    let p = DemoPrompt::parse(prompt)?;
    let r = response.trim();
    // The right number, and for the word task no other number word.
    let correct = stated_value(&p, r) == Some(p.answer_value());
    let zh = has_cjk(r);
    let language = match p.lang {
        Lang::Zh => zh,
        Lang::En => !zh && r.chars().any(|c| c.is_ascii_alphabetic()),
    };
    let stop = if p.lang == Lang::Zh { '。' } else { '.' };
    let stops = r.chars().filter(|&c| c == '.' || c == '。' || c == '!' || c == '！').count();
    let format = r.ends_with(stop) && stops == 1 && r.chars().count() <= 40;
    Some(OracleScore { correct, language, format })
}

/// Sizes of the demo set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemoSizes {
    pub pretrain_docs: usize,
    pub sft: usize,
    pub rankings: usize,
    pub prompts: usize,
}

impl Default for DemoSizes {
    fn default() -> Self {
        Self { pretrain_docs: 3000, sft: 2000, rankings: 1500, prompts: 1000 }
    }
}

/// Every (task, language) in the demo's space.
fn all_prompts() -> Vec<DemoPrompt> {
    let mut tasks = Vec::new();
    for a in 0..=9 {
        for b in 0..=9 {
            tasks.push(Task::Add(a, b));
        }
    }
    for a in 0..=20 {
        for b in 0..=20 {
            if a != b {
                tasks.push(Task::Bigger(a, b));
            }
        }
    }
    tasks.extend((0..=10).map(Task::Word));
    tasks.into_iter().flat_map(|task| [Lang::En, Lang::Zh].map(|lang| DemoPrompt { task, lang })).collect()
}

/// Held-out prompts are a fixed slice of the space (every 7th), never seen in SFT, RM or PPO data.
fn split_space() -> (Vec<DemoPrompt>, Vec<DemoPrompt>) {
    let (mut train, mut heldout) = (Vec::new(), Vec::new());
    for (i, p) in all_prompts().into_iter().enumerate() {
        if i % 7 == 3 {
            heldout.push(p)
        } else {
            train.push(p)
        }
    }
    (train, heldout)
}

/// Flaws a response may have.
#[derive(Debug, Clone, Copy, Default)]
struct Flaws {
    wrong_value: bool,
    wrong_language: bool,
    rambling: bool,
}

fn respond(p: &DemoPrompt, flaws: Flaws, rng: &mut ChaCha8Rng) -> String {
    let right = p.answer_value();
    let value = if flaws.wrong_value {
        let delta = rng.random_range(1..=3);
        if right >= delta && rng.random_bool(0.5) { right - delta } else { right + delta }
    } else {
        right
    };
    let value = if matches!(p.task, Task::Word(_)) { value.min(10) } else { value };
    let value = if matches!(p.task, Task::Word(_)) && flaws.wrong_value && value == right { (right + 1) % 11 } else { value };
    let lang = match (p.lang, flaws.wrong_language) {
        (l, false) => l,
        (Lang::En, true) => Lang::Zh,
        (Lang::Zh, true) => Lang::En,
    };
    let mut text = p.answer(lang, value);
    if flaws.rambling {
        text.push_str(match lang {
            Lang::En => [" I hope this helps you a lot!", " Let me know if you need more.", " That is my answer"][rng.random_range(0..3)],
            Lang::Zh => ["希望这对你有很大帮助！", "如果还需要什么请告诉我。", "这就是我的答案"][rng.random_range(0..3)],
        });
    }
    text
}

/// A demonstrator that is right about 55% of the time and otherwise makes one kind of mistake.
fn noisy_demonstration(p: &DemoPrompt, rng: &mut ChaCha8Rng) -> String {
    let mut flaws = Flaws::default();
    match rng.random_range(0..100) {
        0..55 => {}
        55..70 => flaws.wrong_value = true,
        70..85 => flaws.wrong_language = true,
        _ => flaws.rambling = true,
    }
    respond(p, flaws, rng)
}

fn pretrain_doc(rng: &mut ChaCha8Rng) -> String {
    // Facts in both languages, several to a document.
    let (train, _) = split_space();
    let n = rng.random_range(3..=6);
    let mut lines = Vec::with_capacity(n);
    for _ in 0..n {
        let p = train[rng.random_range(0..train.len())];
        let lang = if rng.random_bool(0.5) { Lang::En } else { Lang::Zh };
        lines.push(p.answer(lang, p.answer_value()));
    }
    lines.join(" ")
}

/// Writes the demo set into `out`: `pretrain.jsonl`, `sft.jsonl` (ColossalChat messages),
/// `rankings.jsonl` (K = 4, `completions` + `ranking`, 1 = best), `prompts.jsonl` and
/// `heldout_prompts.jsonl` (`prompt` + `answer`: verifiable), and `manifest.json`. Byte-identical for the same seed.
pub fn write_demo(out: &Path, seed: u64, sizes: DemoSizes) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
    let (train, heldout) = split_space();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let pick = |rng: &mut ChaCha8Rng| train[rng.random_range(0..train.len())];

    let pretrain: Vec<_> = (0..sizes.pretrain_docs).map(|_| json!({ "text": pretrain_doc(&mut rng) })).collect();

    let sft: Vec<_> = (0..sizes.sft)
        .map(|_| {
            let turns = if rng.random_bool(0.25) { 2 } else { 1 };
            let mut messages = Vec::new();
            for _ in 0..turns {
                let p = pick(&mut rng);
                messages.push(json!({ "from": "user", "content": p.text() }));
                messages.push(json!({ "from": "assistant", "content": noisy_demonstration(&p, &mut rng) }));
            }
            json!({ "messages": messages })
        })
        .collect();

    let rankings: Vec<_> = (0..sizes.rankings)
        .map(|_| {
            let p = pick(&mut rng);
            let prompt = p.text();
            // One good answer and three distinct flawed ones (independent flaws, redrawn until new).
            let mut completions = vec![respond(&p, Flaws::default(), &mut rng)];
            while completions.len() < 4 {
                let flaws = Flaws { wrong_value: rng.random_bool(0.5), wrong_language: rng.random_bool(0.4), rambling: rng.random_bool(0.4) };
                let text = respond(&p, flaws, &mut rng);
                if !completions.contains(&text) {
                    completions.push(text);
                }
            }
            let scores: Vec<f64> = completions.iter().map(|c| oracle(&prompt, c).map_or(0.0, |s| s.total())).collect();
            // Rank 1 = best; equal scores tie.
            let mut ranking: Vec<u32> = scores.iter().map(|s| 1 + scores.iter().filter(|&&o| o > *s).count() as u32).collect();
            // Label noise: 10% of records get two responses' ranks swapped.
            if rng.random_bool(0.10) {
                let i = rng.random_range(0..4);
                let j = (i + rng.random_range(1..4)) % 4;
                ranking.swap(i, j);
            }
            // Shuffle presentation order so position carries no signal.
            let mut order: Vec<usize> = (0..4).collect();
            for i in (1..4).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
            json!({
                "prompt": prompt,
                "completions": order.iter().map(|&i| completions[i].clone()).collect::<Vec<_>>(),
                "ranking": order.iter().map(|&i| ranking[i]).collect::<Vec<_>>(),
            })
        })
        .collect();

    let prompts: Vec<_> = (0..sizes.prompts).map(|_| pick(&mut rng).record()).collect();
    let held: Vec<_> = heldout.iter().map(DemoPrompt::record).collect();

    let write = |name: &str, rows: &[serde_json::Value]| -> Result<()> {
        let path = out.join(name);
        let mut text = Vec::new();
        for r in rows {
            serde_json::to_writer(&mut text, r).expect("JSON value serialises");
            text.push(b'\n');
        }
        Ok(rlhf_files::write_atomic(&path, &text)?)
    };
    write("pretrain.jsonl", &pretrain)?;
    write("sft.jsonl", &sft)?;
    write("rankings.jsonl", &rankings)?;
    write("prompts.jsonl", &prompts)?;
    write("heldout_prompts.jsonl", &held)?;
    let manifest = json!({
        "seed": seed,
        "pretrain_docs": sizes.pretrain_docs,
        "sft": sizes.sft,
        "rankings": sizes.rankings,
        "prompts": sizes.prompts,
        "heldout_prompts": held.len(),
        "oracle": "correct answer 1.0 + prompt's language 0.5 + one short sentence with the right full stop 0.5",
    });
    Ok(rlhf_files::write_atomic(&out.join("manifest.json"), serde_json::to_string_pretty(&manifest).expect("JSON"))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_round_trip_through_the_parser() {
        for p in all_prompts() {
            assert_eq!(DemoPrompt::parse(&p.text()), Some(p), "{}", p.text());
        }
        assert_eq!(DemoPrompt::parse("What is love?"), None);
    }

    #[test]
    fn oracle_scores_by_hand() {
        let s = |p: &str, r: &str| oracle(p, r).unwrap().total();
        assert_eq!(s("What is 3 plus 5?", "3 plus 5 is 8."), 2.0);
        assert_eq!(s("What is 3 plus 5?", "3 plus 5 is 9."), 1.0); // wrong
        assert_eq!(s("What is 3 plus 5?", "3加5等于8。"), 1.0); // right, wrong language, wrong full stop
        assert_eq!(s("What is 3 plus 5?", "3 plus 5 is 8. I hope this helps you a lot!"), 1.5); // rambling
        assert_eq!(s("3加5等于多少？", "3加5等于8。"), 2.0);
        assert_eq!(s("3和17哪个大？", "17更大。"), 2.0);
        assert_eq!(s("Which is bigger, 3 or 17?", "3 is bigger."), 1.0);
        assert_eq!(s("Write the number 7 in words.", "7 is seven."), 2.0);
        assert_eq!(s("用汉字写出数字7。", "7写作七。"), 2.0);
        assert_eq!(s("用汉字写出数字7。", "7写作八。"), 1.0);
        assert_eq!(s("用汉字写出数字7。", ""), 0.0);
        // Long answers are not rewarded: length is not quality.
        assert_eq!(s("What is 3 plus 5?", "3 plus 5 is 8 and that is really the whole answer."), 1.5);
    }

    #[test]
    fn demonstrations_are_noisy_and_ideal_answers_are_perfect() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let (train, _) = split_space();
        let mut total = 0.0;
        for p in &train {
            assert_eq!(oracle(&p.text(), &p.ideal_answer()).unwrap().total(), 2.0, "{}", p.text());
            total += oracle(&p.text(), &noisy_demonstration(p, &mut rng)).unwrap().total();
        }
        let mean = total / train.len() as f64;
        assert!((1.6..1.85).contains(&mean), "mean demonstration score {mean}");
    }
}

//! Self-Instruct's loop, the parts that need no network (Wang et al. 2023, §2): the prompt that asks
//! the teacher for new tasks given in-context examples, the parse of its numbered list, and the
//! filters a new instruction must pass to join the pool — ROUGE-L below 0.7 against every pooled
//! instruction, a length in bounds, no keyword a text-only model cannot act on (image, graph, file,
//! draw, plot…), not opening with punctuation, not a duplicate — each drop counted by reason.

use std::collections::BTreeMap;

use rand::seq::index::sample;
use rand::Rng;

use crate::rouge::{rouge_l_tokens, tokens};

/// Self-Instruct's novelty threshold.
pub const DEFAULT_MAX_SIMILARITY: f64 = 0.7;

/// Keywords of tasks a language model cannot do (Self-Instruct's list, plus the Chinese words for
/// the same things).
pub const DEFAULT_BLACKLIST: &[&str] = &[
    "image", "images", "picture", "pictures", "photo", "photos", "graph", "graphs", "chart", "diagram", "flowchart",
    "file", "files", "map", "maps", "draw", "plot", "video", "audio", "music", "go to",
    "图片", "图像", "照片", "画", "图表", "流程图", "文件", "地图", "视频", "音频", "音乐",
];

/// The filters of [`InstructionPool::offer`].
#[derive(Debug, Clone, PartialEq)]
pub struct FilterConfig {
    /// A new instruction whose ROUGE-L with any pooled one reaches this is dropped.
    pub max_similarity: f64,
    /// Fewer tokens than this (words, or CJK characters) is too short.
    pub min_tokens: usize,
    /// More tokens than this is too long.
    pub max_tokens: usize,
    /// Keywords, matched as whole words (English) or substrings (Chinese), case-insensitively.
    pub blacklist: Vec<String>,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self {
            max_similarity: DEFAULT_MAX_SIMILARITY,
            // Self-Instruct drops instructions of 3 words or fewer, and over 150.
            min_tokens: 4,
            max_tokens: 150,
            blacklist: DEFAULT_BLACKLIST.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// What the filters said about one new instruction.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Kept,
    /// Too close to an instruction already in the pool.
    TooSimilar { to: String, rouge_l: f64 },
    TooShort,
    TooLong,
    Blacklisted(String),
    StartsWithPunctuation,
    /// The same text (up to case and spacing) is in the pool.
    Duplicate,
}

impl Verdict {
    /// The reason's name in a summary.
    pub fn reason(&self) -> &'static str {
        match self {
            Verdict::Kept => "kept",
            Verdict::TooSimilar { .. } => "rouge_l",
            Verdict::TooShort => "too_short",
            Verdict::TooLong => "too_long",
            Verdict::Blacklisted(_) => "blacklist",
            Verdict::StartsWithPunctuation => "punctuation",
            Verdict::Duplicate => "duplicate",
        }
    }
}

/// The instructions pooled so far (seeds first), their tokens, and how many offers each reason took.
#[derive(Debug, Clone, Default)]
pub struct InstructionPool {
    pub config: FilterConfig,
    instructions: Vec<String>,
    token_lists: Vec<Vec<String>>,
    /// Seeds come first; the rest were generated.
    seeds: usize,
    counts: BTreeMap<&'static str, usize>,
}

/// Case and whitespace folded, for duplicate detection.
fn normalized(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

impl InstructionPool {
    /// A pool holding the seed instructions (unfiltered: they are the human-written start).
    pub fn new(config: FilterConfig, seeds: impl IntoIterator<Item = String>) -> Self {
        let mut pool = Self { config, ..Self::default() };
        for s in seeds {
            pool.push(s);
        }
        pool.seeds = pool.instructions.len();
        pool
    }

    fn push(&mut self, instruction: String) {
        self.token_lists.push(tokens(&instruction));
        self.instructions.push(instruction);
    }

    pub fn instructions(&self) -> &[String] {
        &self.instructions
    }

    /// The generated instructions (the pool after its seeds).
    pub fn generated(&self) -> &[String] {
        &self.instructions[self.seeds..]
    }

    /// Offers per reason (`kept`, `rouge_l`, `too_short`, …).
    pub fn counts(&self) -> &BTreeMap<&'static str, usize> {
        &self.counts
    }

    /// Judges `instruction` against the filters and the pool, adds it when it passes, and counts
    /// the verdict.
    pub fn offer(&mut self, instruction: &str) -> Verdict {
        let verdict = self.judge(instruction);
        *self.counts.entry(verdict.reason()).or_default() += 1;
        if verdict == Verdict::Kept {
            self.push(instruction.trim().to_string());
        }
        verdict
    }

    /// The verdict on `instruction`, the cheap checks first.
    pub fn judge(&self, instruction: &str) -> Verdict {
        let text = instruction.trim();
        let toks = tokens(text);
        if toks.len() < self.config.min_tokens {
            return Verdict::TooShort;
        }
        if toks.len() > self.config.max_tokens {
            return Verdict::TooLong;
        }
        if text.chars().next().is_some_and(|c| !c.is_alphanumeric()) {
            return Verdict::StartsWithPunctuation;
        }
        let lower = text.to_lowercase();
        for word in &self.config.blacklist {
            let w = word.to_lowercase();
            let hit = if !w.is_ascii() { lower.contains(&w) } else { contains_run(&toks, &tokens(&w)) };
            if hit {
                return Verdict::Blacklisted(word.clone());
            }
        }
        let norm = normalized(text);
        if self.instructions.iter().any(|i| normalized(i) == norm) {
            return Verdict::Duplicate;
        }
        let closest = self.token_lists.iter().enumerate().map(|(i, t)| (i, rouge_l_tokens(&toks, t))).max_by(|a, b| a.1.total_cmp(&b.1));
        match closest {
            Some((i, score)) if score >= self.config.max_similarity => Verdict::TooSimilar { to: self.instructions[i].clone(), rouge_l: score },
            _ => Verdict::Kept,
        }
    }

    /// In-context examples for the next request: `from_seeds` seed instructions and up to
    /// `from_generated` generated ones (Self-Instruct: 6 and 2), seeds first, without repeats.
    pub fn examples<R: Rng>(&self, from_seeds: usize, from_generated: usize, rng: &mut R) -> Vec<&str> {
        let generated = self.instructions.len() - self.seeds;
        let mut out: Vec<&str> = sample(rng, self.seeds, from_seeds.min(self.seeds)).into_iter().map(|i| self.instructions[i].as_str()).collect();
        out.extend(sample(rng, generated, from_generated.min(generated)).into_iter().map(|i| self.instructions[self.seeds + i].as_str()));
        out
    }
}

/// Whether `needle` occurs in `hay` as a contiguous run of tokens.
fn contains_run(hay: &[String], needle: &[String]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The request for new tasks: the examples as a numbered list, the teacher to continue it with
/// `count` more, one per line.
pub fn task_prompt(examples: &[&str], count: usize) -> String {
    let mut s = format!(
        "Come up with {count} new, diverse tasks that a text-only AI assistant could be asked to do. \
         Vary the verbs and the kinds of task (open questions, writing, classification, rewriting, reasoning, \
         coding, math, brainstorming), and write each in the same language as some of the examples (English or \
         Chinese). Each task must be answerable in text: nothing about images, audio, files or the web. \
         Continue the numbered list, one task per number, and write nothing else.\n\n"
    );
    for (i, e) in examples.iter().enumerate() {
        s.push_str(&format!("{}. {}\n", i + 1, e.split_whitespace().collect::<Vec<_>>().join(" ")));
    }
    s.push_str(&format!("{}.", examples.len() + 1));
    s
}

/// The number that opens a list line ("12. ", "3) ", "4、", "5: "), and the rest of the line.
fn numbered(line: &str) -> Option<&str> {
    let t = line.trim_start();
    let digits = t.chars().take_while(char::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let rest = &t[digits..];
    let mark = rest.chars().next()?;
    matches!(mark, '.' | ')' | '、' | ':' | '：').then(|| rest[mark.len_utf8()..].trim())
}

/// The items of the teacher's numbered list. Text before the first number is an item too (the
/// prompt ended with the next number, which a completion model does not repeat); lines without a
/// number continue the item above; a leading "Instruction:" / "Task:" label is dropped; empty items
/// are skipped.
pub fn parse_numbered_list(text: &str) -> Vec<String> {
    let mut items: Vec<String> = vec![String::new()];
    for line in text.lines() {
        match numbered(line) {
            Some(rest) => items.push(rest.to_string()),
            None => {
                let last = items.last_mut().expect("starts with one item");
                if !line.trim().is_empty() {
                    if !last.is_empty() {
                        last.push(' ');
                    }
                    last.push_str(line.trim());
                }
            }
        }
    }
    items
        .into_iter()
        .map(|i| {
            let t = i.trim();
            ["Instruction:", "Task:", "指令：", "任务："].iter().find_map(|p| t.strip_prefix(p)).unwrap_or(t).trim().to_string()
        })
        .filter(|i| !i.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn pool() -> InstructionPool {
        InstructionPool::new(
            FilterConfig::default(),
            ["Give three tips for staying healthy.", "Translate the sentence into French.", "写一首关于秋天的短诗。"].map(String::from),
        )
    }

    /// A near-duplicate of a seed is dropped with its score; a new task joins the pool.
    #[test]
    fn rouge_l_filter_drops_a_near_duplicate() {
        let mut p = pool();
        // 6 tokens each, LCS "give three tips for staying healthy" minus "three"→"two": 5 → 10/12.
        let v = p.offer("Give two tips for staying healthy.");
        assert_eq!(v, Verdict::TooSimilar { to: "Give three tips for staying healthy.".into(), rouge_l: 10.0 / 12.0 });
        assert_eq!(p.offer("Explain how a rainbow forms in simple words."), Verdict::Kept);
        // The Chinese near-duplicate: 写一首关于春天的短诗 vs 写一首关于秋天的短诗, 9 of 10 characters shared → 0.9.
        assert!(matches!(p.offer("写一首关于春天的短诗。"), Verdict::TooSimilar { rouge_l, .. } if (rouge_l - 0.9).abs() < 1e-12));
        assert_eq!(p.offer("解释一下为什么天空是蓝色的。"), Verdict::Kept);
        assert_eq!(p.generated().len(), 2);
        assert_eq!(p.counts()["kept"], 2);
        assert_eq!(p.counts()["rouge_l"], 2);
    }

    #[test]
    fn each_filter_names_its_reason() {
        let mut p = pool();
        assert_eq!(p.offer("Be nice."), Verdict::TooShort);
        assert_eq!(p.offer(&"word ".repeat(151)), Verdict::TooLong);
        assert_eq!(p.offer("Draw a picture of a cat on a sofa."), Verdict::Blacklisted("picture".into()));
        assert_eq!(p.offer("请根据这张图片写一段描述。"), Verdict::Blacklisted("图片".into()));
        // "map" as a word, never inside another word: "mapping" passes that check.
        assert_eq!(p.offer("Explain what a hash mapping does in Python."), Verdict::Kept);
        assert_eq!(p.offer("- List five fruits that are red."), Verdict::StartsWithPunctuation);
        assert_eq!(p.offer("translate the sentence   into FRENCH."), Verdict::Duplicate);
        let c = p.counts();
        assert_eq!((c["too_short"], c["too_long"], c["blacklist"], c["punctuation"], c["duplicate"], c["kept"]), (1, 1, 2, 1, 1, 1));
    }

    #[test]
    fn numbered_lists_parse_in_both_languages() {
        let text = "Describe a sunset.\n4. Instruction: Summarize the plot of Hamlet\n   in two sentences.\n5) 列出三种水果。\n6、\n7：Write a haiku.\n";
        assert_eq!(parse_numbered_list(text), ["Describe a sunset.", "Summarize the plot of Hamlet in two sentences.", "列出三种水果。", "Write a haiku."]);
    }

    #[test]
    fn the_prompt_numbers_its_examples_and_the_next_slot() {
        let p = task_prompt(&["Give three tips.", "写一首诗。"], 5);
        assert!(p.contains("Come up with 5 new"));
        assert!(p.ends_with("1. Give three tips.\n2. 写一首诗。\n3."), "{p}");
    }

    #[test]
    fn examples_mix_seeds_and_generated_without_repeats() {
        let mut p = pool();
        for t in ["Explain how tides work on Earth.", "List four uses of baking soda.", "Name three planets with rings."] {
            assert_eq!(p.offer(t), Verdict::Kept);
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let e = p.examples(2, 2, &mut rng);
        assert_eq!(e.len(), 4);
        assert!(e[..2].iter().all(|x| p.instructions()[..3].contains(&x.to_string())));
        assert!(e[2..].iter().all(|x| p.generated().contains(&x.to_string())));
        assert_ne!(e[0], e[1]);
        assert_ne!(e[2], e[3]);
        // Asking for more than there are gives what there is.
        assert_eq!(p.examples(10, 10, &mut rng).len(), 6);
    }
}

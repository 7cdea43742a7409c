//! Arithmetic word problems with verifiable answers, for critic-free RL on a real instruct model:
//! one- and two-step problems (add, take away, groups of, share equally, buy then use) with small
//! numbers, in varied wording, each a prompt record `{"prompt", "question", "answer", "kind"}`.
//!
//! The prompt asks for the final answer after `####` (GSM8K's form, which the `math_answer`
//! verifier reads); `question` is the bare problem. Held-out problems are a fixed slice of the
//! arithmetic (every 7th (kind, numbers) of the space), so no held-out sum, difference or product
//! is ever trained on, whatever the names and objects around it.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::error::{DataError, Result};

/// What every prompt asks for after the problem.
pub const INSTRUCTION: &str = "Give the final answer after ####.";

const NAMES: [&str; 12] = ["Tom", "Anna", "Li Wei", "Sara", "Omar", "Mia", "Ravi", "Elena", "Kofi", "Yuki", "Ben", "Lucia"];
/// (plural, container) pairs.
const ITEMS: [(&str, &str); 10] = [
    ("apples", "baskets"),
    ("pencils", "boxes"),
    ("stickers", "sheets"),
    ("books", "shelves"),
    ("marbles", "bags"),
    ("cookies", "plates"),
    ("cards", "packs"),
    ("eggs", "cartons"),
    ("flowers", "vases"),
    ("coins", "jars"),
];

/// The arithmetic of a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Problem {
    /// a + b, 2 ≤ a, b ≤ 20
    Add(u32, u32),
    /// a − b, 5 ≤ a ≤ 30, 1 ≤ b < a
    TakeAway(u32, u32),
    /// a groups of b, 2 ≤ a, b ≤ 9
    Groups(u32, u32),
    /// a·b shared equally by a, 2 ≤ a, b ≤ 9 (the answer is b)
    Share(u32, u32),
    /// a + b − c: has a, gets b, uses c (c < a + b), 3 ≤ a ≤ 15, 2 ≤ b ≤ 10
    TwoStep(u32, u32, u32),
}

impl Problem {
    pub fn answer(self) -> i64 {
        let v = |x: u32| i64::from(x);
        match self {
            Problem::Add(a, b) => v(a) + v(b),
            Problem::TakeAway(a, b) => v(a) - v(b),
            Problem::Groups(a, b) => v(a) * v(b),
            Problem::Share(_, b) => v(b),
            Problem::TwoStep(a, b, c) => v(a) + v(b) - v(c),
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Problem::Add(..) => "add",
            Problem::TakeAway(..) => "take_away",
            Problem::Groups(..) => "groups",
            Problem::Share(..) => "share",
            Problem::TwoStep(..) => "two_step",
        }
    }

    /// The problem in words, with `name` and `item` (one of the wordings, picked by `variant`).
    pub fn question(self, name: &str, (items, containers): (&str, &str), variant: usize) -> String {
        match (self, variant % 2) {
            (Problem::Add(a, b), 0) => format!("{name} has {a} {items}. {name} gets {b} more {items}. How many {items} does {name} have now?"),
            (Problem::Add(a, b), _) => format!("There are {a} {items} on the table and {name} puts {b} more there. How many {items} are on the table?"),
            (Problem::TakeAway(a, b), 0) => format!("{name} had {a} {items} and gave {b} of them away. How many {items} does {name} have left?"),
            (Problem::TakeAway(a, b), _) => format!("A shop had {a} {items}. It sold {b} of them. How many {items} are left in the shop?"),
            (Problem::Groups(a, b), 0) => format!("There are {a} {containers} with {b} {items} in each. How many {items} are there in total?"),
            (Problem::Groups(a, b), _) => format!("{name} buys {a} {containers} of {items}. Each has {b} {items}. How many {items} does {name} buy?"),
            (Problem::Share(a, b), 0) => format!("{name} shares {} {items} equally among {a} friends. How many {items} does each friend get?", a * b),
            (Problem::Share(a, b), _) => format!("{} {items} are put into {a} {containers}, the same number in each. How many {items} are in each of the {containers}?", a * b),
            (Problem::TwoStep(a, b, c), 0) => format!("{name} has {a} {items}, gets {b} more, and then gives away {c}. How many {items} does {name} have now?"),
            (Problem::TwoStep(a, b, c), _) => format!("A class had {a} {items}. The teacher brought {b} more and the children used {c}. How many {items} are left?"),
        }
    }
}

/// Every problem of the space, in a fixed order.
fn space() -> Vec<Problem> {
    let mut all = Vec::new();
    for a in 2..=20 {
        for b in 2..=20 {
            all.push(Problem::Add(a, b));
        }
    }
    for a in 5..=30 {
        for b in 1..a {
            all.push(Problem::TakeAway(a, b));
        }
    }
    for a in 2..=9 {
        for b in 2..=9 {
            all.push(Problem::Groups(a, b));
            all.push(Problem::Share(a, b));
        }
    }
    for a in 3..=15 {
        for b in 2..=10 {
            for c in 1..(a + b) {
                all.push(Problem::TwoStep(a, b, c));
            }
        }
    }
    all
}

/// (train, held-out): every 7th problem of the space is held out.
fn split_space() -> (Vec<Problem>, Vec<Problem>) {
    let (mut train, mut heldout) = (Vec::new(), Vec::new());
    for (i, p) in space().into_iter().enumerate() {
        if i % 7 == 3 { heldout.push(p) } else { train.push(p) }
    }
    (train, heldout)
}

/// The kinds, drawn equally often (the space has far more two-step problems than products).
fn draw(pool: &[Problem], rng: &mut ChaCha8Rng) -> Problem {
    const KINDS: [&str; 5] = ["add", "take_away", "groups", "share", "two_step"];
    let kind = KINDS[rng.random_range(0..KINDS.len())];
    let of_kind: Vec<&Problem> = pool.iter().filter(|p| p.kind() == kind).collect();
    *of_kind[rng.random_range(0..of_kind.len())]
}

fn record(p: Problem, rng: &mut ChaCha8Rng) -> serde_json::Value {
    let name = NAMES[rng.random_range(0..NAMES.len())];
    let item = ITEMS[rng.random_range(0..ITEMS.len())];
    let question = p.question(name, item, rng.random_range(0..2));
    json!({ "prompt": format!("{question} {INSTRUCTION}"), "question": question, "answer": p.answer().to_string(), "kind": p.kind() })
}

/// Writes `prompts.jsonl` (`prompts` problems drawn from the training slice), `heldout_prompts.jsonl`
/// (`heldout` distinct held-out problems) and `manifest.json` into `out`. Byte-identical for the
/// same seed and sizes.
pub fn write_word_problems(out: &Path, seed: u64, prompts: usize, heldout: usize) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
    let (train, held) = split_space();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let train_rows: Vec<_> = (0..prompts).map(|_| record(draw(&train, &mut rng), &mut rng)).collect();
    let mut held_problems: Vec<Problem> = Vec::new();
    // Distinct held-out problems, the kinds equally often, until the slice runs out.
    let mut tries = 0;
    while held_problems.len() < heldout.min(held.len()) && tries < 100 * heldout.max(1) {
        let p = draw(&held, &mut rng);
        if !held_problems.contains(&p) {
            held_problems.push(p);
        }
        tries += 1;
    }
    let held_rows: Vec<_> = held_problems.iter().map(|&p| record(p, &mut rng)).collect();
    let write = |name: &str, rows: &[serde_json::Value]| -> Result<()> {
        let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
        Ok(rlhf_files::write_atomic(&out.join(name), text.as_bytes())?)
    };
    write("prompts.jsonl", &train_rows)?;
    write("heldout_prompts.jsonl", &held_rows)?;
    let manifest = json!({
        "set": "word_problems",
        "seed": seed,
        "prompts": train_rows.len(),
        "heldout_prompts": held_rows.len(),
        "instruction": INSTRUCTION,
        "kinds": ["add", "take_away", "groups", "share", "two_step"],
    });
    Ok(rlhf_files::write_atomic(&out.join("manifest.json"), serde_json::to_string_pretty(&manifest).expect("JSON"))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers worked by hand: 7 + 5 = 12; 16 − 10 = 6; 4 boxes of 6 = 24; 24 shared by 4 = 6;
    /// 9 + 4 − 5 = 8.
    #[test]
    fn answers_by_hand() {
        assert_eq!(Problem::Add(7, 5).answer(), 12);
        assert_eq!(Problem::TakeAway(16, 10).answer(), 6);
        assert_eq!(Problem::Groups(4, 6).answer(), 24);
        assert_eq!(Problem::Share(4, 6).answer(), 6);
        assert_eq!(Problem::Share(4, 6).question("Tom", ("apples", "baskets"), 0), "Tom shares 24 apples equally among 4 friends. How many apples does each friend get?");
        assert_eq!(Problem::TwoStep(9, 4, 5).answer(), 8);
        assert!(space().iter().all(|p| p.answer() > 0), "every answer is a positive whole number");
    }

    #[test]
    fn held_out_arithmetic_is_never_trained_on_and_files_are_deterministic() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write_word_problems(a.path(), 3, 500, 120).unwrap();
        write_word_problems(b.path(), 3, 500, 120).unwrap();
        let read = |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).unwrap();
        assert_eq!(read(a.path(), "prompts.jsonl"), read(b.path(), "prompts.jsonl"));
        assert_eq!(read(a.path(), "heldout_prompts.jsonl"), read(b.path(), "heldout_prompts.jsonl"));
        let (train, held) = split_space();
        assert!(held.iter().all(|p| !train.contains(p)));
        let rows = |f: &str| -> Vec<serde_json::Value> { read(a.path(), f).lines().map(|l| serde_json::from_str(l).unwrap()).collect() };
        let (t, h) = (rows("prompts.jsonl"), rows("heldout_prompts.jsonl"));
        assert_eq!((t.len(), h.len()), (500, 120));
        let questions: std::collections::HashSet<&str> = h.iter().map(|r| r["question"].as_str().unwrap()).collect();
        assert_eq!(questions.len(), 120, "held-out problems are distinct");
        for r in t.iter().chain(&h) {
            assert!(r["prompt"].as_str().unwrap().ends_with(INSTRUCTION));
            assert!(r["answer"].as_str().unwrap().parse::<i64>().unwrap() > 0);
        }
        // Every kind is held out; products and shares have only 9 held-out problems each (64 / 7).
        for kind in ["add", "take_away", "groups", "share", "two_step"] {
            let n = h.iter().filter(|r| r["kind"] == kind).count();
            assert!((5..=60).contains(&n), "{kind}: {n} of 120 held-out problems");
        }
    }
}

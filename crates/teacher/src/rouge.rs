//! ROUGE-L (Lin 2004): the longest common subsequence of two token sequences, as an F-measure —
//! Self-Instruct's novelty test (a new instruction is kept only when its ROUGE-L against every
//! instruction already in the pool is below 0.7).
//!
//! Tokens work for Chinese as well as English: Self-Instruct's scorer (`rouge_score`) keeps only
//! `[a-z0-9]` runs, which erases Chinese entirely, so every Chinese instruction would look like a
//! duplicate of every other (0 tokens each). Here a CJK character is a token of its own, and a run of
//! other letters or digits is a word, lowercased; whitespace and punctuation separate tokens.

/// CJK ideographs, kana and hangul: scripts written without spaces, one token per character.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // hiragana, katakana
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xAC00..=0xD7AF    // hangul syllables
        | 0xF900..=0xFAFF    // CJK compatibility ideographs
        | 0x20000..=0x2FA1F) // CJK extensions B–F, compatibility supplement
}

/// The tokens ROUGE-L compares: lowercased words of letters and digits, and single CJK characters.
pub fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        if is_cjk(c) {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            out.push(c.to_string());
        } else if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        } else if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Length of the longest common subsequence (one row of the dynamic programme at a time).
pub fn lcs_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        let mut diagonal = 0;
        for (j, y) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if x == y { diagonal + 1 } else { above.max(row[j]) };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// ROUGE-L F1 of two token sequences: 2·P·R / (P + R) with P = LCS/|candidate| and R =
/// LCS/|reference|, which is 2·LCS / (|a| + |b|) — symmetric. 0 when either is empty.
pub fn rouge_l_tokens<T: PartialEq>(a: &[T], b: &[T]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    2.0 * lcs_len(a, b) as f64 / (a.len() + b.len()) as f64
}

/// ROUGE-L F1 of two texts, on [`tokens`].
pub fn rouge_l(a: &str, b: &str) -> f64 {
    rouge_l_tokens(&tokens(a), &tokens(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_words_are_lowercased_and_punctuation_dropped() {
        assert_eq!(tokens("Write a Python function, please!"), ["write", "a", "python", "function", "please"]);
        assert_eq!(tokens("GPT-4's answer: 42."), ["gpt", "4", "s", "answer", "42"]);
    }

    #[test]
    fn chinese_characters_are_tokens_of_their_own() {
        assert_eq!(tokens("写一首诗。"), ["写", "一", "首", "诗"]);
        // Mixed text: words stay words, each character its own token.
        assert_eq!(tokens("用Python写函数"), ["用", "python", "写", "函", "数"]);
    }

    /// "the cat sat on the mat" vs "the cat is on the mat": LCS "the cat on the mat" = 5 of 6 and 6,
    /// so P = R = F = 5/6.
    #[test]
    fn english_by_hand() {
        assert!((rouge_l("The cat sat on the mat.", "the cat is on the mat") - 5.0 / 6.0).abs() < 1e-12);
        // LCS of "a b c d" and "b d a": "b d" = 2 → 2·2/(4+3) = 4/7.
        assert!((rouge_l("a b c d", "b d a") - 4.0 / 7.0).abs() < 1e-12);
        assert_eq!(rouge_l("Write a poem", "write a poem!"), 1.0);
        assert_eq!(rouge_l("red green", "blue yellow"), 0.0);
        assert_eq!(rouge_l("", "anything"), 0.0);
    }

    /// 我喜欢吃苹果 (6 characters) vs 我不喜欢吃香蕉 (7): LCS 我喜欢吃 = 4, so F = 2·4/13 = 8/13.
    #[test]
    fn chinese_by_hand() {
        assert!((rouge_l("我喜欢吃苹果", "我不喜欢吃香蕉") - 8.0 / 13.0).abs() < 1e-12);
        // Two unrelated Chinese instructions share nothing (rouge_score would call them equal: both empty).
        assert_eq!(rouge_l("写一首诗", "解释量子力学"), 0.0);
    }

    #[test]
    fn lcs_is_symmetric_and_bounded() {
        let (a, b) = (tokens("x y z x y"), tokens("y x y z"));
        assert_eq!(lcs_len(&a, &b), lcs_len(&b, &a));
        // "x y z" and "y x y" are common to both; nothing of length 4 is.
        assert_eq!(lcs_len(&a, &b), 3);
    }
}

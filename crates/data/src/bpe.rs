//! Training a byte-level BPE tokenizer (the `tokenizers` crate's trainer) on a corpus, for models
//! built from scratch; the folder gets a ChatML `chat_template` and its special tokens.

use std::path::Path;

use serde_json::{json, Value};
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

use crate::encode::CHATML_TEMPLATE;
use crate::error::{DataError, Result};
use crate::reader::for_each_json_record_in;
use crate::tokenizer::Tokenizer;

/// Special tokens of trained tokenizers: padding/document end, and the ChatML turn markers.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Every string in a JSON value (message contents, instructions, texts…).
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// The text of data files of any kind: every string of every readable record (`.txt` as is).
pub fn corpus(files: &[&Path]) -> Result<Vec<String>> {
    let mut out = vec!["user\n".to_string(), "assistant\n".to_string(), "system\n".to_string()];
    for f in files {
        if f.extension().is_some_and(|e| e == "txt") {
            out.push(std::fs::read_to_string(f).map_err(|e| DataError::io(*f, e))?);
            continue;
        }
        for_each_json_record_in(f, |r| {
            if let Ok((_, v)) = r {
                strings(&v, &mut out);
            }
            Ok(())
        })?;
    }
    Ok(out)
}

/// Trains a byte-level BPE of `vocab_size` on `texts` and writes `tokenizer.json` and
/// `tokenizer_config.json` (ChatML template, `<|im_end|>` ends turns) into `out`.
pub fn train_bpe(texts: &[String], vocab_size: usize, out: &Path) -> Result<Tokenizer> {
    let err = |e: tokenizers::Error| DataError::Tokenizer { path: out.join("tokenizer.json"), message: e.to_string() };
    let mut tok = tokenizers::Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::default()));
    let specials: Vec<AddedToken> = SPECIAL_TOKENS.iter().map(|s| AddedToken::from(*s, true)).collect();
    let mut trainer: TrainerWrapper = BpeTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials.clone())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    tok.train(&mut trainer, texts.iter()).map_err(err)?;
    tok.add_special_tokens(&specials);
    std::fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
    tok.save(out.join("tokenizer.json"), false).map_err(err)?;
    let config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": SPECIAL_TOKENS[0],
        "eos_token": SPECIAL_TOKENS[2],
        "pad_token": SPECIAL_TOKENS[0],
        "chat_template": CHATML_TEMPLATE,
    });
    let path = out.join("tokenizer_config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config).expect("JSON")).map_err(|e| DataError::io(&path, e))?;
    Tokenizer::from_dir(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trains_a_deterministic_bilingual_tokenizer_with_specials() {
        let texts: Vec<String> = (0..200).map(|i| format!("{i} plus {} is {}. {i}加{}等于{}。", i % 7, i + i % 7, i % 7, i + i % 7)).collect();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let tok = train_bpe(&texts, 300, a.path()).unwrap();
        train_bpe(&texts, 300, b.path()).unwrap();
        assert_eq!(std::fs::read(a.path().join("tokenizer.json")).unwrap(), std::fs::read(b.path().join("tokenizer.json")).unwrap());
        assert!(tok.vocab_size() <= 300);
        let text = "<|im_start|>user\n3加4等于多少？<|im_end|>\n";
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        assert_eq!(ids[0], tok.token_id("<|im_start|>").unwrap());
        assert_eq!(tok.eos_id(), tok.token_id("<|im_end|>"));
    }
}

//! Files → encoded examples, for every stage: load the records (strict, or skipping bad ones),
//! encode each through the chat template, and count what happened to each record — kept, cut to
//! `max_len`, dropped (nothing left to learn from, or a prompt too long), or skipped (malformed).

use std::path::{Path, PathBuf};

use crate::encode::{encode_prompt, encode_ranking, encode_sft, pack_pretrain, ChatFormat, Encoded, RankingSample, SftSample};
use crate::error::{DataError, Result};
use crate::formats::{load, Format, Kind, LoadOptions, Record, SkipReport};
use crate::tokenizer::Tokenizer;

/// How to read and encode one file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrepareOptions {
    /// What the records are: `Sft` and `Pretrain` make [`SftSample`]s, `Ranking` [`RankingSample`]s,
    /// `Prompt` [`Prompt`]s.
    pub kind: Kind,
    pub format: Format,
    pub skip_invalid: bool,
    /// Tokens per example (pretraining text is packed into blocks of this length).
    pub max_len: usize,
}

/// A prompt for generation: its last user message (what the demo oracle judges), its encoding
/// through the chat template with the generation prompt, and the record it came from (rewards check
/// responses against its fields) with the record's line.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub text: String,
    pub ids: Vec<u32>,
    pub record: serde_json::Value,
    /// 1-based line of the record in its file (0 when not read from a file).
    pub line: usize,
}

impl Prompt {
    /// A prompt known only by its token ids (benchmarks, tests): no text, no record.
    pub fn from_ids(ids: Vec<u32>) -> Self {
        Self { text: String::new(), ids, record: serde_json::Value::Null, line: 0 }
    }
}

/// The examples of a file and what became of the rest of its records.
#[derive(Debug, Clone)]
pub struct Prepared<T> {
    pub path: PathBuf,
    pub examples: Vec<T>,
    /// Examples cut to `max_len` (they still have something to learn from; included in `examples`).
    pub truncated: usize,
    /// Records with nothing left to learn from after truncation, or prompts too long to keep.
    pub dropped: usize,
    /// Malformed records passed over in `skip_invalid` mode, by reason and line.
    pub skipped: SkipReport,
}

impl<T> Prepared<T> {
    /// One line for the log: `FILE: N examples (T cut to L tokens, D dropped, S skipped: …)`.
    pub fn summary(&self, max_len: usize) -> String {
        let mut s = format!(
            "{}: {} examples ({} cut to {max_len} tokens, {} dropped)",
            self.path.display(),
            self.examples.len(),
            self.truncated,
            self.dropped
        );
        if self.skipped.count() > 0 {
            s.push_str(&format!("; {}", self.skipped));
        }
        s
    }
}

/// What an example is made from: the record kinds it accepts, and how one record is encoded.
pub trait Example: Sized {
    /// Encodes one record; None when the record is not of a kind this example is made from.
    fn encode(record: &Record, tok: &Tokenizer, fmt: &ChatFormat, max_len: usize) -> Result<Option<Encoded<Self>>>;

    /// Encodes a whole file's records: (examples, truncated, dropped). Pretraining text overrides
    /// this: it packs documents into blocks.
    fn encode_records(records: &[(usize, Record)], opts: &PrepareOptions, path: &Path, tok: &Tokenizer, fmt: &ChatFormat) -> Result<(Vec<Self>, usize, usize)> {
        encode_each(records, opts, path, tok, fmt)
    }
}

/// Encodes records one by one; errors name the file and line.
fn encode_each<T: Example>(records: &[(usize, Record)], opts: &PrepareOptions, path: &Path, tok: &Tokenizer, fmt: &ChatFormat) -> Result<(Vec<T>, usize, usize)> {
    let (examples, truncated, dropped) = encode_each_at(records, opts, path, tok, fmt)?;
    Ok((examples.into_iter().map(|(_, x)| x).collect(), truncated, dropped))
}

/// [`encode_each`], each example with its record's line.
fn encode_each_at<T: Example>(records: &[(usize, Record)], opts: &PrepareOptions, path: &Path, tok: &Tokenizer, fmt: &ChatFormat) -> Result<(Vec<(usize, T)>, usize, usize)> {
    let (mut out, mut truncated, mut dropped) = (Vec::new(), 0, 0);
    for (line, record) in records {
        let at_line = |e: DataError| DataError::Record { path: path.to_path_buf(), line: *line, message: e.to_string() };
        match T::encode(record, tok, fmt, opts.max_len).map_err(at_line)? {
            Some(Encoded::Kept(x)) => out.push((*line, x)),
            Some(Encoded::Truncated(x)) => {
                truncated += 1;
                out.push((*line, x))
            }
            Some(Encoded::Dropped) => dropped += 1,
            None => {}
        }
    }
    Ok((out, truncated, dropped))
}

/// Reads `path` as `opts.kind` records and encodes them.
pub fn prepare<T: Example>(path: &Path, opts: &PrepareOptions, tok: &Tokenizer, fmt: &ChatFormat) -> Result<Prepared<T>> {
    let loaded = load(path, LoadOptions { kind: opts.kind, format: opts.format, skip_invalid: opts.skip_invalid })?;
    let (examples, truncated, dropped) = T::encode_records(&loaded.records, opts, path, tok, fmt)?;
    Ok(Prepared { path: path.to_path_buf(), examples, truncated, dropped, skipped: loaded.skipped })
}

impl Example for SftSample {
    fn encode(record: &Record, tok: &Tokenizer, fmt: &ChatFormat, max_len: usize) -> Result<Option<Encoded<Self>>> {
        match record {
            Record::Sft(msgs) => encode_sft(tok, fmt, msgs, max_len).map(Some),
            _ => Ok(None),
        }
    }

    /// Conversations are encoded one by one; pretraining documents are packed into blocks.
    fn encode_records(records: &[(usize, Record)], opts: &PrepareOptions, path: &Path, tok: &Tokenizer, fmt: &ChatFormat) -> Result<(Vec<Self>, usize, usize)> {
        if opts.kind != Kind::Pretrain {
            return encode_each(records, opts, path, tok, fmt);
        }
        let docs: Vec<String> = records.iter().filter_map(|(_, r)| if let Record::Pretrain(t) = r { Some(t.clone()) } else { None }).collect();
        let blocks = pack_pretrain(tok, &docs, opts.max_len)?;
        Ok((blocks.into_iter().map(|ids| SftSample { loss_mask: vec![true; ids.len()], ids }).collect(), 0, 0))
    }
}

impl Example for RankingSample {
    fn encode(record: &Record, tok: &Tokenizer, fmt: &ChatFormat, max_len: usize) -> Result<Option<Encoded<Self>>> {
        match record {
            Record::Ranking(r) => encode_ranking(tok, fmt, r, max_len).map(Some),
            _ => Ok(None),
        }
    }
}

impl Example for Prompt {
    fn encode(record: &Record, tok: &Tokenizer, fmt: &ChatFormat, max_len: usize) -> Result<Option<Encoded<Self>>> {
        let Record::Prompt(msgs, fields) = record else { return Ok(None) };
        let text = crate::tokenizer::last_user_text(msgs).to_string();
        let prompt = |ids| Prompt { text: text.clone(), ids, record: fields.clone(), line: 0 };
        Ok(Some(match encode_prompt(tok, fmt, msgs, max_len)? {
            Encoded::Kept(ids) => Encoded::Kept(prompt(ids)),
            Encoded::Truncated(ids) => Encoded::Truncated(prompt(ids)),
            Encoded::Dropped => Encoded::Dropped,
        }))
    }

    /// As every example, with each prompt's line kept (errors about a response name its prompt's).
    fn encode_records(records: &[(usize, Record)], opts: &PrepareOptions, path: &Path, tok: &Tokenizer, fmt: &ChatFormat) -> Result<(Vec<Self>, usize, usize)> {
        let (examples, truncated, dropped) = encode_each_at::<Prompt>(records, opts, path, tok, fmt)?;
        Ok((examples.into_iter().map(|(line, p)| Prompt { line, ..p }).collect(), truncated, dropped))
    }
}

impl SftSample {
    /// Target tokens (the first token is never a target: nothing predicts it).
    pub fn targets(&self) -> usize {
        self.loss_mask.iter().skip(1).filter(|&&m| m).count()
    }
}

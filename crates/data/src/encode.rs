//! Records → token ids: SFT with labels on assistant turns only, prompts with the generation prompt,
//! rankings as K sequences sharing a prompt, pretraining text packed into blocks.

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::formats::Ranking;
use crate::tokenizer::{render_chat_template, Message, Tokenizer};

/// A named built-in chat format, for tokenizers without a `chat_template`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BuiltinTemplate {
    /// `<|im_start|>role\ncontent<|im_end|>\n` (Qwen, the demo).
    Chatml,
    /// ColossalChat's `Human: … Assistant: …</s>` with its default system prompt.
    Colossal,
}

/// The ChatML template (also written into trained tokenizers).
pub const CHATML_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
const COLOSSAL: &str = "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n{% elif m['role'] == 'user' %}Human: {{ m['content'] }}\n{% else %}Assistant: {{ m['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}Assistant: {% endif %}";
const COLOSSAL_SYSTEM: &str = "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.";

/// How conversations become text: the Jinja template, the marker that ends an assistant turn (it is
/// trained on and generation stops at it), and the system message used when a conversation has none.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatFormat {
    pub template: String,
    pub end_of_turn: String,
    pub default_system: Option<String>,
    pub bos_token: String,
    pub eos_token: String,
}

impl ChatFormat {
    /// The tokenizer folder's own template; its EOS token ends assistant turns. Its BOS token is
    /// passed to the template as transformers passes it (templates that start with `{{ bos_token }}`
    /// put it in the text).
    pub fn from_tokenizer(tok: &Tokenizer) -> Result<Self> {
        let template = tok.required_chat_template().map_err(|e| DataError::Template {
            message: format!("{e}: name a built-in one (chatml, colossal) in the config"),
        })?;
        let eos = tok.eos_token().unwrap_or_default().to_string();
        let bos = tok.bos_token().unwrap_or_default().to_string();
        Ok(Self { template: template.into(), end_of_turn: eos.clone(), default_system: None, bos_token: bos, eos_token: eos })
    }

    /// A built-in format; `eos_token` is the tokenizer's (used by the colossal format).
    pub fn builtin(which: BuiltinTemplate, eos_token: &str) -> Self {
        match which {
            BuiltinTemplate::Chatml => Self {
                template: CHATML_TEMPLATE.into(),
                end_of_turn: "<|im_end|>".into(),
                default_system: None,
                bos_token: String::new(),
                eos_token: eos_token.into(),
            },
            BuiltinTemplate::Colossal => Self {
                template: COLOSSAL.into(),
                end_of_turn: eos_token.into(),
                default_system: Some(COLOSSAL_SYSTEM.into()),
                bos_token: String::new(),
                eos_token: eos_token.into(),
            },
        }
    }

    /// `builtin` if named, else the tokenizer's template.
    pub fn resolve(tok: &Tokenizer, builtin: Option<BuiltinTemplate>) -> Result<Self> {
        match builtin {
            Some(b) => Ok(Self::builtin(b, tok.eos_token().unwrap_or("</s>"))),
            None => Self::from_tokenizer(tok),
        }
    }

    fn with_system(&self, msgs: &[Message]) -> Vec<Message> {
        match &self.default_system {
            Some(sys) if msgs.first().is_none_or(|m| m.role != "system") => {
                std::iter::once(Message::new("system", sys.as_str())).chain(msgs.iter().cloned()).collect()
            }
            _ => msgs.to_vec(),
        }
    }

    pub fn render(&self, msgs: &[Message], add_generation_prompt: bool) -> Result<String> {
        render_chat_template(&self.template, msgs, add_generation_prompt, &self.bos_token, &self.eos_token)
    }

    /// Token ids generation stops at: the end-of-turn marker and EOS.
    pub fn stop_ids(&self, tok: &Tokenizer) -> Vec<u32> {
        self.stop_ids_and(tok, &[])
    }

    /// [`stop_ids`](Self::stop_ids) plus the model's own EOS ids (config.json, generation_config.json),
    /// sorted, each once.
    pub fn stop_ids_and(&self, tok: &Tokenizer, model_eos: &[u32]) -> Vec<u32> {
        let mut ids: Vec<u32> = [self.end_of_turn.as_str(), self.eos_token.as_str()]
            .iter()
            .filter(|t| !t.is_empty())
            .filter_map(|t| tok.token_id(t))
            .chain(model_eos.iter().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// Text pieces of a rendered conversation, `true` where the model is trained.
fn sft_segments(fmt: &ChatFormat, msgs: &[Message]) -> Result<Vec<(String, bool)>> {
    let msgs = fmt.with_system(msgs);
    let not_incremental = || DataError::Template {
        message: "chat template is not incremental: rendering a conversation's first turns is not a prefix of rendering all of it".into(),
    };
    let mut segments = Vec::new();
    let mut done = String::new();
    for (i, m) in msgs.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let prefix = fmt.render(&msgs[..i], true)?;
        let full = fmt.render(&msgs[..=i], false)?;
        let (Some(context), Some(answer)) = (prefix.strip_prefix(done.as_str()), full.strip_prefix(prefix.as_str())) else {
            return Err(not_incremental());
        };
        segments.push((context.to_string(), false));
        // Train on the answer up to and including the end-of-turn marker; template glue after it
        // (a newline) is context.
        let cut = match answer.find(fmt.end_of_turn.as_str()).filter(|_| !fmt.end_of_turn.is_empty()) {
            Some(at) => at + fmt.end_of_turn.len(),
            None => answer.len(),
        };
        segments.push((answer[..cut].to_string(), true));
        segments.push((answer[cut..].to_string(), false));
        done = full;
    }
    let all = fmt.render(&msgs, false)?;
    let rest = all.strip_prefix(done.as_str()).ok_or_else(not_incremental)?;
    segments.push((rest.to_string(), false));
    segments.retain(|(s, _)| !s.is_empty());
    Ok(segments)
}

/// Token ids and which of them carry loss.
#[derive(Debug, Clone, PartialEq)]
pub struct SftSample {
    pub ids: Vec<u32>,
    /// Same length as `ids`: true where the token is a target (assistant content + end of turn).
    pub loss_mask: Vec<bool>,
}

/// What became of one record on encoding.
#[derive(Debug, Clone, PartialEq)]
pub enum Encoded<T> {
    Kept(T),
    /// Cut to `max_len` (still has something to learn from).
    Truncated(T),
    /// Nothing left to learn from after truncation, or too long to keep.
    Dropped,
}

/// SFT encoding: labels only on assistant turns (content + end-of-turn), in every turn.
pub fn encode_sft(tok: &Tokenizer, fmt: &ChatFormat, msgs: &[Message], max_len: usize) -> Result<Encoded<SftSample>> {
    let mut sample = SftSample { ids: Vec::new(), loss_mask: Vec::new() };
    for (text, trained) in sft_segments(fmt, msgs)? {
        let ids = tok.encode(&text, false)?;
        sample.loss_mask.extend(std::iter::repeat_n(trained, ids.len()));
        sample.ids.extend(ids);
    }
    if sample.ids.len() <= max_len {
        return Ok(Encoded::Kept(sample));
    }
    sample.ids.truncate(max_len);
    sample.loss_mask.truncate(max_len);
    Ok(if sample.loss_mask.iter().any(|&m| m) { Encoded::Truncated(sample) } else { Encoded::Dropped })
}

/// Prompt encoding for generation: the conversation so far plus the assistant generation prompt.
/// Prompts longer than `max_len` are dropped (cutting them would change the question).
pub fn encode_prompt(tok: &Tokenizer, fmt: &ChatFormat, msgs: &[Message], max_len: usize) -> Result<Encoded<Vec<u32>>> {
    let ids = tok.encode(&fmt.render(&fmt.with_system(msgs), true)?, false)?;
    Ok(if ids.len() <= max_len { Encoded::Kept(ids) } else { Encoded::Dropped })
}

/// A ranking as K sequences (prompt + response + end-of-turn), sharing the prompt tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct RankingSample {
    pub sequences: Vec<Vec<u32>>,
    /// Lower is better; equal ranks are ties.
    pub ranks: Vec<u32>,
    pub prompt_len: usize,
}

impl RankingSample {
    /// Whether the ranking states a preference: at least one untied pair.
    pub fn has_preference(&self) -> bool {
        !ranking_pairs(&self.ranks, 0).is_empty()
    }

    /// The index of a best-ranked response (the first of them).
    pub fn best_response(&self) -> usize {
        (0..self.ranks.len()).min_by_key(|&i| self.ranks[i]).unwrap_or(0)
    }
}

/// One preference a ranking states: response `better` (an index into a flat list of responses)
/// beats `worse`; `weight` is 1/P for the P untied pairs of its prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    pub better: usize,
    pub worse: usize,
    pub weight: f32,
}

/// The C(K,2) ordered pairs of one ranking (lower rank = better; tied pairs state no preference and
/// are dropped), offset by `first` — the index of the prompt's first response in the flat list.
pub fn ranking_pairs(ranks: &[u32], first: usize) -> Vec<Pair> {
    let mut pairs = Vec::new();
    for i in 0..ranks.len() {
        for j in i + 1..ranks.len() {
            let (b, w) = match ranks[i].cmp(&ranks[j]) {
                std::cmp::Ordering::Less => (i, j),
                std::cmp::Ordering::Greater => (j, i),
                std::cmp::Ordering::Equal => continue,
            };
            pairs.push(Pair { better: first + b, worse: first + w, weight: 0.0 });
        }
    }
    let weight = 1.0 / pairs.len().max(1) as f32;
    pairs.iter_mut().for_each(|p| p.weight = weight);
    pairs
}

/// Encodes each response after the shared prompt and ends it with the end-of-turn token, so the
/// reward is read at a well-defined position. Over-long responses are cut to fit `max_len` (the
/// end-of-turn token is kept last); a prompt leaving no room drops the record.
pub fn encode_ranking(tok: &Tokenizer, fmt: &ChatFormat, r: &Ranking, max_len: usize) -> Result<Encoded<RankingSample>> {
    let prompt = tok.encode(&fmt.render(&fmt.with_system(&r.prompt), true)?, false)?;
    let eot = tok.encode(&fmt.end_of_turn, false)?;
    if prompt.len() + eot.len() + 1 > max_len {
        return Ok(Encoded::Dropped);
    }
    let room = max_len - prompt.len() - eot.len();
    let mut truncated = false;
    let sequences = r
        .responses
        .iter()
        .map(|resp| {
            let mut body = tok.encode(resp, false)?;
            if body.len() > room {
                body.truncate(room);
                truncated = true;
            }
            Ok(prompt.iter().chain(&body).chain(&eot).copied().collect())
        })
        .collect::<Result<Vec<Vec<u32>>>>()?;
    let sample = RankingSample { sequences, ranks: r.ranks.clone(), prompt_len: prompt.len() };
    Ok(if truncated { Encoded::Truncated(sample) } else { Encoded::Kept(sample) })
}

/// Pretraining: each document + EOS, concatenated and cut into blocks of `block_len` tokens
/// (the last partial block is kept if it has at least 2 tokens).
pub fn pack_pretrain(tok: &Tokenizer, docs: &[String], block_len: usize) -> Result<Vec<Vec<u32>>> {
    let eos = tok.eos_id();
    let mut stream = Vec::new();
    for d in docs {
        stream.extend(tok.encode(d, false)?);
        stream.extend(eos);
    }
    Ok(stream.chunks(block_len.max(2)).filter(|c| c.len() >= 2).map(<[u32]>::to_vec).collect())
}

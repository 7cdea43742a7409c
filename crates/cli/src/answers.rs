//! Prompt sets in, a model folder's answers out: what `rlhf data rank` and `rlhf eval judge` share.

use std::path::{Path, PathBuf};

use clap::Args;
use rlhf_data::encode::encode_prompt;
use rlhf_data::{load, ChatFormat, Encoded, Format, Kind, LoadOptions, Message, Record, Tokenizer};
use rlhf_eval::{sample_answers, AnswerSampling};
use rlhf_model::{CausalLm, TransformerConfig};
use rlhf_runtime::{dispatch, Backend, Inference, InferenceTask};

/// A prompt file, as the data jobs take it.
#[derive(Debug, Clone, Args)]
pub struct PromptSource {
    /// Prompts (any format stage 3 reads: InstructionWild, ColossalChat, `{"prompt"}`, …).
    #[arg(long)]
    pub prompts: PathBuf,
    #[arg(long, value_enum, default_value = "auto")]
    pub format: Format,
    /// Skip malformed prompt records (reported) instead of stopping at the first.
    #[arg(long)]
    pub skip_invalid: bool,
    /// At most this many prompts, from the top.
    #[arg(long)]
    pub limit: Option<usize>,
}

impl PromptSource {
    /// The prompts with their line numbers; malformed records skipped (and reported) when asked,
    /// else the first is an error naming its line.
    pub fn load(&self) -> anyhow::Result<Vec<(usize, Vec<Message>)>> {
        load_prompts(&self.prompts, self.format, self.skip_invalid, self.limit)
    }
}

fn load_prompts(path: &Path, format: Format, skip_invalid: bool, limit: Option<usize>) -> anyhow::Result<Vec<(usize, Vec<Message>)>> {
    let loaded = load(path, LoadOptions { kind: Kind::Prompt, format, skip_invalid })?;
    if loaded.skipped.count() > 0 {
        eprintln!("{}: {}", path.display(), loaded.skipped);
    }
    Ok(loaded
        .records
        .into_iter()
        .filter_map(|(line, r)| match r {
            Record::Prompt(m, _) => Some((line, m)),
            _ => None,
        })
        .take(limit.unwrap_or(usize::MAX))
        .collect())
}

/// A conversation as the teacher client sends it.
pub fn to_chat(messages: &[Message]) -> Vec<rlhf_teacher::ChatMessage> {
    messages.iter().map(|m| rlhf_teacher::ChatMessage { role: m.role.clone(), content: m.content.clone() }).collect()
}

/// How a model folder writes answers.
#[derive(Debug, Clone, Args)]
pub struct AnswerArgs {
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Prompts longer than this (in tokens, through the chat template) are left out.
    #[arg(long, default_value_t = 512)]
    pub max_prompt_len: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Rows generated together.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// A built-in chat format, for tokenizers without a chat template.
    #[arg(long, value_enum)]
    pub template: Option<rlhf_data::BuiltinTemplate>,
    #[command(flatten)]
    pub runtime: crate::InferenceRuntime,
}

/// The one answer per prompt of [`write_answers`] with `samples` = 1.
pub fn single(answers: Vec<Option<Vec<String>>>) -> Vec<Option<String>> {
    answers.into_iter().map(|a| a.and_then(|v| v.into_iter().next())).collect()
}

/// `samples` answers per prompt from the model in `dir`, on `args.device`; None for prompts longer
/// than the limit.
pub fn write_answers(dir: &Path, prompts: &[Vec<Message>], samples: usize, temperature: f64, top_p: Option<f64>, args: &AnswerArgs) -> anyhow::Result<Vec<Option<Vec<String>>>> {
    let task = Answering { dir, prompts, samples, temperature, top_p, args };
    dispatch(args.runtime, Inference(task))?
}

/// [`write_answers`] on a device the caller already has (the pipeline's).
pub fn write_answers_on<B: Backend>(
    dir: &Path,
    prompts: &[Vec<Message>],
    samples: usize,
    temperature: f64,
    top_p: Option<f64>,
    args: &AnswerArgs,
    device: &B::Device,
) -> anyhow::Result<Vec<Option<Vec<String>>>> {
    let tok = Tokenizer::from_dir(dir)?;
    let fmt = ChatFormat::resolve(&tok, args.template)?;
    let config = TransformerConfig::from_hf_dir(dir)?;
    let limit = args.max_prompt_len.min(config.max_position_embeddings.saturating_sub(args.max_new_tokens));
    let mut encoded = Vec::with_capacity(prompts.len());
    for p in prompts {
        encoded.push(match encode_prompt(&tok, &fmt, p, limit)? {
            Encoded::Kept(ids) | Encoded::Truncated(ids) => Some(ids),
            Encoded::Dropped => None,
        });
    }
    let kept: Vec<Vec<u32>> = encoded.iter().flatten().cloned().collect();
    if kept.len() < prompts.len() {
        eprintln!("{}: {} prompt(s) longer than {limit} tokens left out", dir.display(), prompts.len() - kept.len());
    }
    let stop_ids = fmt.stop_ids_and(&tok, &config.eos_token_ids);
    let sampling = AnswerSampling {
        samples,
        max_new_tokens: args.max_new_tokens,
        temperature,
        top_p,
        seed: args.seed,
        batch_size: args.batch_size,
        stop_ids,
        pad_id: tok.pad_id_for(config.pad_token_id),
    };
    let ids = if kept.is_empty() {
        vec![]
    } else {
        let model = CausalLm::<B>::from_hf_dir(dir, device)?.quantized(args.runtime.quant)?.for_inference(args.runtime.precision);
        sample_answers(&model, &kept, &sampling, device)?
    };
    let mut ids = ids.into_iter();
    encoded
        .iter()
        .map(|e| match e {
            None => Ok(None),
            Some(_) => {
                let answers = ids.next().expect("answers for every kept prompt");
                Ok(Some(answers.iter().map(|a| Ok(tok.decode(a, true)?.trim().to_string())).collect::<anyhow::Result<Vec<_>>>()?))
            }
        })
        .collect()
}

struct Answering<'a> {
    dir: &'a Path,
    prompts: &'a [Vec<Message>],
    samples: usize,
    temperature: f64,
    top_p: Option<f64>,
    args: &'a AnswerArgs,
}

impl InferenceTask for Answering<'_> {
    type Output = anyhow::Result<Vec<Option<Vec<String>>>>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        write_answers_on::<B>(self.dir, self.prompts, self.samples, self.temperature, self.top_p, self.args, &device)
    }
}

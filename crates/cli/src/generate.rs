//! `rlhf generate`: batched generation from text prompts (optionally through the chat template) or
//! from token ids; with `--vote K`, self-consistency: K samples per prompt (one prefill), each
//! sample's final answer extracted, and the majority answer with its share and reasoning path.

use std::path::PathBuf;

use anyhow::{bail, Context};
use rlhf_runtime::Backend;
use clap::Args;
use rlhf_data::{Message, Tokenizer};
use rlhf_runtime::{dispatch, Inference, InferenceTask};
use rlhf_model::{generate_n, CausalLm, GenerateConfig, Generation, Sampler};

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Hugging Face model folder (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Prompt text; repeat for a batch.
    #[arg(long, required_unless_present = "prompt_ids", conflicts_with = "prompt_ids")]
    prompt: Vec<String>,
    /// Wrap each prompt as a user turn with the tokenizer's chat template.
    #[arg(long, requires = "prompt")]
    chat: bool,
    /// Prompt as comma-separated token ids.
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Pick the most likely token (the default unless a sampling option is given).
    #[arg(long, conflicts_with_all = ["temperature", "top_k", "top_p"])]
    greedy: bool,
    #[arg(long)]
    temperature: Option<f64>,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Extra stop token ids (EOS from the model config and the tokenizer are always included).
    #[arg(long, value_delimiter = ',')]
    stop_ids: Vec<u32>,
    /// Self-consistency: K samples per prompt (temperature 0.7 unless sampling options are given),
    /// the majority of their final answers printed with its vote share and the first sample that
    /// reached it.
    #[arg(long, value_name = "K", conflicts_with = "greedy")]
    vote: Option<usize>,
    /// How `--vote` reads a sample's final answer: final (the last \boxed{…}, else after ####),
    /// boxed, gsm8k, last_number, demo, or regex:PATTERN (its first group at the last match).
    #[arg(long, default_value = "final", requires = "vote")]
    extract: rlhf_rl::Extractor,
    /// One JSON line per prompt: {"prompt_ids", "new_ids", "text"}; with --vote, {"prompt_ids",
    /// "answer", "votes", "samples", "share", "no_answer", "tally", "text"} (text: the chosen path).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    runtime: crate::InferenceRuntime,
}

impl GenerateArgs {
    fn sampler(&self) -> anyhow::Result<Sampler> {
        let unset = self.temperature.is_none() && self.top_k.is_none() && self.top_p.is_none();
        if self.vote == Some(0) {
            bail!("--vote needs at least 1 sample");
        }
        if self.greedy || (unset && self.vote.is_none()) {
            return Ok(Sampler::Greedy);
        }
        // Self-consistency's usual temperature (Wang et al. sample at 0.5–0.7).
        let default_temperature = if self.vote.is_some() && unset { 0.7 } else { 1.0 };
        let temperature = self.temperature.unwrap_or(default_temperature);
        if temperature <= 0.0 {
            bail!("--temperature must be > 0 (use --greedy for argmax)");
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                bail!("--top-p must be in (0, 1]");
            }
        }
        Ok(Sampler::Sample { temperature, top_k: self.top_k, top_p: self.top_p })
    }
}

struct GenerateTask<'a> {
    args: &'a GenerateArgs,
    prompts: Vec<Vec<u32>>,
    cfg: GenerateConfig,
}

impl InferenceTask for GenerateTask<'_> {
    type Output = anyhow::Result<Vec<Generation>>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let model = CausalLm::<B>::from_hf_dir(&self.args.model, &device)?.quantized(self.args.runtime.quant)?.for_inference(self.args.runtime.precision);
        // K samples of a prompt share its prefill.
        Ok(generate_n(&model, &self.prompts, self.args.vote.unwrap_or(1), &self.cfg, &device)?.to_host())
    }
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let model_cfg = rlhf_model::TransformerConfig::from_hf_dir(&args.model)?;
    let tokenizer = if args.model.join("tokenizer.json").exists() { Some(Tokenizer::from_dir(&args.model)?) } else { None };
    let prompts: Vec<Vec<u32>> = match &args.prompt_ids {
        Some(ids) => vec![ids.clone()],
        None => {
            let tok = tokenizer.as_ref().with_context(|| format!("{}: no tokenizer.json for --prompt", args.model.display()))?;
            args.prompt
                .iter()
                .map(|p| {
                    let text = if args.chat {
                        tok.apply_chat_template(&[Message::new("user", p.as_str())], true)?
                    } else {
                        p.clone()
                    };
                    Ok(tok.encode(&text, !args.chat)?)
                })
                .collect::<anyhow::Result<_>>()?
        }
    };
    let mut stop_ids = args.stop_ids.clone();
    stop_ids.extend(&model_cfg.eos_token_ids);
    stop_ids.extend(tokenizer.as_ref().and_then(Tokenizer::eos_id));
    stop_ids.sort_unstable();
    stop_ids.dedup();
    let pad_id = model_cfg.pad_token_id.or(tokenizer.as_ref().and_then(Tokenizer::pad_id)).or(stop_ids.first().copied()).unwrap_or(0);
    let cfg = GenerateConfig {
        max_new_tokens: args.max_new_tokens,
        sampler: args.sampler()?,
        stop_ids,
        pad_id,
        seed: Some(args.seed),
    };
    if args.vote.is_some() && tokenizer.is_none() {
        bail!("{}: --vote reads answers from text; the folder has no tokenizer.json", args.model.display());
    }
    let outputs = dispatch(args.runtime, Inference(GenerateTask { args: &args, prompts: prompts.clone(), cfg }))??;
    let decode = |ids: &[u32]| -> anyhow::Result<String> {
        Ok(match &tokenizer {
            Some(tok) => tok.decode(ids, true)?,
            None => String::new(),
        })
    };
    let Some(k) = args.vote else {
        for (prompt, out) in prompts.iter().zip(outputs) {
            let text = decode(&out.new_ids)?;
            if args.json {
                println!("{}", serde_json::json!({ "prompt_ids": prompt, "new_ids": out.new_ids, "text": text }));
            } else {
                println!("{text}");
            }
        }
        return Ok(());
    };
    for ((i, prompt), samples) in prompts.iter().enumerate().zip(outputs.chunks(k)) {
        let texts = samples.iter().map(|s| Ok(decode(&s.new_ids)?.trim().to_string())).collect::<anyhow::Result<Vec<_>>>()?;
        // The demo extractor reads the question; --prompt-ids has no text of it.
        let question = args.prompt.get(i).map_or("", String::as_str);
        let answers: Vec<Option<String>> = texts.iter().map(|t| args.extract.answer(question, t)).collect();
        let vote = rlhf_rl::majority(&answers);
        let path = vote.path.map_or("", |p| texts[p].as_str());
        if args.json {
            // [answer, votes] pairs, most voted first.
            let tally: Vec<serde_json::Value> = vote.tally.iter().map(|(a, n)| serde_json::json!([a, n])).collect();
            let line = serde_json::json!({
                "prompt_ids": prompt, "answer": vote.answer, "votes": vote.votes, "samples": vote.samples,
                "share": vote.share(), "no_answer": vote.no_answer, "tally": tally, "text": path,
            });
            println!("{line}");
        } else {
            match &vote.answer {
                Some(a) => println!("answer: {a} ({} of {} samples, share {:.2}; {} without an answer)", vote.votes, vote.samples, vote.share(), vote.no_answer),
                None => println!("answer: none ({} samples, none with an answer)", vote.samples),
            }
            println!("{path}");
        }
    }
    Ok(())
}

//! `rlhf generate`: batched generation from text prompts (optionally through the chat template) or
//! from token ids.

use std::path::PathBuf;

use anyhow::{bail, Context};
use rlhf_runtime::Backend;
use clap::Args;
use rlhf_data::{Message, Tokenizer};
use rlhf_runtime::{dispatch, Inference, InferenceTask};
use rlhf_model::{generate, CausalLm, GenerateConfig, Generation, Sampler};

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
    /// One JSON line per prompt: {"prompt_ids", "new_ids", "text"}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    runtime: crate::InferenceRuntime,
}

impl GenerateArgs {
    fn sampler(&self) -> anyhow::Result<Sampler> {
        if self.greedy || (self.temperature.is_none() && self.top_k.is_none() && self.top_p.is_none()) {
            return Ok(Sampler::Greedy);
        }
        let temperature = self.temperature.unwrap_or(1.0);
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
        let model = CausalLm::<B>::from_hf_dir(&self.args.model, &device)?.for_inference(self.args.runtime.precision);
        Ok(generate(&model, &self.prompts, &self.cfg, &device)?.to_host())
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
    let outputs = dispatch(args.runtime, Inference(GenerateTask { args: &args, prompts: prompts.clone(), cfg }))??;
    for (prompt, out) in prompts.iter().zip(outputs) {
        let text = match &tokenizer {
            Some(tok) => tok.decode(&out.new_ids, true)?,
            None => String::new(),
        };
        if args.json {
            let line = serde_json::json!({ "prompt_ids": prompt, "new_ids": out.new_ids, "text": text });
            println!("{line}");
        } else {
            println!("{text}");
        }
    }
    Ok(())
}

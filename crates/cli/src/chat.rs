//! `rlhf chat --model DIR`: a multi-turn REPL through the model's chat template. Lines starting
//! with `/` are commands: `/reset` forgets the conversation, `/exit` (or end of input) quits.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::bail;
use rlhf_runtime::Backend;
use clap::Args;
use rlhf_data::encode::encode_prompt;
use rlhf_data::{ChatFormat, Encoded, Message, Tokenizer};
use rlhf_runtime::{dispatch, Inference, InferenceTask};
use rlhf_model::{generate, CausalLm, GenerateConfig, Sampler};

#[derive(Debug, Clone, Args)]
pub struct ChatArgs {
    /// A Hugging Face model folder (e.g. a pipeline's `ppo/final`).
    #[arg(long)]
    pub model: PathBuf,
    /// A system message opening the conversation.
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// 0 decodes greedily.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A built-in chat format, for tokenizers without a chat template.
    #[arg(long, value_enum)]
    pub template: Option<rlhf_data::BuiltinTemplate>,
    #[command(flatten)]
    pub runtime: crate::InferenceRuntime,
}

impl InferenceTask for &ChatArgs {
    type Output = anyhow::Result<()>;

    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<()> {
        let model = CausalLm::<B>::from_hf_dir(&self.model, &device)?.quantized(self.runtime.quant)?.for_inference(self.runtime.precision);
        let tok = Tokenizer::from_dir(&self.model)?;
        let fmt = ChatFormat::resolve(&tok, self.template)?;
        let positions = model.config().max_position_embeddings;
        if self.max_new_tokens >= positions {
            bail!("--max-new-tokens {} leaves no room for a prompt in {positions} positions", self.max_new_tokens);
        }
        let sampler = Sampler::from_temperature(self.temperature, self.top_p);
        let pad = tok.pad_id_for(model.config().pad_token_id);
        let stop_ids = fmt.stop_ids(&tok);
        let opening: Vec<Message> = self.system.iter().map(|s| Message::new("system", s.as_str())).collect();
        let mut history = opening.clone();
        let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
        if interactive {
            eprintln!("chatting with {} — /reset starts over, /exit quits", self.model.display());
        }
        let stdin = std::io::stdin();
        let mut turn = 0u64;
        loop {
            if interactive {
                eprint!("you> ");
                std::io::stderr().flush().ok();
            }
            let mut line = String::new();
            if stdin.lock().read_line(&mut line)? == 0 {
                break;
            }
            let line = line.trim();
            match line {
                "" => continue,
                "/exit" | "/quit" => break,
                "/reset" => {
                    history = opening.clone();
                    println!("(conversation reset)");
                    continue;
                }
                _ => {}
            }
            history.push(Message::new("user", line));
            // Forget the oldest turns when the conversation no longer fits.
            let prompt = loop {
                match encode_prompt(&tok, &fmt, &history, positions - self.max_new_tokens)? {
                    Encoded::Kept(ids) | Encoded::Truncated(ids) => break ids,
                    Encoded::Dropped if history.len() > opening.len() + 1 => {
                        history.drain(opening.len()..opening.len() + 2.min(history.len() - opening.len() - 1));
                    }
                    Encoded::Dropped => bail!("the message alone is longer than the model's {positions} positions allow"),
                }
            };
            let cfg = GenerateConfig {
                max_new_tokens: self.max_new_tokens,
                sampler: sampler.clone(),
                stop_ids: stop_ids.clone(),
                pad_id: pad,
                seed: Some(self.seed.wrapping_add(turn)),
            };
            let out = generate(&model, &[prompt], &cfg, &device)?.to_host().remove(0);
            let reply = tok.decode(&out.new_ids, true)?.trim().to_string();
            println!("{}{reply}", if interactive { "assistant> " } else { "" });
            std::io::stdout().flush().ok();
            history.push(Message::new("assistant", reply));
            turn += 1;
        }
        Ok(())
    }
}

pub fn run(args: &ChatArgs) -> anyhow::Result<()> {
    dispatch(args.runtime, Inference(args))?
}

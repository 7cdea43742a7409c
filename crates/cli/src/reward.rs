//! `rlhf reward score`: what a reward model makes of a data file.

use std::path::PathBuf;

use anyhow::Context;
use rlhf_runtime::Backend;
use burn::tensor::ElementConversion;
use clap::{Args, ValueEnum};
use rlhf_data::encode::{encode_ranking, encode_sft};
use rlhf_data::{load, ChatFormat, Encoded, Format, Kind, LoadOptions, Record, Tokenizer};
use rlhf_runtime::{dispatch, Inference, InferenceTask};
use rlhf_model::RewardModel;
use rlhf_eval::{ranking_stats, RankingStats};
use rlhf_train::batch::score_sequences;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScoreKind {
    Ranking,
    Sft,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// A reward model folder (`final/` of rlhf-reward).
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    data: PathBuf,
    #[arg(long, value_enum, default_value = "ranking")]
    kind: ScoreKind,
    #[arg(long, value_enum, default_value = "auto")]
    format: Format,
    #[arg(long, default_value_t = 512)]
    max_len: usize,
    #[command(flatten)]
    runtime: crate::InferenceRuntime,
}

impl InferenceTask for &ScoreArgs {
    type Output = anyhow::Result<()>;

    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<()> {
        let model = RewardModel::<B>::from_dir(&self.model, &device)?.quantized(self.runtime.quant)?.for_inference(self.runtime.precision);
        let tok = Tokenizer::from_dir(&self.model)?;
        let fmt = ChatFormat::from_tokenizer(&tok)?;
        let max_len = self.max_len.min(model.model.config.max_position_embeddings);
        let pad = tok.pad_id_for(model.model.config.pad_token_id);
        let kind = if self.kind == ScoreKind::Ranking { Kind::Ranking } else { Kind::Sft };
        let loaded = load(&self.data, LoadOptions { kind, format: self.format, skip_invalid: false })?;
        let (mut total, mut n) = (RankingStats::default(), 0usize);
        for (line, r) in &loaded.records {
            let at = || format!("{}:{line}", self.data.display());
            match r {
                Record::Ranking(rk) => {
                    let (Encoded::Kept(s) | Encoded::Truncated(s)) = encode_ranking(&tok, &fmt, rk, max_len).with_context(at)? else {
                        println!("{}", serde_json::json!({ "line": line, "skipped": "prompt longer than max_len" }));
                        continue;
                    };
                    // All K responses in one forward pass.
                    let scores = score_sequences(&model, &s.sequences, pad, &device)?.into_data().convert::<f32>().to_vec::<f32>().expect("f32");
                    let st = ranking_stats(&scores, &[&s]);
                    total.add(&st);
                    println!("{}", serde_json::json!({ "line": line, "scores": scores, "ranks": s.ranks, "pairwise_acc": st.pairwise_acc / st.prompts.max(1.0) }));
                }
                Record::Sft(m) => {
                    let (Encoded::Kept(s) | Encoded::Truncated(s)) = encode_sft(&tok, &fmt, m, max_len).with_context(at)? else { continue };
                    let score = score_sequences(&model, &[s.ids], pad, &device)?.into_scalar().elem::<f64>();
                    println!("{}", serde_json::json!({ "line": line, "score": score }));
                }
                _ => {}
            }
            n += 1;
        }
        if self.kind == ScoreKind::Ranking && total.prompts > 0.0 {
            eprintln!(
                "{n} rankings: pairwise accuracy {:.4}, top-1 accuracy {:.4}",
                total.pairwise_acc / total.prompts,
                total.top1_acc / total.prompts
            );
        }
        Ok(())
    }
}

pub fn score(args: &ScoreArgs) -> anyhow::Result<()> {
    dispatch(args.runtime, Inference(args))?
}

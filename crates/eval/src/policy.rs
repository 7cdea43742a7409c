//! Held-out evaluation of policies: responses to prompts the models never trained on, scored by
//! the reward model (normalised as in PPO) and, for the demo's prompts, by the demo oracle; the KL
//! of one policy to another on its own responses; and the RM's win rate between two policies.

use std::path::{Path, PathBuf};

use rlhf_runtime::Backend;
use burn::tensor::Tensor;
use rlhf_data::prepare::{prepare, PrepareOptions, Prompt};
use rlhf_data::{ChatFormat, Format, Kind, Tokenizer};
use rlhf_model::ops::action_log_probs;
use rlhf_model::reward_info::scaled_score;
use rlhf_model::{CausalLm, GenerateConfig, RewardModel, Sampler};
use rlhf_rl::rewards::{RewardInput, RewardSources};
use serde::{Deserialize, Serialize};

/// The `[eval]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Held-out prompts.
    pub prompts: PathBuf,
    #[serde(default)]
    pub format: Format,
    /// Responses sampled per prompt and policy.
    #[serde(default = "two")]
    pub samples_per_prompt: usize,
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 decodes greedily.
    #[serde(default = "one_f")]
    pub temperature: f64,
    #[serde(default = "default_prompt_len")]
    pub max_prompt_len: usize,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default)]
    pub seed: u64,
    /// The PPO policy's KL to the SFT model (per response) should stay below this.
    #[serde(default)]
    pub max_kl: Option<f64>,
    /// A built-in chat template, for tokenizers without one (as in the stages' `[data]`).
    #[serde(default)]
    pub template: Option<rlhf_data::BuiltinTemplate>,
    /// A judge model comparing the PPO policy's answers with the SFT model's (`[eval.judge]`).
    #[serde(default)]
    pub judge: Option<JudgeConfig>,
    /// "f32", or "bf16": both policies and the reward model stored and run in bf16.
    #[serde(default)]
    pub precision: rlhf_runtime::Precision,
    /// "q8", "q4" or "nf4": every model eval loads has its block projections held as codes (as
    /// `--quant`), the SFT policy and the aligned one alike, so they are compared like with like.
    #[serde(default)]
    pub quant: Option<rlhf_runtime::quant::BaseQuant>,
    /// Also answer every prompt once greedily (temperature 0) with each policy, scored by the oracle
    /// and the reward model: `eval.json`'s `greedy` section.
    #[serde(default = "yes")]
    pub greedy: bool,
    /// Reward sources every policy's responses are also scored by (`[[eval.rewards]]`, as a
    /// stage's `[[rewards]]`): their mean per policy, sampled and greedy, in `eval.json`'s
    /// `rewards`. Default: the critic-free stage's own `[[grpo.rewards]]` when the run has one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rewards: Vec<rlhf_rl::rewards::RewardSpec>,
    /// Self-consistency on the held-out prompts (`[eval.vote]`): K samples per prompt and policy,
    /// single-sample and majority-vote accuracy in `eval.json`'s `vote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vote: Option<VoteEval>,
}

/// `[eval.vote]`: how each policy's majority answers are measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoteEval {
    /// Samples per prompt (K).
    #[serde(default = "eight")]
    pub samples: usize,
    /// How a sample's final answer is read (`final`, `boxed`, `gsm8k`, `last_number`, `demo`,
    /// `regex:…`).
    #[serde(default)]
    pub extract: rlhf_rl::Extractor,
    /// The record field with the true answer.
    #[serde(default = "answer_field")]
    pub field: String,
    /// Sampling temperature (default: `[eval] temperature`); must be above 0.
    #[serde(default)]
    pub temperature: Option<f64>,
}

fn eight() -> usize {
    8
}
fn answer_field() -> String {
    "answer".into()
}

fn yes() -> bool {
    true
}

/// `[eval.judge]`: pairwise judging of PPO against SFT by a judge model, both orders per question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeConfig {
    /// Questions (default: the held-out prompts); `category` and `reference` fields are used.
    #[serde(default)]
    pub prompts: Option<PathBuf>,
    /// At most this many questions, from the top.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Sampling temperature of the answers; 0 (default) decodes greedily.
    #[serde(default)]
    pub temperature: f64,
    /// Tokens per answer.
    #[serde(default = "default_answer_tokens")]
    pub max_new_tokens: usize,
    /// Tokens the judge may write per verdict.
    #[serde(default = "default_judge_tokens")]
    pub judge_max_tokens: u32,
    /// The judge: an OpenAI-compatible endpoint (`model`, `base_url`, `api_key`, `concurrency`, …;
    /// `base_url` and `api_key` default to OPENAI_BASE_URL / OPENAI_API_KEY).
    pub endpoint: rlhf_teacher::ClientConfig,
}

fn default_answer_tokens() -> usize {
    256
}
fn default_judge_tokens() -> u32 {
    1024
}

fn two() -> usize {
    2
}
fn one_f() -> f64 {
    1.0
}
fn default_prompt_len() -> usize {
    256
}
fn default_batch() -> usize {
    64
}

/// The held-out prompts named by `cfg` (strict: a malformed held-out prompt is an error).
pub fn read_eval_prompts(cfg: &EvalConfig, tok: &Tokenizer, fmt: &ChatFormat) -> anyhow::Result<Vec<Prompt>> {
    let opts = PrepareOptions { kind: Kind::Prompt, format: cfg.format, skip_invalid: false, max_len: cfg.max_prompt_len };
    let prepared = prepare::<Prompt>(&cfg.prompts, &opts, tok, fmt)?;
    if prepared.dropped > 0 {
        eprintln!("{}: {} prompts longer than {} tokens dropped", cfg.prompts.display(), prepared.dropped, cfg.max_prompt_len);
    }
    Ok(prepared.examples)
}

/// One sampled response and its scores.
#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    pub prompt: String,
    pub response: String,
    /// The reward model's normalised score, when there is a reward model.
    pub rm_score: Option<f32>,
    pub oracle: Option<f64>,
    /// The oracle's three parts, for demo prompts.
    #[serde(skip)]
    pub oracle_parts: Option<rlhf_data::demo::OracleScore>,
    /// Σ_t log π(a_t) of the response under the policy that wrote it, and under the baseline.
    #[serde(skip)]
    pub logp: f64,
    #[serde(skip)]
    pub baseline_logp: f64,
    /// Response tokens (up to and including the stop token).
    pub tokens: usize,
    /// Each `[[eval.rewards]]` source's score (None where it does not apply), in their order.
    #[serde(skip)]
    pub rewards: Vec<Option<f64>>,
}

/// Means over a policy's responses.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyScores {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rm_score: Option<f64>,
    /// Over prompts the demo oracle recognises; None when it recognises none.
    pub oracle_score: Option<f64>,
    /// The shares of those responses that are right, in the prompt's language, and in the asked-for
    /// form (the oracle's parts, worth 1, 0.5 and 0.5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oracle_parts: Option<OracleParts>,
    /// Mean Σ_t (log π − log π_baseline) per response, when a baseline was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
    pub response_len: f64,
    /// Each reward source's mean over the responses it applies to (absent where it applies to none).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub rewards: std::collections::BTreeMap<String, f64>,
}

/// Shares of responses that get each of the oracle's parts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OracleParts {
    pub correct: f64,
    pub language: f64,
    pub format: f64,
}

/// Samples `samples_per_prompt` responses per prompt from `policy` and scores them (by the reward
/// model with its score std, when given, and by the reward `sources`). With a `baseline` policy,
/// the log-probs of the responses under both are recorded (for the KL).
#[allow(clippy::too_many_arguments)]
pub fn sample_and_score<B: Backend>(
    policy: &CausalLm<B>,
    baseline: Option<&CausalLm<B>>,
    rm: Option<(&RewardModel<B>, Option<f64>)>,
    sources: Option<&mut RewardSources<B>>,
    prompts: &[Prompt],
    cfg: &EvalConfig,
    tok: &Tokenizer,
    stop_ids: &[u32],
    pad_id: u32,
    device: &B::Device,
) -> anyhow::Result<Vec<Scored>> {
    let expanded: Vec<&Prompt> = prompts.iter().flat_map(|p| std::iter::repeat_n(p, cfg.samples_per_prompt.max(1))).collect();
    let rows: Vec<Vec<u32>> = expanded.iter().map(|p| p.ids.clone()).collect();
    let gen_cfg = GenerateConfig {
        max_new_tokens: cfg.max_new_tokens,
        sampler: Sampler::from_temperature(cfg.temperature, None),
        stop_ids: stop_ids.to_vec(),
        pad_id,
        seed: None,
    };
    let mut out = Vec::with_capacity(expanded.len());
    let mut sources = sources;
    crate::answers::generate_in_chunks(policy, &rows, cfg.batch_size, &gen_cfg, cfg.seed, device, |range, g| {
        let chunk = &expanded[range];
        let prompt_len = g.prompt_ids.dims()[1];
        let seq = Tensor::cat(vec![g.prompt_ids.clone(), g.new_ids.clone()], 1);
        let attention = Tensor::cat(vec![g.prompt_mask.clone(), g.new_mask.clone()], 1);
        let mask = g.new_mask.clone().float();
        let scores: Option<Vec<f32>> = match rm {
            Some((rm, std)) => {
                let raw = rm.score(seq.clone(), attention.clone())?.into_data().convert::<f32>().to_vec::<f32>().expect("f32");
                Some(raw.into_iter().map(|r| scaled_score(r, std) as f32).collect())
            }
            None => None,
        };
        let sums = |m: &CausalLm<B>| -> anyhow::Result<Vec<f64>> {
            let (lp, _) = action_log_probs(m, seq.clone(), attention.clone(), prompt_len, false)?;
            Ok((lp * mask.clone()).sum_dim(1).into_data().convert::<f64>().to_vec::<f64>().expect("f64"))
        };
        let (logp, base) = match baseline {
            Some(b) => (sums(policy)?, sums(b)?),
            None => (vec![0.0; chunk.len()], vec![0.0; chunk.len()]),
        };
        let generated = g.to_host();
        let texts = generated.iter().map(|gen| tok.decode(&gen.new_ids, true)).collect::<Result<Vec<_>, _>>()?;
        let table = match sources.as_deref_mut() {
            Some(src) => {
                let inputs: Vec<RewardInput> = chunk.iter().zip(&texts).zip(&generated).map(|((prompt, response), gen)| RewardInput { prompt, response, tokens: &gen.new_ids }).collect();
                Some(src.score(&inputs, (&seq, &attention))?)
            }
            None => None,
        };
        for (i, ((p, gen), response)) in chunk.iter().zip(&generated).zip(texts).enumerate() {
            let tokens = gen.new_ids.len();
            let parts = rlhf_data::demo::oracle(&p.text, &response);
            out.push(Scored {
                prompt: p.text.clone(),
                response,
                rm_score: scores.as_ref().map(|s| s[i]),
                oracle: parts.map(|s| s.total()),
                oracle_parts: parts,
                logp: logp[i],
                baseline_logp: base[i],
                tokens,
                rewards: table.as_ref().map_or_else(Vec::new, |t| t.scores.iter().map(|s| s[i]).collect()),
            });
        }
        Ok(())
    })?;
    Ok(out)
}

/// Self-consistency of `policy` on `prompts`: `v.samples` samples per prompt (one prefill each),
/// voted, scored against the records' answers.
#[allow(clippy::too_many_arguments)]
pub fn vote_accuracy<B: Backend>(
    policy: &CausalLm<B>,
    prompts: &[Prompt],
    v: &VoteEval,
    cfg: &EvalConfig,
    tok: &Tokenizer,
    stop_ids: &[u32],
    pad_id: u32,
    device: &B::Device,
) -> anyhow::Result<crate::self_improve::VoteScores> {
    let temperature = v.temperature.unwrap_or(cfg.temperature);
    if !(temperature > 0.0) || v.samples == 0 {
        anyhow::bail!("[eval.vote]: temperature {temperature} and samples {} — a vote needs samples > 0 drawn at a temperature above 0", v.samples);
    }
    let generation = GenerateConfig {
        max_new_tokens: cfg.max_new_tokens,
        sampler: Sampler::from_temperature(temperature, None),
        stop_ids: stop_ids.to_vec(),
        pad_id,
        seed: None,
    };
    let per_chunk = (cfg.batch_size / v.samples).max(1);
    let mut votes = Vec::with_capacity(prompts.len());
    for (c, chunk) in prompts.chunks(per_chunk).enumerate() {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|p| p.ids.clone()).collect();
        let samples = crate::self_improve::sample_chunk(policy, &ids, v.samples, &generation, cfg.seed, c, tok, device)?;
        votes.extend(chunk.iter().zip(&samples).map(|(p, s)| crate::self_improve::vote_on(&v.extract, &v.field, &p.text, &p.record, s)));
    }
    Ok(crate::self_improve::vote_scores(&votes))
}

/// Means of scored responses; `with_kl` adds the mean log-ratio to the baseline; `reward_names`
/// name the sources of [`Scored::rewards`].
pub fn summarize(scored: &[Scored], with_kl: bool, reward_names: &[String]) -> PolicyScores {
    let n = scored.len().max(1) as f64;
    let oracle: Vec<f64> = scored.iter().filter_map(|s| s.oracle).collect();
    let rm: Vec<f64> = scored.iter().filter_map(|s| s.rm_score.map(f64::from)).collect();
    let parts: Vec<rlhf_data::demo::OracleScore> = scored.iter().filter_map(|s| s.oracle_parts).collect();
    let share = |f: fn(&rlhf_data::demo::OracleScore) -> bool| parts.iter().filter(|p| f(p)).count() as f64 / parts.len() as f64;
    PolicyScores {
        oracle_parts: (!parts.is_empty()).then(|| OracleParts { correct: share(|p| p.correct), language: share(|p| p.language), format: share(|p| p.format) }),
        rm_score: (!rm.is_empty()).then(|| rm.iter().sum::<f64>() / rm.len() as f64),
        oracle_score: (!oracle.is_empty()).then(|| oracle.iter().sum::<f64>() / oracle.len() as f64),
        kl: with_kl.then(|| scored.iter().map(|s| s.logp - s.baseline_logp).sum::<f64>() / n),
        response_len: scored.iter().map(|s| s.tokens as f64).sum::<f64>() / n,
        rewards: reward_means(scored, reward_names),
    }
}

/// Each source's mean over the responses it scored (sources that scored none are left out).
fn reward_means(scored: &[Scored], names: &[String]) -> std::collections::BTreeMap<String, f64> {
    names
        .iter()
        .enumerate()
        .filter_map(|(k, name)| {
            let applied: Vec<f64> = scored.iter().filter_map(|s| s.rewards.get(k).copied().flatten()).collect();
            (!applied.is_empty()).then(|| (name.clone(), applied.iter().sum::<f64>() / applied.len() as f64))
        })
        .collect()
}

/// Share of paired responses (same prompt, same sample slot) where the RM prefers `a` (ties ½;
/// responses without an RM score count as ties).
pub fn win_rate(a: &[Scored], b: &[Scored]) -> f64 {
    let n = a.len().min(b.len()).max(1) as f64;
    a.iter()
        .zip(b)
        .map(|(x, y)| match x.rm_score.partial_cmp(&y.rm_score) {
            Some(std::cmp::Ordering::Greater) => 1.0,
            Some(std::cmp::Ordering::Equal) => 0.5,
            _ => 0.0,
        })
        .sum::<f64>()
        / n
}

/// The aligned policies a pipeline run can hold beside its SFT model, in pipeline order (each the
/// folder of its stage).
pub const ALIGNED: [&str; 4] = ["self_improve", "dpo", "grpo", "ppo"];

/// The aligned policies `run` holds (those whose `final/` is complete).
pub fn aligned_policies(run: &Path) -> Vec<&'static str> {
    ALIGNED.into_iter().filter(|name| run.join(name).join("final/config.json").exists()).collect()
}

/// The reward model's held-out pairwise accuracy, as its run last logged it.
pub fn rm_pairwise_acc(reward_run: &Path) -> Option<f64> {
    let rows = rlhf_train::metrics::read_metrics(&reward_run.join("metrics.jsonl")).ok()?;
    rlhf_train::metrics::last_value(&rows, "eval_pairwise_acc")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(rm: f32) -> Scored {
        Scored { prompt: String::new(), response: String::new(), rm_score: Some(rm), oracle: None, oracle_parts: None, logp: 0.0, baseline_logp: 0.0, tokens: 0, rewards: Vec::new() }
    }

    /// Two sources over three responses: "right" scored 1, 0, 1 → 2/3; "judged" applies to the
    /// second only (0.5) → 0.5; a source that applies to none is left out.
    #[test]
    fn reward_means_skip_responses_a_source_does_not_apply_to() {
        let with = |r: Vec<Option<f64>>| Scored { rewards: r, ..s(0.0) };
        let scored = [with(vec![Some(1.0), None, None]), with(vec![Some(0.0), Some(0.5), None]), with(vec![Some(1.0), None, None])];
        let names = ["right".to_string(), "judged".to_string(), "never".to_string()];
        let means = summarize(&scored, false, &names).rewards;
        assert_eq!(means.len(), 2);
        assert!((means["right"] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(means["judged"], 0.5);
    }

    #[test]
    fn win_rate_counts_ties_as_half() {
        let a = [s(1.0), s(0.0), s(2.0), s(1.0)];
        let b = [s(0.0), s(1.0), s(2.0), s(0.5)];
        assert_eq!(win_rate(&a, &b), (1.0 + 0.0 + 0.5 + 1.0) / 4.0);
    }
}

//! `rlhf data check | convert | self-instruct | distill | rank | self-improve | word-problems | demo`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use rlhf_data::demo::{write_demo, DemoSizes};
use rlhf_data::encode::{encode_prompt, encode_ranking, encode_sft, pack_pretrain};
use rlhf_data::{load, BuiltinTemplate, ChatFormat, Encoded, Format, Kind, LoadOptions, Record, Tokenizer};
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Validate a data file: record counts, K distribution, token lengths; non-zero exit on bad records.
    Check(CheckArgs),
    /// Convert InstructionWild / Alpaca / TRL / ranking files into ColossalChat JSONL.
    Convert(ConvertArgs),
    /// Bootstrap instruction-following data from seed tasks with a teacher model (Self-Instruct).
    SelfInstruct(SelfInstructArgs),
    /// Answer a prompt set with a teacher model: SFT data (Vicuna-style distillation).
    Distill(DistillArgs),
    /// Sample K responses per prompt from a model folder and have a judge model rank them (RLAIF):
    /// a K-way ranking file for stage 2.
    Rank(RankArgs),
    /// Sample K answers per unlabeled question from a model folder, take the majority answer, and
    /// write the reasoning paths that reach it as SFT data for the same model (LMSI); resumable.
    SelfImprove(SelfImproveArgs),
    /// Write arithmetic word problems with answers (prompts.jsonl, heldout_prompts.jsonl) for
    /// critic-free RL with the `math_answer` verifier (deterministic for a seed).
    WordProblems {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Training prompts.
        #[arg(long, default_value_t = 2000)]
        prompts: usize,
        /// Distinct held-out problems (arithmetic never in the training prompts).
        #[arg(long, default_value_t = 200)]
        heldout: usize,
    },
    /// Write the embedded bilingual demo set (deterministic for a seed).
    Demo {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

#[derive(Debug, Args)]
pub struct Source {
    /// The data file (JSONL or a JSON array; `.txt` for pretraining text).
    file: PathBuf,
    #[arg(long, value_enum)]
    kind: Kind,
    #[arg(long, value_enum, default_value = "auto")]
    format: Format,
    /// Skip bad records and report them instead of stopping at the first.
    #[arg(long)]
    skip_invalid: bool,
}

impl Source {
    fn load(&self) -> anyhow::Result<rlhf_data::Loaded> {
        Ok(load(&self.file, LoadOptions { kind: self.kind, format: self.format, skip_invalid: self.skip_invalid })?)
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    source: Source,
    /// A folder with tokenizer.json: adds token-length statistics.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Built-in chat template when the tokenizer has none.
    #[arg(long, value_enum)]
    template: Option<BuiltinTemplate>,
    /// Truncation length used for the truncated/dropped counts.
    #[arg(long, default_value_t = 512)]
    max_len: usize,
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    #[command(flatten)]
    source: Source,
    #[arg(long)]
    out: PathBuf,
}

pub fn run(cmd: DataCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DataCommand::Check(args) => check(args),
        DataCommand::Convert(args) => convert(args),
        DataCommand::SelfInstruct(args) => self_instruct(args),
        DataCommand::Distill(args) => distill(args),
        DataCommand::Rank(args) => rank(args),
        DataCommand::SelfImprove(args) => self_improve(args),
        DataCommand::WordProblems { out, seed, prompts, heldout } => {
            rlhf_data::word_problems::write_word_problems(&out, seed, prompts, heldout)?;
            println!("wrote {prompts} word problems and {heldout} held-out ones (seed {seed}) to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        DataCommand::Demo { out, seed } => {
            write_demo(&out, seed, DemoSizes::default())?;
            println!("wrote the demo set (seed {seed}) to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The teacher: an OpenAI-compatible endpoint.
#[derive(Debug, Args)]
pub struct TeacherArgs {
    /// Model name the endpoint serves.
    #[arg(long)]
    model: String,
    /// E.g. http://127.0.0.1:8000/v1 (default: OPENAI_BASE_URL).
    #[arg(long)]
    base_url: Option<String>,
    /// Default: OPENAI_API_KEY.
    #[arg(long)]
    api_key: Option<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[arg(long, default_value_t = 5)]
    max_retries: u32,
    /// Seconds per request.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// Answered requests are kept here; a rerun takes them from it (default: OUT.cache/).
    #[arg(long)]
    cache: Option<PathBuf>,
}

impl TeacherArgs {
    pub(crate) fn client(&self, out: &std::path::Path) -> anyhow::Result<rlhf_teacher::Client> {
        rlhf_teacher::Client::new(&rlhf_teacher::ClientConfig {
            base_url: self.base_url.clone(),
            model: self.model.clone(),
            api_key: self.api_key.clone(),
            concurrency: self.concurrency,
            max_retries: self.max_retries,
            timeout_s: self.timeout,
            cache_dir: Some(self.cache.clone().unwrap_or_else(|| PathBuf::from(format!("{}.cache", out.display())))),
        })
    }
}

#[derive(Debug, Args)]
pub struct SelfInstructArgs {
    /// Seed tasks, JSONL of {"instruction", "input", "output"} (e.g. datasets/seed_tasks.jsonl).
    #[arg(long)]
    seeds: PathBuf,
    /// ColossalChat SFT JSONL to write.
    #[arg(long)]
    out: PathBuf,
    /// Instructions to generate.
    #[arg(long, default_value_t = 100)]
    count: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Requests per round.
    #[arg(long, default_value_t = 8)]
    requests_per_round: usize,
    /// A new task is dropped when its ROUGE-L with any pooled one reaches this.
    #[arg(long, default_value_t = rlhf_teacher::instructions::DEFAULT_MAX_SIMILARITY)]
    max_similarity: f64,
    #[command(flatten)]
    teacher: TeacherArgs,
}

fn self_instruct(args: SelfInstructArgs) -> anyhow::Result<ExitCode> {
    use rlhf_teacher::self_instruct::{read_seed_tasks, self_instruct, SelfInstructConfig};
    let seeds = read_seed_tasks(&args.seeds)?;
    let client = args.teacher.client(&args.out)?;
    let mut cfg = SelfInstructConfig { count: args.count, seed: args.seed, requests_per_round: args.requests_per_round, ..Default::default() };
    cfg.filter.max_similarity = args.max_similarity;
    let summary = self_instruct(&seeds, &cfg, &client, &args.out)?;
    let verdicts: Vec<String> = summary.verdicts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "self-instruct: {} seeds, {} rounds; tasks offered: {}; {} records ({} without output) → {}",
        seeds.len(),
        summary.rounds,
        verdicts.join(", "),
        summary.written,
        summary.no_output,
        args.out.display()
    );
    print_client_stats(&client);
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct DistillArgs {
    #[command(flatten)]
    source: crate::answers::PromptSource,
    /// ColossalChat SFT JSONL to write.
    #[arg(long)]
    out: PathBuf,
    /// Assistant turns per conversation; beyond 1 the teacher also writes the user's follow-ups.
    #[arg(long, default_value_t = 1)]
    turns: usize,
    #[arg(long, default_value_t = 0.7)]
    temperature: f64,
    #[arg(long, default_value_t = 1024)]
    max_tokens: u32,
    /// A system message for the teacher (not written to the data).
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    teacher: TeacherArgs,
}

fn distill(args: DistillArgs) -> anyhow::Result<ExitCode> {
    use rlhf_teacher::distill::{distill, DistillConfig};
    let prompts: Vec<Vec<rlhf_teacher::ChatMessage>> = args
        .source
        .load()?
        .into_iter()
        .map(|(_, messages)| crate::answers::to_chat(&messages))
        .collect();
    let client = args.teacher.client(&args.out)?;
    let cfg = DistillConfig { turns: args.turns, temperature: args.temperature, max_tokens: args.max_tokens, system: args.system.clone() };
    let n = prompts.len();
    let summary = distill(prompts, &cfg, &client, &args.out)?;
    println!("distill: {n} prompts → {} conversations of {} turn(s) ({} without an answer) → {}", summary.written, cfg.turns, summary.empty, args.out.display());
    print_client_stats(&client);
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct RankArgs {
    /// The model folder whose samples are ranked (e.g. a pipeline's `sft/final`).
    #[arg(long)]
    policy: PathBuf,
    #[command(flatten)]
    source: crate::answers::PromptSource,
    /// K-way ranking JSONL to write ({"prompt", "completions", "ranking"}; 1 = best).
    #[arg(long)]
    out: PathBuf,
    /// Responses per prompt (2–9).
    #[arg(long, default_value_t = 4)]
    k: usize,
    /// Sampling temperature of the responses.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    #[arg(long)]
    top_p: Option<f64>,
    #[command(flatten)]
    answers: crate::answers::AnswerArgs,
    /// Orders each prompt's responses are judged in; more than 1 re-asks in shuffled orders, averages
    /// the rankings (disagreements become ties) and reports the judge's consistency.
    #[arg(long, default_value_t = 1)]
    orders: usize,
    /// Show the responses in their sampled order the first time instead of shuffled.
    #[arg(long)]
    no_shuffle: bool,
    /// Tokens the judge may write per ranking.
    #[arg(long, default_value_t = 1024)]
    judge_max_tokens: u32,
    #[command(flatten)]
    teacher: TeacherArgs,
}

fn rank(args: RankArgs) -> anyhow::Result<ExitCode> {
    use rlhf_teacher::rank::{rank, RankConfig, RankItem};
    anyhow::ensure!((2..=9).contains(&args.k), "--k must be between 2 and 9 (stage 2 reads K-way rankings up to 9)");
    anyhow::ensure!(args.temperature > 0.0, "--temperature must be > 0: K greedy samples would all be equal");
    let prompts = args.source.load()?;
    let messages: Vec<Vec<rlhf_data::Message>> = prompts.iter().map(|(_, m)| m.clone()).collect();
    let samples = crate::answers::write_answers(&args.policy, &messages, args.k, args.temperature, args.top_p, &args.answers)?;
    let mut items = vec![];
    let mut with_empty = 0;
    for (prompt, samples) in messages.into_iter().zip(samples) {
        let Some(responses) = samples else { continue };
        // A ranking file cannot hold an empty response.
        if responses.iter().any(String::is_empty) {
            with_empty += 1;
            continue;
        }
        items.push(RankItem { prompt: crate::answers::to_chat(&prompt), responses });
    }
    let client = args.teacher.client(&args.out)?;
    let cfg = RankConfig { orders: args.orders, shuffle: !args.no_shuffle, seed: args.answers.seed, max_tokens: args.judge_max_tokens };
    let summary = rank(&items, &cfg, &client, &args.out)?;
    let agreement = match (summary.agreement, summary.same_best) {
        (Some(tau), Some(best)) => format!("; judge consistency across orders: Kendall τ {tau:.3}, same best {:.1}%", 100.0 * best),
        _ => String::new(),
    };
    println!(
        "rank: {} prompts, K = {}; {} ranked, {} without a parseable ranking ({} judgements unparsed), {} with an empty sample{agreement} → {}",
        prompts.len(),
        args.k,
        summary.written,
        summary.unranked,
        summary.unparsed,
        with_empty,
        args.out.display()
    );
    print_client_stats(&client);
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct SelfImproveArgs {
    /// The model folder that answers (and is then trained on its own voted answers).
    #[arg(long)]
    model: PathBuf,
    /// Unlabeled questions (any format stage 3 reads); an answer field, when present, is used only
    /// to report how often the vote is right.
    #[arg(long)]
    prompts: PathBuf,
    #[arg(long, value_enum, default_value = "auto")]
    format: Format,
    #[arg(long)]
    skip_invalid: bool,
    /// At most this many questions, from the top.
    #[arg(long)]
    limit: Option<usize>,
    /// ColossalChat SFT JSONL to write (samples are saved in OUT.samples/, the summary in
    /// OUT.summary.json).
    #[arg(long)]
    out: PathBuf,
    /// Samples per question [default: 8].
    #[arg(long, short = 'k')]
    samples: Option<usize>,
    /// [default: 0.7]
    #[arg(long)]
    temperature: Option<f64>,
    #[arg(long)]
    top_p: Option<f64>,
    /// [default: 256]
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// [default: 512]
    #[arg(long)]
    max_prompt_len: Option<usize>,
    /// final, boxed, gsm8k, last_number, demo, or regex:PATTERN [default: final].
    #[arg(long)]
    extract: Option<rlhf_rl::Extractor>,
    /// Keep a question when its majority answer has this share of the K samples [default: 0.6].
    #[arg(long)]
    min_agreement: Option<f64>,
    /// Distinct reasoning paths written per kept question [default: 4].
    #[arg(long)]
    paths_per_question: Option<usize>,
    /// The record field with the true answer, for the report only [default: answer].
    #[arg(long)]
    answer_field: Option<String>,
    /// Rows (questions × samples) generated together [default: 64].
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A built-in chat format, for tokenizers without a chat template.
    #[arg(long, value_enum)]
    template: Option<BuiltinTemplate>,
    #[command(flatten)]
    runtime: crate::InferenceRuntime,
}

impl SelfImproveArgs {
    fn config(&self) -> rlhf_eval::SelfImproveConfig {
        let d = rlhf_eval::SelfImproveConfig::for_prompts(&self.prompts);
        rlhf_eval::SelfImproveConfig {
            format: self.format,
            skip_invalid: self.skip_invalid,
            limit: self.limit,
            samples: self.samples.unwrap_or(d.samples),
            temperature: self.temperature.unwrap_or(d.temperature),
            top_p: self.top_p.or(d.top_p),
            max_new_tokens: self.max_new_tokens.unwrap_or(d.max_new_tokens),
            max_prompt_len: self.max_prompt_len.unwrap_or(d.max_prompt_len),
            extract: self.extract.clone().unwrap_or(d.extract.clone()),
            min_agreement: self.min_agreement.unwrap_or(d.min_agreement),
            paths_per_question: self.paths_per_question.unwrap_or(d.paths_per_question),
            answer_field: self.answer_field.clone().unwrap_or(d.answer_field.clone()),
            batch_size: self.batch_size.unwrap_or(d.batch_size),
            seed: self.seed,
            template: self.template,
            quant: self.runtime.quant,
            ..d
        }
    }
}

struct SelfImproving<'a>(&'a SelfImproveArgs);

impl rlhf_runtime::InferenceTask for SelfImproving<'_> {
    type Output = anyhow::Result<rlhf_eval::SelfImproveSummary>;

    fn run<B: rlhf_runtime::Backend>(self, device: B::Device) -> Self::Output {
        let a = self.0;
        rlhf_eval::self_improve::<B>(&a.model, &a.config(), a.runtime.precision, &a.out, &device)
    }
}

fn self_improve(args: SelfImproveArgs) -> anyhow::Result<ExitCode> {
    let summary = rlhf_runtime::dispatch(args.runtime, rlhf_runtime::Inference(SelfImproving(&args)))??;
    println!("self-improve: {} → {}", rlhf_eval::self_improve::summary_line(&summary), args.out.display());
    Ok(ExitCode::SUCCESS)
}

/// The client's request counts, for a job's summary.
pub(crate) fn print_client_stats(client: &rlhf_teacher::Client) {
    let load = |c: &std::sync::atomic::AtomicUsize| c.load(std::sync::atomic::Ordering::Relaxed);
    let stats = &client.stats;
    println!("requests: {} sent ({} retries), {} from the cache", load(&stats.sent), load(&stats.retried), load(&stats.cached));
}

fn percentile(sorted: &[usize], p: f64) -> usize {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let loaded = args.source.load()?;
    println!("{}: {} {:?} record(s)", args.source.file.display(), loaded.records.len(), args.source.kind);
    if args.source.kind == Kind::Ranking {
        let mut k: BTreeMap<usize, usize> = BTreeMap::new();
        let mut ties = 0;
        for (_, r) in &loaded.records {
            if let Record::Ranking(r) = r {
                *k.entry(r.responses.len()).or_default() += 1;
                let mut ranks = r.ranks.clone();
                ranks.sort_unstable();
                ranks.dedup();
                ties += usize::from(ranks.len() < r.ranks.len());
            }
        }
        let dist: Vec<String> = k.iter().map(|(k, n)| format!("K={k}: {n}")).collect();
        println!("responses per prompt: {} ({ties} record(s) with ties)", dist.join(", "));
    }
    if let Some(dir) = &args.tokenizer {
        let tok = Tokenizer::from_dir(dir)?;
        let fmt = ChatFormat::resolve(&tok, args.template)?;
        let (mut lengths, mut truncated, mut dropped) = (Vec::new(), 0, 0);
        let mut tally = |len: usize, kept: bool, cut: bool| {
            lengths.push(len);
            truncated += usize::from(cut);
            dropped += usize::from(!kept);
        };
        let mut docs = Vec::new();
        for (line, r) in &loaded.records {
            let at = || format!("{}:{line}", args.source.file.display());
            match r {
                Record::Sft(m) => {
                    let full = encode_sft(&tok, &fmt, m, usize::MAX).with_context(at)?;
                    let Encoded::Kept(s) = full else { unreachable!("no truncation at usize::MAX") };
                    let e = encode_sft(&tok, &fmt, m, args.max_len).with_context(at)?;
                    tally(s.ids.len(), !matches!(e, Encoded::Dropped), matches!(e, Encoded::Truncated(_)));
                }
                Record::Prompt(m, _) => {
                    let Encoded::Kept(ids) = encode_prompt(&tok, &fmt, m, usize::MAX).with_context(at)? else { unreachable!() };
                    tally(ids.len(), ids.len() <= args.max_len, false);
                }
                Record::Ranking(rk) => {
                    let (Encoded::Kept(s) | Encoded::Truncated(s)) = encode_ranking(&tok, &fmt, rk, usize::MAX / 2).with_context(at)? else {
                        unreachable!()
                    };
                    let longest = s.sequences.iter().map(Vec::len).max().unwrap_or(0);
                    tally(longest, s.prompt_len + 2 <= args.max_len, longest > args.max_len);
                }
                Record::Pretrain(t) => docs.push(t.clone()),
            }
        }
        if !docs.is_empty() {
            let blocks = pack_pretrain(&tok, &docs, args.max_len)?;
            let tokens: usize = blocks.iter().map(Vec::len).sum();
            println!("pretraining: {tokens} tokens → {} block(s) of ≤{} tokens", blocks.len(), args.max_len);
        }
        if !lengths.is_empty() {
            lengths.sort_unstable();
            let mean = lengths.iter().sum::<usize>() as f64 / lengths.len() as f64;
            println!(
                "tokens per record: min {}, mean {mean:.1}, p50 {}, p95 {}, max {}",
                lengths[0],
                percentile(&lengths, 0.5),
                percentile(&lengths, 0.95),
                lengths[lengths.len() - 1]
            );
            println!("at max_len {}: {truncated} truncated, {dropped} dropped", args.max_len);
        }
    }
    if loaded.skipped.count() > 0 {
        eprintln!("{}: {}", args.source.file.display(), loaded.skipped);
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

fn colossal_messages(msgs: &[rlhf_data::Message]) -> serde_json::Value {
    json!(msgs.iter().map(|m| json!({ "from": m.role, "content": m.content })).collect::<Vec<_>>())
}

fn convert(args: ConvertArgs) -> anyhow::Result<ExitCode> {
    let loaded = args.source.load()?;
    let mut out = Vec::new();
    for (_, r) in &loaded.records {
        let row = match r {
            Record::Sft(m) | Record::Prompt(m, _) => json!({ "messages": colossal_messages(m) }),
            Record::Ranking(rk) if rk.responses.len() == 2 && rk.ranks[0] < rk.ranks[1] => json!({
                "context": colossal_messages(&rk.prompt),
                "chosen": [{ "from": "assistant", "content": rk.responses[0] }],
                "rejected": [{ "from": "assistant", "content": rk.responses[1] }],
            }),
            Record::Ranking(rk) => json!({
                "prompt": colossal_messages(&rk.prompt),
                "completions": rk.responses,
                "ranking": rk.ranks,
            }),
            Record::Pretrain(t) => json!({ "text": t }),
        };
        serde_json::to_writer(&mut out, &row)?;
        out.push(b'\n');
    }
    rlhf_files::write_atomic(&args.out, &out)?;
    println!("wrote {} record(s) to {}", loaded.records.len(), args.out.display());
    if loaded.skipped.count() > 0 {
        eprintln!("{}: {}", args.source.file.display(), loaded.skipped);
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

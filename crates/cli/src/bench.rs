//! `rlhf bench …`: throughput figures printed as tokens/s (targets live here, never in timed tests).

use std::path::PathBuf;
use std::time::Instant;

use rlhf_runtime::Backend;
use clap::Args;
use rlhf_runtime::{dispatch, DeviceSpec, Inference, InferenceTask, Precision};
use rlhf_model::{generate, CausalLm, GenerateConfig, Sampler, TransformerConfig};

#[derive(Debug, Clone, Args)]
pub struct GenerateBench {
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 16)]
    prompt_len: usize,
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    #[command(flatten)]
    size: BenchModel,
    /// Timed repetitions after one warm-up.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Sample (temperature 1, top-k 50) instead of greedy.
    #[arg(long)]
    sample: bool,
    /// Hold the block projections as q8 / q4 / nf4 codes (as `rlhf generate --quant`).
    #[arg(long)]
    quant: Option<rlhf_runtime::quant::BaseQuant>,
}

/// The size of the random model a benchmark runs: a small LLaMA (SwiGLU width ≈ 8/3·hidden), a
/// real model's shape (`--preset`, or `--model DIR` whose config.json is read; weights never are).
#[derive(Debug, Clone, Args)]
pub struct BenchModel {
    #[arg(long, default_value_t = 4)]
    layers: usize,
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    #[arg(long, default_value_t = 8192)]
    vocab: usize,
    /// A real model's shape: Qwen2.5-0.5B, -1.5B or -7B (random weights).
    #[arg(long, value_enum, conflicts_with = "model")]
    preset: Option<Preset>,
    /// The shape of a model folder's config.json (random weights; the weights are not read).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The device's peak FLOP/s in TFLOP/s for the model FLOP utilisation (default on CUDA: H100/H200
    /// SXM dense TF32 494.7 in f32, BF16 989.4 in bf16; none on the CPU).
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// f32, or bf16: mixed precision for training (f32 masters, bf16 matmuls), bf16 weights and KV
    /// cache for generation.
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Recompute each decoder block in backward instead of keeping its activations (sft, ppo).
    #[arg(long)]
    gradient_checkpointing: bool,
}

/// Real model shapes for benchmarks (the same `config.json` files `rlhf plan` reads in `configs/shapes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    #[value(name = "0.5b")]
    Qwen05b,
    #[value(name = "1.5b")]
    Qwen15b,
    #[value(name = "7b")]
    Qwen7b,
}

impl Preset {
    fn config_json(self) -> (&'static str, &'static str) {
        match self {
            Preset::Qwen05b => ("Qwen2.5-0.5B", include_str!("../../../configs/shapes/qwen2.5-0.5b/config.json")),
            Preset::Qwen15b => ("Qwen2.5-1.5B", include_str!("../../../configs/shapes/qwen2.5-1.5b/config.json")),
            Preset::Qwen7b => ("Qwen2.5-7B", include_str!("../../../configs/shapes/qwen2.5-7b/config.json")),
        }
    }
}

/// H100 / H200 SXM dense tensor-core peaks, TFLOP/s: f32 matmuls (run as TF32), and bf16.
const CUDA_TF32_PEAK_TFLOPS: f64 = 494.7;
const CUDA_BF16_PEAK_TFLOPS: f64 = 989.4;

impl BenchModel {
    fn config(&self, max_positions: usize) -> anyhow::Result<TransformerConfig> {
        let real = match (&self.preset, &self.model) {
            (Some(p), _) => {
                let (name, json) = p.config_json();
                let hf: rlhf_model::HfConfig = serde_json::from_str(json)?;
                Some(hf.resolve(std::path::Path::new(name))?)
            }
            (None, Some(dir)) => Some(TransformerConfig::from_hf_dir(dir)?),
            (None, None) => None,
        };
        Ok(match real {
            // Positions only size the rotary tables here: as many as the benchmark uses.
            Some(cfg) => TransformerConfig { max_position_embeddings: max_positions.max(256), pad_token_id: Some(0), ..cfg },
            None => {
                let ffn = (self.hidden * 8 / 3).div_ceil(16) * 16;
                let cfg = TransformerConfig::llama(self.vocab, self.hidden, ffn, self.layers, self.heads, self.heads, max_positions.max(256));
                TransformerConfig { pad_token_id: Some(0), ..cfg }
            }
        })
    }

    /// A randomly initialised model (tied or untied head as the shape says) and its config.
    fn random_model<B: Backend>(&self, max_positions: usize, device: &B::Device) -> anyhow::Result<(TransformerConfig, CausalLm<B>)> {
        B::seed(device, 0);
        let cfg = self.config(max_positions)?;
        let lm_head = (!cfg.tie_word_embeddings).then(|| {
            burn::module::Param::from_tensor(burn::tensor::Tensor::random(
                [cfg.vocab_size, cfg.hidden_size],
                burn::tensor::Distribution::Normal(0.0, 0.02),
                device,
            ))
        });
        let model = CausalLm { lm_head, model: cfg.init::<B>(device), lm_head_codes: None };
        Ok((cfg, model))
    }

    /// How the stages would set up a model to train with these flags: adapters when `lora` is given,
    /// compute precision (frozen weights stored in it) and gradient checkpointing.
    fn setup<'a>(&self, lora: Option<&'a rlhf_model::LoraConfig>) -> rlhf_model::TrainingSetup<'a> {
        rlhf_model::TrainingSetup { lora, precision: self.precision, gradient_checkpointing: self.gradient_checkpointing }
    }

    /// How the model computes, for the header line.
    fn settings(&self) -> String {
        format!("{}{}", self.precision, if self.gradient_checkpointing { ", gradient checkpointing" } else { "" })
    }

    fn describe(&self, cfg: &TransformerConfig) -> String {
        let shape = format!("{} layers, d={}, vocab {}", cfg.num_layers, cfg.hidden_size, cfg.vocab_size);
        let params = cfg.num_params() as f64 / 1e6;
        match (&self.preset, &self.model) {
            (Some(p), _) => format!("{:.1}M-param {} shape ({shape}, random weights)", params, p.config_json().0),
            (None, Some(dir)) => format!("{params:.1}M-param model of {}'s shape ({shape}, random weights)", dir.display()),
            (None, None) => format!("{params:.2}M-param LLaMA ({shape})"),
        }
    }

    /// Model FLOP/s as 6·N·tokens/s (N = all parameters) and its share of the device's peak.
    fn flops_line(&self, cfg: &TransformerConfig, tokens_per_s: f64, device: DeviceSpec) -> String {
        let tflops = 6.0 * cfg.num_params() as f64 * tokens_per_s / 1e12;
        let cuda_peak = if self.precision == Precision::Bf16 { CUDA_BF16_PEAK_TFLOPS } else { CUDA_TF32_PEAK_TFLOPS };
        let peak = self.peak_tflops.or((device != DeviceSpec::Cpu).then_some(cuda_peak));
        match peak {
            Some(p) => format!("model FLOP/s (6·N·tokens/s): {tflops:.3} TFLOP/s = {:.1}% MFU of an assumed {p} TFLOP/s peak", 100.0 * tflops / p),
            None => format!("model FLOP/s (6·N·tokens/s): {tflops:.3} TFLOP/s (no peak assumed on the CPU; --peak-tflops P gives MFU)"),
        }
    }
}

/// Row `row`'s `len` token ids, spread over the vocabulary (never 0, the padding id).
fn bench_ids(row: usize, len: usize, vocab: usize) -> Vec<u32> {
    (0..len).map(|i| ((row * 7919 + i * 104_729) % (vocab - 1) + 1) as u32).collect()
}

/// `count` prompts of up to `max_len` tokens, of different lengths (left padding exercised).
fn uneven_prompts(count: usize, max_len: usize, vocab: usize) -> Vec<Vec<u32>> {
    (0..count).map(|b| bench_ids(b, max_len - (b % 4).min(max_len - 1), vocab)).collect()
}

impl InferenceTask for GenerateBench {
    type Output = anyhow::Result<()>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let (cfg, model) = self.size.random_model::<B>(self.prompt_len + self.new_tokens, &device)?;
        let model = model.quantized(self.quant)?.for_inference(self.size.precision);
        let prompts = uneven_prompts(self.batch, self.prompt_len, cfg.vocab_size);
        let sampler = if self.sample {
            Sampler::Sample { temperature: 1.0, top_k: Some(50), top_p: None }
        } else {
            Sampler::Greedy
        };
        let gen_cfg = GenerateConfig { max_new_tokens: self.new_tokens, sampler, stop_ids: vec![], pad_id: 0, seed: Some(0) };
        println!(
            "generate: {}, batch {}, prompt ≤{}, {} new tokens, {}, {}{}; weights {}",
            self.size.describe(&cfg),
            self.batch,
            self.prompt_len,
            self.new_tokens,
            self.device,
            self.size.precision,
            self.quant.map_or(String::new(), |q| format!(", block projections as {q} codes")),
            rlhf_train::memory::gib(model.weight_bytes() as u64),
        );
        let mut best = f64::INFINITY;
        for rep in 0..=self.repeats {
            let start = Instant::now();
            let out = generate(&model, &prompts, &gen_cfg, &device)?.to_host(); // to_host syncs the device
            let secs = start.elapsed().as_secs_f64();
            let tokens: usize = out.iter().map(|g| g.new_ids.len()).sum();
            if rep == 0 {
                println!("  warm-up: {secs:.3}s");
                continue;
            }
            best = best.min(secs);
            println!("  run {rep}: {secs:.3}s, {:.0} tokens/s", tokens as f64 / secs);
        }
        let tokens = self.batch * self.new_tokens;
        println!("generate tokens/s (best of {}): {:.0}", self.repeats, tokens as f64 / best);
        if self.device == DeviceSpec::Cpu {
            println!("memory: peak resident {}", rlhf_train::memory::peak_resident_bytes().map_or("not measured".into(), rlhf_train::memory::gib));
        }
        Ok(())
    }
}

pub fn run_generate(args: GenerateBench) -> anyhow::Result<()> {
    dispatch(rlhf_runtime::Runtime { device: args.device, precision: args.size.precision }, Inference(args.clone()))?
}

#[derive(Debug, Clone, Args)]
pub struct SftBench {
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Sequences per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 256)]
    seq: usize,
    #[command(flatten)]
    size: BenchModel,
    /// Timed steps after two warm-up steps.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Train LoRA adapters of this rank (alpha = 2·rank, every projection) on a frozen model.
    #[arg(long)]
    lora: Option<usize>,
    /// Keep the frozen base's projections quantized (q8 | q4 | nf4; needs --lora), as QLoRA.
    #[arg(long, requires = "lora")]
    base_quant: Option<rlhf_runtime::quant::BaseQuant>,
}

/// The bench's LoRA: rank `r`, alpha 2r, every projection (as `benches/` does with PEFT), on a
/// base kept in f32 or quantized.
fn bench_lora(r: usize, base_quant: Option<rlhf_runtime::quant::BaseQuant>) -> rlhf_model::LoraConfig {
    rlhf_model::LoraConfig { r, alpha: 2.0 * r as f64, target_modules: vec!["all-linear".into()], base_quant, ..Default::default() }
}

impl rlhf_runtime::Task for SftBench {
    type Output = anyhow::Result<()>;

    /// One optimizer step = forward + backward + the update path every stage uses
    /// ([`rlhf_train::Trainable`]: non-finite check, global-norm clip, AdamW).
    fn run<B: rlhf_runtime::AutodiffBackend>(self, device: B::Device) -> Self::Output {
        use burn::tensor::ElementConversion;
        let (cfg, model) = self.size.random_model::<B>(self.seq, &device)?;
        let lora_cfg = self.lora.map(|r| bench_lora(r, self.base_quant));
        let (model, spec) = self.size.setup(lora_cfg.as_ref()).apply(model, 0, "bench sft", &device)?;
        let lora = spec.map_or(String::new(), |spec| format!(", {}", spec.describe(&model, cfg.arch)));
        let samples: Vec<rlhf_data::encode::SftSample> = (0..self.batch)
            .map(|b| rlhf_data::encode::SftSample {
                ids: bench_ids(b, self.seq, cfg.vocab_size),
                loss_mask: vec![true; self.seq],
            })
            .collect();
        let batch: Vec<&rlhf_data::encode::SftSample> = samples.iter().collect();
        let targets = samples.iter().map(|s| s.targets()).sum::<usize>() as f64;
        let mut model = rlhf_train::Trainable::new("model", model, &rlhf_train::optim::OptimConfig::default(), &device);
        println!("sft step: {}, batch {} × seq {}, {}, {}{lora}", self.size.describe(&cfg), self.batch, self.seq, self.device, self.size.settings());
        let mut best = f64::INFINITY;
        for step in 0..self.steps + 2 {
            let start = Instant::now();
            let loss = rlhf_train::batch::lm_loss(&model.module, &batch, 0, targets, &device)?;
            let value = loss.clone().into_scalar().elem::<f64>();
            model.backward(loss, value);
            model.step(1e-4, step + 1, "none")?;
            // Reading a parameter back syncs the device.
            let _ = model.module.model.norm.weight.val().into_data();
            let secs = start.elapsed().as_secs_f64();
            if step >= 2 {
                best = best.min(secs);
                println!("  step {}: {secs:.3}s, {:.0} tokens/s", step - 1, (self.batch * self.seq) as f64 / secs);
            }
        }
        let tokens_per_s = (self.batch * self.seq) as f64 / best;
        println!("sft train tokens/s (best of {}): {tokens_per_s:.0}", self.steps);
        println!("{}", self.size.flops_line(&cfg, tokens_per_s, self.device));
        // The memory plan of the same step (one micro-batch = the whole batch), beside what it used.
        let plan_cfg: rlhf_sft::SftConfig = toml::from_str(&format!(
            "precision = \"{p}\"\n[model]\nfrom = \"-\"\n[data]\ntrain = \"-\"\nmax_len = {seq}\n[train]\nsteps = 1\nbatch_size = {b}\nmicro_batch_size = {b}\nlr = 1e-4\ngradient_checkpointing = {ckpt}\n",
            p = self.size.precision,
            seq = self.seq,
            b = self.batch,
            ckpt = self.size.gradient_checkpointing
        ))?;
        let plan_cfg = rlhf_sft::SftConfig { lora: self.lora.map(|r| bench_lora(r, self.base_quant)), ..plan_cfg };
        let plan = rlhf_sft::memory_plan(&plan_cfg, &|_| Ok(cfg.clone()))?;
        let measured = rlhf_train::memory::peak_resident_bytes().filter(|_| self.device == DeviceSpec::Cpu).map_or("not measured".into(), rlhf_train::memory::gib);
        print!("{}", plan.table());
        println!("memory: predicted peak {} (plan), measured {measured} ({})", rlhf_train::memory::gib(plan.peak_bytes()), self.device);
        Ok(())
    }
}

pub fn run_sft(args: SftBench) -> anyhow::Result<()> {
    dispatch(rlhf_runtime::Runtime { device: args.device, precision: args.size.precision }, args.clone())?
}

#[derive(Debug, Clone, Args)]
pub struct PpoBench {
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Prompts (one response each) per iteration.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 32)]
    prompt_len: usize,
    /// Response length (a random model never stops early).
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Responses per forward/backward.
    #[arg(long, default_value_t = 8)]
    micro_batch: usize,
    #[command(flatten)]
    size: BenchModel,
    /// Timed iterations after one warm-up.
    #[arg(long, default_value_t = 2)]
    iterations: usize,
    /// LoRA adapters of this rank on the actor and the critic (alpha = 2·rank, every projection); the
    /// reference and the reward model are then their frozen bases.
    #[arg(long)]
    lora: Option<usize>,
    /// Keep both frozen bases' projections quantized (q8 | q4 | nf4; needs --lora), as QLoRA.
    #[arg(long, requires = "lora")]
    base_quant: Option<rlhf_runtime::quant::BaseQuant>,
}

impl rlhf_runtime::Task for PpoBench {
    type Output = anyhow::Result<()>;

    /// One PPO-ptx iteration (1 epoch, 2 minibatches, ptx on) of four random models of the given size,
    /// with its time split into generation / scoring / training.
    fn run<B: rlhf_runtime::AutodiffBackend>(self, device: B::Device) -> Self::Output {
        use burn::module::AutodiffModule;
        let max_pos = self.prompt_len + self.new_tokens;
        let (cfg, actor) = self.size.random_model::<B>(max_pos, &device)?;
        let head = || rlhf_model::ScalarHead::init(cfg.hidden_size, &device);
        let critic = rlhf_model::RewardModel { model: actor.model.clone(), head: head() };
        // As the stage sets them up: trained models in mixed precision, frozen ones stored in it.
        let p = self.size.precision;
        let lora_cfg = self.lora.map(|r| bench_lora(r, self.base_quant));
        let setup = self.size.setup(lora_cfg.as_ref());
        let (reference, reward_model) = match self.lora {
            // Two bases, shared: the reference and the RM are the actor's and critic's bases (below).
            Some(_) => (None, None),
            None => (Some(actor.valid().in_precision(p)), Some(rlhf_model::RewardModel { model: actor.model.clone(), head: head() }.valid().in_precision(p))),
        };
        let (actor, _) = setup.apply(actor, 0, "bench ppo actor", &device)?;
        let (critic, _) = setup.apply(critic, 1, "bench ppo critic", &device)?;
        let reference = reference.unwrap_or_else(|| actor.without_lora().valid());
        let reward_model = reward_model.unwrap_or_else(|| rlhf_model::RewardModel { model: critic.model.without_lora(), head: critic.head.clone() }.valid());
        let ids = |b: usize, len: usize| bench_ids(b, len, cfg.vocab_size);
        let prompts: Vec<rlhf_data::Prompt> = (0..self.batch).map(|b| rlhf_data::Prompt::from_ids(ids(b, self.prompt_len))).collect();
        let ptx: Vec<rlhf_data::encode::SftSample> =
            (0..self.batch).map(|b| rlhf_data::encode::SftSample { ids: ids(b + 1000, max_pos), loss_mask: vec![true; max_pos] }).collect();
        let ppo_cfg: rlhf_ppo::PpoConfig = toml::from_str(&format!(
            r#"
precision = "{p}"
[model]
actor = "-"
reward_model = "-"
[data]
prompts = "-"
max_prompt_len = {prompt_len}
[ptx]
data = "-"
coef = 0.1
batch_size = {ptx}
max_len = {max_pos}
[generate]
max_new_tokens = {new}
[ppo]
gradient_checkpointing = {ckpt}
iterations = {its}
rollout_batch_size = {batch}
minibatch_size = {mini}
micro_batch_size = {micro}
actor_lr = 1e-5
critic_lr = 1e-5
kl_coef = 0.1
"#,
            p = self.size.precision,
            prompt_len = self.prompt_len,
            ptx = self.micro_batch,
            ckpt = self.size.gradient_checkpointing,
            new = self.new_tokens,
            its = self.iterations + 1,
            batch = self.batch,
            mini = self.batch.div_ceil(2),
            micro = self.micro_batch
        ))?;
        // The memory plan of the same iteration (LoRA as attached above), printed after the runs.
        let mut plan_cfg = ppo_cfg.clone();
        plan_cfg.ppo.lora = self.lora.map(|r| bench_lora(r, self.base_quant));
        plan_cfg.ppo.critic_lora = plan_cfg.ppo.lora.clone();
        let plan = rlhf_ppo::memory_plan(&plan_cfg, &|_| Ok(cfg.clone()))?;
        let mut trainer = rlhf_ppo::Trainer::<B>::new(ppo_cfg, actor, critic, reference, reward_model, prompts, ptx, vec![], 0, None, device.clone());
        println!(
            "ppo iteration: 4 × {}, {} prompts × ({} prompt + {} new tokens), micro-batch {}, {}, {}{}",
            self.size.describe(&cfg),
            self.batch,
            self.prompt_len,
            self.new_tokens,
            self.micro_batch,
            self.device,
            self.size.settings(),
            self.lora.map_or(String::new(), |r| format!(
                ", LoRA r={r} on actor and critic{}",
                self.base_quant.map_or(String::new(), |q| format!(", {q:?} bases"))
            ))
        );
        for it in 0..=self.iterations {
            let start = Instant::now();
            let m = trainer.iteration(it)?.metrics;
            print_iteration(it, start.elapsed().as_secs_f64(), &m);
        }
        print_plan(&plan, self.device);
        Ok(())
    }
}

/// One RL iteration's line: its time and the split the stage measured.
fn print_iteration(it: usize, secs: f64, m: &[(String, f64)]) {
    let get = |k: &str| m.iter().find(|(n, _)| n == k).map_or(0.0, |(_, v)| *v);
    let label = if it == 0 { "warm-up".to_string() } else { format!("iteration {it}") };
    println!(
        "  {label}: {secs:.2}s = generation {:.2}s ({:.0} tok/s) + scoring {:.2}s + training {:.2}s ({:.0} tok/s)",
        get("generate_s"),
        get("gen_tokens_per_s"),
        get("score_s"),
        get("train_s"),
        get("train_tokens_per_s")
    );
}

/// The memory plan beside the measured peak (on the CPU; a GPU's is not read here).
fn print_plan(plan: &rlhf_train::memory::MemoryPlan, device: DeviceSpec) {
    let measured = rlhf_train::memory::peak_resident_bytes().filter(|_| device == DeviceSpec::Cpu).map_or("not measured".into(), rlhf_train::memory::gib);
    print!("{}", plan.table());
    println!("memory: predicted peak {} (plan), measured {measured} ({device})", rlhf_train::memory::gib(plan.peak_bytes()));
}

pub fn run_ppo(args: PpoBench) -> anyhow::Result<()> {
    dispatch(rlhf_runtime::Runtime { device: args.device, precision: args.size.precision }, args.clone())?
}

#[derive(Debug, Clone, Args)]
pub struct GrpoBench {
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Prompts per iteration.
    #[arg(long, default_value_t = 8)]
    prompts: usize,
    /// Responses per prompt (one group).
    #[arg(long, default_value_t = 8)]
    n: usize,
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    /// Response length (a random model never stops early).
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    /// Responses per forward/backward.
    #[arg(long, default_value_t = 16)]
    micro_batch: usize,
    #[command(flatten)]
    size: BenchModel,
    /// Timed iterations (and generations) after one warm-up.
    #[arg(long, default_value_t = 2)]
    iterations: usize,
    /// LoRA adapters of this rank on the policy (alpha = 2·rank, every projection); the reference is
    /// then its frozen base.
    #[arg(long)]
    lora: Option<usize>,
}

impl rlhf_runtime::Task for GrpoBench {
    type Output = anyhow::Result<()>;

    /// Generation of `n` responses per prompt with one prefill per prompt against `n` independent
    /// rows, then GRPO iterations (k3 KL to a reference, a repetition reward on the sampled tokens)
    /// with their time split into generation / scoring / training.
    fn run<B: rlhf_runtime::AutodiffBackend>(self, device: B::Device) -> Self::Output {
        use burn::module::AutodiffModule;
        anyhow::ensure!(self.n >= 2 && self.prompts >= 1, "--n must be at least 2 (a group) and --prompts at least 1");
        let max_pos = self.prompt_len + self.new_tokens;
        let (cfg, policy) = self.size.random_model::<B>(max_pos, &device)?;
        let p = self.size.precision;
        let prompt_ids = uneven_prompts(self.prompts, self.prompt_len, cfg.vocab_size);
        let rows = self.prompts * self.n;
        println!(
            "grpo: {}, {} prompts × {} responses, prompt ≤{} + {} new tokens, micro-batch {}, {}, {}{}",
            self.size.describe(&cfg),
            self.prompts,
            self.n,
            self.prompt_len,
            self.new_tokens,
            self.micro_batch,
            self.device,
            self.size.settings(),
            self.lora.map_or(String::new(), |r| format!(", LoRA r={r}"))
        );

        // 1. The same rows, sampled with one prefill per prompt and with one per row.
        let sampler = Sampler::Sample { temperature: 1.0, top_k: None, top_p: None };
        let gen_cfg = GenerateConfig { max_new_tokens: self.new_tokens, sampler, stop_ids: vec![], pad_id: 0, seed: Some(0) };
        let inference = policy.valid().for_inference(p);
        let copies: Vec<Vec<u32>> = prompt_ids.iter().flat_map(|q| std::iter::repeat_n(q.clone(), self.n)).collect();
        let mut best = [f64::INFINITY; 2];
        for rep in 0..=self.iterations {
            for (i, shared) in [false, true].into_iter().enumerate() {
                let start = Instant::now();
                let out = if shared { rlhf_model::generate_n(&inference, &prompt_ids, self.n, &gen_cfg, &device)? } else { generate(&inference, &copies, &gen_cfg, &device)? };
                let _ = out.to_host(); // syncs the device
                if rep > 0 {
                    best[i] = best[i].min(start.elapsed().as_secs_f64());
                }
            }
        }
        drop(inference);
        let tokens = (rows * self.new_tokens) as f64;
        println!(
            "  generation of {rows} rows (best of {}): {} independent rows {:.3}s ({:.0} tok/s); one prefill per prompt {:.3}s ({:.0} tok/s): {:.2}× faster",
            self.iterations,
            rows,
            best[0],
            tokens / best[0],
            best[1],
            tokens / best[1],
            best[0] / best[1]
        );

        // 2. Whole iterations.
        let tmp = tempfile::tempdir()?;
        let texts: Vec<String> = (0..200).map(|i| format!("response {i}: the answer is {} and {}", i * 7 % 13, i % 5)).collect();
        let tok = rlhf_data::bpe::train_bpe(&texts, 300, tmp.path())?;
        let lora_cfg = self.lora.map(|r| bench_lora(r, None));
        let reference = self.lora.is_none().then(|| policy.valid().in_precision(p));
        let (policy, _) = self.size.setup(lora_cfg.as_ref()).apply(policy, 0, "bench grpo policy", &device)?;
        let reference = reference.unwrap_or_else(|| policy.without_lora().valid());
        let grpo_cfg: rlhf_grpo::GrpoConfig = toml::from_str(&format!(
            r#"
precision = "{p}"
[model]
policy = "-"
[data]
prompts = "-"
max_prompt_len = {prompt_len}
[generate]
max_new_tokens = {new}
[grpo]
gradient_checkpointing = {ckpt}
iterations = {its}
prompts_per_iteration = {prompts}
samples_per_prompt = {n}
minibatch_size = {mini}
micro_batch_size = {micro}
lr = 1e-5
kl = "loss"
kl_coef = 0.04
[[rewards]]
type = "repetition"
n = 2
"#,
            prompt_len = self.prompt_len,
            new = self.new_tokens,
            ckpt = self.size.gradient_checkpointing,
            its = self.iterations + 1,
            prompts = self.prompts,
            n = self.n,
            mini = rows.div_ceil(2),
            micro = self.micro_batch
        ))?;
        let mut plan_cfg = grpo_cfg.clone();
        plan_cfg.grpo.lora = lora_cfg.clone();
        let plan = rlhf_grpo::memory_plan(&plan_cfg, &|_| Ok(cfg.clone()))?;
        let rewards = rlhf_rl::RewardSources::<B::InnerBackend>::start(&grpo_cfg.rewards, p, self.micro_batch, &device)?;
        let prompts: Vec<rlhf_data::Prompt> = prompt_ids.into_iter().map(rlhf_data::Prompt::from_ids).collect();
        let mut trainer = rlhf_grpo::Trainer::<B>::new(grpo_cfg, policy, Some(reference), rewards, prompts, tok, vec![], 0, device.clone());
        for it in 0..=self.iterations {
            let start = Instant::now();
            let (m, _) = trainer.iteration(it, 0)?;
            print_iteration(it, start.elapsed().as_secs_f64(), &m);
        }
        print_plan(&plan, self.device);
        Ok(())
    }
}

pub fn run_grpo(args: GrpoBench) -> anyhow::Result<()> {
    dispatch(rlhf_runtime::Runtime { device: args.device, precision: args.size.precision }, args.clone())?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The presets are Qwen2.5's shapes, as their Hugging Face config.json files declare them (the 7B's
    /// vocabulary is padded to 152,064).
    #[test]
    fn presets_have_the_qwen2_5_shapes() {
        let shape = |p: Preset| {
            let m = BenchModel { layers: 0, hidden: 0, heads: 0, vocab: 0, preset: Some(p), model: None, peak_tflops: None, precision: Precision::F32, gradient_checkpointing: false };
            let c = m.config(1024).unwrap();
            (c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.intermediate_size, c.vocab_size, c.tie_word_embeddings, c.qkv_bias)
        };
        assert_eq!(shape(Preset::Qwen05b), (896, 24, 14, 2, 4864, 151_936, true, true));
        assert_eq!(shape(Preset::Qwen15b), (1536, 28, 12, 2, 8960, 151_936, true, true));
        assert_eq!(shape(Preset::Qwen7b), (3584, 28, 28, 4, 18944, 152_064, false, true));
    }
}

//! Critic-free RL on rewards from rules, programs or reward models: GRPO, Dr. GRPO, RLOO,
//! REINFORCE++ (with or without a group baseline) and ReMax, with DAPO's rollout hygiene. No critic
//! is trained or loaded; the reference is loaded only when the KL term is on.
//!
//! One iteration reads like the algorithm:
//! 1. [`Trainer::rollout`]: prompts → `n` responses each → the reward sources → (DAPO's dynamic
//!    sampling: drop groups without spread, sample more prompts, bounded);
//! 2. [`Trainer::experience`]: π_old and π_ref log-probs where needed → advantages;
//! 3. [`Trainer::update`]: `epochs` × minibatches of the clipped policy loss (+ β·KL, − entropy),
//!    aggregated over each optimizer step.

pub mod config;
pub mod objective;
pub mod plan;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use burn::module::AutodiffModule;
use burn::tensor::{Int, Tensor, TensorData};
use rlhf_data::batch::{shuffled, EpochOrder};
use rlhf_data::{ChatFormat, Prompt, Tokenizer};
use rlhf_model::ops::action_log_probs;
use rlhf_model::{CausalLm, Export, GenerateConfig, LoraSpec, Sampler, TrainingSetup};
use rlhf_rl::rollout::{self, device_rows, host_rows, Sampled};
use rlhf_rl::{aggregate, clipped_policy_loss, kl_per_token, run_iterations, Clip, Ended, Iteration, Iterative, KlEstimator, RewardSources, RewardTable, Schedule, StepCounts};
use rlhf_runtime::{AutodiffBackend, Backend};
use rlhf_train::checkpoint::{load_checkpoint, save_checkpoint};
use rlhf_train::schedule::get_lr;
use rlhf_train::Trainable;
use serde::{Deserialize, Serialize};

pub use config::{Estimator, GrpoConfig, GrpoModels, GrpoTrainConfig, KlPlacement};
use objective::*;
pub use plan::memory_plan;

/// Where a run stands (saved with every checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GrpoState {
    /// Iterations completed.
    pub iteration: usize,
    /// Optimizer steps taken.
    pub updates: usize,
    pub seed: u64,
    /// Prompts taken from the shuffled prompt stream so far (dynamic sampling takes more than
    /// `prompts_per_iteration` in some iterations).
    pub prompts_drawn: usize,
}

/// What the rollout kept: rows of groups with a learning signal, their prompts and rewards, and
/// statistics over every response sampled.
pub struct Rollout<B: Backend> {
    pub sampled: Sampled<B>,
    /// `prompts[i]`: the prompt row `i` answers.
    pub prompts: Vec<Prompt>,
    pub responses: Vec<String>,
    pub rewards: RewardTable,
    /// Over every response sampled this iteration, kept or not.
    pub metrics: Vec<(String, f64)>,
}

/// A rollout turned into training data.
pub struct Experience<B: Backend> {
    pub sampled: Sampled<B>,
    /// [rows, S]: the response tokens that enter the loss (truncated rows masked out when asked).
    pub loss_mask: Tensor<B, 2>,
    pub loss_mask_host: Vec<Vec<bool>>,
    pub old_logp: Option<Tensor<B, 2>>,
    pub ref_logp: Option<Tensor<B, 2>>,
    /// [rows, S]
    pub advantages: Tensor<B, 2>,
}

/// Wall-clock split of one iteration.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    pub generate_s: f64,
    pub score_s: f64,
    pub train_s: f64,
    pub generated_tokens: usize,
    /// Tokens (prompt and response, padding included) through the policy's training forwards.
    pub trained_tokens: usize,
}

/// Everything a run holds: the policy and its optimizer, the frozen reference (when the KL term is
/// on), the reward sources, the prompts.
pub struct Trainer<B: AutodiffBackend> {
    pub cfg: GrpoConfig,
    pub policy: Trainable<B, CausalLm<B>>,
    pub reference: Option<CausalLm<B::InnerBackend>>,
    pub rewards: RewardSources<B::InnerBackend>,
    pub prompts: Vec<Prompt>,
    pub tok: Tokenizer,
    pub state: GrpoState,
    pub gen: GenerateConfig,
    pub pad_id: u32,
    pub device: B::Device,
    order: EpochOrder,
    last_checkpoint: String,
}

fn index<B: Backend>(rows: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::from_data(TensorData::new(rows.iter().map(|&r| r as i64).collect::<Vec<_>>(), [rows.len()]), device)
}

impl<B: AutodiffBackend> Trainer<B> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: GrpoConfig,
        policy: CausalLm<B>,
        reference: Option<CausalLm<B::InnerBackend>>,
        rewards: RewardSources<B::InnerBackend>,
        prompts: Vec<Prompt>,
        tok: Tokenizer,
        stop_ids: Vec<u32>,
        pad_id: u32,
        device: B::Device,
    ) -> Self {
        let g = &cfg.generate;
        let gen = GenerateConfig { max_new_tokens: g.max_new_tokens, sampler: g.sampler(), stop_ids, pad_id, seed: None };
        Self {
            policy: Trainable::new("policy", policy, &cfg.grpo.optim, &device),
            state: GrpoState { iteration: 0, updates: 0, seed: cfg.seed, prompts_drawn: 0 },
            order: EpochOrder::new(prompts.len(), cfg.seed),
            last_checkpoint: "none".into(),
            cfg,
            reference,
            rewards,
            prompts,
            tok,
            gen,
            pad_id,
            device,
        }
    }

    /// The next `n` prompts of the shuffled stream (a pure function of the seed and the position).
    fn draw_prompts(&mut self, n: usize) -> Vec<Prompt> {
        let first = self.state.prompts_drawn;
        self.state.prompts_drawn += n;
        (first..first + n).map(|p| self.prompts[self.order.at(p)].clone()).collect()
    }

    /// Step 1: sample `n` responses per prompt and score them; with dynamic sampling, keep only
    /// groups whose rewards differ and sample more prompts (up to `max_sampling_rounds` rounds)
    /// until `prompts_per_iteration` groups are kept.
    pub fn rollout(&mut self, policy: &CausalLm<B::InnerBackend>, iteration: usize, timing: &mut Timing) -> anyhow::Result<Rollout<B::InnerBackend>> {
        let g = self.cfg.grpo.clone();
        let (n, want) = (g.samples_per_prompt, g.prompts_per_iteration);
        let rounds = if g.dynamic_sampling { g.max_sampling_rounds } else { 1 };
        let (mut parts, mut kept_prompts, mut kept_texts, mut kept_tables) = (vec![], vec![], vec![], vec![]);
        let (mut all_rewards, mut all_groups, mut all_tables, mut lengths, mut truncated) = (vec![], vec![], vec![], vec![], vec![]);
        let (mut kept_groups, mut rounds_run) = (0, 0);
        for round in 0..rounds {
            rounds_run += 1;
            let prompts = self.draw_prompts(want);
            let ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
            let clock = Instant::now();
            let seed = self.cfg.seed.wrapping_mul(1_000_003).wrapping_add((iteration as u64) << 8 | round as u64);
            let sampled = rollout::sample(policy, &ids, n, &self.gen, self.cfg.generate.batch_size, seed, &self.device)?;
            timing.generate_s += clock.elapsed().as_secs_f64();
            let clock = Instant::now();
            let row_prompts: Vec<Prompt> = sampled.groups.iter().map(|&gi| prompts[gi].clone()).collect();
            let (texts, table) = self.rewards.score_responses(&self.tok, &sampled, &row_prompts)?;
            timing.score_s += clock.elapsed().as_secs_f64();
            let total = table.total();
            let flat = zero_std_groups(&total, &sampled.groups);
            let offset = all_groups.iter().max().map_or(0, |m: &usize| m + 1);
            all_groups.extend(sampled.groups.iter().map(|gi| gi + offset));
            all_rewards.extend(&total);
            lengths.extend(sampled.lengths());
            truncated.extend(sampled.truncated.iter().copied());
            all_tables.push(table.clone());
            let keep_group = |gi: usize| !g.dynamic_sampling || !flat[gi];
            let mut keep = vec![];
            for gi in 0..prompts.len() {
                if keep_group(gi) && kept_groups < want {
                    kept_groups += 1;
                    keep.extend(gi * n..(gi + 1) * n);
                }
            }
            kept_prompts.extend(keep.iter().map(|&r| row_prompts[r].clone()));
            kept_texts.extend(keep.iter().map(|&r| texts[r].clone()));
            kept_tables.push(table.select(&keep));
            parts.push(sampled.select(&keep, self.pad_id, &self.device));
            if kept_groups >= want {
                break;
            }
        }
        timing.generated_tokens += lengths.iter().sum::<usize>();
        let everything = RewardTable::join(all_tables).expect("at least one round");
        let flat = zero_std_groups(&all_rewards, &all_groups);
        let rows = all_rewards.len() as f64;
        let mut metrics = vec![
            ("reward".to_string(), all_rewards.iter().sum::<f64>() / rows),
            ("reward_std".into(), mean_group_std(&all_rewards, &all_groups)),
            ("frac_reward_zero_std".into(), flat.iter().filter(|&&f| f).count() as f64 / flat.len().max(1) as f64),
            ("completions/mean_length".into(), lengths.iter().sum::<usize>() as f64 / rows),
            ("completions/min_length".into(), lengths.iter().copied().min().unwrap_or(0) as f64),
            ("completions/max_length".into(), lengths.iter().copied().max().unwrap_or(0) as f64),
            ("completions/clipped_ratio".into(), truncated.iter().filter(|&&t| t).count() as f64 / rows),
            ("sampling_rounds".into(), rounds_run as f64),
            ("groups_kept".into(), kept_groups as f64),
        ];
        metrics.extend(everything.metrics());
        Ok(Rollout {
            sampled: Sampled::join(parts, self.pad_id, &self.device),
            prompts: kept_prompts,
            responses: kept_texts,
            rewards: RewardTable::join(kept_tables).expect("at least one round"),
            metrics,
        })
    }

    /// ReMax's baseline: the reward of one greedy response per group of `r`.
    fn greedy_rewards(&mut self, policy: &CausalLm<B::InnerBackend>, r: &Rollout<B::InnerBackend>) -> anyhow::Result<Vec<f64>> {
        let groups = r.sampled.groups.iter().max().map_or(0, |g| g + 1);
        let firsts: Vec<usize> = (0..groups).map(|g| r.sampled.groups.iter().position(|&h| h == g).expect("groups are 0..")).collect();
        let prompts: Vec<Prompt> = firsts.iter().map(|&i| r.prompts[i].clone()).collect();
        let ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
        let greedy = GenerateConfig { sampler: Sampler::Greedy, ..self.gen.clone() };
        let sampled = rollout::sample(policy, &ids, 1, &greedy, self.cfg.generate.batch_size, self.cfg.seed, &self.device)?;
        Ok(self.rewards.score_responses(&self.tok, &sampled, &prompts)?.1.total())
    }

    /// Step 2: log-probs where the loss or the reward needs them, then advantages.
    pub fn experience(&mut self, policy: &CausalLm<B::InnerBackend>, r: &Rollout<B::InnerBackend>, timing: &mut Timing) -> anyhow::Result<Experience<B::InnerBackend>> {
        let g = self.cfg.grpo.clone();
        let s = &r.sampled;
        let rows = s.rows();
        let micro = g.micro_batch_size;
        let kl_in_reward = g.kl == KlPlacement::Reward && self.reference.is_some();
        let several_steps = g.epochs > 1 || g.minibatch() < rows;
        let old_logp = if several_steps || kl_in_reward { Some(rollout::sequence_log_probs(policy, s, micro)?) } else { None };
        let clock = Instant::now();
        let ref_logp = match &self.reference {
            Some(reference) => Some(rollout::sequence_log_probs(reference, s, micro)?),
            None => None,
        };
        let kl_host = match (&old_logp, &ref_logp) {
            (Some(old), Some(reference)) if kl_in_reward => host_rows(kl_per_token(old.clone(), reference.clone(), KlEstimator::K1) * s.action_mask.clone()),
            _ => vec![vec![0.0; s.mask.first().map_or(0, Vec::len)]; rows],
        };
        let beta = if kl_in_reward { g.kl_coef } else { 0.0 };
        let scores = r.rewards.total();
        let greedy = if g.estimator == Estimator::Remax {
            let clock = Instant::now();
            let greedy = self.greedy_rewards(policy, r)?;
            timing.generate_s += clock.elapsed().as_secs_f64();
            Some(greedy)
        } else {
            None
        };
        let advantages = match g.estimator {
            Estimator::ReinforcePp | Estimator::ReinforcePpBaseline => {
                reinforce_pp_advantages(&scores, &s.groups, g.estimator == Estimator::ReinforcePpBaseline, &kl_host, &s.mask, beta)
            }
            e => {
                let penalized: Vec<f64> = scores.iter().zip(&kl_host).map(|(&x, kl)| kl_penalized(x, kl.iter().map(|&k| f64::from(k)).sum(), beta)).collect();
                let seq = sequence_advantages(e, &penalized, &s.groups, g.scale_rewards, greedy.as_deref()).expect("a sequence estimator");
                per_token(&seq, &s.mask)
            }
        };
        let loss_mask_host: Vec<Vec<bool>> = s.mask.iter().zip(&s.truncated).map(|(m, &cut)| if cut && g.mask_truncated { vec![false; m.len()] } else { m.clone() }).collect();
        let flags: Vec<Vec<f32>> = loss_mask_host.iter().map(|m| m.iter().map(|&b| f32::from(u8::from(b))).collect()).collect();
        timing.score_s += clock.elapsed().as_secs_f64();
        Ok(Experience {
            sampled: s.clone(),
            loss_mask: device_rows(&flags, &self.device),
            loss_mask_host,
            old_logp,
            ref_logp,
            advantages: device_rows(&advantages, &self.device),
        })
    }

    /// Step 3: `epochs` passes over the experience in shuffled minibatches, one optimizer step each.
    pub fn update(&mut self, x: Experience<B::InnerBackend>, iteration: usize, timing: &mut Timing) -> anyhow::Result<Vec<(String, f64)>> {
        let clock = Instant::now();
        let g = self.cfg.grpo.clone();
        let rows = x.sampled.rows();
        let minibatch = g.minibatch().min(rows.max(1));
        let total_updates = g.iterations * g.epochs * (g.rollout_rows().div_ceil(g.minibatch()));
        let clip = Clip { low: g.clip_eps_low, high: g.clip_eps_high, dual: g.dual_clip };
        let aggregation = g.aggregation();
        let kl_in_loss = g.kl == KlPlacement::Loss && x.ref_logp.is_some();
        let kl_metric = if kl_in_loss { g.kl_estimator } else { KlEstimator::K1 };
        let (mut steps, mut loss_sum, mut grad_norm, mut lr_last) = (0usize, 0.0, 0.0, 0.0);
        let (mut tokens_seen, mut low, mut high, mut entropy, mut kl) = (0.0f64, 0.0, 0.0, 0.0, 0.0);
        let row_tokens: Vec<usize> = x.loss_mask_host.iter().map(|m| m.iter().filter(|&&b| b).count()).collect();
        for epoch in 0..g.epochs {
            let order = shuffled(rows, self.cfg.seed, (iteration * g.epochs + epoch) as u64);
            for mb in order.chunks(minibatch) {
                let counts = StepCounts {
                    tokens: mb.iter().map(|&r| row_tokens[r]).sum::<usize>() as f64,
                    sequences: mb.iter().filter(|&&r| row_tokens[r] > 0).count() as f64,
                    max_len: self.cfg.generate.max_new_tokens as f64,
                };
                if counts.tokens == 0.0 {
                    continue; // every response of the minibatch is masked out: nothing to learn
                }
                let lr = get_lr(&g.schedule(), self.state.updates, total_updates);
                for micro in mb.chunks(g.micro_batch_size) {
                    let idx = index::<B::InnerBackend>(micro, &self.device);
                    let f = |t: &Tensor<B::InnerBackend, 2>| Tensor::<B, 2>::from_inner(t.clone().select(0, idx.clone()));
                    let i = |t: &Tensor<B::InnerBackend, 2, Int>| Tensor::<B, 2, Int>::from_inner(t.clone().select(0, idx.clone()));
                    let (logp, ent) = action_log_probs(&self.policy.module, i(&x.sampled.ids), i(&x.sampled.attention), x.sampled.prompt_len, true)?;
                    let ent = ent.expect("requested");
                    let mask = f(&x.loss_mask);
                    let old = x.old_logp.as_ref().map_or_else(|| logp.clone().detach(), f);
                    let (objective, clip_low, clip_high) = clipped_policy_loss(logp.clone(), old.clone(), f(&x.advantages), clip);
                    let mut per_tok = objective;
                    let mut kl_sum = None;
                    if let Some(reference) = &x.ref_logp {
                        let reference = f(reference);
                        if kl_in_loss {
                            per_tok = per_tok + kl_loss(logp.clone(), reference.clone(), old.clone(), g.kl_estimator, g.kl_coef, g.kl_importance_weighted);
                        }
                        kl_sum = Some((kl_per_token(logp.clone().detach(), reference, kl_metric) * mask.clone()).sum());
                    }
                    if g.entropy_coef > 0.0 {
                        per_tok = per_tok - ent.clone() * g.entropy_coef;
                    }
                    let loss = aggregate(per_tok, mask.clone(), aggregation, counts);
                    // One read of the step's statistics.
                    let mut stats = vec![(clip_low * mask.clone()).sum(), (clip_high * mask.clone()).sum(), (ent.detach() * mask).sum(), loss.clone().detach()];
                    stats.extend(kl_sum);
                    let host = Tensor::cat(stats, 0).into_data().convert::<f64>().to_vec::<f64>().expect("f64");
                    low += host[0];
                    high += host[1];
                    entropy += host[2];
                    loss_sum += host[3];
                    kl += host.get(4).copied().unwrap_or(0.0);
                    timing.trained_tokens += micro.len() * x.sampled.ids.dims()[1];
                    self.policy.backward(loss, host[3]);
                }
                tokens_seen += counts.tokens;
                self.state.updates += 1;
                grad_norm += self.policy.step(lr, self.state.updates, &self.last_checkpoint)?.grad_norm;
                lr_last = lr;
                steps += 1;
            }
        }
        timing.train_s = clock.elapsed().as_secs_f64();
        let (s, t) = (steps.max(1) as f64, tokens_seen.max(1.0));
        let mut m = vec![
            ("loss".to_string(), loss_sum / s),
            ("grad_norm".into(), grad_norm / s),
            ("learning_rate".into(), lr_last),
            ("clip_ratio/low_mean".into(), low / t),
            ("clip_ratio/high_mean".into(), high / t),
            ("clip_ratio/region_mean".into(), (low + high) / t),
            ("entropy".into(), entropy / t),
            ("optimizer_steps".into(), steps as f64),
        ];
        if x.ref_logp.is_some() {
            m.push(("kl".into(), kl / t));
        }
        Ok(m)
    }

    /// One whole iteration; `samples`: how many (prompt, response, rewards) lines to return.
    pub fn iteration(&mut self, iteration: usize, samples: usize) -> anyhow::Result<(Vec<(String, f64)>, Vec<serde_json::Value>)> {
        let mut timing = Timing::default();
        // Generation and the old log-probs read one inference copy (bf16 under mixed precision).
        let policy = self.policy.module.valid().for_inference(self.cfg.precision);
        let r = self.rollout(&policy, iteration, &mut timing)?;
        let x = self.experience(&policy, &r, &mut timing)?;
        drop(policy);
        let lines: Vec<serde_json::Value> = (0..samples.min(r.responses.len()))
            .map(|i| {
                let mut line = serde_json::json!({ "prompt": r.prompts[i].text, "response": r.responses[i], "reward": r.rewards.total()[i] });
                for (name, s) in r.rewards.names.iter().zip(&r.rewards.scores) {
                    line[name] = serde_json::json!(s[i]);
                }
                line
            })
            .collect();
        let mut metrics = r.metrics;
        metrics.extend(self.update(x, iteration, &mut timing)?);
        metrics.extend([
            ("generate_s".to_string(), timing.generate_s),
            ("score_s".into(), timing.score_s),
            ("train_s".into(), timing.train_s),
            ("gen_tokens_per_s".into(), timing.generated_tokens as f64 / timing.generate_s.max(1e-9)),
            ("train_tokens_per_s".into(), timing.trained_tokens as f64 / timing.train_s.max(1e-9)),
        ]);
        Ok((metrics, lines))
    }

    fn save_to(&mut self, out: &Path) -> anyhow::Result<PathBuf> {
        let dir = save_checkpoint(out, self.state.iteration, &self.state, self.cfg.grpo.keep_checkpoints, &[&self.policy])?;
        self.last_checkpoint = dir.display().to_string();
        Ok(dir)
    }
}

impl<B: AutodiffBackend> Iterative for Trainer<B> {
    fn done(&self) -> usize {
        self.state.iteration
    }

    fn iterate(&mut self, with_samples: bool) -> anyhow::Result<Iteration> {
        let samples = if with_samples { self.cfg.grpo.samples_per_log } else { 0 };
        let (metrics, samples) = self.iteration(self.state.iteration, samples)?;
        self.state.iteration += 1;
        Ok(Iteration { metrics, samples })
    }

    fn save(&mut self, out: &Path) -> anyhow::Result<PathBuf> {
        self.save_to(out)
    }

    fn load(&mut self, dir: &Path) -> anyhow::Result<()> {
        self.state = load_checkpoint(dir, &mut [&mut self.policy])?;
        self.last_checkpoint = dir.display().to_string();
        Ok(())
    }
}

/// The policy (with adapters when `[grpo.lora]`) and, when the KL term is on, the reference: with
/// LoRA and no separate reference folder, the policy's own base with the adapters off.
pub fn load_models<B: AutodiffBackend>(cfg: &GrpoConfig, device: &B::Device) -> anyhow::Result<(CausalLm<B>, Option<CausalLm<B::InnerBackend>>, Option<LoraSpec>)> {
    let m = &cfg.model;
    let p = cfg.precision;
    let policy = CausalLm::<B>::from_hf_dir(&m.policy, device)?;
    let setup = TrainingSetup { lora: cfg.grpo.lora.as_ref(), precision: p, gradient_checkpointing: cfg.grpo.gradient_checkpointing };
    let (policy, lora) = setup.apply(policy, cfg.seed, "grpo policy", device)?;
    let reference = match (cfg.grpo.uses_reference(), &lora, &m.reference) {
        (false, ..) => None,
        (true, Some(_), None) => Some(policy.without_lora().valid()),
        (true, ..) => Some(CausalLm::<B::InnerBackend>::from_hf_dir(m.reference.as_ref().unwrap_or(&m.policy), device)?.in_precision(p)),
    };
    Ok((policy, reference, lora))
}

/// Runs the stage into `out`: `metrics.jsonl` (by iteration), `samples.jsonl`, checkpoints, and the
/// policy as a Hugging Face folder in `out/final/`.
pub fn run<B: AutodiffBackend>(cfg: &GrpoConfig, out: &Path, resume: bool, device: &B::Device) -> anyhow::Result<CausalLm<B::InnerBackend>> {
    rlhf_train::data_parallel::single_process_only("rlhf-grpo")?;
    cfg.validate()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    rlhf_train::config::write_resolved(out, cfg)?;
    B::seed(device, cfg.seed);
    let m = &cfg.model;
    let tok = Tokenizer::from_dir(&m.policy)?;
    let fmt = ChatFormat::resolve(&tok, cfg.data.template)?;
    let (policy, reference, lora) = load_models::<B>(cfg, device)?;
    let prompts = cfg.data.load(&tok, &fmt, cfg.generate.max_new_tokens, policy.config().max_position_embeddings, "policy")?;
    let rewards = RewardSources::<B::InnerBackend>::start(&cfg.rewards, cfg.precision, cfg.grpo.micro_batch_size, device)?;
    let pad_id = tok.pad_id_for(policy.config().pad_token_id);
    let stop_ids = fmt.stop_ids(&tok);
    let g = &cfg.grpo;
    eprintln!(
        "grpo ({:?}): {:.2}M-parameter policy, {}; {} prompts; {} iterations × {} prompts × {} samples",
        g.estimator,
        policy.config().num_params() as f64 / 1e6,
        if reference.is_some() { "a frozen reference" } else { "no reference (β = 0)" },
        prompts.len(),
        g.iterations,
        g.prompts_per_iteration,
        g.samples_per_prompt
    );
    let mut t = Trainer::<B>::new(cfg.clone(), policy, reference, rewards, prompts, tok, stop_ids, pad_id, device.clone());
    let names = rlhf_rl::rewards::reward_names(&cfg.rewards);
    let mut console: Vec<String> = ["reward", "reward_std", "frac_reward_zero_std", "kl", "loss", "completions/mean_length"].map(String::from).to_vec();
    if names.len() > 1 {
        console.extend(names.iter().map(|n| format!("rewards/{n}/mean")));
    }
    console.extend(["generate_s", "score_s", "train_s"].map(String::from));
    let schedule = Schedule {
        stage: "grpo",
        iterations: g.iterations,
        log_every: g.log_every,
        save_every: g.save_every,
        sample_every: g.sample_every,
        halt_after: g.halt_after,
        console,
    };
    if run_iterations(&mut t, out, resume, &schedule)? == Ended::Halted {
        return Ok(t.policy.module.valid());
    }
    let policy = t.policy.module.valid();
    let dtype = rlhf_model::WeightDtype::for_export(cfg.export_dtype, Some(&m.policy))?;
    let export_adapter = g.lora.as_ref().is_some_and(|l| l.export_adapter);
    let policy = rlhf_model::export(policy, &out.join("final"), &Export { dtype, source: &m.policy, lora: lora.as_ref(), export_adapter, extra_files: &[] })?;
    eprintln!("grpo: final policy ({dtype}) in {}", out.join("final").display());
    Ok(policy)
}

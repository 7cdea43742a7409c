//! Stage 3: PPO-ptx. The actor (from SFT) samples responses; a frozen reference (SFT) and a frozen
//! reward model score them; a critic (initialised from the reward model) estimates values; the
//! actor and critic are updated with clipped PPO losses, and the actor also keeps a language-model
//! loss on pretraining data (InstructGPT's PPO-ptx).
//!
//! One iteration reads like the algorithm:
//! 1. [`Trainer::make_experience`]: prompts → generate (no autodiff) → log π_old, log π_ref, V, RM
//!    score → rewards (−β·KL per token + score on the last token) → GAE → advantages, returns.
//! 2. [`Trainer::update`]: `ppo_epochs` × minibatches: actor step on L_policy (+ entropy, + ptx),
//!    critic step on L_value.

pub mod config;
pub mod objective;
pub mod plan;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use burn::module::AutodiffModule;
use rlhf_runtime::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use rlhf_data::batch::{shuffled, EpochOrder};
use rlhf_data::encode::SftSample;
use rlhf_data::{prepare, ChatFormat, Kind, PrepareOptions, Prompt, Tokenizer};
use rlhf_model::ops::{action_log_probs, action_values};
use rlhf_model::{CausalLm, Export, GenerateConfig, LoraSpec, RewardInfo, RewardModel, TrainingSetup};
use rlhf_rl::rollout::{self, device_rows, host_rows};
use rlhf_rl::{run_iterations, Ended, Iteration, Iterative, RewardSources, Schedule};
use rlhf_train::batch::lm_loss;
use rlhf_train::checkpoint::{load_checkpoint, save_checkpoint};
use rlhf_train::schedule::get_lr;
use rlhf_train::Trainable;
use serde::{Deserialize, Serialize};

pub use config::{GenerationConfig, PpoConfig, PpoModels, PpoTrainConfig, PromptData, PtxConfig, PtxKind};
use objective::*;
pub use plan::memory_plan;

/// Decorrelates the ptx data order from the prompt order drawn with the same seed.
const PTX_STREAM: u64 = 0x0050_5458;
/// Decorrelates the critic's fresh adapters from the actor's, drawn with the same seed.
const CRITIC_STREAM: u64 = 0x0043_5254;

/// What one iteration produced: its metrics line, the rollout's statistics, and the prompts and
/// responses (token ids) it sampled.
pub struct IterationReport {
    pub metrics: Vec<(String, f64)>,
    pub rollout: RolloutStats,
    pub prompts: Vec<Prompt>,
    pub responses: Vec<Vec<u32>>,
}

/// Where a PPO run stands (saved with every checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PpoState {
    /// Iterations completed.
    pub iteration: usize,
    /// Optimizer steps taken (actor and critic step together).
    pub updates: usize,
    pub seed: u64,
    /// β, which the adaptive controller changes.
    pub kl_coef: f64,
}

/// One iteration's experience, on the device (inference backend), rows = sampled responses.
pub struct Rollout<B: Backend> {
    /// [rows, P + S]: left-padded prompt, then the response (padding after a stop).
    pub ids: Tensor<B, 2, Int>,
    pub attention: Tensor<B, 2, Int>,
    /// P: the common (padded) prompt length.
    pub prompt_len: usize,
    /// [rows, S]: 1.0 on response tokens.
    pub action_mask: Tensor<B, 2>,
    pub old_logp: Tensor<B, 2>,
    pub old_values: Tensor<B, 2>,
    pub advantages: Tensor<B, 2>,
    pub returns: Tensor<B, 2>,
    /// Response tokens of each row (host).
    pub lengths: Vec<usize>,
    /// Each row's response tokens (host).
    pub responses: Vec<Vec<u32>>,
}

/// Per-iteration rollout statistics (means over responses).
#[derive(Debug, Clone, Default)]
pub struct RolloutStats {
    pub rm_score: f64,
    /// Σ_t kl_t per response (k1 or k3, as configured).
    pub kl: f64,
    /// Σ_t r_t per response.
    pub reward: f64,
    pub response_len: f64,
    /// Final-token scores per row: the RM's after normalisation and clipping, plus the other
    /// reward sources' weighted scores.
    pub scores: Vec<f32>,
    pub kl_per_row: Vec<f64>,
    /// `rewards/<name>/mean` and `/std` of the other reward sources (empty without them).
    pub source_metrics: Vec<(String, f64)>,
}

/// Wall-clock split of one iteration.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    pub generate_s: f64,
    pub score_s: f64,
    pub train_s: f64,
    pub generated_tokens: usize,
    pub trained_tokens: usize,
}

/// Averages of the update's diagnostics over its optimizer steps.
#[derive(Debug, Clone, Default)]
pub struct UpdateStats {
    pub policy_loss: f64,
    pub value_loss: f64,
    pub ptx_loss: f64,
    pub entropy: f64,
    pub clip_frac: f64,
    pub approx_kl: f64,
    pub ratio_max: f64,
    pub actor_grad_norm: f64,
    pub critic_grad_norm: f64,
}

fn index<B: Backend>(rows: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::from_data(TensorData::new(rows.iter().map(|&r| r as i64).collect::<Vec<_>>(), [rows.len()]), device)
}

/// Everything PPO holds: the four models, two optimizers, prompts, ptx data and settings.
pub struct Trainer<B: AutodiffBackend> {
    pub cfg: PpoConfig,
    /// The policy being trained, with its optimizer.
    pub actor: Trainable<B, CausalLm<B>>,
    /// The value model being trained, with its optimizer.
    pub critic: Trainable<B, RewardModel<B>>,
    pub reference: CausalLm<B::InnerBackend>,
    pub reward_model: RewardModel<B::InnerBackend>,
    pub prompts: Vec<Prompt>,
    pub ptx: Vec<SftSample>,
    pub state: PpoState,
    pub gen: GenerateConfig,
    pub score_std: Option<f64>,
    pub pad_id: u32,
    pub device: B::Device,
    prompt_order: EpochOrder,
    ptx_order: EpochOrder,
    /// Reward sources beside the reward model, with the tokenizer their responses are decoded with.
    sources: Option<(RewardSources<B::InnerBackend>, Tokenizer)>,
    /// Named in the error when a step is refused.
    last_checkpoint: String,
}

impl<B: AutodiffBackend> Trainer<B> {
    /// Builds a trainer from models already loaded (the stage's `run` and the benchmark use it).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: PpoConfig,
        actor: CausalLm<B>,
        critic: RewardModel<B>,
        reference: CausalLm<B::InnerBackend>,
        reward_model: RewardModel<B::InnerBackend>,
        prompts: Vec<Prompt>,
        ptx: Vec<SftSample>,
        stop_ids: Vec<u32>,
        pad_id: u32,
        score_std: Option<f64>,
        device: B::Device,
    ) -> Self {
        let g = &cfg.generate;
        let gen = GenerateConfig { max_new_tokens: g.max_new_tokens, sampler: g.sampler(), stop_ids, pad_id, seed: None };
        let state = PpoState { iteration: 0, updates: 0, seed: cfg.seed, kl_coef: cfg.ppo.kl_coef };
        Self {
            actor: Trainable::new("actor", actor, &cfg.ppo.optim, &device),
            critic: Trainable::new("critic", critic, &cfg.ppo.optim, &device),
            last_checkpoint: "none".into(),
            prompt_order: EpochOrder::new(prompts.len(), cfg.seed),
            ptx_order: EpochOrder::new(ptx.len().max(1), cfg.seed ^ PTX_STREAM),
            sources: None,
            cfg,
            reference,
            reward_model,
            prompts,
            ptx,
            state,
            gen,
            score_std,
            pad_id,
            device,
        }
    }

    /// Adds reward sources beside the reward model; `tok` decodes the responses they read.
    pub fn with_sources(mut self, sources: RewardSources<B::InnerBackend>, tok: Tokenizer) -> Self {
        self.sources = (!sources.is_empty()).then_some((sources, tok));
        self
    }

    /// The prompts of iteration `iteration`: a pure function of (seed, iteration).
    pub fn iteration_prompts(&self, iteration: usize) -> Vec<Prompt> {
        let n = self.cfg.ppo.rollout_batch_size;
        (iteration * n..(iteration + 1) * n).map(|p| self.prompts[self.prompt_order.at(p)].clone()).collect()
    }

    /// Step 1: sample responses and turn them into advantages and returns.
    pub fn make_experience(&mut self, prompts: &[Prompt], iteration: usize, timing: &mut Timing) -> anyhow::Result<(Rollout<B::InnerBackend>, RolloutStats)> {
        let device = &self.device;
        let ppo = &self.cfg.ppo;
        let clock = Instant::now();
        // Generation and the old log-probs read one inference copy, in bf16 under mixed precision
        // (the same rounding the training forward applies per matmul).
        let actor = self.actor.module.valid().for_inference(self.cfg.precision);
        let seed = self.cfg.seed.wrapping_mul(1_000_003).wrapping_add(iteration as u64);
        let ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
        let sampled = rollout::sample(&actor, &ids, 1, &self.gen, self.cfg.generate.batch_size, seed, device)?;
        let rows = sampled.rows();
        let lengths = sampled.lengths();
        timing.generate_s = clock.elapsed().as_secs_f64();
        timing.generated_tokens = lengths.iter().sum();

        let clock = Instant::now();
        let critic = self.critic.module.valid();
        let micro = ppo.micro_batch_size;
        let old_logp = rollout::sequence_log_probs(&actor, &sampled, micro)?;
        let ref_logp = rollout::sequence_log_probs(&self.reference, &sampled, micro)?;
        let old_values = rollout::in_chunks(rows, micro, |r| {
            let (ids, attention) = rollout::slice(&sampled, r);
            Ok(action_values(&critic, ids, attention, sampled.prompt_len)?)
        })?;
        let raw_scores = rollout::in_chunks(rows, micro, |r| {
            let (ids, attention) = rollout::slice(&sampled, r);
            Ok(self.reward_model.score(ids, attention)?.unsqueeze_dim::<2>(1))
        })?;
        let action_mask = sampled.action_mask.clone();
        let mask_host = &sampled.mask;
        let kl = kl_per_token(old_logp.clone(), ref_logp, ppo.kl_estimator) * action_mask.clone();
        let kl_host = host_rows(kl);
        let values_host = host_rows(old_values.clone());
        let raw_host: Vec<f32> = host_rows(raw_scores).into_iter().map(|r| r[0]).collect();
        let mut scores: Vec<f32> = raw_host.iter().map(|&s| normalize_score(s, self.score_std, ppo.score_clip)).collect();
        let mut source_metrics = Vec::new();
        if let Some((sources, tok)) = &mut self.sources {
            let (_, table) = sources.score_responses(tok, &sampled, prompts)?;
            for (s, extra) in scores.iter_mut().zip(table.total()) {
                *s += extra as f32;
            }
            source_metrics = table.metrics();
        }

        let rewards = shaped_rewards(&kl_host, mask_host, &scores, self.state.kl_coef);
        let (advantages, returns) = gae(&rewards, &values_host, mask_host, ppo.gamma, ppo.lam);
        let advantages = if ppo.whiten_advantages { whiten(&advantages, mask_host) } else { advantages };
        timing.score_s = clock.elapsed().as_secs_f64();

        let n = rows as f64;
        let kl_per_row: Vec<f64> = kl_host.iter().map(|r| r.iter().map(|&k| f64::from(k)).sum()).collect();
        let stats = RolloutStats {
            rm_score: raw_host.iter().map(|&s| f64::from(s)).sum::<f64>() / n,
            kl: kl_per_row.iter().sum::<f64>() / n,
            reward: rewards.iter().flatten().map(|&r| f64::from(r)).sum::<f64>() / n,
            response_len: lengths.iter().sum::<usize>() as f64 / n,
            scores,
            kl_per_row,
            source_metrics,
        };
        let rollout = Rollout {
            ids: sampled.ids,
            attention: sampled.attention,
            prompt_len: sampled.prompt_len,
            action_mask,
            old_logp,
            old_values,
            advantages: device_rows(&advantages, device),
            returns: device_rows(&returns, device),
            lengths,
            responses: sampled.responses,
        };
        Ok((rollout, stats))
    }

    /// Step 2: `ppo_epochs` passes over the rollout in shuffled minibatches; one actor and one
    /// critic step per minibatch.
    pub fn update(&mut self, rollout: Rollout<B::InnerBackend>, iteration: usize, timing: &mut Timing) -> anyhow::Result<UpdateStats> {
        let clock = Instant::now();
        let ppo = self.cfg.ppo.clone();
        let rows = rollout.lengths.len();
        let total_updates = ppo.iterations * ppo.ppo_epochs * rows.div_ceil(ppo.minibatch_size);
        let mut st = UpdateStats::default();
        let (mut steps, mut tokens_total, mut mask_total) = (0usize, 0usize, 0.0f64);
        let (w_ppo, w_ptx) = match &self.cfg.ptx {
            Some(p) => ptx_weights(p.mode, p.coef),
            None => (1.0, 0.0),
        };
        for epoch in 0..ppo.ppo_epochs {
            let order = shuffled(rows, self.cfg.seed, (iteration * ppo.ppo_epochs + epoch) as u64);
            for minibatch in order.chunks(ppo.minibatch_size) {
                let tokens = minibatch.iter().map(|&r| rollout.lengths[r]).sum::<usize>().max(1) as f64;
                let (actor_lr, critic_lr) = (
                    get_lr(&ppo.actor_schedule(), self.state.updates, total_updates),
                    get_lr(&ppo.critic_schedule(), self.state.updates, total_updates),
                );
                let step = self.state.updates + 1;
                // Actor: clipped policy loss (− entropy bonus), then the ptx term.
                for micro in minibatch.chunks(ppo.micro_batch_size) {
                    let (ids, attention, mask, old_logp, adv, _, _) = self.select(&rollout, micro);
                    let (logp, entropy) = action_log_probs(&self.actor.module, ids.clone(), attention, rollout.prompt_len, true)?;
                    let entropy = entropy.expect("requested");
                    let (loss, diag) = policy_loss(logp, old_logp, adv, mask.clone(), ppo.clip_eps, tokens);
                    let entropy_sum = (entropy * mask.clone()).sum();
                    let loss = loss * w_ppo - entropy_sum.clone() * (ppo.entropy_coef * w_ppo / tokens);
                    let mut host = diag.into_data().convert::<f64>().to_vec::<f64>().expect("f64");
                    host.push(loss.clone().into_scalar().elem::<f64>());
                    host.push(entropy_sum.into_scalar().elem::<f64>());
                    st.clip_frac += host[0];
                    st.approx_kl += host[1];
                    st.ratio_max = st.ratio_max.max(host[2]);
                    st.policy_loss += host[3];
                    st.entropy += host[4];
                    mask_total += micro.iter().map(|&r| rollout.lengths[r]).sum::<usize>() as f64;
                    tokens_total += ids.dims()[0] * ids.dims()[1];
                    self.actor.backward(loss, host[3]);
                }
                if w_ptx > 0.0 && !self.ptx.is_empty() {
                    let ptx_cfg = self.cfg.ptx.as_ref().expect("ptx weights come from a ptx section");
                    let first = self.state.updates * ptx_cfg.batch_size;
                    let batch: Vec<&SftSample> = (first..first + ptx_cfg.batch_size).map(|p| &self.ptx[self.ptx_order.at(p)]).collect();
                    let targets = batch.iter().map(|s| s.targets()).sum::<usize>().max(1) as f64;
                    for micro in batch.chunks(ppo.micro_batch_size) {
                        let loss = lm_loss(&self.actor.module, micro, self.pad_id, targets, &self.device)?;
                        let value = loss.clone().into_scalar().elem::<f64>();
                        st.ptx_loss += value;
                        tokens_total += micro.iter().map(|s| s.ids.len()).sum::<usize>();
                        self.actor.backward(loss * w_ptx, value * w_ptx);
                    }
                }
                st.actor_grad_norm += self.actor.step(actor_lr, step, &self.last_checkpoint)?.grad_norm;

                // Critic: clipped value loss.
                for micro in minibatch.chunks(ppo.micro_batch_size) {
                    let (ids, attention, mask, _, _, old_values, returns) = self.select(&rollout, micro);
                    let values = action_values(&self.critic.module, ids, attention, rollout.prompt_len)?;
                    let loss = value_loss(values, old_values, returns, mask, ppo.value_clip, tokens);
                    let value = loss.clone().into_scalar().elem::<f64>();
                    st.value_loss += value;
                    self.critic.backward(loss, value);
                }
                st.critic_grad_norm += self.critic.step(critic_lr, step, &self.last_checkpoint)?.grad_norm;
                self.state.updates += 1;
                steps += 1;
            }
        }
        let s = steps.max(1) as f64;
        st.policy_loss /= s;
        st.value_loss /= s;
        st.ptx_loss /= s;
        st.actor_grad_norm /= s;
        st.critic_grad_norm /= s;
        // Token-weighted over all passes.
        st.entropy /= mask_total.max(1.0);
        st.clip_frac /= mask_total.max(1.0);
        st.approx_kl /= mask_total.max(1.0);
        timing.train_s = clock.elapsed().as_secs_f64();
        timing.trained_tokens = tokens_total;
        Ok(st)
    }

    /// The rows `micro` of a rollout, moved onto the autodiff backend:
    /// (ids, attention, mask, old log-probs, advantages, old values, returns).
    #[allow(clippy::type_complexity)]
    fn select(
        &self,
        r: &Rollout<B::InnerBackend>,
        micro: &[usize],
    ) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>, Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>) {
        let idx = index::<B::InnerBackend>(micro, &self.device);
        let f = |t: &Tensor<B::InnerBackend, 2>| Tensor::<B, 2>::from_inner(t.clone().select(0, idx.clone()));
        let i = |t: &Tensor<B::InnerBackend, 2, Int>| Tensor::<B, 2, Int>::from_inner(t.clone().select(0, idx.clone()));
        (i(&r.ids), i(&r.attention), f(&r.action_mask), f(&r.old_logp), f(&r.advantages), f(&r.old_values), f(&r.returns))
    }

    /// One whole iteration: experience, then the update.
    pub fn iteration(&mut self, iteration: usize) -> anyhow::Result<IterationReport> {
        let prompts = self.iteration_prompts(iteration);
        let mut timing = Timing::default();
        let (rollout, roll) = self.make_experience(&prompts, iteration, &mut timing)?;
        let responses = rollout.responses.clone();
        let kl_coef = self.state.kl_coef;
        // The rollout is consumed (and its tensors dropped) by the update.
        let upd = self.update(rollout, iteration, &mut timing)?;
        if let Some(target) = self.cfg.ppo.target_kl {
            let mut c = AdaptiveKl { value: self.state.kl_coef, target, horizon: self.cfg.ppo.kl_horizon };
            c.update(roll.kl, prompts.len());
            self.state.kl_coef = c.value;
        }
        let mut metrics: Vec<(String, f64)> = [
            ("rm_score", roll.rm_score),
            ("kl", roll.kl),
            ("reward", roll.reward),
            ("policy_loss", upd.policy_loss),
            ("value_loss", upd.value_loss),
            ("ptx_loss", upd.ptx_loss),
            ("entropy", upd.entropy),
            ("clip_frac", upd.clip_frac),
            ("approx_kl", upd.approx_kl),
            ("ratio_max", upd.ratio_max),
            ("response_len", roll.response_len),
            ("kl_coef", kl_coef),
            ("actor_grad_norm", upd.actor_grad_norm),
            ("critic_grad_norm", upd.critic_grad_norm),
            ("gen_tokens_per_s", timing.generated_tokens as f64 / timing.generate_s.max(1e-9)),
            ("train_tokens_per_s", timing.trained_tokens as f64 / timing.train_s.max(1e-9)),
            ("generate_s", timing.generate_s),
            ("score_s", timing.score_s),
            ("train_s", timing.train_s),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        metrics.extend(roll.source_metrics.iter().cloned());
        Ok(IterationReport { metrics, rollout: roll, prompts, responses })
    }

    fn save(&mut self, out: &Path) -> anyhow::Result<PathBuf> {
        let dir = save_checkpoint(out, self.state.iteration, &self.state, self.cfg.ppo.keep_checkpoints, &[&self.actor, &self.critic])?;
        self.last_checkpoint = dir.display().to_string();
        Ok(dir)
    }

    fn load(&mut self, dir: &Path) -> anyhow::Result<()> {
        self.state = load_checkpoint(dir, &mut [&mut self.actor, &mut self.critic])?;
        self.last_checkpoint = dir.display().to_string();
        Ok(())
    }
}

/// The trainer as the shared iteration loop drives it: samples decoded with the run's tokenizer.
struct PpoRun<'a, B: AutodiffBackend> {
    t: &'a mut Trainer<B>,
    tok: &'a Tokenizer,
    samples_per_log: usize,
}

impl<B: AutodiffBackend> Iterative for PpoRun<'_, B> {
    fn done(&self) -> usize {
        self.t.state.iteration
    }

    fn iterate(&mut self, with_samples: bool) -> anyhow::Result<Iteration> {
        let IterationReport { metrics, rollout: roll, prompts, responses } = self.t.iteration(self.t.state.iteration)?;
        self.t.state.iteration += 1;
        let mut samples = Vec::new();
        for i in 0..if with_samples { self.samples_per_log.min(prompts.len()) } else { 0 } {
            samples.push(serde_json::json!({
                "prompt": self.tok.decode(&prompts[i].ids, false)?,
                "response": self.tok.decode(&responses[i], true)?,
                "score": roll.scores[i],
                "kl": roll.kl_per_row[i],
            }));
        }
        Ok(Iteration { metrics, samples })
    }

    fn save(&mut self, out: &Path) -> anyhow::Result<PathBuf> {
        self.t.save(out)
    }

    fn load(&mut self, dir: &Path) -> anyhow::Result<()> {
        self.t.load(dir)
    }
}

/// The four models of a run. With `[ppo.lora]` the reference is the actor's frozen base with the
/// adapters off (one copy of the weights for both); with `[ppo.critic_lora]` and no separate critic
/// folder, the reward model is the critic's frozen base with its own head.
pub struct Models<B: AutodiffBackend> {
    pub actor: CausalLm<B>,
    pub critic: RewardModel<B>,
    pub reference: CausalLm<B::InnerBackend>,
    pub reward_model: RewardModel<B::InnerBackend>,
    /// The actor's adapters, when it has them (for the export).
    pub actor_lora: Option<LoraSpec>,
}

pub fn load_models<B: AutodiffBackend>(cfg: &PpoConfig, device: &B::Device) -> anyhow::Result<Models<B>> {
    let m = &cfg.model;
    let actor = CausalLm::<B>::from_hf_dir(&m.actor, device)?;
    // With bf16, the frozen models (and a LoRA actor's frozen base) are stored in bf16.
    let p = cfg.precision;
    let setup = |lora| TrainingSetup { lora, precision: p, gradient_checkpointing: cfg.ppo.gradient_checkpointing };
    let (actor, actor_lora) = setup(cfg.ppo.lora.as_ref()).apply(actor, cfg.seed, "ppo actor", device)?;
    let reference = match (&actor_lora, &m.reference) {
        // The actor's frozen base, adapters off: the same weights in memory, never a second copy.
        (Some(_), None) => actor.without_lora().valid(),
        _ => CausalLm::<B::InnerBackend>::from_hf_dir(m.reference.as_ref().unwrap_or(&m.actor), device)?.in_precision(p),
    };
    let critic = RewardModel::<B>::from_dir(m.critic.as_ref().unwrap_or(&m.reward_model), device)?;
    let (critic, critic_lora) = setup(cfg.ppo.critic_lora.as_ref()).apply(critic, cfg.seed ^ CRITIC_STREAM, "ppo critic", device)?;
    let reward_model = match (&critic_lora, &m.critic) {
        // The critic's frozen base with the reward model's own head (the critic's copy of the head trains).
        (Some(_), None) => RewardModel { model: critic.model.without_lora(), head: critic.head.clone() }.valid(),
        _ => RewardModel::<B::InnerBackend>::from_dir(&m.reward_model, device)?.in_precision(p),
    };
    Ok(Models { actor, critic, reference, reward_model, actor_lora })
}

/// Runs stage 3 into `out`: `metrics.jsonl` (by iteration), `samples.jsonl`, checkpoints, and the
/// actor as a Hugging Face folder in `out/final/`.
pub fn run<B: AutodiffBackend>(cfg: &PpoConfig, out: &Path, resume: bool, device: &B::Device) -> anyhow::Result<CausalLm<B::InnerBackend>> {
    rlhf_train::data_parallel::single_process_only("rlhf-ppo")?;
    cfg.validate()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    rlhf_train::config::write_resolved(out, cfg)?;
    B::seed(device, cfg.seed);
    let m = &cfg.model;
    let tok = Tokenizer::from_dir(&m.actor)?;
    let fmt = ChatFormat::resolve(&tok, cfg.data.template)?;
    let Models { actor, critic, reference, reward_model, actor_lora } = load_models::<B>(cfg, device)?;
    let positions = actor.config().max_position_embeddings;
    let prompts = cfg.data.load(&tok, &fmt, cfg.generate.max_new_tokens, positions, "actor")?;
    let ptx = match &cfg.ptx {
        Some(p) => {
            let kind = if p.kind == PtxKind::Sft { Kind::Sft } else { Kind::Pretrain };
            let opts = PrepareOptions { kind, format: p.format, skip_invalid: p.skip_invalid, max_len: p.max_len.min(positions) };
            let prepared = prepare::<SftSample>(&p.data, &opts, &tok, &fmt)?;
            if prepared.skipped.count() > 0 {
                eprintln!("{}", prepared.summary(opts.max_len));
            }
            if prepared.examples.is_empty() && p.coef > 0.0 {
                bail!("{}: no pretraining samples for the ptx term", p.data.display());
            }
            prepared.examples
        }
        None => vec![],
    };
    let pad_id = tok.pad_id_for(actor.config().pad_token_id);
    let stop_ids = fmt.stop_ids(&tok);
    eprintln!(
        "ppo: {:.2}M-parameter actor; {} prompts, {} ptx samples; {} iterations × {} rollouts",
        actor.config().num_params() as f64 / 1e6,
        prompts.len(),
        ptx.len(),
        cfg.ppo.iterations,
        cfg.ppo.rollout_batch_size
    );
    let score_std = if cfg.ppo.normalize_score { RewardInfo::load(&m.reward_model)?.map(|i| i.normalization.std) } else { None };
    let sources = RewardSources::start(&cfg.rewards, cfg.precision, cfg.ppo.micro_batch_size, device)?;
    let mut t = Trainer::<B>::new(cfg.clone(), actor, critic, reference, reward_model, prompts, ptx, stop_ids, pad_id, score_std, device.clone()).with_sources(sources, tok.clone());
    let ppo = &cfg.ppo;
    let schedule = Schedule {
        stage: "ppo",
        iterations: ppo.iterations,
        log_every: ppo.log_every,
        save_every: ppo.save_every,
        sample_every: ppo.sample_every,
        halt_after: ppo.halt_after,
        console: ["rm_score", "kl", "reward", "policy_loss", "value_loss", "ptx_loss", "response_len", "generate_s", "score_s", "train_s"].map(String::from).to_vec(),
    };
    let mut run = PpoRun { t: &mut t, tok: &tok, samples_per_log: ppo.samples_per_log };
    if run_iterations(&mut run, out, resume, &schedule)? == Ended::Halted {
        return Ok(t.actor.module.valid());
    }
    let actor = t.actor.module.valid();
    let dtype = rlhf_model::WeightDtype::for_export(cfg.export_dtype, Some(&m.actor))?;
    let export_adapter = cfg.ppo.lora.as_ref().is_some_and(|l| l.export_adapter);
    let actor = rlhf_model::export(actor, &out.join("final"), &Export { dtype, source: &m.actor, lora: actor_lora.as_ref(), export_adapter, extra_files: &[] })?;
    eprintln!("ppo: final actor ({dtype}) in {}", out.join("final").display());
    Ok(actor)
}

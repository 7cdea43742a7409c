//! Stage 3's memory plan: four models (two bases with LoRA), two optimizers, and the phases of an
//! iteration one after another — generation (the KV cache), scoring, the actor's update (PPO and
//! ptx micro-batches), the critic's.

use rlhf_train::memory::{
    compute_knobs, inference_bytes, kv_cache_bytes, lora_knob, resident_rows, update_rows, MemoryPlan, PlannedModel, Row, ShapeOf, Training,
    LM_LOSS_COPIES,
};

use crate::PpoConfig;

/// The actor's [tokens, vocab] tensors at their peak: the LM loss's, plus the entropy bonus's
/// gradient before autodiff sums it into the log-probabilities' (the entropy op keeps the same
/// logits).
const ACTOR_LOGIT_COPIES: u64 = LM_LOSS_COPIES + 1;

pub fn memory_plan(cfg: &PpoConfig, shape_of: ShapeOf) -> anyhow::Result<MemoryPlan> {
    let m = &cfg.model;
    let actor_shape = shape_of(&m.actor)?;
    let rm_shape = shape_of(&m.reward_model)?;
    let critic_shape = match &m.critic {
        Some(dir) => shape_of(dir)?,
        None => rm_shape.clone(),
    };
    let reference_shape = match &m.reference {
        Some(dir) => shape_of(dir)?,
        None => actor_shape.clone(),
    };
    let (precision, checkpointing) = (cfg.precision, cfg.ppo.gradient_checkpointing);
    let planned = |name: &str, cfg, lm_head, training| PlannedModel { name: name.into(), cfg, lm_head, training, precision, checkpointing };
    let actor = planned("actor", actor_shape.clone(), true, Training::of(cfg.ppo.lora.as_ref(), actor_shape.arch)?);
    let critic = planned("critic", critic_shape.clone(), false, Training::of(cfg.ppo.critic_lora.as_ref(), critic_shape.arch)?);
    // A frozen model on a shared base holds the base's (possibly quantized) weights once.
    let reference_shares = (cfg.ppo.lora.is_some() && m.reference.is_none()).then_some("actor");
    let rm_shares = (cfg.ppo.critic_lora.is_some() && m.critic.is_none()).then_some("critic");
    let reference = planned("reference", reference_shape.clone(), true, Training::Frozen);
    let reward_model = planned("reward model", rm_shape.clone(), false, Training::Frozen);

    let p = &cfg.ppo;
    let len = cfg.data.max_prompt_len + cfg.generate.max_new_tokens;
    let gen_batch = cfg.generate.batch_size.unwrap_or(p.rollout_batch_size).min(p.rollout_batch_size);
    let micro = p.micro_batch_size;
    let generation = vec![
        Row::new("KV cache", format!("{gen_batch} seq × {len} positions × {} blocks", actor_shape.num_layers), kv_cache_bytes(&actor_shape, gen_batch, len, precision)),
        Row::new(
            "prompt prefill",
            format!("{gen_batch} × {} tokens, one block at a time", cfg.data.max_prompt_len),
            inference_bytes(&actor_shape, gen_batch, cfg.data.max_prompt_len, false) + (gen_batch * actor_shape.vocab_size * 2 * 4) as u64,
        ),
    ];
    // Reward models among the other reward sources are frozen models of their own.
    let mut scoring_bytes = inference_bytes(&reference_shape, micro, len, true).max(inference_bytes(&rm_shape, micro, len, false));
    let mut source_models = Vec::new();
    for (i, r) in cfg.rewards.iter().enumerate() {
        if let rlhf_rl::RewardKind::RewardModel { path, .. } = &r.kind {
            let shape = shape_of(path)?;
            scoring_bytes = scoring_bytes.max(inference_bytes(&shape, micro, len, false));
            source_models.push((planned(&format!("reward source {}", i + 1), shape, false, Training::Frozen), None));
        }
    }
    let scoring = vec![Row::new("reference / RM / critic forward", format!("{micro} seq × {len} tokens, no autodiff"), scoring_bytes)];
    let mut phases = vec![
        ("generation".to_string(), generation),
        ("scoring".to_string(), scoring),
        ("actor update".to_string(), update_rows(&actor, micro, len, ACTOR_LOGIT_COPIES)),
    ];
    if let Some(ptx) = &cfg.ptx {
        phases.push(("ptx update".to_string(), update_rows(&actor, micro.min(ptx.batch_size), ptx.max_len, LM_LOSS_COPIES)));
    }
    phases.push(("critic update".to_string(), update_rows(&critic, micro, len, 0)));

    let mut knobs = vec![
        format!("ppo.micro_batch_size (now {micro})"),
        format!("generate.batch_size (now {gen_batch}: the KV cache)"),
        format!("data.max_prompt_len + generate.max_new_tokens (now {} + {})", cfg.data.max_prompt_len, cfg.generate.max_new_tokens),
    ];
    knobs.extend(compute_knobs(precision, checkpointing, "ppo"));
    if let Some(ptx) = &cfg.ptx {
        knobs.push(format!("ptx.max_len (now {})", ptx.max_len));
    }
    knobs.push(lora_knob(cfg.ppo.lora.as_ref(), "ppo.lora"));
    knobs.push(lora_knob(cfg.ppo.critic_lora.as_ref(), "ppo.critic_lora"));
    Ok(MemoryPlan {
        stage: "ppo".into(),
        resident: resident_rows(&[vec![(actor, None), (reference, reference_shares), (critic, None), (reward_model, rm_shares)], source_models].concat()),
        phases,
        knobs,
    })
}

//! The critic-free stage's memory plan: the policy and its optimizer, the reference only when the
//! KL term is on (no weights of its own with LoRA: the policy's base), the reward models among the
//! reward sources, no critic; then the phases — generation (`n` samples per prompt in the KV
//! cache), scoring, the policy's update.

use rlhf_rl::RewardKind;
use rlhf_train::memory::{compute_knobs, inference_bytes, kv_cache_bytes, lora_knob, resident_rows, update_rows, MemoryPlan, PlannedModel, Row, ShapeOf, Training, LM_LOSS_COPIES};

use crate::GrpoConfig;

/// The policy's [tokens, vocab] tensors at their peak: the LM loss's, plus the entropy's gradient.
const POLICY_LOGIT_COPIES: u64 = LM_LOSS_COPIES + 1;

pub fn memory_plan(cfg: &GrpoConfig, shape_of: ShapeOf) -> anyhow::Result<MemoryPlan> {
    let g = &cfg.grpo;
    let policy_shape = shape_of(&cfg.model.policy)?;
    let (precision, checkpointing) = (cfg.precision, g.gradient_checkpointing);
    let planned = |name: &str, cfg, lm_head, training| PlannedModel { name: name.into(), cfg, lm_head, training, precision, checkpointing };
    let mut models = vec![(planned("policy", policy_shape.clone(), true, Training::of(g.lora.as_ref(), policy_shape.arch)?), None)];
    let mut scoring_bytes = 0u64;
    let len = cfg.data.max_prompt_len + cfg.generate.max_new_tokens;
    let micro = g.micro_batch_size;
    if g.uses_reference() {
        let shape = match &cfg.model.reference {
            Some(dir) => shape_of(dir)?,
            None => policy_shape.clone(),
        };
        let shares = (g.lora.is_some() && cfg.model.reference.is_none()).then_some("policy");
        scoring_bytes = scoring_bytes.max(inference_bytes(&shape, micro, len, true));
        models.push((planned("reference", shape, true, Training::Frozen), shares));
    }
    for (i, r) in cfg.rewards.iter().enumerate() {
        if let RewardKind::RewardModel { path, .. } = &r.kind {
            let shape = shape_of(path)?;
            scoring_bytes = scoring_bytes.max(inference_bytes(&shape, micro, len, false));
            models.push((planned(&format!("reward model {}", i + 1), shape, false, Training::Frozen), None));
        }
    }
    let (rows, n) = (g.rollout_rows(), g.samples_per_prompt.max(1));
    // Generation batches hold whole groups (rollout::sample); each prompt is prefilled once, then its
    // cache is copied to its n rows (both copies live for a moment).
    let prompts_per_batch = (cfg.generate.batch_size.unwrap_or(rows).min(rows) / n).max(1);
    let gen_batch = prompts_per_batch * n;
    let generation = vec![
        Row::new(
            "KV cache",
            format!("{gen_batch} seq ({n} per prompt) + {prompts_per_batch} prefilled × {len} positions × {} blocks", policy_shape.num_layers),
            kv_cache_bytes(&policy_shape, gen_batch + prompts_per_batch, len, precision),
        ),
        Row::new(
            "prompt prefill",
            format!("{prompts_per_batch} × {} tokens, one block at a time", cfg.data.max_prompt_len),
            inference_bytes(&policy_shape, prompts_per_batch, cfg.data.max_prompt_len, false) + (gen_batch * policy_shape.vocab_size * 2 * 4) as u64,
        ),
    ];
    // π_old's pass (when needed) is the policy's inference forward; the reference's and reward
    // models' are the same size or smaller.
    scoring_bytes = scoring_bytes.max(inference_bytes(&policy_shape, micro, len, true));
    let scoring = vec![Row::new("π_old / reference / reward model forward", format!("{micro} seq × {len} tokens, no autodiff"), scoring_bytes)];
    let phases = vec![
        ("generation".to_string(), generation),
        ("scoring".to_string(), scoring),
        ("policy update".to_string(), update_rows(&models[0].0, micro, len, POLICY_LOGIT_COPIES)),
    ];
    let mut knobs = vec![
        format!("grpo.micro_batch_size (now {micro})"),
        format!("generate.batch_size (now {gen_batch}: the KV cache)"),
        format!("data.max_prompt_len + generate.max_new_tokens (now {} + {})", cfg.data.max_prompt_len, cfg.generate.max_new_tokens),
    ];
    knobs.extend(compute_knobs(precision, checkpointing, "grpo"));
    knobs.push(lora_knob(g.lora.as_ref(), "grpo.lora"));
    Ok(MemoryPlan { stage: "grpo".into(), resident: resident_rows(&models), phases, knobs })
}

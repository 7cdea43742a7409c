//! The memory plan: its numbers for a fixture against a count by hand, a stage refused before
//! anything is loaded, and `rlhf plan` over a pipeline config at 7B.

use std::path::Path;
use std::process::Command;

use rlhf_train::memory::{shape_from_dir, MemoryPlan, RUNTIME_RESERVE};

use crate::common::{fixture, rlhf};

fn sft_config(model: &Path, extra: &str) -> rlhf_sft::SftConfig {
    toml::from_str(&format!(
        "[model]\nfrom = {model:?}\n[data]\ntrain = \"-\"\nmax_len = 16\n[train]\nsteps = 1\nbatch_size = 4\nmicro_batch_size = 2\nlr = 1e-3\n{extra}"
    ))
    .unwrap()
}

fn row(plan: &MemoryPlan, item: &str) -> u64 {
    let resident = plan.resident.iter();
    let phases = plan.phases.iter().flat_map(|(_, rows)| rows.iter());
    resident.chain(phases).find(|r| r.item == item).unwrap_or_else(|| panic!("no row {item:?} in\n{}", plan.table())).bytes
}

/// The tiny LLaMA (vocab 1024, h 64, ffn 176, 2 blocks, 4 heads × 16, 2 kv heads, untied head):
/// embeddings 65,536 + head 65,536 + final norm 64 + 2 × (q 4,096 + k 2,048 + v 2,048 + o 4,096 +
/// MLP 3·64·176 = 33,792 + norms 128 = 46,208) = 223,552 parameters. Activations per token and
/// block: 4·64 + 2·64 + 2·32 + 3·176 (SwiGLU's gate, up, product) + 4 heads·16 tokens = 1,040; a
/// micro-batch of 2 × 16 tokens keeps 32 × (2 × 1,040 + 2·64) f32; the loss 3 × 32 × 1,024 f32.
#[test]
fn sft_plan_of_the_tiny_llama_matches_a_count_by_hand() {
    let plan = rlhf_sft::memory_plan(&sft_config(&fixture("hf-tiny-llama"), ""), &shape_from_dir).unwrap();
    let weights = 223_552 * 4;
    assert_eq!(row(&plan, "policy weights"), weights);
    assert_eq!(row(&plan, "policy AdamW moments"), 2 * weights);
    assert_eq!(row(&plan, "policy gradients"), weights);
    assert_eq!(row(&plan, "activations"), 32 * (2 * 1_040 + 128) * 4);
    assert_eq!(row(&plan, "logits + loss"), 3 * 32 * 1_024 * 4);
    assert_eq!(plan.peak_bytes(), 4 * weights + 32 * 2_208 * 4 + 393_216 + RUNTIME_RESERVE);

    // LoRA r = 8 on q and v: 8·(64 + 64) + 8·(64 + 32) = 1,792 per block; only they have
    // gradients and moments, the base is still held in full.
    let lora = sft_config(&fixture("hf-tiny-llama"), "[lora]\nr = 8\ntarget_modules = [\"q_proj\", \"v_proj\"]\n");
    let plan = rlhf_sft::memory_plan(&lora, &shape_from_dir).unwrap();
    assert_eq!(row(&plan, "policy weights"), weights);
    assert_eq!(row(&plan, "policy gradients"), 3_584 * 4);
    assert_eq!(row(&plan, "policy AdamW moments"), 2 * 3_584 * 4);
}

/// The same model under bf16 mixed precision and gradient checkpointing. Vectors (2 norms × 64 per
/// block + the final norm: 320) stay f32; the 223,232 matrix parameters get a bf16 copy for the
/// products. Per token and block: f32 2·64 + 4 heads·16 = 192, bf16 2·64 + 2·64 + 2·32 + 3·176 +
/// 4·16 = 912 → 192·4 + 912·2 = 2,592 bytes. Checkpointed: each of the 2 blocks keeps its
/// 64-wide f32 input, one block's 2,592 bytes exist at a time, + the final norm's 2·64 f32.
#[test]
fn bf16_and_checkpointing_plans_match_a_count_by_hand() {
    let dir = fixture("hf-tiny-llama");
    let bf16 = |extra: &str| rlhf_sft::SftConfig { precision: rlhf_runtime::Precision::Bf16, ..sft_config(&dir, extra) };
    let plan = rlhf_sft::memory_plan(&bf16(""), &shape_from_dir).unwrap();
    assert_eq!(row(&plan, "policy weights"), 223_552 * 4, "trained weights stay f32 masters");
    assert_eq!(row(&plan, "bf16 weight copies"), 223_232 * 2);
    assert_eq!(row(&plan, "activations"), 32 * (2 * 2_592 + 2 * 64 * 4));
    assert_eq!(row(&plan, "logits + loss"), 3 * 32 * 1_024 * 4 + 32 * 1_024 * 2);
    let plan = rlhf_sft::memory_plan(&bf16("gradient_checkpointing = true\n"), &shape_from_dir).unwrap();
    assert_eq!(row(&plan, "activations"), 32 * (2 * 64 * 4 + 2_592 + 2 * 64 * 4));
    assert!(!plan.knobs.iter().any(|k| k.contains("gradient_checkpointing") || k.contains("precision")), "{:?}", plan.knobs);
    // With LoRA the frozen base's matrices are stored in bf16.
    let plan = rlhf_sft::memory_plan(&bf16("[lora]\nr = 8\ntarget_modules = [\"q_proj\", \"v_proj\"]\n"), &shape_from_dir).unwrap();
    assert_eq!(row(&plan, "policy weights"), 223_232 * 2 + 320 * 4);
}

/// PPO with LoRA holds two bases: the reference is the actor's, at no extra cost.
#[test]
fn ppo_plan_shares_the_actors_base_with_lora() {
    let text = |extra: &str| {
        format!(
            "[model]\nactor = {a:?}\nreward_model = {a:?}\n[data]\nprompts = \"-\"\nmax_prompt_len = 8\n[generate]\nmax_new_tokens = 8\n\
             [ppo]\niterations = 1\nrollout_batch_size = 4\nminibatch_size = 2\nmicro_batch_size = 2\nactor_lr = 1e-5\ncritic_lr = 1e-5\nkl_coef = 0.1\n{extra}",
            a = fixture("hf-tiny-llama")
        )
    };
    let full: rlhf_ppo::PpoConfig = toml::from_str(&text("")).unwrap();
    let plan = rlhf_ppo::memory_plan(&full, &shape_from_dir).unwrap();
    assert_eq!(row(&plan, "reference weights"), 223_552 * 4);
    // k and v of 2 blocks × 2 kv heads × 16 for 4 sequences × 16 positions.
    assert_eq!(row(&plan, "KV cache"), 2 * 2 * 32 * 4 * 16 * 4);
    let lora: rlhf_ppo::PpoConfig = toml::from_str(&text("[ppo.lora]\nr = 4\n[ppo.critic_lora]\nr = 4\n")).unwrap();
    let plan = rlhf_ppo::memory_plan(&lora, &shape_from_dir).unwrap();
    assert_eq!(row(&plan, "reference weights"), 0);
    assert_eq!(row(&plan, "reward model weights"), 0);
    assert!(plan.peak_bytes() < rlhf_ppo::memory_plan(&full, &shape_from_dir).unwrap().peak_bytes());
}

/// GRPO's generation batches hold whole groups, each prompt prefilled once: `generate.batch_size`
/// 10 with 4 samples per prompt is 2 prompts = 8 rows, plus the 2 prefilled rows before their copy.
#[test]
fn grpo_plan_counts_whole_groups_and_one_prefill_per_prompt() {
    let text = format!(
        "[model]\npolicy = {a:?}\n[data]\nprompts = \"-\"\nmax_prompt_len = 8\n[generate]\nmax_new_tokens = 8\nbatch_size = 10\n\
         [grpo]\niterations = 1\nprompts_per_iteration = 3\nsamples_per_prompt = 4\nmicro_batch_size = 4\nlr = 1e-5\nkl_coef = 0.0\n\
         [[rewards]]\ntype = \"length\"\nmax_len = 8\nbuffer = 4\n",
        a = fixture("hf-tiny-llama")
    );
    let cfg: rlhf_grpo::GrpoConfig = toml::from_str(&text).unwrap();
    let plan = rlhf_grpo::memory_plan(&cfg, &shape_from_dir).unwrap();
    // k and v of 2 blocks × (2 kv heads × 16) for 8 + 2 sequences × 16 positions, f32.
    assert_eq!(row(&plan, "KV cache"), 2 * 2 * 32 * 10 * 16 * 4);
    assert!(plan.table().contains("2 × 8 tokens"), "{}", plan.table());
    assert!(!plan.table().contains("reference weights"), "{}", plan.table());
}

fn shapes(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/shapes").join(name).display().to_string()
}

/// A 7B full-parameter SFT at micro-batch 64 × 4096 tokens needs terabytes: the stage is refused
/// before anything is loaded or written, naming the knobs; `--force` goes on to load (and fails
/// there, the shape folder having no weights).
#[test]
fn a_plan_larger_than_memory_is_refused_before_loading() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("p.toml");
    let text = format!(
        "stages = [\"sft\"]\n[sft.model]\nfrom = {:?}\n[sft.data]\ntrain = \"-\"\nmax_len = 4096\n[sft.train]\nsteps = 1\nbatch_size = 64\nmicro_batch_size = 64\nlr = 1e-5\n",
        shapes("qwen2.5-7b")
    );
    std::fs::write(&config, text).unwrap();
    let out = tmp.path().join("run");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_rlhf")).args(["pipeline", "run", config.to_str().unwrap(), "--out", out.to_str().unwrap()]).args(extra).output().unwrap()
    };
    let o = run(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("memory plan: sft") && err.contains("nothing was loaded"), "{err}");
    assert!(err.contains("train.micro_batch_size (now 64)") && err.contains("data.max_len (now 4096)") && err.contains("add [lora]"), "{err}");
    assert!(!out.exists(), "a refused pipeline wrote {}", out.display());
    let o = run(&["--force"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--force") && err.contains("safetensors"), "{err}");
}

/// `rlhf plan` on the ColossalChat pipeline with a 7B config.json: a plan per stage, the later
/// stages planned with the shapes their inputs will have.
#[test]
fn rlhf_plan_prints_every_stage_of_a_7b_pipeline() {
    let o = rlhf(&["plan", "configs/pipeline/colossalchat.toml", "--set", &format!("sft.model.from={}", shapes("qwen2.5-7b"))]);
    let text = String::from_utf8_lossy(&o.stdout);
    for stage in ["memory plan: sft", "memory plan: reward", "memory plan: ppo"] {
        assert!(text.contains(stage), "{text}");
    }
    // The reference is loaded from SFT's output, which has the 7B's 7,615.6M parameters.
    assert!(text.lines().any(|l| l.contains("reference weights") && l.contains("7615.6M")), "{text}");
    assert!(text.contains("does not fit") && !o.status.success(), "{text}");
}

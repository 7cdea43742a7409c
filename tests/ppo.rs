//! Stage 3 end to end on the tiny LLaMA fixture (actor, reference) and a reward model made from
//! its body: every metric is logged, samples are written, and an interrupted, resumed run ends with
//! exactly the weights of an uninterrupted one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::tensor::{Int, Tensor, TensorData};
use rlhf_runtime::{Cpu, CpuTrain};
use rlhf_model::reward_info::{Normalization, REWARD_INFO_FILE};
use rlhf_model::{generate, CausalLm, GenerateConfig, GenerationBatch, RewardInfo, RewardModel, Sampler, ScalarHead, Transformer, WeightDtype};
use rlhf_ppo::PpoConfig;

use crate::common::fixture;

/// Demo prompts/pretraining text and a reward model (fixture body + random head) in `dir`.
pub fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let sizes = rlhf_data::demo::DemoSizes { pretrain_docs: 40, sft: 10, rankings: 10, prompts: 64 };
    let data = dir.join("demo");
    rlhf_data::demo::write_demo(&data, 0, sizes).unwrap();
    let d = Default::default();
    <Cpu as burn::tensor::backend::Backend>::seed(&d, 1);
    let body = Transformer::<Cpu>::from_hf_dir(&fixture("hf-tiny-llama"), &d).unwrap();
    let rm = RewardModel { head: ScalarHead::init(body.config.hidden_size, &d), model: body };
    let rm_dir = dir.join("rm");
    let info = RewardInfo {
        score_position: "last real token".into(),
        template_end_of_turn: "<|im_end|>".into(),
        normalization: Normalization { reference: "test".into(), count: 1, mean_before: 0.0, std: 0.5, bias_added: 0.0 },
    };
    rm.save_dir(&rm_dir, Some(&fixture("hf-tiny-llama")), &[(REWARD_INFO_FILE, info.to_json())], WeightDtype::F32).unwrap();
    (data, rm_dir)
}

fn config_text(data: &Path, rm: &Path) -> String {
    format!(
        r#"
seed = 5
[model]
actor = "{actor}"
reward_model = "{rm}"
[data]
prompts = "{data}/prompts.jsonl"
max_prompt_len = 64
[ptx]
data = "{data}/pretrain.jsonl"
coef = 0.5
batch_size = 4
max_len = 32
[generate]
max_new_tokens = 8
[ppo]
iterations = 4
rollout_batch_size = 8
minibatch_size = 4
micro_batch_size = 2
ppo_epochs = 2
actor_lr = 1e-3
critic_lr = 1e-3
kl_coef = 0.1
target_kl = 1.0
save_every = 2
sample_every = 2
samples_per_log = 2
"#,
        actor = fixture("hf-tiny-llama").display(),
        rm = rm.display(),
        data = data.display()
    )
}

pub fn config(data: &Path, rm: &Path, extra: &[&str]) -> PpoConfig {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), config_text(data, rm)).unwrap();
    let sets: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    rlhf_train::config::load_config(Some(tmp.path()), &sets).unwrap()
}

fn logits(model: &CausalLm<Cpu>) -> Vec<f32> {
    let d = Default::default();
    let ids = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(vec![1i64, 350, 289, 201, 9, 40], [1, 6]), &d);
    model.forward(ids, Tensor::ones([1, 6], &d), None).unwrap().into_data().to_vec::<f32>().unwrap()
}

/// Runs the PPO stage alone through `rlhf pipeline run` (a process of its own: the CPU backend's RNG is
/// process-wide, so runs sharing this test process with other tests would not draw reproducibly).
fn run_ppo(cfg: &str, out: &Path, args: &[&str]) -> Output {
    let mut pipeline = toml::Table::new();
    pipeline.insert("stages".into(), toml::Value::Array(vec![toml::Value::String("ppo".into())]));
    pipeline.insert("ppo".into(), toml::Value::Table(toml::from_str(cfg).unwrap()));
    let path = out.with_extension("toml");
    std::fs::write(&path, toml::to_string(&pipeline).unwrap()).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["pipeline", "run", path.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

#[test]
fn ppo_logs_every_metric_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, rm) = setup(tmp.path());
    let cfg = config_text(&data, &rm);
    let d = Default::default();

    let full = tmp.path().join("full");
    run_ppo(&cfg, &full, &[]);
    let run = full.join("ppo");
    let rows = rlhf_train::metrics::read_metrics(&run.join("metrics.jsonl")).unwrap();
    assert_eq!(rows.len(), 4);
    for key in [
        "iteration", "rm_score", "kl", "reward", "policy_loss", "value_loss", "ptx_loss", "entropy", "clip_frac", "approx_kl",
        "ratio_max", "response_len", "kl_coef", "gen_tokens_per_s", "train_tokens_per_s",
    ] {
        assert!(rows.iter().all(|r| r[key].as_f64().is_some_and(f64::is_finite)), "{key} missing or not finite: {rows:?}");
    }
    assert!(rows[0]["kl"].as_f64().unwrap().abs() < 1e-4, "actor = reference at the start");
    assert!(rows[0]["ptx_loss"].as_f64().unwrap() > 0.0);
    // The adaptive controller: iteration 1 runs with β = 0.1 and observes KL ≈ 0 < target 1.0, so
    // iteration 2 runs with a smaller β.
    assert_eq!(rows[0]["kl_coef"].as_f64().unwrap(), 0.1);
    assert!(rows[1]["kl_coef"].as_f64().unwrap() < 0.1);
    let samples = std::fs::read_to_string(run.join("samples.jsonl")).unwrap();
    assert_eq!(samples.lines().count(), 3 * 2, "iterations 1, 2 and 4, two samples each");
    let a = CausalLm::<Cpu>::from_hf_dir(&run.join("final"), &d).unwrap();
    let start = CausalLm::<Cpu>::from_hf_dir(&fixture("hf-tiny-llama"), &d).unwrap();
    assert!(logits(&a) != logits(&start), "the actor was not trained");

    // Interrupted after iteration 2 (checkpoint), then resumed.
    let part = tmp.path().join("part");
    let o = run_ppo(&cfg, &part, &["--set", "ppo.ppo.halt_after=2"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("ppo: stopped early"));
    assert!(!part.join("ppo/final").exists());
    run_ppo(&cfg, &part, &["--resume"]);
    let b = CausalLm::<Cpu>::from_hf_dir(&part.join("ppo/final"), &d).unwrap();
    assert!(logits(&a) == logits(&b), "resumed run differs from the uninterrupted one");
    let resumed = rlhf_train::metrics::read_metrics(&part.join("ppo/metrics.jsonl")).unwrap();
    assert_eq!(resumed.iter().map(|r| r["iteration"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    assert_eq!(resumed[3]["rm_score"], rows[3]["rm_score"]);
}

/// With a vanishing learning rate the policy never moves, so the recomputed log-probs of the
/// update equal the rollout's: every ratio is 1, nothing is clipped, the approximate KL is 0
/// (with the rollout generated three responses at a time).
#[test]
fn update_log_probs_match_the_rollout() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, rm) = setup(tmp.path());
    let cfg = config(&data, &rm, &["ppo.iterations=1", "ppo.actor_lr=1e-12", "ptx.coef=0.0", "generate.batch_size=3"]);
    rlhf_ppo::run::<CpuTrain>(&cfg, &tmp.path().join("run"), false, &Default::default()).unwrap();
    let rows = rlhf_train::metrics::read_metrics(&tmp.path().join("run/metrics.jsonl")).unwrap();
    let get = |k: &str| rows[0][k].as_f64().unwrap();
    assert!((get("ratio_max") - 1.0).abs() < 1e-4, "ratio_max {}", get("ratio_max"));
    assert_eq!(get("clip_frac"), 0.0);
    assert!(get("approx_kl").abs() < 1e-6, "approx_kl {}", get("approx_kl"));
    assert_eq!(get("ptx_loss"), 0.0, "coef 0: no ptx batch");
}

/// Responses generated in separate batches (different prompt lengths, different numbers of
/// steps) and stacked: every row keeps its tokens, and the sampler's own log-probs (KV cache, per
/// batch) equal PPO's recomputation over the stacked rows, so the extra padding changes nothing.
#[test]
fn rollouts_generated_in_batches_stack_exactly() {
    let d = Default::default();
    let model = CausalLm::<Cpu>::from_hf_dir(&fixture("hf-tiny-llama"), &d).unwrap();
    let prompts = [vec![1u32, 350, 289], vec![1, 9], vec![1, 40, 41, 42, 43, 44], vec![1, 7, 8, 9], vec![5]];
    let sampler = Sampler::Sample { temperature: 1.0, top_k: None, top_p: None };
    let cfg = |max_new_tokens| GenerateConfig { max_new_tokens, sampler: sampler.clone(), stop_ids: vec![], pad_id: 0, seed: Some(3) };
    let parts = vec![
        generate(&model, &prompts[0..2], &cfg(6), &d).unwrap(),
        generate(&model, &prompts[2..4], &cfg(6), &d).unwrap(),
        generate(&model, &prompts[4..5], &cfg(3), &d).unwrap(),
    ];
    let want: Vec<_> = parts.iter().flat_map(|p| p.to_host()).collect();
    let batch = GenerationBatch::concat(parts, 0);
    assert_eq!((batch.prompt_ids.dims(), batch.new_ids.dims()), ([5, 6], [5, 6]));
    assert_eq!(batch.to_host(), want);
    let mask = batch.new_mask.clone().float();
    assert_eq!(mask.clone().sum().into_scalar(), 27.0, "6 + 6 + 6 + 6 + 3 real tokens");

    let ids = Tensor::cat(vec![batch.prompt_ids.clone(), batch.new_ids.clone()], 1);
    let attention = Tensor::cat(vec![batch.prompt_mask.clone(), batch.new_mask.clone()], 1);
    let (logp, _) = rlhf_model::ops::action_log_probs(&model, ids, attention, 6, false).unwrap();
    let diff: f32 = ((logp - batch.logprobs.clone()) * mask).abs().max().into_scalar();
    assert!(diff < 1e-4, "max |Δ log π| {diff}");
}

#[test]
fn bad_configs_are_refused_before_loading() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nothing");
    let mut cfg = config(&missing, &missing, &["ppo.minibatch_size=0"]);
    let e = rlhf_ppo::run::<CpuTrain>(&cfg, &tmp.path().join("o"), false, &Default::default()).unwrap_err();
    assert!(e.to_string().contains("ppo.minibatch_size"), "{e}");
    cfg = config(&missing, &missing, &["generate.batch_size=0"]);
    let e = rlhf_ppo::run::<CpuTrain>(&cfg, &tmp.path().join("o"), false, &Default::default()).unwrap_err();
    assert!(e.to_string().contains("generate.batch_size"), "{e}");
    cfg = config(&missing, &missing, &["ptx.mode=\"convex\"", "ptx.coef=1.5"]);
    let e = rlhf_ppo::run::<CpuTrain>(&cfg, &tmp.path().join("o"), false, &Default::default()).unwrap_err();
    assert!(e.to_string().contains("ptx.coef"), "{e}");
    // Prompt + response longer than the model's context.
    let (data, rm) = setup(tmp.path());
    let cfg = config(&data, &rm, &["generate.max_new_tokens=250"]);
    let e = rlhf_ppo::run::<CpuTrain>(&cfg, &tmp.path().join("o"), false, &Default::default()).unwrap_err();
    assert!(format!("{e:#}").contains("positions"), "{e:#}");
}


/// Actor and critic steps go through the one update path: a critic that diverges (learning rate
/// 1e35) stops the run at its first non-finite loss with an error naming the critic, and the last
/// good checkpoint stays.
#[test]
fn non_finite_critic_loss_stops_naming_the_critic_and_keeps_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, rm) = setup(tmp.path());
    let out = tmp.path().join("run");
    let cfg = config(&data, &rm, &["ppo.save_every=1", "ppo.halt_after=1"]);
    rlhf_ppo::run::<CpuTrain>(&cfg, &out, false, &Default::default()).unwrap();
    let good = rlhf_train::checkpoint::latest_checkpoint(&out).unwrap();
    assert!(good.ends_with("step-00000001"), "{}", good.display());

    let cfg = config(&data, &rm, &["ppo.save_every=1", "ppo.critic_lr=1e35"]);
    let e = rlhf_ppo::run::<CpuTrain>(&cfg, &out, true, &Default::default()).map(|_| ()).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.starts_with("critic: ") || msg.contains(": critic: "), "{msg}");
    assert!(msg.contains("loss is") && msg.contains(&good.display().to_string()), "{msg}");
    assert_eq!(rlhf_train::checkpoint::latest_checkpoint(&out).unwrap(), good);
    assert!(!out.join("final").exists());
}

/// A trainer on eight short prompts (stop token 2), no ptx data.
fn small_trainer(cfg: PpoConfig, models: rlhf_ppo::Models<CpuTrain>) -> rlhf_ppo::Trainer<CpuTrain> {
    let prompts = [vec![1, 350, 289], vec![1, 9, 40, 41], vec![1, 7], vec![1, 5, 6, 7, 8]].iter().cycle().take(8).cloned().map(rlhf_data::Prompt::from_ids).collect();
    rlhf_ppo::Trainer::new(cfg, models.actor, models.critic, models.reference, models.reward_model, prompts, vec![], vec![2], 0, None, Default::default())
}

/// PPO with LoRA on the actor and the critic: the reference is the actor's base with adapters off, so
/// its log-probs stay exactly what they were while the actor moves; the reward model keeps the
/// critic's base and its own head; the run resumes exactly and exports a merged actor.
#[test]
fn lora_ppo_keeps_the_reference_fixed_and_resumes_exactly() {
    use burn::module::AutodiffModule;
    use rlhf_model::ops::action_log_probs;
    let tmp = tempfile::tempdir().unwrap();
    let (data, rm) = setup(tmp.path());
    let d = Default::default();
    let lora = ["ppo.lora.r=8", "ppo.lora.target_modules=[\"all-linear\"]", "ppo.critic_lora.r=4", "ppo.actor_lr=1e-2"];
    let cfg = config(&data, &rm, &lora);
    let models = rlhf_ppo::load_models::<CpuTrain>(&cfg, &d).unwrap();
    assert!(models.actor.model.has_lora() && models.critic.model.has_lora());
    assert!(!models.reference.model.has_lora() && !models.reward_model.model.has_lora());
    let ids = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(vec![1i64, 350, 289, 201, 9, 40, 41, 42], [1, 8]), &d);
    let mask = Tensor::<Cpu, 2, Int>::ones([1, 8], &d);
    let ref_logp = |m: &CausalLm<Cpu>| action_log_probs(m, ids.clone(), mask.clone(), 3, false).unwrap().0.into_data().to_vec::<f32>().unwrap();
    let rm_score = |m: &RewardModel<Cpu>| m.score(ids.clone(), mask.clone()).unwrap().into_data().to_vec::<f32>().unwrap();
    let before = ref_logp(&models.reference);
    let rm_before = rm_score(&models.reward_model);
    let mut t = small_trainer(cfg.clone(), models);
    for i in 0..2 {
        t.iteration(i).unwrap();
    }
    let actor = t.actor.module.valid();
    assert!(ref_logp(&actor) != before, "the actor did not move");
    assert_eq!(ref_logp(&t.reference), before, "the reference moved with the actor");
    assert_eq!(rm_score(&t.reward_model), rm_before, "the reward model moved with the critic");
    assert!(rm_score(&t.critic.module.valid()) != rm_before, "the critic did not move");

    // The stage end to end, interrupted and resumed.
    let text = config_text(&data, &rm);
    let sets: Vec<String> = lora.iter().flat_map(|s| ["--set".to_string(), format!("ppo.{s}")]).collect();
    let args = |extra: &[&'static str]| sets.iter().map(String::as_str).chain(extra.iter().copied()).collect::<Vec<_>>();
    let (full, part) = (tmp.path().join("full"), tmp.path().join("part"));
    run_ppo(&text, &full, &args(&[]));
    run_ppo(&text, &part, &args(&["--set", "ppo.ppo.halt_after=2"]));
    run_ppo(&text, &part, &args(&["--resume"]));
    let a = CausalLm::<Cpu>::from_hf_dir(&full.join("ppo/final"), &d).unwrap();
    let b = CausalLm::<Cpu>::from_hf_dir(&part.join("ppo/final"), &d).unwrap();
    assert!(logits(&a) == logits(&b), "resumed LoRA run differs from the uninterrupted one");
    let start = CausalLm::<Cpu>::from_hf_dir(&fixture("hf-tiny-llama"), &d).unwrap();
    assert!(logits(&a) != logits(&start), "the merged actor equals the start");
}

/// QLoRA-style PPO: both shared bases kept as codes (`base_quant`). The reference and the reward
/// model run on the same codes as the actor and critic (a fraction of f32's bytes), stay fixed while
/// the adapters move, and the stage runs end to end to a merged f32 export.
#[test]
fn qlora_ppo_shares_quantized_bases_and_exports_merged() {
    use burn::module::AutodiffModule;
    use rlhf_model::ops::action_log_probs;
    let tmp = tempfile::tempdir().unwrap();
    let (data, rm) = setup(tmp.path());
    let d = Default::default();
    let lora = ["ppo.lora.r=8", "ppo.lora.base_quant=\"nf4\"", "ppo.critic_lora.r=4", "ppo.critic_lora.base_quant=\"q8\"", "ppo.actor_lr=1e-2"];
    let cfg = config(&data, &rm, &lora);
    let models = rlhf_ppo::load_models::<CpuTrain>(&cfg, &d).unwrap();
    let f32_bytes = CausalLm::<Cpu>::from_hf_dir(&fixture("hf-tiny-llama"), &d).unwrap().model.projection_bytes();
    assert!(models.reference.model.projection_bytes() * 6 < f32_bytes, "the reference is not on 4-bit codes");
    assert!(models.reward_model.model.projection_bytes() * 3 < f32_bytes, "the reward model is not on 8-bit codes");
    let ids = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(vec![1i64, 350, 289, 201, 9, 40, 41, 42], [1, 8]), &d);
    let mask = Tensor::<Cpu, 2, Int>::ones([1, 8], &d);
    let ref_logp = |m: &CausalLm<Cpu>| action_log_probs(m, ids.clone(), mask.clone(), 3, false).unwrap().0.into_data().to_vec::<f32>().unwrap();
    let before = ref_logp(&models.reference);
    let mut t = small_trainer(cfg.clone(), models);
    for i in 0..2 {
        let m = t.iteration(i).unwrap().metrics;
        assert!(m.iter().all(|(_, v)| v.is_finite()), "{m:?}");
    }
    assert!(ref_logp(&t.actor.module.valid()) != before, "the actor did not move");
    assert_eq!(ref_logp(&t.reference), before, "the reference moved with the actor");

    let text = config_text(&data, &rm);
    let sets: Vec<String> = lora.iter().flat_map(|s| ["--set".to_string(), format!("ppo.{s}")]).collect();
    let out = tmp.path().join("run");
    run_ppo(&text, &out, &sets.iter().map(String::as_str).collect::<Vec<_>>());
    let merged = CausalLm::<Cpu>::from_hf_dir(&out.join("ppo/final"), &d).unwrap();
    assert_eq!(merged.model.projection_bytes(), f32_bytes, "the export is not a dense f32 folder");
}

//! The critic-free stage end to end on the tiny LLaMA fixture, with rewards from rules and from a
//! user's Python program: no critic and (β = 0) no reference is loaded, an interrupted and resumed
//! run ends with exactly the weights of an uninterrupted one, and a lying program stops the run
//! with an error naming the command and the prompt record, leaving no `final/`.

use std::path::Path;

use burn::tensor::{Int, Tensor, TensorData};
use rlhf_grpo::GrpoConfig;
use rlhf_model::CausalLm;
use rlhf_runtime::{Cpu, CpuTrain};

use crate::common::fixture;

/// Answers 1 when the response contains the record's answer, else 0; `null` for records without one.
const REWARD_PY: &str = r#"
import json, sys
for line in sys.stdin:
    x = json.loads(line)
    answer = x["record"].get("answer")
    print(json.dumps({"reward": None if answer is None else float(answer in x["response"])}), flush=True)
"#;

/// Answers once, then a word.
const LYING_PY: &str = r#"
import sys
for i, line in enumerate(sys.stdin):
    print('{"reward": 1}' if i == 0 else "great answer", flush=True)
"#;

fn config(dir: &Path, script: &str, extra: &[&str]) -> GrpoConfig {
    let path = config_file(dir, script);
    let sets: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    rlhf_train::config::load_config(Some(&path), &sets).unwrap()
}

/// Runs the stage alone through `rlhf pipeline run` (a process of its own: the CPU backend's RNG is
/// process-wide, so runs sharing this test process with other tests would not draw reproducibly).
fn run_grpo(dir: &Path, out: &Path, args: &[&str]) {
    let cfg: toml::Table = toml::from_str(&std::fs::read_to_string(dir.join("grpo.toml")).unwrap()).unwrap();
    let mut pipeline = toml::Table::new();
    pipeline.insert("stages".into(), toml::Value::Array(vec![toml::Value::String("grpo".into())]));
    pipeline.insert("grpo".into(), toml::Value::Table(cfg));
    let path = out.with_extension("toml");
    std::fs::write(&path, toml::to_string(&pipeline).unwrap()).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["pipeline", "run", path.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn config_file(dir: &Path, script: &str) -> std::path::PathBuf {
    let data = dir.join("demo");
    if !data.exists() {
        rlhf_data::demo::write_demo(&data, 0, rlhf_data::demo::DemoSizes { pretrain_docs: 4, sft: 4, rankings: 4, prompts: 32 }).unwrap();
    }
    let py = dir.join("reward.py");
    std::fs::write(&py, script).unwrap();
    let text = format!(
        r#"
seed = 3
[model]
policy = "{policy}"
[data]
prompts = "{data}/prompts.jsonl"
max_prompt_len = 64
[generate]
max_new_tokens = 6
[grpo]
iterations = 3
prompts_per_iteration = 2
samples_per_prompt = 4
minibatch_size = 4
micro_batch_size = 4
lr = 1e-2
save_every = 1
sample_every = 1
[[rewards]]
type = "program"
command = ["python3", "{py}"]
timeout_s = 30
[[rewards]]
type = "repetition"
n = 1
"#,
        policy = fixture("hf-tiny-llama").display(),
        data = data.display(),
        py = py.display()
    );
    let path = dir.join("grpo.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn logits(m: &CausalLm<Cpu>) -> Vec<f32> {
    let d = Default::default();
    let ids = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(vec![1i64, 350, 289, 201], [1, 4]), &d);
    m.forward(ids, Tensor::ones([1, 4], &d), None).unwrap().into_data().to_vec::<f32>().unwrap()
}

#[test]
fn grpo_with_a_python_reward_runs_resumes_exactly_and_loads_no_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Default::default();
    let cfg = config(tmp.path(), REWARD_PY, &[]);
    let (_, reference, _) = rlhf_grpo::load_models::<CpuTrain>(&cfg, &d).unwrap();
    assert!(reference.is_none(), "β = 0 loaded a reference");
    let plan = rlhf_grpo::memory_plan(&cfg, &rlhf_train::memory::shape_from_dir).unwrap();
    let table = plan.table();
    assert!(!table.contains("reference") || table.contains("π_old / reference"), "{table}");
    assert!(!table.contains("critic"), "{table}");

    let full = tmp.path().join("full");
    run_grpo(tmp.path(), &full, &[]);
    let rows = rlhf_train::metrics::read_metrics(&full.join("grpo/metrics.jsonl")).unwrap();
    assert_eq!(rows.len(), 3);
    for key in ["reward", "reward_std", "frac_reward_zero_std", "rewards/program/mean", "rewards/repetition/mean", "completions/mean_length", "clip_ratio/high_mean", "entropy", "loss"] {
        assert!(rows[0].get(key).is_some(), "{key} missing: {}", rows[0]);
    }
    assert!(rows[0].get("kl").is_none(), "kl logged without a reference");
    let samples = std::fs::read_to_string(full.join("grpo/samples.jsonl")).unwrap();
    assert!(samples.lines().next().unwrap().contains("\"program\""), "{samples}");

    let part = tmp.path().join("part");
    run_grpo(tmp.path(), &part, &["--set", "grpo.grpo.halt_after=1"]);
    run_grpo(tmp.path(), &part, &["--resume"]);
    let a = CausalLm::<Cpu>::from_hf_dir(&full.join("grpo/final"), &d).unwrap();
    let b = CausalLm::<Cpu>::from_hf_dir(&part.join("grpo/final"), &d).unwrap();
    assert!(logits(&a) == logits(&b), "the resumed run differs from the uninterrupted one");
    let start = CausalLm::<Cpu>::from_hf_dir(&fixture("hf-tiny-llama"), &d).unwrap();
    assert!(logits(&a) != logits(&start), "the policy did not move: {rows:?}");
}

#[test]
fn a_lying_program_stops_the_run_naming_command_and_record() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), LYING_PY, &[]);
    let out = tmp.path().join("run");
    let e = format!("{:#}", rlhf_grpo::run::<CpuTrain>(&cfg, &out, false, &Default::default()).map(|_| ()).unwrap_err());
    assert!(e.contains("reward program `python3") && e.contains("great answer") && e.contains("line "), "{e}");
    assert!(!out.join("final").exists());
}

#[test]
fn group_estimators_need_groups_and_rewards_are_required() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), REWARD_PY, &["grpo.samples_per_prompt=1"]);
    assert!(cfg.validate().unwrap_err().to_string().contains("samples_per_prompt"));
    let cfg = config(tmp.path(), REWARD_PY, &["grpo.samples_per_prompt=1", "grpo.estimator=\"remax\"", "grpo.kl_coef=0.1"]);
    cfg.validate().unwrap();
    let (_, reference, _) = rlhf_grpo::load_models::<CpuTrain>(&cfg, &Default::default()).unwrap();
    assert!(reference.is_some(), "β > 0 needs the reference");
}

//! LoRA (Hu et al. 2021): a frozen linear map W plus a trainable low-rank update,
//! y = x·W + (α/r)·dropout(x)·A·B, with A [d_in, r] and B [r, d_out]. B starts at 0, so a fresh adapter
//! leaves the model's outputs unchanged.
//!
//! Adapters sit beside the projections of every decoder block ([`BlockLora`]); the base weights are
//! frozen (they never get a gradient, an optimizer state or a place in a checkpoint). Adapter folders
//! use PEFT's layout (`adapter_config.json` + `adapter_model.safetensors` with PEFT's key names), so
//! `peft.PeftModel.from_pretrained(base, dir)` loads ours and we load PEFT's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Tensor, TensorData};
use rlhf_runtime::{Backend, Precision};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::{Arch, TransformerConfig};
use crate::error::{ModelError, Result};
use crate::heads::{CausalLm, RewardModel, ScalarHead};
use crate::hf::{replace_dir, sibling, write_safetensors, HostTensor, KeyScheme, SafetensorsFiles, WeightDtype};
use crate::precision::in_compute;
use crate::proj::Proj;
use rlhf_runtime::quant::BaseQuant;
use crate::transformer::Transformer;

/// PEFT's adapter config file.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// PEFT's adapter weights file (only safetensors are read: never unpickle).
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// PEFT's prefix of every adapter key (`base_model.model.` + the checkpoint's module path).
const PEFT_PREFIX: &str = "base_model.model.";

/// How A is initialised (B is always 0), as PEFT's `init_lora_weights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraInit {
    /// A ~ U(−1/√d_in, 1/√d_in): PyTorch's Kaiming-uniform with a = √5, PEFT's default.
    #[default]
    Kaiming,
    /// A ~ N(0, 1/r).
    Gaussian,
}

/// The `[lora]` section of a stage (`[ppo.lora]` / `[ppo.critic_lora]` in PPO).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank r of the update.
    #[serde(default = "default_r")]
    pub r: usize,
    /// α: the update is scaled by α/r (α/√r with `rslora`).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Dropout on the adapter's input, during training only.
    #[serde(default)]
    pub dropout: f64,
    /// PEFT module names (`q_proj` … `down_proj`; GPT-2's `c_attn`, `c_proj`, `c_fc`), or `["all-linear"]`.
    /// Empty: PEFT's default for the architecture (q_proj + v_proj; GPT-2 c_attn).
    #[serde(default)]
    pub target_modules: Vec<String>,
    #[serde(default)]
    pub init: LoraInit,
    /// Rank-stabilised scaling α/√r (Kalajdzievski 2023).
    #[serde(default)]
    pub rslora: bool,
    /// Start from this adapter folder (ours or PEFT's); its r, α and targets replace the ones above.
    #[serde(default)]
    pub from: Option<PathBuf>,
    /// Also write the adapter alone, in PEFT's layout, to `final/adapter/`.
    #[serde(default)]
    pub export_adapter: bool,
    /// Store the frozen base's block projections quantized ("q8" | "q4" | "nf4"; QLoRA-style): adapters,
    /// norms, embeddings and heads stay f32.
    #[serde(default)]
    pub base_quant: Option<BaseQuant>,
}

fn default_r() -> usize {
    8
}
fn default_alpha() -> f64 {
    8.0
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: default_r(),
            alpha: default_alpha(),
            dropout: 0.0,
            target_modules: vec![],
            init: LoraInit::default(),
            rslora: false,
            from: None,
            export_adapter: false,
            base_quant: None,
        }
    }
}

/// A linear map of a decoder block an adapter can sit beside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
    /// GPT-2's fused q/k/v projection (`c_attn`): one adapter whose output is split into q, k, v,
    /// as PEFT trains it.
    Qkv,
}

impl Slot {
    /// The slots of an architecture, in block order.
    pub fn of(arch: Arch) -> &'static [Slot] {
        match arch {
            Arch::Gpt2 => &[Slot::Qkv, Slot::O, Slot::Up, Slot::Down],
            Arch::Llama | Arch::Qwen2 => &[Slot::Q, Slot::K, Slot::V, Slot::O, Slot::Gate, Slot::Up, Slot::Down],
        }
    }

    /// The module's path inside a block of a Hugging Face checkpoint.
    pub fn hf_path(self, arch: Arch) -> &'static str {
        match (arch, self) {
            (Arch::Gpt2, Slot::Qkv) => "attn.c_attn",
            (Arch::Gpt2, Slot::O) => "attn.c_proj",
            (Arch::Gpt2, Slot::Up) => "mlp.c_fc",
            (Arch::Gpt2, Slot::Down) => "mlp.c_proj",
            (_, Slot::Q) => "self_attn.q_proj",
            (_, Slot::K) => "self_attn.k_proj",
            (_, Slot::V) => "self_attn.v_proj",
            (_, Slot::O) => "self_attn.o_proj",
            (_, Slot::Gate) => "mlp.gate_proj",
            (_, Slot::Up) => "mlp.up_proj",
            (_, Slot::Down) => "mlp.down_proj",
            (_, Slot::Qkv) => "self_attn.qkv_proj",
        }
    }

    /// The name PEFT's `target_modules` matches (the path's last component).
    pub fn peft_name(self, arch: Arch) -> &'static str {
        let path = self.hf_path(arch);
        path.rsplit('.').next().unwrap_or(path)
    }

    /// (d_in, d_out) of the projection.
    pub fn dims(self, cfg: &TransformerConfig) -> (usize, usize) {
        let (d, q, kv, ff) = (cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size);
        match self {
            Slot::Q => (d, q),
            Slot::K | Slot::V => (d, kv),
            Slot::O => (q, d),
            Slot::Gate | Slot::Up => (d, ff),
            Slot::Down => (ff, d),
            Slot::Qkv => (d, q + 2 * kv),
        }
    }
}

/// The slots named by PEFT-style `target_modules` for `arch` (empty: PEFT's default).
pub fn target_slots(arch: Arch, names: &[String]) -> Result<Vec<Slot>> {
    let available = Slot::of(arch);
    if names.is_empty() {
        return Ok(match arch {
            Arch::Gpt2 => vec![Slot::Qkv],
            Arch::Llama | Arch::Qwen2 => vec![Slot::Q, Slot::V],
        });
    }
    if names.iter().any(|n| n == "all-linear") {
        return Ok(available.to_vec());
    }
    let mut slots = Vec::new();
    for name in names {
        let matched: Vec<Slot> = available.iter().copied().filter(|s| s.peft_name(arch) == name).collect();
        if matched.is_empty() {
            let mut choices: Vec<&str> = available.iter().map(|s| s.peft_name(arch)).collect();
            choices.dedup();
            return Err(ModelError::Invalid(format!(
                "lora.target_modules: {name:?} is not a linear layer of a {arch:?} model (choose from {}, or \"all-linear\")",
                choices.join(", ")
            )));
        }
        slots.extend(matched);
    }
    slots.sort();
    slots.dedup();
    Ok(slots)
}

/// A resolved adapter configuration: what the adapters of a model are.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub rslora: bool,
    pub init: LoraInit,
    pub slots: Vec<Slot>,
}

impl LoraSpec {
    /// The factor on B·A: α/r, or α/√r with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// The spec of `cfg` for a model of `arch`: from `cfg.from`'s adapter_config.json when set.
    pub fn resolve(cfg: &LoraConfig, arch: Arch) -> Result<Self> {
        if let Some(dir) = &cfg.from {
            return read_adapter_config(dir, arch);
        }
        let bad = |m: String| Err(ModelError::Invalid(m));
        if cfg.r == 0 {
            return bad("lora.r must be at least 1".into());
        }
        if !(cfg.alpha.is_finite() && cfg.alpha > 0.0) {
            return bad(format!("lora.alpha must be a positive number, found {}", cfg.alpha));
        }
        if !(0.0..1.0).contains(&cfg.dropout) {
            return bad(format!("lora.dropout must be in [0, 1), found {}", cfg.dropout));
        }
        Ok(Self { r: cfg.r, alpha: cfg.alpha, dropout: cfg.dropout, rslora: cfg.rslora, init: cfg.init, slots: target_slots(arch, &cfg.target_modules)? })
    }

    /// `adapter_config.json` as PEFT writes it.
    pub fn to_peft_json(&self, arch: Arch, base_model: &str, task_type: Option<&str>) -> Value {
        let mut targets: Vec<&str> = self.slots.iter().map(|s| s.peft_name(arch)).collect();
        targets.sort();
        targets.dedup();
        json!({
            "peft_type": "LORA",
            "task_type": task_type,
            "base_model_name_or_path": base_model,
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": targets,
            "use_rslora": self.rslora,
            "fan_in_fan_out": arch == Arch::Gpt2,
            "bias": "none",
            "init_lora_weights": match self.init { LoraInit::Kaiming => json!(true), LoraInit::Gaussian => json!("gaussian") },
            "inference_mode": true,
            "modules_to_save": null,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "use_dora": false,
        })
    }
}

/// Reads an adapter folder's `adapter_config.json` (ours or PEFT's), refusing by name what we do
/// not implement (DoRA, bias training, per-layer ranks, regex targets…).
pub fn read_adapter_config(dir: &Path, arch: Arch) -> Result<LoraSpec> {
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let bad = |message: String| ModelError::Config { path: path.clone(), message };
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let field = |k: &str| v.get(k).filter(|x| !x.is_null());
    match field("peft_type").and_then(Value::as_str) {
        Some("LORA") | None => {}
        Some(other) => return Err(bad(format!("peft_type {other:?}: only LORA adapters are supported"))),
    }
    let r = field("r").and_then(Value::as_u64).filter(|&r| r > 0).ok_or_else(|| bad("`r` must be a positive integer".into()))? as usize;
    let alpha = match field("lora_alpha") {
        None => 8.0,
        Some(a) => a.as_f64().ok_or_else(|| bad("`lora_alpha` must be a number".into()))?,
    };
    let dropout = field("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
    let rslora = field("use_rslora").and_then(Value::as_bool).unwrap_or(false);
    if field("use_dora").and_then(Value::as_bool).unwrap_or(false) {
        return Err(bad("use_dora: DoRA adapters are not supported".into()));
    }
    if let Some(b) = field("bias").and_then(Value::as_str).filter(|b| *b != "none") {
        return Err(bad(format!("bias {b:?}: only adapters without trained biases (\"none\") are supported")));
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if field(key).and_then(Value::as_object).is_some_and(|m| !m.is_empty()) {
            return Err(bad(format!("`{key}`: per-module ranks are not supported")));
        }
    }
    if field("lora_bias").and_then(Value::as_bool).unwrap_or(false) {
        return Err(bad("lora_bias: adapters with a bias on B are not supported".into()));
    }
    // Anything else that changes which weights an adapter touches.
    for key in ["layers_to_transform", "modules_to_save", "exclude_modules", "target_parameters", "trainable_token_indices", "layer_replication"] {
        let empty = match field(key) {
            None => true,
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Object(o)) => o.is_empty(),
            Some(Value::String(s)) => s.is_empty(),
            Some(_) => false,
        };
        if !empty {
            return Err(bad(format!("`{key}` is set: only adapters on the projections of every layer are supported")));
        }
    }
    let names: Vec<String> = match field("target_modules") {
        Some(Value::Array(a)) => a.iter().map(|x| x.as_str().map(str::to_string).ok_or_else(|| bad("`target_modules` must hold strings".into()))).collect::<Result<_>>()?,
        Some(Value::String(s)) if s == "all-linear" || s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => vec![s.clone()],
        Some(Value::String(s)) => return Err(bad(format!("target_modules {s:?}: regular expressions are not supported; list the module names"))),
        _ => return Err(bad("`target_modules` is missing".into())),
    };
    let slots = target_slots(arch, &names).map_err(|e| bad(e.to_string()))?;
    let init = if field("init_lora_weights").and_then(Value::as_str) == Some("gaussian") { LoraInit::Gaussian } else { LoraInit::Kaiming };
    Ok(LoraSpec { r, alpha, dropout, rslora, init, slots })
}

/// One low-rank adapter.
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    /// A: [d_in, r] (PEFT's `lora_A.weight` transposed).
    pub a: Param<Tensor<B, 2>>,
    /// B: [r, d_out] (PEFT's `lora_B.weight` transposed).
    pub b: Param<Tensor<B, 2>>,
    /// α/r (α/√r with rsLoRA).
    pub scale: f64,
    pub dropout: Dropout,
}

impl<B: Backend> Lora<B> {
    /// A fresh adapter: A random (see [`LoraInit`]) from `rng`, B = 0. A is drawn on the host from the
    /// run's own generator, not the backend's process-wide one, so the same seed gives the same adapters.
    pub fn init(d_in: usize, d_out: usize, spec: &LoraSpec, rng: &mut ChaCha8Rng, device: &B::Device) -> Self {
        let n = d_in * spec.r;
        let a: Vec<f32> = match spec.init {
            LoraInit::Kaiming => {
                let bound = 1.0 / (d_in as f64).sqrt();
                (0..n).map(|_| rng.random_range(-bound..bound) as f32).collect()
            }
            LoraInit::Gaussian => {
                // Box–Muller: N(0, 1) from two uniforms, scaled to std 1/r.
                let std = 1.0 / spec.r as f64;
                (0..n)
                    .map(|_| {
                        let (u, v): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random::<f64>());
                        (std * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
                    })
                    .collect()
            }
        };
        let a = Tensor::from_data(TensorData::new(a, [d_in, spec.r]), device);
        Self::from_factors(a, Tensor::zeros([spec.r, d_out], device), spec)
    }

    fn from_factors(a: Tensor<B, 2>, b: Tensor<B, 2>, spec: &LoraSpec) -> Self {
        Self { a: Param::from_tensor(a), b: Param::from_tensor(b), scale: spec.scale(), dropout: DropoutConfig::new(spec.dropout).init() }
    }

    /// The update (α/r)·dropout(x)·A·B. The products run (and the update is returned) in
    /// `precision`; A and B stay f32 masters.
    ///
    /// # Shapes
    /// - `x`: [batch, seq, d_in] → [batch, seq, d_out]
    pub fn forward(&self, x: Tensor<B, 3>, precision: Precision) -> Tensor<B, 3> {
        let [batch, seq, d_in] = x.dims();
        let x = in_compute(self.dropout.forward(x.reshape([batch * seq, d_in])), precision);
        let y = x.matmul(in_compute(self.a.val(), precision)).matmul(in_compute(self.b.val(), precision)) * self.scale;
        let d_out = y.dims()[1];
        y.reshape([batch, seq, d_out])
    }

    /// ΔW = (α/r)·A·B, [d_in, d_out]: what merging adds to the base weight.
    pub fn delta_weight(&self) -> Tensor<B, 2> {
        self.a.val().matmul(self.b.val()) * self.scale
    }
}

/// The adapters of one decoder block, one optional adapter per slot.
#[derive(Module, Debug)]
pub struct BlockLora<B: Backend> {
    pub q_proj: Option<Lora<B>>,
    pub k_proj: Option<Lora<B>>,
    pub v_proj: Option<Lora<B>>,
    pub o_proj: Option<Lora<B>>,
    pub gate_proj: Option<Lora<B>>,
    pub up_proj: Option<Lora<B>>,
    pub down_proj: Option<Lora<B>>,
    /// GPT-2's `c_attn` (see [`Slot::Qkv`]).
    pub c_attn: Option<Lora<B>>,
}

impl<B: Backend> BlockLora<B> {
    fn empty() -> Self {
        Self { q_proj: None, k_proj: None, v_proj: None, o_proj: None, gate_proj: None, up_proj: None, down_proj: None, c_attn: None }
    }

    pub fn slot(&self, s: Slot) -> Option<&Lora<B>> {
        match s {
            Slot::Q => self.q_proj.as_ref(),
            Slot::K => self.k_proj.as_ref(),
            Slot::V => self.v_proj.as_ref(),
            Slot::O => self.o_proj.as_ref(),
            Slot::Gate => self.gate_proj.as_ref(),
            Slot::Up => self.up_proj.as_ref(),
            Slot::Down => self.down_proj.as_ref(),
            Slot::Qkv => self.c_attn.as_ref(),
        }
    }

    /// Every adapter the block has.
    pub fn adapters(&self) -> impl Iterator<Item = &Lora<B>> {
        [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj, &self.gate_proj, &self.up_proj, &self.down_proj, &self.c_attn].into_iter().flatten()
    }

    fn slot_mut(&mut self, s: Slot) -> &mut Option<Lora<B>> {
        match s {
            Slot::Q => &mut self.q_proj,
            Slot::K => &mut self.k_proj,
            Slot::V => &mut self.v_proj,
            Slot::O => &mut self.o_proj,
            Slot::Gate => &mut self.gate_proj,
            Slot::Up => &mut self.up_proj,
            Slot::Down => &mut self.down_proj,
            Slot::Qkv => &mut self.c_attn,
        }
    }
}

impl<B: Backend> Transformer<B> {
    /// Freezes every weight of the body and puts a fresh adapter at each of `spec.slots` in every
    /// block, drawn from `seed`.
    pub fn with_lora(self, spec: &LoraSpec, seed: u64, device: &B::Device) -> Self {
        let mut body = self.no_grad();
        let cfg = body.config.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for block in &mut body.layers {
            let mut lora = BlockLora::empty();
            for &s in &spec.slots {
                let (d_in, d_out) = s.dims(&cfg);
                *lora.slot_mut(s) = Some(Lora::init(d_in, d_out, spec, &mut rng, device));
            }
            block.lora = Some(lora);
        }
        body
    }

    /// The frozen base alone: the same weights (shared, not copied), adapters switched off.
    pub fn without_lora(&self) -> Self {
        let mut body = self.clone();
        for block in &mut body.layers {
            block.lora = None;
        }
        body
    }

    /// Stores every block projection's weight as `quant` codes (the body must be frozen already).
    pub fn quantize_base(mut self, quant: BaseQuant) -> Result<Self> {
        for (i, block) in self.layers.iter_mut().enumerate() {
            let attn = &mut block.self_attn;
            let mlp = &mut block.mlp;
            let projs = [
                ("q_proj", &mut attn.q_proj),
                ("k_proj", &mut attn.k_proj),
                ("v_proj", &mut attn.v_proj),
                ("o_proj", &mut attn.o_proj),
                ("up_proj", &mut mlp.up_proj),
                ("down_proj", &mut mlp.down_proj),
            ];
            for (name, proj) in projs.into_iter().chain(mlp.gate_proj.as_mut().map(|g| ("gate_proj", g))) {
                proj.quantize(quant).map_err(|e| ModelError::Invalid(format!("lora.base_quant: layer {i} {name}: {e}")))?;
            }
        }
        Ok(self)
    }

    /// Bytes of the block projections' weights as stored (f32 or quantized).
    pub fn projection_bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|b| {
                let (a, m) = (&b.self_attn, &b.mlp);
                [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj, &m.up_proj, &m.down_proj].into_iter().chain(m.gate_proj.as_ref())
            })
            .map(Proj::weight_bytes)
            .sum()
    }

    pub fn has_lora(&self) -> bool {
        self.layers.iter().any(|b| b.lora.is_some())
    }

    /// Folds every adapter into its base weight (W + (α/r)·A·B) and drops the adapters: a plain
    /// model with the same outputs.
    pub fn merge_lora(mut self) -> Self {
        let (q, kv) = (self.config.num_heads * self.config.head_dim, self.config.num_kv_heads * self.config.head_dim);
        for block in &mut self.layers {
            let Some(lora) = block.lora.take() else { continue };
            let add = |proj: &mut Proj<B>, delta: Tensor<B, 2>| proj.add_to_weight(delta);
            let attn = &mut block.self_attn;
            let mlp = &mut block.mlp;
            for (slot, adapter) in [
                (Slot::Q, &lora.q_proj),
                (Slot::K, &lora.k_proj),
                (Slot::V, &lora.v_proj),
                (Slot::O, &lora.o_proj),
                (Slot::Gate, &lora.gate_proj),
                (Slot::Up, &lora.up_proj),
                (Slot::Down, &lora.down_proj),
                (Slot::Qkv, &lora.c_attn),
            ] {
                let Some(adapter) = adapter else { continue };
                let delta = adapter.delta_weight();
                match slot {
                    Slot::Q => add(&mut attn.q_proj, delta),
                    Slot::K => add(&mut attn.k_proj, delta),
                    Slot::V => add(&mut attn.v_proj, delta),
                    Slot::O => add(&mut attn.o_proj, delta),
                    Slot::Gate => add(mlp.gate_proj.as_mut().expect("LLaMA blocks have gate_proj"), delta),
                    Slot::Up => add(&mut mlp.up_proj, delta),
                    Slot::Down => add(&mut mlp.down_proj, delta),
                    Slot::Qkv => {
                        let rows = delta.dims()[0];
                        add(&mut attn.q_proj, delta.clone().slice([0..rows, 0..q]));
                        add(&mut attn.k_proj, delta.clone().slice([0..rows, q..q + kv]));
                        add(&mut attn.v_proj, delta.slice([0..rows, q + kv..q + 2 * kv]));
                    }
                }
            }
        }
        self
    }

    /// PEFT's key of an adapter factor (`A` or `B`) of block `layer`.
    fn peft_key(&self, layer: usize, slot: Slot, factor: char) -> String {
        let keys = KeyScheme::export(self.config.arch);
        format!("{PEFT_PREFIX}{}.lora_{factor}.weight", keys.layer(layer, slot.hf_path(self.config.arch)))
    }

    /// The adapters' tensors under PEFT's names and layouts (A [r, d_in], B [d_out, r]).
    pub fn lora_tensors(&self) -> Vec<(String, HostTensor)> {
        let mut out = Vec::new();
        for (i, block) in self.layers.iter().enumerate() {
            let Some(lora) = &block.lora else { continue };
            for &slot in Slot::of(self.config.arch) {
                if let Some(adapter) = lora.slot(slot) {
                    out.push((self.peft_key(i, slot, 'A'), HostTensor::from_tensor(adapter.a.val()).transposed()));
                    out.push((self.peft_key(i, slot, 'B'), HostTensor::from_tensor(adapter.b.val()).transposed()));
                }
            }
        }
        out
    }

    /// Replaces the adapters' factors with those of an adapter folder's `adapter_model.safetensors`
    /// (checked by name and shape; a missing or unexpected tensor is an error naming it).
    pub fn load_lora_weights(mut self, dir: &Path, spec: &LoraSpec, device: &B::Device) -> Result<Self> {
        let path = dir.join(ADAPTER_WEIGHTS_FILE);
        if !path.exists() && dir.join("adapter_model.bin").exists() {
            return Err(ModelError::Config { path: dir.to_path_buf(), message: "only adapter_model.bin found: only safetensors adapters are loaded".into() });
        }
        let mut files = SafetensorsFiles::open(std::slice::from_ref(&path))?;
        let cfg = self.config.clone();
        let mut factors: HashMap<(usize, Slot), (HostTensor, HostTensor)> = HashMap::new();
        for i in 0..cfg.num_layers {
            for &slot in &spec.slots {
                let (d_in, d_out) = slot.dims(&cfg);
                let a = files.take(&self.peft_key(i, slot, 'A'), &[spec.r, d_in])?.transposed();
                let b = files.take(&self.peft_key(i, slot, 'B'), &[d_out, spec.r])?.transposed();
                factors.insert((i, slot), (a, b));
            }
        }
        let unexpected = files.untaken();
        if !unexpected.is_empty() {
            return Err(ModelError::UnexpectedTensors { names: unexpected });
        }
        for (i, block) in self.layers.iter_mut().enumerate() {
            let mut lora = BlockLora::empty();
            for &slot in &spec.slots {
                let (a, b) = &factors[&(i, slot)];
                *lora.slot_mut(slot) = Some(Lora::from_factors(a.to_tensor(device), b.to_tensor(device), spec));
            }
            block.lora = Some(lora);
        }
        Ok(self)
    }

    /// Freezes the body and adds the adapters `cfg` asks for: fresh ones (drawn from `seed`), or
    /// those of `cfg.from`.
    pub fn attach_lora(self, cfg: &LoraConfig, seed: u64, device: &B::Device) -> Result<(Self, LoraSpec)> {
        let spec = LoraSpec::resolve(cfg, self.config.arch)?;
        let body = self.with_lora(&spec, seed, device);
        let body = match cfg.base_quant {
            Some(quant) => body.quantize_base(quant)?,
            None => body,
        };
        let body = match &cfg.from {
            Some(dir) => body.load_lora_weights(dir, &spec, device)?,
            None => body,
        };
        Ok((body, spec))
    }

    /// Writes the adapters as a PEFT adapter folder (`adapter_config.json`, `adapter_model.safetensors`
    /// in `dtype`, and `extra` files in f32, e.g. a reward head), through a temporary folder renamed
    /// into place.
    pub fn save_lora_dir(
        &self,
        out: &Path,
        spec: &LoraSpec,
        base_model: &str,
        task_type: Option<&str>,
        extra: &[(&str, Vec<(String, HostTensor)>)],
        dtype: WeightDtype,
    ) -> Result<()> {
        let tmp = sibling(out, "tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
        let config = serde_json::to_string_pretty(&spec.to_peft_json(self.config.arch, base_model, task_type)).expect("JSON value serialises");
        let config_path = tmp.join(ADAPTER_CONFIG_FILE);
        std::fs::write(&config_path, config).map_err(|e| ModelError::io(&config_path, e))?;
        write_safetensors(&tmp.join(ADAPTER_WEIGHTS_FILE), &self.lora_tensors(), dtype)?;
        for (name, tensors) in extra {
            write_safetensors(&tmp.join(name), tensors, WeightDtype::F32)?;
        }
        replace_dir(&tmp, out)
    }
}

impl<B: Backend> CausalLm<B> {
    /// Freezes the whole model (body and LM head) and adds adapters to the body.
    pub fn attach_lora(self, cfg: &LoraConfig, seed: u64, device: &B::Device) -> Result<(Self, LoraSpec)> {
        let (model, spec) = self.model.attach_lora(cfg, seed, device)?;
        Ok((CausalLm { model, lm_head: self.lm_head.map(|h| h.set_require_grad(false)) }, spec))
    }

    /// The frozen base alone (weights shared): PPO's reference when the actor has adapters.
    pub fn without_lora(&self) -> Self {
        CausalLm { model: self.model.without_lora(), lm_head: self.lm_head.clone() }
    }

    pub fn merge_lora(self) -> Self {
        CausalLm { model: self.model.merge_lora(), lm_head: self.lm_head }
    }
}

impl<B: Backend> RewardModel<B> {
    /// Freezes the body and adds adapters to it; the scalar head stays fully trainable.
    pub fn attach_lora(self, cfg: &LoraConfig, seed: u64, device: &B::Device) -> Result<(Self, LoraSpec)> {
        let (model, spec) = self.model.attach_lora(cfg, seed, device)?;
        Ok((RewardModel { model, head: self.head }, spec))
    }

    pub fn merge_lora(self) -> Self {
        RewardModel { model: self.model.merge_lora(), head: self.head }
    }
}

impl LoraSpec {
    /// One line for the log: where the adapters of `model` are and how many of its parameters train.
    pub fn describe<B: Backend, M: Adapted<B>>(&self, model: &M, arch: Arch) -> String {
        let trainable = model.adapter_state().map_or(0, |s| s.num_params());
        let total = model.num_params();
        let mut targets: Vec<&str> = self.slots.iter().map(|s| s.peft_name(arch)).collect();
        targets.sort();
        targets.dedup();
        format!(
            "LoRA r={} alpha={} on {}: {:.3}M trainable of {:.2}M parameters ({:.2}%)",
            self.r,
            self.alpha,
            targets.join(", "),
            trainable as f64 / 1e6,
            total as f64 / 1e6,
            100.0 * trainable as f64 / total.max(1) as f64
        )
    }
}

/// What a LoRA checkpoint holds: every block's adapters, and the heads trained in full.
#[derive(Module, Debug)]
pub struct AdapterState<B: Backend> {
    pub layers: Vec<BlockLora<B>>,
    pub head: Option<ScalarHead<B>>,
}

/// A model whose checkpoint may hold only part of it: with adapters, only the trained parameters
/// (adapters and fully trained heads) go into a checkpoint; the frozen base never does.
pub trait Adapted<B: Backend>: Module<B> {
    /// The trained part when the model has adapters; None: the checkpoint holds the whole module.
    fn adapter_state(&self) -> Option<AdapterState<B>> {
        None
    }

    /// The model with its trained part replaced by `state` (from [`Adapted::adapter_state`]).
    fn with_adapter_state(self, _state: AdapterState<B>) -> Self
    where
        Self: Sized,
    {
        self
    }
}

fn body_state<B: Backend>(body: &Transformer<B>) -> Option<Vec<BlockLora<B>>> {
    body.layers.iter().map(|b| b.lora.clone()).collect()
}

fn set_body_state<B: Backend>(body: &mut Transformer<B>, layers: Vec<BlockLora<B>>) {
    for (block, lora) in body.layers.iter_mut().zip(layers) {
        block.lora = Some(lora);
    }
}

impl<B: Backend> Adapted<B> for CausalLm<B> {
    fn adapter_state(&self) -> Option<AdapterState<B>> {
        self.model.has_lora().then(|| body_state(&self.model)).flatten().map(|layers| AdapterState { layers, head: None })
    }

    fn with_adapter_state(mut self, state: AdapterState<B>) -> Self {
        set_body_state(&mut self.model, state.layers);
        self
    }
}

impl<B: Backend> Adapted<B> for RewardModel<B> {
    fn adapter_state(&self) -> Option<AdapterState<B>> {
        self.model.has_lora().then(|| body_state(&self.model)).flatten().map(|layers| AdapterState { layers, head: Some(self.head.clone()) })
    }

    fn with_adapter_state(mut self, state: AdapterState<B>) -> Self {
        set_body_state(&mut self.model, state.layers);
        if let Some(head) = state.head {
            self.head = head;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_peft_names_per_architecture() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(target_slots(Arch::Llama, &[]).unwrap(), vec![Slot::Q, Slot::V]);
        assert_eq!(target_slots(Arch::Gpt2, &[]).unwrap(), vec![Slot::Qkv]);
        // GPT-2's `c_proj` is both the attention output and the MLP down projection, as PEFT matches it.
        assert_eq!(target_slots(Arch::Gpt2, &names(&["c_proj"])).unwrap(), vec![Slot::O, Slot::Down]);
        assert_eq!(target_slots(Arch::Qwen2, &names(&["all-linear"])).unwrap().len(), 7);
        let e = target_slots(Arch::Llama, &names(&["q_proj", "c_attn"])).unwrap_err().to_string();
        assert!(e.contains("c_attn") && e.contains("q_proj, k_proj"), "{e}");
    }

    #[test]
    fn scale_is_alpha_over_r_or_over_sqrt_r() {
        let spec = LoraSpec { r: 16, alpha: 32.0, dropout: 0.0, rslora: false, init: LoraInit::Kaiming, slots: vec![] };
        assert_eq!(spec.scale(), 2.0);
        assert_eq!(LoraSpec { rslora: true, ..spec }.scale(), 8.0);
    }

    #[test]
    fn adapter_configs_we_cannot_honour_are_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let write = |v: Value| std::fs::write(tmp.path().join(ADAPTER_CONFIG_FILE), v.to_string()).unwrap();
        write(json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "use_dora": true}));
        assert!(read_adapter_config(tmp.path(), Arch::Llama).unwrap_err().to_string().contains("DoRA"));
        write(json!({"peft_type": "LORA", "r": 4, "target_modules": ".*q_proj"}));
        assert!(read_adapter_config(tmp.path(), Arch::Llama).unwrap_err().to_string().contains("regular expressions"));
        write(json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": "all-linear", "layers_to_transform": null}));
        let spec = read_adapter_config(tmp.path(), Arch::Llama).unwrap();
        assert_eq!((spec.r, spec.slots.len(), spec.scale()), (4, 7, 2.0));
    }
}

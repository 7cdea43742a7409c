//! LoRA (Hu et al. 2021): a frozen linear map W plus a trainable low-rank update,
//! y = x·W + (α/r)·dropout(x)·A·B, with A [d_in, r] and B [r, d_out]. B starts at 0, so a fresh adapter
//! leaves the model's outputs unchanged.
//!
//! This file holds what an adapter is: the `[lora]` config, the slots an adapter can sit in, the
//! resolved spec and the adapter modules. Putting adapters on a model and taking them off is in
//! `adapters.rs`; PEFT's adapter folders in `peft.rs`.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Tensor, TensorData};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rlhf_runtime::quant::BaseQuant;
use rlhf_runtime::{Backend, Precision};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use crate::config::{Arch, TransformerConfig};
use crate::error::{ModelError, Result};
use crate::precision::in_compute;

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
    /// Every slot, in block order.
    pub const ALL: [Slot; 8] = [Slot::Q, Slot::K, Slot::V, Slot::O, Slot::Gate, Slot::Up, Slot::Down, Slot::Qkv];

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

    /// Whether the projection has a bias (q/k/v: `qkv_bias`; the others: `out_bias`).
    pub fn has_bias(self, cfg: &TransformerConfig) -> bool {
        match self {
            Slot::Q | Slot::K | Slot::V | Slot::Qkv => cfg.qkv_bias,
            Slot::O | Slot::Gate | Slot::Up | Slot::Down => cfg.out_bias,
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

    /// The spec a `[lora]` section writes out itself (`from` unset; see [`LoraSpec::resolve`] for an
    /// adapter folder's).
    pub fn from_config(cfg: &LoraConfig, arch: Arch) -> Result<Self> {
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

    pub(crate) fn from_factors(a: Tensor<B, 2>, b: Tensor<B, 2>, spec: &LoraSpec) -> Self {
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
    pub(crate) fn empty() -> Self {
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
        Slot::ALL.into_iter().filter_map(|s| self.slot(s))
    }

    /// Every adapter the block has, with its slot.
    pub fn slots(&self) -> impl Iterator<Item = (Slot, &Lora<B>)> {
        Slot::ALL.into_iter().filter_map(|s| self.slot(s).map(|a| (s, a)))
    }

    pub(crate) fn slot_mut(&mut self, s: Slot) -> &mut Option<Lora<B>> {
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
}

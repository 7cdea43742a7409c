//! Putting adapters on a model and taking them off: fresh or loaded adapters on every block of a
//! frozen body, the frozen base alone (PPO's reference), merging into plain weights, and the part of
//! an adapted model a checkpoint holds.

use burn::module::Module;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlhf_runtime::Backend;

use crate::config::Arch;
use crate::error::Result;
use crate::heads::{CausalLm, RewardModel, ScalarHead};
use crate::lora::{BlockLora, Lora, LoraConfig, LoraSpec, Slot};
use crate::transformer::Transformer;

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

    pub fn has_lora(&self) -> bool {
        self.layers.iter().any(|b| b.lora.is_some())
    }

    /// Folds every adapter into its base weight (W + (α/r)·A·B) and drops the adapters: a plain
    /// model with the same outputs.
    pub fn merge_lora(mut self) -> Self {
        let (q, kv) = (self.config.num_heads * self.config.head_dim, self.config.num_kv_heads * self.config.head_dim);
        for block in &mut self.layers {
            let Some(lora) = block.lora.take() else { continue };
            for (slot, adapter) in lora.slots() {
                let delta = adapter.delta_weight();
                if slot == Slot::Qkv {
                    // GPT-2's fused c_attn adapter: its columns are q's, k's and v's updates.
                    let rows = delta.dims()[0];
                    let parts = [(Slot::Q, 0..q), (Slot::K, q..q + kv), (Slot::V, q + kv..q + 2 * kv)];
                    for (part, columns) in parts {
                        block.projection_mut(part).add_to_weight(delta.clone().slice([0..rows, columns]));
                    }
                } else {
                    block.projection_mut(slot).add_to_weight(delta);
                }
            }
        }
        self
    }

    /// Freezes the body and adds the adapters `cfg` asks for: fresh ones (drawn from `seed`), or
    /// those of `cfg.from`.
    pub fn attach_lora(self, cfg: &LoraConfig, seed: u64, device: &B::Device) -> Result<(Self, LoraSpec)> {
        let spec = LoraSpec::resolve(cfg, self.config.arch)?;
        let body = self.with_lora(&spec, seed, device);
        let body = match cfg.base_quant {
            Some(quant) => body.quantize_base(quant, "lora.base_quant")?,
            None => body,
        };
        let body = match &cfg.from {
            Some(dir) => body.load_lora_weights(dir, &spec, device)?,
            None => body,
        };
        Ok((body, spec))
    }
}

impl<B: Backend> CausalLm<B> {
    /// Freezes the whole model (body and LM head) and adds adapters to the body.
    pub fn attach_lora(self, cfg: &LoraConfig, seed: u64, device: &B::Device) -> Result<(Self, LoraSpec)> {
        let (model, spec) = self.model.attach_lora(cfg, seed, device)?;
        Ok((CausalLm { model, lm_head: self.lm_head.map(|h| h.set_require_grad(false)), lm_head_codes: self.lm_head_codes }, spec))
    }

    /// The frozen base alone (weights shared): PPO's reference when the actor has adapters.
    pub fn without_lora(&self) -> Self {
        CausalLm { model: self.model.without_lora(), lm_head: self.lm_head.clone(), lm_head_codes: self.lm_head_codes.clone() }
    }

    pub fn merge_lora(self) -> Self {
        CausalLm { model: self.model.merge_lora(), ..self }
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

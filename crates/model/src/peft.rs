//! PEFT's adapter folders, in and out: `adapter_config.json` + `adapter_model.safetensors` with PEFT's
//! key names, so `peft.PeftModel.from_pretrained(base, dir)` loads ours and we load PEFT's. What we
//! cannot honour (DoRA, trained biases, per-module ranks, regex targets…) is refused by name.

use std::collections::HashMap;
use std::path::Path;

use rlhf_runtime::Backend;
use serde_json::{json, Value};

use crate::config::Arch;
use crate::error::{ModelError, Result};
use crate::hf::{write_safetensors, HostTensor, KeyScheme, SafetensorsFiles, WeightDtype};
use crate::lora::{BlockLora, Lora, LoraConfig, LoraInit, LoraSpec, Slot, target_slots};
use crate::transformer::Transformer;

/// PEFT's adapter config file.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// PEFT's adapter weights file (only safetensors are read: never unpickle).
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// PEFT's prefix of every adapter key (`base_model.model.` + the checkpoint's module path).
const PEFT_PREFIX: &str = "base_model.model.";

impl LoraSpec {
    /// The spec of `cfg` for a model of `arch`: from `cfg.from`'s adapter_config.json when set.
    pub fn resolve(cfg: &LoraConfig, arch: Arch) -> Result<Self> {
        match &cfg.from {
            Some(dir) => read_adapter_config(dir, arch),
            None => LoraSpec::from_config(cfg, arch),
        }
    }

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

impl<B: Backend> Transformer<B> {
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

    /// Writes the adapters as a PEFT adapter folder `out` (`adapter_config.json`,
    /// `adapter_model.safetensors` in `dtype`, and `extra` files in f32, e.g. a reward head), through a
    /// temporary folder renamed into place.
    pub fn save_lora_dir(
        &self,
        out: &Path,
        spec: &LoraSpec,
        base_model: &str,
        task_type: Option<&str>,
        extra: &[(&str, Vec<(String, HostTensor)>)],
        dtype: WeightDtype,
    ) -> Result<()> {
        rlhf_files::write_dir_with(out, |dir| -> Result<()> {
            let config = serde_json::to_string_pretty(&spec.to_peft_json(self.config.arch, base_model, task_type)).expect("JSON value serialises");
            rlhf_files::write_atomic(&dir.join(ADAPTER_CONFIG_FILE), config)?;
            write_safetensors(&dir.join(ADAPTER_WEIGHTS_FILE), &self.lora_tensors(), dtype)?;
            for (name, tensors) in extra {
                write_safetensors(&dir.join(name), tensors, WeightDtype::F32)?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

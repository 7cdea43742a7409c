//! `config.json` as Hugging Face writes it ([`HfConfig`]), resolved once into the Option-free
//! [`TransformerConfig`] that the model code reads. `generation_config.json` adds its EOS ids.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{ModelError, Result};

/// Which family of decoder: decides norm, MLP, position scheme and checkpoint key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// LLaMA 2/3, TinyLlama, Mistral: RMSNorm, rotary positions, SwiGLU, optional q/k/v bias.
    Llama,
    /// Qwen2: LLaMA layout with q/k/v bias always on.
    Qwen2,
    /// GPT-2: learned positions, LayerNorm, GELU (tanh) MLP, Conv1D weights, tied head.
    Gpt2,
}

/// `eos_token_id` is a number in some configs and a list in others; old LLaMA conversions write
/// `-1` for "none", which is dropped.
#[derive(Debug, Clone)]
pub struct TokenIds(Vec<i64>);

impl TokenIds {
    fn into_vec(self) -> Vec<u32> {
        self.0.into_iter().filter_map(|id| u32::try_from(id).ok()).collect()
    }
}

impl<'de> Deserialize<'de> for TokenIds {
    /// By hand rather than `untagged`, whose error ("did not match any variant") says nothing useful.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        let ids = match &value {
            Value::Number(_) => value.as_i64().map(|id| vec![id]),
            Value::Array(list) => list.iter().map(Value::as_i64).collect(),
            _ => None,
        };
        ids.map(TokenIds)
            .ok_or_else(|| serde::de::Error::custom(format!("expected a token id or a list of token ids, found {value}")))
    }
}

/// Rotary scaling on top of the plain `rope_theta` schedule, as `rope_type` names it in
/// `rope_scaling` / `rope_parameters`. Serialised in the Hugging Face spelling, so it goes into an
/// exported `config.json` as-is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Llama 3.1+: wavelengths longer than `original_max_position_embeddings / low_freq_factor` are
    /// slowed by `factor`, those shorter than `… / high_freq_factor` kept, and the band between blended
    /// (transformers' `_compute_llama3_parameters`; attention is not rescaled).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// Reads and parses a JSON file; a parse error names the file, line and column.
fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config { path: path.to_path_buf(), message: e.to_string() })
}

/// The file next to `config.json` that holds generation defaults.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

/// What we take from `generation_config.json`: transformers' `generate` stops at any of its
/// `eos_token_id`s, which may name more than `config.json` does (Llama-3 instruct models add
/// `<|eot_id|>` there).
#[derive(Debug, Clone, Deserialize)]
struct GenerationDefaults {
    eos_token_id: Option<TokenIds>,
}

/// `config.json` as found in Hugging Face folders of the LLaMA family and GPT-2.
/// Fields we do not use are ignored, as transformers does.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    pub model_type: Option<String>,
    /// `null` in some folders (e.g. saved from a bare config); `model_type` decides then.
    pub architectures: Option<Vec<String>>,
    /// The weights' dtype as transformers ≥ 4.56 writes it…
    pub dtype: Option<String>,
    /// …and as older versions did. Informational: weights are read in their stored dtype.
    pub torch_dtype: Option<String>,
    pub vocab_size: usize,
    // LLaMA family
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub max_position_embeddings: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    /// Older configs keep `rope_theta` at the top level, with any scaling under `rope_scaling`…
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<Value>,
    /// …newer ones (transformers ≥ 4.56) put both under `rope_parameters`.
    pub rope_parameters: Option<Value>,
    /// Phi-3 style: outside the rope dict, and then preferred to the one inside (as transformers does).
    pub original_max_position_embeddings: Option<usize>,
    pub partial_rotary_factor: Option<f64>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub hidden_act: Option<String>,
    pub tie_word_embeddings: Option<bool>,
    // GPT-2
    pub n_embd: Option<usize>,
    pub n_layer: Option<usize>,
    pub n_head: Option<usize>,
    pub n_inner: Option<usize>,
    pub n_positions: Option<usize>,
    pub layer_norm_epsilon: Option<f64>,
    pub activation_function: Option<String>,
    // Special tokens
    pub bos_token_id: Option<TokenIds>,
    pub eos_token_id: Option<TokenIds>,
    pub pad_token_id: Option<TokenIds>,
}

/// Everything the transformer needs, with defaults resolved. Serialised into checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerConfig {
    /// Decoder family.
    pub arch: Arch,
    /// Vocabulary size (rows of the embedding and of the LM head).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's inner layer.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Longest sequence the model accepts (rotary table / learned positions).
    pub max_position_embeddings: usize,
    /// Epsilon of RMSNorm / LayerNorm.
    pub norm_eps: f64,
    /// Rotary base frequency (unused for GPT-2).
    pub rope_theta: f64,
    /// Rotary scaling (`rope_type` other than "default"); absent in checkpoints that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// Bias on q/k/v projections (Qwen2, GPT-2, LLaMA with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the attention output and MLP projections (GPT-2, LLaMA with `mlp_bias`).
    pub out_bias: bool,
    /// The LM head reuses the token embedding.
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    /// Generation stops at any of these.
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

impl HfConfig {
    /// Reads and parses `config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        read_json(path)
    }

    /// LLaMA-family context length (transformers' LlamaConfig default when absent).
    fn max_positions(&self) -> usize {
        self.max_position_embeddings.unwrap_or(2048)
    }

    /// The dtype the config declares (`dtype`, else the older `torch_dtype`).
    pub fn declared_dtype(&self) -> Option<&str> {
        self.dtype.as_deref().or(self.torch_dtype.as_deref())
    }

    /// `rope_theta` and the scaling, looked up in transformers' order: the rope dict is
    /// `rope_scaling` if set, else `rope_parameters`; `rope_theta` comes from that dict, else the top
    /// level, else 10 000. Rope types other than "default" and "llama3" are refused.
    fn rope(&self, path: &Path) -> Result<(f64, Option<RopeScaling>)> {
        let err = |message: String| ModelError::Config { path: path.to_path_buf(), message };
        let is_set = |v: &&Value| v.as_object().is_none_or(|o| !o.is_empty());
        let (key, params) = match (self.rope_scaling.as_ref().filter(is_set), self.rope_parameters.as_ref()) {
            (Some(p), _) => ("rope_scaling", Some(p)),
            (None, p) => ("rope_parameters", p),
        };
        let params = match params {
            None => None,
            Some(Value::Object(map)) => Some(map),
            Some(other) => return Err(err(format!("{key}: expected an object, found {other}"))),
        };
        let field = |name: &str| params.and_then(|p| p.get(name)).filter(|v| !v.is_null());
        let number = |name: &str| -> Result<Option<f64>> {
            field(name)
                .map(|v| v.as_f64().ok_or_else(|| err(format!("{key}.{name}: expected a number, found {v}"))))
                .transpose()
        };
        let rope_type = match field("rope_type").or_else(|| field("type")) {
            None => "default",
            Some(Value::String(s)) => s.as_str(),
            Some(other) => return Err(err(format!("{key}.rope_type: expected a string, found {other}"))),
        };
        let rope_theta = number("rope_theta")?.or(self.rope_theta).unwrap_or(10_000.0);
        if let Some(f) = number("partial_rotary_factor")?.or(self.partial_rotary_factor) {
            if f != 1.0 {
                return Err(err(format!("partial_rotary_factor {f} is not supported (rotary on the whole head only)")));
            }
        }
        let scaling = match rope_type {
            "default" => None,
            "llama3" => {
                let need = |name: &str| {
                    number(name)?.ok_or_else(|| err(format!("{key}.{name}: missing (rope_type \"llama3\" needs it)")))
                };
                let (factor, low_freq_factor, high_freq_factor) =
                    (need("factor")?, need("low_freq_factor")?, need("high_freq_factor")?);
                let original = match (self.original_max_position_embeddings, number("original_max_position_embeddings")?) {
                    (Some(n), _) => n as f64,
                    (None, Some(n)) => n,
                    (None, None) => self.max_positions() as f64,
                };
                if !(factor > 0.0 && low_freq_factor > 0.0 && high_freq_factor > low_freq_factor) {
                    return Err(err(format!(
                        "{key}: llama3 scaling needs factor > 0 and high_freq_factor > low_freq_factor > 0, \
                         found factor {factor}, low_freq_factor {low_freq_factor}, high_freq_factor {high_freq_factor}"
                    )));
                }
                if !(original >= 1.0 && original.fract() == 0.0) {
                    return Err(err(format!("{key}.original_max_position_embeddings: expected a positive integer, found {original}")));
                }
                Some(RopeScaling::Llama3 {
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    original_max_position_embeddings: original as usize,
                })
            }
            other => {
                return Err(err(format!("{key}.rope_type {other:?} is not supported (default and llama3 only)")));
            }
        };
        Ok((rope_theta, scaling))
    }

    /// Resolves defaults the way transformers does for each `model_type`.
    pub fn resolve(self, path: &Path) -> Result<TransformerConfig> {
        let err = |message: String| ModelError::Config { path: path.to_path_buf(), message };
        let need = |v: Option<usize>, key: &str| v.ok_or_else(|| err(format!("missing field `{key}`")));
        let model_type = self
            .model_type
            .clone()
            .or_else(|| self.architectures.as_ref().and_then(|a| a.first().cloned()))
            .unwrap_or_default();
        let arch = match model_type.to_ascii_lowercase().as_str() {
            "llama" | "mistral" | "llamaforcausallm" | "mistralforcausallm" => Arch::Llama,
            "qwen2" | "qwen2forcausallm" => Arch::Qwen2,
            "gpt2" | "gpt2lmheadmodel" => Arch::Gpt2,
            _ => {
                return Err(ModelError::UnsupportedArchitecture { path: path.to_path_buf(), found: model_type })
            }
        };
        let first = |ids: Option<TokenIds>| ids.and_then(|t| t.into_vec().first().copied());
        let bos_token_id = first(self.bos_token_id.clone());
        let pad_token_id = first(self.pad_token_id.clone());
        let eos_token_ids = self.eos_token_id.clone().map(TokenIds::into_vec).unwrap_or_default();

        if arch == Arch::Gpt2 {
            let hidden = need(self.n_embd, "n_embd")?;
            let heads = need(self.n_head, "n_head")?;
            if let Some(act) = &self.activation_function {
                if !matches!(act.as_str(), "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast") {
                    return Err(err(format!("activation_function {act:?} is not supported (gelu_new only)")));
                }
            }
            if hidden % heads != 0 {
                return Err(err(format!("n_embd {hidden} is not a multiple of n_head {heads}")));
            }
            return Ok(TransformerConfig {
                arch,
                vocab_size: self.vocab_size,
                hidden_size: hidden,
                intermediate_size: self.n_inner.unwrap_or(4 * hidden),
                num_layers: need(self.n_layer, "n_layer")?,
                num_heads: heads,
                num_kv_heads: heads,
                head_dim: hidden / heads,
                max_position_embeddings: need(self.n_positions, "n_positions")?,
                norm_eps: self.layer_norm_epsilon.unwrap_or(1e-5),
                rope_theta: 0.0,
                rope_scaling: None,
                qkv_bias: true,
                out_bias: true,
                tie_word_embeddings: self.tie_word_embeddings.unwrap_or(true),
                bos_token_id,
                eos_token_ids,
                pad_token_id,
            });
        }

        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                return Err(err(format!("hidden_act {act:?} is not supported (silu only)")));
            }
        }
        let (rope_theta, rope_scaling) = self.rope(path)?;
        let hidden = need(self.hidden_size, "hidden_size")?;
        let heads = need(self.num_attention_heads, "num_attention_heads")?;
        let kv_heads = self.num_key_value_heads.unwrap_or(heads);
        if heads % kv_heads != 0 {
            return Err(err(format!(
                "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )));
        }
        let head_dim = match self.head_dim {
            Some(d) => d,
            None if hidden % heads == 0 => hidden / heads,
            None => return Err(err(format!("hidden_size {hidden} is not a multiple of num_attention_heads {heads}"))),
        };
        if head_dim % 2 != 0 {
            return Err(err(format!("head_dim {head_dim} must be even for rotary embeddings")));
        }
        Ok(TransformerConfig {
            arch,
            vocab_size: self.vocab_size,
            hidden_size: hidden,
            intermediate_size: need(self.intermediate_size, "intermediate_size")?,
            num_layers: need(self.num_hidden_layers, "num_hidden_layers")?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            max_position_embeddings: self.max_positions(),
            norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            qkv_bias: arch == Arch::Qwen2 || self.attention_bias.unwrap_or(false),
            out_bias: self.mlp_bias.unwrap_or(false),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            bos_token_id,
            eos_token_ids,
            pad_token_id,
        })
    }
}

impl TransformerConfig {
    /// Reads `DIR/config.json` and resolves it; EOS ids that `DIR/generation_config.json` adds are
    /// appended, so generation stops at any of them as transformers' `generate` does.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let mut cfg = HfConfig::load(&path)?.resolve(&path)?;
        let generation = dir.join(GENERATION_CONFIG_FILE);
        if generation.exists() {
            let defaults: GenerationDefaults = read_json(&generation)?;
            for id in defaults.eos_token_id.map(TokenIds::into_vec).unwrap_or_default() {
                if !cfg.eos_token_ids.contains(&id) {
                    cfg.eos_token_ids.push(id);
                }
            }
        }
        Ok(cfg)
    }

    /// A `config.json` that transformers loads as this architecture (float32 weights).
    pub fn to_hf_json(&self) -> Value {
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        match self.arch {
            Arch::Gpt2 => json!({
                "architectures": ["GPT2LMHeadModel"],
                "model_type": "gpt2",
                "vocab_size": self.vocab_size,
                "n_embd": self.hidden_size,
                "n_layer": self.num_layers,
                "n_head": self.num_heads,
                "n_inner": self.intermediate_size,
                "n_positions": self.max_position_embeddings,
                "layer_norm_epsilon": self.norm_eps,
                "activation_function": "gelu_new",
                "tie_word_embeddings": true,
                "bos_token_id": self.bos_token_id,
                "eos_token_id": eos,
                "pad_token_id": self.pad_token_id,
                "torch_dtype": "float32",
            }),
            Arch::Llama | Arch::Qwen2 => {
                let (arch_name, model_type) = match self.arch {
                    Arch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
                    _ => ("LlamaForCausalLM", "llama"),
                };
                let mut v = json!({
                    "architectures": [arch_name],
                    "model_type": model_type,
                    "vocab_size": self.vocab_size,
                    "hidden_size": self.hidden_size,
                    "intermediate_size": self.intermediate_size,
                    "num_hidden_layers": self.num_layers,
                    "num_attention_heads": self.num_heads,
                    "num_key_value_heads": self.num_kv_heads,
                    "head_dim": self.head_dim,
                    "max_position_embeddings": self.max_position_embeddings,
                    "rms_norm_eps": self.norm_eps,
                    "rope_theta": self.rope_theta,
                    "hidden_act": "silu",
                    "tie_word_embeddings": self.tie_word_embeddings,
                    "bos_token_id": self.bos_token_id,
                    "eos_token_id": eos,
                    "pad_token_id": self.pad_token_id,
                    "torch_dtype": "float32",
                });
                if self.arch == Arch::Llama {
                    v["attention_bias"] = json!(self.qkv_bias);
                    v["mlp_bias"] = json!(self.out_bias);
                }
                // With the top-level `rope_theta`, the spelling every transformers version reads.
                if let Some(scaling) = &self.rope_scaling {
                    v["rope_scaling"] = json!(scaling);
                }
                v
            }
        }
    }

    /// A LLaMA of the given sizes (`heads` query heads of hidden/heads, `kv_heads` key/value heads;
    /// no biases, untied head, RMSNorm ε 1e-6, rope base 10 000, no special tokens): the shape of
    /// benchmark models and of plans computed by hand.
    pub fn llama(vocab: usize, hidden: usize, intermediate: usize, layers: usize, heads: usize, kv_heads: usize, max_positions: usize) -> Self {
        Self {
            arch: Arch::Llama,
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: intermediate,
            num_layers: layers,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim: hidden / heads,
            max_position_embeddings: max_positions,
            norm_eps: 1e-6,
            rope_theta: 10_000.0,
            rope_scaling: None,
            qkv_bias: false,
            out_bias: false,
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_ids: vec![],
            pad_token_id: None,
        }
    }

    /// Number of parameters (embedding counted once when tied).
    pub fn num_params(&self) -> usize {
        let d = self.hidden_size;
        let (q, kv) = (self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim);
        let bias = |on: bool, n: usize| if on { n } else { 0 };
        let attn = d * (q + 2 * kv) + bias(self.qkv_bias, q + 2 * kv) + q * d + bias(self.out_bias, d);
        let (mlp, norms) = match self.arch {
            Arch::Gpt2 => (2 * d * self.intermediate_size + self.intermediate_size + d, 4 * d),
            _ => (3 * d * self.intermediate_size + bias(self.out_bias, 2 * self.intermediate_size + d), 2 * d),
        };
        let final_norm = if self.arch == Arch::Gpt2 { 2 * d } else { d };
        let positions = if self.arch == Arch::Gpt2 { self.max_position_embeddings * d } else { 0 };
        let head = if self.tie_word_embeddings { 0 } else { self.vocab_size * d };
        self.vocab_size * d + positions + self.num_layers * (attn + mlp + norms) + final_norm + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str) -> Result<TransformerConfig> {
        let cfg: HfConfig = serde_json::from_str(text).unwrap();
        cfg.resolve(Path::new("config.json"))
    }

    /// A small LLaMA config.json with `extra` fields appended.
    fn llama(extra: &str) -> Result<TransformerConfig> {
        let base = r#""model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"max_position_embeddings":512"#;
        resolve(&format!("{{{base}{extra}}}"))
    }

    #[test]
    fn rope_theta_from_top_level_or_rope_parameters() {
        let top = llama(r#","rope_theta":500000.0,"rope_scaling":null"#).unwrap();
        assert_eq!((top.rope_theta, top.rope_scaling), (500000.0, None));
        let nested = llama(r#","rope_parameters":{"rope_theta":1000.0,"rope_type":"default"}"#).unwrap();
        assert_eq!(nested.rope_theta, 1000.0);
        assert_eq!(nested.num_kv_heads, 2);
        assert_eq!(nested.head_dim, 4);
        // As transformers: the rope dict's own theta wins over the top level's; none at all is 10 000.
        let both = llama(r#","rope_theta":500000.0,"rope_parameters":{"rope_theta":1000.0}"#).unwrap();
        assert_eq!(both.rope_theta, 1000.0);
        assert_eq!(llama("").unwrap().rope_theta, 10_000.0);
    }

    #[test]
    fn llama3_scaling_in_either_spelling() {
        let params = r#""factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192"#;
        let hub = llama(&format!(r#","rope_theta":500000.0,"rope_scaling":{{"rope_type":"llama3",{params}}}"#)).unwrap();
        let current = llama(&format!(r#","rope_parameters":{{"rope_type":"llama3","rope_theta":500000.0,{params}}}"#)).unwrap();
        assert_eq!(hub, current);
        let want = RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 };
        assert_eq!((hub.rope_theta, hub.rope_scaling), (500000.0, Some(want)));
        // The old `type` key, integers for floats, and no original length (max_position_embeddings then).
        let short = llama(r#","rope_scaling":{"type":"llama3","factor":8,"low_freq_factor":1,"high_freq_factor":4}"#).unwrap();
        let Some(RopeScaling::Llama3 { original_max_position_embeddings, factor, .. }) = short.rope_scaling else { panic!() };
        assert_eq!((original_max_position_embeddings, factor), (512, 8.0));
        // Exported and read back, the scaling survives (checkpoints serialise it the same way).
        let exported: HfConfig = serde_json::from_value(hub.to_hf_json()).unwrap();
        assert_eq!(exported.resolve(Path::new("config.json")).unwrap(), hub);
        let stored = serde_json::to_string(&hub).unwrap();
        assert_eq!(serde_json::from_str::<TransformerConfig>(&stored).unwrap(), hub);
    }

    #[test]
    fn bad_or_unsupported_rope_is_a_named_error() {
        let cases = [
            (r#","rope_scaling":{"rope_type":"yarn","factor":4.0}"#, r#"rope_scaling.rope_type "yarn" is not supported"#),
            (r#","rope_parameters":{"rope_type":"dynamic"}"#, r#"rope_parameters.rope_type "dynamic""#),
            (r#","rope_scaling":{"rope_type":"llama3","factor":8.0,"high_freq_factor":4.0}"#, "rope_scaling.low_freq_factor: missing"),
            (r#","rope_scaling":{"rope_type":"llama3","factor":"8","low_freq_factor":1,"high_freq_factor":4}"#, "rope_scaling.factor: expected a number"),
            (r#","rope_scaling":{"rope_type":"llama3","factor":8,"low_freq_factor":4,"high_freq_factor":1}"#, "high_freq_factor > low_freq_factor"),
            (r#","rope_scaling":"llama3""#, "rope_scaling: expected an object"),
            (r#","partial_rotary_factor":0.5"#, "partial_rotary_factor 0.5"),
        ];
        for (extra, want) in cases {
            let e = llama(extra).unwrap_err().to_string();
            assert!(e.starts_with("config.json: ") && e.contains(want), "{extra}: {e}");
        }
    }

    /// A checkpoint written before `rope_scaling` existed still loads.
    #[test]
    fn stored_config_without_rope_scaling_loads() {
        let mut v = serde_json::to_value(llama("").unwrap()).unwrap();
        assert!(v.get("rope_scaling").is_none());
        v.as_object_mut().unwrap().remove("rope_scaling");
        assert_eq!(serde_json::from_value::<TransformerConfig>(v).unwrap().rope_scaling, None);
    }

    #[test]
    fn dtype_spellings_and_null_or_missing_architectures() {
        let cfg = |text: &str| serde_json::from_str::<HfConfig>(text).unwrap();
        assert_eq!(cfg(r#"{"vocab_size":10,"dtype":"bfloat16"}"#).declared_dtype(), Some("bfloat16"));
        assert_eq!(cfg(r#"{"vocab_size":10,"torch_dtype":"float16"}"#).declared_dtype(), Some("float16"));
        assert_eq!(cfg(r#"{"vocab_size":10,"dtype":"float32","torch_dtype":"float16"}"#).declared_dtype(), Some("float32"));
        assert!(llama(r#","architectures":null,"dtype":"float32""#).is_ok());
        assert!(llama(r#","torch_dtype":"bfloat16""#).is_ok());
        // Without model_type, the architecture name decides; with neither, the error says so.
        let by_class = resolve(r#"{"architectures":["Qwen2ForCausalLM"],"vocab_size":10,"hidden_size":8,
            "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2}"#);
        assert_eq!(by_class.unwrap().arch, Arch::Qwen2);
        let e = resolve(r#"{"architectures":null,"vocab_size":10}"#).unwrap_err().to_string();
        assert!(e.contains("unsupported architecture \"\""), "{e}");
    }

    #[test]
    fn generation_config_eos_ids_are_added() {
        let dir = tempfile::tempdir().unwrap();
        let config = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"eos_token_id":2,"pad_token_id":-1}"#;
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        assert_eq!(TransformerConfig::from_hf_dir(dir.path()).unwrap().eos_token_ids, vec![2]);
        let generation = dir.path().join(GENERATION_CONFIG_FILE);
        std::fs::write(&generation, r#"{"eos_token_id":[7,2,9]}"#).unwrap();
        let cfg = TransformerConfig::from_hf_dir(dir.path()).unwrap();
        assert_eq!((cfg.eos_token_ids, cfg.pad_token_id), (vec![2, 7, 9], None));
        std::fs::write(&generation, r#"{"eos_token_id":"</s>"}"#).unwrap();
        let e = TransformerConfig::from_hf_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("generation_config.json") && e.contains(r#"token ids, found "</s>""#), "{e}");
    }

    #[test]
    fn eos_may_be_a_list_and_qwen2_has_qkv_bias() {
        let cfg = resolve(
            r#"{"model_type":"qwen2","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,"eos_token_id":[3,4]}"#,
        )
        .unwrap();
        assert_eq!(cfg.eos_token_ids, vec![3, 4]);
        assert!(cfg.qkv_bias && !cfg.out_bias);
    }

    #[test]
    fn unknown_architecture_is_named() {
        let e = resolve(r#"{"model_type":"bert","vocab_size":10}"#).unwrap_err();
        assert!(e.to_string().contains("\"bert\""), "{e}");
    }
}

//! `config.json` as Hugging Face writes it ([`HfConfig`]), resolved once into the Option-free
//! [`TransformerConfig`] that the model code reads.

use std::path::Path;

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

/// `eos_token_id` is a number in some configs and a list in others.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    fn into_vec(self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![id],
            TokenIds::Many(ids) => ids,
        }
    }
}

/// `config.json` as found in Hugging Face folders of the LLaMA family and GPT-2.
/// Fields we do not use are ignored, as transformers does.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    pub model_type: Option<String>,
    #[serde(default)]
    pub architectures: Vec<String>,
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
    /// Older configs keep `rope_theta` at the top level…
    pub rope_theta: Option<f64>,
    /// …newer ones (transformers ≥ 4.56) under `rope_parameters`.
    pub rope_parameters: Option<Value>,
    pub rope_scaling: Option<Value>,
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
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Resolves defaults the way transformers does for each `model_type`.
    pub fn resolve(self, path: &Path) -> Result<TransformerConfig> {
        let err = |message: String| ModelError::Config { path: path.to_path_buf(), message };
        let need = |v: Option<usize>, key: &str| v.ok_or_else(|| err(format!("missing field `{key}`")));
        let model_type = self
            .model_type
            .clone()
            .or_else(|| self.architectures.first().cloned())
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
        let rope_params = self.rope_parameters.as_ref().or(self.rope_scaling.as_ref());
        if let Some(kind) = rope_params
            .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
            .and_then(Value::as_str)
        {
            if kind != "default" {
                return Err(err(format!("rope_type {kind:?} is not supported (default only)")));
            }
        }
        let rope_theta = self
            .rope_theta
            .or_else(|| rope_params.and_then(|p| p.get("rope_theta")).and_then(Value::as_f64))
            .unwrap_or(10_000.0);
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
            max_position_embeddings: self.max_position_embeddings.unwrap_or(2048),
            norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
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
    /// Reads `DIR/config.json` and resolves it.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        HfConfig::load(&path)?.resolve(&path)
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
                v
            }
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

    #[test]
    fn rope_theta_from_top_level_or_rope_parameters() {
        let base = r#""model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2"#;
        let top = resolve(&format!("{{{base},\"rope_theta\":500000.0}}")).unwrap();
        assert_eq!(top.rope_theta, 500000.0);
        let nested = resolve(&format!(
            "{{{base},\"rope_parameters\":{{\"rope_theta\":1000.0,\"rope_type\":\"default\"}}}}"
        ))
        .unwrap();
        assert_eq!(nested.rope_theta, 1000.0);
        assert_eq!(nested.num_kv_heads, 2);
        assert_eq!(nested.head_dim, 4);
        let scaled = resolve(&format!("{{{base},\"rope_scaling\":{{\"rope_type\":\"yarn\"}}}}"));
        assert!(scaled.unwrap_err().to_string().contains("yarn"));
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

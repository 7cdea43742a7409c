//! Hugging Face folders in and out: `config.json` + `model.safetensors` (or a sharded
//! `model.safetensors.index.json`), f32 / f16 / bf16. Only safetensors: never unpickle.
//!
//! Every tensor the architecture needs is checked by name and shape; a missing, misshapen or
//! unexpected tensor is an error naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Tensor, TensorData};
use rlhf_runtime::Backend;
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, SafeTensors, TensorView};

use crate::config::{Arch, TransformerConfig};
use crate::error::{ModelError, Result};
use crate::heads::{CausalLm, RewardModel, ScalarHead};
use crate::proj::Proj;
use crate::rope::Rope;
use crate::lora::Slot;
use crate::transformer::{Block, Norm, Transformer};

/// Tokenizer, chat template and generation files copied next to an exported model, byte for byte:
/// a template stays in the file it came in (`chat_template.jinja` is where transformers ≥ 4.43
/// keeps it, outside tokenizer_config.json).
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
];

/// A tensor on the host, in row-major f32.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn from_tensor<B: Backend, const D: usize>(t: Tensor<B, D>) -> Self {
        let shape = t.dims().to_vec();
        let data = t.into_data().convert::<f32>().to_vec::<f32>().expect("f32 data after convert");
        Self { shape, data }
    }

    pub fn to_tensor<B: Backend, const D: usize>(&self, device: &B::Device) -> Tensor<B, D> {
        Tensor::from_data(TensorData::new(self.data.clone(), self.shape.clone()), device)
    }

    /// Transpose of a matrix (HF `nn.Linear` stores [out, in]; burn's `Linear` [in, out]).
    pub fn transposed(&self) -> Self {
        let (rows, cols) = (self.shape[0], self.shape[1]);
        let mut data = vec![0.0; self.data.len()];
        for r in 0..rows {
            for c in 0..cols {
                data[c * rows + r] = self.data[r * cols + c];
            }
        }
        Self { shape: vec![cols, rows], data }
    }

    /// Columns `start..end` of a matrix.
    fn columns(&self, start: usize, end: usize) -> Self {
        let (rows, cols) = (self.shape[0], self.shape[1]);
        let data = (0..rows).flat_map(|r| self.data[r * cols + start..r * cols + end].iter().copied()).collect();
        Self { shape: vec![rows, end - start], data }
    }

    fn concat_columns(parts: &[HostTensor]) -> Self {
        let rows = parts[0].shape[0];
        let cols: usize = parts.iter().map(|p| p.shape[1]).sum();
        let mut data = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            for p in parts {
                let w = p.shape[1];
                data.extend_from_slice(&p.data[r * w..(r + 1) * w]);
            }
        }
        Self { shape: vec![rows, cols], data }
    }
}

/// The safetensors files of one checkpoint, memory-mapped, with their validated headers.
pub struct SafetensorsFiles {
    files: Vec<(PathBuf, Mmap, usize, Metadata)>,
    /// tensor name → index into `files`
    index: BTreeMap<String, usize>,
    taken: BTreeSet<String>,
}

impl SafetensorsFiles {
    /// Opens `DIR/model.safetensors`, or the shards listed in `DIR/model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let paths = if single.exists() {
            vec![single]
        } else if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
            let bad = |message: String| ModelError::Config { path: index_path.clone(), message };
            let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| bad("missing object `weight_map`".into()))?;
            let mut shards = BTreeSet::new();
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| bad(format!("weight_map[{name:?}] is not a string")))?;
                if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                    return Err(bad(format!("weight_map[{name:?}]: shard {file:?} is outside the folder")));
                }
                shards.insert(dir.join(file));
            }
            shards.into_iter().collect()
        } else {
            return Err(ModelError::Config {
                path: dir.to_path_buf(),
                message: "no model.safetensors or model.safetensors.index.json (only safetensors are loaded)".into(),
            });
        };
        Self::open(&paths)
    }

    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        for path in paths {
            let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
            // SAFETY: read-only map of a checkpoint file; we never write through it.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
            // Validates header length, JSON, dtypes and that offsets tile the data exactly.
            let (header_len, metadata) = SafeTensors::read_metadata(&map).map_err(|e| ModelError::Safetensors {
                path: path.clone(),
                message: e.to_string(),
            })?;
            for name in metadata.tensors().keys() {
                if index.insert(name.clone(), files.len()).is_some() {
                    return Err(ModelError::Safetensors {
                        path: path.clone(),
                        message: format!("tensor {name:?} appears in two shards"),
                    });
                }
            }
            files.push((path.clone(), map, header_len, metadata));
        }
        Ok(Self { files, index, taken: BTreeSet::new() })
    }

    /// How many tensors of each dtype the checkpoint holds.
    pub fn dtypes(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (_, _, _, metadata) in &self.files {
            for info in metadata.tensors().values() {
                *out.entry(format!("{:?}", info.dtype)).or_insert(0) += 1;
            }
        }
        out
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Names in the checkpoint not taken so far.
    pub fn untaken(&self) -> Vec<String> {
        self.index.keys().filter(|n| !self.taken.contains(*n)).cloned().collect()
    }

    /// Reads a tensor as f32, checking its shape.
    pub fn take(&mut self, name: &str, expected: &[usize]) -> Result<HostTensor> {
        let Some(&file) = self.index.get(name) else {
            return Err(ModelError::MissingTensor { name: name.into(), expected: expected.to_vec() });
        };
        let (path, map, header_len, metadata) = &self.files[file];
        let info = metadata.info(name).expect("indexed name has info");
        if info.shape != expected {
            return Err(ModelError::ShapeMismatch {
                name: name.into(),
                expected: expected.to_vec(),
                found: info.shape.clone(),
            });
        }
        let start = 8 + header_len + info.data_offsets.0;
        let end = 8 + header_len + info.data_offsets.1;
        let bytes = &map[start..end]; // in bounds: read_metadata checked the offsets against the file size
        let data: Vec<f32> = match info.dtype {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => {
                return Err(ModelError::Safetensors {
                    path: path.clone(),
                    message: format!("tensor {name:?} has dtype {other:?} (f32, f16 or bf16 expected)"),
                })
            }
        };
        self.taken.insert(name.to_string());
        Ok(HostTensor { shape: info.shape.clone(), data })
    }
}

/// Where the body's tensors live in a checkpoint: LLaMA `model.layers.{i}.…`, GPT-2
/// `transformer.h.{i}.…` (or without the `transformer.` prefix in the original OpenAI export).
pub(crate) struct KeyScheme {
    arch: Arch,
    prefix: &'static str,
}

impl KeyScheme {
    /// The names we write (and transformers' current ones).
    pub(crate) fn export(arch: Arch) -> Self {
        Self { arch, prefix: if arch == Arch::Gpt2 { "transformer." } else { "model." } }
    }

    fn detect(cfg: &TransformerConfig, files: &SafetensorsFiles) -> Self {
        let prefix = match cfg.arch {
            Arch::Gpt2 if !files.contains("transformer.wte.weight") && files.contains("wte.weight") => "",
            Arch::Gpt2 => "transformer.",
            _ => "model.",
        };
        Self { arch: cfg.arch, prefix }
    }

    fn embed(&self) -> String {
        match self.arch {
            Arch::Gpt2 => format!("{}wte.weight", self.prefix),
            _ => format!("{}embed_tokens.weight", self.prefix),
        }
    }

    fn final_norm(&self) -> String {
        match self.arch {
            Arch::Gpt2 => format!("{}ln_f", self.prefix),
            _ => format!("{}norm", self.prefix),
        }
    }

    pub(crate) fn layer(&self, i: usize, key: &str) -> String {
        match self.arch {
            Arch::Gpt2 => format!("{}h.{i}.{key}", self.prefix),
            _ => format!("{}layers.{i}.{key}", self.prefix),
        }
    }
}

/// Buffers some checkpoints carry that are not parameters.
fn is_ignorable(name: &str) -> bool {
    name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") || name.ends_with("rotary_emb.inv_freq")
}

fn param<B: Backend, const D: usize>(t: HostTensor, device: &B::Device) -> Param<Tensor<B, D>> {
    Param::from_tensor(t.to_tensor(device))
}

impl<B: Backend> Transformer<B> {
    /// Builds the body from checkpoint tensors (checked by name and shape).
    pub fn from_safetensors(cfg: &TransformerConfig, files: &mut SafetensorsFiles, device: &B::Device) -> Result<Self> {
        let keys = KeyScheme::detect(cfg, files);
        let d = cfg.hidden_size;
        let gpt2 = cfg.arch == Arch::Gpt2;

        let norm = |files: &mut SafetensorsFiles, name: String| -> Result<Norm<B>> {
            Ok(Norm {
                weight: param(files.take(&format!("{name}.weight"), &[d])?, device),
                bias: if gpt2 { Some(param(files.take(&format!("{name}.bias"), &[d])?, device)) } else { None },
                eps: cfg.norm_eps,
                centered: gpt2,
            })
        };
        // HF nn.Linear: weight [out, in] → burn [in, out].
        let hf_linear = |files: &mut SafetensorsFiles, name: String, d_in: usize, d_out: usize, bias: bool| -> Result<Proj<B>> {
            Ok(Proj::from(Linear {
                weight: param(files.take(&format!("{name}.weight"), &[d_out, d_in])?.transposed(), device),
                bias: if bias { Some(param(files.take(&format!("{name}.bias"), &[d_out])?, device)) } else { None },
            }))
        };
        // GPT-2 Conv1D: weight already [in, out].
        let conv1d = |files: &mut SafetensorsFiles, name: String, d_in: usize, d_out: usize| -> Result<Proj<B>> {
            Ok(Proj::from(Linear {
                weight: param(files.take(&format!("{name}.weight"), &[d_in, d_out])?, device),
                bias: Some(param(files.take(&format!("{name}.bias"), &[d_out])?, device)),
            }))
        };
        let host_linear = |w: HostTensor, b: HostTensor| Proj::from(Linear { weight: param(w, device), bias: Some(param(b, device)) });

        let embed_tokens = param(files.take(&keys.embed(), &[cfg.vocab_size, d])?, device);
        let embed_positions = if gpt2 {
            let name = format!("{}wpe.weight", keys.prefix);
            Some(param(files.take(&name, &[cfg.max_position_embeddings, d])?, device))
        } else {
            None
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let at = |key: &str| keys.layer(i, key);
            let block = if gpt2 {
                let w = files.take(&at("attn.c_attn.weight"), &[d, 3 * d])?;
                let b = files.take(&at("attn.c_attn.bias"), &[3 * d])?;
                let part = |k: usize| {
                    let bias = HostTensor { shape: vec![d], data: b.data[k * d..(k + 1) * d].to_vec() };
                    host_linear(w.columns(k * d, (k + 1) * d), bias)
                };
                let (ln_1, ln_2) = (norm(files, at("ln_1"))?, norm(files, at("ln_2"))?);
                Block::build(cfg, ln_1, ln_2, |slot| match slot {
                    // q, k and v are the three column blocks of the fused c_attn.
                    Slot::Q => Ok(part(0)),
                    Slot::K => Ok(part(1)),
                    Slot::V => Ok(part(2)),
                    _ => {
                        let (d_in, d_out) = slot.dims(cfg);
                        conv1d(files, at(slot.hf_path(cfg.arch)), d_in, d_out)
                    }
                })?
            } else {
                let (input, post) = (norm(files, at("input_layernorm"))?, norm(files, at("post_attention_layernorm"))?);
                Block::build(cfg, input, post, |slot| {
                    let (d_in, d_out) = slot.dims(cfg);
                    hf_linear(files, at(slot.hf_path(cfg.arch)), d_in, d_out, slot.has_bias(cfg))
                })?
            };
            layers.push(block);
        }
        let norm = norm(files, keys.final_norm())?;
        Ok(Transformer {
            embed_tokens,
            embed_positions,
            layers,
            norm,
            rope: (!gpt2).then(|| Rope::from_config(cfg, device)),
            config: cfg.clone(),
            precision: rlhf_runtime::Precision::F32,
            gradient_checkpointing: false,
        })
    }

    /// The body's tensors under their checkpoint names and layouts (inverse of `from_safetensors`).
    pub fn hf_tensors(&self) -> Vec<(String, HostTensor)> {
        let cfg = &self.config;
        let gpt2 = cfg.arch == Arch::Gpt2;
        let keys = KeyScheme::export(cfg.arch);
        let mut out = Vec::new();
        let host = |p: &Param<Tensor<B, 1>>| HostTensor::from_tensor(p.val());
        let push_norm = |out: &mut Vec<(String, HostTensor)>, name: String, n: &Norm<B>| {
            out.push((format!("{name}.weight"), host(&n.weight)));
            if let Some(b) = &n.bias {
                out.push((format!("{name}.bias"), host(b)));
            }
        };
        let push_linear = |out: &mut Vec<(String, HostTensor)>, name: String, l: &Proj<B>| {
            let w = HostTensor::from_tensor(l.weight());
            out.push((format!("{name}.weight"), if gpt2 { w } else { w.transposed() }));
            if let Some(b) = l.bias() {
                out.push((format!("{name}.bias"), HostTensor::from_tensor(b)));
            }
        };
        out.push((keys.embed(), HostTensor::from_tensor(self.embed_tokens.val())));
        if let Some(wpe) = &self.embed_positions {
            out.push((format!("{}wpe.weight", keys.prefix), HostTensor::from_tensor(wpe.val())));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let at = |key: &str| keys.layer(i, key);
            let (first, second) = if gpt2 { ("ln_1", "ln_2") } else { ("input_layernorm", "post_attention_layernorm") };
            push_norm(&mut out, at(first), &layer.input_layernorm);
            push_norm(&mut out, at(second), &layer.post_attention_layernorm);
            if gpt2 {
                // GPT-2 stores q, k and v fused, as the column blocks of c_attn.
                let attn = &layer.self_attn;
                let qkv = [&attn.q_proj, &attn.k_proj, &attn.v_proj];
                let w: Vec<HostTensor> = qkv.iter().map(|l| HostTensor::from_tensor(l.weight())).collect();
                out.push((at("attn.c_attn.weight"), HostTensor::concat_columns(&w)));
                let b: Vec<f32> = qkv
                    .iter()
                    .flat_map(|l| HostTensor::from_tensor(l.bias().expect("GPT-2 q/k/v have biases")).data)
                    .collect();
                out.push((at("attn.c_attn.bias"), HostTensor { shape: vec![b.len()], data: b }));
            }
            for (slot, proj) in layer.projections() {
                if !(gpt2 && matches!(slot, Slot::Q | Slot::K | Slot::V)) {
                    push_linear(&mut out, at(slot.hf_path(cfg.arch)), proj);
                }
            }
        }
        push_norm(&mut out, keys.final_norm(), &self.norm);
        out
    }
}

impl<B: Backend> CausalLm<B> {
    /// Loads a Hugging Face causal-LM folder.
    pub fn from_hf_dir(dir: &Path, device: &B::Device) -> Result<Self> {
        let cfg = TransformerConfig::from_hf_dir(dir)?;
        let mut files = SafetensorsFiles::open_dir(dir)?;
        let model = Transformer::from_safetensors(&cfg, &mut files, device)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(param(files.take("lm_head.weight", &[cfg.vocab_size, cfg.hidden_size])?, device))
        };
        // A tied checkpoint may still carry a copy of the head.
        let unexpected: Vec<String> = files
            .untaken()
            .into_iter()
            .filter(|n| !(is_ignorable(n) || (cfg.tie_word_embeddings && n == "lm_head.weight")))
            .collect();
        if !unexpected.is_empty() {
            return Err(ModelError::UnexpectedTensors { names: unexpected });
        }
        Ok(CausalLm { model, lm_head, lm_head_codes: None })
    }

    /// All tensors under their HF names.
    pub fn hf_tensors(&self) -> Vec<(String, HostTensor)> {
        let mut out = self.model.hf_tensors();
        if let Some(w) = &self.lm_head {
            out.push(("lm_head.weight".into(), HostTensor::from_tensor(w.val())));
        }
        out
    }

    /// Writes a Hugging Face folder (config.json, model.safetensors in `dtype`, and the tokenizer
    /// files found in `tokenizer_from`) that transformers loads as-is. The folder is written under a
    /// temporary name and renamed into place, so a crash never leaves a half-written model.
    pub fn save_hf_dir(&self, out: &Path, tokenizer_from: Option<&Path>, dtype: WeightDtype) -> Result<()> {
        rlhf_files::write_dir_with(out, |dir| self.write_hf_files(dir, tokenizer_from, dtype))
    }

    /// The files of [`CausalLm::save_hf_dir`], written into the folder `dir`.
    pub fn write_hf_files(&self, dir: &Path, tokenizer_from: Option<&Path>, dtype: WeightDtype) -> Result<()> {
        write_hf_files(dir, &self.config().to_hf_json(), &self.hf_tensors(), tokenizer_from, dtype)
    }
}

/// The dtype weights are written in when a model is exported (`export_dtype` in stage configs; by
/// default the input model's). config.json's `torch_dtype` says it. Training checkpoints stay f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WeightDtype {
    #[serde(rename = "float32", alias = "f32", alias = "fp32")]
    F32,
    #[serde(rename = "bfloat16", alias = "bf16")]
    Bf16,
    #[serde(rename = "float16", alias = "f16", alias = "fp16")]
    F16,
}

impl WeightDtype {
    /// The name transformers uses (`torch_dtype` in config.json).
    pub fn hf_name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "float32",
            WeightDtype::Bf16 => "bfloat16",
            WeightDtype::F16 => "float16",
        }
    }

    fn safetensors(self) -> Dtype {
        match self {
            WeightDtype::F32 => Dtype::F32,
            WeightDtype::Bf16 => Dtype::BF16,
            WeightDtype::F16 => Dtype::F16,
        }
    }

    /// The dtype of a Hugging Face folder's weights: what config.json declares, else the dtype most
    /// of its tensors are stored in; f32 for anything else ("auto", float64, …).
    pub fn of_folder(dir: &Path) -> Result<Self> {
        let declared = crate::HfConfig::load(&dir.join("config.json"))?.declared_dtype().map(str::to_string);
        let name = match declared {
            Some(name) => name,
            None => {
                let counts = SafetensorsFiles::open_dir(dir)?.dtypes();
                let most = counts.into_iter().max_by_key(|(_, n)| *n).map(|(d, _)| d).unwrap_or_default();
                match most.as_str() {
                    "BF16" => "bfloat16".into(),
                    "F16" => "float16".into(),
                    _ => "float32".into(),
                }
            }
        };
        Ok(match name.as_str() {
            "bfloat16" => WeightDtype::Bf16,
            "float16" => WeightDtype::F16,
            _ => WeightDtype::F32,
        })
    }

    /// `export_dtype` as configured, else the dtype of the folder the model came from, else f32 (a
    /// model trained from scratch).
    pub fn for_export(configured: Option<Self>, from: Option<&Path>) -> Result<Self> {
        match (configured, from) {
            (Some(dtype), _) => Ok(dtype),
            (None, Some(dir)) => Self::of_folder(dir),
            (None, None) => Ok(WeightDtype::F32),
        }
    }

    /// Little-endian bytes of `data` in this dtype (round to nearest even). A value that float16
    /// cannot hold is an error naming the tensor, not a silent infinity.
    fn encode(self, name: &str, data: &[f32]) -> std::result::Result<Vec<u8>, String> {
        match self {
            WeightDtype::F32 => Ok(data.iter().flat_map(|x| x.to_le_bytes()).collect()),
            WeightDtype::Bf16 => Ok(data.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect()),
            WeightDtype::F16 => {
                let mut out = Vec::with_capacity(2 * data.len());
                for &x in data {
                    let h = half::f16::from_f32(x);
                    if h.is_infinite() && x.is_finite() {
                        return Err(format!(
                            "tensor {name:?} holds {x}, beyond float16's range (±65504); export as bfloat16 or float32"
                        ));
                    }
                    out.extend_from_slice(&h.to_le_bytes());
                }
                Ok(out)
            }
        }
    }
}

impl std::fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.hf_name())
    }
}

/// Writes `tensors` as a safetensors file in `dtype` (to a temporary name, then renamed into place).
pub fn write_safetensors(path: &Path, tensors: &[(String, HostTensor)], dtype: WeightDtype) -> Result<()> {
    let bytes = tensors
        .iter()
        .map(|(name, t)| {
            let data = dtype.encode(name, &t.data).map_err(|message| ModelError::Safetensors { path: path.to_path_buf(), message })?;
            Ok((name.clone(), data, t.shape.clone()))
        })
        .collect::<Result<Vec<(String, Vec<u8>, Vec<usize>)>>>()?;
    let views = bytes
        .iter()
        .map(|(name, data, shape)| {
            TensorView::new(dtype.safetensors(), shape.clone(), data).map(|v| (name.clone(), v)).map_err(|e| {
                ModelError::Safetensors { path: path.to_path_buf(), message: e.to_string() }
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut metadata = std::collections::HashMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    rlhf_files::write_file_with(path, |tmp| {
        safetensors::serialize_to_file(views, Some(metadata), tmp).map_err(|e| ModelError::Safetensors { path: tmp.to_path_buf(), message: e.to_string() })
    })
}

/// Writes a model folder atomically: everything goes to `OUT.tmp`, which then replaces `OUT` (see
/// [`write_hf_files`]). Nothing half-written stays behind (e.g. after a weight float16 cannot hold).
pub fn write_hf_dir(
    out: &Path,
    config: &serde_json::Value,
    tensors: &[(String, HostTensor)],
    tokenizer_from: Option<&Path>,
    dtype: WeightDtype,
) -> Result<()> {
    rlhf_files::write_dir_with(out, |dir| write_hf_files(dir, config, tensors, tokenizer_from, dtype))
}

/// Writes a model's files into the folder `dir`: config.json (its `torch_dtype` saying `dtype`),
/// model.safetensors in `dtype`, and the tokenizer files found in `tokenizer_from`, byte for byte.
pub fn write_hf_files(
    dir: &Path,
    config: &serde_json::Value,
    tensors: &[(String, HostTensor)],
    tokenizer_from: Option<&Path>,
    dtype: WeightDtype,
) -> Result<()> {
    let mut config = config.clone();
    config["torch_dtype"] = serde_json::json!(dtype.hf_name());
    rlhf_files::write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&config).expect("JSON value serialises"))?;
    write_safetensors(&dir.join("model.safetensors"), tensors, dtype)?;
    if let Some(src) = tokenizer_from {
        for name in TOKENIZER_FILES {
            let from = src.join(name);
            if from.exists() {
                std::fs::copy(&from, dir.join(name)).map_err(|e| ModelError::io(&from, e))?;
            }
        }
    }
    Ok(())
}

/// The file holding a reward model's scalar head next to its body.
pub const REWARD_HEAD_FILE: &str = "reward_head.safetensors";

impl<B: Backend> Transformer<B> {
    /// The body of a Hugging Face folder, without its LM head (which is ignored if present).
    pub fn from_hf_dir(dir: &Path, device: &B::Device) -> Result<Self> {
        let cfg = TransformerConfig::from_hf_dir(dir)?;
        let mut files = SafetensorsFiles::open_dir(dir)?;
        let body = Transformer::from_safetensors(&cfg, &mut files, device)?;
        let unexpected: Vec<String> =
            files.untaken().into_iter().filter(|n| !is_ignorable(n) && n != "lm_head.weight").collect();
        if !unexpected.is_empty() {
            return Err(ModelError::UnexpectedTensors { names: unexpected });
        }
        Ok(body)
    }
}

impl<B: Backend> RewardModel<B> {
    /// A reward model saved by [`RewardModel::save_dir`]: the body folder plus `reward_head.safetensors`.
    pub fn from_dir(dir: &Path, device: &B::Device) -> Result<Self> {
        let model = Transformer::from_hf_dir(dir, device)?;
        let d = model.config.hidden_size;
        let mut files = SafetensorsFiles::open(&[dir.join(REWARD_HEAD_FILE)])?;
        let head = ScalarHead {
            weight: param(files.take("weight", &[1, d])?, device),
            bias: param(files.take("bias", &[1])?, device),
        };
        Ok(RewardModel { model, head })
    }

    /// Writes the body as a Hugging Face folder (no LM head) in `dtype`, the head as
    /// `reward_head.safetensors` (f32), and `extra` files (e.g. `reward.json`), atomically.
    pub fn save_dir(&self, out: &Path, tokenizer_from: Option<&Path>, extra: &[(&str, String)], dtype: WeightDtype) -> Result<()> {
        rlhf_files::write_dir_with(out, |dir| self.write_files(dir, tokenizer_from, extra, dtype))
    }

    /// The files of [`RewardModel::save_dir`], written into the folder `dir`.
    pub fn write_files(&self, dir: &Path, tokenizer_from: Option<&Path>, extra: &[(&str, String)], dtype: WeightDtype) -> Result<()> {
        write_hf_files(dir, &self.model.config.to_hf_json(), &self.model.hf_tensors(), tokenizer_from, dtype)?;
        // The head stays f32 in every export: d + 1 numbers, and the score's shift to a zero mean
        // lives in its bias, which bf16 would round by up to 2⁻⁸ of its size.
        write_safetensors(&dir.join(REWARD_HEAD_FILE), &self.head_tensors(), WeightDtype::F32)?;
        for (name, text) in extra {
            rlhf_files::write_atomic(&dir.join(name), text)?;
        }
        Ok(())
    }

    /// The scalar head's tensors (`weight` [1, hidden], `bias` [1]), as `reward_head.safetensors` holds them.
    pub fn head_tensors(&self) -> Vec<(String, HostTensor)> {
        vec![
            ("weight".to_string(), HostTensor::from_tensor(self.head.weight.val())),
            ("bias".to_string(), HostTensor::from_tensor(self.head.bias.val())),
        ]
    }
}

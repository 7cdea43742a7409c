//! The decoder body shared by every stage: embeddings → blocks → final norm → hidden states.
//! Heads (unembedding, scalar) live in `heads.rs`.
//!
//! Field names follow Hugging Face LLaMA keys (`embed_tokens`, `q_proj`, `input_layernorm`…), so the
//! module tree reads like the checkpoint. GPT-2 maps onto the same tree (see `hf.rs`).

use std::convert::Infallible;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::module::AutodiffModule;
use burn::tensor::{Distribution, Int, Tensor, TensorData, TensorPrimitive};
use rlhf_runtime::attention::attention_output;
use rlhf_runtime::checkpoint::{Checkpointable, ParamTensors};
use rlhf_runtime::rms_norm::rms_norm;
use rlhf_runtime::swiglu::swiglu;
use rlhf_runtime::quant::BaseQuant;
use rlhf_runtime::{AutodiffBackend, Backend, Precision};

use crate::cache::KvCache;
use crate::config::{Arch, TransformerConfig};
use crate::error::{ModelError, Result};
use crate::lora::{BlockLora, Lora, Slot};
use crate::precision::{in_compute, in_f32};
use crate::proj::Proj;
use crate::rope::{apply_rotary, Rope};

/// Additive bias for masked attention scores: large but finite, so a query with no visible key
/// (a left-padding position) gets a uniform softmax instead of NaN.
const MASKED: f32 = -1.0e9;

/// RMSNorm (LLaMA) or LayerNorm (GPT-2).
#[derive(Module, Debug)]
pub struct Norm<B: Backend> {
    /// [hidden]
    pub weight: Param<Tensor<B, 1>>,
    /// [hidden]; LayerNorm only.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// Added to the variance.
    pub eps: f64,
    /// Subtract the mean first (LayerNorm) or not (RMSNorm).
    pub centered: bool,
}

impl<B: Backend> Norm<B> {
    /// Statistics in f32 whatever the weights are stored in.
    ///
    /// # Shapes
    /// - `x`: [batch, seq, hidden] → same
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = in_f32(x);
        if !self.centered && self.bias.is_none() {
            // RMSNorm: one op (rlhf_runtime::rms_norm).
            let [batch, seq, d] = x.dims();
            return rms_norm(x.reshape([batch * seq, d]), in_f32(self.weight.val()), self.eps as f32).reshape([batch, seq, d]);
        }
        let x = if self.centered {
            let mean = x.clone().mean_dim(2);
            x - mean
        } else {
            x
        };
        let scale = (x.clone().square().mean_dim(2) + self.eps).sqrt().recip();
        let y = x * scale * in_f32(self.weight.val()).unsqueeze::<3>();
        match &self.bias {
            Some(b) => y + in_f32(b.val()).unsqueeze::<3>(),
            None => y,
        }
    }
}

/// The projection, plus the adapter's low-rank update when it has one.
fn project<B: Backend>(proj: &Proj<B>, adapter: Option<&Lora<B>>, x: Tensor<B, 3>, precision: Precision) -> Tensor<B, 3> {
    match adapter {
        Some(a) => proj.forward(x.clone(), precision) + a.forward(x, precision),
        None => proj.forward(x, precision),
    }
}

/// Multi-head attention with grouped key/value heads.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: Proj<B>,
    pub k_proj: Proj<B>,
    pub v_proj: Proj<B>,
    pub o_proj: Proj<B>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl<B: Backend> Attention<B> {
    /// # Shapes
    /// - `x`: [batch, seq, hidden]
    /// - `rotary`: cos/sin [batch, 1, seq, head_dim] (None for learned positions)
    /// - `bias`: [batch, 1, 1, seq, past + seq] additive mask
    /// - returns [batch, seq, hidden]
    ///
    /// Projections, rotary and both attention products run in `precision` (keys and values are
    /// cached in it); the scores' scale, mask and softmax are f32. Returns the output in
    /// `precision`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rotary: Option<&(Tensor<B, 4>, Tensor<B, 4>)>,
        bias: Tensor<B, 5>,
        cache: Option<&mut KvCache<B>>,
        lora: Option<&BlockLora<B>>,
        precision: Precision,
    ) -> Result<Tensor<B, 3>> {
        let [batch, seq, _] = x.dims();
        let (h, kvh, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let adapter = |s: Slot| lora.and_then(|l| l.slot(s));
        let mut q = project(&self.q_proj, adapter(Slot::Q), x.clone(), precision);
        let mut k = project(&self.k_proj, adapter(Slot::K), x.clone(), precision);
        let mut v = project(&self.v_proj, adapter(Slot::V), x.clone(), precision);
        if let Some(qkv) = adapter(Slot::Qkv) {
            // GPT-2's fused c_attn adapter: one update, split into its q, k, v columns.
            let delta = qkv.forward(x, precision);
            let (qd, kvd) = (h * hd, kvh * hd);
            q = q + delta.clone().slice([0..batch, 0..seq, 0..qd]);
            k = k + delta.clone().slice([0..batch, 0..seq, qd..qd + kvd]);
            v = v + delta.slice([0..batch, 0..seq, qd + kvd..qd + 2 * kvd]);
        }
        // [batch, heads, seq, head_dim]
        let split = |t: Tensor<B, 3>, heads: usize| t.reshape([batch, seq, heads, hd]).swap_dims(1, 2);
        let (mut q, mut k, v) = (split(q, h), split(k, kvh), split(v, kvh));
        if let Some((cos, sin)) = rotary {
            let (cos, sin) = (in_compute(cos.clone(), precision), in_compute(sin.clone(), precision));
            q = apply_rotary(q, cos.clone(), sin.clone());
            k = apply_rotary(k, cos, sin);
        }
        // [batch, kv_heads, past + seq, head_dim]
        let (k, v) = match cache {
            Some(cache) => cache.append(k, v)?,
            None => (k, v),
        };
        let keys = k.dims()[2];
        // softmax(q kᵀ / √d + bias) v with scores and softmax in f32, the products in `precision`
        // (v's dtype): [batch, heads, seq, head_dim] → [batch, seq, heads * head_dim].
        let out = attention_output(q, k, v, 1.0 / (hd as f32).sqrt(), bias.reshape([batch, seq, keys]));
        let out = out.swap_dims(1, 2).reshape([batch, seq, h * hd]);
        Ok(project(&self.o_proj, adapter(Slot::O), out, precision))
    }
}

/// SwiGLU (`down(silu(gate(x)) · up(x))`, LLaMA) when `gate_proj` is present, otherwise
/// `down(gelu_tanh(up(x)))` (GPT-2's `c_fc` → `c_proj`).
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: Option<Proj<B>>,
    pub up_proj: Proj<B>,
    pub down_proj: Proj<B>,
}

impl<B: Backend> Mlp<B> {
    pub fn forward(&self, x: Tensor<B, 3>, lora: Option<&BlockLora<B>>, precision: Precision) -> Tensor<B, 3> {
        let adapter = |s: Slot| lora.and_then(|l| l.slot(s));
        let inner = match &self.gate_proj {
            Some(gate) => swiglu(project(gate, adapter(Slot::Gate), x.clone(), precision), project(&self.up_proj, adapter(Slot::Up), x, precision)),
            None => gelu_tanh(project(&self.up_proj, adapter(Slot::Up), x, precision)),
        };
        project(&self.down_proj, adapter(Slot::Down), inner, precision)
    }
}

/// GELU with the tanh approximation (HF `gelu_new`): 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let c = (2.0f64 / std::f64::consts::PI).sqrt();
    let inner = (x.clone() + x.clone().powi_scalar(3) * 0.044715) * c;
    x.clone() * 0.5 * (inner.tanh() + 1.0)
}

/// Pre-norm decoder block: x + attn(norm(x)), then x + mlp(norm(x)).
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub input_layernorm: Norm<B>,
    pub self_attn: Attention<B>,
    pub post_attention_layernorm: Norm<B>,
    pub mlp: Mlp<B>,
    /// LoRA adapters beside the block's projections (None: a plain block).
    pub lora: Option<BlockLora<B>>,
}

/// The block's projections with their slots, in block order (q, k, v, o, gate when SwiGLU, up,
/// down): the one place they are listed. `mut` gives mutable references.
macro_rules! block_projections {
    ($block:expr, $as_option:ident $(, $m:tt)?) => {{
        let (attn, mlp) = (&$($m)? $block.self_attn, &$($m)? $block.mlp);
        [
            Some((Slot::Q, &$($m)? attn.q_proj)),
            Some((Slot::K, &$($m)? attn.k_proj)),
            Some((Slot::V, &$($m)? attn.v_proj)),
            Some((Slot::O, &$($m)? attn.o_proj)),
            mlp.gate_proj.$as_option().map(|g| (Slot::Gate, g)),
            Some((Slot::Up, &$($m)? mlp.up_proj)),
            Some((Slot::Down, &$($m)? mlp.down_proj)),
        ]
        .into_iter()
        .flatten()
    }};
}

impl<B: Backend> Block<B> {
    /// A plain block (no adapters) from its two norms and `proj`, which makes the projection of each
    /// slot; it is called in block order (q, k, v, o, then gate for SwiGLU architectures, up, down), so
    /// a random initialisation draws its weights in that order.
    pub fn build<E>(
        cfg: &TransformerConfig,
        input_layernorm: Norm<B>,
        post_attention_layernorm: Norm<B>,
        mut proj: impl FnMut(Slot) -> std::result::Result<Proj<B>, E>,
    ) -> std::result::Result<Self, E> {
        let self_attn = Attention {
            q_proj: proj(Slot::Q)?,
            k_proj: proj(Slot::K)?,
            v_proj: proj(Slot::V)?,
            o_proj: proj(Slot::O)?,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
        };
        let gated = cfg.arch != Arch::Gpt2;
        let mlp = Mlp { gate_proj: if gated { Some(proj(Slot::Gate)?) } else { None }, up_proj: proj(Slot::Up)?, down_proj: proj(Slot::Down)? };
        Ok(Block { input_layernorm, self_attn, post_attention_layernorm, mlp, lora: None })
    }

    /// Every projection of the block with its slot, in block order.
    pub fn projections(&self) -> impl Iterator<Item = (Slot, &Proj<B>)> {
        block_projections!(self, as_ref)
    }

    /// Every projection of the block with its slot, mutable.
    pub fn projections_mut(&mut self) -> impl Iterator<Item = (Slot, &mut Proj<B>)> {
        block_projections!(self, as_mut, mut)
    }

    /// The projection of `slot` (Q … Down; GPT-2's fused `Qkv` is an adapter slot, not a projection).
    pub fn projection_mut(&mut self, slot: Slot) -> &mut Proj<B> {
        let found = self.projections_mut().find(|(s, _)| *s == slot);
        found.map(|(_, p)| p).unwrap_or_else(|| panic!("{slot:?} is not a projection of this block"))
    }

    fn forward(
        &self,
        x: Tensor<B, 3>,
        rotary: Option<&(Tensor<B, 4>, Tensor<B, 4>)>,
        bias: Tensor<B, 5>,
        cache: Option<&mut KvCache<B>>,
        precision: Precision,
    ) -> Result<Tensor<B, 3>> {
        let lora = self.lora.as_ref();
        // The residual stream is f32; the attention and MLP outputs come back in `precision`.
        let attn = self.self_attn.forward(self.input_layernorm.forward(x.clone()), rotary, bias, cache, lora, precision)?;
        let x = x + in_f32(attn);
        Ok(x.clone() + in_f32(self.mlp.forward(self.post_attention_layernorm.forward(x), lora, precision)))
    }
}

/// A decoder block with what its forward reads besides its input: the segment gradient
/// checkpointing keeps only the input of, and recomputes in backward.
#[derive(Clone, Debug)]
pub struct BlockSegment<B: Backend> {
    block: Block<B>,
    rotary: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    bias: Tensor<B, 5>,
    precision: Precision,
}

/// Names [`BlockSegment`] to [`Checkpointable`].
pub struct CheckpointedBlock;

impl Checkpointable for CheckpointedBlock {
    type On<B: Backend> = BlockSegment<B>;

    fn forward<B: Backend>(s: &BlockSegment<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
        // Without a cache a block has nothing that can fail.
        s.block.forward(x, s.rotary.as_ref(), s.bias.clone(), None, s.precision).expect("a block without a KV cache")
    }

    fn valid<B: AutodiffBackend>(s: &BlockSegment<B>) -> BlockSegment<B::InnerBackend> {
        BlockSegment {
            block: s.block.valid(),
            rotary: s.rotary.as_ref().map(|(cos, sin)| (cos.clone().inner(), sin.clone().inner())),
            bias: s.bias.clone().inner(),
            precision: s.precision,
        }
    }

    fn from_inner<B: AutodiffBackend>(s: BlockSegment<B::InnerBackend>) -> BlockSegment<B> {
        BlockSegment {
            block: Block::from_inner(s.block),
            rotary: s.rotary.map(|(cos, sin)| (Tensor::from_inner(cos), Tensor::from_inner(sin))),
            bias: Tensor::from_inner(s.bias),
            precision: s.precision,
        }
    }

    fn params<B: Backend>(s: &BlockSegment<B>, visit: &mut ParamTensors<B>) {
        s.block.visit(visit);
    }
}

/// The decoder body. `forward` returns hidden states after the final norm.
#[derive(Module, Debug)]
pub struct Transformer<B: Backend> {
    /// [vocab, hidden]
    pub embed_tokens: Param<Tensor<B, 2>>,
    /// [max_positions, hidden]; GPT-2's learned positions.
    pub embed_positions: Option<Param<Tensor<B, 2>>>,
    pub layers: Vec<Block<B>>,
    pub norm: Norm<B>,
    /// Rotary tables (LLaMA family).
    pub rope: Option<Rope<B>>,
    #[module(skip)]
    pub config: TransformerConfig,
    /// What matmuls and attention compute in (f32 unless a stage asks for bf16).
    #[module(skip)]
    pub precision: Precision,
    /// Keep only each block's input for backward and recompute the block there (training only;
    /// inference backends and cached generation run blocks as usual).
    #[module(skip)]
    pub gradient_checkpointing: bool,
}

impl<B: Backend> Transformer<B> {
    /// Hidden states for every position.
    ///
    /// `attention_mask` covers the cached tokens *and* the new ones (1 = real token, 0 = padding),
    /// as in transformers. Positions follow the mask (`cumsum(mask) − 1`), so left- or right-padded
    /// sequences get the same outputs as when run alone.
    ///
    /// # Shapes
    /// - `input_ids`: [batch, seq]
    /// - `attention_mask`: [batch, past + seq], where past = tokens already in `cache`
    /// - `cache`: one [`KvCache`] per layer, or None
    /// - returns [batch, seq, hidden]
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        mut cache: Option<&mut [KvCache<B>]>,
    ) -> Result<Tensor<B, 3>> {
        let [batch, seq] = input_ids.dims();
        let [mask_batch, total] = attention_mask.dims();
        let past = cache.as_ref().map_or(0, |c| c.first().map_or(0, KvCache::len));
        if mask_batch != batch || total != past + seq {
            return Err(ModelError::Invalid(format!(
                "attention_mask is [{mask_batch}, {total}], expected [{batch}, {}] (cached {past} + new {seq})",
                past + seq
            )));
        }
        if let Some(c) = cache.as_ref() {
            if c.len() != self.layers.len() {
                return Err(ModelError::Invalid(format!(
                    "{} KV caches for {} layers",
                    c.len(),
                    self.layers.len()
                )));
            }
        }
        if total > self.config.max_position_embeddings {
            return Err(ModelError::Invalid(format!(
                "sequence of {total} tokens exceeds the model's {} positions",
                self.config.max_position_embeddings
            )));
        }
        let device = input_ids.device();
        // [batch, seq]: position of each new token among the real tokens of its row.
        let positions = (attention_mask.clone().cumsum(1) - 1).clamp_min(0).slice([0..batch, past..total]);

        // The residual stream is f32 even when the tables are stored in bf16.
        let mut x = in_f32(burn::tensor::module::embedding(self.embed_tokens.val(), input_ids));
        if let Some(wpe) = &self.embed_positions {
            x = x + in_f32(burn::tensor::module::embedding(wpe.val(), positions.clone()));
        }
        let rotary = self.rope.as_ref().map(|r| r.tables(positions));
        let bias = attention_bias::<B>(attention_mask, past, seq, &device);

        for (i, layer) in self.layers.iter().enumerate() {
            x = match cache.as_deref_mut() {
                None if self.gradient_checkpointing => {
                    let segment = BlockSegment { block: layer.clone(), rotary: rotary.clone(), bias: bias.clone(), precision: self.precision };
                    let y = B::checkpointed::<CheckpointedBlock>(&segment, x.into_primitive().tensor());
                    Tensor::from_primitive(TensorPrimitive::Float(y))
                }
                layer_cache => layer.forward(x, rotary.as_ref(), bias.clone(), layer_cache.map(|c| &mut c[i]), self.precision)?,
            };
        }
        Ok(self.norm.forward(x))
    }

    /// One preallocated cache per layer, for `batch` rows of up to `max_len` tokens, in the
    /// model's compute dtype.
    pub fn new_cache(&self, batch: usize, max_len: usize, device: &B::Device) -> Vec<KvCache<B>> {
        let c = &self.config;
        (0..c.num_layers).map(|_| KvCache::new(batch, c.num_kv_heads, max_len, c.head_dim, self.precision, device)).collect()
    }

    /// Stores every block projection's weight as `quant` codes (the body must be frozen already);
    /// `setting` names what asked for it in an error (`lora.base_quant`, `--quant`).
    pub fn quantize_base(mut self, quant: BaseQuant, setting: &str) -> Result<Self> {
        let arch = self.config.arch;
        for (i, block) in self.layers.iter_mut().enumerate() {
            for (slot, proj) in block.projections_mut() {
                proj.quantize(quant).map_err(|e| ModelError::Invalid(format!("{setting}: layer {i} {}: {e}", slot.peft_name(arch))))?;
            }
        }
        Ok(self)
    }

    /// Whether the frozen weights are held as read (f32): not quantized ([`Transformer::quantize_base`])
    /// nor stored in a narrower compute precision ([`crate::precision`]).
    pub fn base_is_exact(&self) -> bool {
        self.precision == Precision::F32 && self.layers.iter().flat_map(Block::projections).all(|(_, p)| matches!(p, Proj::Dense(_)))
    }

    /// Bytes of the quantized projections' codes and scales.
    pub fn quantized_bytes(&self) -> usize {
        let quantized = |p: &&Proj<B>| matches!(p, Proj::Quantized(_));
        self.layers.iter().flat_map(Block::projections).map(|(_, p)| p).filter(quantized).map(Proj::weight_bytes).sum()
    }

    /// Bytes of the block projections' weights as stored (f32 or quantized).
    pub fn projection_bytes(&self) -> usize {
        self.layers.iter().flat_map(Block::projections).map(|(_, p)| p.weight_bytes()).sum()
    }

    /// The body computing in `precision` (weights untouched: see [`crate::precision`] for storing
    /// them in it).
    pub fn with_precision(self, precision: Precision) -> Self {
        Self { precision, ..self }
    }

    /// The body with gradient checkpointing on or off. Refused with LoRA dropout: the recompute
    /// would draw another mask than the forward.
    pub fn with_gradient_checkpointing(self, on: bool) -> Result<Self> {
        let dropout = self.layers.iter().filter_map(|l| l.lora.as_ref()).flat_map(|l| l.adapters()).any(|a| a.dropout.prob > 0.0);
        if on && dropout {
            return Err(ModelError::Invalid("gradient checkpointing with lora.dropout > 0 is not supported: set lora.dropout = 0".into()));
        }
        Ok(Self { gradient_checkpointing: on, ..self })
    }
}

/// Causal + padding mask as an additive bias.
///
/// # Shapes
/// - `attention_mask`: [batch, keys] with keys = past + seq
/// - returns [batch, 1, 1, seq, keys]: query i (absolute position past + i) sees key j iff
///   j ≤ past + i and mask[j] = 1.
fn attention_bias<B: Backend>(
    attention_mask: Tensor<B, 2, Int>,
    past: usize,
    seq: usize,
    device: &B::Device,
) -> Tensor<B, 5> {
    let [batch, keys] = attention_mask.dims();
    let causal: Vec<f32> = (0..seq)
        .flat_map(|i| (0..keys).map(move |j| if j <= past + i { 0.0 } else { MASKED }))
        .collect();
    let causal = Tensor::<B, 2>::from_data(TensorData::new(causal, [seq, keys]), device);
    let padding = (attention_mask.float().neg() + 1.0) * MASKED; // [batch, keys]
    causal.reshape([1, 1, 1, seq, keys]) + padding.reshape([batch, 1, 1, 1, keys])
}

impl TransformerConfig {
    /// A randomly initialised body (weights ~ N(0, 0.02), norms at 1), as transformers' `_init_weights`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Transformer<B> {
        let d = self.hidden_size;
        let normal = |shape: [usize; 2]| Param::from_tensor(Tensor::random(shape, Distribution::Normal(0.0, 0.02), device));
        let linear = |d_in: usize, d_out: usize, bias: bool| {
            Proj::from(Linear { weight: normal([d_in, d_out]), bias: bias.then(|| Param::from_tensor(Tensor::zeros([d_out], device))) })
        };
        let gpt2 = self.arch == Arch::Gpt2;
        let norm = || Norm {
            weight: Param::from_tensor(Tensor::ones([d], device)),
            bias: gpt2.then(|| Param::from_tensor(Tensor::zeros([d], device))),
            eps: self.norm_eps,
            centered: gpt2,
        };
        let layers = (0..self.num_layers)
            .map(|_| {
                let proj = |slot: Slot| -> std::result::Result<Proj<B>, Infallible> {
                    let (d_in, d_out) = slot.dims(self);
                    Ok(linear(d_in, d_out, slot.has_bias(self)))
                };
                let Ok(block) = Block::build(self, norm(), norm(), proj);
                block
            })
            .collect();
        Transformer {
            embed_tokens: normal([self.vocab_size, d]),
            embed_positions: gpt2.then(|| normal([self.max_position_embeddings, d])),
            layers,
            norm: norm(),
            rope: (!gpt2).then(|| Rope::from_config(self, device)),
            config: self.clone(),
            precision: Precision::F32,
            gradient_checkpointing: false,
        }
    }
}

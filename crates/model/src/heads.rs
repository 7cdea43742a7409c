//! Heads on top of the body: the unembedding (LM head) and a scalar head (reward / value), and the
//! two models they make: [`CausalLm`] (SFT, actor, reference) and [`RewardModel`] (RM, critic).

use burn::module::{Module, Param};
use burn::tensor::{Distribution, Int, Tensor};
use rlhf_runtime::quant::BaseQuant;
use rlhf_runtime::{Backend, Precision};

use crate::cache::KvCache;
use crate::config::TransformerConfig;
use crate::error::Result;
use crate::precision::{in_compute, in_f32, store_frozen_weights, store_weights};
use crate::proj::Proj;
use crate::transformer::Transformer;

/// Transformer body + unembedding. `lm_head` is None when tied to `model.embed_tokens`.
#[derive(Module, Debug)]
pub struct CausalLm<B: Backend> {
    pub model: Transformer<B>,
    /// [vocab, hidden], as `lm_head.weight` in HF checkpoints.
    pub lm_head: Option<Param<Tensor<B, 2>>>,
    /// The unembedding as q8 codes ([hidden, vocab]) for quantized inference (`--quant`): when set,
    /// the logits are computed from it (the embedding rows stay dense for the lookup).
    pub lm_head_codes: Option<Proj<B>>,
}

impl<B: Backend> CausalLm<B> {
    pub fn config(&self) -> &TransformerConfig {
        &self.model.config
    }

    /// The unembedding matrix [vocab, hidden].
    fn unembedding(&self) -> Tensor<B, 2> {
        match &self.lm_head {
            Some(w) => w.val(),
            None => self.model.embed_tokens.val(),
        }
    }

    /// Logits for the given hidden states: the product in the model's precision, the logits f32
    /// (log-softmax, losses and sampling read them).
    ///
    /// # Shapes
    /// - `hidden`: [batch, seq, hidden] → [batch, seq, vocab]
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        if let Some(codes) = &self.lm_head_codes {
            return in_f32(codes.forward(hidden, self.model.precision));
        }
        let [batch, seq, d] = hidden.dims();
        let rows = batch * seq;
        let precision = self.model.precision;
        let w = in_compute(self.unembedding(), precision);
        let vocab = w.dims()[0];
        let h = in_compute(hidden.reshape([rows, d]), precision);
        // W (the embedding itself when tied) is never copied: burn-flex hands transposed views to
        // gemm as strides. For a few rows (generation) W·hᵀ, transposed back, is faster (measured:
        // 2016 vs 1510 tokens/s in `rlhf bench generate`); for many rows (training) h·Wᵀ avoids
        // transposing [rows, vocab] logits.
        let logits = if rows <= 64 { w.matmul(h.transpose()).transpose() } else { h.matmul(w.transpose()) };
        in_f32(logits).reshape([batch, seq, vocab])
    }

    /// Logits at every position (see [`Transformer::forward`] for the mask convention).
    ///
    /// # Shapes
    /// - `input_ids`: [batch, seq]; `attention_mask`: [batch, past + seq] → [batch, seq, vocab]
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        cache: Option<&mut [KvCache<B>]>,
    ) -> Result<Tensor<B, 3>> {
        Ok(self.logits(self.model.forward(input_ids, attention_mask, cache)?))
    }

    /// The model computing in `precision`, its frozen weight matrices stored in it (all of them when
    /// nothing trains: a reference model; a LoRA base; none in full training).
    pub fn in_precision(self, precision: Precision) -> Self {
        let model = Self { model: self.model.with_precision(precision), ..self };
        store_frozen_weights(model, precision)
    }

    /// The model with gradient checkpointing of its blocks on or off (see
    /// [`Transformer::with_gradient_checkpointing`]).
    pub fn with_gradient_checkpointing(self, on: bool) -> Result<Self> {
        Ok(Self { model: self.model.with_gradient_checkpointing(on)?, ..self })
    }

    /// An inference copy computing in `precision` with every weight stored in it (generation).
    pub fn for_inference(self, precision: Precision) -> Self {
        store_weights(Self { model: self.model.with_precision(precision), ..self }, precision)
    }

    /// The model for quantized inference (`--quant`; None: unchanged): every block projection held
    /// as `quant` codes, and the unembedding as q8 codes whatever `quant` is (it is read whole for
    /// every token: a fifth of SmolLM2-135M's weights; 8 bits keep the logits close, see
    /// docs/quantization.md). Embeddings (one row looked up per token) and norms keep their dtype.
    pub fn quantized(self, quant: Option<BaseQuant>) -> Result<Self> {
        let Some(q) = quant else { return Ok(self) };
        let head = Proj::quantized_transpose_of(self.unembedding(), BaseQuant::Q8).map_err(|e| crate::ModelError::Invalid(format!("--quant: the LM head: {e}")))?;
        Ok(Self { model: self.model.quantize_base(q, "--quant")?, lm_head_codes: Some(head), ..self })
    }

    /// Bytes of every weight as stored (quantized projections as their codes and scales).
    pub fn weight_bytes(&self) -> usize {
        weight_bytes(self, &self.model) + self.lm_head_codes.as_ref().filter(|p| matches!(p, Proj::Quantized(_))).map_or(0, Proj::weight_bytes)
    }
}

/// Bytes of a model's weights as stored: its parameters by dtype, plus the codes and scales of its
/// quantized projections (constants, which a module visitor does not see).
fn weight_bytes<B: Backend, M: Module<B>>(m: &M, body: &Transformer<B>) -> usize {
    struct Count(usize);
    impl<B: Backend> burn::module::ModuleVisitor<B> for Count {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let t = p.val();
            self.0 += t.shape().num_elements() * t.dtype().size();
        }
    }
    let mut c = Count(0);
    m.visit(&mut c);
    c.0 + body.quantized_bytes()
}

/// A linear map from the hidden state to one number.
#[derive(Module, Debug)]
pub struct ScalarHead<B: Backend> {
    /// [1, hidden], as a PyTorch `nn.Linear(hidden, 1)` weight.
    pub weight: Param<Tensor<B, 2>>,
    /// [1]
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> ScalarHead<B> {
    /// Weight ~ N(0, 1/(hidden+1)), bias 0 (ColossalChat's reward-model head init).
    pub fn init(hidden: usize, device: &B::Device) -> Self {
        let std = (1.0 / (hidden as f64 + 1.0)).sqrt();
        Self {
            weight: Param::from_tensor(Tensor::random([1, hidden], Distribution::Normal(0.0, std), device)),
            bias: Param::from_tensor(Tensor::zeros([1], device)),
        }
    }

    /// In f32 whatever the precision: one dot product per token, and the score every objective reads.
    ///
    /// # Shapes
    /// - `hidden`: [batch, seq, hidden] → [batch, seq]
    pub fn forward(&self, hidden: Tensor<B, 3>) -> Tensor<B, 2> {
        let [batch, seq, d] = hidden.dims();
        let out = in_f32(hidden).reshape([batch * seq, d]).matmul(in_f32(self.weight.val()).transpose()) + in_f32(self.bias.val()).unsqueeze::<2>();
        out.reshape([batch, seq])
    }
}

/// Transformer body (no unembedding) + scalar head: the reward model and the PPO critic.
#[derive(Module, Debug)]
pub struct RewardModel<B: Backend> {
    pub model: Transformer<B>,
    pub head: ScalarHead<B>,
}

impl<B: Backend> RewardModel<B> {
    /// A scalar for every position.
    ///
    /// # Shapes
    /// - `input_ids`: [batch, seq]; `attention_mask`: [batch, seq] → [batch, seq]
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>, attention_mask: Tensor<B, 2, Int>) -> Result<Tensor<B, 2>> {
        Ok(self.head.forward(self.model.forward(input_ids, attention_mask, None)?))
    }

    /// One score per sequence: the output at its last real token (left or right padding).
    ///
    /// # Shapes
    /// - `input_ids`: [batch, seq]; `attention_mask`: [batch, seq] → [batch]
    pub fn score(&self, input_ids: Tensor<B, 2, Int>, attention_mask: Tensor<B, 2, Int>) -> Result<Tensor<B, 1>> {
        Ok(at_last_token(self.forward(input_ids, attention_mask.clone())?, attention_mask))
    }

    /// The model with gradient checkpointing of its blocks on or off.
    pub fn with_gradient_checkpointing(self, on: bool) -> Result<Self> {
        Ok(Self { model: self.model.with_gradient_checkpointing(on)?, ..self })
    }

    /// The model computing in `precision`, its frozen weight matrices stored in it (see
    /// [`CausalLm::in_precision`]).
    pub fn in_precision(self, precision: Precision) -> Self {
        let model = Self { model: self.model.with_precision(precision), ..self };
        store_frozen_weights(model, precision)
    }

    /// A scoring copy computing in `precision` with every weight matrix stored in it.
    pub fn for_inference(self, precision: Precision) -> Self {
        store_weights(Self { model: self.model.with_precision(precision), ..self }, precision)
    }

    /// Bytes of every weight as stored (see [`CausalLm::weight_bytes`]).
    pub fn weight_bytes(&self) -> usize {
        weight_bytes(self, &self.model)
    }

    /// The model with its block projections held as `quant` codes (see [`CausalLm::quantized`]).
    pub fn quantized(self, quant: Option<BaseQuant>) -> Result<Self> {
        Ok(match quant {
            Some(q) => Self { model: self.model.quantize_base(q, "--quant")?, ..self },
            None => self,
        })
    }
}

/// The value at the last real token (the last position whose mask is 1) of each row, for left or
/// right padding alike.
///
/// # Shapes
/// - `values`, `attention_mask`: [batch, seq] → [batch]
pub fn at_last_token<B: Backend>(values: Tensor<B, 2>, attention_mask: Tensor<B, 2, Int>) -> Tensor<B, 1> {
    let [batch, seq] = values.dims();
    let index = Tensor::<B, 1, Int>::arange(0..seq as i64, &values.device()).reshape([1, seq]).expand([batch, seq]);
    let last = (index * attention_mask).max_dim(1); // [batch, 1]
    values.gather(1, last).reshape([batch])
}

//! The memory plan: a stage's peak memory predicted from config.json files alone (no weights read),
//! printed as one table before anything is loaded, and checked against what the device has free.
//!
//! Every term is one small function of the shapes. The activation model counts the tensors our
//! transformer keeps for backward under burn's autodiff, per token and block (f32):
//! the input of both norms (the RMSNorm op keeps x and one number per row) and their outputs, which
//! the projections keep (4·h), the rotated q and k the score matmul keeps (q + kv; the rotary op
//! keeps only its tables), v (kv), the attention output the o-projection keeps (q), the attention
//! probabilities (heads·seq: the softmax op keeps only its output, and the product with v reads the
//! same tensor), and in the MLP tensors of width ffn: three for SwiGLU (gate and up, which the SwiGLU
//! op keeps, and their product, which the down projection keeps), five for GPT-2's GELU (its tanh
//! chain). The loss adds a few [tokens, vocab] tensors on top.
//!
//! Under bf16 mixed precision the residual stream the norms read and the probabilities stay f32;
//! every other kept tensor is bf16 (the norms' outputs are kept only as the bf16 copies the
//! projections read; the probabilities also as the bf16 copy the product with v reads), and each
//! trained weight matrix has a bf16 copy kept for backward; frozen weight matrices are stored in
//! bf16. With gradient checkpointing a block keeps only its input, and one block's activations exist
//! at a time (while it is recomputed in backward).

use std::fmt::Write as _;

use rlhf_model::lora::{Slot, LoraSpec};
use rlhf_model::{Arch, LoraConfig, TransformerConfig};
use rlhf_runtime::quant::{BaseQuant, QuantFormat};
use rlhf_runtime::{DeviceSpec, Precision};

/// Bytes of one f32 (trained parameters, gradients, optimizer moments, f32 activations).
const F32: u64 = 4;
/// Bytes of one bf16.
const BF16: u64 = 2;

/// Bytes per element of what `precision` computes in (matmul operands, bf16 activations, KV cache).
fn compute_bytes(precision: Precision) -> u64 {
    match precision {
        Precision::F32 => F32,
        Precision::Bf16 => BF16,
    }
}
/// Set aside for what the table does not itemise: the CUDA context or the CPU binary, allocator
/// slack, tokenizer and data.
pub const RUNTIME_RESERVE: u64 = 512 << 20;

/// Where a plan reads a model folder's shape: its config.json ([`shape_from_dir`]), or, in a
/// pipeline, the shape an earlier stage's output will have.
pub type ShapeOf<'a> = &'a dyn Fn(&std::path::Path) -> anyhow::Result<TransformerConfig>;

/// The shape in `dir/config.json`.
pub fn shape_from_dir(dir: &std::path::Path) -> anyhow::Result<TransformerConfig> {
    Ok(TransformerConfig::from_hf_dir(dir)?)
}

/// The knobs of precision and gradient checkpointing that are not on yet (`section`: where the
/// checkpointing switch lives, `train` or `ppo`).
pub fn compute_knobs(precision: Precision, checkpointing: bool, section: &str) -> Vec<String> {
    let mut knobs = Vec::new();
    if precision == Precision::F32 {
        knobs.push("precision = \"bf16\" (bf16 activations, frozen weights and KV cache)".to_string());
    }
    if !checkpointing {
        knobs.push(format!("{section}.gradient_checkpointing = true (one block's activations at a time)"));
    }
    knobs
}

/// The knob a `[lora]` section offers: adapters on a frozen base, then a quantized base.
pub fn lora_knob(lora: Option<&LoraConfig>, section: &str) -> String {
    match lora.map(|l| l.base_quant) {
        None => format!("add [{section}] (adapters on a frozen base: no gradients or optimizer state for it)"),
        Some(None) => format!("{section}.base_quant = \"nf4\" or \"q8\" (a quantized frozen base)"),
        Some(Some(q)) => format!("{section}.base_quant (now {q:?}), {section}.r, {section}.target_modules"),
    }
}

/// One line of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub item: String,
    pub detail: String,
    pub bytes: u64,
}

impl Row {
    pub fn new(item: impl Into<String>, detail: impl Into<String>, bytes: u64) -> Self {
        Self { item: item.into(), detail: detail.into(), bytes }
    }
}

/// A stage's predicted peak: what stays resident for the whole run, plus the largest of the phases
/// that follow one another (generation, scoring, an update), each freeing its memory before the next.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPlan {
    pub stage: String,
    pub resident: Vec<Row>,
    /// Each phase and its rows.
    pub phases: Vec<(String, Vec<Row>)>,
    /// The config keys that shrink the plan, with how.
    pub knobs: Vec<String>,
}

impl MemoryPlan {
    pub fn resident_bytes(&self) -> u64 {
        self.resident.iter().map(|r| r.bytes).sum()
    }

    /// The phase that needs the most, and its bytes.
    pub fn largest_phase(&self) -> Option<(&str, u64)> {
        self.phases.iter().map(|(n, rows)| (n.as_str(), rows.iter().map(|r| r.bytes).sum::<u64>())).max_by_key(|(_, b)| *b)
    }

    /// Resident + the largest phase + the runtime reserve.
    pub fn peak_bytes(&self) -> u64 {
        self.resident_bytes() + self.largest_phase().map_or(0, |(_, b)| b) + RUNTIME_RESERVE
    }

    /// The plan as a table.
    pub fn table(&self) -> String {
        let mut s = format!("memory plan: {}\n", self.stage);
        let mut line = |item: &str, detail: &str, bytes: u64| {
            let _ = writeln!(s, "  {item:<34} {detail:<58} {:>10}", gib(bytes));
        };
        for r in &self.resident {
            line(&r.item, &r.detail, r.bytes);
        }
        let largest = self.largest_phase().map(|(n, _)| n.to_string());
        for (name, rows) in &self.phases {
            let total: u64 = rows.iter().map(|r| r.bytes).sum();
            let mark = if largest.as_deref() == Some(name) { " (largest)" } else { "" };
            line(&format!("{name}{mark}"), "", total);
            for r in rows {
                line(&format!("  {}", r.item), &r.detail, r.bytes);
            }
        }
        line("runtime reserve", "context, allocator slack, tokenizer, data", RUNTIME_RESERVE);
        line("predicted peak", "resident + largest phase + reserve", self.peak_bytes());
        s
    }

    /// Refuses a plan larger than `available` bytes, naming the knobs (unless `force`).
    pub fn check(&self, device: DeviceSpec, available: Option<u64>, force: bool) -> anyhow::Result<()> {
        let Some(available) = available else {
            eprintln!("memory plan: free memory of {device} unknown; not checked");
            return Ok(());
        };
        let peak = self.peak_bytes();
        if peak <= available || force {
            if peak > available {
                eprintln!("memory plan: {} predicted but {device} has {} free; running anyway (--force)", gib(peak), gib(available));
            }
            return Ok(());
        }
        anyhow::bail!(
            "{}: the memory plan predicts a peak of {} but {device} has {} free; nothing was loaded.\n\
             To fit, change: {}.\n(--force runs anyway)",
            self.stage,
            gib(peak),
            gib(available),
            self.knobs.join("; ")
        )
    }
}

/// Bytes as GiB with two decimals (MiB below 1 GiB).
pub fn gib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// A `Key:   N kB` field of a /proc file, in bytes.
fn proc_kib_field(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.strip_prefix(key).is_some_and(|rest| rest.starts_with(':')))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

/// Bytes free on `device`: MemAvailable of /proc/meminfo on the CPU, `nvidia-smi`'s free memory on
/// a GPU; None where neither can be read.
pub fn available_bytes(device: DeviceSpec) -> Option<u64> {
    match device {
        DeviceSpec::Cpu => proc_kib_field("/proc/meminfo", "MemAvailable"),
        DeviceSpec::Cuda(i) => {
            let out = std::process::Command::new("nvidia-smi")
                .args(["--query-gpu=memory.free", "--format=csv,noheader,nounits", &format!("--id={i}")])
                .output()
                .ok()?;
            let mib: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
            Some(mib << 20)
        }
    }
}

/// This process's peak resident memory (VmHWM): the CPU backend's peak, to set beside a plan.
pub fn peak_resident_bytes() -> Option<u64> {
    proc_kib_field("/proc/self/status", "VmHWM")
}

/// How one model of a stage is held.
#[derive(Debug, Clone, PartialEq)]
pub enum Training {
    /// Every parameter trains (gradients + AdamW's two moments).
    Full,
    /// Adapters (and the scalar head of a reward model) train on a frozen base.
    Lora(LoraSpec, Option<BaseQuant>),
    /// Never updated.
    Frozen,
}

impl Training {
    /// The training of a model with an optional `[lora]` section. An adapter folder (`from`) is
    /// read for its rank and targets (a small JSON file, no weights).
    pub fn of(lora: Option<&LoraConfig>, arch: Arch) -> anyhow::Result<Self> {
        Ok(match lora {
            None => Training::Full,
            Some(l) => Training::Lora(LoraSpec::resolve(l, arch)?, l.base_quant),
        })
    }
}

/// A model of a stage: its shape, whether it has the LM head (causal LM) or a scalar head (reward
/// model, critic), and how it trains.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedModel {
    pub name: String,
    pub cfg: TransformerConfig,
    pub lm_head: bool,
    pub training: Training,
    pub precision: Precision,
    /// Gradient checkpointing of its blocks (when it trains).
    pub checkpointing: bool,
}

impl PlannedModel {
    /// Parameters held: the body, the LM head when untied (causal LM) or the scalar head.
    pub fn params(&self) -> u64 {
        let with_head = self.cfg.num_params() as u64;
        let lm_head = if self.cfg.tie_word_embeddings { 0 } else { (self.cfg.vocab_size * self.cfg.hidden_size) as u64 };
        if self.lm_head {
            with_head
        } else {
            with_head - lm_head + self.cfg.hidden_size as u64 + 1
        }
    }

    /// Bytes of its weights: trained ones f32; frozen ones (a frozen model, a LoRA base) with their
    /// matrices in the compute precision, vectors f32; a quantized base's block projections as codes.
    pub fn weight_bytes(&self) -> u64 {
        let frozen_matrix = compute_bytes(self.precision);
        let vectors = vector_params(&self.cfg);
        let frozen = (self.params() - vectors) * frozen_matrix + vectors * F32;
        match &self.training {
            Training::Full => self.params() * F32,
            Training::Frozen | Training::Lora(_, None) => frozen,
            Training::Lora(_, Some(quant)) => {
                let (f32_bytes, quant_bytes) = projection_bytes(&self.cfg, *quant);
                frozen - f32_bytes / F32 * frozen_matrix + quant_bytes
            }
        }
    }

    /// Parameters that train: all of them, or the adapters (+ the scalar head), or none.
    pub fn trained_params(&self) -> u64 {
        match &self.training {
            Training::Full => self.params(),
            Training::Lora(spec, _) => adapter_params(&self.cfg, spec) + if self.lm_head { 0 } else { self.cfg.hidden_size as u64 + 1 },
            Training::Frozen => 0,
        }
    }

    fn describe(&self) -> String {
        let how = match &self.training {
            Training::Full => "trains in full".to_string(),
            Training::Lora(spec, quant) => format!(
                "frozen {} base + LoRA r={} ({:.2}M trained)",
                quant.map_or(self.precision.to_string(), |q| format!("{q:?}").to_lowercase()),
                spec.r,
                self.trained_params() as f64 / 1e6
            ),
            Training::Frozen => format!("frozen, {}", self.precision),
        };
        format!("{:.1}M params, {how}", self.params() as f64 / 1e6)
    }
}

/// Parameters held in vectors — norm weights and biases, projection biases — which stay f32 in
/// every precision.
pub fn vector_params(cfg: &TransformerConfig) -> u64 {
    let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
    let (q, kv) = (cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim);
    let norm = if cfg.arch == Arch::Gpt2 { 2 * h } else { h };
    let qkv_bias = if cfg.qkv_bias { q + 2 * kv } else { 0 };
    let gate = if cfg.arch == Arch::Gpt2 { 0 } else { f };
    let out_bias = if cfg.out_bias { h + gate + f + h } else { 0 };
    ((2 * norm + qkv_bias + out_bias) * cfg.num_layers + norm) as u64
}

/// Adapter parameters: r·(d_in + d_out) per targeted projection per block.
pub fn adapter_params(cfg: &TransformerConfig, spec: &LoraSpec) -> u64 {
    let per_block: usize = spec.slots.iter().map(|&s| s.dims(cfg)).map(|(i, o)| spec.r * (i + o)).sum();
    (per_block * cfg.num_layers) as u64
}

/// Bytes of every block projection's weight in f32, and as `quant` codes with their scales.
pub fn projection_bytes(cfg: &TransformerConfig, quant: BaseQuant) -> (u64, u64) {
    let (mut dense, mut coded) = (0u64, 0u64);
    for &slot in Slot::of(cfg.arch) {
        let (i, o) = slot.dims(cfg);
        dense += (i * o) as u64 * F32;
        // A width the codes cannot pack is refused when the model loads; count it as f32 here.
        coded += QuantFormat::new(quant, i, o).map_or((i * o) as u64 * F32, |f| f.bytes() as u64);
    }
    (dense * cfg.num_layers as u64, coded * cfg.num_layers as u64)
}

/// Activation elements one token keeps per decoder block for backward, in a sequence of `seq`.
pub fn activations_per_token_block(cfg: &TransformerConfig, seq: usize) -> u64 {
    let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
    let (q, kv) = (cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim);
    (4 * h + 2 * q + 2 * kv + mlp_tensors(cfg) * f + cfg.num_heads * seq) as u64
}

/// [tokens, ffn] tensors the MLP keeps for backward: SwiGLU's gate, up and product, or GELU's chain.
fn mlp_tensors(cfg: &TransformerConfig) -> usize {
    if cfg.arch == Arch::Gpt2 {
        5
    } else {
        3
    }
}

/// Bytes one token keeps per decoder block for backward: all f32, or under bf16 the norms' inputs
/// (2·h) and the probabilities (heads·seq) in f32 and the rest in bf16, the norms' outputs (2·h)
/// and the probabilities' copy (heads·seq) included.
pub fn activation_bytes_per_token_block(cfg: &TransformerConfig, seq: usize, precision: Precision) -> u64 {
    match precision {
        Precision::F32 => activations_per_token_block(cfg, seq) * F32,
        Precision::Bf16 => {
            let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
            let (q, kv) = (cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim);
            let kept_f32 = 2 * h + cfg.num_heads * seq;
            let kept_bf16 = 2 * h + 2 * q + 2 * kv + mlp_tensors(cfg) * f + cfg.num_heads * seq;
            kept_f32 as u64 * F32 + kept_bf16 as u64 * BF16
        }
    }
}

/// Bytes of the activations a forward over `sequences` × `seq` tokens keeps for backward, plus the
/// final norm's input and output: every block's, or with checkpointing each block's f32 input and
/// one block's activations (the block being recomputed).
pub fn activation_bytes(cfg: &TransformerConfig, sequences: usize, seq: usize, precision: Precision, checkpointing: bool) -> u64 {
    let tokens = (sequences * seq) as u64;
    let (h, layers) = (cfg.hidden_size as u64, cfg.num_layers as u64);
    let block = activation_bytes_per_token_block(cfg, seq, precision);
    let blocks = if checkpointing { layers * h * F32 + block } else { layers * block };
    tokens * (blocks + 2 * h * F32)
}

/// Bytes of `copies` [tokens, vocab] f32 tensors (logits, log-softmax, its gradient, …).
pub fn logits_bytes(cfg: &TransformerConfig, sequences: usize, seq: usize, copies: u64) -> u64 {
    (sequences * seq * cfg.vocab_size) as u64 * copies * F32
}

/// Bytes of the key/value cache of a generation batch (held in the compute precision).
pub fn kv_cache_bytes(cfg: &TransformerConfig, batch: usize, len: usize, precision: Precision) -> u64 {
    (2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * batch * len) as u64 * compute_bytes(precision)
}

/// Bytes a forward without autodiff holds at once over `sequences` × `seq` tokens (scoring): one
/// block's working set (its widest tensors and the attention scores), plus the logits and their
/// log-softmax when the model has an LM head.
pub fn inference_bytes(cfg: &TransformerConfig, sequences: usize, seq: usize, lm_head: bool) -> u64 {
    let tokens = (sequences * seq) as u64;
    let block = tokens * (4 * cfg.hidden_size + 3 * cfg.intermediate_size + 3 * cfg.num_heads * seq) as u64 * F32;
    block + if lm_head { logits_bytes(cfg, sequences, seq, 2) } else { 0 }
}

/// The LM loss's [tokens, vocab] tensors at their peak: the logits (the log-prob op keeps them, with
/// one log-Σ-exp per row), their gradient, and one temporary where the op runs as a composition of
/// burn ops (CUDA); burn-flex's row loop needs only the first two.
pub const LM_LOSS_COPIES: u64 = 3;

/// Resident rows for a set of models: weights of each (a model sharing another's base adds only
/// what it does not share), and AdamW's two moments for what trains.
pub fn resident_rows(models: &[(PlannedModel, Option<&str>)]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (m, shares) in models {
        match shares {
            Some(owner) => rows.push(Row::new(format!("{} weights", m.name), format!("the {owner}'s base, adapters off"), 0)),
            None => rows.push(Row::new(format!("{} weights", m.name), m.describe(), m.weight_bytes())),
        }
    }
    for (m, _) in models.iter().filter(|(m, _)| m.trained_params() > 0) {
        rows.push(Row::new(format!("{} AdamW moments", m.name), format!("2 × {:.2}M f32", m.trained_params() as f64 / 1e6), 2 * m.trained_params() * F32));
    }
    rows
}

/// The rows of one update of `m`: its gradients, the activations of `sequences` × `seq` tokens,
/// and `logit_copies` [tokens, vocab] tensors when it predicts tokens.
pub fn update_rows(m: &PlannedModel, sequences: usize, seq: usize, logit_copies: u64) -> Vec<Row> {
    let checkpointing = if m.checkpointing { "gradient checkpointing" } else { "no checkpointing" };
    let mut rows = vec![
        Row::new(format!("{} gradients", m.name), format!("{:.2}M f32", m.trained_params() as f64 / 1e6), m.trained_params() * F32),
        Row::new(
            "activations",
            format!("{sequences} seq × {seq} tokens × {} blocks, {}, {checkpointing}", m.cfg.num_layers, m.precision),
            activation_bytes(&m.cfg, sequences, seq, m.precision, m.checkpointing),
        ),
    ];
    if m.precision == Precision::Bf16 && matches!(m.training, Training::Full) {
        let matrices = m.params() - vector_params(&m.cfg);
        rows.push(Row::new("bf16 weight copies", "each trained matrix cast for its products, kept for backward", matrices * BF16));
    }
    if logit_copies > 0 {
        // Under bf16 the product's bf16 output comes before the f32 logits.
        let bf16_logits = if m.precision == Precision::Bf16 { logits_bytes(&m.cfg, sequences, seq, 1) / F32 * BF16 } else { 0 };
        rows.push(Row::new(
            "logits + loss",
            format!("{logit_copies} × {sequences} × {seq} × vocab {} f32", m.cfg.vocab_size),
            logits_bytes(&m.cfg, sequences, seq, logit_copies) + bf16_logits,
        ));
    }
    if let Training::Lora(_, Some(_)) = &m.training {
        // One projection dequantized at a time, forward or backward.
        let widest = Slot::of(m.cfg.arch).iter().map(|&s| s.dims(&m.cfg)).map(|(i, o)| (i * o) as u64).max().unwrap_or(0);
        // Rebuilt in f32, then cast to bf16 under mixed precision.
        let bytes = if m.precision == Precision::Bf16 { F32 + BF16 } else { F32 };
        rows.push(Row::new("dequantized projection", "the widest, one at a time", widest * bytes));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama(layers: usize, h: usize, f: usize, heads: usize, kv: usize, vocab: usize) -> TransformerConfig {
        TransformerConfig::llama(vocab, h, f, layers, heads, kv, 2048)
    }


    /// By hand for 2 blocks, h = 8, ffn 16, 2 heads of 4 (1 kv head), vocab 10, untied:
    /// embed 80 + head 80 + per block (q 64 + k 32 + v 32 + o 64 + 3·128 MLP + 16 norms = 592) × 2 + 8.
    #[test]
    fn params_and_weights_by_hand() {
        let cfg = llama(2, 8, 16, 2, 1, 10);
        let lm = PlannedModel { name: "policy".into(), cfg: cfg.clone(), lm_head: true, training: Training::Full, precision: Precision::F32, checkpointing: false };
        assert_eq!(lm.params(), 80 + 80 + 2 * 592 + 8);
        assert_eq!(lm.weight_bytes(), 4 * 1352);
        // The reward model: no LM head, a scalar head of 8 + 1.
        let rm = PlannedModel { lm_head: false, ..lm.clone() };
        assert_eq!(rm.params(), 1352 - 80 + 9);
        // LoRA r = 2 on q and down: 2·(8 + 8) + 2·(16 + 8) = 80 per block, 160 in all; the RM's head trains too.
        let spec = LoraSpec::resolve(&LoraConfig { r: 2, target_modules: vec!["q_proj".into(), "down_proj".into()], ..Default::default() }, Arch::Llama).unwrap();
        let lora = PlannedModel { training: Training::Lora(spec.clone(), None), ..lm.clone() };
        assert_eq!(lora.trained_params(), 160);
        assert_eq!(PlannedModel { training: Training::Lora(spec, None), ..rm }.trained_params(), 169);
    }

    /// Activations by hand: h = 8, q = 8, kv = 4, ffn 16, 2 heads, seq 5:
    /// 4·8 + 2·8 + 2·4 + 3·16 + 2·5 = 114 per token and block; 3 sequences × 5 tokens ×
    /// (2 × 114 + 2·8) × 4 bytes.
    #[test]
    fn activations_kv_cache_and_logits_by_hand() {
        let cfg = llama(2, 8, 16, 2, 1, 10);
        assert_eq!(activations_per_token_block(&cfg, 5), 114);
        assert_eq!(activation_bytes(&cfg, 3, 5, Precision::F32, false), 15 * (228 + 16) * 4);
        // GPT-2's GELU keeps five ffn-wide tensors: 2·16 more.
        let gpt2 = TransformerConfig { arch: Arch::Gpt2, ..cfg.clone() };
        assert_eq!(activations_per_token_block(&gpt2, 5), 146);
        // bf16: f32 2·8 + 2·5 = 26, bf16 2·8 + 2·8 + 2·4 + 3·16 + 2·5 = 98: 26·4 + 98·2 = 300 bytes.
        assert_eq!(activation_bytes_per_token_block(&cfg, 5, Precision::Bf16), 300);
        assert_eq!(activation_bytes(&cfg, 3, 5, Precision::Bf16, false), 15 * (2 * 300 + 16 * 4));
        // Checkpointing: each block's f32 input (8 · 4 bytes) + one block's activations.
        assert_eq!(activation_bytes(&cfg, 3, 5, Precision::F32, true), 15 * (2 * 32 + 114 * 4 + 16 * 4));
        // k and v: 2 × 2 blocks × 1 kv head × 4 wide × batch 3 × 7 positions × 4 bytes (2 in bf16).
        assert_eq!(kv_cache_bytes(&cfg, 3, 7, Precision::F32), 2 * 2 * 4 * 3 * 7 * 4);
        assert_eq!(kv_cache_bytes(&cfg, 3, 7, Precision::Bf16), 2 * 2 * 4 * 3 * 7 * 2);
        assert_eq!(logits_bytes(&cfg, 3, 5, 4), 15 * 10 * 4 * 4);
    }

    /// q8 codes: a [d_in, d_out] weight takes d_in·d_out bytes + one f32 absmax per 64 rows per column.
    #[test]
    fn quantized_projection_bytes() {
        let cfg = llama(1, 128, 256, 4, 4, 10);
        let (dense, q8) = projection_bytes(&cfg, BaseQuant::Q8);
        // q, k, v, o: 128×128; gate, up: 128×256; down: 256×128.
        let weights = 4 * 128 * 128 + 3 * 128 * 256;
        assert_eq!(dense, 4 * weights as u64);
        let scales = 4 * (2 * 128) + 2 * (2 * 256) + 4 * 128;
        assert_eq!(q8, (weights + 4 * scales) as u64);
    }

    #[test]
    fn a_plan_larger_than_the_device_names_its_knobs() {
        let plan = MemoryPlan {
            stage: "sft".into(),
            resident: vec![Row::new("policy weights", "", 3 << 30)],
            phases: vec![("training step".into(), vec![Row::new("activations", "", 2 << 30)]), ("eval".into(), vec![Row::new("x", "", 1 << 30)])],
            knobs: vec!["train.micro_batch_size (8)".into()],
        };
        assert_eq!(plan.largest_phase(), Some(("training step", 2 << 30)));
        assert_eq!(plan.peak_bytes(), (5 << 30) + RUNTIME_RESERVE);
        assert!(plan.check(DeviceSpec::Cpu, Some(6 << 30), false).is_ok());
        let e = plan.check(DeviceSpec::Cpu, Some(4 << 30), false).unwrap_err().to_string();
        assert!(e.contains("train.micro_batch_size (8)") && e.contains("5.50 GiB") && e.contains("4.00 GiB"), "{e}");
        assert!(plan.check(DeviceSpec::Cpu, Some(4 << 30), true).is_ok());
        assert!(plan.table().contains("training step (largest)"));
    }
}

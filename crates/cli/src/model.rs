//! `rlhf model info` and `rlhf model logits`.

use std::path::Path;

use anyhow::{bail, Context};
use burn::tensor::{Int, Tensor, TensorData};
use rlhf_runtime::Backend;
use rlhf_runtime::{dispatch, Inference, InferenceTask, Precision, Runtime};
use rlhf_model::hf::{write_safetensors, HostTensor, SafetensorsFiles, WeightDtype};
use rlhf_model::{CausalLm, HfConfig, TransformerConfig};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

pub fn info(dir: &Path, json: bool) -> anyhow::Result<()> {
    let cfg = TransformerConfig::from_hf_dir(dir)?;
    let declared = HfConfig::load(&dir.join("config.json"))?.declared_dtype().map(str::to_string);
    let files = SafetensorsFiles::open_dir(dir)?;
    let dtypes = files.dtypes().into_iter().map(|(d, n)| format!("{d} ({n} tensors)")).collect::<Vec<_>>().join(", ");
    let params = cfg.num_params();
    if json {
        let v = serde_json::json!({
            "architecture": cfg.arch,
            "parameters": params,
            "dtype": dtypes,
            "config_dtype": declared,
            "vocab_size": cfg.vocab_size,
            "context_length": cfg.max_position_embeddings,
            "hidden_size": cfg.hidden_size,
            "layers": cfg.num_layers,
            "heads": cfg.num_heads,
            "kv_heads": cfg.num_kv_heads,
            "tied_embeddings": cfg.tie_word_embeddings,
        });
        println!("{v}");
    } else {
        println!("architecture    {:?}", cfg.arch);
        println!("parameters      {params} ({:.2} M)", params as f64 / 1e6);
        println!("dtype           {dtypes}{}", declared.map(|d| format!(" (config.json: {d})")).unwrap_or_default());
        println!("vocab           {}", cfg.vocab_size);
        println!("context length  {}", cfg.max_position_embeddings);
        println!(
            "shape           {} layers, hidden {}, {} heads ({} kv) × {}, mlp {}",
            cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
        );
        println!("tied embeddings {}", cfg.tie_word_embeddings);
    }
    Ok(())
}

/// `input_ids` and `attention_mask` [B, T] from a safetensors file (int64 or int32).
fn read_batch(path: &Path) -> anyhow::Result<(Vec<i64>, Vec<i64>, [usize; 2])> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes).with_context(|| format!("{}: invalid safetensors file", path.display()))?;
    let read = |name: &str| -> anyhow::Result<(Vec<i64>, Vec<usize>)> {
        let t = st.tensor(name).with_context(|| format!("{}: no tensor {name:?}", path.display()))?;
        let data = match t.dtype() {
            Dtype::I64 => t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect(),
            Dtype::I32 => t.data().chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64).collect(),
            other => bail!("{}: {name} has dtype {other:?}, expected int64", path.display()),
        };
        Ok((data, t.shape().to_vec()))
    };
    let (ids, shape) = read("input_ids")?;
    let (mask, mask_shape) = read("attention_mask")?;
    if shape.len() != 2 || shape != mask_shape {
        bail!("{}: input_ids {shape:?} and attention_mask {mask_shape:?} must both be [B, T]", path.display());
    }
    if let Some(m) = mask.iter().find(|&&m| m != 0 && m != 1) {
        bail!("{}: attention_mask holds {m}, expected 0 or 1", path.display());
    }
    Ok((ids, mask, [shape[0], shape[1]]))
}

struct LogitsTask<'a> {
    dir: &'a Path,
    precision: Precision,
    quant: Option<rlhf_runtime::quant::BaseQuant>,
    ids: Vec<i64>,
    mask: Vec<i64>,
    shape: [usize; 2],
}

impl InferenceTask for LogitsTask<'_> {
    type Output = anyhow::Result<HostTensor>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let model = CausalLm::<B>::from_hf_dir(self.dir, &device)?.quantized(self.quant)?.for_inference(self.precision);
        let vocab = model.config().vocab_size as i64;
        if let Some(t) = self.ids.iter().find(|&&t| t < 0 || t >= vocab) {
            bail!("input_ids holds {t}, outside the vocabulary of {vocab}");
        }
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(self.ids, self.shape), &device);
        let mask = Tensor::<B, 2, Int>::from_data(TensorData::new(self.mask, self.shape), &device);
        Ok(HostTensor::from_tensor(model.forward(ids, mask, None)?))
    }
}

/// The logits (f32, whatever `precision` computed them in) of the batch in `input`, to `output`.
pub fn logits(dir: &Path, input: &Path, output: &Path, runtime: Runtime, quant: Option<rlhf_runtime::quant::BaseQuant>) -> anyhow::Result<()> {
    let (ids, mask, shape) = read_batch(input)?;
    let logits = dispatch(runtime, Inference(LogitsTask { dir, precision: runtime.precision, quant, ids, mask, shape }))??;
    write_safetensors(output, &[("logits".to_string(), logits)], WeightDtype::F32)?;
    Ok(())
}

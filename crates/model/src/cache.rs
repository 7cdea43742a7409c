//! Preallocated key/value cache for one attention layer.

use burn::tensor::{DType, Tensor};
use rlhf_runtime::{Backend, Precision};

use crate::error::{ModelError, Result};

/// Keys and values of the tokens seen so far, written in place with `slice_assign`.
/// Not a module field: generation owns the caches and passes `&mut [KvCache]` to forward.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    /// [batch, kv_heads, capacity, head_dim]
    keys: Tensor<B, 4>,
    /// [batch, kv_heads, capacity, head_dim]
    values: Tensor<B, 4>,
    len: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache holding keys and values in `precision`'s dtype.
    pub fn new(batch: usize, kv_heads: usize, capacity: usize, head_dim: usize, precision: Precision, device: &B::Device) -> Self {
        let shape = [batch, kv_heads, capacity, head_dim];
        let dtype = DType::from(precision.dtype());
        Self { keys: Tensor::zeros(shape, (device, dtype)), values: Tensor::zeros(shape, (device, dtype)), len: 0 }
    }

    /// Tokens cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.keys.dims()[2]
    }

    /// Keeps the rows `rows` (in that order; a row may repeat): [len(rows), kv_heads, capacity, head_dim].
    pub fn select_rows(&mut self, rows: Tensor<B, 1, burn::tensor::Int>) {
        self.keys = self.keys.clone().select(0, rows.clone());
        self.values = self.values.clone().select(0, rows);
    }

    /// Appends the new tokens' keys and values and returns everything cached so far.
    /// A full cache is an error, never a silent slide.
    ///
    /// # Shapes
    /// - `k`, `v`: [batch, kv_heads, seq, head_dim]
    /// - returns two [batch, kv_heads, len + seq, head_dim]
    pub fn append(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Result<(Tensor<B, 4>, Tensor<B, 4>)> {
        let [b, h, seq, d] = k.dims();
        let [cb, ch, capacity, cd] = self.keys.dims();
        if (b, h, d) != (cb, ch, cd) {
            return Err(ModelError::Invalid(format!(
                "KV cache is [{cb}, {ch}, {capacity}, {cd}], new keys are [{b}, {h}, {seq}, {d}]"
            )));
        }
        let end = self.len + seq;
        if end > capacity {
            return Err(ModelError::Invalid(format!(
                "KV cache full: {} cached + {seq} new > capacity {capacity}",
                self.len
            )));
        }
        let range = [0..b, 0..h, self.len..end, 0..d];
        // Take the buffers out so they are uniquely owned and can be written in place.
        let placeholder = || Tensor::<B, 4>::empty([0, 0, 0, 0], &k.device());
        let keys = std::mem::replace(&mut self.keys, placeholder());
        let values = std::mem::replace(&mut self.values, placeholder());
        self.keys = keys.slice_assign(range.clone(), k);
        self.values = values.slice_assign(range, v);
        self.len = end;
        let all = [0..b, 0..h, 0..end, 0..d];
        Ok((self.keys.clone().slice(all.clone()), self.values.clone().slice(all)))
    }
}

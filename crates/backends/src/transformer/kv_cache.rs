//! Per-layer key/value state that grows with every fed token and can be cut back to any
//! earlier length (rollback after rejected drafts).

use burn::tensor::Tensor;

/// Keys and values of one layer: `[kv_heads, len, head_dim]` each (RoPE already applied).
#[derive(Clone)]
struct LayerKv {
    keys: Tensor<3>,
    values: Tensor<3>,
}

/// The KV cache of a whole model.
#[derive(Clone)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    len: usize,
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        KvCache {
            layers: vec![None; n_layers],
            len: 0,
        }
    }

    /// Tokens held (committed by [`KvCache::commit`]).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append the new keys/values of `layer` and return all of them (past and new).
    pub fn append(
        &mut self,
        layer: usize,
        keys: Tensor<3>,
        values: Tensor<3>,
    ) -> (Tensor<3>, Tensor<3>) {
        let merged = match self.layers[layer].take() {
            None => LayerKv { keys, values },
            Some(past) => LayerKv {
                keys: Tensor::cat(vec![past.keys, keys], 1),
                values: Tensor::cat(vec![past.values, values], 1),
            },
        };
        let out = (merged.keys.clone(), merged.values.clone());
        self.layers[layer] = Some(merged);
        out
    }

    /// Record that every layer now holds `len` tokens.
    pub fn commit(&mut self, len: usize) {
        self.len = len;
    }

    /// Cut every layer back to `len` tokens (also undoes appends that were never committed).
    /// `len` must not exceed what the layers hold.
    pub fn truncate(&mut self, len: usize) {
        for slot in &mut self.layers {
            *slot = match slot.take() {
                None => None,
                Some(_) if len == 0 => None,
                Some(kv) if kv.keys.dims()[1] <= len => Some(kv),
                Some(kv) => Some(LayerKv {
                    keys: kv.keys.narrow(1, 0, len),
                    values: kv.values.narrow(1, 0, len),
                }),
            };
        }
        self.len = self.len.min(len);
    }
}

//! Plain data shared by the traits: token ids and attention maps.

use serde::{Deserialize, Serialize};

/// A token id in the shared vocabulary of the draft and the target model.
pub type TokenId = u32;

/// Attention probabilities that the newest position pays to every context position,
/// for the layers a consumer asked for.
///
/// `layers[l].heads[h][j]` is the probability that head `h` of layer `layers[l].layer`
/// puts on position `j` (0 = first token of the context). Each head row sums to 1 and has
/// one entry per context position, the newest position included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttentionMap {
    pub layers: Vec<LayerAttention>,
}

/// Attention rows of one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerAttention {
    /// Index of the layer in the model (0 = first).
    pub layer: usize,
    /// One row per head, each of the context length.
    pub heads: Vec<Vec<f32>>,
}

impl AttentionMap {
    /// Context length the rows cover (0 when empty).
    pub fn context_len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.heads.first())
            .map_or(0, Vec::len)
    }
}

/// Which layers a draft model should return attention for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LayerSelection {
    /// Only the last layer (the default of the importance filter).
    #[default]
    Last,
    /// Every layer.
    All,
    /// Explicit layer indices; negative values count from the end (-1 = last).
    Indices(Vec<i64>),
}

impl LayerSelection {
    /// Resolve to concrete, sorted, de-duplicated layer indices for a model of `n_layers`.
    pub fn resolve(&self, n_layers: usize) -> crate::Result<Vec<usize>> {
        let mut out = match self {
            LayerSelection::Last => vec![n_layers.saturating_sub(1)],
            LayerSelection::All => (0..n_layers).collect(),
            LayerSelection::Indices(ix) => {
                let mut v = Vec::with_capacity(ix.len());
                for &i in ix {
                    let r = if i < 0 { n_layers as i64 + i } else { i };
                    if r < 0 || r >= n_layers as i64 {
                        return Err(crate::HlmError::invalid(
                            "layers",
                            i,
                            format!(
                                "the model has {n_layers} layers (valid: 0..{n_layers} or -{n_layers}..-1)"
                            ),
                        ));
                    }
                    v.push(r as usize);
                }
                v
            }
        };
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}

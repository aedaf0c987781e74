//! Importance from attention: how much the newest position attends to the drafted token.
//!
//! The paper's exact definition is not public (see `shared/research/paper.md` §4.4); this scorer
//! makes every choice a parameter. Defaults: last layer, mean over heads, attention sink
//! (position 0) excluded, score = the weight the newest query puts on the newest token.

use hlm_core::{
    AttentionMap, HlmError, ImportanceScorer, ImportanceSignal, LayerSelection, Result,
};
use serde::{Deserialize, Serialize};

/// How heads (and layers) are combined into one attention row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HeadAggregation {
    #[default]
    Mean,
    Max,
}

/// Which value of the aggregated row is the token's score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ImportanceTarget {
    /// Attention the newest position (the draft token, just fed) pays to itself.
    #[default]
    Newest,
    /// The largest weight the newest position pays to any context position (how focused it is).
    MaxWeight,
}

/// Attention-based importance scorer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttentionImportance {
    /// Layers to read (default: the last one).
    pub layers: LayerSelection,
    /// How heads are combined.
    pub heads: HeadAggregation,
    /// How layers are combined (when several are read).
    pub layer_aggregation: HeadAggregation,
    /// Drop position 0 (the attention sink) from the row.
    pub exclude_sink: bool,
    /// What the score is.
    pub target: ImportanceTarget,
}

impl Default for AttentionImportance {
    fn default() -> Self {
        AttentionImportance {
            layers: LayerSelection::Last,
            heads: HeadAggregation::Mean,
            layer_aggregation: HeadAggregation::Mean,
            exclude_sink: true,
            target: ImportanceTarget::Newest,
        }
    }
}

fn combine(rows: &[Vec<f32>], how: HeadAggregation, n: usize) -> Vec<f32> {
    let mut out = vec![
        if how == HeadAggregation::Max {
            f32::NEG_INFINITY
        } else {
            0.0
        };
        n
    ];
    for r in rows {
        for (o, &v) in out.iter_mut().zip(r) {
            match how {
                HeadAggregation::Mean => *o += v,
                HeadAggregation::Max => *o = o.max(v),
            }
        }
    }
    if how == HeadAggregation::Mean && !rows.is_empty() {
        let inv = 1.0 / rows.len() as f32;
        out.iter_mut().for_each(|o| *o *= inv);
    }
    out
}

#[typetag::serde(name = "attention")]
impl ImportanceScorer for AttentionImportance {
    fn layers(&self) -> LayerSelection {
        self.layers.clone()
    }

    fn score(&self, attention: &AttentionMap) -> Result<ImportanceSignal> {
        let n = attention.context_len();
        if n == 0 || attention.layers.is_empty() {
            return Err(HlmError::Filter(
                "the draft model returned no attention".into(),
            ));
        }
        let mut layer_rows = Vec::with_capacity(attention.layers.len());
        for l in &attention.layers {
            if l.heads.is_empty() || l.heads.iter().any(|h| h.len() != n) {
                return Err(HlmError::Filter(format!(
                    "attention of layer {} has rows of unequal length (expected {n})",
                    l.layer
                )));
            }
            layer_rows.push(combine(&l.heads, self.heads, n));
        }
        let row = combine(&layer_rows, self.layer_aggregation, n);
        let population: Vec<f32> = if self.exclude_sink && n > 1 {
            row[1..].to_vec()
        } else {
            row
        };
        let score = match self.target {
            ImportanceTarget::Newest => population.last().copied().unwrap_or(0.0),
            ImportanceTarget::MaxWeight => population.iter().copied().fold(0.0, f32::max),
        };
        Ok(ImportanceSignal { score, population })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hlm_core::LayerAttention;

    fn map() -> AttentionMap {
        AttentionMap {
            layers: vec![
                LayerAttention {
                    layer: 0,
                    heads: vec![vec![0.7, 0.1, 0.2], vec![0.5, 0.3, 0.2]],
                },
                LayerAttention {
                    layer: 1,
                    heads: vec![vec![0.6, 0.0, 0.4], vec![0.2, 0.2, 0.6]],
                },
            ],
        }
    }

    #[test]
    fn hand_computed_scores() {
        let s = AttentionImportance::default().score(&map()).unwrap();
        // mean over heads per layer: l0 = (0.6, 0.2, 0.2), l1 = (0.4, 0.1, 0.5); mean over
        // layers = (0.5, 0.15, 0.35); sink dropped -> (0.15, 0.35); newest = 0.35.
        assert!((s.score - 0.35).abs() < 1e-6);
        assert_eq!(s.population.len(), 2);
        assert!((s.population[0] - 0.15).abs() < 1e-6);
        let max = AttentionImportance {
            heads: HeadAggregation::Max,
            layer_aggregation: HeadAggregation::Max,
            exclude_sink: false,
            target: ImportanceTarget::MaxWeight,
            ..Default::default()
        };
        let s = max.score(&map()).unwrap();
        assert!((s.score - 0.7).abs() < 1e-6);
        assert_eq!(s.population.len(), 3);
    }

    #[test]
    fn ragged_attention_is_an_error() {
        let mut m = map();
        m.layers[1].heads[0].pop();
        let e = AttentionImportance::default()
            .score(&m)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unequal length"), "{e}");
    }
}

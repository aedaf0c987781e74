//! BERTScore (Zhang et al., ICLR 2020), as the `bert-score` package computes it without
//! baseline rescaling:
//!
//! - each text is tokenized with `[CLS]`/`[SEP]` and encoded; the hidden states of layer `L`
//!   are normalised to unit length;
//! - precision = weighted mean over candidate tokens of the best cosine with any reference
//!   token; recall = the same from the reference side; F1 = 2PR / (P + R);
//! - weights are 1 per token (or IDF over the reference set, `log((M + 1) / (df + 1))`),
//!   and 0 for `[CLS]` and `[SEP]`, which still take part in the maxima, as in `bert-score`.
//!
//! One difference on purpose: `bert-score` multiplies similarities by the padding mask of its
//! batch, so a padded position offers a similarity of 0 to each maximum and a token whose best
//! real match is negative scores 0; its scores then depend on which pairs share a batch (up to
//! 0.07 on our fixtures). Here every pair is scored alone, which equals `bert-score` with
//! `batch_size=1` (agreement 3e-7, crates/eval/tests/bertscore.rs).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use hlm_backends::bert::BertEncoder;
use hlm_core::{HlmError, Result};
use serde::{Deserialize, Serialize};

/// Precision, recall and F1 of one candidate against one reference.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BertScore {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// Token weights from document frequencies over a reference set.
#[derive(Debug, Clone, Default)]
pub struct IdfWeights {
    weights: HashMap<u32, f64>,
    unseen: f64,
}

impl IdfWeights {
    /// `log((M + 1) / (df + 1))` for each token of the `M` tokenized references.
    pub fn from_token_sets<'a>(refs: impl IntoIterator<Item = &'a [u32]>) -> Self {
        let mut df: HashMap<u32, usize> = HashMap::new();
        let mut m = 0usize;
        for ids in refs {
            m += 1;
            for &t in ids.iter().collect::<HashSet<_>>() {
                *df.entry(t).or_default() += 1;
            }
        }
        let n = (m + 1) as f64;
        IdfWeights {
            weights: df
                .into_iter()
                .map(|(t, c)| (t, (n / (c + 1) as f64).ln()))
                .collect(),
            unseen: n.ln(),
        }
    }

    fn weight(&self, t: u32) -> f64 {
        self.weights.get(&t).copied().unwrap_or(self.unseen)
    }
}

/// BERTScore with one encoder and one layer.
pub struct BertScorer {
    encoder: BertEncoder,
    layer: usize,
    idf: Option<IdfWeights>,
    special: [u32; 2],
}

/// A tokenized, encoded text: ids and unit-length embeddings.
struct Encoded {
    ids: Vec<u32>,
    emb: Vec<Vec<f32>>,
}

impl BertScorer {
    /// Score with the hidden states of `layer` (1..=layers) of `encoder`.
    pub fn new(encoder: BertEncoder, layer: usize) -> Result<Self> {
        let n = encoder.config().num_hidden_layers;
        if layer == 0 || layer > n {
            return Err(HlmError::invalid(
                "layer",
                layer,
                format!("BERTScore needs a layer between 1 and {n}"),
            ));
        }
        // The tokenizer adds [CLS] first and [SEP] last around any text.
        let probe = encoder.tokenize("a")?;
        let (Some(&cls), Some(&sep)) = (probe.first(), probe.last()) else {
            return Err(HlmError::Model(
                "the tokenizer adds no special tokens".into(),
            ));
        };
        Ok(BertScorer {
            encoder,
            layer,
            idf: None,
            special: [cls, sep],
        })
    }

    /// Load a BERT folder (e.g. the fetched `all-minilm-l6-v2`) on the CPU.
    pub fn load(folder: &Path, layer: usize) -> Result<Self> {
        let device = hlm_backends::parse_device("cpu")?;
        Self::new(BertEncoder::load(folder, &device)?, layer)
    }

    /// Weight tokens by IDF over these reference texts (`None`: uniform weights).
    pub fn set_idf(&mut self, references: Option<&[&str]>) -> Result<()> {
        self.idf = match references {
            None => None,
            Some(refs) => {
                let ids = refs
                    .iter()
                    .map(|r| self.encoder.tokenize(r.trim()))
                    .collect::<Result<Vec<_>>>()?;
                Some(IdfWeights::from_token_sets(ids.iter().map(Vec::as_slice)))
            }
        };
        Ok(())
    }

    fn encode(&self, text: &str) -> Result<Encoded> {
        let ids = self.encoder.tokenize(text.trim())?;
        let mut emb = self.encoder.hidden_states(&ids, self.layer)?;
        for v in &mut emb {
            let norm = v
                .iter()
                .map(|x| x * x)
                .sum::<f32>()
                .sqrt()
                .max(f32::MIN_POSITIVE);
            v.iter_mut().for_each(|x| *x /= norm);
        }
        Ok(Encoded { ids, emb })
    }

    fn weight(&self, t: u32) -> f64 {
        if self.special.contains(&t) {
            0.0
        } else {
            self.idf.as_ref().map_or(1.0, |w| w.weight(t))
        }
    }

    /// Weighted mean over `a`'s tokens of their best cosine with any token of `b`.
    fn greedy(&self, a: &Encoded, b: &Encoded) -> f64 {
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for (t, x) in a.ids.iter().zip(&a.emb) {
            let best = b
                .emb
                .iter()
                .map(|y| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>())
                .fold(f32::NEG_INFINITY, f32::max);
            let w = self.weight(*t);
            num += w * best as f64;
            den += w;
        }
        if den > 0.0 { num / den } else { 0.0 }
    }

    /// BERTScore of `candidate` against `reference`.
    pub fn score(&self, candidate: &str, reference: &str) -> Result<BertScore> {
        let c = self.encode(candidate)?;
        let r = self.encode(reference)?;
        let precision = self.greedy(&c, &r);
        let recall = self.greedy(&r, &c);
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        Ok(BertScore {
            precision,
            recall,
            f1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idf_is_log_of_smoothed_document_frequency() {
        let a: &[u32] = &[1, 2, 2, 3];
        let b: &[u32] = &[2, 4];
        let w = IdfWeights::from_token_sets([a, b]);
        // M = 2: token 2 in both documents -> ln(3/3) = 0; token 1 in one -> ln(3/2);
        // unseen -> ln(3).
        assert!(w.weight(2).abs() < 1e-12);
        assert!((w.weight(1) - 1.5f64.ln()).abs() < 1e-12);
        assert!((w.weight(99) - 3f64.ln()).abs() < 1e-12);
    }
}

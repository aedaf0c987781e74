//! What the device sends for a verified token, and exactly how many bits that costs.
//!
//! A [`UploadCodec`] turns the draft distribution into an [`UploadPayload`]. The payload holds
//! the values *as the receiver decodes them* (already quantised), so a verifier works on exactly
//! what it would have received, and [`UploadPayload::bits`] is the exact size on the air.
//!
//! Bit accounting (per uploaded draft token), with `idx = ⌈log2 |V|⌉`:
//! - dense: `|V| · b`;
//! - top-k: `idx_k + k · (b + idx)`, where `idx_k = ⌈log2(|V| + 1)⌉` carries k itself;
//! - token-only: `0`;
//! - draft probability (split verification): `32` (x_d as an IEEE 754 single).
//!
//! The draft token's own id (`idx` bits) and any context tokens are counted by the engine on
//! top of the payload, see [`crate::stats`].

use serde::{Deserialize, Serialize};

use crate::sampling::token_index_bits;
use crate::{HlmError, Result, TokenId};

/// How probabilities are quantised on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbQuantization {
    /// Uniform levels on [0, 1]: `round(p · (2^b − 1))`, for b = 8 (the CU-HLM default).
    Linear8,
    /// IEEE 754 half precision (16 bits).
    Float16,
    /// IEEE 754 single precision (32 bits, exact).
    Float32,
}

impl ProbQuantization {
    /// From a bit width of 8, 16 or 32.
    pub fn from_bits(bits: u32) -> Result<Self> {
        match bits {
            8 => Ok(ProbQuantization::Linear8),
            16 => Ok(ProbQuantization::Float16),
            32 => Ok(ProbQuantization::Float32),
            other => Err(HlmError::invalid(
                "bits",
                other,
                "bits per probability must be one of 8, 16, 32",
            )),
        }
    }

    /// Bits per probability.
    pub fn bits(self) -> u64 {
        match self {
            ProbQuantization::Linear8 => 8,
            ProbQuantization::Float16 => 16,
            ProbQuantization::Float32 => 32,
        }
    }

    /// The value the receiver decodes for `p`.
    pub fn roundtrip(self, p: f32) -> f32 {
        match self {
            ProbQuantization::Linear8 => (p.clamp(0.0, 1.0) * 255.0).round() / 255.0,
            ProbQuantization::Float16 => half::f16::from_f32(p).to_f32(),
            ProbQuantization::Float32 => p,
        }
    }
}

/// What one uploaded draft token carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UploadPayload {
    /// The whole vocabulary distribution, quantised.
    Dense {
        quantization: ProbQuantization,
        probs: Vec<f32>,
    },
    /// The k largest probabilities with their token ids; the dropped mass is spread evenly
    /// over the other |V| − k tokens at the receiver (CU-HLM, eq. 16).
    TopK {
        quantization: ProbQuantization,
        indices: Vec<TokenId>,
        probs: Vec<f32>,
    },
    /// Only the draft token: the verifier treats the draft distribution as one-hot, which is
    /// still lossless (accept with probability y_d, else draw from y without d).
    TokenOnly,
    /// Split verification (DSSD): only the draft's probability x_d. The verifier accepts with
    /// probability min(1, y_d / x_d); on a rejection it sends its distribution y down and the
    /// device, which alone knows x, draws the replacement from norm(max(0, y − x)).
    DraftProbability { prob: f32 },
}

impl UploadPayload {
    /// Exact payload size in bits for a vocabulary of `vocab` entries.
    pub fn bits(&self, vocab: usize) -> u64 {
        match self {
            UploadPayload::Dense { quantization, .. } => vocab as u64 * quantization.bits(),
            UploadPayload::TopK {
                quantization,
                indices,
                ..
            } => {
                token_index_bits(vocab + 1)
                    + indices.len() as u64 * (quantization.bits() + token_index_bits(vocab))
            }
            UploadPayload::TokenOnly => 0,
            UploadPayload::DraftProbability { .. } => 32,
        }
    }

    /// The whole distribution `probs`, each value as the receiver decodes it under `q`.
    pub fn dense(probs: &[f32], q: ProbQuantization) -> Self {
        UploadPayload::Dense {
            quantization: q,
            probs: probs.iter().map(|&p| q.roundtrip(p)).collect(),
        }
    }

    /// The `k` largest entries of `probs` (ties by index) with their ids, in descending order,
    /// each value as the receiver decodes it under `q`.
    pub fn top_k(probs: &[f32], k: usize, q: ProbQuantization) -> Self {
        let k = k.min(probs.len());
        // Partial selection first: sorting 150k entries for k = 30 would be wasteful.
        let mut idx: Vec<TokenId> = (0..probs.len() as TokenId).collect();
        let cmp = |a: &TokenId, b: &TokenId| {
            probs[*b as usize]
                .total_cmp(&probs[*a as usize])
                .then(a.cmp(b))
        };
        if k < idx.len() {
            idx.select_nth_unstable_by(k, cmp);
            idx.truncate(k);
        }
        idx.sort_unstable_by(cmp);
        Self::top_k_of(probs, idx, q)
    }

    /// The entries `indices` of `probs` (already chosen, in the order given), each value as the
    /// receiver decodes it under `q`.
    pub fn top_k_of(probs: &[f32], indices: Vec<TokenId>, q: ProbQuantization) -> Self {
        let kept = indices
            .iter()
            .map(|&i| q.roundtrip(probs[i as usize]))
            .collect();
        UploadPayload::TopK {
            quantization: q,
            indices,
            probs: kept,
        }
    }

    /// Check the payload against the vocabulary without decoding a distribution (what a
    /// verifier does before its model state moves).
    pub fn validate(&self, draft: TokenId, vocab: usize) -> Result<()> {
        match self {
            UploadPayload::DraftProbability { prob } => {
                if prob.is_finite() && *prob > 0.0 && *prob <= 1.0 {
                    Ok(())
                } else {
                    Err(HlmError::Payload(format!(
                        "draft probability {prob} is not in (0, 1]: the draft was sampled from \
                         it, so it cannot be zero"
                    )))
                }
            }
            other => other.reconstruct(draft, vocab).map(|_| ()),
        }
    }

    /// The draft distribution the verifier reconstructs from this payload.
    pub fn reconstruct(&self, draft: TokenId, vocab: usize) -> Result<Vec<f32>> {
        match self {
            UploadPayload::Dense { probs, .. } => {
                if probs.len() != vocab {
                    return Err(HlmError::Payload(format!(
                        "dense payload has {} probabilities, the vocabulary has {vocab}",
                        probs.len()
                    )));
                }
                if probs.iter().any(|p| !p.is_finite() || *p < 0.0) {
                    return Err(HlmError::Payload(
                        "dense payload holds a negative or non-finite probability".into(),
                    ));
                }
                let sum: f64 = probs.iter().map(|&p| p as f64).sum();
                if sum <= 0.0 {
                    return Err(HlmError::Payload("dense payload sums to zero".into()));
                }
                Ok(probs.iter().map(|&p| (p as f64 / sum) as f32).collect())
            }
            UploadPayload::TopK { indices, probs, .. } => {
                if indices.len() != probs.len() {
                    return Err(HlmError::Payload(format!(
                        "top-k payload has {} indices but {} probabilities",
                        indices.len(),
                        probs.len()
                    )));
                }
                if indices.is_empty() || indices.len() > vocab {
                    return Err(HlmError::Payload(format!(
                        "top-k payload has k = {}, must be in 1..={vocab}",
                        indices.len()
                    )));
                }
                let mut out = vec![0.0f32; vocab];
                let mut seen = vec![false; vocab];
                let mut kept = 0.0f64;
                for (&i, &p) in indices.iter().zip(probs) {
                    let iu = i as usize;
                    if iu >= vocab || seen[iu] {
                        return Err(HlmError::Payload(format!(
                            "top-k payload index {i} is out of range or repeated"
                        )));
                    }
                    if !p.is_finite() || p < 0.0 {
                        return Err(HlmError::Payload(format!(
                            "top-k payload probability {p} is negative or non-finite"
                        )));
                    }
                    seen[iu] = true;
                    out[iu] = p;
                    kept += p as f64;
                }
                let dropped = vocab - indices.len();
                let leftover = (1.0 - kept).max(0.0);
                if dropped > 0 && leftover > 0.0 {
                    let each = (leftover / dropped as f64) as f32;
                    for (o, s) in out.iter_mut().zip(&seen) {
                        if !s {
                            *o = each;
                        }
                    }
                }
                let total = kept + if dropped > 0 { leftover } else { 0.0 };
                if total <= 0.0 {
                    return Err(HlmError::Payload("top-k payload sums to zero".into()));
                }
                let inv = (1.0 / total) as f32;
                out.iter_mut().for_each(|o| *o *= inv);
                Ok(out)
            }
            UploadPayload::TokenOnly => {
                let d = draft as usize;
                if d >= vocab {
                    return Err(HlmError::Payload(format!(
                        "draft token {draft} is outside the vocabulary of {vocab}"
                    )));
                }
                let mut out = vec![0.0f32; vocab];
                out[d] = 1.0;
                Ok(out)
            }
            UploadPayload::DraftProbability { .. } => Err(HlmError::Payload(
                "a draft-probability payload (split verification) carries no distribution".into(),
            )),
        }
    }

    /// Short name for logs and statistics.
    pub fn kind(&self) -> &'static str {
        match self {
            UploadPayload::Dense { .. } => "dense",
            UploadPayload::TopK { .. } => "top_k",
            UploadPayload::TokenOnly => "token_only",
            UploadPayload::DraftProbability { .. } => "draft_probability",
        }
    }
}

/// Signals about the token being uploaded that a codec may use (CU-HLM's adaptive k uses the
/// uncertainty).
#[derive(Debug, Clone, Copy, Default)]
pub struct CodecHints {
    /// The uncertainty the filter measured, if any.
    pub uncertainty: Option<f32>,
    /// x_d, the draft token's probability under the distribution it was sampled from.
    pub draft_prob: f32,
}

/// Turns a draft distribution into what goes on the uplink.
#[typetag::serde(tag = "type")]
pub trait UploadCodec: std::fmt::Debug + Send + Sync {
    /// Encode the draft distribution `probs` (normalised) for the draft token `draft`.
    fn encode(&self, probs: &[f32], draft: TokenId, hints: &CodecHints) -> Result<UploadPayload>;
    /// Whether [`UploadCodec::encode`] reads the distribution. A codec that needs only the
    /// token and [`CodecHints::draft_prob`] says `false`, and is given an empty `probs`: the
    /// draft distribution then never has to leave the device's accelerator.
    fn needs_distribution(&self) -> bool {
        true
    }
    /// Check the parameters against the vocabulary before a run.
    fn validate(&self, _vocab: usize) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_bit_counts() {
        let v = 151_936;
        let dense = UploadPayload::Dense {
            quantization: ProbQuantization::Linear8,
            probs: vec![],
        };
        assert_eq!(dense.bits(v), 151_936 * 8);
        let topk = UploadPayload::TopK {
            quantization: ProbQuantization::Linear8,
            indices: vec![1, 2, 3],
            probs: vec![0.5, 0.2, 0.1],
        };
        // k field: ceil(log2(151937)) = 18; each entry 8 + 18.
        assert_eq!(topk.bits(v), 18 + 3 * 26);
        // The P3 accounting for |V| = 32000: 30 entries of 8 + 15 bits (+ 15 for k).
        let p3 = UploadPayload::TopK {
            quantization: ProbQuantization::Linear8,
            indices: (0..30).collect(),
            probs: vec![0.0; 30],
        };
        assert_eq!(p3.bits(32_000), 15 + 30 * 23);
        assert_eq!(UploadPayload::TokenOnly.bits(v), 0);
        assert_eq!(UploadPayload::DraftProbability { prob: 0.5 }.bits(v), 32);
    }

    #[test]
    fn top_k_reconstruction_spreads_dropped_mass_evenly() {
        let p = UploadPayload::TopK {
            quantization: ProbQuantization::Float32,
            indices: vec![2, 0],
            probs: vec![0.5, 0.3],
        };
        let x = p.reconstruct(0, 6).unwrap();
        assert!((x[2] - 0.5).abs() < 1e-6 && (x[0] - 0.3).abs() < 1e-6);
        for i in [1, 3, 4, 5] {
            assert!((x[i] - 0.05).abs() < 1e-6);
        }
    }

    #[test]
    fn malformed_payloads_are_rejected_with_reasons() {
        let bad = UploadPayload::TopK {
            quantization: ProbQuantization::Float32,
            indices: vec![9],
            probs: vec![0.5],
        };
        let e = bad.reconstruct(0, 4).unwrap_err().to_string();
        assert!(e.contains("index 9 is out of range"), "{e}");
        let bad = UploadPayload::Dense {
            quantization: ProbQuantization::Float32,
            probs: vec![0.5; 3],
        };
        let e = bad.reconstruct(0, 4).unwrap_err().to_string();
        assert!(e.contains("3 probabilities, the vocabulary has 4"), "{e}");
    }

    #[test]
    fn top_k_keeps_the_largest_in_order_and_draft_probabilities_are_checked() {
        let p = UploadPayload::top_k(&[0.1, 0.4, 0.1, 0.4], 3, ProbQuantization::Float32);
        let UploadPayload::TopK { indices, probs, .. } = p else {
            panic!("not top-k")
        };
        assert_eq!(indices, vec![1, 3, 0]);
        assert_eq!(probs, vec![0.4, 0.4, 0.1]);
        let ok = UploadPayload::DraftProbability { prob: 0.25 };
        assert!(ok.validate(0, 4).is_ok());
        let e = ok.reconstruct(0, 4).unwrap_err().to_string();
        assert!(e.contains("carries no distribution"), "{e}");
        for bad in [0.0, -0.1, 1.5, f32::NAN] {
            let e = UploadPayload::DraftProbability { prob: bad }
                .validate(0, 4)
                .unwrap_err()
                .to_string();
            assert!(e.contains("not in (0, 1]"), "{e}");
        }
    }

    #[test]
    fn quantizers_roundtrip_as_specified() {
        assert_eq!(ProbQuantization::Linear8.roundtrip(0.5), 128.0 / 255.0);
        assert_eq!(ProbQuantization::Linear8.roundtrip(0.001), 0.0);
        assert_eq!(ProbQuantization::Float16.roundtrip(1.0), 1.0);
        // 0.1 in half precision is 0.0999755859375.
        assert_eq!(ProbQuantization::Float16.roundtrip(0.1), 0.099_975_586);
        assert_eq!(ProbQuantization::Float32.roundtrip(0.1), 0.1);
        assert!(ProbQuantization::from_bits(12).is_err());
    }
}

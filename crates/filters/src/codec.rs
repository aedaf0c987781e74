//! Upload codecs: dense, top-k, CU-HLM's adaptive top-k, token-only, and split verification's
//! draft probability.

use hlm_core::{
    CodecHints, HlmError, ProbQuantization, Result, TokenId, UploadCodec, UploadPayload,
};
use serde::{Deserialize, Serialize};

fn quantization(bits: u32) -> Result<ProbQuantization> {
    ProbQuantization::from_bits(bits)
}

/// The whole distribution at `bits` (8, 16 or 32) per probability.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DenseCodec {
    pub bits: u32,
}

impl Default for DenseCodec {
    fn default() -> Self {
        DenseCodec { bits: 8 }
    }
}

#[typetag::serde(name = "dense")]
impl UploadCodec for DenseCodec {
    fn encode(&self, probs: &[f32], _draft: TokenId, _h: &CodecHints) -> Result<UploadPayload> {
        Ok(UploadPayload::dense(probs, quantization(self.bits)?))
    }
    fn validate(&self, _vocab: usize) -> Result<()> {
        quantization(self.bits).map(|_| ())
    }
}

/// Indices of the probabilities in descending order (ties by index).
fn sorted_desc(probs: &[f32]) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..probs.len() as u32).collect();
    idx.sort_unstable_by(|&a, &b| {
        probs[b as usize]
            .total_cmp(&probs[a as usize])
            .then(a.cmp(&b))
    });
    idx
}

/// The k most likely tokens with their ids, at `bits` per probability.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopKCodec {
    pub k: usize,
    #[serde(default = "default_bits")]
    pub bits: u32,
}

fn default_bits() -> u32 {
    8
}

#[typetag::serde(name = "top_k")]
impl UploadCodec for TopKCodec {
    fn encode(&self, probs: &[f32], _draft: TokenId, _h: &CodecHints) -> Result<UploadPayload> {
        Ok(UploadPayload::top_k(
            probs,
            self.k,
            quantization(self.bits)?,
        ))
    }
    fn validate(&self, vocab: usize) -> Result<()> {
        quantization(self.bits)?;
        if self.k == 0 || self.k > vocab {
            return Err(HlmError::invalid(
                "k",
                self.k,
                format!("must be in 1..={vocab}"),
            ));
        }
        Ok(())
    }
}

/// CU-HLM's online truncation: the smallest k whose total-variation bound
/// U_TV(β_d) = Σ_{i>k} |x_i − x̂_i| / [(1 − x_d)·ℓ(−1) + x_d·ℓ(−β_d)] stays at or below θ,
/// with ℓ = softplus, x̂ the reconstruction (dropped mass spread evenly), x_d the draft's
/// probability and β_d = clip(a·u + b, 0, 1) the predicted rejection probability from the
/// uncertainty u (u = 1 when no uncertainty was measured: the conservative side).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptiveTopK {
    pub theta: f64,
    pub a: f64,
    pub b: f64,
    pub bits: u32,
    /// Upper limit on k (default: the vocabulary).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_k: Option<usize>,
}

impl Default for AdaptiveTopK {
    fn default() -> Self {
        AdaptiveTopK {
            theta: 0.1,
            a: 0.815,
            b: -0.066,
            bits: 8,
            max_k: None,
        }
    }
}

fn softplus(z: f64) -> f64 {
    if z > 30.0 { z } else { z.exp().ln_1p() }
}

impl AdaptiveTopK {
    /// The denominator of U_TV.
    fn denominator(&self, x_d: f64, uncertainty: Option<f32>) -> f64 {
        let u = uncertainty.map_or(1.0, |u| u as f64);
        let beta = (self.a * u + self.b).clamp(0.0, 1.0);
        (1.0 - x_d) * softplus(-1.0) + x_d * softplus(-beta)
    }

    /// Σ_{i>k} |x_i − T_k/(V−k)| over the tail of the sorted probabilities, T_k its mass.
    /// `sorted` is descending; `suffix[i]` = Σ_{j≥i} sorted[j].
    fn tail_error(sorted: &[f64], suffix: &[f64], k: usize) -> f64 {
        let v = sorted.len();
        if k >= v {
            return 0.0;
        }
        let tail = suffix[k];
        let c = tail / (v - k) as f64;
        // First index ≥ k whose value is ≤ c (sorted descending).
        let m = k + sorted[k..].partition_point(|&x| x > c);
        let above = suffix[k] - suffix[m] - c * (m - k) as f64;
        let below = c * (v - m) as f64 - suffix[m];
        above + below
    }

    /// The k* of the online rule for this distribution.
    pub fn choose_k(
        &self,
        probs: &[f32],
        draft: TokenId,
        uncertainty: Option<f32>,
    ) -> (usize, Vec<u32>) {
        let order = sorted_desc(probs);
        let sorted: Vec<f64> = order.iter().map(|&i| probs[i as usize] as f64).collect();
        let mut suffix = vec![0.0f64; sorted.len() + 1];
        for i in (0..sorted.len()).rev() {
            suffix[i] = suffix[i + 1] + sorted[i];
        }
        let x_d = probs.get(draft as usize).copied().unwrap_or(0.0) as f64;
        let denom = self.denominator(x_d, uncertainty);
        let max_k = self.max_k.unwrap_or(probs.len()).clamp(1, probs.len());
        for k in 1..=max_k {
            if Self::tail_error(&sorted, &suffix, k) / denom <= self.theta {
                return (k, order);
            }
        }
        (max_k, order)
    }
}

#[typetag::serde(name = "adaptive_top_k")]
impl UploadCodec for AdaptiveTopK {
    fn encode(&self, probs: &[f32], draft: TokenId, h: &CodecHints) -> Result<UploadPayload> {
        let q = quantization(self.bits)?;
        let (k, order) = self.choose_k(probs, draft, h.uncertainty);
        Ok(UploadPayload::top_k_of(probs, order[..k].to_vec(), q))
    }
    fn validate(&self, vocab: usize) -> Result<()> {
        quantization(self.bits)?;
        if !(self.theta.is_finite() && self.theta > 0.0) {
            return Err(HlmError::invalid(
                "theta",
                self.theta,
                "the TV budget must be > 0",
            ));
        }
        if let Some(k) = self.max_k
            && (k == 0 || k > vocab)
        {
            return Err(HlmError::invalid(
                "max_k",
                k,
                format!("must be in 1..={vocab}"),
            ));
        }
        Ok(())
    }
}

/// Only the draft token; the verifier treats the draft distribution as one-hot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenOnlyCodec {}

#[typetag::serde(name = "token_only")]
impl UploadCodec for TokenOnlyCodec {
    fn encode(&self, _probs: &[f32], _draft: TokenId, _h: &CodecHints) -> Result<UploadPayload> {
        Ok(UploadPayload::TokenOnly)
    }
}

/// Split verification (DSSD): only the draft token's probability x_d (32 bits). The verifier
/// accepts with probability min(1, y_d / x_d) and, on a rejection, sends its distribution down
/// (`[speculation] residual`) for the device to draw the replacement from; lossless like a
/// dense upload at a fraction of its bits.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitCodec {}

#[typetag::serde(name = "split")]
impl UploadCodec for SplitCodec {
    fn encode(&self, _probs: &[f32], _draft: TokenId, h: &CodecHints) -> Result<UploadPayload> {
        Ok(UploadPayload::DraftProbability { prob: h.draft_prob })
    }
    fn needs_distribution(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_probs(n: usize, seed: u64, sharp: f32) -> Vec<f32> {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let l: Vec<f32> = (0..n).map(|_| r.random::<f32>() * sharp).collect();
        hlm_core::sampling::softmax_with_temperature(&l, 1.0)
    }

    /// The O(V log V) search equals a brute-force evaluation of the bound for every k.
    #[test]
    fn adaptive_k_matches_brute_force() {
        for seed in 0..20u64 {
            let probs = random_probs(300, seed, 4.0 + seed as f32);
            let codec = AdaptiveTopK {
                theta: 0.05 + 0.01 * seed as f64,
                ..Default::default()
            };
            let u = Some((seed % 7) as f32 / 7.0);
            let draft = (seed * 13 % 300) as u32;
            let (k, _) = codec.choose_k(&probs, draft, u);
            let mut sorted: Vec<f64> = probs.iter().map(|&p| p as f64).collect();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let denom = codec.denominator(probs[draft as usize] as f64, u);
            let brute = (1..=300)
                .find(|&k| {
                    let tail: f64 = sorted[k..].iter().sum();
                    let c = if k < 300 {
                        tail / (300 - k) as f64
                    } else {
                        0.0
                    };
                    let err: f64 = sorted[k..].iter().map(|&x| (x - c).abs()).sum();
                    err / denom <= codec.theta
                })
                .unwrap_or(300);
            assert_eq!(k, brute, "seed {seed}");
        }
    }

    #[test]
    fn top_k_keeps_the_largest_in_order() {
        let probs = [0.05f32, 0.4, 0.1, 0.3, 0.15];
        let p = TopKCodec { k: 3, bits: 32 }
            .encode(&probs, 0, &CodecHints::default())
            .unwrap();
        match p {
            UploadPayload::TopK { indices, probs, .. } => {
                assert_eq!(indices, vec![1, 3, 4]);
                assert_eq!(probs, vec![0.4, 0.3, 0.15]);
            }
            other => panic!("{other:?}"),
        }
        assert!(TopKCodec { k: 0, bits: 8 }.validate(10).is_err());
    }

    #[test]
    fn dense_quantises_to_the_declared_bits() {
        let probs = [0.5f32, 0.25, 0.25];
        let p = DenseCodec { bits: 8 }
            .encode(&probs, 0, &CodecHints::default())
            .unwrap();
        assert_eq!(p.bits(3), 24);
        if let UploadPayload::Dense { probs, .. } = p {
            assert_eq!(probs, vec![128.0 / 255.0, 64.0 / 255.0, 64.0 / 255.0]);
        }
        assert!(DenseCodec { bits: 7 }.validate(3).is_err());
    }
}

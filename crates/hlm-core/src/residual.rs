//! The residual of split verification: what the server sends down after rejecting a draft whose
//! distribution it never saw, and how the device draws the replacement from it.
//!
//! With split verification (DSSD) the device uploads only x_d ([`UploadPayload::DraftProbability`]).
//! On a rejection the server sends its distribution y, encoded by the session's
//! [`ResidualCodec`]; the device, which alone knows x, draws from norm(max(0, ŷ − x)).
//!
//! Exactness: with the dense 32-bit codec ŷ = y and the output follows the target exactly.
//! A lossy codec sends ŷ ≠ y; the server, which knows both, adds ε = ‖y − ŷ‖₁ (32 bits). The
//! output distribution at a rejected position then differs from the target's by at most
//! β·TV(r, r̂) ≤ ε (β the rejection probability), and the device bounds TV(r, r̂) by
//! min(1, ε / (β̂ − ε)) with β̂ = Σ max(0, ŷ − x) (as |β − β̂| ≤ ε). The sum of these bounds over a
//! run's rejections ([`crate::RunStats::residual_tv_bound`]) has an expectation over runs that
//! bounds the total-variation distance between the method's output sequences and the target's.

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::sampling::{sample, sample_weights};
use crate::{HlmError, ProbQuantization, Result, TokenId, UploadPayload};

/// How the server encodes its distribution for a residual download
/// (`[speculation] residual = { type = "dense", bits = 32 }`, the default and exact, or
/// `{ type = "top_k", k = 64, bits = 16 }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ResidualCodec {
    /// Every probability at `bits` (8, 16 or 32) each.
    Dense { bits: u32 },
    /// The `k` most likely tokens with their ids at `bits` each; the rest of the mass is spread
    /// evenly over the other tokens at the device, as for top-k uploads.
    TopK { k: usize, bits: u32 },
}

impl Default for ResidualCodec {
    fn default() -> Self {
        ResidualCodec::Dense { bits: 32 }
    }
}

impl ResidualCodec {
    /// Check the parameters against the vocabulary.
    pub fn validate(&self, vocab: usize) -> Result<()> {
        match *self {
            ResidualCodec::Dense { bits } => ProbQuantization::from_bits(bits).map(|_| ()),
            ResidualCodec::TopK { k, bits } => {
                ProbQuantization::from_bits(bits)?;
                if k == 0 || (vocab > 0 && k > vocab) {
                    return Err(HlmError::invalid("k", k, format!("must be in 1..={vocab}")));
                }
                Ok(())
            }
        }
    }

    /// Whether the device receives the target distribution exactly (then ε is not sent).
    pub fn is_exact(&self) -> bool {
        *self == ResidualCodec::Dense { bits: 32 }
    }

    /// Encode the target distribution `y` of a rejected position.
    pub fn encode(&self, y: &[f32]) -> Result<Residual> {
        let distribution = match *self {
            ResidualCodec::Dense { bits } => {
                UploadPayload::dense(y, ProbQuantization::from_bits(bits)?)
            }
            ResidualCodec::TopK { k, bits } => {
                UploadPayload::top_k(y, k, ProbQuantization::from_bits(bits)?)
            }
        };
        let l1_error = if self.is_exact() {
            None
        } else {
            let decoded = distribution.reconstruct(0, y.len())?;
            let e: f64 = y
                .iter()
                .zip(&decoded)
                .map(|(&a, &b)| (a as f64 - b as f64).abs())
                .sum();
            Some(e as f32)
        };
        Ok(Residual {
            distribution,
            l1_error,
        })
    }
}

/// The server's distribution at a rejected position, as the device receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Residual {
    /// ŷ, dense or top-k.
    pub distribution: UploadPayload,
    /// ε = ‖y − ŷ‖₁, sent with a lossy codec (`None`: ŷ is y).
    pub l1_error: Option<f32>,
}

impl Residual {
    /// Exact size on the downlink for a vocabulary of `vocab` entries.
    pub fn bits(&self, vocab: usize) -> u64 {
        self.distribution.bits(vocab) + if self.l1_error.is_some() { 32 } else { 0 }
    }

    /// Check what a peer sent: a decodable dense or top-k distribution and a sane ε.
    pub fn validate(&self, vocab: usize) -> Result<()> {
        self.decode(vocab).map(|_| ())
    }

    /// ŷ over a vocabulary of `vocab` entries, after the checks of [`Residual::validate`].
    fn decode(&self, vocab: usize) -> Result<Vec<f32>> {
        match &self.distribution {
            UploadPayload::Dense { .. } | UploadPayload::TopK { .. } => {}
            other => {
                return Err(HlmError::Payload(format!(
                    "a residual must be a dense or top-k distribution, not {}",
                    other.kind()
                )));
            }
        }
        if let Some(e) = self.l1_error
            && !(e.is_finite() && (0.0..=2.0).contains(&e))
        {
            return Err(HlmError::Payload(format!(
                "residual error bound {e} is not in [0, 2]"
            )));
        }
        self.distribution.reconstruct(0, vocab)
    }

    /// Draw the replacement token from norm(max(0, ŷ − x)), `x` the device's own draft
    /// distribution at the rejected position. Returns the token and the bound on TV(r, r̂) this
    /// draw contributes (0 with an exact residual). A residual that fails
    /// [`Residual::validate`] is refused.
    pub fn draw(&self, x: &[f32], rng: &mut dyn RngCore) -> Result<(TokenId, f64)> {
        let y = self.decode(x.len())?;
        let weights: Vec<f32> = y.iter().zip(x).map(|(&a, &b)| (a - b).max(0.0)).collect();
        // An all-zero residual means ŷ ≤ x everywhere, i.e. ŷ == x up to rounding: ŷ itself is
        // then the right distribution to draw from (as in exact speculative sampling).
        let token = sample_weights(&weights, rng).unwrap_or_else(|| sample(&y, rng));
        let bound = match self.l1_error {
            None => 0.0,
            Some(eps) => {
                let eps = eps as f64;
                let beta_hat: f64 = weights.iter().map(|&w| w as f64).sum();
                if beta_hat > eps && eps > 0.0 {
                    (eps / (beta_hat - eps)).min(1.0)
                } else if eps > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
        };
        Ok((token as TokenId, bound))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::RandomStream;

    #[test]
    fn exact_residual_has_no_error_term_and_counts_its_bits() {
        let y = [0.5f32, 0.25, 0.125, 0.125];
        let r = ResidualCodec::default().encode(&y).unwrap();
        assert_eq!(r.l1_error, None);
        assert_eq!(r.bits(4), 4 * 32);
        let r = ResidualCodec::TopK { k: 2, bits: 16 }.encode(&y).unwrap();
        // k field ⌈log2 5⌉ = 3, two entries of 16 + 2 bits, then ε.
        assert_eq!(r.bits(4), 3 + 2 * 18 + 32);
        // ŷ = (0.5, 0.25, 0.125, 0.125): the spread tail happens to be exact here.
        assert!(r.l1_error.unwrap() < 1e-6);
        let r = ResidualCodec::TopK { k: 1, bits: 32 }
            .encode(&[0.5, 0.3, 0.1, 0.1])
            .unwrap();
        // ŷ = (0.5, 1/6, 1/6, 1/6): ‖y − ŷ‖₁ = 2·(0.3 − 1/6) = 0.2667.
        assert!((r.l1_error.unwrap() - 0.266_666_7).abs() < 1e-5);
    }

    /// The draw follows norm(max(0, y − x)) (exactly computable here) within sampling error.
    #[test]
    fn draws_follow_the_residual() {
        let y = [0.4f32, 0.3, 0.2, 0.1];
        let x = [0.1f32, 0.5, 0.3, 0.1];
        // max(0, y − x) = (0.3, 0, 0, 0): every draw is token 0.
        let r = ResidualCodec::default().encode(&y).unwrap();
        let mut rng = RandomStream::Residual.rng(1);
        for _ in 0..200 {
            assert_eq!(r.draw(&x, &mut rng).unwrap(), (0, 0.0));
        }
        let y = [0.4f32, 0.4, 0.1, 0.1];
        let x = [0.2f32, 0.1, 0.6, 0.1];
        // max(0, y − x) = (0.2, 0.3, 0, 0): tokens 0 and 1 at 0.4 and 0.6.
        let r = ResidualCodec::default().encode(&y).unwrap();
        let n = 20_000;
        let ones = (0..n)
            .filter(|_| r.draw(&x, &mut rng).unwrap().0 == 1)
            .count();
        let share = ones as f64 / n as f64;
        assert!((share - 0.6).abs() < 0.015, "{share}");
    }

    #[test]
    fn lossy_residuals_bound_their_error_and_bad_ones_are_refused() {
        let y = [0.5f32, 0.3, 0.1, 0.1];
        let x = [0.1f32, 0.1, 0.4, 0.4];
        let r = ResidualCodec::TopK { k: 1, bits: 32 }.encode(&y).unwrap();
        let (_, bound) = r.draw(&x, &mut RandomStream::Residual.rng(0)).unwrap();
        // ŷ = (0.5, 1/6, 1/6, 1/6), β̂ = 0.4 + 0.0667 = 0.4667, ε = 0.2667: ε/(β̂ − ε) = 1.333 → 1.
        assert_eq!(bound, 1.0);
        let bad = Residual {
            distribution: UploadPayload::TokenOnly,
            l1_error: None,
        };
        let e = bad.validate(4).unwrap_err().to_string();
        assert!(e.contains("not token_only"), "{e}");
        let bad = Residual {
            distribution: UploadPayload::dense(&y, ProbQuantization::Float32),
            l1_error: Some(f32::NAN),
        };
        assert!(bad.validate(4).unwrap_err().to_string().contains("[0, 2]"));
        // The device's draw refuses what validation refuses.
        let e = bad
            .draw(&x, &mut RandomStream::Residual.rng(0))
            .unwrap_err();
        assert!(e.to_string().contains("[0, 2]"), "{e}");
        assert!(
            ResidualCodec::TopK { k: 9, bits: 8 }
                .validate(4)
                .unwrap_err()
                .to_string()
                .contains("`k` = 9")
        );
    }
}

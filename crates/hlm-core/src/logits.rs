//! Next-token logits where the draft model computed them.
//!
//! The per-token filter asks small questions of the draft's logits: the draft token's
//! probability at K perturbation temperatures, the entropy, the two largest probabilities, a
//! sample at the generation temperature. A model on a GPU answers them with tensor ops where the
//! logits live and sends back a few numbers, instead of reading 150k floats back every step;
//! only an upload of the distribution itself needs the whole vector on the host
//! ([`NextTokenLogits::to_host`]). [`HostLogits`] is the same math on a host vector: the
//! reference the device implementations are tested against, and what models without a device
//! path return.

use std::fmt::Debug;
use std::sync::Arc;

use crate::sampling::{argmax, softmax_with_temperature};
use crate::{HlmError, Result, TokenId};

/// The draft model's logits for the next position (temperature 1, before sampling).
///
/// Only [`vocab_size`](Self::vocab_size) and [`to_host`](Self::to_host) are required; the
/// queries have host defaults that a device implementation overrides to run where the logits
/// are.
pub trait NextTokenLogits: Debug + Send + Sync {
    /// Length of the logit vector.
    fn vocab_size(&self) -> usize;

    /// The whole vector on the host (a device implementation reads it back once and keeps it).
    fn to_host(&self) -> Result<Arc<[f32]>>;

    /// `softmax(logits / t)[token]` for each `t` of `temperatures`; `t <= 0` means the
    /// one-hot distribution of the argmax (1 if `token` is the argmax, else 0).
    fn token_probs(&self, token: TokenId, temperatures: &[f32]) -> Result<Vec<f32>> {
        let host = self.to_host()?;
        host_token_probs(&host, token, temperatures)
    }

    /// Shannon entropy of `softmax(logits)`, in nats.
    fn entropy(&self) -> Result<f32> {
        Ok(host_entropy(&self.to_host()?))
    }

    /// The two largest probabilities of `softmax(logits)`, largest first (the second is 0 for
    /// a vocabulary of one).
    fn top_two_probs(&self) -> Result<[f32; 2]> {
        Ok(host_top_two(&self.to_host()?))
    }

    /// Draw a token from `softmax(logits / temperature)` by inverse CDF at `u` in [0, 1): the
    /// first token whose cumulative probability exceeds `u`. Temperature 0 takes the argmax.
    fn sample(&self, temperature: f32, u: f64) -> Result<TokenId> {
        Ok(host_sample(&self.to_host()?, temperature, u))
    }

    /// Where the logits live (`host`, `flex`, `wgpu ...`), for logs.
    fn location(&self) -> String {
        "host".into()
    }
}

/// Logits already on the host.
#[derive(Debug, Clone)]
pub struct HostLogits(Arc<[f32]>);

impl HostLogits {
    pub fn new(logits: Vec<f32>) -> Self {
        HostLogits(logits.into())
    }

    /// The logits as a boxed [`NextTokenLogits`].
    pub fn boxed(logits: Vec<f32>) -> Box<dyn NextTokenLogits> {
        Box::new(Self::new(logits))
    }
}

impl NextTokenLogits for HostLogits {
    fn vocab_size(&self) -> usize {
        self.0.len()
    }

    fn to_host(&self) -> Result<Arc<[f32]>> {
        Ok(self.0.clone())
    }
}

/// Check that `token` indexes a vocabulary of `vocab` entries.
pub fn check_token(token: TokenId, vocab: usize) -> Result<usize> {
    let d = token as usize;
    if d < vocab {
        Ok(d)
    } else {
        Err(HlmError::invalid(
            "token",
            token,
            format!("outside the vocabulary of {vocab}"),
        ))
    }
}

/// [`NextTokenLogits::token_probs`] on a host vector: p_d(θ) = w_d / Z with the max
/// subtracted, Z summed in vectorised f32 lanes and f64 (7.7 ms for K = 20 over 151,936
/// logits on a 2-core x86 VM).
pub fn host_token_probs(logits: &[f32], token: TokenId, temperatures: &[f32]) -> Result<Vec<f32>> {
    let d = check_token(token, logits.len())?;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let best = argmax(logits);
    Ok(temperatures
        .iter()
        .map(|&t| {
            if t <= 0.0 {
                return if best == d { 1.0 } else { 0.0 };
            }
            let inv = 1.0 / t;
            let z = partition(logits, max, inv);
            let wd = exp_nonpositive((logits[d] - max) * inv) as f64;
            (wd / z) as f32
        })
        .collect())
}

/// Z = Σ exp((l_i − max)·inv), with eight independent f32 lanes (so it vectorises) summed in f64.
fn partition(logits: &[f32], max: f32, inv: f32) -> f64 {
    let mut lanes = [0f32; 8];
    let mut chunks = logits.chunks_exact(8);
    for c in &mut chunks {
        for (acc, &l) in lanes.iter_mut().zip(c) {
            *acc += exp_nonpositive((l - max) * inv);
        }
    }
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|&l| exp_nonpositive((l - max) * inv))
        .sum();
    lanes.iter().map(|&x| x as f64).sum::<f64>() + tail as f64
}

/// e^x for x ≤ 0, branch-free so loops over it vectorise (libm's expf does not).
/// 2^n · e^t with n = round(x·log2 e) and |t| ≤ ln2/2; the degree-6 Taylor series of e^t is
/// then within 1.2e-7 relative; with the f32 rounding of x·log2 e the result is within 4e-6
/// relative of e^x over [-87, 0] (immaterial for sampling). Below e^-87 (2^-126) it returns ~0.
#[inline]
fn exp_nonpositive(x: f32) -> f32 {
    // Rounding by adding and subtracting 1.5·2^23 (exact for |y| < 2^22); no SSE4.1 needed.
    const ROUND: f32 = 12_582_912.0;
    let y = x * std::f32::consts::LOG2_E;
    // A plain comparison (not f32::max, whose NaN rule blocks vectorisation).
    let y = if y < -126.0 { -126.0 } else { y };
    let n = (y + ROUND) - ROUND;
    let t = (y - n) * std::f32::consts::LN_2;
    let p = 1.0
        + t * (1.0
            + t * (0.5
                + t * (1.0 / 6.0 + t * (1.0 / 24.0 + t * (1.0 / 120.0 + t * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// [`NextTokenLogits::entropy`] on a host vector.
pub fn host_entropy(logits: &[f32]) -> f32 {
    let p = softmax_with_temperature(logits, 1.0);
    p.iter()
        .filter(|&&q| q > 0.0)
        .map(|&q| -(q as f64) * (q as f64).ln())
        .sum::<f64>() as f32
}

/// [`NextTokenLogits::top_two_probs`] on a host vector.
pub fn host_top_two(logits: &[f32]) -> [f32; 2] {
    let p = softmax_with_temperature(logits, 1.0);
    let (mut a, mut b) = (0f32, 0f32);
    for &q in &p {
        if q > a {
            b = a;
            a = q;
        } else if q > b {
            b = q;
        }
    }
    [a, b]
}

/// [`NextTokenLogits::sample`] on a host vector: the same walk as
/// [`crate::sampling::sample_weights`] (f64 accumulation, zero weights skipped, the last positive
/// weight when rounding leaves `u` above the total, the argmax for a distribution of zeros).
pub fn host_sample(logits: &[f32], temperature: f32, u: f64) -> TokenId {
    let probs = softmax_with_temperature(logits, temperature);
    let total: f64 = probs.iter().map(|&w| w.max(0.0) as f64).sum();
    if total <= 0.0 || !total.is_finite() {
        return argmax(&probs) as TokenId;
    }
    let target = u * total;
    let mut acc = 0.0f64;
    let mut last_positive = argmax(&probs);
    for (i, &w) in probs.iter().enumerate() {
        if w > 0.0 {
            acc += w as f64;
            last_positive = i;
            if target < acc {
                return i as TokenId;
            }
        }
    }
    last_positive as TokenId
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::sample;
    use rand::{Rng, SeedableRng};

    #[test]
    fn fast_exp_matches_libm_to_f32_precision() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -(i as f32) * 87.0 / 200_000.0;
            let want = (x as f64).exp();
            let got = exp_nonpositive(x) as f64;
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 5e-6, "worst relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1000.0) < 1e-37);
    }
    #[test]
    fn token_probs_are_the_softmax_at_each_temperature() {
        let l = [2.0f32, 0.0, 1.0];
        let p = host_token_probs(&l, 2, &[1.0, 0.5, 0.0]).unwrap();
        // softmax([2, 0, 1])[2] = e / (e² + 1 + e); at T = 0.5: e² / (e⁴ + 1 + e²); T = 0: not
        // the argmax.
        let e = std::f32::consts::E;
        assert!((p[0] - e / (e * e + 1.0 + e)).abs() < 5e-6, "{p:?}");
        assert!(
            (p[1] - e * e / (e.powi(4) + 1.0 + e * e)).abs() < 5e-6,
            "{p:?}"
        );
        assert_eq!(p[2], 0.0);
        assert_eq!(host_token_probs(&l, 0, &[0.0]).unwrap(), vec![1.0]);
        let err = host_token_probs(&l, 3, &[1.0]).unwrap_err().to_string();
        assert!(err.contains("outside the vocabulary of 3"), "{err}");
    }

    #[test]
    fn entropy_and_top_two_by_hand() {
        // Two equal logits and one at -inf-ish: entropy ln 2, top two 1/2 and 1/2.
        let l = [0.0f32, 0.0, -1e9];
        assert!((host_entropy(&l) - std::f32::consts::LN_2).abs() < 1e-6);
        assert_eq!(host_top_two(&l), [0.5, 0.5]);
        assert_eq!(host_top_two(&[3.0]), [1.0, 0.0]);
    }

    #[test]
    fn sampling_by_inverse_cdf_matches_the_engine_sampler_draw_for_draw() {
        // The same uniforms give the same tokens as sample(softmax(l / T), rng).
        let l: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        for t in [1.0f32, 0.7, 0.0] {
            let mut a = rand_chacha::ChaCha8Rng::seed_from_u64(3);
            let mut b = a.clone();
            for _ in 0..500 {
                let want = sample(&softmax_with_temperature(&l, t), &mut a) as TokenId;
                let got = host_sample(&l, t, b.random::<f64>());
                assert_eq!(got, want, "T = {t}");
            }
        }
    }
}

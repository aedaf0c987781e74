//! Uncertainty estimators: how unsure the draft model is about its draft token.

use hlm_core::sampling::argmax;
use hlm_core::{HlmError, Result, TokenId, UncertaintyEstimator};
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

/// How the K perturbation temperatures are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TemperatureSpacing {
    /// θ_k ~ Uniform(0, θ_max], drawn afresh for every token (U-HLM's lab code).
    #[default]
    Uniform,
    /// θ_k = k · θ_max / K for k = 1..K (deterministic).
    Even,
}

/// U-HLM's temperature perturbation: resample the draft logits K times at random temperatures;
/// the uncertainty is the share of samples that differ from the draft token. Uses no extra
/// model pass. A temperature below `min_temperature` is treated as argmax.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemperaturePerturbation {
    /// Number of perturbed samples K (default 20).
    pub samples: usize,
    /// Largest temperature θ_max (default 2.0).
    pub theta_max: f32,
    /// How temperatures are chosen.
    pub spacing: TemperatureSpacing,
    /// Temperatures at or below this are argmax (default 1e-3).
    pub min_temperature: f32,
}

impl Default for TemperaturePerturbation {
    fn default() -> Self {
        TemperaturePerturbation {
            samples: 20,
            theta_max: 2.0,
            spacing: TemperatureSpacing::Uniform,
            min_temperature: 1e-3,
        }
    }
}

impl TemperaturePerturbation {
    fn temperature(&self, k: usize, rng: &mut dyn RngCore) -> f32 {
        match self.spacing {
            // 1 - U[0,1) lies in (0, 1], so θ lies in (0, θ_max].
            TemperatureSpacing::Uniform => (1.0 - rng.random::<f32>()) * self.theta_max,
            TemperatureSpacing::Even => (k + 1) as f32 * self.theta_max / self.samples as f32,
        }
    }
}

#[typetag::serde(name = "temperature_perturbation")]
impl UncertaintyEstimator for TemperaturePerturbation {
    fn estimate(&self, logits: &[f32], draft: TokenId, rng: &mut dyn RngCore) -> Result<f32> {
        if logits.is_empty() {
            return Err(HlmError::Filter("empty logits".into()));
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let best = argmax(logits);
        let d = draft as usize;
        let ld = *logits.get(d).ok_or_else(|| {
            HlmError::invalid(
                "draft",
                draft,
                format!("outside the vocabulary of {}", logits.len()),
            )
        })?;
        let mut differ = 0usize;
        for k in 0..self.samples {
            let theta = self.temperature(k, rng);
            let same = if theta <= self.min_temperature {
                best == d
            } else {
                // Drawing s ~ softmax(l/θ) and testing s == d is a Bernoulli draw with
                // p = w_d / Z: the same law without materialising or scanning the distribution,
                // which halves the cost over a 150k vocabulary.
                let inv = 1.0 / theta;
                let z = partition(logits, max, inv);
                let wd = exp_nonpositive((ld - max) * inv) as f64;
                rng.random::<f64>() * z < wd
            };
            if !same {
                differ += 1;
            }
        }
        Ok(differ as f32 / self.samples as f32)
    }

    fn validate(&self) -> Result<()> {
        if self.samples == 0 {
            return Err(HlmError::invalid("samples", 0, "K must be at least 1"));
        }
        if !(self.theta_max.is_finite() && self.theta_max > 0.0) {
            return Err(HlmError::invalid(
                "theta_max",
                self.theta_max,
                "must be a finite number > 0",
            ));
        }
        Ok(())
    }
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

/// Normalised Shannon entropy of the draft distribution, H(x) / ln |V|, in [0, 1].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entropy {}

#[typetag::serde(name = "entropy")]
impl UncertaintyEstimator for Entropy {
    fn estimate(&self, logits: &[f32], _draft: TokenId, _rng: &mut dyn RngCore) -> Result<f32> {
        if logits.len() < 2 {
            return Ok(0.0);
        }
        let p = hlm_core::sampling::softmax_with_temperature(logits, 1.0);
        let h: f64 = p
            .iter()
            .filter(|&&q| q > 0.0)
            .map(|&q| -(q as f64) * (q as f64).ln())
            .sum();
        Ok((h / (logits.len() as f64).ln()) as f32)
    }
}

/// One minus the margin between the two most likely tokens: 1 − (p₁ − p₂), in [0, 1].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopProbabilityMargin {}

#[typetag::serde(name = "top_probability_margin")]
impl UncertaintyEstimator for TopProbabilityMargin {
    fn estimate(&self, logits: &[f32], _draft: TokenId, _rng: &mut dyn RngCore) -> Result<f32> {
        let p = hlm_core::sampling::softmax_with_temperature(logits, 1.0);
        let (mut a, mut b) = (0f32, 0f32);
        for &q in &p {
            if q > a {
                b = a;
                a = q;
            } else if q > b {
                b = q;
            }
        }
        Ok(1.0 - (a - b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    use rand::SeedableRng;

    fn rng() -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(3)
    }

    /// E[u] for a known distribution, computed by numerical integration over θ ~ U(0, θmax].
    #[test]
    fn perturbation_matches_expected_value() {
        let logits = [2.0f32, 1.0, 0.0, -1.0];
        let draft = 0u32;
        let est = TemperaturePerturbation::default();
        // E[u] = 1 - E_θ[softmax(l/θ)_0]
        let steps = 20_000;
        let mut acc = 0.0f64;
        for i in 0..steps {
            let theta = (i as f64 + 0.5) / steps as f64 * 2.0;
            let e: Vec<f64> = logits
                .iter()
                .map(|&l| ((l as f64 - 2.0) / theta).exp())
                .collect();
            acc += e[0] / e.iter().sum::<f64>();
        }
        let expected = 1.0 - acc / steps as f64;
        let mut r = rng();
        let n = 4000;
        let mean: f64 = (0..n)
            .map(|_| est.estimate(&logits, draft, &mut r).unwrap() as f64)
            .sum::<f64>()
            / n as f64;
        // std of a single u is at most 0.5/sqrt(20); of the mean ≈ 0.0018.
        assert!((mean - expected).abs() < 0.01, "{mean} vs {expected}");
    }

    #[test]
    fn perturbation_of_a_certain_token_is_zero_and_of_a_wrong_one_is_one() {
        let logits = [100.0f32, 0.0, 0.0];
        let est = TemperaturePerturbation::default();
        assert_eq!(est.estimate(&logits, 0, &mut rng()).unwrap(), 0.0);
        assert_eq!(est.estimate(&logits, 1, &mut rng()).unwrap(), 1.0);
        let even = TemperaturePerturbation {
            spacing: TemperatureSpacing::Even,
            samples: 4,
            ..Default::default()
        };
        assert_eq!(even.estimate(&logits, 0, &mut rng()).unwrap(), 0.0);
        assert!(
            TemperaturePerturbation {
                samples: 0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn entropy_and_margin_hand_computed() {
        let uniform = [0.0f32; 4];
        assert!((Entropy {}.estimate(&uniform, 0, &mut rng()).unwrap() - 1.0).abs() < 1e-6);
        // p = (0.5, 0.25, 0.25): H = 1.5 ln 2; / ln 3
        let l = [2f32.ln(), 0.0, 0.0];
        let h = Entropy {}.estimate(&l, 0, &mut rng()).unwrap();
        assert!((h as f64 - 1.5 * 2f64.ln() / 3f64.ln()).abs() < 1e-6);
        let m = TopProbabilityMargin {}.estimate(&l, 0, &mut rng()).unwrap();
        assert!((m - 0.75).abs() < 1e-6);
    }
}

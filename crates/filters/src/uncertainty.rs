//! Uncertainty estimators: how unsure the draft model is about its draft token.

use hlm_core::{HlmError, NextTokenLogits, Result, TokenId, UncertaintyEstimator};
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
    fn estimate(
        &self,
        logits: &dyn NextTokenLogits,
        draft: TokenId,
        rng: &mut dyn RngCore,
    ) -> Result<f32> {
        if logits.vocab_size() == 0 {
            return Err(HlmError::Filter("empty logits".into()));
        }
        // All K temperatures first (0 = argmax), then one query for the draft's probability
        // at each: on a GPU that is one [K, V] pass with K numbers coming back.
        let temperatures: Vec<f32> = (0..self.samples)
            .map(|k| self.temperature(k, rng))
            .map(|t| if t <= self.min_temperature { 0.0 } else { t })
            .collect();
        let p_draft = logits.token_probs(draft, &temperatures)?;
        // Drawing s ~ softmax(l/θ) and testing s == d is a Bernoulli draw with p = p_d(θ): the
        // same law without materialising or scanning the distribution.
        let differ = p_draft
            .iter()
            .filter(|&&p| rng.random::<f64>() >= p as f64)
            .count();
        Ok(differ as f32 / self.samples as f32)
    }

    fn validate(&self) -> Result<()> {
        if !(1..=MAX_SAMPLES).contains(&self.samples) {
            return Err(HlmError::invalid(
                "samples",
                self.samples,
                format!("K must be between 1 and {MAX_SAMPLES}"),
            ));
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

/// The most perturbed samples per token (the paper uses 20; each costs a pass over the
/// vocabulary, and the estimate allocates one value per sample).
pub const MAX_SAMPLES: usize = 4096;

/// Normalised Shannon entropy of the draft distribution, H(x) / ln |V|, in [0, 1].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entropy {}

#[typetag::serde(name = "entropy")]
impl UncertaintyEstimator for Entropy {
    fn estimate(
        &self,
        logits: &dyn NextTokenLogits,
        _draft: TokenId,
        _rng: &mut dyn RngCore,
    ) -> Result<f32> {
        let n = logits.vocab_size();
        if n < 2 {
            return Ok(0.0);
        }
        Ok((logits.entropy()? as f64 / (n as f64).ln()) as f32)
    }
}

/// One minus the margin between the two most likely tokens: 1 − (p₁ − p₂), in [0, 1].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopProbabilityMargin {}

#[typetag::serde(name = "top_probability_margin")]
impl UncertaintyEstimator for TopProbabilityMargin {
    fn estimate(
        &self,
        logits: &dyn NextTokenLogits,
        _draft: TokenId,
        _rng: &mut dyn RngCore,
    ) -> Result<f32> {
        let [a, b] = logits.top_two_probs()?;
        Ok(1.0 - (a - b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rand::SeedableRng;

    use hlm_core::HostLogits;

    fn host(l: &[f32]) -> HostLogits {
        HostLogits::new(l.to_vec())
    }

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
            .map(|_| est.estimate(&host(&logits), draft, &mut r).unwrap() as f64)
            .sum::<f64>()
            / n as f64;
        // std of a single u is at most 0.5/sqrt(20); of the mean ≈ 0.0018.
        assert!((mean - expected).abs() < 0.01, "{mean} vs {expected}");
    }

    #[test]
    fn perturbation_of_a_certain_token_is_zero_and_of_a_wrong_one_is_one() {
        let logits = [100.0f32, 0.0, 0.0];
        let est = TemperaturePerturbation::default();
        assert_eq!(est.estimate(&host(&logits), 0, &mut rng()).unwrap(), 0.0);
        assert_eq!(est.estimate(&host(&logits), 1, &mut rng()).unwrap(), 1.0);
        let even = TemperaturePerturbation {
            spacing: TemperatureSpacing::Even,
            samples: 4,
            ..Default::default()
        };
        assert_eq!(even.estimate(&host(&logits), 0, &mut rng()).unwrap(), 0.0);
        // Zero samples, and a count whose allocation overflowed (found by the config fuzzer,
        // crates/cli/tests/configs.rs: `samples = 9223372036854775807` panicked at run time).
        for samples in [0, MAX_SAMPLES + 1, i64::MAX as usize] {
            let e = TemperaturePerturbation {
                samples,
                ..Default::default()
            }
            .validate()
            .expect_err("refused")
            .to_string();
            assert!(e.contains("samples") && e.contains("4096"), "{e}");
        }
    }

    #[test]
    fn entropy_and_margin_hand_computed() {
        let uniform = [0.0f32; 4];
        assert!((Entropy {}.estimate(&host(&uniform), 0, &mut rng()).unwrap() - 1.0).abs() < 1e-6);
        // p = (0.5, 0.25, 0.25): H = 1.5 ln 2; / ln 3
        let l = [2f32.ln(), 0.0, 0.0];
        let h = Entropy {}.estimate(&host(&l), 0, &mut rng()).unwrap();
        assert!((h as f64 - 1.5 * 2f64.ln() / 3f64.ln()).abs() < 1e-6);
        let m = TopProbabilityMargin {}
            .estimate(&host(&l), 0, &mut rng())
            .unwrap();
        assert!((m - 0.75).abs() < 1e-6);
    }
}

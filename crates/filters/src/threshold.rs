//! Threshold policies: fixed, U-HLM's risk bound, and adaptive per-step importance thresholds.

use hlm_core::{HlmError, Result, ThresholdPolicy, validate};
use serde::{Deserialize, Serialize};

/// A constant threshold.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedThreshold {
    pub value: f32,
}

#[typetag::serde(name = "fixed")]
impl ThresholdPolicy for FixedThreshold {
    fn threshold(&self, _population: &[f32]) -> Result<f32> {
        Ok(self.value)
    }
    fn validate(&self) -> Result<()> {
        validate::finite("value", self.value.into())
    }
}

/// U-HLM: with the fitted line rejection ≈ a·u + b, skip while the predicted rejection risk
/// a·u + b stays at or below `max_risk`; i.e. the uncertainty threshold is (max_risk − b) / a.
/// Defaults a = 0.815, b = −0.066 (the fit reported for U-HLM/CU-HLM), max_risk = 0 (the
/// "risk-averse" threshold u ≈ 0.081).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RiskBoundThreshold {
    pub a: f32,
    pub b: f32,
    pub max_risk: f32,
}

impl Default for RiskBoundThreshold {
    fn default() -> Self {
        RiskBoundThreshold {
            a: 0.815,
            b: -0.066,
            max_risk: 0.0,
        }
    }
}

#[typetag::serde(name = "risk_bound")]
impl ThresholdPolicy for RiskBoundThreshold {
    fn threshold(&self, _population: &[f32]) -> Result<f32> {
        Ok((self.max_risk - self.b) / self.a)
    }
    fn validate(&self) -> Result<()> {
        if !(self.a.is_finite() && self.a > 0.0) {
            return Err(HlmError::invalid(
                "a",
                self.a,
                "the slope must be a finite number > 0",
            ));
        }
        if !(0.0..=1.0).contains(&self.max_risk) {
            return Err(HlmError::invalid(
                "max_risk",
                self.max_risk,
                "a probability in [0, 1]",
            ));
        }
        Ok(())
    }
}

fn mean_std(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Adaptive: mean + λ·std of this step's attention row. When attention collapses onto one
/// position the std grows with it, so only that position clears the bar.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeanStdThreshold {
    pub lambda: f32,
}

impl Default for MeanStdThreshold {
    fn default() -> Self {
        MeanStdThreshold { lambda: 0.0 }
    }
}

#[typetag::serde(name = "mean_std")]
impl ThresholdPolicy for MeanStdThreshold {
    fn threshold(&self, population: &[f32]) -> Result<f32> {
        if population.is_empty() {
            return Ok(0.0);
        }
        let (m, s) = mean_std(population);
        Ok((m + self.lambda as f64 * s) as f32)
    }
    fn validate(&self) -> Result<()> {
        validate::finite("lambda", self.lambda.into())
    }
}

/// Adaptive: λ / n for a row of n positions (λ = 1 is the uniform level).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScaledUniformThreshold {
    pub lambda: f32,
}

impl Default for ScaledUniformThreshold {
    fn default() -> Self {
        ScaledUniformThreshold { lambda: 1.0 }
    }
}

#[typetag::serde(name = "scaled_uniform")]
impl ThresholdPolicy for ScaledUniformThreshold {
    fn threshold(&self, population: &[f32]) -> Result<f32> {
        Ok(self.lambda / population.len().max(1) as f32)
    }
    fn validate(&self) -> Result<()> {
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return Err(HlmError::invalid(
                "lambda",
                self.lambda,
                "must be a finite number >= 0",
            ));
        }
        Ok(())
    }
}

/// Adaptive: the q-quantile of this step's row (linear interpolation between order statistics).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuantileThreshold {
    pub q: f32,
}

impl Default for QuantileThreshold {
    fn default() -> Self {
        QuantileThreshold { q: 0.5 }
    }
}

#[typetag::serde(name = "quantile")]
impl ThresholdPolicy for QuantileThreshold {
    fn threshold(&self, population: &[f32]) -> Result<f32> {
        if population.is_empty() {
            return Ok(0.0);
        }
        let mut v = population.to_vec();
        v.sort_by(f32::total_cmp);
        let pos = self.q as f64 * (v.len() - 1) as f64;
        let lo = pos.floor() as usize;
        let hi = pos.ceil() as usize;
        let frac = (pos - lo as f64) as f32;
        Ok(v[lo] + (v[hi] - v[lo]) * frac)
    }
    fn validate(&self) -> Result<()> {
        validate::probability("q", self.q.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_thresholds() {
        let pop = [0.1f32, 0.2, 0.3, 0.4];
        // mean 0.25, population std sqrt(0.0125) = 0.1118
        let t = MeanStdThreshold { lambda: 1.0 }.threshold(&pop).unwrap();
        assert!((t - 0.361_803_4).abs() < 1e-6, "{t}");
        assert_eq!(
            ScaledUniformThreshold { lambda: 2.0 }
                .threshold(&pop)
                .unwrap(),
            0.5
        );
        assert!((QuantileThreshold { q: 0.5 }.threshold(&pop).unwrap() - 0.25).abs() < 1e-6);
        assert_eq!(QuantileThreshold { q: 1.0 }.threshold(&pop).unwrap(), 0.4);
        let r = RiskBoundThreshold::default().threshold(&[]).unwrap();
        assert!((r - 0.066 / 0.815).abs() < 1e-6);
        let r = RiskBoundThreshold {
            max_risk: 0.29,
            ..Default::default()
        }
        .threshold(&[])
        .unwrap();
        assert!((r - 0.436_81).abs() < 1e-4, "{r}");
    }

    /// Attention collapsed onto one position: only that position clears mean + λ·std, for any
    /// λ ≥ 0 below √(n−1) (where the collapsed value itself sits).
    #[test]
    fn collapse_leaves_only_the_collapsed_position_important() {
        let mut pop = vec![1e-4f32; 31];
        pop.push(1.0 - 31e-4);
        for lambda in [0.0f32, 1.0, 3.0, 5.0] {
            let t = MeanStdThreshold { lambda }.threshold(&pop).unwrap();
            let above: Vec<usize> = (0..pop.len()).filter(|&i| pop[i] > t).collect();
            assert_eq!(above, vec![31], "lambda {lambda}: threshold {t}");
        }
        // Uniform attention: nobody is above mean + λ·std for λ ≥ 0 (std = 0).
        let flat = vec![1.0f32 / 8.0; 8];
        let t = MeanStdThreshold { lambda: 0.0 }.threshold(&flat).unwrap();
        assert!(flat.iter().all(|&v| v <= t + 1e-7));
        // λ/n with λ < 1 keeps a uniform row important.
        let t = ScaledUniformThreshold { lambda: 0.9 }
            .threshold(&flat)
            .unwrap();
        assert!(flat.iter().all(|&v| v > t));
    }
}

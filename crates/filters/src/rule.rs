//! Upload rules: the per-token decision the engine asks for.

use hlm_core::{
    HlmError, ImportanceScorer, LayerSelection, Result, ThresholdPolicy, TokenView,
    UncertaintyEstimator, UploadDecision, UploadRule, validate,
};
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

/// Upload every token (standard HLM).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlwaysUpload {}

#[typetag::serde(name = "always")]
impl UploadRule for AlwaysUpload {
    fn decide(&self, _t: &TokenView<'_>, _rng: &mut dyn RngCore) -> Result<UploadDecision> {
        Ok(UploadDecision::plain(true))
    }
}

/// Never upload (with `filter_action = "stop_drafting"`: never stop a round early, i.e. classic
/// speculative decoding with fixed γ).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeverUpload {}

#[typetag::serde(name = "never")]
impl UploadRule for NeverUpload {
    fn decide(&self, _t: &TokenView<'_>, _rng: &mut dyn RngCore) -> Result<UploadDecision> {
        Ok(UploadDecision::plain(false))
    }
}

/// Skip each token independently with probability `skip_rate` (ablation baseline).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomSkip {
    pub skip_rate: f64,
}

#[typetag::serde(name = "random")]
impl UploadRule for RandomSkip {
    fn decide(&self, _t: &TokenView<'_>, rng: &mut dyn RngCore) -> Result<UploadDecision> {
        Ok(UploadDecision::plain(rng.random::<f64>() >= self.skip_rate))
    }
    fn validate(&self) -> Result<()> {
        validate::probability("skip_rate", self.skip_rate)
    }
}

/// How the two conditions of a [`TokenFilter`] combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// Upload only tokens that are uncertain AND important (the paper's method).
    #[default]
    And,
    /// Upload tokens that are uncertain OR important.
    Or,
}

/// "Uncertain": the estimator's value is strictly above the threshold (u = u_th skips).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UncertaintyCondition {
    pub estimator: Box<dyn UncertaintyEstimator>,
    pub threshold: Box<dyn ThresholdPolicy>,
}

/// "Important": the scorer's value is strictly above the (possibly adaptive) threshold.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportanceCondition {
    pub scorer: Box<dyn ImportanceScorer>,
    pub threshold: Box<dyn ThresholdPolicy>,
}

/// The token filter: uncertainty and/or importance, combined with AND or OR.
///
/// The two knobs users turn are the strictness of each condition: the uncertainty threshold
/// (higher = fewer tokens count as uncertain = fewer uploads) and the importance threshold's
/// λ (higher = fewer tokens count as important = fewer uploads under AND).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncertainty: Option<UncertaintyCondition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub importance: Option<ImportanceCondition>,
    #[serde(default)]
    pub combine: Combine,
}

#[typetag::serde(name = "token_filter")]
impl UploadRule for TokenFilter {
    fn attention_layers(&self) -> Option<LayerSelection> {
        self.importance.as_ref().map(|c| c.scorer.layers())
    }

    fn decide(&self, t: &TokenView<'_>, rng: &mut dyn RngCore) -> Result<UploadDecision> {
        let mut d = UploadDecision::default();
        let uncertain = match &self.uncertainty {
            Some(c) => {
                let u = c.estimator.estimate(t.logits, t.draft, rng)?;
                let th = c.threshold.threshold(&[])?;
                d.uncertainty = Some(u);
                d.uncertainty_threshold = Some(th);
                Some(u > th)
            }
            None => None,
        };
        let important = match &self.importance {
            Some(c) => {
                let att = t.attention.ok_or_else(|| {
                    HlmError::Filter(
                        "the importance filter needs attention from the draft model".into(),
                    )
                })?;
                let s = c.scorer.score(att)?;
                let th = c.threshold.threshold(&s.population)?;
                d.importance = Some(s.score);
                d.importance_threshold = Some(th);
                // With no population (a one-token context) there is nothing to compare with:
                // count the token as important, the safe side.
                Some(s.population.is_empty() || s.score > th)
            }
            None => None,
        };
        d.upload = match (uncertain, important) {
            (Some(u), Some(i)) => match self.combine {
                Combine::And => u && i,
                Combine::Or => u || i,
            },
            (Some(u), None) => u,
            (None, Some(i)) => i,
            (None, None) => true,
        };
        Ok(d)
    }

    fn validate(&self) -> Result<()> {
        if self.uncertainty.is_none() && self.importance.is_none() {
            return Err(HlmError::invalid(
                "uncertainty",
                "absent (and so is importance)",
                "give `uncertainty`, `importance` or both",
            ));
        }
        if let Some(c) = &self.uncertainty {
            c.estimator
                .validate()
                .map_err(|e| e.within("uncertainty.estimator"))?;
            c.threshold
                .validate()
                .map_err(|e| e.within("uncertainty.threshold"))?;
        }
        if let Some(c) = &self.importance {
            c.scorer
                .validate()
                .map_err(|e| e.within("importance.scorer"))?;
            c.threshold
                .validate()
                .map_err(|e| e.within("importance.threshold"))?;
        }
        Ok(())
    }
}

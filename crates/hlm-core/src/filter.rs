//! The token filter: the parts that decide whether a drafted token is uploaded for verification.
//!
//! An [`UploadRule`] makes the decision. The standard rule (`filters::TokenFilter`) composes an
//! [`UncertaintyEstimator`] and an [`ImportanceScorer`], each compared with a [`ThresholdPolicy`],
//! and combines the two conditions with AND or OR. Other rules (always upload, random skipping,
//! your own) implement [`UploadRule`] directly.

use rand::RngCore;

use crate::{AttentionMap, LayerSelection, NextTokenLogits, Result, TokenId};

/// Everything the filter may look at for one drafted token.
#[derive(Debug, Clone, Copy)]
pub struct TokenView<'a> {
    /// Draft-model logits that produced the draft (temperature 1, before sampling), where the
    /// model keeps them: ask them small questions (see [`NextTokenLogits`]) rather than reading
    /// the whole vector back.
    pub logits: &'a dyn NextTokenLogits,
    /// The sampling temperature the draft was drawn at.
    pub temperature: f32,
    /// The drafted token.
    pub draft: TokenId,
    /// Attention of the newest position after feeding the draft, if the rule asked for it.
    pub attention: Option<&'a AttentionMap>,
    /// Index of this token among the generated ones (0 = first new token).
    pub position: usize,
}

/// The outcome of the filter for one token, with the signals behind it (for statistics,
/// calibration and codecs).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UploadDecision {
    /// Upload (and verify) this token.
    pub upload: bool,
    /// Measured uncertainty, if an estimator ran.
    pub uncertainty: Option<f32>,
    /// Uncertainty threshold in force.
    pub uncertainty_threshold: Option<f32>,
    /// Measured importance score, if a scorer ran.
    pub importance: Option<f32>,
    /// Importance threshold in force at this step.
    pub importance_threshold: Option<f32>,
}

impl UploadDecision {
    /// A decision with no signals.
    pub fn plain(upload: bool) -> Self {
        UploadDecision {
            upload,
            ..Default::default()
        }
    }
}

/// Decides per token whether to upload it for verification.
#[typetag::serde(tag = "type")]
pub trait UploadRule: std::fmt::Debug + Send + Sync {
    /// The attention layers the rule needs from the draft model (`None`: no attention).
    fn attention_layers(&self) -> Option<LayerSelection> {
        None
    }
    /// Decide for one token.
    fn decide(&self, token: &TokenView<'_>, rng: &mut dyn RngCore) -> Result<UploadDecision>;
    /// Check parameters before a run.
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

/// Measures how unsure the draft model is about its draft token (higher = more uncertain).
#[typetag::serde(tag = "type")]
pub trait UncertaintyEstimator: std::fmt::Debug + Send + Sync {
    /// Uncertainty of `draft` given the draft model's `logits` (on the model's device: use its
    /// queries, which return a few numbers, rather than `to_host`).
    fn estimate(
        &self,
        logits: &dyn NextTokenLogits,
        draft: TokenId,
        rng: &mut dyn RngCore,
    ) -> Result<f32>;
    /// Check parameters before a run.
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

/// An importance score and the per-step population it is judged against.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportanceSignal {
    /// The score of the current token (higher = more important).
    pub score: f32,
    /// The aggregated attention row of this step, from which adaptive thresholds are computed.
    pub population: Vec<f32>,
}

/// Scores how important the current token is, from the draft model's attention.
#[typetag::serde(tag = "type")]
pub trait ImportanceScorer: std::fmt::Debug + Send + Sync {
    /// Which layers' attention the scorer needs.
    fn layers(&self) -> LayerSelection;
    /// Score from the attention of the newest position.
    fn score(&self, attention: &AttentionMap) -> Result<ImportanceSignal>;
    /// Check parameters before a run.
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

/// Gives the threshold a score must exceed. Fixed policies ignore `population`; adaptive ones
/// recompute the threshold from it at every step.
#[typetag::serde(tag = "type")]
pub trait ThresholdPolicy: std::fmt::Debug + Send + Sync {
    /// The threshold for this step.
    fn threshold(&self, population: &[f32]) -> Result<f32>;
    /// Check parameters before a run.
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

//! A worked example of adding a filter policy without touching hlm's crates.
//!
//! [`DraftSurprise`] is an [`UncertaintyEstimator`]: u = 1 − p(d), one minus the probability the
//! draft model gives its own draft token (at temperature 1). Confident drafts score near 0 and
//! are skipped by any threshold; long-shot drafts score near 1 and are uploaded. It costs one
//! softmax, against K for temperature perturbation. It asks the logits one question
//! (`token_probs`), which a model on a GPU answers there: one number comes back, not the
//! vocabulary.
//!
//! Three steps make it usable from a config file:
//! 1. implement the trait and register it: `#[typetag::serde(name = "draft_surprise")]`;
//! 2. give the crate a `link()` function and call it from a binary, so the linker keeps the
//!    registration (see `src/main.rs`, which is then a complete `hlm`);
//! 3. name it in a config: `[upload.uncertainty.estimator] type = "draft_surprise"`
//!    (see `surprise-hlm.toml` next to this crate).

use hlm_core::{HlmError, NextTokenLogits, Result, TokenId, UncertaintyEstimator};
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// u = 1 − p(draft) under the draft model's softmax at `temperature`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DraftSurprise {
    /// Temperature of the softmax the probability is read from (default 1).
    pub temperature: f32,
}

impl Default for DraftSurprise {
    fn default() -> Self {
        DraftSurprise { temperature: 1.0 }
    }
}

#[typetag::serde(name = "draft_surprise")]
impl UncertaintyEstimator for DraftSurprise {
    fn estimate(
        &self,
        logits: &dyn NextTokenLogits,
        draft: TokenId,
        _rng: &mut dyn RngCore,
    ) -> Result<f32> {
        let pd = logits.token_probs(draft, &[self.temperature])?;
        Ok(1.0 - pd[0])
    }

    fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(HlmError::invalid(
                "upload.uncertainty.estimator.temperature",
                self.temperature,
                "must be a finite number > 0",
            ));
        }
        Ok(())
    }
}

/// Reference this from a binary so the typetag registration above is linked in.
pub fn link() {}

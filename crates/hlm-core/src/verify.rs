//! The verifier: the large model's side of the hybrid pipeline.

use std::sync::Arc;

use crate::{BuildContext, Residual, ResidualCodec, Result, TextTokenizer, TokenId, UploadPayload};

/// Per-session parameters a verifier needs before the first request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionParams {
    /// Sampling temperature of the target distribution (0 = greedy).
    pub temperature: f32,
    /// Seed of the verifier's random stream (acceptance draws and resampling).
    pub seed: u64,
    /// Vocabulary size of the device's draft model (0 when there is none), so a verifier that
    /// could not be checked at build time (a remote one) can refuse a mismatch.
    pub draft_vocab_size: usize,
    /// [`crate::TextTokenizer::fingerprint`] of the device's tokenizer, when it has one.
    pub tokenizer_fingerprint: Option<u64>,
    /// How the verifier sends its distribution down after rejecting a split-verified draft
    /// ([`Verdict::Rejected`]).
    pub residual: ResidualCodec,
}

/// One drafted token sent for verification.
#[derive(Debug, Clone, PartialEq)]
pub struct DraftToken {
    /// The drafted token id.
    pub token: TokenId,
    /// What was uploaded for it. `None` marks a token the filter skipped: it is part of the
    /// context, accepted without verification.
    pub payload: Option<UploadPayload>,
}

/// One verification request: context the verifier has not seen yet, then the drafts.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VerifyRequest {
    /// Committed tokens the verifier has not seen (skipped tokens, the last correction).
    pub context: Vec<TokenId>,
    /// Drafted tokens in order; verification stops at the first rejection.
    pub drafts: Vec<DraftToken>,
    /// After all drafts are accepted, draw one more token from the target (classic speculative
    /// decoding's bonus token). With no drafts this is plain target-model generation.
    pub bonus: bool,
}

/// The verdict for one position of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Verdict {
    /// An uploaded draft was accepted.
    Accepted,
    /// A skipped draft (no payload) was taken as it is.
    Unverified,
    /// The draft at this position was rejected and replaced by this token.
    Resampled(TokenId),
    /// The draft at this position (a split-verified one: only x_d was uploaded) was rejected;
    /// the device draws the replacement from [`VerifyOutcome::residual`] and its own x.
    Rejected,
    /// All drafts stood; this extra token comes from the target distribution.
    Bonus(TokenId),
}

/// The answer to a [`VerifyRequest`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VerifyOutcome {
    /// Verdicts in order: `Accepted`/`Unverified` for each draft that stood, then at most one
    /// `Resampled`, `Rejected` or `Bonus`.
    pub verdicts: Vec<Verdict>,
    /// The target's distribution at the position of a final [`Verdict::Rejected`] (and only
    /// then), encoded by the session's [`ResidualCodec`].
    pub residual: Option<Residual>,
    /// Positions the target model computed for this request (context + drafts).
    pub server_tokens: u64,
    /// Server compute time (seconds, measured).
    pub compute_s: f64,
    /// The target's probability y_d of each judged draft token, in draft order (may be empty
    /// or shorter than the drafts: only drafts the verifier judged have one).
    pub target_probs: Vec<Option<f32>>,
    /// When the final [`Verdict::Resampled`] was drawn from an approximated residual (a
    /// serving engine that reported only the top of the distribution): the probability mass
    /// it did not report. `None`: exact.
    pub approx_residual_mass: Option<f32>,
}

/// The large model's side: verifies drafts by speculative sampling, keeps its own KV state and
/// rolls it back on rejection.
pub trait Verifier: Send {
    /// Length of the target's logit vectors (0 while unknown: a remote verifier whose server
    /// has not answered yet checks the vocabulary at [`Verifier::begin`] instead).
    fn vocab_size(&self) -> usize;
    /// Maximum context the target supports.
    fn max_context(&self) -> usize;
    /// Start a session with the prompt (prefill).
    fn begin(&mut self, prompt: &[TokenId], params: &SessionParams) -> Result<()>;
    /// Verify one block of drafts.
    fn verify(&mut self, request: &VerifyRequest) -> Result<VerifyOutcome>;
    /// The tokenizer, when the verifier knows one.
    fn tokenizer(&self) -> Option<Arc<dyn TextTokenizer>>;
    /// The device's tokenizer, given when the pipeline is built. A verifier that cannot
    /// offer its own for comparison (a serving engine with a tokenizer endpoint) keeps it to
    /// check the engine's tokenization against at session start; others ignore it.
    fn use_device_tokenizer(&mut self, _tokenizer: Arc<dyn TextTokenizer>) {}
    /// A short human-readable description.
    fn describe(&self) -> String;
    /// The target's natural log-probability (temperature 1) of each token of `continuation`
    /// after `prompt`: how likely the LLM finds an output, the usual measure of how far a
    /// lossy method drifts from it. `None` where the verifier cannot score a sequence (a
    /// remote server without the request). Ends any session: call [`Verifier::begin`] again
    /// before verifying.
    fn log_likelihood(
        &mut self,
        _prompt: &[TokenId],
        _continuation: &[TokenId],
    ) -> Result<Option<Vec<f64>>> {
        Ok(None)
    }
}

/// Refuse a token a verifier was given that lies outside its vocabulary of `vocab`, before
/// any of them reaches the model (an error after the pass would leave its state holding them).
pub fn check_tokens_in_vocab(tokens: &[TokenId], vocab: usize) -> Result<()> {
    match tokens.iter().find(|&&t| t as usize >= vocab) {
        Some(&bad) => Err(crate::HlmError::Verifier(format!(
            "token {bad} is outside the vocabulary of {vocab}"
        ))),
        None => Ok(()),
    }
}

/// `prompt` then `continuation`, checked for [`Verifier::log_likelihood`]: a prompt to
/// condition on, every token inside the vocabulary of `vocab`.
pub fn scored_sequence(
    prompt: &[TokenId],
    continuation: &[TokenId],
    vocab: usize,
) -> Result<Vec<TokenId>> {
    if prompt.is_empty() {
        return Err(crate::HlmError::Verifier(
            "nothing to condition on: the prompt is empty".into(),
        ));
    }
    let mut seq = prompt.to_vec();
    seq.extend_from_slice(continuation);
    check_tokens_in_vocab(&seq, vocab)?;
    Ok(seq)
}

/// Config-selected recipe for a verifier (`[verifier]` table, `type = ...`).
#[typetag::serde(tag = "type")]
pub trait VerifierSpec: std::fmt::Debug + Send + Sync {
    /// Build the verifier (load its model or connect to its server).
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Verifier>>;
}

impl VerifyOutcome {
    /// Check the verdicts against the request they answer; a verifier on the other side of a
    /// network may be wrong, and the engine must never act on an inconsistent answer.
    pub fn validate(&self, request: &VerifyRequest) -> Result<()> {
        let bad = |m: String| {
            Err(crate::HlmError::Verifier(format!(
                "inconsistent verdicts: {m}"
            )))
        };
        let n = request.drafts.len();
        for (i, v) in self.verdicts.iter().enumerate() {
            let last = i + 1 == self.verdicts.len();
            match v {
                Verdict::Accepted | Verdict::Unverified => {
                    if i >= n {
                        return bad(format!("verdict {i} beyond the {n} drafts"));
                    }
                    let skipped = request.drafts[i].payload.is_none();
                    if skipped != matches!(v, Verdict::Unverified) {
                        return bad(format!(
                            "verdict {i} is {v:?} for a draft with payload = {}",
                            !skipped
                        ));
                    }
                }
                Verdict::Resampled(_) => {
                    if !last || i >= n || request.drafts[i].payload.is_none() {
                        return bad(format!(
                            "resample at {i} is not the last verdict of an uploaded draft"
                        ));
                    }
                }
                Verdict::Rejected => {
                    let split = request.drafts.get(i).is_some_and(|d| {
                        matches!(d.payload, Some(UploadPayload::DraftProbability { .. }))
                    });
                    if !last || !split {
                        return bad(format!(
                            "rejection at {i} is not the last verdict of a split-verified draft"
                        ));
                    }
                }
                Verdict::Bonus(_) => {
                    if !last || i != n || !request.bonus {
                        return bad(format!(
                            "bonus at {i} without all {n} drafts accepted or not requested"
                        ));
                    }
                }
            }
        }
        let rejected = matches!(self.verdicts.last(), Some(Verdict::Rejected));
        if rejected != self.residual.is_some() {
            return bad(if rejected {
                "a rejection without the residual distribution".into()
            } else {
                "a residual distribution without a rejection".into()
            });
        }
        let ended = rejected || matches!(self.verdicts.last(), Some(Verdict::Resampled(_)));
        if !ended && self.verdicts.len() < n {
            return bad(format!(
                "only {} verdicts for {n} drafts",
                self.verdicts.len()
            ));
        }
        if !ended && request.bonus && self.verdicts.len() == n {
            return bad("bonus token requested but not returned".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ProbQuantization, ResidualCodec};

    fn request(payloads: Vec<UploadPayload>) -> VerifyRequest {
        VerifyRequest {
            context: vec![1],
            drafts: payloads
                .into_iter()
                .enumerate()
                .map(|(i, p)| DraftToken {
                    token: i as TokenId,
                    payload: Some(p),
                })
                .collect(),
            bonus: false,
        }
    }

    fn outcome(verdicts: Vec<Verdict>, residual: Option<Residual>) -> VerifyOutcome {
        VerifyOutcome {
            verdicts,
            residual,
            ..Default::default()
        }
    }

    /// A rejection comes only for a split-verified draft, last, with its residual; a residual
    /// never comes alone.
    #[test]
    fn rejections_and_residuals_are_checked_against_the_request() {
        let split = UploadPayload::DraftProbability { prob: 0.5 };
        let dense = UploadPayload::dense(&[0.5, 0.5], ProbQuantization::Float32);
        let residual = || Some(ResidualCodec::default().encode(&[0.5, 0.5]).unwrap());
        let req = request(vec![split.clone(), split.clone()]);
        let ok = outcome(vec![Verdict::Accepted, Verdict::Rejected], residual());
        assert!(ok.validate(&req).is_ok());
        let cases = [
            (
                request(vec![dense.clone(), split.clone()]),
                outcome(vec![Verdict::Rejected], residual()),
                "not the last verdict of a split-verified draft",
            ),
            (
                req.clone(),
                outcome(vec![Verdict::Accepted, Verdict::Rejected], None),
                "a rejection without the residual",
            ),
            (
                req.clone(),
                outcome(vec![Verdict::Accepted, Verdict::Accepted], residual()),
                "a residual distribution without a rejection",
            ),
            (
                req.clone(),
                outcome(vec![Verdict::Rejected, Verdict::Accepted], residual()),
                "not the last verdict",
            ),
        ];
        for (req, out, want) in cases {
            let e = out.validate(&req).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}

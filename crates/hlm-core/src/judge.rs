//! Judging one request's drafts against the target's next-token logits: the part of
//! verification that is the same wherever the target runs.
//!
//! [`crate::LocalVerifier`] computes every position's logits in one pass of its own model;
//! the serving-engine verifiers of `hlm-net` ask an engine for them position by position, and
//! stop asking at the first rejection. Both hand [`DraftJudge::judge`] a source of rows and
//! get the same verdicts, the same random draws and the same residuals from it, so a run
//! verified by an engine that computes the same distributions equals a local run token for
//! token.

use rand_chacha::ChaCha8Rng;

use crate::sampling::softmax_with_temperature;
use crate::streams::RandomStream;
use crate::{
    AcceptanceRule, GreedyMatch, HlmError, Judgement, Residual, ResidualCodec, Result,
    SessionParams, SplitJudgement, TokenId, UploadPayload, Verdict, VerifyRequest,
};
use std::sync::Arc;

/// The acceptance rule of a session with its temperature, residual codec and random stream.
pub struct DraftJudge {
    rule: Arc<dyn AcceptanceRule>,
    greedy: GreedyMatch,
    temperature: f32,
    residual: ResidualCodec,
    rng: ChaCha8Rng,
}

/// What [`DraftJudge::judge`] decided for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    /// Verdicts in order, as [`crate::VerifyOutcome::verdicts`].
    pub verdicts: Vec<Verdict>,
    /// The target's distribution at a final [`Verdict::Rejected`], encoded.
    pub residual: Option<Residual>,
    /// y_d of each judged draft (`None` for skipped ones), in draft order.
    pub target_probs: Vec<Option<f32>>,
    /// The draft that was rejected or replaced, if one was.
    pub rejected_at: Option<usize>,
}

impl DraftJudge {
    /// A judge with `rule` (used at temperature > 0; greedy matching at 0).
    pub fn new(rule: Arc<dyn AcceptanceRule>) -> Self {
        DraftJudge {
            rule,
            greedy: GreedyMatch {},
            temperature: 1.0,
            residual: ResidualCodec::default(),
            rng: RandomStream::Verifier.rng(0),
        }
    }

    /// Start a session: its temperature, residual codec and a fresh random stream of its
    /// own, apart from the device's streams of the same seed.
    pub fn begin(&mut self, params: &SessionParams, vocab: usize) -> Result<()> {
        params
            .residual
            .validate(vocab)
            .map_err(|e| e.within("speculation.residual"))?;
        self.temperature = params.temperature;
        self.residual = params.residual;
        self.rng = RandomStream::Verifier.rng(params.seed);
        Ok(())
    }

    /// Judge `req`'s drafts. `row(j)` gives the target's logits (or log-probabilities: only
    /// differences matter) predicting draft `j`, and for `j == drafts.len()` the token after
    /// every draft (asked for only when a bonus token is drawn); it is called in order, only
    /// for the positions the verdicts need, so a source that computes rows lazily stops at
    /// the first rejection.
    ///
    /// On an error (a row that could not be had) the random stream is as it was before, so a
    /// request that failed and is sent again later draws the same numbers.
    pub fn judge(
        &mut self,
        req: &VerifyRequest,
        vocab: usize,
        row: impl FnMut(usize) -> Result<Vec<f32>>,
    ) -> Result<Judged> {
        let saved = self.rng.clone();
        let judged = self.judge_once(req, vocab, row);
        if judged.is_err() {
            self.rng = saved;
        }
        judged
    }

    fn judge_once(
        &mut self,
        req: &VerifyRequest,
        vocab: usize,
        mut row: impl FnMut(usize) -> Result<Vec<f32>>,
    ) -> Result<Judged> {
        let mut verdicts = Vec::with_capacity(req.drafts.len() + 1);
        let mut target_probs = Vec::with_capacity(req.drafts.len());
        let mut residual = None;
        for (i, d) in req.drafts.iter().enumerate() {
            let Some(payload) = &d.payload else {
                verdicts.push(Verdict::Unverified);
                target_probs.push(None);
                continue;
            };
            let y = softmax_with_temperature(&checked(row(i)?, vocab)?, self.temperature);
            target_probs.push(y.get(d.token as usize).copied());
            let rule: &dyn AcceptanceRule = if self.temperature <= 0.0 {
                // Temperature 0 makes both distributions one-hot; greedy matching is the same
                // rule without building them.
                &self.greedy
            } else {
                self.rule.as_ref()
            };
            let verdict = if let UploadPayload::DraftProbability { prob } = payload {
                match rule.judge_split(d.token, *prob, &y, &mut self.rng) {
                    SplitJudgement::Accept => Verdict::Accepted,
                    SplitJudgement::Replace(t) => Verdict::Resampled(t),
                    SplitJudgement::Residual => {
                        residual = Some(self.residual.encode(&y)?);
                        Verdict::Rejected
                    }
                }
            } else {
                let x = payload.reconstruct(d.token, vocab)?;
                match rule.judge(d.token, &x, &y, &mut self.rng) {
                    Judgement::Accept => Verdict::Accepted,
                    Judgement::Reject(t) => Verdict::Resampled(t),
                }
            };
            verdicts.push(verdict);
            if verdict != Verdict::Accepted {
                return Ok(Judged {
                    verdicts,
                    residual,
                    target_probs,
                    rejected_at: Some(i),
                });
            }
        }
        if req.bonus {
            let last = checked(row(req.drafts.len())?, vocab)?;
            let y = softmax_with_temperature(&last, self.temperature);
            let t = if self.temperature <= 0.0 {
                crate::sampling::argmax(&y)
            } else {
                crate::sampling::sample(&y, &mut self.rng)
            };
            verdicts.push(Verdict::Bonus(t as TokenId));
        }
        Ok(Judged {
            verdicts,
            residual,
            target_probs,
            rejected_at: None,
        })
    }
}

/// A row of logits must cover the vocabulary exactly.
fn checked(row: Vec<f32>, vocab: usize) -> Result<Vec<f32>> {
    if row.len() != vocab {
        return Err(HlmError::Verifier(format!(
            "a row of {} logits for a vocabulary of {vocab}",
            row.len()
        )));
    }
    Ok(row)
}

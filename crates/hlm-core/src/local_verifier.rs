//! Verification on a target model in this process: speculative sampling with KV rollback.
//!
//! The algorithm of verification, for any [`TargetModel`]: the in-process pipeline uses it
//! directly (`[verifier] type = "local"`) and `hlm serve` runs one per session, batching the
//! sessions' passes with [`verify_batch`]. It needs no particular model, so it lives here
//! beside the traits, as the decoding loop does.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::judge::{DraftJudge, Judged};
use crate::verify::{check_tokens_in_vocab, scored_sequence};
use crate::{
    AcceptanceRule, BuildContext, ConfiguredRule, HlmError, Result, SessionParams, TargetModel,
    TargetModelSpec, TextTokenizer, TokenId, Verifier, VerifierSpec, VerifyOutcome, VerifyRequest,
};

/// A verifier that runs its target model in this process.
///
/// Invariant between requests: the target's KV state holds exactly the tokens the verifier has
/// seen, and `last_logits` (when present) are the logits after the last of them. A request's
/// `context` and drafts are fed in one pass; on rejection at draft `i` the state is truncated
/// to just before it, so the replacement token arrives as context of the next request.
pub struct LocalVerifier {
    model: Box<dyn TargetModel>,
    judge: DraftJudge,
    last_logits: Option<Vec<f32>>,
}

impl LocalVerifier {
    /// Wrap a target model with an acceptance rule (use [`crate::SpeculativeSampling`] for
    /// lossless verification).
    pub fn new(model: Box<dyn TargetModel>, rule: Arc<dyn AcceptanceRule>) -> Self {
        LocalVerifier {
            model,
            judge: DraftJudge::new(rule),
            last_logits: None,
        }
    }
}

impl Verifier for LocalVerifier {
    fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }

    fn max_context(&self) -> usize {
        self.model.max_context()
    }

    fn begin(&mut self, prompt: &[TokenId], params: &SessionParams) -> Result<()> {
        if prompt.is_empty() {
            return Err(HlmError::Verifier("empty prompt".into()));
        }
        self.judge.begin(params, self.model.vocab_size())?;
        self.model.truncate(0)?;
        // Only the last position's logits are ever read: a long prompt must not cost a row
        // of the vocabulary per token.
        let mut logits = self.model.forward_tail(prompt, 1)?;
        self.last_logits = logits.pop();
        Ok(())
    }

    fn verify(&mut self, req: &VerifyRequest) -> Result<VerifyOutcome> {
        let t0 = Instant::now();
        let fed = self.prepare(req)?;
        let all = if fed.is_empty() {
            Vec::new()
        } else {
            self.model.forward_tail(&fed, logit_rows(req))?
        };
        let mut outcome = self.conclude(req, all)?;
        outcome.compute_s = t0.elapsed().as_secs_f64();
        Ok(outcome)
    }

    fn tokenizer(&self) -> Option<Arc<dyn TextTokenizer>> {
        self.model.tokenizer()
    }

    fn describe(&self) -> String {
        format!("local verifier on {}", self.model.describe())
    }

    fn log_likelihood(
        &mut self,
        prompt: &[TokenId],
        continuation: &[TokenId],
    ) -> Result<Option<Vec<f64>>> {
        let tokens = scored_sequence(prompt, continuation, self.model.vocab_size())?;
        if continuation.is_empty() {
            return Ok(Some(Vec::new()));
        }
        self.last_logits = None;
        self.model.truncate(0)?;
        // Rows for the last prompt token and every continuation token but the last: each
        // predicts the next continuation token.
        let rows = self.model.forward_tail(&tokens, continuation.len() + 1)?;
        self.model.truncate(0)?;
        if rows.len() != continuation.len() + 1 {
            return Err(HlmError::Model(format!(
                "the model returned {} rows of logits for {} wanted",
                rows.len(),
                continuation.len() + 1
            )));
        }
        Ok(Some(
            continuation
                .iter()
                .zip(&rows)
                .map(|(&t, row)| log_softmax_at(row, t as usize))
                .collect(),
        ))
    }
}

/// `ln softmax(logits)[i]`, in f64 (a long continuation sums many of them).
fn log_softmax_at(logits: &[f32], i: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits[i] as f64 - max - sum.ln()
}

impl LocalVerifier {
    /// The tokens a request feeds to the model (context, then drafts), checked.
    fn prepare(&self, req: &VerifyRequest) -> Result<Vec<TokenId>> {
        let vocab = self.model.vocab_size();
        let mut fed: Vec<TokenId> = req.context.clone();
        fed.extend(req.drafts.iter().map(|d| d.token));
        check_tokens_in_vocab(&fed, vocab)?;
        // Refuse a malformed payload before the model state moves (after the pass, an error
        // would leave the KV state holding tokens the caller thinks were refused).
        for d in &req.drafts {
            if let Some(p) = &d.payload {
                p.validate(d.token, vocab)?;
            }
        }
        if req.context.is_empty()
            && (!req.drafts.is_empty() || req.bonus)
            && self.last_logits.is_none()
        {
            return Err(HlmError::Verifier(
                "no logits for the first draft: the request has no context and the previous \
                 round ended with a new token"
                    .into(),
            ));
        }
        Ok(fed)
    }

    /// Judge the drafts of `req` given the logits of the last [`logit_rows`] fed positions
    /// (`all`, as the model returned them after [`LocalVerifier::prepare`]'s tokens were
    /// fed), and roll back.
    fn conclude(&mut self, req: &VerifyRequest, all: Vec<Vec<f32>>) -> Result<VerifyOutcome> {
        let vocab = self.model.vocab_size();
        let fed_len = req.context.len() + req.drafts.len();
        if all.len() != logit_rows(req).min(fed_len) {
            return Err(HlmError::Model(format!(
                "the model returned {} rows of logits for {} wanted",
                all.len(),
                logit_rows(req)
            )));
        }
        let base = self.model.context_len() - fed_len;
        // predictive[j] = logits predicting fed position `context.len() + j` (draft j), and the
        // last entry predicts the token after every draft.
        let nctx = req.context.len();
        let mut predictive: Vec<Vec<f32>> = Vec::with_capacity(req.drafts.len() + 1);
        if nctx == 0 {
            predictive.push(self.last_logits.take().ok_or_else(|| {
                HlmError::Verifier("no logits for the first draft: the request has no context and the previous round ended with a new token".into())
            })?);
        }
        // With context, the first row is its last position's: it predicts the first draft.
        predictive.extend(all);
        let judged = self
            .judge
            .judge(req, vocab, |j| match predictive.get_mut(j) {
                Some(row) => Ok(std::mem::take(row)),
                None => Err(HlmError::Model(format!(
                    "no row of logits for position {j}"
                ))),
            })?;
        match judged.rejected_at {
            Some(i) => {
                self.model.truncate(base + nctx + i)?;
                self.last_logits = None;
            }
            None if req.bonus => self.last_logits = None,
            None => self.last_logits = predictive.pop(),
        }
        let Judged {
            verdicts,
            residual,
            target_probs,
            ..
        } = judged;
        Ok(VerifyOutcome {
            verdicts,
            residual,
            server_tokens: fed_len as u64,
            compute_s: 0.0,
            target_probs,
            approx_residual_mass: None,
        })
    }
}

/// Rows of logits a verification reads: the last context position's (it predicts the first
/// draft; without context the previous round's are kept) and each draft's.
fn logit_rows(req: &VerifyRequest) -> usize {
    req.drafts.len() + usize::from(!req.context.is_empty())
}

/// Verify requests of several sessions, with one model pass for all of them where their models
/// allow it ([`crate::forward_tail_batch`]: sessions on one model's weights). The same verdicts as calling
/// [`Verifier::verify`] on each in turn; `compute_s` of each is its share of the pass, by fed
/// tokens. One result per item, in order.
pub fn verify_batch(
    items: &mut [(&mut LocalVerifier, &VerifyRequest)],
) -> Vec<Result<VerifyOutcome>> {
    let t0 = Instant::now();
    let mut results: Vec<Option<Result<VerifyOutcome>>> = (0..items.len()).map(|_| None).collect();
    let mut feeds: Vec<Vec<TokenId>> = Vec::with_capacity(items.len());
    let mut fed_total = 0usize;
    for (i, (v, req)) in items.iter().enumerate() {
        match v.prepare(req) {
            Ok(fed) => {
                fed_total += fed.len();
                feeds.push(fed);
            }
            Err(e) => {
                results[i] = Some(Err(e));
                feeds.push(Vec::new());
            }
        }
    }
    // Items with something to feed go through the model together.
    let running: Vec<usize> = (0..items.len())
        .filter(|&i| results[i].is_none() && !feeds[i].is_empty())
        .collect();
    let mut logits: Vec<Option<Result<Vec<Vec<f32>>>>> = (0..items.len()).map(|_| None).collect();
    {
        let mut models: Vec<&mut dyn TargetModel> = Vec::with_capacity(running.len());
        let mut feed_refs: Vec<&[TokenId]> = Vec::with_capacity(running.len());
        let mut tails = Vec::with_capacity(running.len());
        let mut wanted = running.iter().peekable();
        for (i, (v, req)) in items.iter_mut().enumerate() {
            if wanted.peek() == Some(&&i) {
                wanted.next();
                models.push(v.model.as_mut());
                feed_refs.push(&feeds[i]);
                tails.push(logit_rows(req));
            }
        }
        for (&i, r) in
            running
                .iter()
                .zip(crate::forward_tail_batch(&mut models, &feed_refs, &tails))
        {
            logits[i] = Some(r);
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    for (i, (v, req)) in items.iter_mut().enumerate() {
        if results[i].is_some() {
            continue;
        }
        let all = match logits[i].take() {
            None => Ok(Vec::new()),
            Some(r) => r,
        };
        let share = if fed_total > 0 {
            elapsed * feeds[i].len() as f64 / fed_total as f64
        } else {
            0.0
        };
        results[i] = Some(all.and_then(|all| v.conclude(req, all)).map(|mut o| {
            o.compute_s = share;
            o
        }));
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(HlmError::Verifier("request was not processed".into()))))
        .collect()
}

/// Config of a [`LocalVerifier`]: `[verifier] type = "local"`, `model = { type = ... }`,
/// optional `rule` ([`ConfiguredRule`]: `"speculative"`, the default, or `"greedy"`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalVerifierSpec {
    pub model: Box<dyn TargetModelSpec>,
    #[serde(default)]
    pub rule: ConfiguredRule,
}

#[typetag::serde(name = "local")]
impl VerifierSpec for LocalVerifierSpec {
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Verifier>> {
        let model = self.model.build(ctx).map_err(|e| e.within("model"))?;
        Ok(Box::new(LocalVerifier::new(model, self.rule.rule())))
    }
}

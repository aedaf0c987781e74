//! [`EngineVerifier`]: the device's [`Verifier`] over any [`Engine`].
//!
//! The engine keeps no session for us: every request carries the whole sequence (the
//! engines' prefix caches make the shared part cheap), so a fault loses nothing. The
//! verifier remembers what it has verified (`history`), asks the engine for the rows the
//! verdicts need, judges locally and advances `history` only once a request succeeded; a
//! request that fails leaves it as it was, and the engine's fault path keeps the drafts
//! unverified and sends them later as context.

use std::sync::Arc;
use std::time::Instant;

use hlm_core::{
    AcceptanceRule, DraftJudge, HlmError, Result, SessionParams, SpeculativeSampling,
    TextTokenizer, TokenId, Verifier, VerifyOutcome, VerifyRequest, check_tokens_in_vocab,
    scored_sequence,
};

use super::sampled::SampledJudge;
use super::{Engine, EngineInfo, PointQuery, Scored, SparseRow};

/// The text whose tokens must be the same on both sides (letters, digits, spaces, code and a
/// non-Latin script: where tokenizers of different families part).
pub const TOKENIZER_PROBE: &str = "def probe(x):\n    return x * 2  # héllo, 世界! 12345";

/// Entries asked of an engine whose vocabulary nothing tells (it returns at most its own).
const UNKNOWN_VOCAB_ASK: usize = 1 << 20;

/// Log-probabilities of a row must sum to 1 within this (the engines print them rounded).
const MASS_TOLERANCE: f64 = 1e-3;

/// A verifier that asks a serving engine for the target's distributions.
pub struct EngineVerifier<E: Engine> {
    engine: E,
    expect_model: Option<String>,
    judge: DraftJudge,
    /// With `distribution = "sampled"`: the judge of small answers, used instead of `judge`.
    sampled: Option<SampledJudge>,
    /// The engine's model, once it answered and passed the checks.
    info: Option<(EngineInfo, usize)>,
    /// What the engine reported when the verifier was built, not yet checked (its context
    /// bounds the run before the first session).
    reported: Option<EngineInfo>,
    /// The device's tokenizer, to compare with the engine's at the first session.
    device_tokenizer: Option<Arc<dyn TextTokenizer>>,
    /// Every token of this session the verifier has verified or been told (prompt first).
    history: Vec<TokenId>,
}

impl<E: Engine> EngineVerifier<E> {
    /// A verifier on `engine` with exact speculative sampling; `expect_model` must be part of
    /// the engine's model name when given; `sampled` judges from small answers instead of
    /// whole distributions.
    pub fn new(engine: E, expect_model: Option<String>, sampled: Option<SampledJudge>) -> Self {
        Self::with_rule(
            engine,
            expect_model,
            Arc::new(SpeculativeSampling {}),
            sampled,
        )
    }

    /// As [`EngineVerifier::new`] with another acceptance rule (for whole distributions).
    pub fn with_rule(
        engine: E,
        expect_model: Option<String>,
        rule: Arc<dyn AcceptanceRule>,
        sampled: Option<SampledJudge>,
    ) -> Self {
        EngineVerifier {
            engine,
            expect_model,
            judge: DraftJudge::new(rule),
            sampled,
            info: None,
            reported: None,
            device_tokenizer: None,
            history: Vec::new(),
        }
    }

    /// Ask the engine what it serves now, if it answers (so that the pipeline knows its
    /// context before the first session); an engine that is down is asked again then.
    pub fn ask_info(&mut self) {
        match self.engine.info() {
            Ok(i) => self.reported = Some(i),
            Err(e) => tracing::warn!("{}: {e}", self.engine.describe()),
        }
    }

    /// The engine's model and vocabulary size, asked once and checked against the device.
    fn checked_info(&mut self, draft_vocab: usize) -> Result<usize> {
        if let Some((info, vocab)) = &self.info {
            if draft_vocab != 0 && *vocab != draft_vocab {
                return Err(HlmError::Incompatible(format!(
                    "{} serves `{}` with a vocabulary of {vocab} entries; the draft model's \
                     has {draft_vocab}",
                    self.engine.describe(),
                    info.model
                )));
            }
            return Ok(*vocab);
        }
        let info = match self.reported.take() {
            Some(i) => i,
            None => self.engine.info()?,
        };
        let name = self.engine.describe();
        if let Some(want) = &self.expect_model
            && !info.model.contains(want.as_str())
        {
            return Err(HlmError::Incompatible(format!(
                "{name} serves `{}`, not the `{want}` of verifier.model",
                info.model
            )));
        }
        let vocab = match info.vocab_size {
            Some(v) => v,
            // The engine does not say: a whole row of a one-token prompt tells. One entry
            // more than the draft's vocabulary is asked for, so a larger vocabulary shows;
            // without a draft (LLM-only), more entries than any vocabulary has.
            None => {
                let asked = if draft_vocab == 0 {
                    UNKNOWN_VOCAB_ASK
                } else {
                    draft_vocab.saturating_add(1)
                };
                let s = self.engine.score(&[0], 1, asked)?;
                if draft_vocab != 0 && s.rows.first().is_some_and(|r| r.len() >= asked) {
                    return Err(HlmError::Incompatible(format!(
                        "{name} serves `{}` with a vocabulary of more than {draft_vocab} \
                         entries, the draft model's",
                        info.model
                    )));
                }
                vocab_of_row(&s, &name)?
            }
        };
        if draft_vocab != 0 && vocab != draft_vocab {
            return Err(HlmError::Incompatible(format!(
                "{name} serves `{}` with a vocabulary of {vocab} entries; the draft model's \
                 has {draft_vocab}",
                info.model
            )));
        }
        if let Some(tok) = self.device_tokenizer.clone() {
            let ours = tok.encode(TOKENIZER_PROBE)?;
            if let Some(theirs) = self.engine.tokenize(TOKENIZER_PROBE)?
                && theirs != ours
            {
                return Err(HlmError::Incompatible(format!(
                    "{name} (`{}`) and the device tokenize {TOKENIZER_PROBE:?} differently: \
                     {theirs:?} there, {ours:?} here; serve the model whose tokenizer the draft \
                     model shares",
                    info.model
                )));
            }
        }
        tracing::info!(
            "{name}: `{}`, vocabulary {vocab}, context {:?}",
            info.model,
            info.max_context
        );
        self.info = Some((info, vocab));
        Ok(vocab)
    }

    /// The dense rows the judge reads, asked of the engine as the verdicts need them.
    fn rows_for(
        &mut self,
        seq: &[TokenId],
        base: usize,
        req: &VerifyRequest,
        vocab: usize,
    ) -> Result<(hlm_core::Judged, u64, Option<f64>)> {
        let mut computed = 0u64;
        let mut engine_s: Option<f64> = None;
        let name = self.engine.describe();
        let mut add = |s: &Scored, n: usize| {
            computed += s.computed_positions.unwrap_or(n as u64);
            if let Some(t) = s.compute_s {
                *engine_s.get_or_insert(0.0) += t;
            }
        };
        // Rows needed: up to the last judged draft (skipped ones are not judged), and the
        // bonus row.
        let needed = if req.bonus {
            req.drafts.len() + 1
        } else {
            req.drafts
                .iter()
                .rposition(|d| d.payload.is_some())
                .map_or(0, |i| i + 1)
        };
        let mut batch: Vec<SparseRow> = Vec::new();
        if self.engine.scores_prompt() && needed > 0 {
            let upto = (base + needed - 1).min(seq.len());
            let s = self.engine.score(&seq[..upto], base, vocab)?;
            if s.rows.len() != upto + 1 - base {
                return Err(HlmError::Verifier(format!(
                    "{name} scored {} positions of {}",
                    s.rows.len(),
                    upto + 1 - base
                )));
            }
            add(&s, seq.len());
            batch = s.rows;
        }
        let engine = &mut self.engine;
        let judged = self.judge.judge(req, vocab, |j| {
            let sparse = if batch.is_empty() {
                let end = base + j;
                let mut s = engine.score(&seq[..end], end, vocab)?;
                add(&s, 1);
                match s.rows.pop() {
                    Some(r) if s.rows.is_empty() => r,
                    _ => {
                        return Err(HlmError::Verifier(format!(
                            "{name} answered {} rows for one position",
                            s.rows.len() + 1
                        )));
                    }
                }
            } else {
                std::mem::take(batch.get_mut(j).ok_or_else(|| {
                    HlmError::Verifier(format!("{name} has no row for draft {j}"))
                })?)
            };
            dense(&sparse, vocab, &name)
        })?;
        Ok((judged, computed, engine_s))
    }
}

impl<E: Engine> Verifier for EngineVerifier<E> {
    fn vocab_size(&self) -> usize {
        self.info.as_ref().map_or(0, |(_, v)| *v)
    }

    fn max_context(&self) -> usize {
        self.info
            .as_ref()
            .map(|(i, _)| i)
            .or(self.reported.as_ref())
            .and_then(|i| i.max_context)
            .unwrap_or(usize::MAX)
    }

    fn begin(&mut self, prompt: &[TokenId], params: &SessionParams) -> Result<()> {
        if prompt.is_empty() {
            return Err(HlmError::Verifier("empty prompt".into()));
        }
        let vocab = self.checked_info(params.draft_vocab_size)?;
        self.judge.begin(params, vocab)?;
        if let Some(s) = self.sampled.as_mut() {
            s.begin(params)?;
        }
        self.history = prompt.to_vec();
        Ok(())
    }

    fn verify(&mut self, req: &VerifyRequest) -> Result<VerifyOutcome> {
        let t0 = Instant::now();
        let Some((_, vocab)) = self.info else {
            return Err(HlmError::Verifier("verify before begin".into()));
        };
        let mut seq = self.history.clone();
        seq.extend(&req.context);
        let base = seq.len();
        seq.extend(req.drafts.iter().map(|d| d.token));
        check_tokens_in_vocab(&seq[self.history.len()..], vocab)?;
        for d in &req.drafts {
            if let Some(p) = &d.payload {
                p.validate(d.token, vocab)?;
            }
        }
        if base == 0 {
            return Err(HlmError::Verifier("nothing to condition on".into()));
        }
        let (outcome, rejected_at) = if let Some(s) = self.sampled.as_mut() {
            let j = s.judge(&mut self.engine, &seq, base, req, vocab)?;
            let outcome = VerifyOutcome {
                verdicts: j.verdicts,
                residual: None,
                server_tokens: j.computed,
                compute_s: j.engine_s.unwrap_or_else(|| t0.elapsed().as_secs_f64()),
                target_probs: j.target_probs,
                approx_residual_mass: j.approx_mass,
            };
            (outcome, j.rejected_at)
        } else {
            let (judged, computed, engine_s) = self.rows_for(&seq, base, req, vocab)?;
            let outcome = VerifyOutcome {
                verdicts: judged.verdicts,
                residual: judged.residual,
                server_tokens: computed,
                compute_s: engine_s.unwrap_or_else(|| t0.elapsed().as_secs_f64()),
                target_probs: judged.target_probs,
                approx_residual_mass: None,
            };
            (outcome, judged.rejected_at)
        };
        // What the engine has now verified: up to the rejected draft, else everything (a
        // replacement or bonus token comes back as context of the next request).
        seq.truncate(rejected_at.map_or(seq.len(), |i| base + i));
        self.history = seq;
        Ok(outcome)
    }

    fn tokenizer(&self) -> Option<Arc<dyn TextTokenizer>> {
        None
    }

    fn use_device_tokenizer(&mut self, tokenizer: Arc<dyn TextTokenizer>) {
        self.device_tokenizer = Some(tokenizer);
    }

    fn describe(&self) -> String {
        match &self.info {
            Some((i, _)) => format!("{} serving `{}`", self.engine.describe(), i.model),
            None => self.engine.describe(),
        }
    }

    fn log_likelihood(
        &mut self,
        prompt: &[TokenId],
        continuation: &[TokenId],
    ) -> Result<Option<Vec<f64>>> {
        let vocab = self.checked_info(0)?;
        let seq = scored_sequence(prompt, continuation, vocab)?;
        self.history.clear();
        let name = self.engine.describe();
        let mut out = Vec::with_capacity(continuation.len());
        if self.engine.answers_points() {
            // One small answer a token: its exact log-probability after its prefix.
            for (i, &t) in continuation.iter().enumerate() {
                let p = self
                    .engine
                    .point(&seq[..prompt.len() + i], PointQuery::Token(t), 0)?;
                if p.token != t || !p.logprob.is_finite() || p.logprob > 0.0 {
                    return Err(HlmError::Verifier(format!(
                        "{name} scored token {} with log-probability {} when asked for {t}",
                        p.token, p.logprob
                    )));
                }
                out.push(f64::from(p.logprob));
            }
        } else if !continuation.is_empty() {
            // Whole rows of every prefix in one request; the last (after the whole
            // continuation) is not needed.
            let scored = self
                .engine
                .score(&seq[..seq.len() - 1], prompt.len(), vocab)?;
            if scored.rows.len() != continuation.len() {
                return Err(HlmError::Verifier(format!(
                    "{name} scored {} positions of the {} asked for",
                    scored.rows.len(),
                    continuation.len()
                )));
            }
            for (row, &t) in scored.rows.iter().zip(continuation) {
                let row = dense(row, vocab, &name)?;
                out.push(f64::from(row[t as usize]));
            }
        }
        Ok(Some(out))
    }
}

/// A whole-vocabulary row from an engine's pairs, checked: every id in range and given once,
/// every entry a log-probability, the mass 1.
fn dense(sparse: &SparseRow, vocab: usize, engine: &str) -> Result<Vec<f32>> {
    if sparse.len() != vocab {
        return Err(HlmError::Verifier(format!(
            "{engine} gave {} of the {vocab} probabilities of a position; it must return the \
             whole vocabulary (see the engine's flags in the README)",
            sparse.len()
        )));
    }
    let mut row = vec![f32::NAN; vocab];
    let mut mass = 0.0f64;
    for &(id, lp) in sparse {
        let slot = row.get_mut(id as usize).ok_or_else(|| {
            HlmError::Verifier(format!(
                "{engine} scored token {id} of a vocabulary of {vocab}"
            ))
        })?;
        if !slot.is_nan() {
            return Err(HlmError::Verifier(format!(
                "{engine} scored token {id} twice"
            )));
        }
        if lp.is_nan() || lp > 1e-4 {
            return Err(HlmError::Verifier(format!(
                "{engine} gave token {id} the log-probability {lp}"
            )));
        }
        *slot = lp;
        mass += (lp as f64).exp();
    }
    if (mass - 1.0).abs() > MASS_TOLERANCE {
        return Err(HlmError::Verifier(format!(
            "{engine}'s probabilities of a position sum to {mass}, not 1"
        )));
    }
    Ok(row)
}

/// The vocabulary size a whole row shows (ids 0..n, each once).
fn vocab_of_row(s: &Scored, engine: &str) -> Result<usize> {
    let row = s
        .rows
        .first()
        .ok_or_else(|| HlmError::Verifier(format!("{engine} scored nothing")))?;
    let n = row.len();
    dense(row, n, engine).map(|_| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_must_be_whole_distinct_and_normalised() {
        let half = (0.5f32).ln();
        assert_eq!(
            dense(&vec![(1, half), (0, half)], 2, "e").unwrap(),
            vec![half, half]
        );
        let e = |r: SparseRow, v| dense(&r, v, "e").unwrap_err().to_string();
        assert!(
            e(vec![(0, 0.0)], 2).contains("gave 1 of the 2"),
            "{}",
            e(vec![(0, 0.0)], 2)
        );
        assert!(e(vec![(0, half), (0, half)], 2).contains("twice"));
        assert!(e(vec![(0, half), (5, half)], 2).contains("token 5"));
        assert!(e(vec![(0, half), (1, f32::NAN)], 2).contains("NaN"));
        assert!(e(vec![(0, half), (1, half.exp().ln() - 1.0)], 2).contains("sum to"));
    }
}

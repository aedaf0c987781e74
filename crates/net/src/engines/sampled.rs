//! Speculative sampling from small answers (`distribution = "sampled"`): the drafted token's
//! exact probability for the acceptance test, and after a rejection tokens drawn by the engine
//! and kept with probability max(0, 1 − x_t / y_t).
//!
//! Why the residual draw is exact: a token t drawn from y and kept with that probability is
//! kept with probability max(0, y_t − x_t) in all, so the kept token follows
//! norm(max(0, y − x)), the residual of speculative sampling. Each try is one request; a try
//! fails with probability 1 − TV(x, y). After `tries` failures the replacement comes from
//! the top-k of y with the unreported mass m spread in the draft's shape (the research notes'
//! option (a)); the token that draw puts out strays from the target's distribution by at
//! most 2m in total variation, which the run records.
//!
//! Only temperatures 0 and 1 are exact here: an engine's raw probabilities are y itself at
//! T = 1 and give its argmax at T = 0; other temperatures need the normaliser of y^(1/T),
//! that is the whole distribution (`distribution = "full"`).

use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;

use hlm_core::sampling::{sample, sample_weights};
use hlm_core::{
    HlmError, RandomStream, Result, SessionParams, TokenId, UploadPayload, Verdict, VerifyRequest,
};

use super::{Engine, PointQuery};

/// The judge of `distribution = "sampled"`.
pub struct SampledJudge {
    tries: u32,
    top_k: usize,
    greedy: bool,
    rng: ChaCha8Rng,
}

/// What one request came to.
pub struct SampledJudged {
    pub verdicts: Vec<Verdict>,
    pub target_probs: Vec<Option<f32>>,
    pub rejected_at: Option<usize>,
    /// The unreported mass of an approximated replacement, when the last verdict is one.
    pub approx_mass: Option<f32>,
    pub computed: u64,
    pub engine_s: Option<f64>,
}

impl SampledJudge {
    /// `tries` engine draws per rejection, then a residual from the top `top_k`.
    pub fn new(tries: u32, top_k: usize) -> Self {
        SampledJudge {
            tries,
            top_k,
            greedy: false,
            rng: RandomStream::Verifier.rng(0),
        }
    }

    /// A session at `params.temperature` (0 or 1).
    pub fn begin(&mut self, params: &SessionParams) -> Result<()> {
        let t = params.temperature;
        if !(t <= 0.0 || (t - 1.0).abs() < 1e-6) {
            return Err(HlmError::invalid(
                "distribution",
                "sampled",
                format!(
                    "exact only at temperature 0 or 1, not {t}: the engine's raw probabilities \
                     are y itself only at T = 1; use \"full\""
                ),
            ));
        }
        self.greedy = t <= 0.0;
        self.rng = RandomStream::Verifier.rng(params.seed);
        Ok(())
    }

    /// Judge `req`, whose draft `j` follows `seq[..base + j]`. On an error the random stream
    /// is as it was, so the request sent again later draws the same numbers.
    pub fn judge<E: Engine>(
        &mut self,
        engine: &mut E,
        seq: &[TokenId],
        base: usize,
        req: &VerifyRequest,
        vocab: usize,
    ) -> Result<SampledJudged> {
        let saved = self.rng.clone();
        let judged = self.judge_once(engine, seq, base, req, vocab);
        if judged.is_err() {
            self.rng = saved;
        }
        judged
    }

    fn judge_once<E: Engine>(
        &mut self,
        engine: &mut E,
        seq: &[TokenId],
        base: usize,
        req: &VerifyRequest,
        vocab: usize,
    ) -> Result<SampledJudged> {
        let mut out = SampledJudged {
            verdicts: Vec::with_capacity(req.drafts.len() + 1),
            target_probs: Vec::with_capacity(req.drafts.len()),
            rejected_at: None,
            approx_mass: None,
            computed: 0,
            engine_s: None,
        };
        let mut ask = |prefix: &[TokenId], q: PointQuery, top: usize, out: &mut SampledJudged| {
            let p = engine.point(prefix, q, top)?;
            out.computed += p.computed_positions.unwrap_or(1);
            if let Some(t) = p.compute_s {
                *out.engine_s.get_or_insert(0.0) += t;
            }
            if p.token as usize >= vocab || p.top.iter().any(|&(id, _)| id as usize >= vocab) {
                return Err(HlmError::Verifier(format!(
                    "{} answered a token outside the vocabulary of {vocab}",
                    engine.describe()
                )));
            }
            // Log-probabilities: not NaN, at most 0 (up to the engines' rounding); -inf is
            // a probability of 0.
            let lp_ok = |lp: f32| !lp.is_nan() && lp <= 1e-4;
            if !lp_ok(p.logprob) || p.top.iter().any(|&(_, lp)| !lp_ok(lp)) {
                return Err(HlmError::Verifier(format!(
                    "{} answered a log-probability that is none: {} (token {})",
                    engine.describe(),
                    p.logprob,
                    p.token
                )));
            }
            Ok(p)
        };
        for (i, d) in req.drafts.iter().enumerate() {
            let Some(payload) = &d.payload else {
                out.verdicts.push(Verdict::Unverified);
                out.target_probs.push(None);
                continue;
            };
            if matches!(payload, UploadPayload::DraftProbability { .. }) {
                return Err(HlmError::invalid(
                    "distribution",
                    "sampled",
                    "split verification sends the target's residual down, which needs the \
                     whole distribution: use \"full\"",
                ));
            }
            let prefix = &seq[..base + i];
            let verdict = if self.greedy {
                let p = ask(prefix, PointQuery::Greedy, 1, &mut out)?;
                out.target_probs
                    .push(Some(if p.token == d.token { 1.0 } else { 0.0 }));
                if p.token == d.token {
                    Verdict::Accepted
                } else {
                    Verdict::Resampled(p.token)
                }
            } else {
                let x = payload.reconstruct(d.token, vocab)?;
                let p = ask(prefix, PointQuery::Token(d.token), self.top_k, &mut out)?;
                let y_d = p.logprob.exp();
                out.target_probs.push(Some(y_d));
                let x_d = x[d.token as usize];
                // x_d <= y_d accepts outright (also a draft the payload dropped, x_d = 0).
                if x_d <= y_d || self.rng.random::<f64>() < (y_d as f64 / x_d as f64) {
                    Verdict::Accepted
                } else {
                    let mut kept = None;
                    for _ in 0..self.tries {
                        let s = ask(prefix, PointQuery::Sample(self.rng.next_u64()), 0, &mut out)?;
                        let (y_t, x_t) = (s.logprob.exp(), x[s.token as usize]);
                        if y_t > x_t && self.rng.random::<f64>() < 1.0 - (x_t as f64 / y_t as f64) {
                            kept = Some(s.token);
                            break;
                        }
                    }
                    let t = match kept {
                        Some(t) => t,
                        None => {
                            let (t, m) = self.fallback(&x, &p.top, d.token, y_d);
                            out.approx_mass = Some(m);
                            t
                        }
                    };
                    Verdict::Resampled(t)
                }
            };
            out.verdicts.push(verdict);
            if verdict != Verdict::Accepted {
                out.rejected_at = Some(i);
                return Ok(out);
            }
        }
        if req.bonus {
            let q = if self.greedy {
                PointQuery::Greedy
            } else {
                PointQuery::Sample(self.rng.next_u64())
            };
            let p = ask(seq, q, 0, &mut out)?;
            out.verdicts.push(Verdict::Bonus(p.token));
        }
        Ok(out)
    }

    /// A replacement from the top-k of y (with the drafted token's exact y_d), the mass the
    /// engine did not report spread over the other tokens as the draft spreads its own;
    /// returns it and that mass.
    fn fallback(
        &mut self,
        x: &[f32],
        top: &[(TokenId, f32)],
        draft: TokenId,
        y_d: f32,
    ) -> (TokenId, f32) {
        let mut y = vec![f32::NAN; x.len()];
        for &(id, lp) in top {
            y[id as usize] = lp.exp();
        }
        y[draft as usize] = y_d;
        let known: f64 = y.iter().filter(|v| !v.is_nan()).map(|&v| v as f64).sum();
        let missing = (1.0 - known).max(0.0) as f32;
        let tail_x: f64 = y
            .iter()
            .zip(x)
            .filter(|(v, _)| v.is_nan())
            .map(|(_, &x)| x as f64)
            .sum();
        let tail_n = y.iter().filter(|v| v.is_nan()).count().max(1);
        for (v, &x_i) in y.iter_mut().zip(x) {
            if v.is_nan() {
                *v = if tail_x > 0.0 {
                    (missing as f64 * x_i as f64 / tail_x) as f32
                } else {
                    missing / tail_n as f32
                };
            }
        }
        let residual: Vec<f32> = y.iter().zip(x).map(|(&a, &b)| (a - b).max(0.0)).collect();
        let t =
            sample_weights(&residual, &mut self.rng).unwrap_or_else(|| sample(&y, &mut self.rng));
        (t as TokenId, missing)
    }
}

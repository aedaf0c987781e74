//! The hybrid decoding engine: one loop that runs SLM-only, LLM-only, standard HLM, U-HLM,
//! the uncertainty- and importance-aware HLM, CU-HLM, random skipping and classic speculative
//! decoding, depending only on which components the configuration provides.
//!
//! Life of one drafted token (hybrid case):
//! 1. sample `d` from the draft distribution `x` (temperature `T`);
//! 2. feed `d` to the draft model: logits for the next position, and attention of the newest
//!    position if the upload rule needs it;
//! 3. the [`UploadRule`] decides: upload (verify) or skip;
//! 4. an uploaded token is encoded by the [`UploadCodec`] and joins the current round; a skipped
//!    one is appended without verification (and reaches the verifier as context with the
//!    next upload, so its context stays complete); with `defer` it is not final yet: it joins
//!    the round with only its x_d, to be checked like the others;
//! 5. a round is sent when it holds γ uploaded drafts (or, with `stop_drafting`, when the filter
//!    flags a token or γ drafts are pending; with `defer`, also when `max_deferred` deferred
//!    drafts are), at EOS, or at the length limit; the verifier answers with accept/resample
//!    verdicts, and both models roll back to the last accepted position. A rejected draft whose
//!    distribution the verifier never saw (a split payload, a deferred token) comes back as
//!    `Rejected` with the target's distribution, and the device draws the replacement from
//!    norm(max(0, y − x)) with the x it kept.

use std::sync::Arc;
use std::time::Instant;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::adaptive::AdaptiveGamma;
use crate::config::{FilterAction, GenerationConfig, PipelineConfig, SpeculationConfig};
use crate::logits::NextTokenLogits;
use crate::sampling::{softmax_with_temperature, token_index_bits};
use crate::stats::{RunStats, TokenEvent, TokenKind};
use crate::streams::RandomStream;
use crate::{
    BuildContext, CodecHints, Costs, Direction, DraftModel, DraftToken, EnergyModel, HlmError,
    LinkModel, Result, SessionParams, TextTokenizer, TokenId, TokenView, Transfer, UploadCodec,
    UploadPayload, UploadRule, Verdict, Verifier, VerifyOutcome, VerifyRequest, Work,
};

/// The draft model's logits for the next position, wherever they live.
type Logits = Box<dyn NextTokenLogits>;

/// A built pipeline, ready to generate.
pub struct Pipeline {
    pub draft: Option<Box<dyn DraftModel>>,
    pub verifier: Option<Box<dyn Verifier>>,
    pub upload: Option<Box<dyn UploadRule>>,
    pub codec: Option<Box<dyn UploadCodec>>,
    pub link: Option<Box<dyn LinkModel>>,
    pub energy: Option<Box<dyn EnergyModel>>,
    pub tokenizer: Option<Arc<dyn TextTokenizer>>,
    pub generation: GenerationConfig,
    pub speculation: SpeculationConfig,
    pub name: String,
    /// Calibration mode: the upload rule still runs (its uncertainty and importance are
    /// recorded) but every draft is uploaded, so each gets the verifier's verdict.
    pub upload_everything: bool,
}

/// What a run returns.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub prompt_ids: Vec<TokenId>,
    pub generated_ids: Vec<TokenId>,
    /// How each generated token was decided.
    pub kinds: Vec<TokenKind>,
    pub stats: RunStats,
    /// One record per draft that the verifier judged (hybrid methods only): the filter's
    /// signals next to the exact rejection probability, the data of `hlm calibrate`.
    pub records: Vec<TokenRecord>,
}

/// The filter signals of one judged draft and what the verifier made of it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenRecord {
    /// Index among the generated tokens.
    pub index: usize,
    pub token: TokenId,
    pub uncertainty: Option<f32>,
    pub importance: Option<f32>,
    /// Draft probability x_d of the token (at the run temperature).
    pub draft_prob: f32,
    /// Target probability y_d, when the verifier reports it.
    pub target_prob: Option<f32>,
    /// max(0, 1 − y_d / x_d): the probability that speculative sampling rejects the token.
    pub rejection_probability: Option<f32>,
    pub accepted: bool,
}

/// The method a pipeline runs, derived from its components (for summaries).
pub fn method_name(p: &Pipeline) -> &'static str {
    match (&p.draft, &p.verifier) {
        (Some(_), None) => "slm-only",
        (None, Some(_)) => "llm-only",
        (None, None) => "empty",
        (Some(_), Some(_)) => match p.speculation.filter_action {
            FilterAction::StopDrafting => "speculative",
            FilterAction::Skip | FilterAction::Defer => "hybrid",
        },
    }
}

/// The models of a pipeline: the draft model and the verifier, each present or not.
pub type Models = (Option<Box<dyn DraftModel>>, Option<Box<dyn Verifier>>);

impl Pipeline {
    /// Build every component of a configuration.
    pub fn from_config(cfg: PipelineConfig, ctx: &BuildContext) -> Result<Self> {
        cfg.validate()?;
        let (draft, verifier) = Self::build_models(&cfg, ctx)?;
        Self::with_models(cfg, draft, verifier)
    }

    /// Build the draft model and verifier of a configuration (what [`Pipeline::from_config`]
    /// does first); with [`Pipeline::with_models`] and [`Pipeline::into_models`] a program can
    /// load models once and run several configurations on them.
    pub fn build_models(cfg: &PipelineConfig, ctx: &BuildContext) -> Result<Models> {
        Self::build_some_models(cfg, ctx, true, true)
    }

    /// Like [`Pipeline::build_models`], building only the draft model and/or the verifier
    /// (a program that already holds the other one loaded).
    pub fn build_some_models(
        cfg: &PipelineConfig,
        ctx: &BuildContext,
        want_draft: bool,
        want_verifier: bool,
    ) -> Result<Models> {
        let mut ctx = ctx.clone();
        if let Some(link) = &cfg.link {
            ctx.link = Some(Arc::from(link.fresh()));
        }
        let ctx = &ctx;
        let draft = match &cfg.draft {
            Some(spec) if want_draft => Some(spec.build(ctx).map_err(|e| e.within("draft"))?),
            _ => None,
        };
        let verifier = match &cfg.verifier {
            Some(spec) if want_verifier => Some(spec.build(ctx).map_err(|e| e.within("verifier"))?),
            _ => None,
        };
        Ok((draft, verifier))
    }

    /// A pipeline of `cfg` on models already loaded (they must be what `cfg.draft` and
    /// `cfg.verifier` describe; their presence must match).
    pub fn with_models(
        cfg: PipelineConfig,
        draft: Option<Box<dyn DraftModel>>,
        verifier: Option<Box<dyn Verifier>>,
    ) -> Result<Self> {
        cfg.validate()?;
        if draft.is_some() != cfg.draft.is_some() || verifier.is_some() != cfg.verifier.is_some() {
            return Err(HlmError::invalid(
                "draft / verifier",
                "given models",
                "the models given do not match the [draft] and [verifier] of the config",
            ));
        }
        let tokenizer = draft
            .as_ref()
            .and_then(|d| d.tokenizer())
            .or_else(|| verifier.as_ref().and_then(|v| v.tokenizer()));
        let mut verifier = verifier;
        if let (Some(t), Some(v)) = (
            draft.as_ref().and_then(|d| d.tokenizer()),
            verifier.as_mut(),
        ) {
            v.use_device_tokenizer(t);
        }
        let pipeline = Pipeline {
            draft,
            verifier,
            upload: cfg.upload,
            codec: cfg.codec,
            link: cfg.link,
            energy: cfg.energy,
            tokenizer,
            generation: cfg.generation,
            speculation: cfg.speculation,
            name: cfg.name.unwrap_or_else(|| "pipeline".into()),
            upload_everything: false,
        };
        pipeline.check_compatible()?;
        Ok(pipeline)
    }

    /// Take the models back (to run another configuration on them).
    pub fn into_models(self) -> Models {
        (self.draft, self.verifier)
    }

    /// The draft and target must share the vocabulary (and the tokenizer, when both know one).
    pub fn check_compatible(&self) -> Result<()> {
        if let (Some(d), Some(v)) = (&self.draft, &self.verifier) {
            if v.vocab_size() != 0 && d.vocab_size() != v.vocab_size() {
                return Err(HlmError::Incompatible(format!(
                    "the draft model has a vocabulary of {} entries, the verifier {}",
                    d.vocab_size(),
                    v.vocab_size()
                )));
            }
            if let (Some(a), Some(b)) = (d.tokenizer(), v.tokenizer())
                && a.fingerprint() != b.fingerprint()
            {
                return Err(HlmError::Incompatible(
                    "the draft model and the verifier use different tokenizers".into(),
                ));
            }
            if let Some(c) = &self.codec {
                c.validate(d.vocab_size()).map_err(|e| e.within("codec"))?;
            }
        }
        Ok(())
    }

    fn vocab_size(&self) -> usize {
        self.draft
            .as_ref()
            .map(|d| d.vocab_size())
            .or_else(|| self.verifier.as_ref().map(|v| v.vocab_size()))
            .unwrap_or(0)
    }

    /// Generate from `prompt`, calling `on_token` for every decided token.
    pub fn generate(
        &mut self,
        prompt: &[TokenId],
        on_token: &mut dyn FnMut(&TokenEvent),
    ) -> Result<RunReport> {
        if prompt.is_empty() {
            return Err(HlmError::invalid(
                "prompt",
                "\"\"",
                "the prompt encodes to no tokens",
            ));
        }
        let vocab = self.vocab_size();
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(HlmError::invalid(
                "prompt",
                bad,
                format!("token id outside the vocabulary of {vocab}"),
            ));
        }
        let need = prompt.len() + self.generation.max_new_tokens + 1;
        for max in [
            self.draft.as_ref().map(|d| d.max_context()),
            self.verifier.as_ref().map(|v| v.max_context()),
        ]
        .into_iter()
        .flatten()
        {
            if need > max {
                return Err(HlmError::ContextOverflow {
                    requested: need,
                    max,
                });
            }
        }
        let mut run = Run::new(self, prompt, on_token);
        run.execute()?;
        Ok(run.finish())
    }
}

struct Run<'p, 'c> {
    p: &'p mut Pipeline,
    prompt: Vec<TokenId>,
    on_token: &'c mut dyn FnMut(&TokenEvent),
    rng_draft: ChaCha8Rng,
    rng_filter: ChaCha8Rng,
    rng_link: ChaCha8Rng,
    rng_residual: ChaCha8Rng,
    eos: Vec<TokenId>,
    idx_bits: u64,
    committed: Vec<TokenId>,
    kinds: Vec<TokenKind>,
    /// Committed tokens the verifier has not seen, with whether the device must upload them
    /// (false for tokens the verifier produced itself).
    unsent: Vec<(TokenId, bool)>,
    stats: RunStats,
    costs: Costs,
    committed_by_verification: u64,
    started: Instant,
    records: Vec<TokenRecord>,
    /// With `speculation.adaptive`: the running estimates that choose each round's γ.
    adaptive: Option<AdaptiveGamma>,
    /// Committed tokens the draft model has not been fed (produced while speculation was off).
    draft_behind: Vec<TokenId>,
}

/// A drafted token waiting in the current round.
struct Pending {
    token: TokenId,
    payload: Option<UploadPayload>,
    /// A token the filter skipped that is verified later (`filter_action = "defer"`).
    deferred: bool,
    /// The draft logits this token was sampled from, kept while the verifier cannot resample
    /// it (a split payload): a rejection is answered with the target's distribution, and the
    /// device draws the replacement against this x.
    logits: Option<Logits>,
    /// x_d and the filter's signals, for [`TokenRecord`].
    draft_prob: f32,
    uncertainty: Option<f32>,
    importance: Option<f32>,
}

impl<'p, 'c> Run<'p, 'c> {
    fn new(
        p: &'p mut Pipeline,
        prompt: &[TokenId],
        on_token: &'c mut dyn FnMut(&TokenEvent),
    ) -> Self {
        let seed = p.generation.seed;
        let eos = if p.generation.stop_at_eos {
            p.tokenizer
                .as_ref()
                .map(|t| t.eos_ids().to_vec())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let idx_bits = token_index_bits(p.vocab_size());
        if let Some(l) = p.link.as_mut() {
            l.reset();
        }
        let p_adaptive = p
            .speculation
            .adaptive
            .then(|| AdaptiveGamma::new(p.speculation.gamma));
        Run {
            p,
            prompt: prompt.to_vec(),
            on_token,
            rng_draft: RandomStream::Draft.rng(seed),
            rng_filter: RandomStream::Filter.rng(seed),
            rng_link: RandomStream::Link.rng(seed),
            rng_residual: RandomStream::Residual.rng(seed),
            eos,
            idx_bits,
            committed: Vec::new(),
            kinds: Vec::new(),
            unsent: Vec::new(),
            stats: RunStats {
                prompt_tokens: prompt.len(),
                ..Default::default()
            },
            costs: Costs::default(),
            committed_by_verification: 0,
            started: Instant::now(),
            records: Vec::new(),
            adaptive: p_adaptive,
            draft_behind: Vec::new(),
        }
    }

    fn max_new(&self) -> usize {
        self.p.generation.max_new_tokens
    }

    fn commit(&mut self, id: TokenId, kind: TokenKind) {
        let ev = TokenEvent {
            id,
            kind,
            index: self.committed.len(),
        };
        self.committed.push(id);
        self.kinds.push(kind);
        (self.on_token)(&ev);
    }

    fn ended(&self) -> bool {
        self.committed.len() >= self.max_new()
            || self.committed.last().is_some_and(|t| self.eos.contains(t))
    }

    fn account(&mut self, work: Work) -> Result<()> {
        self.stats.device_tokens += work.device_tokens;
        self.stats.server_tokens += work.server_tokens;
        let costs = match &self.p.energy {
            Some(e) => e.cost(&work)?,
            None => Costs::default(),
        };
        self.costs.add(&costs);
        self.stats.add_costs(&costs);
        Ok(())
    }

    fn send(&mut self, bits: u64, dir: Direction) -> Result<Option<Transfer>> {
        match dir {
            Direction::Uplink => self.stats.uplink_bits += bits,
            Direction::Downlink => self.stats.downlink_bits += bits,
        }
        let now = self.costs.time_s.total();
        let Some(link) = self.p.link.as_mut() else {
            return Ok(None);
        };
        let t = link.transfer(bits, dir, now, &mut self.rng_link)?;
        if t.outage {
            self.stats.outages += 1;
        }
        Ok(Some(t))
    }

    fn execute(&mut self) -> Result<()> {
        let params = SessionParams {
            temperature: self.p.generation.temperature,
            seed: self.p.generation.seed,
            draft_vocab_size: self.p.draft.as_ref().map_or(0, |d| d.vocab_size()),
            tokenizer_fingerprint: self.p.tokenizer.as_ref().map(|t| t.fingerprint()),
            residual: self.p.speculation.residual,
        };
        let prompt = self.prompt.clone();
        let mut next_logits = None;
        if let Some(d) = self.p.draft.as_mut() {
            let t0 = Instant::now();
            d.truncate(0)?;
            let step = d.forward(&prompt, None)?;
            next_logits = Some(step.logits);
            let w = Work {
                device_tokens: prompt.len() as u64,
                device_compute_s: t0.elapsed().as_secs_f64(),
                ..Default::default()
            };
            self.account(w)?;
        }
        if let Some(v) = self.p.verifier.as_mut() {
            let t0 = Instant::now();
            v.begin(&prompt, &params)?;
            let compute = t0.elapsed().as_secs_f64();
            let up = self.send(prompt.len() as u64 * self.idx_bits, Direction::Uplink)?;
            let w = Work {
                uplink: up,
                server_tokens: prompt.len() as u64,
                server_compute_s: compute,
                ..Default::default()
            };
            self.account(w)?;
        }
        self.stats.prefill_s = self.started.elapsed().as_secs_f64();
        match (next_logits, self.p.verifier.is_some()) {
            (Some(l), true) => self.hybrid(l),
            (Some(l), false) => self.slm_only(l),
            (None, true) => self.llm_only(),
            (None, false) => Err(HlmError::invalid("pipeline", "empty", "no model to run")),
        }
    }

    /// Sample a draft from `logits` (where they live: one token comes back) and feed it to the
    /// draft model; returns the draft and the model's step.
    fn draft_one(
        &mut self,
        logits: &dyn NextTokenLogits,
        attention: Option<&crate::LayerSelection>,
    ) -> Result<(TokenId, crate::DraftStep, Instant)> {
        let t0 = Instant::now();
        let d = logits.sample(
            self.p.generation.temperature,
            self.rng_draft.random::<f64>(),
        )?;
        let draft = self
            .p
            .draft
            .as_mut()
            .ok_or_else(|| HlmError::Model("no draft model".into()))?;
        let step = draft.forward(&[d], attention)?;
        self.stats.drafted += 1;
        Ok((d, step, t0))
    }

    fn slm_only(&mut self, mut logits: Logits) -> Result<()> {
        while !self.ended() {
            let (d, step, t0) = self.draft_one(logits.as_ref(), None)?;
            logits = step.logits;
            self.stats.skips += 1;
            self.account(Work {
                device_tokens: 1,
                device_compute_s: t0.elapsed().as_secs_f64(),
                ..Default::default()
            })?;
            self.commit(d, TokenKind::Skipped);
        }
        Ok(())
    }

    fn llm_only(&mut self) -> Result<()> {
        while !self.ended() {
            self.target_step()?;
        }
        Ok(())
    }

    /// One token from the target alone (no drafts, the bonus token of an empty round),
    /// committed; returns it, the positions the target computed for it and the seconds the
    /// request took.
    fn target_step(&mut self) -> Result<(TokenId, usize, f64)> {
        let (context, context_bits) = self.take_unsent_context();
        let positions = context.len().max(1);
        let req = VerifyRequest {
            context,
            drafts: Vec::new(),
            bonus: true,
        };
        let t0 = Instant::now();
        let trip = self.round_trip(&req, context_bits);
        let seconds = t0.elapsed().as_secs_f64();
        let outcome = match trip {
            Err(e @ HlmError::VerifierUnavailable(_)) => {
                // Undelivered: it goes out with the next request that does reach the server.
                let mut unsent: Vec<(TokenId, bool)> =
                    req.context.into_iter().map(|t| (t, true)).collect();
                unsent.append(&mut self.unsent);
                self.unsent = unsent;
                return Err(e);
            }
            other => other?,
        };
        match outcome.verdicts.as_slice() {
            [Verdict::Bonus(t)] => {
                let t = *t;
                self.unsent.push((t, false));
                self.commit(t, TokenKind::Target);
                Ok((t, positions, seconds))
            }
            other => Err(HlmError::Verifier(format!(
                "expected one generated token, got {other:?}"
            ))),
        }
    }

    /// With adaptive γ, the γ of the round about to start: 0 means the target decoded the
    /// next token alone (already committed) and no round starts; otherwise the draft model has
    /// been fed what it missed and `logits` are its next-token logits.
    fn start_round(&mut self, logits: &mut Logits, gamma: usize) -> Result<usize> {
        let Some(adaptive) = self.adaptive.as_mut() else {
            return Ok(gamma);
        };
        let next = adaptive.next_gamma();
        if next == 0 {
            let (t, positions, seconds) = match self.target_step() {
                // The device goes on drafting alone, as any round would.
                Err(HlmError::VerifierUnavailable(why)) => {
                    tracing::warn!("verifier unavailable for a target-only step, drafting: {why}");
                    self.stats.verifier_faults += 1;
                    return self.start_drafting(logits, gamma);
                }
                other => other?,
            };
            self.stats.target_only_tokens += 1;
            // A round of its own: its one token counts among the tokens per verification.
            self.committed_by_verification += 1;
            self.draft_behind.push(t);
            if let Some(a) = self.adaptive.as_mut() {
                a.record_verify(positions, seconds);
            }
            return Ok(0);
        }
        self.start_drafting(logits, next)
    }

    /// Feed the draft model what it missed while the target decoded alone; returns `gamma`.
    fn start_drafting(&mut self, logits: &mut Logits, gamma: usize) -> Result<usize> {
        if !self.draft_behind.is_empty() {
            // Catch the draft model up on the target's tokens in one pass.
            let behind = std::mem::take(&mut self.draft_behind);
            let t0 = Instant::now();
            let draft = self
                .p
                .draft
                .as_mut()
                .ok_or_else(|| HlmError::Model("no draft model".into()))?;
            *logits = draft.forward(&behind, None)?.logits;
            self.account(Work {
                device_tokens: behind.len() as u64,
                device_compute_s: t0.elapsed().as_secs_f64(),
                ..Default::default()
            })?;
        }
        Ok(gamma)
    }

    /// Drain the context the verifier has not seen; returns it and the uplink bits it costs
    /// (only tokens the device must tell the server about).
    fn take_unsent_context(&mut self) -> (Vec<TokenId>, u64) {
        let bits = self.unsent.iter().filter(|(_, dev)| *dev).count() as u64 * self.idx_bits;
        (self.unsent.drain(..).map(|(t, _)| t).collect(), bits)
    }

    /// Send one request and account for it; returns the checked outcome.
    fn round_trip(&mut self, req: &VerifyRequest, context_bits: u64) -> Result<VerifyOutcome> {
        let vocab = self.p.vocab_size();
        let mut up_bits = context_bits;
        for d in &req.drafts {
            up_bits += self.idx_bits;
            if let Some(p) = &d.payload {
                up_bits += p.bits(vocab);
            }
        }
        let uplink = self.send(up_bits, Direction::Uplink)?;
        let verifier = self
            .p
            .verifier
            .as_mut()
            .ok_or_else(|| HlmError::Verifier("no verifier".into()))?;
        let outcome = verifier.verify(req)?;
        // A residual is checked where it is used: `Residual::draw` validates it.
        outcome.validate(req)?;
        self.stats.verify_calls += 1;
        let has_token = matches!(
            outcome.verdicts.last(),
            Some(Verdict::Resampled(_) | Verdict::Bonus(_))
        );
        // The verdict count: how many drafts stood, 0..=the most a round holds.
        let spec = &self.p.speculation;
        let most = spec.gamma
            + match spec.filter_action {
                FilterAction::Defer => spec.max_deferred,
                _ => 0,
            };
        let mut down_bits = token_index_bits(most + 2);
        if has_token {
            down_bits += self.idx_bits;
        }
        if let Some(r) = &outcome.residual {
            let bits = r.bits(vocab);
            self.stats.residual_downloads += 1;
            self.stats.residual_bits += bits;
            down_bits += bits;
        }
        let downlink = self.send(down_bits, Direction::Downlink)?;
        self.account(Work {
            uplink,
            server_tokens: outcome.server_tokens,
            server_compute_s: outcome.compute_s,
            downlink,
            ..Default::default()
        })?;
        Ok(outcome)
    }

    fn hybrid(&mut self, mut logits: Logits) -> Result<()> {
        let gamma = self.p.speculation.gamma;
        let action = self.p.speculation.filter_action;
        let attention = self.p.upload.as_ref().and_then(|u| u.attention_layers());
        let mut round: Vec<Pending> = Vec::new();
        let mut uploaded_in_round = 0usize;
        let mut deferred_in_round = 0usize;
        let mut round_gamma = gamma;
        while !self.ended() {
            if round.is_empty() {
                round_gamma = self.start_round(&mut logits, gamma)?;
                if round_gamma == 0 {
                    continue;
                }
            }
            let (d, step, t0) = self.draft_one(logits.as_ref(), attention.as_ref())?;
            let temperature = self.p.generation.temperature;
            let view = TokenView {
                logits: logits.as_ref(),
                temperature,
                draft: d,
                attention: step.attention.as_ref(),
                position: self.committed.len() + round.len(),
            };
            let upload = self
                .p
                .upload
                .as_ref()
                .ok_or_else(|| HlmError::invalid("upload", "absent", "required"))?;
            let mut decision = upload.decide(&view, &mut self.rng_filter)?;
            decision.upload |= self.p.upload_everything;
            // x_d, the draft's probability under the distribution it was sampled from.
            let draft_prob = logits.token_probs(d, &[temperature])?[0];
            let deferred = !decision.upload && action == FilterAction::Defer;
            let payload = if deferred {
                Some(UploadPayload::DraftProbability { prob: draft_prob })
            } else if decision.upload || action == FilterAction::StopDrafting {
                let codec = self
                    .p
                    .codec
                    .as_ref()
                    .ok_or_else(|| HlmError::invalid("codec", "absent", "required"))?;
                let hints = CodecHints {
                    uncertainty: decision.uncertainty,
                    draft_prob,
                };
                if codec.needs_distribution() {
                    // The one place the whole distribution leaves the device: it is being sent.
                    let probs = softmax_with_temperature(&logits.to_host()?, temperature);
                    Some(codec.encode(&probs, d, &hints)?)
                } else {
                    Some(codec.encode(&[], d, &hints)?)
                }
            } else {
                None
            };
            let sampled_from = std::mem::replace(&mut logits, step.logits);
            // Only a split payload leaves the replacement of a rejection to the device.
            let kept_logits = matches!(payload, Some(UploadPayload::DraftProbability { .. }))
                .then_some(sampled_from);
            let draft_s = t0.elapsed().as_secs_f64();
            if let Some(a) = self.adaptive.as_mut() {
                a.record_draft(draft_s);
            }
            self.account(Work {
                device_tokens: 1,
                device_compute_s: draft_s,
                ..Default::default()
            })?;
            let is_eos = self.eos.contains(&d);
            if payload.is_none() || deferred {
                self.stats.skips += 1;
            }
            let mut flush = match payload {
                None => {
                    if round.is_empty() {
                        // Nothing unverified before it: the token is final right away.
                        self.unsent.push((d, true));
                        self.commit(d, TokenKind::Skipped);
                        continue;
                    }
                    round.push(Pending {
                        token: d,
                        payload: None,
                        deferred: false,
                        logits: None,
                        draft_prob,
                        uncertainty: decision.uncertainty,
                        importance: decision.importance,
                    });
                    false
                }
                Some(p) => {
                    round.push(Pending {
                        token: d,
                        payload: Some(p),
                        deferred,
                        logits: kept_logits,
                        draft_prob,
                        uncertainty: decision.uncertainty,
                        importance: decision.importance,
                    });
                    if deferred {
                        self.stats.deferred += 1;
                        deferred_in_round += 1;
                    } else {
                        uploaded_in_round += 1;
                    }
                    match action {
                        FilterAction::Skip => uploaded_in_round >= round_gamma,
                        FilterAction::StopDrafting => decision.upload || round.len() >= round_gamma,
                        FilterAction::Defer => {
                            uploaded_in_round >= round_gamma
                                || deferred_in_round >= self.p.speculation.max_deferred
                        }
                    }
                }
            };
            if is_eos || self.committed.len() + round.len() >= self.max_new() {
                flush = true;
            }
            if flush {
                logits = self.verify_round(std::mem::take(&mut round), logits)?;
                uploaded_in_round = 0;
                deferred_in_round = 0;
            }
        }
        Ok(())
    }

    /// Verify one round, commit its outcome and roll the draft model back if needed. Returns the
    /// draft model's logits for the next position.
    fn verify_round(&mut self, round: Vec<Pending>, logits_after_round: Logits) -> Result<Logits> {
        let (context, context_bits) = self.take_unsent_context();
        let last_is_eos = round.last().is_some_and(|p| self.eos.contains(&p.token));
        let room = self.committed.len() + round.len() < self.max_new();
        let req = VerifyRequest {
            context,
            drafts: round
                .iter()
                .map(|p| DraftToken {
                    token: p.token,
                    payload: p.payload.clone(),
                })
                .collect(),
            bonus: self.p.speculation.bonus_token && room && !last_is_eos,
        };
        let base = self.prompt.len() + self.committed.len();
        let positions = req.context.len() + req.drafts.len();
        let t_verify = Instant::now();
        let outcome = match self.round_trip(&req, context_bits) {
            Err(HlmError::VerifierUnavailable(why)) => {
                return self.keep_unverified(req.context, round, logits_after_round, &why);
            }
            other => other?,
        };
        let verdicts = &outcome.verdicts;
        let target_probs = &outcome.target_probs;
        if let Some(a) = self.adaptive.as_mut() {
            a.record_verify(positions, t_verify.elapsed().as_secs_f64());
            let judged = verdicts
                .iter()
                .filter(|v| {
                    matches!(
                        v,
                        Verdict::Accepted | Verdict::Resampled(_) | Verdict::Rejected
                    )
                })
                .count();
            let accepted = verdicts
                .iter()
                .filter(|v| matches!(v, Verdict::Accepted))
                .count();
            a.record_round(judged, accepted);
        }
        self.stats.draft_n += round.iter().filter(|p| p.payload.is_some()).count() as u64;
        self.stats.uploads += round
            .iter()
            .filter(|p| p.payload.is_some() && !p.deferred)
            .count() as u64;
        let mut stood = 0usize;
        let mut correction = None;
        let mut uploaded_k = 0usize;
        for (i, v) in verdicts.iter().enumerate() {
            if let (Some(p), Verdict::Accepted | Verdict::Resampled(_) | Verdict::Rejected) =
                (round.get(i), v)
            {
                let target_prob = target_probs.get(i).copied().flatten();
                self.records.push(TokenRecord {
                    index: self.committed.len(),
                    token: p.token,
                    uncertainty: p.uncertainty,
                    importance: p.importance,
                    draft_prob: p.draft_prob,
                    target_prob,
                    rejection_probability: target_prob
                        .filter(|_| p.draft_prob > 0.0)
                        .map(|y| (1.0 - y / p.draft_prob).max(0.0)),
                    accepted: matches!(v, Verdict::Accepted),
                });
            }
            match *v {
                Verdict::Accepted => {
                    self.stats.draft_n_accepted += 1;
                    self.stats.record_position(uploaded_k, true);
                    uploaded_k += 1;
                    stood += 1;
                    self.commit(round[i].token, TokenKind::Verified);
                }
                Verdict::Unverified => {
                    stood += 1;
                    self.commit(round[i].token, TokenKind::Skipped);
                }
                Verdict::Resampled(t) => {
                    self.stats.resamples += 1;
                    match outcome.approx_residual_mass {
                        Some(m) => {
                            self.stats.residual_approx += 1;
                            let m = f64::from(m);
                            self.stats.residual_max_missing_mass =
                                self.stats.residual_max_missing_mass.max(m);
                            // A replacement from a residual whose tail mass m was guessed
                            // strays from the exact one by at most 2m in total variation.
                            self.stats.residual_tv_bound += 2.0 * m;
                        }
                        None => self.stats.residual_exact += 1,
                    }
                    self.stats.record_position(uploaded_k, false);
                    correction = Some((t, TokenKind::Resampled, false));
                }
                Verdict::Rejected => {
                    self.stats.resamples += 1;
                    self.stats.record_position(uploaded_k, false);
                    let t = self.draw_residual(&round[i], outcome.residual.as_ref())?;
                    correction = Some((t, TokenKind::Resampled, true));
                }
                Verdict::Bonus(t) => {
                    self.stats.bonus_tokens += 1;
                    correction = Some((t, TokenKind::Bonus, false));
                }
            }
            if matches!(v, Verdict::Resampled(_) | Verdict::Rejected) {
                if round[i].deferred {
                    self.stats.rollbacks += 1;
                }
                self.stats.discarded_drafts += (round.len() - i - 1) as u64;
            }
        }
        self.committed_by_verification += stood as u64 + u64::from(correction.is_some());
        // Stop at an accepted EOS: nothing after it counts.
        if self.committed.last().is_some_and(|t| self.eos.contains(t)) {
            return Ok(logits_after_round);
        }
        let Some((t, kind, drawn_here)) = correction else {
            return Ok(logits_after_round);
        };
        self.commit(t, kind);
        // The verifier's KV state ends before `t`; it receives `t` as context next round (and
        // must be told it when the device drew it).
        self.unsent.push((t, drawn_here));
        if self.ended() {
            return Ok(logits_after_round);
        }
        let t0 = Instant::now();
        let draft = self
            .p
            .draft
            .as_mut()
            .ok_or_else(|| HlmError::Model("no draft model".into()))?;
        if stood < round.len() {
            draft.truncate(base + stood)?;
        }
        let step = draft.forward(&[t], None)?;
        let draft_s = t0.elapsed().as_secs_f64();
        if let Some(a) = self.adaptive.as_mut() {
            a.record_draft(draft_s);
        }
        self.account(Work {
            device_tokens: 1,
            device_compute_s: draft_s,
            ..Default::default()
        })?;
        Ok(step.logits)
    }

    /// The replacement of a rejected split-verified draft: drawn from norm(max(0, ŷ − x)), ŷ the
    /// target distribution the verifier sent, x the draft distribution the device kept.
    fn draw_residual(
        &mut self,
        rejected: &Pending,
        residual: Option<&crate::Residual>,
    ) -> Result<TokenId> {
        let t0 = Instant::now();
        let residual = residual
            .ok_or_else(|| HlmError::Verifier("a rejection without its residual".into()))?;
        let logits = rejected.logits.as_ref().ok_or_else(|| {
            HlmError::Verifier(
                "a rejection of a draft whose distribution was uploaded: the verifier must \
                 resample it itself"
                    .into(),
            )
        })?;
        let x = softmax_with_temperature(&logits.to_host()?, self.p.generation.temperature);
        let (t, bound) = residual.draw(&x, &mut self.rng_residual)?;
        self.stats.residual_tv_bound += bound;
        self.account(Work {
            device_compute_s: t0.elapsed().as_secs_f64(),
            ..Default::default()
        })?;
        Ok(t)
    }

    /// The verifier could not be reached: keep the round's drafts as they are (the device
    /// goes on alone) and queue them, after the context that was not delivered either, for the
    /// verifier to receive as context once it is back. Nothing is lost or repeated: the draft
    /// model already holds these tokens.
    fn keep_unverified(
        &mut self,
        undelivered_context: Vec<TokenId>,
        round: Vec<Pending>,
        logits_after_round: Logits,
        why: &str,
    ) -> Result<Logits> {
        tracing::warn!(
            "verifier unavailable, keeping {} drafts unverified: {why}",
            round.len()
        );
        self.stats.verifier_faults += 1;
        // The undelivered context goes back first, in order; tokens the server produced itself
        // must now be told to it as well.
        let mut unsent: Vec<(TokenId, bool)> =
            undelivered_context.into_iter().map(|t| (t, true)).collect();
        unsent.append(&mut self.unsent);
        self.unsent = unsent;
        for p in round {
            self.stats.unverified += 1;
            self.unsent.push((p.token, true));
            self.commit(p.token, TokenKind::Unverified);
        }
        Ok(logits_after_round)
    }

    fn finish(mut self) -> RunReport {
        self.stats.generated_tokens = self.committed.len();
        let wall = self.started.elapsed().as_secs_f64();
        self.stats.finish(self.committed_by_verification, wall);
        RunReport {
            prompt_ids: self.prompt,
            generated_ids: self.committed,
            kinds: self.kinds,
            stats: self.stats,
            records: self.records,
        }
    }
}

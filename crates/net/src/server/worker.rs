//! The model worker: the one thread that owns the model and every session's KV state.
//!
//! Connection threads hand it [`Job`]s through a queue; it takes everything waiting (up to
//! `max_batch`) and runs the verifications of distinct sessions as one model pass, so the
//! model serves concurrent sessions back to back without lock contention. It admits each
//! request against the limits before any model work ([`Worker::admit`]), and a panic inside a
//! batch is caught: every request of the batch is answered `Internal`, the sessions it touched
//! are ended, and the worker goes on with the next batch.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Instant;

use hlm_core::{
    DraftToken, HlmError, LocalVerifier, SessionParams, Verdict, Verifier, VerifyRequest,
    verify_batch,
};

use super::{Server, ServerCounters};
use crate::protocol::{Begin, ErrorCode, Response, SessionStats, Verify, WireResidual};

/// What a connection thread asks of the model worker. Verifications and syncs of distinct
/// sessions are batched into one model pass; control requests are answered in turn.
pub(crate) enum Task {
    Verify(Verify, u64),
    Sync {
        session: u64,
        tokens: Vec<u32>,
    },
    Begin(Begin),
    End {
        session: u64,
    },
    /// The connection closed: end all of these (no answer).
    Closed(Vec<u64>),
}

/// Where a job's answer goes. Dropped unanswered (the worker panicked while it held the
/// job), it answers `Internal`, so no client waits for an answer that will never come.
pub(crate) struct Reply(Option<Sender<Response>>);

impl Reply {
    pub(crate) fn new(to: Sender<Response>) -> Self {
        Reply(Some(to))
    }

    fn send(mut self, response: Response) {
        if let Some(to) = self.0.take() {
            let _ = to.send(response);
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(to) = self.0.take() {
            let _ = to.send(error(
                ErrorCode::Internal,
                "the server's model worker failed on this request; the session was ended",
            ));
        }
    }
}

pub(crate) struct Job {
    pub(crate) task: Task,
    pub(crate) reply: Reply,
}

pub(crate) fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error {
        code,
        message: message.into(),
    }
}

struct Session {
    verifier: LocalVerifier,
    context_len: usize,
    last_active: Instant,
    stats: SessionStats,
}

pub(crate) struct Worker {
    server: Server,
    sessions: HashMap<u64, Session>,
    /// KV positions all sessions hold (the sum of their context lengths).
    held: usize,
    next_id: u64,
    counters: Arc<ServerCounters>,
}

/// Clears `alive` when the worker thread ends, however it ends, so the acceptor stops
/// taking connections that nobody could serve.
struct AliveFlag<'a>(&'a AtomicBool);

impl Drop for AliveFlag<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Worker {
    pub(crate) fn new(server: Server, counters: Arc<ServerCounters>) -> Self {
        Worker {
            server,
            sessions: HashMap::new(),
            held: 0,
            next_id: 1,
            counters,
        }
    }

    /// Serve jobs until `stop` or until every sender is gone; `alive` is cleared on the way
    /// out.
    pub(crate) fn run(mut self, jobs: Receiver<Job>, stop: &AtomicBool, alive: &AtomicBool) {
        let _alive = AliveFlag(alive);
        let idle = self.server.limits.idle_timeout();
        let tick = idle.min(std::time::Duration::from_millis(200));
        loop {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let first = match jobs.recv_timeout(tick) {
                Ok(j) => j,
                Err(RecvTimeoutError::Timeout) => {
                    self.sweep(idle);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut batch = vec![first];
            while batch.len() < self.server.limits.max_batch {
                match jobs.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            self.counters.batches.fetch_add(1, Ordering::Relaxed);
            self.counters
                .max_batch_seen
                .fetch_max(batch.len() as u64, Ordering::Relaxed);
            let touched: Vec<u64> = batch.iter().filter_map(|j| j.task.session()).collect();
            let ran = std::panic::catch_unwind(AssertUnwindSafe(|| self.run_batch(batch)));
            if ran.is_err() {
                // The batch's unanswered replies were dropped while unwinding (each answered
                // `Internal`). Its sessions may hold a half-updated KV state: end them.
                self.counters.worker_panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    sessions = touched.len(),
                    "the model worker panicked on a batch; its sessions are ended"
                );
                for id in touched {
                    self.end(id, "the model worker failed");
                }
                self.recount_held();
            }
            self.sweep(idle);
        }
        for id in self.sessions.keys().copied().collect::<Vec<_>>() {
            self.end(id, "server shutdown");
        }
    }

    /// Recompute the held positions from the sessions (after a panic left the sum unsure).
    fn recount_held(&mut self) {
        self.held = self.sessions.values().map(|s| s.context_len).sum();
        self.counters
            .held_tokens
            .store(self.held as u64, Ordering::Relaxed);
    }

    /// End sessions idle for longer than `idle`.
    fn sweep(&mut self, idle: std::time::Duration) {
        let stale: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.last_active.elapsed() > idle)
            .map(|(&id, _)| id)
            .collect();
        for id in stale {
            self.end(id, "idle timeout");
        }
    }

    fn end(&mut self, id: u64, why: &str) -> Option<SessionStats> {
        let s = self.sessions.remove(&id)?;
        self.held = self.held.saturating_sub(s.context_len);
        self.counters
            .held_tokens
            .store(self.held as u64, Ordering::Relaxed);
        self.counters.sessions_ended.fetch_add(1, Ordering::Relaxed);
        let st = &s.stats;
        tracing::info!(
            session = id,
            why,
            verify_requests = st.verify_requests,
            drafts_judged = st.drafts_judged,
            drafts_accepted = st.drafts_accepted,
            server_tokens = st.server_tokens,
            compute_s = format!("{:.3}", st.compute_s),
            bytes_in = st.bytes_in,
            "session ended"
        );
        Some(s.stats)
    }

    /// Answer a batch of jobs: verifications (and syncs) of distinct sessions share one model
    /// pass; everything else is answered in turn.
    fn run_batch(&mut self, batch: Vec<Job>) {
        let mut admitted: Vec<(Admitted, Reply)> = Vec::new();
        // Positions the admitted requests may add, so that together they stay in budget.
        let mut growth = 0usize;
        for job in batch {
            let ready = match job.task {
                Task::Verify(v, bytes_in) => self.admit(v, bytes_in, false, &mut growth),
                Task::Sync { session, tokens } => {
                    let v = Verify {
                        session,
                        context: tokens,
                        drafts: Vec::new(),
                        bonus: false,
                    };
                    self.admit(v, 0, true, &mut growth)
                }
                Task::Begin(b) => Err(self.begin(b)),
                Task::End { session } => Err(match self.end(session, "ended by the client") {
                    Some(stats) => Response::Ended { stats },
                    None => error(
                        ErrorCode::UnknownSession,
                        format!("no session {session} (it idled out)"),
                    ),
                }),
                Task::Closed(ids) => {
                    for id in ids {
                        self.end(id, "connection closed");
                    }
                    continue;
                }
            };
            match ready {
                Ok(a) => admitted.push((a, job.reply)),
                Err(response) => self.reply(job.reply, response),
            }
        }
        // A session appears at most once per pass (a connection waits for each answer, but be
        // safe): later duplicates go into the next pass.
        while !admitted.is_empty() {
            let mut seen = HashSet::new();
            let (now, later): (Vec<_>, Vec<_>) = admitted
                .into_iter()
                .partition(|(a, _)| seen.insert(a.session));
            admitted = later;
            self.verify_together(now);
        }
    }

    fn reply(&self, to: Reply, response: Response) {
        if let Response::Error { .. } = &response {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        to.send(response);
    }

    /// One model pass for requests of distinct sessions.
    fn verify_together(&mut self, items: Vec<(Admitted, Reply)>) {
        // Take the sessions out of the map for the pass (each needs its own `&mut`).
        let mut taken: Vec<(Admitted, Reply, Session)> = Vec::with_capacity(items.len());
        for (a, reply) in items {
            match self.sessions.remove(&a.session) {
                Some(s) => taken.push((a, reply, s)),
                None => self.reply(
                    reply,
                    error(
                        ErrorCode::UnknownSession,
                        format!("no session {}", a.session),
                    ),
                ),
            }
        }
        let outcomes = {
            let mut refs: Vec<(&mut LocalVerifier, &VerifyRequest)> = taken
                .iter_mut()
                .map(|(a, _, s)| (&mut s.verifier, &a.req))
                .collect();
            verify_batch(&mut refs)
        };
        let vocab = self.server.info.vocab_size as usize;
        for ((a, reply, mut s), outcome) in taken.into_iter().zip(outcomes) {
            let before = s.context_len;
            let response = match outcome {
                Ok(o) => Self::record(vocab, &mut s, &a, o, &self.counters),
                Err(e) => error(code_of(&e), e.to_string()),
            };
            self.held = self.held.saturating_sub(before) + s.context_len;
            self.sessions.insert(a.session, s);
            self.reply(reply, response);
        }
        self.counters
            .held_tokens
            .store(self.held as u64, Ordering::Relaxed);
    }

    fn begin(&mut self, b: Begin) -> Response {
        let info = &self.server.info;
        let limits = &self.server.limits;
        if self.sessions.len() >= limits.max_sessions {
            return error(
                ErrorCode::Busy,
                format!(
                    "the server holds its maximum of {} sessions; retry later",
                    limits.max_sessions
                ),
            );
        }
        if b.vocab_size != 0 && b.vocab_size != info.vocab_size {
            return error(
                ErrorCode::Incompatible,
                format!(
                    "the device's vocabulary has {} entries, the server's model ({}) {}",
                    b.vocab_size, info.model, info.vocab_size
                ),
            );
        }
        if let (Some(a), Some(s)) = (b.tokenizer_fingerprint, info.tokenizer_fingerprint)
            && a != s
        {
            return error(
                ErrorCode::Incompatible,
                format!(
                    "the device's tokenizer differs from the server's ({}): fingerprints {a:016x} and {s:016x}",
                    info.model
                ),
            );
        }
        if b.prompt.is_empty() {
            return error(ErrorCode::BadRequest, "empty prompt");
        }
        if let Some(&t) = b
            .prompt
            .iter()
            .find(|&&t| t as usize >= info.vocab_size as usize)
        {
            return error(
                ErrorCode::BadRequest,
                format!(
                    "prompt token {t} is outside the vocabulary of {}",
                    info.vocab_size
                ),
            );
        }
        if b.prompt.len() > info.max_context as usize {
            return error(
                ErrorCode::ContextTooLong,
                format!(
                    "a prompt of {} tokens exceeds the server's maximum context of {}",
                    b.prompt.len(),
                    info.max_context
                ),
            );
        }
        if b.prompt.len() > limits.max_request_tokens {
            return error(
                ErrorCode::ContextTooLong,
                format!(
                    "a prompt of {} tokens exceeds the server's limit of {} tokens per request \
                     (limits.max_request_tokens)",
                    b.prompt.len(),
                    limits.max_request_tokens
                ),
            );
        }
        if let Some(busy) = self.over_budget(b.prompt.len()) {
            return busy;
        }
        if !b.temperature.is_finite() || b.temperature < 0.0 {
            return error(
                ErrorCode::BadRequest,
                format!("temperature {} is not a non-negative number", b.temperature),
            );
        }
        let model = match self.server.prototype.fork() {
            Ok(m) => m,
            Err(e) => return error(ErrorCode::Internal, e.to_string()),
        };
        let mut verifier = LocalVerifier::new(model, self.server.rule.rule());
        let params = SessionParams {
            temperature: b.temperature,
            seed: b.seed,
            draft_vocab_size: b.vocab_size as usize,
            tokenizer_fingerprint: b.tokenizer_fingerprint,
            residual: b.residual.into(),
        };
        let t0 = Instant::now();
        if let Err(e) = verifier.begin(&b.prompt, &params) {
            return error(code_of(&e), e.to_string());
        }
        let id = self.next_id;
        self.next_id += 1;
        self.held += b.prompt.len();
        self.counters
            .held_tokens
            .store(self.held as u64, Ordering::Relaxed);
        self.sessions.insert(
            id,
            Session {
                verifier,
                context_len: b.prompt.len(),
                last_active: Instant::now(),
                stats: SessionStats {
                    server_tokens: b.prompt.len() as u64,
                    compute_s: t0.elapsed().as_secs_f64(),
                    ..Default::default()
                },
            },
        );
        self.counters.sessions_begun.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            session = id,
            prompt_tokens = b.prompt.len(),
            "session begun"
        );
        Response::Begun { session: id }
    }

    /// `Busy` if `more` positions would take the sessions over the KV budget.
    fn over_budget(&self, more: usize) -> Option<Response> {
        let budget = self.server.held_budget;
        (self.held.saturating_add(more) > budget).then(|| {
            error(
                ErrorCode::Busy,
                format!(
                    "the server's sessions hold {} of its {budget} KV positions \
                     (limits.max_held_tokens) and this request needs {more} more; retry later",
                    self.held
                ),
            )
        })
    }

    /// Check a verification (or sync) against its session and the limits; `Err` is the
    /// answer when it cannot run, or needs no model pass. `growth` counts the positions the
    /// batch's admitted requests may add.
    fn admit(
        &mut self,
        v: Verify,
        bytes_in: u64,
        sync: bool,
        growth: &mut usize,
    ) -> Result<Admitted, Response> {
        let vocab = self.server.info.vocab_size as usize;
        let max_context = self.server.info.max_context as usize;
        let limits = &self.server.limits;
        let Some(s) = self.sessions.get(&v.session) else {
            return Err(error(
                ErrorCode::UnknownSession,
                format!("no session {} (it idled out)", v.session),
            ));
        };
        let context_len = s.context_len;
        if v.drafts.len() > limits.max_drafts {
            return Err(error(
                ErrorCode::BadRequest,
                format!(
                    "{} drafts in one request, over the server's limit of {} (limits.max_drafts)",
                    v.drafts.len(),
                    limits.max_drafts
                ),
            ));
        }
        let fed = v.context.len() + v.drafts.len();
        if fed > limits.max_request_tokens {
            return Err(error(
                ErrorCode::ContextTooLong,
                format!(
                    "a request feeding {fed} tokens exceeds the server's limit of {} tokens per \
                     request (limits.max_request_tokens)",
                    limits.max_request_tokens
                ),
            ));
        }
        let reach = context_len + fed + usize::from(v.bonus);
        if reach > max_context {
            return Err(error(
                ErrorCode::ContextTooLong,
                format!(
                    "the session would reach {reach} tokens, over the server's maximum context of {max_context}"
                ),
            ));
        }
        if fed == 0 && !v.bonus {
            // Nothing to do: answered at once, and not counted as activity (an empty `Sync`
            // must not keep a session alive for free).
            return Err(if sync {
                Response::Synced {
                    context_len: context_len as u64,
                }
            } else {
                Response::Verdicts {
                    verdicts: Vec::new(),
                    residual: None,
                    server_tokens: 0,
                    compute_s: 0.0,
                    target_probs: Vec::new(),
                }
            });
        }
        if let Some(busy) = self.over_budget(growth.saturating_add(fed)) {
            return Err(busy);
        }
        let mut drafts = Vec::with_capacity(v.drafts.len());
        for (i, d) in v.drafts.into_iter().enumerate() {
            let payload = match d.payload {
                None => None,
                Some(p) => Some(
                    p.unpack(vocab)
                        .map_err(|e| error(ErrorCode::BadRequest, format!("draft {i}: {e}")))?,
                ),
            };
            drafts.push(DraftToken {
                token: d.token,
                payload,
            });
        }
        *growth += fed;
        if let Some(s) = self.sessions.get_mut(&v.session) {
            s.last_active = Instant::now();
        }
        Ok(Admitted {
            session: v.session,
            req: VerifyRequest {
                context: v.context,
                drafts,
                bonus: v.bonus,
            },
            bytes_in,
            sync,
        })
    }

    /// Account a finished verification to its session and make the answer.
    fn record(
        vocab: usize,
        s: &mut Session,
        a: &Admitted,
        outcome: hlm_core::VerifyOutcome,
        counters: &ServerCounters,
    ) -> Response {
        let req = &a.req;
        let stood = outcome
            .verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Accepted | Verdict::Unverified))
            .count();
        s.context_len += req.context.len() + stood;
        let st = &mut s.stats;
        st.verify_requests += u64::from(!a.sync);
        st.drafts_judged += req.drafts.iter().filter(|d| d.payload.is_some()).count() as u64;
        st.drafts_accepted += outcome
            .verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Accepted))
            .count() as u64;
        st.server_tokens += outcome.server_tokens;
        st.compute_s += outcome.compute_s;
        st.bytes_in += a.bytes_in;
        if a.sync {
            return Response::Synced {
                context_len: s.context_len as u64,
            };
        }
        counters.verify_requests.fetch_add(1, Ordering::Relaxed);
        Response::Verdicts {
            residual: outcome
                .residual
                .as_ref()
                .map(|r| WireResidual::pack(r, vocab)),
            verdicts: outcome.verdicts,
            server_tokens: outcome.server_tokens,
            compute_s: outcome.compute_s,
            target_probs: outcome.target_probs,
        }
    }
}

impl Task {
    /// The session a task works on, if one.
    pub(crate) fn session(&self) -> Option<u64> {
        match self {
            Task::Verify(v, _) => Some(v.session),
            Task::Sync { session, .. } | Task::End { session } => Some(*session),
            Task::Begin(_) | Task::Closed(_) => None,
        }
    }
}

/// A verification that passed the checks, waiting for its model pass.
struct Admitted {
    session: u64,
    req: VerifyRequest,
    bytes_in: u64,
    sync: bool,
}

/// The protocol's code for an error of the model side.
fn code_of(e: &HlmError) -> ErrorCode {
    match e {
        HlmError::Payload(_) | HlmError::Verifier(_) | HlmError::InvalidParameter { .. } => {
            ErrorCode::BadRequest
        }
        HlmError::ContextOverflow { .. } => ErrorCode::ContextTooLong,
        HlmError::Incompatible(_) => ErrorCode::Incompatible,
        _ => ErrorCode::Internal,
    }
}

//! The verifier server: one target model, many sessions, each with its own KV state.
//!
//! Threads: one accepts connections, one per connection reads and writes frames, and one model
//! worker owns every session and the model. Connection threads hand requests to the worker
//! through a queue; the worker takes everything that is waiting (up to `max_batch` requests)
//! and runs it as one batch, so the model serves concurrent sessions back to back without
//! lock contention, and a slow model never blocks the reading of frames.

use std::collections::{HashMap, HashSet};
use std::io::BufReader;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hlm_backends::{LocalVerifier, RuleChoice, verifier::verify_batch};
use hlm_core::{
    BuildContext, DraftToken, HlmError, SessionParams, TargetModel, TargetModelSpec, Verdict,
    Verifier, VerifyRequest,
};
use serde::{Deserialize, Serialize};

use crate::protocol::{Begin, ErrorCode, Request, Response, ServerInfo, SessionStats, Verify};
use crate::wire::{WireError, read_frame, write_frame};

/// Limits of a server (`[limits]` of the server config).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerLimits {
    /// Sessions held at once; a `Begin` beyond this is answered `Busy`.
    pub max_sessions: usize,
    /// Largest request body accepted (bytes). A dense 32-bit payload of Qwen2.5's 151,936
    /// probabilities is 608 kB, so the default of 8 MiB fits a few of them per request.
    pub max_message_bytes: usize,
    /// Longest context of a session (0 = the model's own maximum).
    pub max_context: usize,
    /// A session (and a connection) with no request for this long is ended (seconds).
    pub idle_timeout_s: f64,
    /// Requests the model worker takes together at most.
    pub max_batch: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_sessions: 64,
            max_message_bytes: 8 << 20,
            max_context: 0,
            idle_timeout_s: 300.0,
            max_batch: 32,
        }
    }
}

/// A server config file (`hlm serve --config configs/server.toml`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Compute device of the model (`cpu`, `wgpu`).
    #[serde(default = "default_device")]
    pub device: String,
    /// The target model.
    pub model: Box<dyn TargetModelSpec>,
    /// Acceptance rule: exact speculative sampling (default) or greedy matching.
    #[serde(default)]
    pub rule: RuleChoice,
    #[serde(default)]
    pub limits: ServerLimits,
}

fn default_device() -> String {
    "cpu".into()
}

impl ServerConfig {
    /// Read a server config file; errors name the file.
    pub fn load(path: &Path) -> hlm_core::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| HlmError::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parse config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> hlm_core::Result<Self> {
        let cfg: ServerConfig = toml::from_str(text).map_err(|e| HlmError::Config {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        let l = &cfg.limits;
        if l.max_sessions == 0 || l.max_batch == 0 || l.max_message_bytes < 64 {
            return Err(HlmError::Config {
                origin: origin.to_string(),
                message: "limits.max_sessions and limits.max_batch must be at least 1, \
                          limits.max_message_bytes at least 64"
                    .into(),
            });
        }
        if !(l.idle_timeout_s > 0.0 && l.idle_timeout_s.is_finite()) {
            return Err(HlmError::invalid(
                "limits.idle_timeout_s",
                l.idle_timeout_s,
                "must be a positive number of seconds",
            ));
        }
        Ok(cfg)
    }

    /// Load the model and make a server.
    pub fn build(&self, ctx: &BuildContext) -> hlm_core::Result<Server> {
        let mut ctx = ctx.clone();
        ctx.device = self.device.clone();
        let model = self.model.build(&ctx)?;
        Server::new(model, self.rule, self.limits.clone())
    }
}

/// Counters of the whole server, readable while it runs.
#[derive(Debug, Default)]
pub struct ServerCounters {
    pub sessions_begun: AtomicU64,
    pub sessions_ended: AtomicU64,
    pub verify_requests: AtomicU64,
    /// Worker batches that held at least one request.
    pub batches: AtomicU64,
    /// Largest batch seen.
    pub max_batch_seen: AtomicU64,
    pub errors: AtomicU64,
}

/// A configured server, ready to listen.
pub struct Server {
    prototype: Box<dyn TargetModel>,
    rule: RuleChoice,
    limits: ServerLimits,
    info: ServerInfo,
}

impl Server {
    /// A server for `model` (its weights are shared by every session through
    /// [`TargetModel::fork`]).
    pub fn new(
        model: Box<dyn TargetModel>,
        rule: RuleChoice,
        limits: ServerLimits,
    ) -> hlm_core::Result<Self> {
        // Fail now, not at the first session, if the model cannot serve sessions.
        model.fork()?;
        let max_context = match limits.max_context {
            0 => model.max_context(),
            n => n.min(model.max_context()),
        };
        let info = ServerInfo {
            model: model.describe(),
            vocab_size: model.vocab_size() as u32,
            max_context: max_context as u32,
            tokenizer_fingerprint: model.tokenizer().map(|t| t.fingerprint()),
            max_message_bytes: limits.max_message_bytes as u32,
            max_sessions: limits.max_sessions as u32,
        };
        Ok(Server {
            prototype: model,
            rule,
            limits,
            info,
        })
    }

    /// What the server tells clients about itself.
    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// Serve on `listener` in background threads until [`ServerHandle::shutdown`].
    pub fn spawn(self, listener: TcpListener) -> std::io::Result<ServerHandle> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(ServerCounters::default());
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let limits = self.limits.clone();
        let info = self.info.clone();
        let worker = {
            let counters = Arc::clone(&counters);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("hlm-model".into())
                .spawn(move || Worker::new(self, counters).run(jobs_rx, &stop))?
        };
        let open: OpenConnections = Arc::default();
        let acceptor = {
            let stop = Arc::clone(&stop);
            let open = Arc::clone(&open);
            let counters = Arc::clone(&counters);
            std::thread::Builder::new()
                .name("hlm-accept".into())
                .spawn(move || {
                    accept_loop(listener, jobs_tx, limits, info, counters, open, &stop)
                })?
        };
        Ok(ServerHandle {
            addr,
            stop,
            open,
            counters,
            threads: vec![acceptor, worker],
        })
    }
}

/// A running server.
/// Clones of the open connections, so a shutdown can close them; each connection thread
/// removes its own entry when it ends.
type OpenConnections = Arc<Mutex<HashMap<u64, TcpStream>>>;

pub struct ServerHandle {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    open: OpenConnections,
    counters: Arc<ServerCounters>,
    threads: Vec<JoinHandle<()>>,
}

impl ServerHandle {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Live counters.
    pub fn counters(&self) -> &ServerCounters {
        &self.counters
    }

    /// Stop accepting, close every connection, end every session, and wait for the threads.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    /// Block until the server stops (it runs until the process ends).
    pub fn wait(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(open) = self.open.lock() {
            for s in open.values() {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// What a connection thread asks of the model worker. Verifications and syncs of distinct
/// sessions are batched into one model pass; control requests are answered in turn.
enum Work {
    Verify(Verify, u64),
    Sync { session: u64, tokens: Vec<u32> },
    Control(Control),
}

/// Requests that need no model pass.
enum Control {
    Begin(Begin),
    End {
        session: u64,
    },
    /// The connection closed: end all of these.
    Closed(Vec<u64>),
}

struct Job {
    work: Work,
    reply: Sender<Response>,
}

fn accept_loop(
    listener: TcpListener,
    jobs: Sender<Job>,
    limits: ServerLimits,
    info: ServerInfo,
    counters: Arc<ServerCounters>,
    open: OpenConnections,
    stop: &AtomicBool,
) {
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    let mut next_connection = 0u64;
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                tracing::debug!(%peer, "connection");
                let id = next_connection;
                next_connection += 1;
                if let Ok(mut o) = open.lock()
                    && let Ok(s) = stream.try_clone()
                {
                    o.insert(id, s);
                }
                let jobs = jobs.clone();
                let limits = limits.clone();
                let info = info.clone();
                let counters = Arc::clone(&counters);
                let open = Arc::clone(&open);
                let spawned = std::thread::Builder::new()
                    .name(format!("hlm-conn-{peer}"))
                    .spawn(move || {
                        serve_connection(stream, jobs, &limits, &info, &counters);
                        // Close it for good: the registry held the last other handle.
                        if let Ok(mut o) = open.lock()
                            && let Some(s) = o.remove(&id)
                        {
                            let _ = s.shutdown(std::net::Shutdown::Both);
                        }
                    });
                match spawned {
                    Ok(h) => connections.push(h),
                    Err(e) => tracing::error!("cannot start a connection thread: {e}"),
                }
                connections.retain(|h| !h.is_finished());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    for h in connections {
        let _ = h.join();
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error {
        code,
        message: message.into(),
    }
}

fn serve_connection(
    stream: TcpStream,
    jobs: Sender<Job>,
    limits: &ServerLimits,
    info: &ServerInfo,
    counters: &ServerCounters,
) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs_f64(limits.idle_timeout_s)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::with_capacity(1 << 16, stream);
    let mut mine: HashSet<u64> = HashSet::new();
    loop {
        let (request, bytes_in) =
            match read_frame::<_, Request>(&mut reader, limits.max_message_bytes) {
                Ok(r) => r,
                Err(WireError::Closed) => break,
                Err(WireError::Io(e)) => {
                    tracing::debug!(%peer, "connection ends: {e}");
                    break;
                }
                Err(e) => {
                    let code = match e {
                        WireError::TooLarge { .. } => ErrorCode::TooLarge,
                        WireError::Version { .. } => ErrorCode::Version,
                        _ => ErrorCode::BadFrame,
                    };
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, "refusing a frame: {e}");
                    let _ = write_frame(&mut writer, &error(code, e.to_string()));
                    break;
                }
            };
        let work = match request {
            Request::Hello => {
                if write_frame(&mut writer, &Response::Info(info.clone())).is_err() {
                    break;
                }
                continue;
            }
            Request::Begin(b) => Work::Control(Control::Begin(b)),
            Request::Verify(v) if mine.contains(&v.session) => Work::Verify(v, bytes_in as u64),
            Request::Sync { session, tokens } if mine.contains(&session) => {
                Work::Sync { session, tokens }
            }
            Request::End { session } if mine.contains(&session) => {
                Work::Control(Control::End { session })
            }
            Request::Verify(Verify { session, .. })
            | Request::Sync { session, .. }
            | Request::End { session } => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                let r = error(
                    ErrorCode::UnknownSession,
                    format!(
                        "no session {session} on this connection (ended, idled out, or never begun)"
                    ),
                );
                if write_frame(&mut writer, &r).is_err() {
                    break;
                }
                continue;
            }
        };
        let ending = match &work {
            Work::Control(Control::End { session }) => Some(*session),
            _ => None,
        };
        let (tx, rx) = mpsc::channel();
        if jobs.send(Job { work, reply: tx }).is_err() {
            break;
        }
        let Ok(response) = rx.recv() else {
            break;
        };
        match &response {
            Response::Begun { session } => {
                mine.insert(*session);
            }
            // Ended, or already gone (idle timeout): either way no longer ours.
            Response::Ended { .. }
            | Response::Error {
                code: ErrorCode::UnknownSession,
                ..
            } => {
                if let Some(id) = ending {
                    mine.remove(&id);
                }
            }
            _ => {}
        }
        if write_frame(&mut writer, &response).is_err() {
            break;
        }
    }
    if !mine.is_empty() {
        let (tx, _rx) = mpsc::channel();
        let _ = jobs.send(Job {
            work: Work::Control(Control::Closed(mine.into_iter().collect())),
            reply: tx,
        });
    }
}

struct Session {
    verifier: LocalVerifier,
    context_len: usize,
    last_active: Instant,
    stats: SessionStats,
}

struct Worker {
    server: Server,
    sessions: HashMap<u64, Session>,
    next_id: u64,
    counters: Arc<ServerCounters>,
}

impl Worker {
    fn new(server: Server, counters: Arc<ServerCounters>) -> Self {
        Worker {
            server,
            sessions: HashMap::new(),
            next_id: 1,
            counters,
        }
    }

    fn run(mut self, jobs: Receiver<Job>, stop: &AtomicBool) {
        let idle = Duration::from_secs_f64(self.server.limits.idle_timeout_s);
        let tick = idle.min(Duration::from_millis(200));
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
            self.run_batch(batch);
            self.sweep(idle);
        }
        for id in self.sessions.keys().copied().collect::<Vec<_>>() {
            self.end(id, "server shutdown");
        }
    }

    /// End sessions idle for longer than `idle`.
    fn sweep(&mut self, idle: Duration) {
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
        let mut admitted: Vec<(Admitted, Sender<Response>)> = Vec::new();
        for job in batch {
            let ready = match job.work {
                Work::Verify(v, bytes_in) => self.admit(v, bytes_in, false),
                Work::Sync { session, tokens } => {
                    let v = Verify {
                        session,
                        context: tokens,
                        drafts: Vec::new(),
                        bonus: false,
                    };
                    self.admit(v, 0, true)
                }
                Work::Control(c) => Err(self.handle(c)),
            };
            match ready {
                Ok(a) => admitted.push((a, job.reply)),
                Err(response) => self.reply(&job.reply, response),
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

    fn reply(&self, to: &Sender<Response>, response: Response) {
        if let Response::Error { .. } = &response {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        let _ = to.send(response);
    }

    /// One model pass for requests of distinct sessions.
    fn verify_together(&mut self, items: Vec<(Admitted, Sender<Response>)>) {
        // Take the sessions out of the map for the pass (each needs its own `&mut`).
        let mut taken: Vec<(Admitted, Sender<Response>, Session)> = Vec::with_capacity(items.len());
        for (a, reply) in items {
            match self.sessions.remove(&a.session) {
                Some(s) => taken.push((a, reply, s)),
                None => self.reply(
                    &reply,
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
        for ((a, reply, mut s), outcome) in taken.into_iter().zip(outcomes) {
            let response = match outcome {
                Ok(o) => Self::record(&mut s, &a, o, &self.counters),
                Err(e) => error(code_of(&e), e.to_string()),
            };
            self.sessions.insert(a.session, s);
            self.reply(&reply, response);
        }
    }

    fn handle(&mut self, control: Control) -> Response {
        match control {
            Control::Begin(b) => self.begin(b),
            Control::End { session } => match self.end(session, "ended by the client") {
                Some(stats) => Response::Ended { stats },
                None => error(
                    ErrorCode::UnknownSession,
                    format!("no session {session} (it idled out)"),
                ),
            },
            Control::Closed(ids) => {
                for id in ids {
                    self.end(id, "connection closed");
                }
                Response::Synced { context_len: 0 }
            }
        }
    }

    fn begin(&mut self, b: Begin) -> Response {
        let info = &self.server.info;
        if self.sessions.len() >= self.server.limits.max_sessions {
            return error(
                ErrorCode::Busy,
                format!(
                    "the server holds its maximum of {} sessions; retry later",
                    self.server.limits.max_sessions
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
        let mut verifier = LocalVerifier::new(model, self.server.rule.build());
        let params = SessionParams {
            temperature: b.temperature,
            seed: b.seed,
            draft_vocab_size: b.vocab_size as usize,
            tokenizer_fingerprint: b.tokenizer_fingerprint,
        };
        let t0 = Instant::now();
        if let Err(e) = verifier.begin(&b.prompt, &params) {
            return error(code_of(&e), e.to_string());
        }
        let id = self.next_id;
        self.next_id += 1;
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

    /// Check a verification (or sync) against its session and the limits; `Err` is the
    /// answer when it cannot run, or needs no model pass.
    fn admit(&mut self, v: Verify, bytes_in: u64, sync: bool) -> Result<Admitted, Response> {
        let vocab = self.server.info.vocab_size as usize;
        let max_context = self.server.info.max_context as usize;
        let Some(s) = self.sessions.get_mut(&v.session) else {
            return Err(error(
                ErrorCode::UnknownSession,
                format!("no session {} (it idled out)", v.session),
            ));
        };
        s.last_active = Instant::now();
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
        let req = VerifyRequest {
            context: v.context,
            drafts,
            bonus: v.bonus,
        };
        let reach = s.context_len + req.context.len() + req.drafts.len() + usize::from(req.bonus);
        if reach > max_context {
            return Err(error(
                ErrorCode::ContextTooLong,
                format!(
                    "the session would reach {reach} tokens, over the server's maximum context of {max_context}"
                ),
            ));
        }
        if req.context.is_empty() && req.drafts.is_empty() && !req.bonus {
            return Err(if sync {
                Response::Synced {
                    context_len: s.context_len as u64,
                }
            } else {
                Response::Verdicts {
                    verdicts: Vec::new(),
                    server_tokens: 0,
                    compute_s: 0.0,
                    target_probs: Vec::new(),
                }
            });
        }
        Ok(Admitted {
            session: v.session,
            req,
            bytes_in,
            sync,
        })
    }

    /// Account a finished verification to its session and make the answer.
    fn record(
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
            verdicts: outcome.verdicts,
            server_tokens: outcome.server_tokens,
            compute_s: outcome.compute_s,
            target_probs: outcome.target_probs,
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

//! The device's side of the split: a [`Verifier`] that talks to `hlm serve`.
//!
//! Faults never stop generation. When the server cannot be reached (down, slow, restarted,
//! connection dropped) a request fails with [`HlmError::VerifierUnavailable`]; the engine keeps
//! the drafts unverified and hands them back as context later. The client remembers every token
//! the server has committed for its session (`history`), so once the server answers again it
//! opens a fresh session and replays the history (`Begin` with the prompt, `Sync` with the
//! rest): no token is lost or sent twice.

use std::io::{BufReader, BufWriter};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hlm_core::{
    BuildContext, Direction, HlmError, Result, SessionParams, TextTokenizer, TokenId, Verdict,
    Verifier, VerifierSpec, VerifyOutcome, VerifyRequest,
};
use serde::{Deserialize, Serialize};

use crate::emulation::LinkEmulator;
use crate::protocol::{Begin, ErrorCode, Request, Response, ServerInfo, Verify, WireDraft};
use crate::wire::{PackedPayload, WireError, read_frame, write_frame};

/// `[verifier] type = "remote"`: verification by an `hlm serve` server.
///
/// ```toml
/// [verifier]
/// type = "remote"
/// address = "127.0.0.1:7070"
/// request_timeout_s = 60.0
/// emulate_link = true      # pace messages by the pipeline's [link]
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteVerifierSpec {
    /// `HOST:PORT` of the server.
    pub address: String,
    /// Time allowed to open a connection (seconds).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_s: f64,
    /// Time allowed for one answer (seconds); the model's time is included.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_s: f64,
    /// Connection attempts per try (each after `retry_delay_s`).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Pause between connection attempts (seconds).
    #[serde(default = "default_retry_delay")]
    pub retry_delay_s: f64,
    /// While the server is unreachable, try again at most this often (seconds); rounds in
    /// between are kept unverified at once instead of waiting on timeouts.
    #[serde(default = "default_reconnect_interval")]
    pub reconnect_interval_s: f64,
    /// Hold each message for the airtime the pipeline's `[link]` gives for its exact bytes.
    #[serde(default)]
    pub emulate_link: bool,
    /// The server's model must be this one: a text its description contains (e.g. the file
    /// or catalogue name `qwen2.5-coder-1.5b`); checked at every connection. Vocabulary and
    /// tokenizer are always checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_model: Option<String>,
}

fn default_connect_timeout() -> f64 {
    5.0
}
fn default_request_timeout() -> f64 {
    120.0
}
fn default_retries() -> u32 {
    2
}
fn default_retry_delay() -> f64 {
    0.2
}
fn default_reconnect_interval() -> f64 {
    2.0
}

impl RemoteVerifierSpec {
    /// Spec for `address` with every default.
    pub fn new(address: impl Into<String>) -> Self {
        RemoteVerifierSpec {
            address: address.into(),
            connect_timeout_s: default_connect_timeout(),
            request_timeout_s: default_request_timeout(),
            retries: default_retries(),
            retry_delay_s: default_retry_delay(),
            reconnect_interval_s: default_reconnect_interval(),
            emulate_link: false,
            expect_model: None,
        }
    }

    fn validate(&self) -> Result<()> {
        for (key, v, min_exclusive) in [
            ("connect_timeout_s", self.connect_timeout_s, true),
            ("request_timeout_s", self.request_timeout_s, true),
            ("retry_delay_s", self.retry_delay_s, false),
            ("reconnect_interval_s", self.reconnect_interval_s, false),
        ] {
            check_seconds(key, v, min_exclusive)?;
        }
        check_retries(self.retries)
    }
}

/// A timeout or delay of a verifier's config: finite, in range. A timeout of 1e300 s is a
/// typo that would otherwise panic when it becomes a Duration, in the middle of a run.
pub(crate) fn check_seconds(key: &str, v: f64, min_exclusive: bool) -> Result<()> {
    let above_min = if min_exclusive { v > 0.0 } else { v >= 0.0 };
    if !(above_min && v <= MAX_SECONDS) {
        let lower = if min_exclusive {
            "above 0"
        } else {
            "at least 0"
        };
        return Err(HlmError::invalid(
            key,
            v,
            format!("must be a number of seconds {lower} and at most {MAX_SECONDS}"),
        ));
    }
    Ok(())
}

/// `verifier.retries`: at most [`MAX_RETRIES`].
pub(crate) fn check_retries(retries: u32) -> Result<()> {
    if retries > MAX_RETRIES {
        return Err(HlmError::invalid(
            "retries",
            retries,
            format!("must be at most {MAX_RETRIES}"),
        ));
    }
    Ok(())
}

/// The longest timeout or delay a remote verifier accepts (an hour).
const MAX_SECONDS: f64 = 3600.0;
/// The most connection attempts per try.
const MAX_RETRIES: u32 = 100;

#[typetag::serde(name = "remote")]
impl VerifierSpec for RemoteVerifierSpec {
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Verifier>> {
        self.validate()?;
        let emulator = match (&ctx.link, self.emulate_link) {
            (Some(link), true) => Some(LinkEmulator::new(link.fresh(), 0)?),
            (None, true) => {
                return Err(HlmError::invalid(
                    "emulate_link",
                    true,
                    "the pipeline has no [link] to emulate",
                ));
            }
            (_, false) => None,
        };
        Ok(Box::new(RemoteVerifier::connect(self.clone(), emulator)?))
    }
}

struct Connection {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
}

/// Why a connection could not be made.
enum ConnectError {
    /// Network or server down: retry later.
    Unreachable(String),
    /// The server serves another model than `expect_model`: never retry.
    WrongModel(String),
}

impl From<ConnectError> for HlmError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Unreachable(e) => HlmError::VerifierUnavailable(e),
            ConnectError::WrongModel(e) => HlmError::Incompatible(e),
        }
    }
}

/// Why one exchange failed.
enum Failure {
    /// The network or the server's process: retry later, keep generating meanwhile.
    Unreachable(String),
    /// The server answered with an error.
    Refused(ErrorCode, String),
}

/// A verifier on the other side of a TCP connection.
pub struct RemoteVerifier {
    spec: RemoteVerifierSpec,
    addr: SocketAddr,
    info: Option<ServerInfo>,
    conn: Option<Connection>,
    session: Option<u64>,
    prompt: Vec<TokenId>,
    params: Option<SessionParams>,
    /// Tokens after the prompt that the server has committed for this generation.
    history: Vec<TokenId>,
    /// When the last connection attempt failed.
    down_since: Option<Instant>,
    emulator: Option<LinkEmulator>,
    /// Bytes this client wrote and read (frames included).
    bytes: (u64, u64),
}

impl RemoteVerifier {
    /// Resolve the address and ask the server what it serves. An unreachable server is not an
    /// error here (the run starts on the draft model alone); a bad address is.
    pub fn connect(spec: RemoteVerifierSpec, emulator: Option<LinkEmulator>) -> Result<Self> {
        let addr = spec
            .address
            .to_socket_addrs()
            .map_err(|e| {
                HlmError::invalid(
                    "address",
                    &spec.address,
                    format!("not a HOST:PORT that resolves: {e}"),
                )
            })?
            .next()
            .ok_or_else(|| HlmError::invalid("address", &spec.address, "resolves to no address"))?;
        let mut v = RemoteVerifier {
            spec,
            addr,
            info: None,
            conn: None,
            session: None,
            prompt: Vec::new(),
            params: None,
            history: Vec::new(),
            down_since: None,
            emulator,
            bytes: (0, 0),
        };
        match v.ensure_connection() {
            Ok(()) => Ok(v),
            Err(e @ ConnectError::WrongModel(_)) => Err(e.into()),
            // Not an error yet: the run starts on the draft model and retries later.
            Err(ConnectError::Unreachable(e)) => {
                tracing::warn!(
                    "verifier server {} unreachable, starting on the draft model alone: {e}",
                    v.addr
                );
                Ok(v)
            }
        }
    }

    /// What the server said about itself, once it has answered.
    pub fn server_info(&self) -> Option<&ServerInfo> {
        self.info.as_ref()
    }

    /// Bytes written and read so far (frames included).
    pub fn bytes(&self) -> (u64, u64) {
        self.bytes
    }

    fn open(&self) -> std::result::Result<Connection, String> {
        let timeout = Duration::from_secs_f64(self.spec.connect_timeout_s);
        let mut last = String::new();
        for attempt in 0..=self.spec.retries {
            if attempt > 0 {
                std::thread::sleep(Duration::from_secs_f64(self.spec.retry_delay_s));
            }
            match TcpStream::connect_timeout(&self.addr, timeout) {
                Ok(s) => {
                    let io = |e: std::io::Error| e.to_string();
                    s.set_nodelay(true).map_err(io)?;
                    s.set_read_timeout(Some(Duration::from_secs_f64(self.spec.request_timeout_s)))
                        .map_err(io)?;
                    s.set_write_timeout(Some(Duration::from_secs_f64(self.spec.request_timeout_s)))
                        .map_err(io)?;
                    let w = s.try_clone().map_err(io)?;
                    return Ok(Connection {
                        reader: BufReader::with_capacity(1 << 16, s),
                        writer: BufWriter::with_capacity(1 << 16, w),
                    });
                }
                Err(e) => last = format!("cannot connect to {}: {e}", self.addr),
            }
        }
        Err(last)
    }

    /// One request, one answer.
    fn exchange(&mut self, request: &Request) -> std::result::Result<Response, Failure> {
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| Failure::Unreachable("not connected".into()))?;
        // Answers are small (verdicts), but refuse nonsense lengths from a confused peer.
        const MAX_ANSWER: usize = 64 << 20;
        let mut frame = Vec::new();
        let sent =
            write_frame(&mut frame, request).map_err(|e| Failure::Unreachable(e.to_string()))?;
        let t0 = Instant::now();
        if let Some(em) = self.emulator.as_mut() {
            em.hold(sent, Direction::Uplink, t0)
                .map_err(|e| Failure::Unreachable(e.to_string()))?;
        }
        use std::io::Write;
        let lost = |e: std::io::Error| Failure::Unreachable(format!("connection lost: {e}"));
        conn.writer.write_all(&frame).map_err(lost)?;
        conn.writer.flush().map_err(lost)?;
        let (response, got) = match read_frame::<_, Response>(&mut conn.reader, MAX_ANSWER) {
            Ok(r) => r,
            Err(WireError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Failure::Unreachable(format!(
                    "no answer within {} s",
                    self.spec.request_timeout_s
                )));
            }
            Err(e) => return Err(Failure::Unreachable(e.to_string())),
        };
        let t1 = Instant::now();
        if let Some(em) = self.emulator.as_mut() {
            em.hold(got, Direction::Downlink, t1)
                .map_err(|e| Failure::Unreachable(e.to_string()))?;
        }
        self.bytes.0 += sent as u64;
        self.bytes.1 += got as u64;
        match response {
            Response::Error { code, message } => Err(Failure::Refused(code, message)),
            r => Ok(r),
        }
    }

    /// Connect and say hello, unless connected.
    fn ensure_connection(&mut self) -> std::result::Result<(), ConnectError> {
        if self.conn.is_some() {
            return Ok(());
        }
        let conn = match self.open() {
            Ok(c) => c,
            Err(e) => {
                self.down_since = Some(Instant::now());
                return Err(ConnectError::Unreachable(e));
            }
        };
        self.conn = Some(conn);
        match self.exchange(&Request::Hello) {
            Ok(Response::Info(info)) => {
                tracing::info!("verifier server {}: {}", self.addr, info.model);
                if let Some(want) = self.spec.expect_model.clone()
                    && !info.model.contains(want.as_str())
                {
                    self.drop_connection();
                    return Err(ConnectError::WrongModel(format!(
                        "the server at {} serves {}, not the expected model {want:?}",
                        self.addr, info.model
                    )));
                }
                self.info = Some(info);
                self.down_since = None;
                Ok(())
            }
            Ok(other) => {
                self.drop_connection();
                Err(ConnectError::Unreachable(format!(
                    "the server answered Hello with {other:?}"
                )))
            }
            Err(Failure::Unreachable(e)) | Err(Failure::Refused(_, e)) => {
                self.drop_connection();
                Err(ConnectError::Unreachable(e))
            }
        }
    }

    fn drop_connection(&mut self) {
        self.conn = None;
        self.session = None;
        self.down_since.get_or_insert_with(Instant::now);
    }

    /// Make sure a session exists that holds prompt + history; opens one if needed.
    fn ensure_session(&mut self) -> Result<()> {
        if self.session.is_some() && self.conn.is_some() {
            return Ok(());
        }
        if let Some(t) = self.down_since
            && self.conn.is_none()
            && t.elapsed().as_secs_f64() < self.spec.reconnect_interval_s
        {
            return Err(HlmError::VerifierUnavailable(format!(
                "server {} unreachable for {:.1} s",
                self.addr,
                t.elapsed().as_secs_f64()
            )));
        }
        self.ensure_connection()?;
        let params = self
            .params
            .ok_or_else(|| HlmError::Verifier("verify before begin".into()))?;
        let begin = Request::Begin(Begin {
            vocab_size: params.draft_vocab_size as u32,
            tokenizer_fingerprint: params.tokenizer_fingerprint,
            prompt: self.prompt.clone(),
            temperature: params.temperature,
            residual: params.residual.into(),
            seed: params.seed,
        });
        let session = match self.exchange(&begin) {
            Ok(Response::Begun { session }) => session,
            other => return Err(self.failed("begin", other)),
        };
        self.session = Some(session);
        if !self.history.is_empty() {
            tracing::info!(
                "resynchronising session {session} with {} committed tokens",
                self.history.len()
            );
            let sync = Request::Sync {
                session,
                tokens: self.history.clone(),
            };
            match self.exchange(&sync) {
                Ok(Response::Synced { .. }) => {}
                other => return Err(self.failed("sync", other)),
            }
        }
        Ok(())
    }

    /// Turn a failed or unexpected answer into the engine's error, dropping the connection
    /// when it can no longer be trusted.
    fn failed(&mut self, what: &str, r: std::result::Result<Response, Failure>) -> HlmError {
        match r {
            Err(Failure::Unreachable(e)) => {
                self.drop_connection();
                HlmError::VerifierUnavailable(format!("{what}: {e}"))
            }
            Err(Failure::Refused(code, message)) => {
                if code.closes_connection() {
                    self.drop_connection();
                }
                match code {
                    ErrorCode::Incompatible => HlmError::Incompatible(message),
                    ErrorCode::ContextTooLong => {
                        HlmError::Verifier(format!("{what}: the server refused: {message}"))
                    }
                    ErrorCode::UnknownSession | ErrorCode::Busy => {
                        // The session is gone (idle timeout) or the server is full: retry later.
                        self.session = None;
                        HlmError::VerifierUnavailable(format!("{what}: {message}"))
                    }
                    _ => HlmError::Verifier(format!(
                        "{what}: the server refused ({code:?}): {message}"
                    )),
                }
            }
            Ok(other) => {
                self.drop_connection();
                HlmError::Verifier(format!("{what}: unexpected answer {other:?}"))
            }
        }
    }
}

impl Verifier for RemoteVerifier {
    fn vocab_size(&self) -> usize {
        self.info.as_ref().map_or(0, |i| i.vocab_size as usize)
    }

    fn max_context(&self) -> usize {
        self.info
            .as_ref()
            .map_or(usize::MAX, |i| i.max_context as usize)
    }

    fn begin(&mut self, prompt: &[TokenId], params: &SessionParams) -> Result<()> {
        // A new generation: end the previous session, if any, and start over.
        if let Some(session) = self.session.take() {
            let _ = self.exchange(&Request::End { session });
        }
        self.prompt = prompt.to_vec();
        self.params = Some(*params);
        self.history.clear();
        self.down_since = None;
        match self.ensure_session() {
            Ok(()) => Ok(()),
            Err(HlmError::VerifierUnavailable(e)) => {
                tracing::warn!("verifier unavailable at the start; drafting alone: {e}");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn verify(&mut self, request: &VerifyRequest) -> Result<VerifyOutcome> {
        self.ensure_session()?;
        let session = self
            .session
            .ok_or_else(|| HlmError::VerifierUnavailable("no session".into()))?;
        let vocab = self.vocab_size();
        let wire = Request::Verify(Verify {
            session,
            context: request.context.clone(),
            drafts: request
                .drafts
                .iter()
                .map(|d| WireDraft {
                    token: d.token,
                    payload: d.payload.as_ref().map(|p| PackedPayload::pack(p, vocab)),
                })
                .collect(),
            bonus: request.bonus,
        });
        match self.exchange(&wire) {
            Ok(Response::Verdicts {
                verdicts,
                residual,
                server_tokens,
                compute_s,
                target_probs,
            }) => {
                let residual = residual.map(|r| r.unpack(vocab)).transpose();
                let checked = residual.map_err(HlmError::Payload).and_then(|residual| {
                    let outcome = VerifyOutcome {
                        verdicts,
                        residual,
                        server_tokens,
                        compute_s,
                        target_probs,
                        // hlm serve always draws from the whole distribution.
                        approx_residual_mass: None,
                    };
                    check_answer(&outcome, request, vocab).map(|()| outcome)
                });
                let outcome = match checked {
                    Ok(o) => o,
                    Err(e) => {
                        // A server that answers nonsense is a faulty verifier, not a source of
                        // output: drop it and go on as while it is unreachable.
                        self.drop_connection();
                        return Err(HlmError::VerifierUnavailable(format!(
                            "verify: the server at {} answered inconsistently, dropping the \
                             connection: {e}",
                            self.addr
                        )));
                    }
                };
                let stood = outcome
                    .verdicts
                    .iter()
                    .filter(|v| matches!(v, Verdict::Accepted | Verdict::Unverified))
                    .count();
                self.history.extend_from_slice(&request.context);
                self.history
                    .extend(request.drafts.iter().take(stood).map(|d| d.token));
                Ok(outcome)
            }
            other => Err(self.failed("verify", other)),
        }
    }

    fn tokenizer(&self) -> Option<Arc<dyn TextTokenizer>> {
        None
    }

    fn describe(&self) -> String {
        match &self.info {
            Some(i) => format!("remote verifier at {} ({})", self.addr, i.model),
            None => format!("remote verifier at {} (not reached yet)", self.addr),
        }
    }
}

/// Whether a server's verdicts can be believed for `request`: their shape (one per judged
/// draft, a resample last, a bonus only when asked), token ids in the vocabulary, the
/// probabilities and the times real numbers in range.
fn check_answer(outcome: &VerifyOutcome, request: &VerifyRequest, vocab: usize) -> Result<()> {
    outcome.validate(request)?;
    let bad = |m: String| Err(HlmError::Verifier(m));
    for v in &outcome.verdicts {
        if let Verdict::Resampled(t) | Verdict::Bonus(t) = v
            && *t as usize >= vocab
        {
            return bad(format!("token {t} is outside the vocabulary of {vocab}"));
        }
    }
    if !(outcome.compute_s.is_finite() && outcome.compute_s >= 0.0) {
        return bad(format!("compute time {} s", outcome.compute_s));
    }
    let fed = request.context.len() + request.drafts.len();
    if outcome.server_tokens > fed as u64 + 1 {
        return bad(format!(
            "{} server tokens for a request of {fed}",
            outcome.server_tokens
        ));
    }
    if outcome.target_probs.len() > request.drafts.len() {
        return bad(format!(
            "{} target probabilities for {} drafts",
            outcome.target_probs.len(),
            request.drafts.len()
        ));
    }
    if let Some(p) = outcome
        .target_probs
        .iter()
        .flatten()
        .find(|p| !(0.0..=1.0).contains(*p))
    {
        return bad(format!("target probability {p}"));
    }
    Ok(())
}

impl Drop for RemoteVerifier {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = self.exchange(&Request::End { session });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_timeouts_and_retries_are_refused_by_name() {
        assert!(RemoteVerifierSpec::new("127.0.0.1:1").validate().is_ok());
        let set = |f: &dyn Fn(&mut RemoteVerifierSpec)| {
            let mut s = RemoteVerifierSpec::new("127.0.0.1:1");
            f(&mut s);
            s.validate().expect_err("refused").to_string()
        };
        for bad in [0.0, -1.0, 1e300, f64::NAN, f64::INFINITY] {
            assert!(set(&|s| s.connect_timeout_s = bad).contains("connect_timeout_s"));
            assert!(set(&|s| s.request_timeout_s = bad).contains("request_timeout_s"));
        }
        for bad in [-1.0, 1e300, f64::NAN] {
            assert!(set(&|s| s.retry_delay_s = bad).contains("retry_delay_s"));
            assert!(set(&|s| s.reconnect_interval_s = bad).contains("reconnect_interval_s"));
        }
        assert!(set(&|s| s.retries = 1_000_000).contains("retries"));
    }
}

//! The messages of the verifier protocol (version [`crate::wire::PROTOCOL_VERSION`]).
//!
//! A client opens a TCP connection and sends [`Request`]s; the server answers each with exactly
//! one [`Response`], in order. Sessions belong to the connection that began them: when the
//! connection closes, its sessions end and their KV state is freed.
//!
//! | request | answer | what it does |
//! |---|---|---|
//! | `Hello` | `Info` | the server's model, vocabulary, context and limits |
//! | `Begin` | `Begun` | new session: checks vocabulary and tokenizer, prefills the prompt |
//! | `Verify` | `Verdicts` | feeds unseen context, judges the drafts by speculative sampling |
//! | `Sync` | `Synced` | feeds committed tokens the server has not seen (skipped, or kept while it was unreachable) |
//! | `End` | `Ended` | ends a session, returns its statistics |
//!
//! Any request may instead get `Error { code, message }`. After `BadFrame`, `TooLarge` or
//! `Version` the server closes the connection (the stream can no longer be trusted).

use hlm_core::{TokenId, Verdict};
use serde::{Deserialize, Serialize};

use crate::wire::PackedPayload;

/// A client's request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Ask what the server serves.
    Hello,
    /// Start a session.
    Begin(Begin),
    /// Verify drafts of a session.
    Verify(Verify),
    /// Feed committed tokens to a session.
    Sync { session: u64, tokens: Vec<TokenId> },
    /// End a session.
    End { session: u64 },
}

/// Start a session: the device's vocabulary and tokenizer, the prompt, sampling parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Begin {
    /// The device's vocabulary size (0: no draft model, LLM-only).
    pub vocab_size: u32,
    /// The device's tokenizer fingerprint, when it has one.
    pub tokenizer_fingerprint: Option<u64>,
    pub prompt: Vec<TokenId>,
    pub temperature: f32,
    pub seed: u64,
}

/// One drafted token and what was uploaded for it (`None`: skipped by the filter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireDraft {
    pub token: TokenId,
    pub payload: Option<PackedPayload>,
}

/// Verify drafts (see [`hlm_core::VerifyRequest`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verify {
    pub session: u64,
    pub context: Vec<TokenId>,
    pub drafts: Vec<WireDraft>,
    pub bonus: bool,
}

/// What the server serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// The target model, as the server describes it.
    pub model: String,
    pub vocab_size: u32,
    pub max_context: u32,
    pub tokenizer_fingerprint: Option<u64>,
    /// Largest request body the server accepts (bytes).
    pub max_message_bytes: u32,
    pub max_sessions: u32,
}

/// Per-session statistics, returned by `End` and logged by the server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionStats {
    pub verify_requests: u64,
    pub drafts_judged: u64,
    pub drafts_accepted: u64,
    pub server_tokens: u64,
    pub compute_s: f64,
    /// Request bytes received for the session's verifications (frames included).
    pub bytes_in: u64,
}

/// The server's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Info(ServerInfo),
    Begun {
        session: u64,
    },
    Verdicts {
        verdicts: Vec<Verdict>,
        server_tokens: u64,
        compute_s: f64,
        target_probs: Vec<Option<f32>>,
    },
    Synced {
        context_len: u64,
    },
    Ended {
        stats: SessionStats,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The frame could not be decoded (connection closed after this answer).
    BadFrame,
    /// The frame exceeds `max_message_bytes` (connection closed after this answer).
    TooLarge,
    /// The client speaks another protocol version (connection closed after this answer).
    Version,
    /// The session does not exist on this connection (ended, idled out, or never begun).
    UnknownSession,
    /// The server already holds `max_sessions` sessions.
    Busy,
    /// The device's vocabulary or tokenizer differs from the server's.
    Incompatible,
    /// The context would exceed the server's `max_context`.
    ContextTooLong,
    /// A malformed payload, a token outside the vocabulary, or an inconsistent request.
    BadRequest,
    /// The model failed.
    Internal,
}

impl ErrorCode {
    /// Whether the server closes the connection after answering with this code.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            ErrorCode::BadFrame | ErrorCode::TooLarge | ErrorCode::Version
        )
    }
}

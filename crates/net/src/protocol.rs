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
//! Version 2 added split verification: a draft may carry only its probability x_d (payload
//! kind 3), a verdict may be `Rejected`, answered with the target's distribution
//! ([`WireResidual`]) encoded as the session's [`WireResidualCodec`] asks. A version-1 client is
//! refused with `Version` before anything else is read.
//!
//! Any request may instead get `Error { code, message }`. After `BadFrame`, `TooLarge` or
//! `Version` the server closes the connection (the stream can no longer be trusted).

use hlm_core::{Residual, ResidualCodec, TokenId, Verdict};
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
    /// How the server sends its distribution after rejecting a split-verified draft.
    pub residual: WireResidualCodec,
}

/// A [`ResidualCodec`] on the wire (postcard has no internally tagged enums): `top_k = 0` is
/// dense.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WireResidualCodec {
    pub top_k: u32,
    pub bits: u8,
}

impl Default for WireResidualCodec {
    fn default() -> Self {
        ResidualCodec::default().into()
    }
}

impl From<ResidualCodec> for WireResidualCodec {
    fn from(c: ResidualCodec) -> Self {
        match c {
            ResidualCodec::Dense { bits } => WireResidualCodec {
                top_k: 0,
                bits: bits.min(255) as u8,
            },
            ResidualCodec::TopK { k, bits } => WireResidualCodec {
                top_k: u32::try_from(k).unwrap_or(u32::MAX),
                bits: bits.min(255) as u8,
            },
        }
    }
}

impl From<WireResidualCodec> for ResidualCodec {
    fn from(w: WireResidualCodec) -> Self {
        let bits = u32::from(w.bits);
        match w.top_k {
            0 => ResidualCodec::Dense { bits },
            k => ResidualCodec::TopK {
                k: k as usize,
                bits,
            },
        }
    }
}

/// The target's distribution at a rejected split-verified draft, as it travels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireResidual {
    pub distribution: PackedPayload,
    /// ε = ‖y − ŷ‖₁ of a lossy codec.
    pub l1_error: Option<f32>,
}

impl WireResidual {
    /// Pack a residual for a vocabulary of `vocab` entries.
    pub fn pack(r: &Residual, vocab: usize) -> Self {
        WireResidual {
            distribution: PackedPayload::pack(&r.distribution, vocab),
            l1_error: r.l1_error,
        }
    }

    /// Unpack and check a residual a peer sent.
    pub fn unpack(&self, vocab: usize) -> Result<Residual, String> {
        let r = Residual {
            distribution: self.distribution.unpack(vocab)?,
            l1_error: self.l1_error,
        };
        r.validate(vocab).map_err(|e| e.to_string())?;
        Ok(r)
    }
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
        /// With a final `Rejected` verdict: the target's distribution there.
        residual: Option<WireResidual>,
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

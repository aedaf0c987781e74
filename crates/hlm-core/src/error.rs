//! Typed errors of the core crate. Libraries return these; the CLI reports them with `anyhow`.

use std::path::PathBuf;

/// Everything that can go wrong while configuring or running a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum HlmError {
    /// A configuration file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ConfigRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A configuration file (or an override) is not valid.
    #[error("invalid config {origin}: {message}")]
    Config { origin: String, message: String },
    /// A parameter is outside what the component accepts.
    #[error("invalid parameter `{key}` = {value}: {reason}")]
    InvalidParameter {
        key: String,
        value: String,
        reason: String,
    },
    /// The draft model and the verifier do not agree on something they must share.
    #[error("incompatible pipeline: {0}")]
    Incompatible(String),
    /// A model failed (loading, shape, device, ...).
    #[error("model error: {0}")]
    Model(String),
    /// The verifier failed (local model, remote server, ...).
    #[error("verifier error: {0}")]
    Verifier(String),
    /// The verifier cannot be reached right now (server down, connection lost, timeout). The
    /// engine keeps generating with the draft model alone and marks those tokens unverified.
    #[error("verifier unavailable: {0}")]
    VerifierUnavailable(String),
    /// A length or position outside the model's state.
    #[error("cannot roll back to length {requested}: the state holds only {available} tokens")]
    Rollback { requested: usize, available: usize },
    /// The context would exceed the model's maximum length.
    #[error("context of {requested} tokens exceeds the model's maximum of {max}")]
    ContextOverflow { requested: usize, max: usize },
    /// A malformed upload payload reached a verifier.
    #[error("malformed payload: {0}")]
    Payload(String),
    /// A filter component could not score a token.
    #[error("filter error: {0}")]
    Filter(String),
    /// Energy or link accounting failed.
    #[error("energy model error: {0}")]
    Energy(String),
    /// Input/output error with the path that failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl HlmError {
    /// Shorthand for [`HlmError::InvalidParameter`].
    pub fn invalid(
        key: impl Into<String>,
        value: impl ToString,
        reason: impl Into<String>,
    ) -> Self {
        HlmError::InvalidParameter {
            key: key.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// Result alias used throughout the workspace.
pub type Result<T, E = HlmError> = std::result::Result<T, E>;

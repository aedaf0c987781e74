//! Verification on the serving engines where large models already run: llama.cpp's
//! `llama-server`, vLLM and SGLang.
//!
//! By default ([`Distribution::Full`]) every engine is asked for the same thing, the target's
//! next-token distribution after a prefix, over the whole vocabulary and before temperature;
//! the device's side ([`EngineVerifier`]) judges the drafts against it with the same
//! [`hlm_core::DraftJudge`] as the in-process verifier, draws from the same random stream and
//! computes the residual itself. Nothing is approximated: a run verified by an engine equals
//! a local run on the same weights token for token, as far as the two compute the same
//! logits. [`Distribution::Sampled`] (llama-server) asks for small answers instead: the
//! drafted token's exact probability and tokens drawn by the engine (`sampled.rs`).
//!
//! - [`http`]: the one HTTP client (timeouts, retries, faults versus refusals);
//! - [`llama_server`]: `POST /completion` with `n_probs` = the vocabulary, one request per
//!   position (it has no prompt log-probabilities; its prompt cache makes the shared prefix
//!   cheap) and only up to the first rejection;
//! - [`vllm`]: `POST /v1/completions` with `prompt_logprobs = -1`, every position in one
//!   request (needs `--max-logprobs -1`);
//! - [`sglang`]: `POST /generate` with `logprob_start_len` and `top_logprobs_num` = the
//!   vocabulary, every position in one request, the prefix still served from its radix cache.
//!
//! ```toml
//! [verifier]
//! type = "llama_server"          # or "vllm", "sglang"
//! url = "http://127.0.0.1:8080"
//! ```

pub mod http;
pub mod llama_server;
mod sampled;
pub mod sglang;
mod verifier;
pub mod vllm;

use hlm_core::{BuildContext, Result, TokenId, Verifier, VerifierSpec};
use serde::{Deserialize, Serialize};

pub use verifier::EngineVerifier;

/// What an engine serves, as it reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    /// The model's name or path.
    pub model: String,
    /// Entries of its vocabulary (logit rows), when the engine says.
    pub vocab_size: Option<usize>,
    /// The longest context it serves, when it says.
    pub max_context: Option<usize>,
}

/// One position's next-token log-probabilities, as `(token id, log-probability)` pairs.
pub type SparseRow = Vec<(TokenId, f32)>;

/// What an engine answered for a scoring request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scored {
    /// One row per prefix end, in order.
    pub rows: Vec<SparseRow>,
    /// Positions the engine computed (past its cache), when it says.
    pub computed_positions: Option<u64>,
    /// Seconds the engine spent, when it says.
    pub compute_s: Option<f64>,
}

/// A question about one position, for [`Distribution::Sampled`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointQuery {
    /// This token's exact log-probability.
    Token(TokenId),
    /// A token drawn from the raw distribution (temperature 1, no truncation), the engine's
    /// sampler seeded with this.
    Sample(u64),
    /// The most likely token.
    Greedy,
}

/// An engine's answer to a [`PointQuery`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Point {
    /// The token asked about, drawn or chosen.
    pub token: TokenId,
    /// Its log-probability, before temperature.
    pub logprob: f32,
    /// The most likely tokens with theirs, as many as were asked for.
    pub top: SparseRow,
    /// Positions the engine computed (past its cache), when it says.
    pub computed_positions: Option<u64>,
    /// Seconds the engine spent, when it says.
    pub compute_s: Option<f64>,
}

/// One serving engine's request and response shapes.
pub trait Engine: Send {
    /// The engine's name and address, for messages (`llama-server at http://...`).
    fn describe(&self) -> String;
    /// What it serves.
    fn info(&mut self) -> Result<EngineInfo>;
    /// Its tokens for `text` without special tokens, where it has a tokenizer endpoint.
    fn tokenize(&mut self, text: &str) -> Result<Option<Vec<TokenId>>>;
    /// Whether one request scores several prefixes of a sequence (prompt log-probabilities);
    /// otherwise [`Engine::score`] is asked for one row at a time.
    fn scores_prompt(&self) -> bool;
    /// The whole next-token distribution after `tokens[..end]`, for each `end` in
    /// `from..=tokens.len()` (`from ≥ 1`), before temperature.
    fn score(&mut self, tokens: &[TokenId], from: usize, vocab: usize) -> Result<Scored>;
    /// Whether [`Engine::point`] is answered (for [`Distribution::Sampled`]).
    fn answers_points(&self) -> bool {
        false
    }
    /// One question about the position after `prefix`, with the `top` most likely tokens.
    fn point(&mut self, prefix: &[TokenId], query: PointQuery, top: usize) -> Result<Point> {
        let _ = (prefix, query, top);
        Err(hlm_core::HlmError::Verifier(format!(
            "{} cannot answer for single tokens: use verifier.distribution = \"full\"",
            self.describe()
        )))
    }
}

/// What the verifier asks an engine for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    /// The whole next-token distribution of every drafted position: exact for every method
    /// and temperature; answers as large as the vocabulary (14 MB of llama-server's JSON per
    /// position for a 150k vocabulary).
    #[default]
    Full,
    /// Small answers (llama-server; temperature 0 or 1): the drafted token's own exact
    /// probability for the acceptance test; after a rejection, tokens drawn by the engine
    /// and kept with probability max(0, 1 − x_t / y_t), which follow norm(max(0, y − x))
    /// exactly, for up to `residual_tries` draws, else a residual from the top
    /// `fallback_top_k` with the missing mass filled in the draft's shape (counted in
    /// `residual_approx`, its mass in `residual_max_missing_mass`); bonus tokens drawn by the
    /// engine. Not for split verification, which needs the whole distribution.
    Sampled,
}

/// The config every engine verifier shares (`[verifier] type = "llama_server"`, `"vllm"` or
/// `"sglang"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSpec {
    /// Where the engine listens, `http://HOST:PORT`.
    pub url: String,
    /// The model name to send (vLLM and SGLang serve several under names); also checked
    /// against the engine's own: its name must contain this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Time allowed to open a connection (seconds).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_s: f64,
    /// Time allowed for one answer (seconds).
    #[serde(default = "default_request_timeout")]
    pub request_timeout_s: f64,
    /// Attempts after the first, each after `retry_delay_s`.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Pause between attempts (seconds).
    #[serde(default = "default_retry_delay")]
    pub retry_delay_s: f64,
    /// While the engine does not answer, ask again at most this often (seconds); rounds in
    /// between are kept unverified at once.
    #[serde(default = "default_reconnect_interval")]
    pub reconnect_interval_s: f64,
    /// The largest answer accepted (MiB): a whole-vocabulary row of a 150k vocabulary is
    /// about 14 MB of llama-server's JSON.
    #[serde(default = "default_max_response_mb")]
    pub max_response_mb: u64,
    /// `"full"` (default) or `"sampled"`: see [`Distribution`].
    #[serde(default)]
    pub distribution: Distribution,
    /// With `distribution = "sampled"`: engine draws per rejection before the top-k
    /// fallback.
    #[serde(default = "default_residual_tries")]
    pub residual_tries: u32,
    /// With `distribution = "sampled"`: tokens of the fallback residual's known part.
    #[serde(default = "default_fallback_top_k")]
    pub fallback_top_k: usize,
}

fn default_residual_tries() -> u32 {
    16
}
fn default_fallback_top_k() -> usize {
    64
}

/// The most `residual_tries` and `fallback_top_k`.
const MAX_RESIDUAL_TRIES: u32 = 1000;
const MAX_FALLBACK_TOP_K: usize = 1 << 20;

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
fn default_max_response_mb() -> u64 {
    256
}

/// The largest `max_response_mb` (4 GiB).
const MAX_RESPONSE_MB: u64 = 4096;

impl EngineSpec {
    /// Spec for `url` with every default.
    pub fn new(url: impl Into<String>) -> Self {
        EngineSpec {
            url: url.into(),
            model: None,
            connect_timeout_s: default_connect_timeout(),
            request_timeout_s: default_request_timeout(),
            retries: default_retries(),
            retry_delay_s: default_retry_delay(),
            reconnect_interval_s: default_reconnect_interval(),
            max_response_mb: default_max_response_mb(),
            distribution: Distribution::Full,
            residual_tries: default_residual_tries(),
            fallback_top_k: default_fallback_top_k(),
        }
    }

    fn validate(&self) -> Result<()> {
        use crate::client::{check_retries, check_seconds};
        check_seconds("connect_timeout_s", self.connect_timeout_s, true)?;
        check_seconds("request_timeout_s", self.request_timeout_s, true)?;
        check_seconds("retry_delay_s", self.retry_delay_s, false)?;
        check_seconds("reconnect_interval_s", self.reconnect_interval_s, false)?;
        check_retries(self.retries)?;
        if !(1..=MAX_RESPONSE_MB).contains(&self.max_response_mb) {
            return Err(hlm_core::HlmError::invalid(
                "max_response_mb",
                self.max_response_mb,
                format!("must be 1 to {MAX_RESPONSE_MB}"),
            ));
        }
        if self.residual_tries > MAX_RESIDUAL_TRIES {
            return Err(hlm_core::HlmError::invalid(
                "residual_tries",
                self.residual_tries,
                format!("must be at most {MAX_RESIDUAL_TRIES}"),
            ));
        }
        if !(1..=MAX_FALLBACK_TOP_K).contains(&self.fallback_top_k) {
            return Err(hlm_core::HlmError::invalid(
                "fallback_top_k",
                self.fallback_top_k,
                format!("must be 1 to {MAX_FALLBACK_TOP_K}"),
            ));
        }
        Ok(())
    }

    /// The verifier on `engine`, built from this spec.
    fn verifier<E: Engine + 'static>(
        &self,
        engine: impl FnOnce(http::HttpClient, Option<String>) -> E,
    ) -> Result<Box<dyn Verifier>> {
        self.validate()?;
        let client = http::HttpClient::new(self)?;
        let engine = engine(client, self.model.clone());
        if self.distribution == Distribution::Sampled && !engine.answers_points() {
            return Err(hlm_core::HlmError::invalid(
                "distribution",
                "sampled",
                format!(
                    "{} answers whole distributions only: use \"full\"",
                    engine.describe()
                ),
            ));
        }
        let sampled = (self.distribution == Distribution::Sampled).then_some(
            sampled::SampledJudge::new(self.residual_tries, self.fallback_top_k),
        );
        let mut verifier = EngineVerifier::new(engine, self.model.clone(), sampled);
        verifier.ask_info();
        Ok(Box::new(verifier))
    }
}

/// `[verifier] type = "llama_server"`: llama.cpp's server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LlamaServerSpec(pub EngineSpec);

/// `[verifier] type = "vllm"`: vLLM's OpenAI-compatible server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VllmSpec(pub EngineSpec);

/// `[verifier] type = "sglang"`: SGLang's native server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SglangSpec(pub EngineSpec);

#[typetag::serde(name = "llama_server")]
impl VerifierSpec for LlamaServerSpec {
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Verifier>> {
        self.0
            .verifier(|client, _| llama_server::LlamaServer::new(client))
    }
}

#[typetag::serde(name = "vllm")]
impl VerifierSpec for VllmSpec {
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Verifier>> {
        self.0.verifier(vllm::Vllm::new)
    }
}

#[typetag::serde(name = "sglang")]
impl VerifierSpec for SglangSpec {
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Verifier>> {
        self.0.verifier(|client, _| sglang::Sglang::new(client))
    }
}

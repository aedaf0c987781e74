//! The server's config file (`hlm serve --config configs/server.toml`): the model, the
//! acceptance rule and the `[limits]` that bound what clients can make the server hold.
//!
//! Every limit has a finite range, checked when the file is read (`hlm config check` reads it
//! the same way), so a typo is refused by name instead of failing at run time.

use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

use hlm_core::{BuildContext, ConfiguredRule, HlmError, TargetModelSpec};
use serde::{Deserialize, Serialize};

use super::Server;

/// Limits of a server (`[limits]` of the server config). Each bounds one resource a client
/// can claim; together they bound the server's memory ([`super::MemoryBudget`], printed by
/// `hlm serve` at start).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerLimits {
    /// Sessions held at once; a `Begin` beyond this is answered `Busy`.
    pub max_sessions: usize,
    /// Sessions one connection may hold at once (beyond: `Busy`), so one client cannot take
    /// every session.
    pub max_sessions_per_connection: usize,
    /// Open connections at once; one beyond is answered `Busy` and closed. Each holds a
    /// thread and at most one frame in memory.
    pub max_connections: usize,
    /// Largest request body accepted (bytes). A dense 32-bit payload of Qwen2.5's 151,936
    /// probabilities is 608 kB, so the default of 8 MiB fits a few of them per request.
    pub max_message_bytes: usize,
    /// Longest context of a session (0 = the model's own maximum).
    pub max_context: usize,
    /// Tokens one request may feed: a `Begin`'s prompt, a `Sync`'s tokens, a `Verify`'s
    /// context and drafts. A longer prompt is refused (`ContextTooLong`) rather than holding
    /// the model for everyone while it runs.
    pub max_request_tokens: usize,
    /// Drafts one `Verify` may carry (each costs a row of logits over the vocabulary).
    pub max_drafts: usize,
    /// KV positions all sessions together may hold (0 = `max_sessions × max_context`); a
    /// request that would go beyond is answered `Busy`. This, not the session count, is what
    /// bounds the KV memory.
    pub max_held_tokens: usize,
    /// A session (and a connection) with no request that does work for this long is ended
    /// (seconds). `Hello`s and empty `Sync`s do not count as work.
    pub idle_timeout_s: f64,
    /// A frame must arrive whole within this many seconds of its first byte, however slowly
    /// its bytes trickle in.
    pub frame_timeout_s: f64,
    /// An answer must be taken by the client within this many seconds, or the connection is
    /// closed (a client that never reads cannot keep its thread).
    pub write_timeout_s: f64,
    /// Requests the model worker takes together at most.
    pub max_batch: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_sessions: 64,
            max_sessions_per_connection: 8,
            max_connections: 128,
            max_message_bytes: 8 << 20,
            max_context: 0,
            max_request_tokens: 4096,
            max_drafts: 64,
            max_held_tokens: 65536,
            idle_timeout_s: 300.0,
            frame_timeout_s: 30.0,
            write_timeout_s: 30.0,
            max_batch: 32,
        }
    }
}

impl ServerLimits {
    /// Each count with its accepted range (wide: the ranges exist so that no value can
    /// overflow or exhaust something at run time).
    fn counts(&self) -> [(&'static str, usize, RangeInclusive<usize>); 9] {
        [
            ("max_sessions", self.max_sessions, 1..=4096),
            (
                "max_sessions_per_connection",
                self.max_sessions_per_connection,
                1..=4096,
            ),
            ("max_connections", self.max_connections, 1..=16384),
            ("max_message_bytes", self.max_message_bytes, 64..=256 << 20),
            ("max_context", self.max_context, 0..=1 << 24),
            ("max_request_tokens", self.max_request_tokens, 1..=1 << 20),
            ("max_drafts", self.max_drafts, 1..=1024),
            ("max_held_tokens", self.max_held_tokens, 0..=1 << 28),
            ("max_batch", self.max_batch, 1..=1024),
        ]
    }

    /// Each duration with its largest value in seconds (a week at most: no clock overflows).
    fn durations(&self) -> [(&'static str, f64, f64); 3] {
        [
            ("idle_timeout_s", self.idle_timeout_s, 7.0 * 86400.0),
            ("frame_timeout_s", self.frame_timeout_s, 3600.0),
            ("write_timeout_s", self.write_timeout_s, 3600.0),
        ]
    }

    /// Check every limit against its range; the error names the key (`limits.<key>`).
    pub fn validate(&self) -> hlm_core::Result<()> {
        for (key, v, range) in self.counts() {
            if !range.contains(&v) {
                return Err(HlmError::invalid(
                    format!("limits.{key}"),
                    v,
                    format!("must be between {} and {}", range.start(), range.end()),
                ));
            }
        }
        for (key, v, max) in self.durations() {
            if !(v > 0.0 && v <= max) {
                return Err(HlmError::invalid(
                    format!("limits.{key}"),
                    v,
                    format!("must be a number of seconds above 0 and at most {max}"),
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.idle_timeout_s)
    }

    pub(crate) fn frame_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.frame_timeout_s)
    }

    pub(crate) fn write_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.write_timeout_s)
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
    /// Acceptance rule: exact speculative sampling (default), greedy matching (`"greedy"`) or a
    /// registered rule of your own ([`ConfiguredRule`]).
    #[serde(default)]
    pub rule: ConfiguredRule,
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
        let config_error = |message: String| HlmError::Config {
            origin: origin.to_string(),
            message,
        };
        let cfg: ServerConfig = toml::from_str(text).map_err(|e| config_error(e.to_string()))?;
        cfg.limits
            .validate()
            .map_err(|e| config_error(e.to_string()))?;
        Ok(cfg)
    }

    /// Load the model and make a server.
    pub fn build(&self, ctx: &BuildContext) -> hlm_core::Result<Server> {
        let mut ctx = ctx.clone();
        ctx.device = self.device.clone();
        let model = self.model.build(&ctx)?;
        Server::new(model, self.rule.clone(), self.limits.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limits with one key set as a config file would set it.
    fn with(key: &str, value: toml::Value) -> ServerLimits {
        let mut table = toml::Table::try_from(ServerLimits::default()).expect("table");
        table.insert(key.to_string(), value);
        table.try_into().expect("limits")
    }

    #[test]
    fn every_limit_out_of_range_is_refused_by_name() {
        let defaults = ServerLimits::default();
        assert!(defaults.validate().is_ok());
        for (key, _, range) in defaults.counts() {
            let value = toml::Value::Integer(*range.end() as i64 + 1);
            let e = with(key, value).validate().expect_err(key).to_string();
            assert!(e.contains(&format!("limits.{key}")), "{e}");
        }
        for (key, _, max) in defaults.durations() {
            for value in [0.0, -1.0, max * 2.0, f64::INFINITY, f64::NAN] {
                let limits = with(key, toml::Value::Float(value));
                let e = limits.validate().expect_err(key).to_string();
                assert!(e.contains(&format!("limits.{key}")), "{e}");
            }
        }
    }
}

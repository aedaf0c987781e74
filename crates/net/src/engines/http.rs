//! The one HTTP client of the engine verifiers: JSON in and out, timeouts, retries, and the
//! line between a fault (keep generating, try again later) and a refusal (stop with the
//! engine's own message).

use std::time::{Duration, Instant};

use hlm_core::{HlmError, Result};
use serde::de::DeserializeOwned;

use super::EngineSpec;

/// A JSON-over-HTTP connection to one engine (`http://host:port`; plain HTTP: put a TLS
/// terminating proxy in front of an engine that is reached over the internet).
pub struct HttpClient {
    agent: ureq::Agent,
    base: String,
    retries: u32,
    retry_delay: Duration,
    reconnect_interval: Duration,
    max_response_bytes: u64,
    /// When the engine last failed to answer (faults within `reconnect_interval` of it fail
    /// at once instead of waiting on another timeout).
    down_since: Option<Instant>,
}

impl HttpClient {
    /// A client for `spec.url` (checked: `http://` and a host).
    pub fn new(spec: &EngineSpec) -> Result<Self> {
        let base = spec.url.trim_end_matches('/').to_string();
        let Some(rest) = base.strip_prefix("http://") else {
            let why = if base.starts_with("https://") {
                "https is not built in: reach the engine over plain http (loopback, a private \
                 network, or a TLS-terminating proxy such as an SSH tunnel)"
            } else {
                "must start with http://, e.g. http://127.0.0.1:8080"
            };
            return Err(HlmError::invalid("url", &spec.url, why));
        };
        if rest.is_empty() || rest.starts_with('/') {
            return Err(HlmError::invalid(
                "url",
                &spec.url,
                "names no host, e.g. http://127.0.0.1:8080",
            ));
        }
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs_f64(spec.connect_timeout_s)))
            .timeout_global(Some(Duration::from_secs_f64(spec.request_timeout_s)))
            // Status codes are read and reported with the engine's message, not as bare numbers.
            .http_status_as_error(false)
            .build();
        Ok(HttpClient {
            agent: config.into(),
            base,
            retries: spec.retries,
            retry_delay: Duration::from_secs_f64(spec.retry_delay_s),
            reconnect_interval: Duration::from_secs_f64(spec.reconnect_interval_s),
            max_response_bytes: spec.max_response_mb.saturating_mul(1 << 20),
            down_since: None,
        })
    }

    /// The engine's address, for messages.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path`, answered with JSON.
    pub fn get<T: DeserializeOwned>(&mut self, path: &str) -> Result<T> {
        self.exchange(path, None)
    }

    /// `POST path` with a JSON body, answered with JSON.
    pub fn post<T: DeserializeOwned>(&mut self, path: &str, body: &serde_json::Value) -> Result<T> {
        self.exchange(path, Some(body))
    }

    fn exchange<T: DeserializeOwned>(
        &mut self,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T> {
        if let Some(t) = self.down_since
            && t.elapsed() < self.reconnect_interval
        {
            return Err(HlmError::VerifierUnavailable(format!(
                "{} did not answer {:.1} s ago; trying again after {:.1} s",
                self.base,
                t.elapsed().as_secs_f64(),
                self.reconnect_interval.as_secs_f64()
            )));
        }
        let url = format!("{}{path}", self.base);
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                std::thread::sleep(self.retry_delay);
            }
            match self.once(&url, body) {
                Ok(v) => {
                    self.down_since = None;
                    return Ok(v);
                }
                Err(Attempt::Fault(why)) => last = why,
                Err(Attempt::Refused(e)) => return Err(e),
            }
        }
        self.down_since = Some(Instant::now());
        Err(HlmError::VerifierUnavailable(format!(
            "{url}: {last} ({} attempts)",
            self.retries + 1
        )))
    }

    fn once<T: DeserializeOwned>(
        &self,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> std::result::Result<T, Attempt> {
        let sent = match body {
            Some(b) => self.agent.post(url).send_json(b),
            None => self.agent.get(url).call(),
        };
        let mut response = sent.map_err(|e| Attempt::Fault(e.to_string()))?;
        let status = response.status().as_u16();
        let reader = response
            .body_mut()
            .with_config()
            .limit(self.max_response_bytes);
        if status != 200 {
            let text = reader
                .read_to_string()
                .unwrap_or_default()
                .chars()
                .take(500)
                .collect::<String>();
            let message = format!("{url} answered HTTP {status}: {}", text.trim());
            // 5xx, 408 and 429: overloaded, loading, crashed or a gateway's timeout, which
            // the engine may get over; other 4xx: it refuses what we ask (wrong flags,
            // limits), which asking again cannot change.
            return Err(if status >= 500 || status == 408 || status == 429 {
                Attempt::Fault(message)
            } else {
                Attempt::Refused(HlmError::Verifier(message))
            });
        }
        let text = reader.read_to_string().map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(n) => Attempt::Refused(HlmError::Verifier(format!(
                "{url} answered with more than {n} bytes (verifier.max_response_mb)"
            ))),
            e => Attempt::Fault(format!("reading the answer: {e}")),
        })?;
        serde_json::from_str(&text).map_err(|e| {
            Attempt::Refused(HlmError::Verifier(format!(
                "{url} answered with JSON of an unexpected shape: {e}"
            )))
        })
    }
}

/// How one attempt failed.
enum Attempt {
    /// No answer (refused connection, timeout, a 5xx): try again.
    Fault(String),
    /// An answer that says no, or one that makes no sense: stop.
    Refused(HlmError),
}

//! llama.cpp's `llama-server`: `POST /completion`, `GET /v1/models`, `POST /tokenize`.
//!
//! It returns probabilities of generated tokens only, so each position is one request: the
//! prefix as token ids, `n_predict = 1`, `n_probs` = the vocabulary (its default
//! `n_probs` path is a softmax of the raw logits over the whole vocabulary, before any
//! sampler or temperature), `cache_prompt` so the shared prefix is served from the slot's
//! KV cache. A token-array prompt gets no BOS added, so the device decides the sequence.
//! For `distribution = "sampled"` the same endpoint answers single questions
//! ([`point_request`]): a token forced by `logit_bias` (its reported probability is the raw
//! one), a seeded draw at temperature 1 with no truncating sampler, or the greedy choice.
//!
//! ```sh
//! llama-server -m qwen2.5-coder-1.5b-instruct-q4_k_m.gguf --host 127.0.0.1 --port 8080 -c 4096
//! ```

use hlm_core::{HlmError, Result, TokenId};
use serde::Deserialize;
use serde_json::json;

use super::http::HttpClient;
use super::{Engine, EngineInfo, Point, PointQuery, Scored, SparseRow};

/// A llama-server.
pub struct LlamaServer {
    http: HttpClient,
}

impl LlamaServer {
    /// The engine behind `http`.
    pub fn new(http: HttpClient) -> Self {
        LlamaServer { http }
    }
}

#[derive(Deserialize)]
struct Models {
    data: Vec<ModelEntry>,
}

#[derive(Deserialize)]
struct ModelEntry {
    id: String,
    #[serde(default)]
    meta: Option<ModelMeta>,
}

#[derive(Deserialize)]
struct ModelMeta {
    n_vocab: Option<usize>,
    n_ctx: Option<usize>,
}

#[derive(Deserialize)]
struct Tokenized {
    tokens: Vec<TokenId>,
}

#[derive(Deserialize)]
struct Completion {
    completion_probabilities: Vec<Probabilities>,
    #[serde(default)]
    timings: Option<Timings>,
}

#[derive(Deserialize)]
struct Probabilities {
    /// The generated token and its log-probability (from the raw softmax, as the top ones).
    id: TokenId,
    logprob: f32,
    top_logprobs: Vec<TopLogprob>,
}

#[derive(Deserialize)]
struct TopLogprob {
    id: TokenId,
    logprob: f32,
}

#[derive(Deserialize)]
struct Timings {
    prompt_n: Option<u64>,
    prompt_ms: Option<f64>,
    predicted_ms: Option<f64>,
}

/// The body of one scoring request: the next token after `prefix`.
pub fn completion_request(prefix: &[TokenId], vocab: usize) -> serde_json::Value {
    json!({
        "prompt": prefix,
        "n_predict": 1,
        "n_probs": vocab,
        // The drawn token is not used (the device draws from the distribution itself);
        // greedy keeps the sampler chain out of the way.
        "temperature": 0.0,
        "cache_prompt": true,
        "stream": false,
    })
}

/// A bias that makes the sampler pick a token whatever the logits: llama-server reports the
/// picked token's probability from the raw logits, before the bias (checked by the test
/// against the whole distribution).
const FORCE_BIAS: f64 = 1e4;

/// The body of a [`PointQuery`] after `prefix`, with the `top` most likely tokens.
pub fn point_request(prefix: &[TokenId], query: PointQuery, top: usize) -> serde_json::Value {
    let mut body = json!({
        "prompt": prefix,
        "n_predict": 1,
        // At least 1: without n_probs there are no probabilities in the answer at all.
        "n_probs": top.max(1),
        "temperature": 0.0,
        "cache_prompt": true,
        "stream": false,
    });
    match query {
        PointQuery::Greedy => {}
        PointQuery::Token(t) => body["logit_bias"] = json!([[t, FORCE_BIAS]]),
        PointQuery::Sample(seed) => {
            // A draw from the raw distribution: temperature 1 and no truncating sampler.
            body["temperature"] = json!(1.0);
            body["samplers"] = json!(["temperature"]);
            body["top_k"] = json!(0);
            body["top_p"] = json!(1.0);
            body["min_p"] = json!(0.0);
            // llama.cpp's seeds are 32-bit; u32::MAX means "random".
            body["seed"] = json!(seed % u64::from(u32::MAX));
        }
    }
    body
}

/// The next-token row of a `/completion` answer, with what it cost.
fn scored(c: Completion) -> Result<Scored> {
    let Some(first) = c.completion_probabilities.into_iter().next() else {
        return Err(HlmError::Verifier(
            "llama-server returned no probabilities (was n_predict 0, or the prompt at the \
             end of the context?)"
                .into(),
        ));
    };
    let row: SparseRow = first
        .top_logprobs
        .into_iter()
        .map(|t| (t.id, t.logprob))
        .collect();
    let t = c.timings;
    Ok(Scored {
        rows: vec![row],
        computed_positions: t.as_ref().and_then(|t| t.prompt_n),
        compute_s: t.and_then(|t| Some((t.prompt_ms? + t.predicted_ms.unwrap_or(0.0)) / 1e3)),
    })
}

impl Engine for LlamaServer {
    fn describe(&self) -> String {
        format!("llama-server at {}", self.http.base())
    }

    fn info(&mut self) -> Result<EngineInfo> {
        let m: Models = self.http.get("/v1/models")?;
        let Some(first) = m.data.into_iter().next() else {
            return Err(HlmError::Verifier(format!(
                "{} lists no model",
                self.describe()
            )));
        };
        Ok(EngineInfo {
            model: first.id,
            vocab_size: first.meta.as_ref().and_then(|m| m.n_vocab),
            max_context: first.meta.as_ref().and_then(|m| m.n_ctx),
        })
    }

    fn tokenize(&mut self, text: &str) -> Result<Option<Vec<TokenId>>> {
        let t: Tokenized = self.http.post(
            "/tokenize",
            &json!({ "content": text, "add_special": false }),
        )?;
        Ok(Some(t.tokens))
    }

    fn scores_prompt(&self) -> bool {
        false
    }

    fn answers_points(&self) -> bool {
        true
    }

    fn point(&mut self, prefix: &[TokenId], query: PointQuery, top: usize) -> Result<Point> {
        let c: Completion = self
            .http
            .post("/completion", &point_request(prefix, query, top))?;
        let timings = c.timings;
        let first = c
            .completion_probabilities
            .into_iter()
            .next()
            .ok_or_else(|| HlmError::Verifier("llama-server returned no probabilities".into()))?;
        if let PointQuery::Token(t) = query
            && first.id != t
        {
            return Err(HlmError::Verifier(format!(
                "llama-server generated token {} where logit_bias forced {t}",
                first.id
            )));
        }
        Ok(Point {
            token: first.id,
            logprob: first.logprob,
            top: first
                .top_logprobs
                .into_iter()
                .map(|t| (t.id, t.logprob))
                .collect(),
            computed_positions: timings.as_ref().and_then(|t| t.prompt_n),
            compute_s: timings
                .and_then(|t| Some((t.prompt_ms? + t.predicted_ms.unwrap_or(0.0)) / 1e3)),
        })
    }

    fn score(&mut self, tokens: &[TokenId], from: usize, vocab: usize) -> Result<Scored> {
        let mut out = Scored::default();
        for end in from..=tokens.len() {
            let answer: Completion = self
                .http
                .post("/completion", &completion_request(&tokens[..end], vocab))?;
            let s = scored(answer)?;
            out.rows.extend(s.rows);
            if let Some(n) = s.computed_positions {
                *out.computed_positions.get_or_insert(0) += n;
            }
            if let Some(t) = s.compute_s {
                *out.compute_s.get_or_insert(0.0) += t;
            }
        }
        Ok(out)
    }
}

//! llama.cpp's `llama-server`: `POST /completion`, `GET /v1/models`, `POST /tokenize`.
//!
//! It returns probabilities of generated tokens only, so each position is one request: the
//! prefix as token ids, `n_predict = 1`, `n_probs` = the vocabulary (its default
//! `n_probs` path is a softmax of the raw logits over the whole vocabulary, before any
//! sampler or temperature), `cache_prompt` so the shared prefix is served from the slot's
//! KV cache. A token-array prompt gets no BOS added, so the device decides the sequence.
//!
//! ```sh
//! llama-server -m qwen2.5-coder-1.5b-instruct-q4_k_m.gguf --host 127.0.0.1 --port 8080 -c 4096
//! ```

use hlm_core::{HlmError, Result, TokenId};
use serde::Deserialize;
use serde_json::json;

use super::http::HttpClient;
use super::{Engine, EngineInfo, Scored, SparseRow};

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

//! SGLang's native server: `POST /generate`, `GET /get_model_info`.
//!
//! One request scores every drafted position: `input_ids`, `max_new_tokens = 1`,
//! `return_logprob`, `logprob_start_len` one before the first position wanted (SGLang's first
//! input entry carries no distribution), `top_logprobs_num` = the vocabulary. The prefix
//! before `logprob_start_len` is still served from the radix cache. Entries are
//! `[logprob, token_id, text]`; each input entry is checked to sit on the token it scores.
//! SGLang reports log-probabilities before temperature unless started otherwise.
//!
//! ```sh
//! python -m sglang.launch_server --model-path Qwen/Qwen2.5-Coder-1.5B-Instruct --port 30000
//! ```

use hlm_core::{HlmError, Result, TokenId};
use serde::Deserialize;
use serde_json::json;

use super::http::HttpClient;
use super::{Engine, EngineInfo, Scored, SparseRow};

/// An SGLang server.
pub struct Sglang {
    http: HttpClient,
}

impl Sglang {
    /// The engine behind `http` (it serves one model; `verifier.model` is checked against
    /// its model path).
    pub fn new(http: HttpClient) -> Self {
        Sglang { http }
    }
}

#[derive(Deserialize)]
struct ModelInfo {
    model_path: String,
}

#[derive(Deserialize)]
struct Generated {
    meta_info: MetaInfo,
}

/// `(logprob, token id, text)`; the logprob is `null` where there is none.
type Entry = (Option<f32>, TokenId, Option<String>);

#[derive(Deserialize)]
struct MetaInfo {
    input_token_logprobs: Vec<Entry>,
    input_top_logprobs: Vec<Option<Vec<Entry>>>,
    output_top_logprobs: Vec<Option<Vec<Entry>>>,
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    cached_tokens: Option<u64>,
}

/// The body of one scoring request over `tokens`, for the prefix ends `from..`.
pub fn generate_request(tokens: &[TokenId], from: usize, vocab: usize) -> serde_json::Value {
    json!({
        "input_ids": tokens,
        "sampling_params": { "max_new_tokens": 1, "temperature": 0.0 },
        "return_logprob": true,
        "logprob_start_len": from.saturating_sub(1),
        "top_logprobs_num": vocab,
        "stream": false,
    })
}

/// Rows for the prefix ends `from..=tokens.len()` from a `/generate` answer.
pub fn parse_generate(
    answer: serde_json::Value,
    tokens: &[TokenId],
    from: usize,
) -> Result<Scored> {
    let g: Generated = serde_json::from_value(answer).map_err(|e| bad(e.to_string()))?;
    scored(g, tokens, from)
}

fn bad(m: String) -> HlmError {
    HlmError::Verifier(format!("SGLang's /generate answer: {m}"))
}

fn scored(g: Generated, tokens: &[TokenId], from: usize) -> Result<Scored> {
    let m = g.meta_info;
    let n = tokens.len();
    if !(1..=n).contains(&from) {
        return Err(bad(format!("rows from prefix {from} of {n} tokens")));
    }
    let start = from - 1;
    if m.input_top_logprobs.len() != n - start || m.input_token_logprobs.len() != n - start {
        return Err(bad(format!(
            "{} input positions scored from {start} of {n}",
            m.input_top_logprobs.len()
        )));
    }
    let row = |e: Vec<Entry>| -> Result<SparseRow> {
        e.into_iter()
            .map(|(lp, id, _)| {
                lp.map(|lp| (id, lp))
                    .ok_or_else(|| bad(format!("token {id} has no log-probability")))
            })
            .collect()
    };
    let mut rows = Vec::with_capacity(n + 1 - from);
    for (k, (top, (_, id, _))) in m
        .input_top_logprobs
        .into_iter()
        .zip(m.input_token_logprobs)
        .enumerate()
        .skip(1)
    {
        let p = start + k;
        if id != tokens[p] {
            return Err(bad(format!(
                "input entry {k} is on token {id}, not on token {} at position {p}",
                tokens[p]
            )));
        }
        rows.push(row(top.ok_or_else(|| {
            bad(format!("position {p} has no distribution"))
        })?)?);
    }
    let last = m
        .output_top_logprobs
        .into_iter()
        .next()
        .flatten()
        .ok_or_else(|| bad("no distribution after the last token".into()))?;
    rows.push(row(last)?);
    let computed = match (m.prompt_tokens, m.cached_tokens) {
        (Some(p), Some(c)) => Some(p.saturating_sub(c)),
        (p, _) => p,
    };
    Ok(Scored {
        rows,
        computed_positions: computed,
        compute_s: None,
    })
}

impl Engine for Sglang {
    fn describe(&self) -> String {
        format!("SGLang at {}", self.http.base())
    }

    fn info(&mut self) -> Result<EngineInfo> {
        let i: ModelInfo = self.http.get("/get_model_info")?;
        Ok(EngineInfo {
            model: i.model_path,
            vocab_size: None,
            max_context: None,
        })
    }

    fn tokenize(&mut self, _text: &str) -> Result<Option<Vec<TokenId>>> {
        // No tokenizer endpoint in its native API; the vocabulary size is checked by a scored
        // one-token prompt.
        Ok(None)
    }

    fn scores_prompt(&self) -> bool {
        true
    }

    fn score(&mut self, tokens: &[TokenId], from: usize, vocab: usize) -> Result<Scored> {
        let answer: Generated = self
            .http
            .post("/generate", &generate_request(tokens, from, vocab))?;
        scored(answer, tokens, from)
    }
}

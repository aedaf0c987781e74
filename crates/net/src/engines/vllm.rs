//! vLLM's OpenAI-compatible server: `POST /v1/completions`, `GET /v1/models`,
//! `POST /tokenize`.
//!
//! One request scores every drafted position: the sequence as token ids, `max_tokens = 1`,
//! `prompt_logprobs = -1` (every prompt position, the whole vocabulary, keyed by token id)
//! and `logprobs = -1` for the position after the last token, with
//! `return_tokens_as_token_ids` so that those are keyed `token_id:N` rather than by text.
//! vLLM reports log-probabilities before temperature by default (`raw_logprobs`); keep it so.
//! Asking for prompt log-probabilities makes vLLM skip its prefix cache for the request.
//!
//! ```sh
//! vllm serve Qwen/Qwen2.5-Coder-1.5B-Instruct --max-logprobs -1 --port 8000
//! ```
//!
//! `distribution = "sampled"` asks small questions instead ([`point_request`]): a drafted
//! token's own log-probability is the last entry of `prompt_logprobs` over the prefix and the
//! token (vLLM always includes the prompt token itself beside the top k), and a draw is one
//! generated token at temperature 1 without truncation (`top_k = -1`, `top_p = 1`,
//! `min_p = 0`) under the request's `seed`, with its log-probability. Answers are a few
//! entries, not the vocabulary, so `--max-logprobs` can stay small (at least the
//! verifier's `fallback_top_k`).

use std::collections::HashMap;

use hlm_core::{HlmError, Result, TokenId};
use serde::Deserialize;
use serde_json::json;

use super::http::HttpClient;
use super::{Engine, EngineInfo, Point, PointQuery, Scored, SparseRow};

/// A vLLM server.
pub struct Vllm {
    http: HttpClient,
    /// The served model's name, sent with each request (vLLM may serve several).
    model: Option<String>,
}

impl Vllm {
    /// The engine behind `http`; `model` names the served model (the first listed if none).
    pub fn new(http: HttpClient, model: Option<String>) -> Self {
        Vllm { http, model }
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
    max_model_len: Option<usize>,
}

#[derive(Deserialize)]
struct Tokenized {
    tokens: Vec<TokenId>,
}

#[derive(Deserialize)]
struct Completions {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    /// One entry per prompt position: `null` for the first, else token id → log-probability.
    prompt_logprobs: Option<Vec<Option<HashMap<String, PromptLogprob>>>>,
    logprobs: Option<ChoiceLogprobs>,
}

#[derive(Deserialize)]
struct PromptLogprob {
    logprob: f32,
    /// 1 for the most likely token (the prompt token itself may rank below the top k).
    #[serde(default)]
    rank: Option<u64>,
}

#[derive(Deserialize)]
struct ChoiceLogprobs {
    /// One map per generated token: `token_id:N` → log-probability.
    top_logprobs: Vec<Option<HashMap<String, f32>>>,
    /// The generated tokens, `token_id:N`.
    #[serde(default)]
    tokens: Vec<String>,
    /// Their log-probabilities.
    #[serde(default)]
    token_logprobs: Vec<Option<f32>>,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: Option<u64>,
}

/// The body of one scoring request over `tokens`.
pub fn completions_request(model: &str, tokens: &[TokenId]) -> serde_json::Value {
    json!({
        "model": model,
        "prompt": tokens,
        "max_tokens": 1,
        "temperature": 0.0,
        "prompt_logprobs": -1,
        "logprobs": -1,
        "return_tokens_as_token_ids": true,
        "add_special_tokens": false,
    })
}

/// Rows for the prefix ends `from..=n` of an `n`-token sequence from a `/v1/completions`
/// answer.
pub fn parse_completions(answer: serde_json::Value, n: usize, from: usize) -> Result<Scored> {
    if !(1..=n).contains(&from) {
        return Err(bad(format!("rows from prefix {from} of {n} tokens")));
    }
    let c: Completions = serde_json::from_value(answer).map_err(|e| bad(e.to_string()))?;
    scored(c, n, from)
}

fn bad(m: String) -> HlmError {
    HlmError::Verifier(format!("vLLM's /v1/completions answer: {m}"))
}

fn scored(c: Completions, n: usize, from: usize) -> Result<Scored> {
    let prompt_tokens = c.usage.and_then(|u| u.prompt_tokens);
    let choice = c
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| bad("no choice".into()))?;
    let prompt = choice.prompt_logprobs.ok_or_else(|| {
        bad("no prompt_logprobs (is the server older than prompt_logprobs = -1?)".into())
    })?;
    if prompt.len() != n {
        return Err(bad(format!(
            "{} prompt positions scored for {n} tokens",
            prompt.len()
        )));
    }
    let mut rows = Vec::with_capacity(n + 1 - from);
    for (end, entry) in prompt.into_iter().enumerate().skip(from) {
        let entry = entry.ok_or_else(|| bad(format!("position {end} has no log-probabilities")))?;
        let row = entry
            .into_iter()
            .map(|(id, lp)| Ok((parse_id(&id, "").map_err(bad)?, lp.logprob)))
            .collect::<Result<SparseRow>>()?;
        rows.push(row);
    }
    let last = choice
        .logprobs
        .and_then(|l| l.top_logprobs.into_iter().next().flatten())
        .ok_or_else(|| bad("no logprobs of the generated token".into()))?;
    rows.push(
        last.into_iter()
            .map(|(id, lp)| Ok((parse_id(&id, "token_id:").map_err(bad)?, lp)))
            .collect::<Result<SparseRow>>()?,
    );
    Ok(Scored {
        rows,
        computed_positions: prompt_tokens,
        compute_s: None,
    })
}

/// The body of a [`PointQuery`] after `prefix`, with the `top` most likely tokens.
pub fn point_request(
    model: &str,
    prefix: &[TokenId],
    query: PointQuery,
    top: usize,
) -> serde_json::Value {
    let mut body = json!({
        "model": model,
        "prompt": prefix,
        "max_tokens": 1,
        "temperature": 0.0,
        "return_tokens_as_token_ids": true,
        "add_special_tokens": false,
    });
    match query {
        PointQuery::Token(t) => {
            let mut prompt = prefix.to_vec();
            prompt.push(t);
            body["prompt"] = json!(prompt);
            body["prompt_logprobs"] = json!(top);
        }
        PointQuery::Greedy => body["logprobs"] = json!(top),
        PointQuery::Sample(seed) => {
            body["logprobs"] = json!(top);
            body["temperature"] = json!(1.0);
            body["top_p"] = json!(1.0);
            body["top_k"] = json!(-1);
            body["min_p"] = json!(0.0);
            // vLLM's seeds are 64-bit signed.
            body["seed"] = json!(seed >> 1);
        }
    }
    body
}

/// The answer to [`point_request`] (`prefix_len` tokens before the query).
pub fn parse_point(
    answer: serde_json::Value,
    query: PointQuery,
    prefix_len: usize,
    top: usize,
) -> Result<Point> {
    let c: Completions = serde_json::from_value(answer).map_err(|e| bad(e.to_string()))?;
    let computed_positions = c.usage.as_ref().and_then(|u| u.prompt_tokens);
    let choice = c
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| bad("no choice".into()))?;
    let (token, logprob, mut entries): (TokenId, f32, SparseRow) = match query {
        PointQuery::Token(t) => {
            let prompt = choice
                .prompt_logprobs
                .ok_or_else(|| bad("no prompt_logprobs".into()))?;
            if prompt.len() != prefix_len + 1 {
                return Err(bad(format!(
                    "{} prompt positions scored for {}",
                    prompt.len(),
                    prefix_len + 1
                )));
            }
            let last = prompt
                .into_iter()
                .last()
                .flatten()
                .ok_or_else(|| bad("the asked token has no log-probability".into()))?;
            let mut own = None;
            let mut entries = SparseRow::new();
            for (id, lp) in last {
                let id = parse_id(&id, "").map_err(bad)?;
                if id == t {
                    own = Some(lp.logprob);
                }
                if lp.rank.is_none_or(|r| r as usize <= top) {
                    entries.push((id, lp.logprob));
                }
            }
            let own = own.ok_or_else(|| bad(format!("no log-probability of token {t}")))?;
            (t, own, entries)
        }
        PointQuery::Greedy | PointQuery::Sample(_) => {
            let l = choice
                .logprobs
                .ok_or_else(|| bad("no logprobs of the generated token".into()))?;
            let token = l
                .tokens
                .first()
                .ok_or_else(|| bad("no generated token".into()))?;
            let token = parse_id(token, "token_id:").map_err(bad)?;
            let logprob = l
                .token_logprobs
                .first()
                .copied()
                .flatten()
                .ok_or_else(|| bad("the generated token has no log-probability".into()))?;
            let entries = l
                .top_logprobs
                .into_iter()
                .next()
                .flatten()
                .unwrap_or_default()
                .into_iter()
                .map(|(id, lp)| Ok((parse_id(&id, "token_id:").map_err(bad)?, lp)))
                .collect::<Result<SparseRow>>()?;
            (token, logprob, entries)
        }
    };
    // vLLM adds the asked or generated token beside the top k: keep the k most likely.
    entries.sort_by(|a, b| b.1.total_cmp(&a.1));
    entries.truncate(top);
    Ok(Point {
        token,
        logprob,
        top: entries,
        computed_positions,
        compute_s: None,
    })
}

/// A token id written as `N` (prompt log-probabilities) or `token_id:N`.
fn parse_id(key: &str, prefix: &str) -> std::result::Result<TokenId, String> {
    key.strip_prefix(prefix)
        .and_then(|k| k.parse().ok())
        .ok_or_else(|| format!("a log-probability keyed {key:?}, not {prefix}N"))
}

impl Vllm {
    fn model_name(&mut self) -> Result<String> {
        if let Some(m) = &self.model {
            return Ok(m.clone());
        }
        let name = self.info()?.model;
        self.model = Some(name.clone());
        Ok(name)
    }
}

impl Engine for Vllm {
    fn describe(&self) -> String {
        format!("vLLM at {}", self.http.base())
    }

    fn info(&mut self) -> Result<EngineInfo> {
        let m: Models = self.http.get("/v1/models")?;
        let entry = match &self.model {
            Some(want) => m.data.into_iter().find(|e| e.id.contains(want.as_str())),
            None => m.data.into_iter().next(),
        };
        let Some(entry) = entry else {
            return Err(HlmError::Incompatible(format!(
                "{} serves no model named like {:?}",
                self.describe(),
                self.model.as_deref().unwrap_or("anything")
            )));
        };
        // Requests must name the model as vLLM lists it (verifier.model may be part of it).
        self.model = Some(entry.id.clone());
        Ok(EngineInfo {
            model: entry.id,
            vocab_size: None,
            max_context: entry.max_model_len,
        })
    }

    fn tokenize(&mut self, text: &str) -> Result<Option<Vec<TokenId>>> {
        let model = self.model_name()?;
        let t: Tokenized = self.http.post(
            "/tokenize",
            &json!({ "model": model, "prompt": text, "add_special_tokens": false }),
        )?;
        Ok(Some(t.tokens))
    }

    fn scores_prompt(&self) -> bool {
        true
    }

    fn score(&mut self, tokens: &[TokenId], from: usize, _vocab: usize) -> Result<Scored> {
        let model = self.model_name()?;
        let answer: Completions = self
            .http
            .post("/v1/completions", &completions_request(&model, tokens))?;
        scored(answer, tokens.len(), from)
    }

    fn answers_points(&self) -> bool {
        true
    }

    fn point(&mut self, prefix: &[TokenId], query: PointQuery, top: usize) -> Result<Point> {
        let model = self.model_name()?;
        let answer: serde_json::Value = self.http.post(
            "/v1/completions",
            &point_request(&model, prefix, query, top),
        )?;
        parse_point(answer, query, prefix.len(), top)
    }
}

//! What a run prints: streamed text, a readable summary, the JSON line, the decision table.

use std::io::Write;

use hlm_core::{HlmError, RunReport, StreamDecoder, TextTokenizer, TokenId, TokenKind};
use serde_json::{Value, json};

/// Decode ids to text when a tokenizer is known (empty otherwise).
pub fn decode(tokenizer: Option<&dyn TextTokenizer>, ids: &[u32]) -> anyhow::Result<String> {
    Ok(match tokenizer {
        Some(t) => t.decode(ids)?,
        None => String::new(),
    })
}

/// The JSON object of a run: the statistics of [`hlm_core::RunStats`] plus text and ids.
pub fn run_json(
    name: &str,
    method: &str,
    report: &RunReport,
    text: &str,
    load_s: f64,
) -> anyhow::Result<Value> {
    let mut v = serde_json::to_value(&report.stats)?;
    let Value::Object(map) = &mut v else {
        anyhow::bail!("run statistics did not serialise to a JSON object");
    };
    map.insert("pipeline".into(), json!(name));
    map.insert("method".into(), json!(method));
    map.insert("text".into(), json!(text));
    map.insert("prompt_ids".into(), json!(report.prompt_ids));
    map.insert("generated_ids".into(), json!(report.generated_ids));
    map.insert("kinds".into(), json!(report.kinds));
    map.insert("load_s".into(), json!(load_s));
    Ok(v)
}

/// One line per generated token: index, id, kind and its text.
pub fn decision_table(
    tokenizer: Option<&dyn TextTokenizer>,
    report: &RunReport,
) -> anyhow::Result<String> {
    let mut s = String::from("  #      id  decision   text\n");
    for (i, (&id, kind)) in report.generated_ids.iter().zip(&report.kinds).enumerate() {
        let piece = decode(tokenizer, &[id])?;
        let kind = match kind {
            TokenKind::Verified => "verified",
            TokenKind::Skipped => "skipped",
            TokenKind::Resampled => "resampled",
            TokenKind::Bonus => "bonus",
            TokenKind::Target => "target",
            TokenKind::Unverified => "unverified",
        };
        s += &format!("{i:>3} {id:>7}  {kind:<9}  {piece:?}\n");
    }
    Ok(s)
}

/// Streams generated tokens to stdout as text while a run goes on (`hlm run`, `hlm generate`).
/// A decoding error stops the stream and is kept, to be reported once the run is over.
pub struct TextStream<'a> {
    tokenizer: Option<&'a dyn TextTokenizer>,
    decoder: StreamDecoder,
    error: Option<HlmError>,
}

impl<'a> TextStream<'a> {
    /// Without a tokenizer the ids are printed as `[id]`.
    pub fn new(tokenizer: Option<&'a dyn TextTokenizer>) -> Self {
        TextStream {
            tokenizer,
            decoder: StreamDecoder::default(),
            error: None,
        }
    }

    /// Print the text `id` completes (multi-byte characters wait for their last token).
    pub fn push(&mut self, id: TokenId) {
        if self.error.is_some() {
            return;
        }
        let piece = match self.tokenizer {
            Some(t) => self.decoder.push(t, id),
            None => Ok(format!("[{id}] ")),
        };
        match piece {
            Ok(p) => {
                let mut out = std::io::stdout();
                let _ = write!(out, "{p}");
                let _ = out.flush();
            }
            Err(e) => self.error = Some(e),
        }
    }

    /// The decoding error, if one stopped the stream.
    pub fn finish(self) -> Result<(), HlmError> {
        self.error.map_or(Ok(()), Err)
    }
}

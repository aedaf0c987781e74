//! Manual check: print the ids a model's tokenizer gives for each string of a JSON array,
//! as a JSON array of arrays (to diff against another implementation).
//!
//! ```sh
//! cargo run -p hlm-backends --example tokenize -- MODEL.gguf texts.json
//! ```

use std::path::Path;
use std::process::ExitCode;

use hlm_backends::{Transformer, parse_device};
use hlm_core::{HlmError, LanguageModel, Result};

fn run(model: &str, texts: &str) -> Result<()> {
    let model = Transformer::load(Path::new(model), &parse_device("cpu")?)?;
    let tok = model
        .tokenizer()
        .ok_or_else(|| HlmError::Model("the model has no tokenizer".into()))?;
    let json = std::fs::read_to_string(texts).map_err(|source| HlmError::Io {
        path: texts.into(),
        source,
    })?;
    let texts: Vec<String> = serde_json::from_str(&json)
        .map_err(|e| HlmError::Model(format!("{texts}: expected a JSON array of strings: {e}")))?;
    let mut all = Vec::with_capacity(texts.len());
    for t in &texts {
        let ids = tok.encode(t)?;
        let back = tok.decode(&ids)?;
        if &back != t {
            eprintln!("round trip differs: {t:?} -> {back:?}");
        }
        all.push(ids);
    }
    println!("{}", serde_json::to_string(&all).unwrap_or_default());
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(model), Some(texts)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: tokenize MODEL TEXTS.json");
        return ExitCode::from(2);
    };
    match run(model, texts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

//! Prompt sets: a JSONL file with a prompt field, or a text file with one prompt per line.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// Read prompts from `path`: `.jsonl` files give the string field `field` of each object;
/// any other file gives one prompt per non-empty line.
pub fn load_prompts(path: &Path, field: &str) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read prompts file {}", path.display()))?;
    let jsonl = path
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "json");
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if jsonl {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a JSON object", path.display(), i + 1))?;
            let Some(p) = v.get(field).and_then(|p| p.as_str()) else {
                bail!(
                    "{}:{}: no string field {field:?} (choose another with --prompt-field)",
                    path.display(),
                    i + 1
                );
            };
            out.push(p.to_string());
        } else {
            out.push(line.to_string());
        }
    }
    if out.is_empty() {
        bail!("{} holds no prompts", path.display());
    }
    Ok(out)
}

//! Prompt sets: a JSONL file with a prompt field, or a text file with one prompt per line.

use std::path::Path;

use anyhow::{Context, Result, bail};
use hlm_eval::BenchPrompt;

/// Read prompts from `path`: `.jsonl` files give the string field `field` of each object;
/// any other file gives one prompt per non-empty line.
pub fn load_prompts(path: &Path, field: &str) -> Result<Vec<String>> {
    Ok(load_prompt_set(path, field)?
        .into_iter()
        .map(|p| p.text)
        .collect())
}

/// Like [`load_prompts`], with each prompt's `id` (the `id` or `task_id` field, else its line
/// number) and optional `reference` field.
pub fn load_prompt_set(path: &Path, field: &str) -> Result<Vec<BenchPrompt>> {
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
        let line_id = format!("line-{}", i + 1);
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
            let id = ["id", "task_id"]
                .iter()
                .find_map(|k| v.get(*k).and_then(|x| x.as_str()))
                .map_or(line_id, String::from);
            out.push(BenchPrompt {
                id,
                text: p.to_string(),
                reference: v
                    .get("reference")
                    .and_then(|x| x.as_str())
                    .map(String::from),
            });
        } else {
            out.push(BenchPrompt {
                id: line_id,
                text: line.to_string(),
                reference: None,
            });
        }
    }
    if out.is_empty() {
        bail!("{} holds no prompts", path.display());
    }
    Ok(out)
}

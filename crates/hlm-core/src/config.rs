//! Pipeline configuration: one TOML file names each component by its `type`.
//!
//! ```toml
//! name = "u-hlm"
//! device = "cpu"
//!
//! [generation]
//! max_new_tokens = 64
//! temperature = 1.0
//! seed = 0
//!
//! [speculation]
//! gamma = 1                 # uploaded drafts per verification round
//! filter_action = "skip"    # or "stop_drafting"
//!
//! [draft]
//! type = "transformer"
//! model = "qwen2.5-coder-0.5b-instruct"
//!
//! [verifier]
//! type = "local"
//! model = { type = "transformer", model = "qwen2.5-coder-1.5b-instruct" }
//!
//! [upload]
//! type = "token_filter"
//! uncertainty = { estimator = { type = "temperature_perturbation" }, threshold = { type = "fixed", value = 0.073 } }
//!
//! [codec]
//! type = "dense"
//! bits = 8
//! ```
//!
//! Any value can be overridden by its dotted path (`--set generation.seed=3`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{
    DraftModelSpec, EnergyModel, HlmError, LinkModel, Result, UploadCodec, UploadRule, VerifierSpec,
};

/// What the filter's "upload" decision does when γ > 1 or in classic speculative decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterAction {
    /// HLM: tokens the filter does not select are appended without verification; a round is
    /// verified once `gamma` tokens have been uploaded.
    #[default]
    Skip,
    /// Classic speculative decoding: every draft is verified; a token the filter flags as
    /// uncertain ends the drafting round early (like HF's `assistant_confidence_threshold`).
    StopDrafting,
}

/// Sampling and length of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationConfig {
    /// Maximum number of tokens to generate.
    pub max_new_tokens: usize,
    /// Sampling temperature of both models (0 = greedy drafting and greedy verification).
    pub temperature: f32,
    /// Seed of every random stream of the run.
    pub seed: u64,
    /// Stop at the tokenizer's end-of-sequence tokens.
    pub stop_at_eos: bool,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 64,
            temperature: 1.0,
            seed: 0,
            stop_at_eos: true,
        }
    }
}

/// How drafts are grouped into verification rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpeculationConfig {
    /// Uploaded drafts per round (γ ≥ 1).
    pub gamma: usize,
    /// See [`FilterAction`].
    pub filter_action: FilterAction,
    /// Draw a bonus token from the target when every draft of a round is accepted.
    pub bonus_token: bool,
}

impl Default for SpeculationConfig {
    fn default() -> Self {
        SpeculationConfig {
            gamma: 1,
            filter_action: FilterAction::Skip,
            bonus_token: false,
        }
    }
}

/// A whole pipeline as read from a TOML file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Short name (shown in summaries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What this pipeline is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Default compute device of the models (`cpu`, `wgpu`, ...).
    #[serde(default = "default_device")]
    pub device: String,
    #[serde(default)]
    pub generation: GenerationConfig,
    #[serde(default)]
    pub speculation: SpeculationConfig,
    /// The device's draft model. Absent: LLM-only decoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft: Option<Box<dyn DraftModelSpec>>,
    /// The verifier. Absent: SLM-only decoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifier: Option<Box<dyn VerifierSpec>>,
    /// Which drafts are uploaded (required with both a draft model and a verifier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<Box<dyn UploadRule>>,
    /// What an upload carries (required with both a draft model and a verifier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codec: Option<Box<dyn UploadCodec>>,
    /// The link between device and server (absent: communication is free and instant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<Box<dyn LinkModel>>,
    /// The energy model (absent: no energy figures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy: Option<Box<dyn EnergyModel>>,
}

fn default_device() -> String {
    "cpu".to_string()
}

impl PipelineConfig {
    /// Read a config file and apply `KEY=VALUE` overrides (dotted paths).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| HlmError::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        let origin = if overrides.is_empty() {
            path.display().to_string()
        } else {
            format!(
                "{} (with --set {})",
                path.display(),
                overrides.join(" --set ")
            )
        };
        Self::parse(&text, &origin, overrides)
    }

    /// Parse config text; `origin` names it in errors (usually the file path).
    pub fn parse(text: &str, origin: &str, overrides: &[String]) -> Result<Self> {
        let err = |message: String| HlmError::Config {
            origin: origin.to_string(),
            message,
        };
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| err(e.to_string()))?;
        for o in overrides {
            apply_override(&mut table, o).map_err(err)?;
        }
        let cfg: PipelineConfig = if overrides.is_empty() {
            // Deserialising from the text keeps line numbers in error messages.
            toml::from_str(text).map_err(|e| err(e.to_string()))?
        } else {
            table
                .try_into()
                .map_err(|e: toml::de::Error| err(e.to_string()))?
        };
        cfg.validate().map_err(|e| err(e.to_string()))?;
        Ok(cfg)
    }

    /// Serialise back to TOML.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| HlmError::Config {
            origin: self.name.clone().unwrap_or_else(|| "pipeline".into()),
            message: format!("cannot serialise: {e}"),
        })
    }

    /// Check values that serde cannot check.
    pub fn validate(&self) -> Result<()> {
        let g = &self.generation;
        if g.max_new_tokens == 0 {
            return Err(HlmError::invalid(
                "generation.max_new_tokens",
                0,
                "must be at least 1",
            ));
        }
        if !(g.temperature.is_finite() && g.temperature >= 0.0) {
            return Err(HlmError::invalid(
                "generation.temperature",
                g.temperature,
                "must be a finite number >= 0 (0 = greedy)",
            ));
        }
        if self.speculation.gamma == 0 {
            return Err(HlmError::invalid(
                "speculation.gamma",
                0,
                "must be at least 1",
            ));
        }
        match (&self.draft, &self.verifier) {
            (None, None) => {
                return Err(HlmError::invalid(
                    "draft / verifier",
                    "both absent",
                    "a pipeline needs a draft model, a verifier, or both",
                ));
            }
            (Some(_), Some(_)) => {
                if self.upload.is_none() {
                    return Err(HlmError::invalid(
                        "upload",
                        "absent",
                        "required when both [draft] and [verifier] are set (e.g. type = \"always\")",
                    ));
                }
                if self.codec.is_none() {
                    return Err(HlmError::invalid(
                        "codec",
                        "absent",
                        "required when both [draft] and [verifier] are set (e.g. type = \"dense\")",
                    ));
                }
            }
            _ => {}
        }
        if let Some(u) = &self.upload {
            u.validate()?;
        }
        if let Some(l) = &self.link {
            l.validate()?;
        }
        if let Some(e) = &self.energy {
            e.validate()?;
        }
        Ok(())
    }
}

/// Apply one `a.b.c=value` override. The value is parsed as TOML (`3`, `0.5`, `true`,
/// `"text"`, `[1, 2]`, `{ type = "x" }`); anything that does not parse is taken as a string.
pub fn apply_override(
    table: &mut toml::Table,
    assignment: &str,
) -> std::result::Result<(), String> {
    let (key, raw) = assignment
        .split_once('=')
        .ok_or_else(|| format!("override `{assignment}` is not of the form KEY=VALUE"))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(format!("override `{assignment}` has an empty key segment"));
    }
    let value = parse_value(raw.trim());
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = table;
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            cur.insert(part.to_string(), value);
            return Ok(());
        }
        let entry = cur
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            other => {
                return Err(format!(
                    "override `{key}`: `{}` is a {}, not a table",
                    parts[..=i].join("."),
                    other.type_str()
                ));
            }
        };
    }
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_set_nested_values_and_parse_types() {
        let mut t: toml::Table = "[generation]\nseed = 1\n".parse().unwrap();
        apply_override(&mut t, "generation.seed=7").unwrap();
        apply_override(&mut t, "verifier.address=127.0.0.1:9000").unwrap();
        apply_override(&mut t, "speculation.bonus_token=true").unwrap();
        assert_eq!(t["generation"]["seed"].as_integer(), Some(7));
        assert_eq!(t["verifier"]["address"].as_str(), Some("127.0.0.1:9000"));
        assert_eq!(t["speculation"]["bonus_token"].as_bool(), Some(true));
        let e = apply_override(&mut t, "generation.seed.x=1").unwrap_err();
        assert!(
            e.contains("`generation.seed` is a integer, not a table"),
            "{e}"
        );
        assert!(
            apply_override(&mut t, "novalue")
                .unwrap_err()
                .contains("KEY=VALUE")
        );
    }
}

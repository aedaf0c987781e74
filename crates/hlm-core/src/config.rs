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
//! filter_action = "skip"    # or "stop_drafting", or "defer" (lossless: skipped tokens are
//!                           # checked later with their x_d only)
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
//!
//! Profiles: `include = ["profiles/links/wifi-weak.toml", "profiles/devices/phone.toml"]` at
//! the top of a file merges those files (paths relative to the including file) under it, in
//! order; the file's own keys win. Tables merge key by key, except that a component table
//! whose `type` differs from the included one replaces it whole.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::validate;
use crate::{
    DraftModelSpec, EnergyModel, HlmError, LinkModel, ResidualCodec, Result, UploadCodec,
    UploadRule, VerifierSpec,
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
    /// Deferred verification (lossless HLM): a token the filter does not select is still
    /// checked, with only its draft probability x_d (32 bits) riding along with the next
    /// upload; a round is verified once `gamma` tokens have been selected or
    /// `max_deferred` deferred ones are pending. A deferred token the verifier rejects rolls
    /// the device back to it and the replacement is drawn from the residual the server sends
    /// down. The filter then trades only waiting for verdicts, never accuracy.
    Defer,
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

/// The most drafts a round may hold (`speculation.gamma`).
pub const MAX_GAMMA: usize = 64;

/// How drafts are grouped into verification rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpeculationConfig {
    /// Uploaded drafts per round (γ ≥ 1); with `adaptive`, the most a round may hold.
    pub gamma: usize,
    /// See [`FilterAction`].
    pub filter_action: FilterAction,
    /// Draw a bonus token from the target when every draft of a round is accepted.
    pub bonus_token: bool,
    /// Choose each round's γ in `0..=gamma` from the measured cost of a draft step, of a
    /// verification pass per position count, and the running acceptance rate (the expected
    /// tokens per second of [`crate::adaptive`]); γ = 0 lets the target decode alone where
    /// speculation cannot win.
    pub adaptive: bool,
    /// With `filter_action = "defer"`: the most deferred (unselected) drafts a round holds
    /// before it is sent, which bounds how much drafting one deferred rejection can discard.
    pub max_deferred: usize,
    /// How the verifier sends its distribution down after rejecting a draft whose
    /// distribution it never received (split payloads, deferred tokens); see
    /// [`crate::residual`]. Default: dense 32-bit, exact.
    pub residual: ResidualCodec,
}

/// Default of [`SpeculationConfig::max_deferred`]: long enough that a filter skipping most
/// tokens still waits for few verdicts, short enough that a rejection discards little.
pub const DEFAULT_MAX_DEFERRED: usize = 8;

impl Default for SpeculationConfig {
    fn default() -> Self {
        SpeculationConfig {
            gamma: 1,
            filter_action: FilterAction::Skip,
            bonus_token: false,
            adaptive: false,
            max_deferred: DEFAULT_MAX_DEFERRED,
            residual: ResidualCodec::default(),
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
        Self::parse_in(&text, &origin, path.parent(), overrides)
    }

    /// Parse config text; `origin` names it in errors (usually the file path). Includes are
    /// resolved against the current directory.
    pub fn parse(text: &str, origin: &str, overrides: &[String]) -> Result<Self> {
        Self::parse_in(text, origin, None, overrides)
    }

    /// Parse config text whose `include` paths are relative to `base`.
    pub fn parse_in(
        text: &str,
        origin: &str,
        base: Option<&Path>,
        overrides: &[String],
    ) -> Result<Self> {
        let err = |message: String| HlmError::Config {
            origin: origin.to_string(),
            message: without_blank_lines(&message),
        };
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| err(e.to_string()))?;
        let included = table.contains_key("include");
        table = resolve_includes(table, base.unwrap_or(Path::new(".")), 0).map_err(err)?;
        for o in overrides {
            apply_override(&mut table, o).map_err(err)?;
        }
        let cfg: PipelineConfig = if overrides.is_empty() && !included {
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
        let max = MAX_GAMMA as f64;
        validate::in_range("speculation.gamma", self.speculation.gamma as f64, 1.0, max)?;
        if self.speculation.adaptive && self.speculation.filter_action != FilterAction::StopDrafting
        {
            return Err(HlmError::invalid(
                "speculation.adaptive",
                true,
                "needs filter_action = \"stop_drafting\": with \"skip\" the filter's skipped \
                 tokens are free, which the draft-length model does not count",
            ));
        }
        let deferred = self.speculation.max_deferred as f64;
        validate::in_range("speculation.max_deferred", deferred, 1.0, max)?;
        self.speculation
            .residual
            .validate(0)
            .map_err(|e| e.within("speculation.residual"))?;
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
            u.validate().map_err(|e| e.within("upload"))?;
        }
        if let Some(l) = &self.link {
            l.validate().map_err(|e| e.within("link"))?;
        }
        if let Some(e) = &self.energy {
            e.validate().map_err(|e| e.within("energy"))?;
        }
        Ok(())
    }
}

/// A deserialiser's message as one block: typetag's errors for a component (`[codec]`) end
/// their first line with a run of empty ones before naming the table.
fn without_blank_lines(message: &str) -> String {
    message
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Includes nest at most this deep (a guard against include cycles).
const MAX_INCLUDE_DEPTH: usize = 8;
/// Files one config may include in all, counting repeats (7 levels of files that each include
/// the next 10 times nest within the depth yet ask for 10^7 reads).
const MAX_INCLUDES: usize = 256;

/// Replace the `include` list of `table` by the merged contents of the included files.
fn resolve_includes(
    table: toml::Table,
    base: &Path,
    depth: usize,
) -> std::result::Result<toml::Table, String> {
    let mut budget = MAX_INCLUDES;
    resolve_includes_within(table, base, depth, &mut budget)
}

/// [`resolve_includes`] with `budget` files left to read.
fn resolve_includes_within(
    mut table: toml::Table,
    base: &Path,
    depth: usize,
    budget: &mut usize,
) -> std::result::Result<toml::Table, String> {
    let Some(list) = table.remove("include") else {
        return Ok(table);
    };
    if depth >= MAX_INCLUDE_DEPTH {
        return Err(format!(
            "includes nest deeper than {MAX_INCLUDE_DEPTH} levels (a cycle?)"
        ));
    }
    let paths: Vec<String> = match list {
        toml::Value::String(s) => vec![s],
        toml::Value::Array(a) => a
            .into_iter()
            .map(|v| match v {
                toml::Value::String(s) => Ok(s),
                other => Err(format!(
                    "include: expected file paths (strings), found a {}",
                    other.type_str()
                )),
            })
            .collect::<std::result::Result<_, _>>()?,
        other => {
            return Err(format!(
                "include: expected a file path or a list of them, found a {}",
                other.type_str()
            ));
        }
    };
    let mut merged = toml::Table::new();
    for p in paths {
        *budget = budget.checked_sub(1).ok_or_else(|| {
            format!("more than {MAX_INCLUDES} includes in all (files that include each other many times?)")
        })?;
        let path = base.join(&p);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("include `{p}`: cannot read {}: {e}", path.display()))?;
        let inner: toml::Table = text
            .parse()
            .map_err(|e| format!("include {}: {e}", path.display()))?;
        let inner =
            resolve_includes_within(inner, path.parent().unwrap_or(base), depth + 1, budget)
                .map_err(|e| format!("in include {}: {e}", path.display()))?;
        merge_tables(&mut merged, inner);
    }
    merge_tables(&mut merged, table);
    Ok(merged)
}

/// Merge `top` into `base`; `top` wins. Component tables of a different `type` replace.
fn merge_tables(base: &mut toml::Table, top: toml::Table) {
    for (k, v) in top {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t))
                if b.get("type")
                    .is_none_or(|bt| t.get("type").is_none_or(|tt| tt == bt)) =>
            {
                merge_tables(b, t);
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
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
    fn includes_merge_under_the_file_and_replace_other_types() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().to_path_buf();
        std::fs::create_dir_all(dir.join("p")).unwrap();
        std::fs::write(
            dir.join("p/link.toml"),
            "[link]\ntype = \"fixed_rate\"\nuplink_bps = 5e6\ndownlink_bps = 2e7\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("p/gen.toml"),
            "[generation]\nseed = 9\nmax_new_tokens = 5\n",
        )
        .unwrap();
        let mut t: toml::Table =
            "include = [\"p/link.toml\", \"p/gen.toml\"]\n[generation]\nseed = 1\n[link]\nuplink_bps = 1e6\n"
                .parse()
                .unwrap();
        t = resolve_includes(t, &dir, 0).unwrap();
        assert_eq!(t["generation"]["seed"].as_integer(), Some(1));
        assert_eq!(t["generation"]["max_new_tokens"].as_integer(), Some(5));
        assert_eq!(t["link"]["uplink_bps"].as_float(), Some(1e6));
        assert_eq!(t["link"]["downlink_bps"].as_float(), Some(2e7));
        let mut other: toml::Table = "include = \"p/link.toml\"\n[link]\ntype = \"shannon\"\n"
            .parse()
            .unwrap();
        other = resolve_includes(other, &dir, 0).unwrap();
        assert!(other["link"].get("uplink_bps").is_none(), "{other:?}");
        let e =
            resolve_includes("include = \"missing.toml\"".parse().unwrap(), &dir, 0).unwrap_err();
        assert!(e.contains("missing.toml"), "{e}");
        std::fs::write(dir.join("loop.toml"), "include = \"loop.toml\"\n").unwrap();
        let e = resolve_includes("include = \"loop.toml\"".parse().unwrap(), &dir, 0).unwrap_err();
        assert!(e.contains("cycle"), "{e}");
        // No cycle, but a fan: each of 7 levels includes the next one 10 times, 10^7 reads
        // within the depth limit; refused after MAX_INCLUDES.
        for level in 0..7 {
            let next = format!("\"fan{}.toml\"", level + 1);
            std::fs::write(
                dir.join(format!("fan{level}.toml")),
                format!("include = [{}]\n", vec![next; 10].join(", ")),
            )
            .unwrap();
        }
        std::fs::write(dir.join("fan7.toml"), "[generation]\nseed = 2\n").unwrap();
        let fan =
            resolve_includes("include = \"fan0.toml\"".parse().unwrap(), &dir, 0).unwrap_err();
        assert!(fan.contains("256 includes"), "{fan}");
    }

    #[test]
    fn deferral_and_residual_settings_are_checked_by_name() {
        let check = |spec: &str| {
            let text = format!("[speculation]\n{spec}\n");
            match PipelineConfig::parse(&text, "test", &[]) {
                Ok(cfg) => cfg.validate().unwrap_err().to_string(),
                Err(e) => e.to_string(),
            }
        };
        let e = check("filter_action = \"defer\"\nmax_deferred = 0");
        assert!(e.contains("speculation.max_deferred"), "{e}");
        let e = check("residual = { type = \"top_k\", k = 0, bits = 8 }");
        assert!(e.contains("speculation.residual.k"), "{e}");
        let e = check("residual = { type = \"dense\", bits = 12 }");
        assert!(e.contains("8, 16, 32"), "{e}");
        let e = check("residual = { type = \"sparse\" }");
        assert!(e.contains("sparse") && e.contains("dense"), "{e}");
        // Valid settings get as far as the missing models.
        let e =
            check("filter_action = \"defer\"\nresidual = { type = \"top_k\", k = 64, bits = 16 }");
        assert!(e.contains("a draft model, a verifier, or both"), "{e}");
    }

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

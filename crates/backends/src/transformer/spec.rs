//! Config recipe (`type = "transformer"`) and the helpers the CLI shares with it: model path
//! resolution and device names.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, DeviceKind};
use hlm_core::{
    BuildContext, DraftModel, DraftModelSpec, HlmError, Result, TargetModel, TargetModelSpec,
};
use serde::{Deserialize, Serialize};

use super::cpu::MAX_PREFILL_CHUNK;
use super::loaded::Transformer;
use super::precision::Precision;

/// Device names accepted in configs and on the command line.
pub const DEVICE_NAMES: &[&str] = &["cpu", "wgpu"];

/// `[draft] type = "transformer"` or `[verifier.model] type = "transformer"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TransformerSpec {
    /// A `.gguf` file, a Hugging Face folder, a folder with one `.gguf` file, or the NAME of
    /// a fetched model (`<models_dir>/<NAME>/`).
    pub model: String,
    /// Device override (`cpu` or `wgpu`); defaults to the pipeline's device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Cap on the context length (never above the model's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_context: Option<usize>,
    /// Arithmetic of the matrix products: `"fast"` (default: 8-bit activations in integers on
    /// the CPU, 8-bit weights on a GPU) or `"exact"` (f32, equal to transformers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// Most positions one pass computes on the CPU (default 512): a longer prompt,
    /// resynchronisation or verification runs in pieces of this many, so its memory stays
    /// bounded; the results are the same for any value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_chunk: Option<usize>,
}

impl TransformerSpec {
    /// Resolve the path and device and load the model.
    pub fn load(&self, ctx: &BuildContext) -> Result<Transformer> {
        if let Some(n) = self.prefill_chunk
            && !(1..=MAX_PREFILL_CHUNK).contains(&n)
        {
            return Err(HlmError::invalid(
                "prefill_chunk",
                n,
                format!("must be between 1 and {MAX_PREFILL_CHUNK} positions"),
            ));
        }
        let device_name = self.device.as_deref().unwrap_or(&ctx.device);
        let device = parse_device(device_name)?;
        let path = resolve_model_path(&self.model, ctx.models_dir.as_deref())?;
        let model = Transformer::load_with(&path, &device, self.precision.unwrap_or_default())?;
        let model = match self.max_context {
            Some(n) => model.with_max_context(n),
            None => model,
        };
        match self.prefill_chunk {
            Some(n) => model.with_prefill_chunk(n),
            None => Ok(model),
        }
    }
}

#[typetag::serde(name = "transformer")]
impl DraftModelSpec for TransformerSpec {
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn DraftModel>> {
        Ok(Box::new(self.load(ctx)?))
    }
}

#[typetag::serde(name = "transformer")]
impl TargetModelSpec for TransformerSpec {
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn TargetModel>> {
        Ok(Box::new(self.load(ctx)?))
    }
}

/// A burn device from its name: `cpu` (burn's flex backend) or `wgpu` (default adapter).
/// An empty name means `cpu`.
pub fn parse_device(name: &str) -> Result<Device> {
    match name.trim().to_ascii_lowercase().as_str() {
        "" | "cpu" => Ok(Device::flex()),
        "wgpu" => Ok(Device::wgpu(DeviceKind::DefaultDevice)),
        _ => Err(HlmError::invalid(
            "device",
            name,
            format!("accepted values: {}", DEVICE_NAMES.join(", ")),
        )),
    }
}

/// The folder fetched models live in: `models_dir`, else `$HLM_MODELS`, else
/// `~/.cache/hlm/models`.
pub fn default_models_dir(models_dir: Option<&Path>) -> Option<PathBuf> {
    if let Some(dir) = models_dir {
        return Some(dir.to_path_buf());
    }
    if let Some(dir) = std::env::var_os("HLM_MODELS").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/hlm/models"))
}

/// Turn a config's `model` value into an existing file or folder.
///
/// An existing path is used as it is. Anything that looks like a path (has a separator or a
/// `.gguf` suffix) must exist. Otherwise the value is a model NAME, looked up as
/// `<models_dir>/<NAME>/` (see [`default_models_dir`]).
pub fn resolve_model_path(name_or_path: &str, models_dir: Option<&Path>) -> Result<PathBuf> {
    let as_path = Path::new(name_or_path);
    if as_path.exists() {
        return Ok(as_path.to_path_buf());
    }
    let looks_like_path = name_or_path.contains(std::path::MAIN_SEPARATOR)
        || name_or_path.contains('/')
        || name_or_path.starts_with('.')
        || name_or_path.starts_with('~')
        || as_path
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("gguf"));
    if name_or_path.is_empty() || looks_like_path {
        return Err(HlmError::Model(format!(
            "model file or folder '{name_or_path}' does not exist"
        )));
    }
    let Some(dir) = default_models_dir(models_dir) else {
        return Err(HlmError::Model(format!(
            "model '{name_or_path}' is not a path, and no models folder is known \
             (set HLM_MODELS or HOME)"
        )));
    };
    let candidate = dir.join(name_or_path);
    if candidate.exists() {
        Ok(candidate)
    } else {
        Err(HlmError::Model(format!(
            "model '{name_or_path}' not found: {} does not exist; \
             fetch it with `cargo xtask models fetch {name_or_path}`",
            candidate.display()
        )))
    }
}

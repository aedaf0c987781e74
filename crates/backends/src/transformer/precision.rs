//! How exactly a model's matrix products are computed.

use std::fmt;
use std::str::FromStr;

use hlm_core::HlmError;
use serde::{Deserialize, Serialize};

/// The arithmetic of a model's matrix products (`precision = "..."` in a model spec,
/// `--precision` on `hlm generate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Weights dequantised to `f32` and multiplied with `f32` activations: the same numbers
    /// as Hugging Face transformers on the dequantised model, token for token. On a GPU the
    /// weights are `f32` on the device.
    Exact,
    /// llama.cpp's arithmetic: on the CPU, activations rounded to 8-bit blocks once per
    /// product and multiplied with the quantised weights in integers (the speed of the memory
    /// bus); on a GPU, weights as 8-bit blocks. Logits differ from `exact` by the rounding.
    #[default]
    Fast,
}

/// The accepted spellings, for messages.
pub const PRECISION_NAMES: &[&str] = &["exact", "fast"];

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Exact => "exact",
            Precision::Fast => "fast",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = HlmError;

    fn from_str(s: &str) -> Result<Self, HlmError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "exact" => Ok(Precision::Exact),
            "fast" => Ok(Precision::Fast),
            _ => Err(HlmError::invalid(
                "precision",
                s,
                format!("accepted values: {}", PRECISION_NAMES.join(", ")),
            )),
        }
    }
}

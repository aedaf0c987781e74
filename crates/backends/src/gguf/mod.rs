//! GGUF model files: a validating, memory-mapped reader and bit-exact dequantisers.
//!
//! ```no_run
//! use hlm_backends::gguf::GgufFile;
//! let f = GgufFile::open("model.gguf")?;
//! let arch = f.architecture()?;                       // "qwen2"
//! let n_layers = f.get_u32(&format!("{arch}.block_count"))?;
//! let tokens = f.get_str_array("tokenizer.ggml.tokens")?;
//! let emb = f.tensor_info("token_embd.weight")?;      // dims() = [hidden, vocab]
//! let w: Vec<f32> = f.dequantize_tensor("token_embd.weight")?;
//! # Ok::<(), hlm_backends::gguf::GgufError>(())
//! ```
//!
//! Supported for dequantisation: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K,
//! Q5_K, Q6_K. Every other [`GgmlType`] is parsed (sizes and bounds are validated) and
//! its raw bytes are available through [`GgufFile::tensor_bytes`], but
//! [`GgufFile::dequantize_tensor`] returns [`GgufError::Dequant`] naming the type.

mod dequant;
mod error;
pub mod int8;
mod matmul;
mod metadata;
mod quantize;
mod reader;
pub mod synthetic;
mod types;

pub use dequant::{dequantize, dequantize_into, f16_bits_to_f32};
pub use error::{DequantError, GgufError};
pub use matmul::{QuantMatrix, ROWS_PER_TASK};
pub use metadata::{MetadataArray, MetadataValue};
pub use quantize::quantize_q8_0;
pub use reader::{DEFAULT_ALIGNMENT, GgufFile, MAX_DIMS, SharedBytes, TensorInfo};
pub use types::{GgmlType, QK_K};

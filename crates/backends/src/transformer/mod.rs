//! LLaMA-family decoders (LLaMA, SmolLM, Qwen2), loaded from GGUF or safetensors: on the CPU
//! with hlm's own decoder ([`cpu`]), on a GPU with burn ([`model`]).
//!
//! - [`config`]: hyper-parameters from `config.json` or GGUF metadata.
//! - [`weights`]: tensors by canonical name, converted or dequantised to `f32`, or in
//!   their GGUF block form for the CPU path (`crate::gguf::QuantMatrix`).
//! - [`cpu`]: the forward pass on the CPU (host memory, quantised products in place).
//! - [`rope`], [`kv_cache`], [`model`]: the forward pass on burn (GPU).
//! - [`precision`]: `exact` (f32 arithmetic, equal to transformers) or `fast` (8-bit
//!   activations, llama.cpp's arithmetic).
//! - [`tokenizer`]: text <-> ids from `tokenizer.json` or the GGUF vocabulary.
//! - [`loaded`]: [`Transformer`], the loaded model implementing `DraftModel` and `TargetModel`.
//! - [`spec`]: `type = "transformer"` for configs, model path and device resolution.

pub mod config;
pub mod cpu;
pub mod kv_cache;
pub mod loaded;
pub mod model;
pub mod precision;
pub mod rope;
pub mod spec;
pub mod tokenizer;
pub mod weights;

pub use config::{Family, RopeLayout, TransformerConfig};
pub use loaded::{ModelFiles, Transformer};
pub use model::WeightLayout;
pub use precision::{PRECISION_NAMES, Precision};
pub use spec::{
    DEVICE_NAMES, TransformerSpec, default_models_dir, parse_device, resolve_model_path,
};

//! LLaMA-family decoders (LLaMA, SmolLM, Qwen2) on burn, loaded from GGUF or safetensors.
//!
//! - [`config`]: hyper-parameters from `config.json` or GGUF metadata.
//! - [`weights`]: tensors by canonical name, converted or dequantised to `f32`, or in
//!   their GGUF block form for the CPU path (`crate::gguf::QuantMatrix`).
//! - [`rope`], [`kv_cache`], [`model`]: the forward pass.
//! - [`tokenizer`]: text <-> ids from `tokenizer.json` or the GGUF vocabulary.
//! - [`loaded`]: [`Transformer`], the loaded model implementing `DraftModel` and `TargetModel`.
//! - [`spec`]: `type = "transformer"` for configs, model path and device resolution.

pub mod config;
pub mod kv_cache;
pub mod loaded;
pub mod model;
pub mod rope;
pub mod spec;
pub mod tokenizer;
pub mod weights;

pub use config::{Family, RopeLayout, TransformerConfig};
pub use loaded::{ModelFiles, Transformer, forward_all_batch};
pub use model::WeightLayout;
pub use spec::{
    DEVICE_NAMES, TransformerSpec, default_models_dir, parse_device, resolve_model_path,
};

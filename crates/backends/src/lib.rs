//! # hlm-backends
//!
//! The models of the hybrid pipeline (the verifier that runs any of them in this process is
//! [`hlm_core::LocalVerifier`]):
//!
//! - [`transformer::Transformer`] (`type = "transformer"`): LLaMA/Qwen2 decoders on burn,
//!   loaded from GGUF or safetensors; usable as draft and as target model.
//!
//! - [`logits::DeviceLogits`]: a draft's logits left on the burn device, answering the token
//!   filter's queries there (flex or wgpu) so that only a few numbers come back per token.

pub mod bert;
pub mod gguf;
mod layout;
pub mod logits;
pub mod transformer;

pub use logits::DeviceLogits;
pub use transformer::{
    Precision, Transformer, TransformerSpec, WeightLayout, parse_device, resolve_model_path,
};

/// Force-link the typetag registrations of this crate into a binary.
pub fn link() {}

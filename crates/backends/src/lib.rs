//! # hlm-backends
//!
//! The models of the hybrid pipeline and the verifier that runs a model locally:
//!
//! - [`verifier::LocalVerifier`] (`[verifier] type = "local"`): speculative-sampling
//!   verification on a [`hlm_core::TargetModel`] in this process, with KV rollback.
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
pub mod verifier;

pub use logits::DeviceLogits;
pub use transformer::{
    Precision, Transformer, TransformerSpec, WeightLayout, forward_all_batch, forward_tail_batch,
    parse_device, resolve_model_path,
};
pub use verifier::{LocalVerifier, LocalVerifierSpec, RuleChoice};

/// Force-link the typetag registrations of this crate into a binary.
pub fn link() {}

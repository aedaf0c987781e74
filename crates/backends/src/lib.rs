//! # hlm-backends
//!
//! The models of the hybrid pipeline and the verifier that runs a model locally:
//!
//! - [`verifier::LocalVerifier`] (`[verifier] type = "local"`): speculative-sampling
//!   verification on a [`hlm_core::TargetModel`] in this process, with KV rollback.
//!
//! Transformer models on burn (LLaMA, Qwen2 from GGUF and safetensors) live here as well.

pub mod gguf;
pub mod verifier;

pub use verifier::{LocalVerifier, LocalVerifierSpec, RuleChoice};

/// Force-link the typetag registrations of this crate into a binary.
pub fn link() {}

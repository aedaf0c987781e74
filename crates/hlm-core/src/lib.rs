//! # hlm-core
//!
//! The vocabulary of a hybrid language model (HLM) pipeline and the engine that runs it.
//!
//! A small draft model on a device proposes tokens; a token filter decides per token whether to
//! upload the draft distribution; a verifier holding a large model accepts or resamples each
//! uploaded draft by speculative sampling. This crate defines the traits every component
//! implements (in the other crates of the workspace, or in your own):
//!
//! | trait | role | implemented in |
//! |---|---|---|
//! | [`LanguageModel`] | what both models share: vocabulary, KV state and rollback, tokenizer | `hlm-backends` |
//! | [`DraftModel`] / [`DraftModelSpec`] | device model: logits, attention | `hlm-backends` |
//! | [`TargetModel`] / [`TargetModelSpec`] | server model: logits of every position | `hlm-backends` |
//! | [`Verifier`] / [`VerifierSpec`] | verification session with rollback | here ([`LocalVerifier`], any [`TargetModel`]), `hlm-net` (`RemoteVerifier`) |
//! | [`AcceptanceRule`] / [`ConfiguredRule`] | accept/resample math | here ([`SpeculativeSampling`], [`GreedyMatch`]) |
//! | [`UploadRule`] | the per-token upload decision | `hlm-filters` |
//! | [`UncertaintyEstimator`], [`ImportanceScorer`], [`ThresholdPolicy`] | filter parts | `hlm-filters` |
//! | [`UploadCodec`] | what an upload carries, exact bits | `hlm-filters` |
//! | [`LinkModel`], [`EnergyModel`] | airtime, joules and seconds | `hlm-energy` |
//!
//! Every trait that a config file selects is a `typetag` trait: a TOML table with
//! `type = "name"` picks the registered implementation, so a crate of your own can add a policy
//! without changing this one. [`Pipeline`] builds the components of a [`PipelineConfig`] and
//! runs the decoding loop.

pub mod adaptive;
pub mod batch;
pub mod codec;
pub mod config;
pub mod energy;
pub mod engine;
pub mod error;
pub mod filter;
pub mod judge;
pub mod link;
pub mod local_verifier;
pub mod logits;
pub mod model;
pub mod registry;
pub mod residual;
pub mod sampling;
pub mod speculative;
pub mod stats;
pub mod streams;
pub mod tokenizer;
pub mod types;
pub mod validate;
pub mod verify;

pub use batch::{WeightsKey, forward_all_batch, forward_tail_batch};
pub use codec::{CodecHints, ProbQuantization, UploadCodec, UploadPayload};
pub use config::{FilterAction, GenerationConfig, PipelineConfig, SpeculationConfig};
pub use energy::{Components, Costs, EnergyModel, Work};
pub use engine::{Pipeline, RunReport, TokenRecord, method_name};
pub use error::{HlmError, Result};
pub use filter::{
    ImportanceScorer, ImportanceSignal, ThresholdPolicy, TokenView, UncertaintyEstimator,
    UploadDecision, UploadRule,
};
pub use judge::{DraftJudge, Judged};
pub use link::{Direction, LinkModel, Transfer};
pub use local_verifier::{LocalVerifier, LocalVerifierSpec, verify_batch};
pub use logits::{HostLogits, NextTokenLogits};
pub use model::{
    BuildContext, DraftModel, DraftModelSpec, DraftStep, LanguageModel, MemoryProfile, TargetModel,
    TargetModelSpec,
};
pub use residual::{Residual, ResidualCodec};
pub use speculative::{
    AcceptanceRule, ConfiguredRule, GreedyMatch, Judgement, SpeculativeSampling, SplitJudgement,
};
pub use stats::{RunStats, Savings, TokenEvent, TokenKind};
pub use streams::RandomStream;
pub use tokenizer::{StreamDecoder, TextTokenizer};
pub use types::{AttentionMap, LayerAttention, LayerSelection, TokenId};
pub use verify::{
    DraftToken, SessionParams, Verdict, Verifier, VerifierSpec, VerifyOutcome, VerifyRequest,
    check_tokens_in_vocab, scored_sequence,
};

//! # hlm-filters
//!
//! The per-token filter of the hybrid pipeline, as config-selected plug-ins:
//!
//! - [`uncertainty`]: how unsure the draft model is (`temperature_perturbation`, `entropy`,
//!   `top_probability_margin`);
//! - [`importance`]: how important the token is, from attention (`attention`);
//! - [`threshold`]: fixed, U-HLM's risk bound, and per-step adaptive thresholds;
//! - [`rule`]: the upload decision (`always`, `never`, `random`, `token_filter`);
//! - [`codec`]: what an upload carries (`dense`, `top_k`, `adaptive_top_k`, `token_only`,
//!   `split`).

pub mod calibration;
pub mod codec;
pub mod importance;
pub mod rule;
pub mod threshold;
pub mod uncertainty;

pub use codec::{AdaptiveTopK, DenseCodec, SplitCodec, TokenOnlyCodec, TopKCodec};
pub use importance::{AttentionImportance, HeadAggregation, ImportanceTarget};
pub use rule::{
    AlwaysUpload, Combine, ImportanceCondition, NeverUpload, RandomSkip, TokenFilter,
    UncertaintyCondition,
};
pub use threshold::{
    FixedThreshold, MeanStdThreshold, QuantileThreshold, RiskBoundThreshold, ScaledUniformThreshold,
};
pub use uncertainty::{Entropy, TemperaturePerturbation, TemperatureSpacing, TopProbabilityMargin};

/// Make sure the plug-ins of this crate are linked into a binary that only names them in config
/// files (typetag registers them at start-up, but only if the crate is linked at all).
pub fn link() {}

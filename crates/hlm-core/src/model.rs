//! The two language models of a hybrid pipeline: the device's draft model and the
//! server's target model, plus the typetag-selected specs that build them from config.

use std::sync::Arc;

use crate::{AttentionMap, LayerSelection, Result, TextTokenizer, TokenId};

/// What one draft forward pass returns.
#[derive(Debug)]
pub struct DraftStep {
    /// Logits of the next token after the last fed token (length = vocabulary size), where the
    /// model computed them ([`crate::HostLogits`] for a model without a device path).
    pub logits: Box<dyn crate::NextTokenLogits>,
    /// Attention probabilities of the newest position, when they were asked for.
    pub attention: Option<AttentionMap>,
}

/// What the device's and the server's models have in common: a vocabulary, a KV state of the
/// tokens fed so far that rolls back to any earlier length, a tokenizer, a name.
pub trait LanguageModel: Send {
    /// Length of the logit vectors.
    fn vocab_size(&self) -> usize;
    /// Maximum context length the model supports.
    fn max_context(&self) -> usize;
    /// Tokens currently held in the KV state.
    fn context_len(&self) -> usize;
    /// Roll the KV state back to `len` tokens (`len <= context_len()`; more is an error).
    fn truncate(&mut self, len: usize) -> Result<()>;
    /// The tokenizer, when the model carries one.
    fn tokenizer(&self) -> Option<Arc<dyn TextTokenizer>>;
    /// A short human-readable description (name, size, device) for logs and summaries.
    fn describe(&self) -> String;
}

/// The small model on the device: next-token logits, optional attention.
///
/// `forward` appends to the KV state; [`LanguageModel::truncate`] rolls it back (after a
/// rejected draft).
pub trait DraftModel: LanguageModel {
    /// Append `tokens` (at least one) and return the logits after the last of them, plus the
    /// attention of the newest position for the selected layers when `attention` is `Some`.
    fn forward(
        &mut self,
        tokens: &[TokenId],
        attention: Option<&LayerSelection>,
    ) -> Result<DraftStep>;
}

/// The large model behind a verifier: logits at every fed position.
pub trait TargetModel: LanguageModel {
    /// Append `tokens` (at least one) in one pass and return the logits after each of them
    /// (`tokens.len()` vectors, in order).
    fn forward_all(&mut self, tokens: &[TokenId]) -> Result<Vec<Vec<f32>>>;
    /// Append `tokens` (at least one) and return the logits after each of the last `rows` of
    /// them (all of them when fewer were fed), in order. A prompt needs one row, not one per
    /// token: a model that can, computes only the rows asked for (the default computes every
    /// row and keeps the tail).
    fn forward_tail(&mut self, tokens: &[TokenId], rows: usize) -> Result<Vec<Vec<f32>>> {
        let mut all = self.forward_all(tokens)?;
        let keep = rows.min(all.len());
        Ok(all.split_off(all.len() - keep))
    }
    /// What the model's memory grows with, for a server that states its worst case; `None`
    /// (the default) when the model cannot say.
    fn memory_profile(&self) -> Option<MemoryProfile> {
        None
    }
    /// A new model on the same weights with an empty KV state, for a server that keeps one
    /// state per session without a copy of the weights per session.
    fn fork(&self) -> Result<Box<dyn TargetModel>> {
        Err(crate::HlmError::Model(format!(
            "{} cannot share its weights between sessions",
            self.describe()
        )))
    }
    /// The weights this model runs on, when several models on them can share one pass
    /// ([`TargetModel::forward_tail_with`]); `None` (the default) means "always alone".
    fn weights_key(&self) -> Option<crate::WeightsKey> {
        None
    }
    /// [`TargetModel::forward_tail`] for this model and `others`, all of this model's
    /// [`TargetModel::weights_key`], in one pass where the model can: `feeds[0]` and
    /// `tails[0]` are this model's, `feeds[1 + i]` those of `others[i]`. One result per model,
    /// this one first; each the same as its own `forward_tail` (an invalid feed fails alone).
    /// [`crate::forward_tail_batch`] groups models and calls this; the default runs one pass
    /// each.
    fn forward_tail_with(
        &mut self,
        others: &mut [&mut dyn TargetModel],
        feeds: &[&[TokenId]],
        tails: &[usize],
    ) -> Vec<Result<Vec<Vec<f32>>>> {
        let mut results = vec![self.forward_tail(feeds[0], tails[0])];
        for ((m, feed), &tail) in others.iter_mut().zip(&feeds[1..]).zip(&tails[1..]) {
            results.push(m.forward_tail(feed, tail));
        }
        results
    }
    /// The model as `Any`, so that an implementation of [`TargetModel::forward_tail_with`]
    /// can reach the KV states of the other sessions of its own type. `None` (the default)
    /// for a model that does not batch.
    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        None
    }
}

/// The memory a target model needs, in parts that a server multiplies by its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryProfile {
    /// The weights, shared by every session.
    pub weight_bytes: u64,
    /// KV state per position held, in the buffers' worst case (growth slack included).
    pub kv_bytes_per_position: u64,
    /// Positions a session's KV buffers may hold beyond that (their smallest growth step).
    pub kv_positions_per_session_slack: u64,
    /// Working memory of one pass per position it computes (activations).
    pub pass_bytes_per_position: u64,
    /// Working memory of one pass per position of context it attends to (score rows).
    pub attention_bytes_per_context_position: u64,
    /// Most positions one pass computes (longer feeds run in pieces); `None` if unbounded.
    pub pass_positions: Option<usize>,
    /// One row of logits (`vocab × 4` bytes).
    pub logits_bytes_per_row: u64,
}

/// Where components are built: the device string of the pipeline and the models folder.
#[derive(Debug, Clone, Default)]
pub struct BuildContext {
    /// Device name from the pipeline (`cpu`, `wgpu`, ...). Components may override it.
    pub device: String,
    /// Folder of fetched models (`HLM_MODELS`), if known.
    pub models_dir: Option<std::path::PathBuf>,
    /// The pipeline's `[link]` (set by [`crate::Pipeline::from_config`]), for components
    /// that emulate the link on a real network: each takes a [`LinkModel::fresh`] copy.
    pub link: Option<Arc<dyn crate::LinkModel>>,
}

/// Config-selected recipe for a draft model (`[draft]` table, `type = ...`).
#[typetag::serde(tag = "type")]
pub trait DraftModelSpec: std::fmt::Debug + Send + Sync {
    /// Load the model.
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn DraftModel>>;
}

/// Config-selected recipe for a target model (inside a local verifier).
#[typetag::serde(tag = "type")]
pub trait TargetModelSpec: std::fmt::Debug + Send + Sync {
    /// Load the model.
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn TargetModel>>;
}

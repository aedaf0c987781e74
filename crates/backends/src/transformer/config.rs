//! Hyper-parameters of a LLaMA-family decoder, read from a HF `config.json` or GGUF metadata.

use std::path::Path;

use hlm_core::{HlmError, Result};
use serde_json::Value;

use crate::gguf::GgufFile;

/// Context length assumed when a HF config does not state `max_position_embeddings`.
const DEFAULT_HF_CONTEXT: usize = 4096;

/// Model family: decides the default biases and how the weights are named and laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// LLaMA, SmolLM, TinyLlama, Mistral-style decoders.
    Llama,
    /// Qwen2 / Qwen2.5 (LLaMA plus a bias on the Q/K/V projections).
    Qwen2,
}

impl Family {
    fn from_name(name: &str, origin: &Path) -> Result<Self> {
        match name {
            "llama" | "mistral" => Ok(Family::Llama),
            "qwen2" => Ok(Family::Qwen2),
            other => Err(HlmError::Model(format!(
                "{}: unsupported model architecture '{other}' (supported: llama, qwen2)",
                origin.display()
            ))),
        }
    }
}

/// Which dimensions of a head RoPE rotates together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pairs `(i, i + head_dim/2)`: HF `rotate_half`, also llama.cpp NEOX (qwen2 GGUF).
    HalfSplit,
    /// Pairs `(2i, 2i+1)`: llama.cpp NORM, which LLaMA GGUF files need because the
    /// converter permuted the Q/K rows into that order.
    Interleaved,
}

/// Everything the forward pass needs to know about the shapes of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformerConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rms_eps: f64,
    pub max_context: usize,
    /// The output projection reuses the token embedding matrix.
    pub tied_embeddings: bool,
    /// Q/K/V projections carry a bias.
    pub qkv_bias: bool,
    pub rope_layout: RopeLayout,
}

impl TransformerConfig {
    /// Parse a Hugging Face `config.json`.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| HlmError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| HlmError::Model(format!("{}: not valid JSON: {e}", path.display())))?;
        let bad = |key: &str, why: &str| {
            HlmError::Model(format!("{}: key '{key}' {why}", path.display()))
        };
        let usize_key = |key: &str| -> Result<usize> {
            json.get(key)
                .ok_or_else(|| bad(key, "is missing"))?
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| bad(key, "is not a non-negative integer"))
        };
        let model_type = json
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("model_type", "is missing or not a string"))?;
        let family = Family::from_name(model_type, path)?;
        let hidden_size = usize_key("hidden_size")?;
        let n_heads = usize_key("num_attention_heads")?;
        let n_kv_heads = match json.get("num_key_value_heads") {
            Some(Value::Null) | None => n_heads,
            Some(_) => usize_key("num_key_value_heads")?,
        };
        let head_dim = match json.get("head_dim") {
            Some(Value::Null) | None => hidden_size.checked_div(n_heads).unwrap_or(0),
            Some(_) => usize_key("head_dim")?,
        };
        // transformers 5 nests the RoPE base under `rope_parameters`; 4.x keeps it on top.
        let rope_theta = json
            .get("rope_theta")
            .or_else(|| {
                json.get("rope_parameters")
                    .and_then(|p| p.get("rope_theta"))
            })
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| bad("rope_theta", "is not a number"))
            })
            .transpose()?
            .unwrap_or(10_000.0);
        let rms_eps = json
            .get("rms_norm_eps")
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| bad("rms_norm_eps", "is not a number"))
            })
            .transpose()?
            .unwrap_or(1e-6);
        let tied_embeddings = json
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let qkv_bias = match family {
            Family::Qwen2 => true,
            Family::Llama => json
                .get("attention_bias")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        let cfg = TransformerConfig {
            family,
            vocab_size: usize_key("vocab_size")?,
            hidden_size,
            intermediate_size: usize_key("intermediate_size")?,
            n_layers: usize_key("num_hidden_layers")?,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_theta,
            rms_eps,
            max_context: match json.get("max_position_embeddings") {
                Some(Value::Null) | None => DEFAULT_HF_CONTEXT,
                Some(_) => usize_key("max_position_embeddings")?,
            },
            tied_embeddings,
            qkv_bias,
            // HF checkpoints keep Q/K in the order `rotate_half` expects.
            rope_layout: RopeLayout::HalfSplit,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Read the `{arch}.*` metadata of a GGUF file. The vocabulary size, tied embeddings and
    /// biases come from the tensors themselves, since the metadata does not always state them.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let path = file.path();
        let arch = file.architecture()?;
        let family = Family::from_name(arch, path)?;
        let key = |k: &str| format!("{arch}.{k}");
        let hidden_size = file.get_usize(&key("embedding_length"))?;
        let n_heads = file.get_usize(&key("attention.head_count"))?;
        let n_kv_heads = if file.has_key(&key("attention.head_count_kv")) {
            file.get_usize(&key("attention.head_count_kv"))?
        } else {
            n_heads
        };
        let head_dim = if file.has_key(&key("attention.key_length")) {
            file.get_usize(&key("attention.key_length"))?
        } else {
            hidden_size.checked_div(n_heads).unwrap_or(0)
        };
        let rope_theta = if file.has_key(&key("rope.freq_base")) {
            file.get_f64(&key("rope.freq_base"))?
        } else {
            10_000.0
        };
        let embd = file.tensor_info("token_embd.weight")?;
        // ggml order: dims[0] = hidden (contiguous), dims[1] = vocabulary.
        let vocab_size = match embd.dims() {
            [_, vocab] => usize::try_from(*vocab).unwrap_or(0),
            dims => {
                return Err(HlmError::Model(format!(
                    "{}: tensor 'token_embd.weight' has dims {dims:?}, expected 2 dims",
                    path.display()
                )));
            }
        };
        let cfg = TransformerConfig {
            family,
            vocab_size,
            hidden_size,
            intermediate_size: file.get_usize(&key("feed_forward_length"))?,
            n_layers: file.get_usize(&key("block_count"))?,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_theta,
            rms_eps: file.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
            max_context: file.get_usize(&key("context_length"))?,
            tied_embeddings: !file.has_tensor("output.weight"),
            qkv_bias: file.has_tensor("blk.0.attn_q.bias"),
            rope_layout: match family {
                Family::Llama => RopeLayout::Interleaved,
                Family::Qwen2 => RopeLayout::HalfSplit,
            },
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Reject configurations the forward pass cannot run, instead of producing garbage.
    pub fn validate(&self, origin: &Path) -> Result<()> {
        let fail = |why: String| Err(HlmError::Model(format!("{}: {why}", origin.display())));
        // Each must be positive, and at most a bound far above any released model yet low
        // enough that no product of them overflows: a crafted file is refused here, before
        // anything is allocated from these numbers.
        let counts = [
            ("vocab_size", self.vocab_size, 1 << 22),
            ("hidden_size", self.hidden_size, 1 << 18),
            ("intermediate_size", self.intermediate_size, 1 << 18),
            ("n_layers", self.n_layers, 1 << 12),
            ("n_heads", self.n_heads, 1 << 12),
            ("n_kv_heads", self.n_kv_heads, 1 << 12),
            ("head_dim", self.head_dim, 1 << 12),
            ("max_context", self.max_context, 1 << 24),
        ];
        for (name, value, max) in counts {
            if value == 0 {
                return fail(format!("{name} must be positive"));
            }
            if value > max {
                return fail(format!(
                    "{name} {value} is beyond the largest supported, {max}"
                ));
            }
        }
        for (what, a, b) in [
            (
                "vocab_size x hidden_size",
                self.vocab_size,
                self.hidden_size,
            ),
            ("n_heads x head_dim", self.n_heads, self.head_dim),
            (
                "hidden_size x intermediate_size",
                self.hidden_size,
                self.intermediate_size,
            ),
        ] {
            if a.checked_mul(b).is_none_or(|p| p > 1 << 34) {
                return fail(format!(
                    "{what} = {a} x {b} is beyond the largest supported"
                ));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return fail(format!(
                "{} attention heads are not a multiple of {} KV heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return fail(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return fail(format!("rope_theta {} must be positive", self.rope_theta));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps >= 0.0) {
            return fail(format!(
                "rms_norm_eps {} must be non-negative",
                self.rms_eps
            ));
        }
        Ok(())
    }

    /// Number of query heads sharing one KV head.
    pub fn kv_group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
}

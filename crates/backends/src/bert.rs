//! A BERT encoder on burn (all-MiniLM-L6-v2 and other `BertModel` checkpoints), for
//! contextual token embeddings: what BERTScore compares.
//!
//! Post-LayerNorm BERT: embeddings (word + position + token type 0, LayerNorm), then per layer
//! self-attention (fused Q/K/V, softmax(QKᵀ/√d)V, output projection, residual, LayerNorm) and
//! the GELU MLP (residual, LayerNorm). One unpadded sequence at a time, so no attention mask.

use std::path::{Path, PathBuf};

use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Device, Tensor, TensorData};
use hlm_core::{HlmError, Result};
use serde::Deserialize;

use crate::transformer::weights::SafetensorsFiles;

/// `config.json` of a `BertModel`.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

/// `y = x @ w + b` with `w` stored `[in, out]`.
struct Linear {
    weight: Tensor<2>,
    bias: Tensor<1>,
}

impl Linear {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        x.matmul(self.weight.clone()) + self.bias.clone().unsqueeze::<2>()
    }
}

struct LayerNorm {
    gamma: Tensor<1>,
    beta: Tensor<1>,
    eps: f64,
}

impl LayerNorm {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let mean = x.clone().mean_dim(1);
        let centred = x - mean;
        let var = (centred.clone() * centred.clone()).mean_dim(1);
        centred * var.add_scalar(self.eps).sqrt().recip() * self.gamma.clone().unsqueeze::<2>()
            + self.beta.clone().unsqueeze::<2>()
    }
}

struct Layer {
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
}

/// A loaded BERT encoder with its WordPiece tokenizer.
pub struct BertEncoder {
    cfg: BertConfig,
    device: Device,
    /// `[vocab, hidden]` on the host: a lookup is a row copy.
    word: Vec<f32>,
    /// `[max_position, hidden]` on the host.
    position: Vec<f32>,
    token_type0: Vec<f32>,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    tokenizer: tokenizers::Tokenizer,
    origin: PathBuf,
}

impl BertEncoder {
    /// Load a Hugging Face folder: `config.json`, `model.safetensors`, `tokenizer.json`.
    pub fn load(folder: &Path, device: &Device) -> Result<Self> {
        let cfg_path = folder.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|source| HlmError::Io {
            path: cfg_path.clone(),
            source,
        })?;
        let cfg: BertConfig = serde_json::from_str(&text).map_err(|e| {
            HlmError::Model(format!("{}: not a BERT config: {e}", cfg_path.display()))
        })?;
        if cfg.hidden_act != "gelu" {
            return Err(HlmError::Model(format!(
                "{}: hidden_act {:?} is not supported (gelu)",
                cfg_path.display(),
                cfg.hidden_act
            )));
        }
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(HlmError::Model(format!(
                "{}: hidden_size {} is not a multiple of num_attention_heads {}",
                cfg_path.display(),
                cfg.hidden_size,
                cfg.num_attention_heads
            )));
        }
        let store = SafetensorsFiles::open(folder)?;
        let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
        let vector = |name: &str, len: usize| -> Result<Tensor<1>> {
            let v = store.load_named(name, &[len])?;
            Ok(Tensor::from_data(TensorData::new(v, [len]), device))
        };
        let norm = |prefix: &str| -> Result<LayerNorm> {
            Ok(LayerNorm {
                gamma: vector(&format!("{prefix}.weight"), h)?,
                beta: vector(&format!("{prefix}.bias"), h)?,
                eps: cfg.layer_norm_eps,
            })
        };
        // HF keeps linear weights `[out, in]`; parts of a fused projection stack along `out`.
        let linear = |parts: &[&str], out_each: usize, inp: usize| -> Result<Linear> {
            let out = out_each * parts.len();
            let mut w = Vec::with_capacity(out * inp);
            let mut b = Vec::with_capacity(out);
            for p in parts {
                w.extend(store.load_named(&format!("{p}.weight"), &[out_each, inp])?);
                b.extend(store.load_named(&format!("{p}.bias"), &[out_each])?);
            }
            let mut t = vec![0.0f32; w.len()];
            for r in 0..out {
                for c in 0..inp {
                    t[c * out + r] = w[r * inp + c];
                }
            }
            Ok(Linear {
                weight: Tensor::from_data(TensorData::new(t, [inp, out]), device),
                bias: Tensor::from_data(TensorData::new(b, [out]), device),
            })
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = format!("encoder.layer.{i}");
            layers.push(Layer {
                qkv: linear(
                    &[
                        &format!("{l}.attention.self.query"),
                        &format!("{l}.attention.self.key"),
                        &format!("{l}.attention.self.value"),
                    ],
                    h,
                    h,
                )?,
                attn_out: linear(&[&format!("{l}.attention.output.dense")], h, h)?,
                attn_norm: norm(&format!("{l}.attention.output.LayerNorm"))?,
                intermediate: linear(&[&format!("{l}.intermediate.dense")], inter, h)?,
                output: linear(&[&format!("{l}.output.dense")], h, inter)?,
                out_norm: norm(&format!("{l}.output.LayerNorm"))?,
            });
        }
        let word = store.load_named("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?;
        let position = store.load_named(
            "embeddings.position_embeddings.weight",
            &[cfg.max_position_embeddings, h],
        )?;
        let types = store
            .load_named("embeddings.token_type_embeddings.weight", &[2, h])
            .or_else(|_| store.load_named("embeddings.token_type_embeddings.weight", &[1, h]))?;
        let tok_path = folder.join("tokenizer.json");
        let mut tokenizer = tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| {
            HlmError::Model(format!(
                "{}: cannot load the tokenizer: {e}",
                tok_path.display()
            ))
        })?;
        // One sequence at a time: no padding, truncated to the model's positions.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: cfg.max_position_embeddings,
                ..Default::default()
            }))
            .map_err(|e| HlmError::Model(format!("{}: {e}", tok_path.display())))?;
        Ok(BertEncoder {
            emb_norm: norm("embeddings.LayerNorm")?,
            token_type0: types[..h].to_vec(),
            word,
            position,
            layers,
            tokenizer,
            device: device.clone(),
            origin: folder.to_path_buf(),
            cfg,
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    /// Where it was loaded from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// WordPiece ids of `text` with `[CLS]` and `[SEP]`, truncated to the model's positions.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| HlmError::Model(format!("cannot tokenize {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Hidden states after `layer` layers (0 = the embeddings, `num_hidden_layers` = the last
    /// layer): one vector of `hidden_size` per token.
    pub fn hidden_states(&self, ids: &[u32], layer: usize) -> Result<Vec<Vec<f32>>> {
        let cfg = &self.cfg;
        let (h, seq) = (cfg.hidden_size, ids.len());
        if layer > cfg.num_hidden_layers {
            return Err(HlmError::invalid(
                "layer",
                layer,
                format!("the model has {} layers", cfg.num_hidden_layers),
            ));
        }
        if seq == 0 || seq > cfg.max_position_embeddings {
            return Err(HlmError::invalid(
                "tokens",
                seq,
                format!("between 1 and {} tokens", cfg.max_position_embeddings),
            ));
        }
        let mut rows = Vec::with_capacity(seq * h);
        for (pos, &id) in ids.iter().enumerate() {
            let w = self
                .word
                .get(id as usize * h..(id as usize + 1) * h)
                .ok_or_else(|| {
                    HlmError::invalid(
                        "token",
                        id,
                        format!("outside the vocabulary of {}", cfg.vocab_size),
                    )
                })?;
            let p = &self.position[pos * h..(pos + 1) * h];
            rows.extend((0..h).map(|k| w[k] + p[k] + self.token_type0[k]));
        }
        let mut x = self.emb_norm.forward(Tensor::from_data(
            TensorData::new(rows, [seq, h]),
            &self.device,
        ));
        let heads = cfg.num_attention_heads;
        let d = h / heads;
        let scale = 1.0 / (d as f64).sqrt();
        for l in self.layers.iter().take(layer) {
            let qkv = l.qkv.forward(x.clone());
            let split = |i: usize| {
                qkv.clone()
                    .narrow(1, i * h, h)
                    .reshape([seq, heads, d])
                    .swap_dims(0, 1)
            };
            let (q, k, v) = (split(0), split(1), split(2));
            let probs = softmax(q.matmul(k.swap_dims(1, 2)).mul_scalar(scale), 2);
            let mixed = probs.matmul(v).swap_dims(0, 1).reshape([seq, h]);
            x = l.attn_norm.forward(x + l.attn_out.forward(mixed));
            let inner = gelu(l.intermediate.forward(x.clone()));
            x = l.out_norm.forward(x + l.output.forward(inner));
        }
        let flat = x
            .try_into_vec_as::<f32>()
            .map_err(|e| HlmError::Model(format!("cannot read hidden states back: {e:?}")))?;
        Ok(flat.chunks_exact(h).map(<[f32]>::to_vec).collect())
    }
}

//! A minimal GGUF v3 writer for tests (F32 tensors only), following the layout the reader
//! parses, plus the conversion of the tiny-llama safetensors fixture into llama.cpp form.

#![allow(dead_code)]

use std::path::Path;

use safetensors::SafeTensors;

pub enum Value {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArray(Vec<String>),
    I32Array(Vec<i32>),
}

#[derive(Default)]
pub struct GgufBuilder {
    kvs: Vec<(String, Value)>,
    /// name, ggml dims (innermost first), values
    tensors: Vec<(String, Vec<u64>, Vec<f32>)>,
}

const ALIGNMENT: usize = 32;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl GgufBuilder {
    pub fn kv(&mut self, key: &str, value: Value) -> &mut Self {
        self.kvs.push((key.to_string(), value));
        self
    }

    /// Set `key`, replacing its value if it is there already.
    pub fn set(&mut self, key: &str, value: Value) -> &mut Self {
        self.remove(key);
        self.kv(key, value)
    }

    /// Drop `key` if it is there.
    pub fn remove(&mut self, key: &str) -> &mut Self {
        self.kvs.retain(|(k, _)| k != key);
        self
    }

    /// Set the dims (ggml order, innermost first) of tensor `name`, keeping its values.
    pub fn set_dims(&mut self, name: &str, dims: Vec<u64>) -> &mut Self {
        if let Some(t) = self.tensors.iter_mut().find(|t| t.0 == name) {
            t.1 = dims;
        }
        self
    }

    /// `shape` is row-major (outermost first), as in safetensors.
    pub fn tensor(&mut self, name: &str, shape: &[usize], values: Vec<f32>) -> &mut Self {
        let dims = shape.iter().rev().map(|&d| d as u64).collect();
        self.tensors.push((name.to_string(), dims, values));
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (key, value) in &self.kvs {
            put_str(&mut out, key);
            match value {
                Value::U32(v) => {
                    out.extend_from_slice(&4u32.to_le_bytes());
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Value::F32(v) => {
                    out.extend_from_slice(&6u32.to_le_bytes());
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Value::Bool(v) => {
                    out.extend_from_slice(&7u32.to_le_bytes());
                    out.push(u8::from(*v));
                }
                Value::Str(s) => {
                    out.extend_from_slice(&8u32.to_le_bytes());
                    put_str(&mut out, s);
                }
                Value::StrArray(items) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&8u32.to_le_bytes());
                    out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                    for s in items {
                        put_str(&mut out, s);
                    }
                }
                Value::I32Array(items) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&5u32.to_le_bytes());
                    out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                    for v in items {
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
        let mut offset = 0usize;
        for (name, dims, values) in &self.tensors {
            put_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&0u32.to_le_bytes()); // GGML_TYPE_F32
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = (offset + values.len() * 4).div_ceil(ALIGNMENT) * ALIGNMENT;
        }
        out.resize(out.len().div_ceil(ALIGNMENT) * ALIGNMENT, 0);
        for (_, _, values) in &self.tensors {
            for v in values {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.resize(out.len().div_ceil(ALIGNMENT) * ALIGNMENT, 0);
        }
        out
    }
}

/// llama.cpp's `permute` for LLaMA Q/K rows: per head, rows `[2, head_dim/2]` become
/// `[head_dim/2, 2]`, so that the interleaved (NORM) RoPE rotates HF's half-split pairs.
pub fn permute_rows(w: &[f32], rows: usize, cols: usize, n_heads: usize) -> Vec<f32> {
    let head_dim = rows / n_heads;
    let half = head_dim / 2;
    let mut out = vec![0.0; w.len()];
    for h in 0..n_heads {
        for t in 0..2 {
            for j in 0..half {
                let src = h * head_dim + t * half + j;
                let dst = h * head_dim + j * 2 + t;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Convert the tiny-llama fixture (F32 safetensors, HF layout) into a llama GGUF the way
/// `convert_hf_to_gguf.py` does: renamed tensors, Q/K rows permuted.
pub fn write_tiny_llama_gguf(fixture: &Path, out: &Path) {
    write_tiny_llama_gguf_with(fixture, out, |_| {});
}

/// Like [`write_tiny_llama_gguf`], letting `extra` add metadata (e.g. a tokenizer).
pub fn write_tiny_llama_gguf_with(
    fixture: &Path,
    out: &Path,
    extra: impl FnOnce(&mut GgufBuilder),
) {
    let bytes = std::fs::read(fixture.join("model.safetensors")).expect("fixture");
    let st = SafeTensors::deserialize(&bytes).expect("fixture parses");
    let (hidden, heads, kv_heads, layers) = (32usize, 4usize, 2usize, 2usize);
    let mut b = GgufBuilder::default();
    b.kv("general.architecture", Value::Str("llama".into()))
        .kv("llama.block_count", Value::U32(layers as u32))
        .kv("llama.context_length", Value::U32(128))
        .kv("llama.embedding_length", Value::U32(hidden as u32))
        .kv("llama.feed_forward_length", Value::U32(48))
        .kv("llama.attention.head_count", Value::U32(heads as u32))
        .kv("llama.attention.head_count_kv", Value::U32(kv_heads as u32))
        .kv("llama.rope.freq_base", Value::F32(10000.0))
        .kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
    extra(&mut b);
    let mut add = |hf: &str, gguf: &str, permute_heads: Option<usize>| {
        let view = st.tensor(hf).expect("tensor in fixture");
        let shape = view.shape().to_vec();
        let mut values = f32s(view.data());
        if let Some(n) = permute_heads {
            values = permute_rows(&values, shape[0], shape[1], n);
        }
        b.tensor(gguf, &shape, values);
    };
    add("model.embed_tokens.weight", "token_embd.weight", None);
    for i in 0..layers {
        let hf = |s: &str| format!("model.layers.{i}.{s}");
        let gg = |s: &str| format!("blk.{i}.{s}");
        add(&hf("input_layernorm.weight"), &gg("attn_norm.weight"), None);
        add(
            &hf("self_attn.q_proj.weight"),
            &gg("attn_q.weight"),
            Some(heads),
        );
        add(
            &hf("self_attn.k_proj.weight"),
            &gg("attn_k.weight"),
            Some(kv_heads),
        );
        add(&hf("self_attn.v_proj.weight"), &gg("attn_v.weight"), None);
        add(
            &hf("self_attn.o_proj.weight"),
            &gg("attn_output.weight"),
            None,
        );
        add(
            &hf("post_attention_layernorm.weight"),
            &gg("ffn_norm.weight"),
            None,
        );
        add(&hf("mlp.gate_proj.weight"), &gg("ffn_gate.weight"), None);
        add(&hf("mlp.up_proj.weight"), &gg("ffn_up.weight"), None);
        add(&hf("mlp.down_proj.weight"), &gg("ffn_down.weight"), None);
    }
    add("model.norm.weight", "output_norm.weight", None);
    add("lm_head.weight", "output.weight", None);
    std::fs::write(out, b.to_bytes()).expect("write gguf");
}

//! Weight loading by canonical tensor name, from a Hugging Face safetensors folder or a GGUF
//! file. [`WeightStore::load`] converts (or dequantises) a tensor to `f32`, row-major in the
//! HF layout (`[out, in]` for linear weights); [`WeightStore::quantized`] hands out a GGUF
//! tensor's ggml blocks as they are, for the CPU's quantised products. Either way the shape
//! is checked against the config.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use hlm_core::{HlmError, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::gguf::{GgmlType, GgufFile, QuantMatrix, SharedBytes};

/// One tensor of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerTensor {
    AttnNorm,
    Q,
    QBias,
    K,
    KBias,
    V,
    VBias,
    O,
    FfnNorm,
    Gate,
    Up,
    Down,
}

/// A model tensor, independent of how a file format spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorName {
    Embedding,
    FinalNorm,
    LmHead,
    Layer(usize, LayerTensor),
}

impl TensorName {
    /// The Hugging Face (transformers) name.
    pub fn hf(self) -> String {
        use LayerTensor::*;
        match self {
            TensorName::Embedding => "model.embed_tokens.weight".into(),
            TensorName::FinalNorm => "model.norm.weight".into(),
            TensorName::LmHead => "lm_head.weight".into(),
            TensorName::Layer(i, t) => {
                let suffix = match t {
                    AttnNorm => "input_layernorm.weight",
                    Q => "self_attn.q_proj.weight",
                    QBias => "self_attn.q_proj.bias",
                    K => "self_attn.k_proj.weight",
                    KBias => "self_attn.k_proj.bias",
                    V => "self_attn.v_proj.weight",
                    VBias => "self_attn.v_proj.bias",
                    O => "self_attn.o_proj.weight",
                    FfnNorm => "post_attention_layernorm.weight",
                    Gate => "mlp.gate_proj.weight",
                    Up => "mlp.up_proj.weight",
                    Down => "mlp.down_proj.weight",
                };
                format!("model.layers.{i}.{suffix}")
            }
        }
    }

    /// The llama.cpp GGUF name.
    pub fn gguf(self) -> String {
        use LayerTensor::*;
        match self {
            TensorName::Embedding => "token_embd.weight".into(),
            TensorName::FinalNorm => "output_norm.weight".into(),
            TensorName::LmHead => "output.weight".into(),
            TensorName::Layer(i, t) => {
                let suffix = match t {
                    AttnNorm => "attn_norm.weight",
                    Q => "attn_q.weight",
                    QBias => "attn_q.bias",
                    K => "attn_k.weight",
                    KBias => "attn_k.bias",
                    V => "attn_v.weight",
                    VBias => "attn_v.bias",
                    O => "attn_output.weight",
                    FfnNorm => "ffn_norm.weight",
                    Gate => "ffn_gate.weight",
                    Up => "ffn_up.weight",
                    Down => "ffn_down.weight",
                };
                format!("blk.{i}.{suffix}")
            }
        }
    }
}

/// Where the weights of a model come from.
pub enum WeightStore {
    Safetensors(SafetensorsFiles),
    Gguf(GgufFile),
}

impl WeightStore {
    /// The file (or folder) the weights come from, for messages.
    pub fn origin(&self) -> &Path {
        match self {
            WeightStore::Safetensors(s) => &s.folder,
            WeightStore::Gguf(g) => g.path(),
        }
    }

    /// Whether the store holds `name`.
    pub fn has(&self, name: TensorName) -> bool {
        match self {
            WeightStore::Safetensors(s) => s.index.contains_key(&name.hf()),
            WeightStore::Gguf(g) => g.has_tensor(&name.gguf()),
        }
    }

    /// Load `name` as `f32` values of the HF shape `shape`; a different shape is an error.
    pub fn load(&self, name: TensorName, shape: &[usize]) -> Result<Vec<f32>> {
        match self {
            WeightStore::Safetensors(s) => s.load_named(&name.hf(), shape),
            WeightStore::Gguf(g) => load_gguf(g, &name.gguf(), shape),
        }
    }

    /// `name` in its file form, when the store holds it quantised: a GGUF tensor of a
    /// dequantisable type other than F32, of the HF shape `shape`. `None` for safetensors
    /// and for F32 tensors (nothing to gain by keeping those as bytes).
    pub fn quantized(
        &self,
        name: TensorName,
        shape: &[usize],
    ) -> Result<Option<(GgmlType, SharedBytes)>> {
        let WeightStore::Gguf(file) = self else {
            return Ok(None);
        };
        let gguf_name = name.gguf();
        let info = checked_info(file, &gguf_name, shape)?;
        let ty = info.ggml_type();
        if ty == GgmlType::F32 || !ty.can_dequantize() {
            return Ok(None);
        }
        Ok(Some((ty, file.tensor_shared(&gguf_name)?)))
    }
}

/// One linear layer of a decoder block: the tensors stacked along its outputs (each with its
/// output size), their biases (one per part) and the input size.
#[derive(Debug, Clone)]
pub struct LinearParts {
    pub parts: Vec<(LayerTensor, usize)>,
    pub bias: Option<Vec<LayerTensor>>,
    pub inp: usize,
}

impl LinearParts {
    /// Outputs of the stacked layer.
    pub fn out(&self) -> usize {
        self.parts.iter().map(|(_, o)| o).sum()
    }

    /// The parts' names in layer `layer`.
    pub fn names(&self, layer: usize) -> Vec<(TensorName, usize)> {
        self.parts
            .iter()
            .map(|&(t, o)| (TensorName::Layer(layer, t), o))
            .collect()
    }
}

/// The four linear layers of every decoder block, fused where that makes fewer, larger
/// products: `[q | k | v]`, the output projection, `[gate | up]` and the down projection.
pub fn block_linears(cfg: &super::TransformerConfig) -> [LinearParts; 4] {
    use LayerTensor::*;
    let (q_dim, kv_dim) = (cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim);
    let (hidden, inter) = (cfg.hidden_size, cfg.intermediate_size);
    [
        LinearParts {
            parts: vec![(Q, q_dim), (K, kv_dim), (V, kv_dim)],
            bias: cfg.qkv_bias.then(|| vec![QBias, KBias, VBias]),
            inp: hidden,
        },
        LinearParts {
            parts: vec![(O, hidden)],
            bias: None,
            inp: q_dim,
        },
        LinearParts {
            parts: vec![(Gate, inter), (Up, inter)],
            bias: None,
            inp: hidden,
        },
        LinearParts {
            parts: vec![(Down, hidden)],
            bias: None,
            inp: inter,
        },
    ]
}

impl WeightStore {
    /// The rows of `names` (each `[rows, inp]`) stacked in one [`QuantMatrix`], if every one
    /// of them is held quantised; `None` if any is not.
    pub fn quant_matrix(
        &self,
        names: &[(TensorName, usize)],
        inp: usize,
    ) -> Result<Option<QuantMatrix>> {
        let mut m = QuantMatrix::new(inp);
        for &(name, rows) in names {
            let Some((ty, bytes)) = self.quantized(name, &[rows, inp])? else {
                return Ok(None);
            };
            m.push(ty, bytes, rows).map_err(|e| {
                HlmError::Model(format!(
                    "{}: tensor '{}': {e}",
                    self.origin().display(),
                    name.gguf()
                ))
            })?;
        }
        Ok(Some(m))
    }

    /// The biases `names` (output sizes from `parts`), concatenated.
    pub fn load_bias(
        &self,
        layer: usize,
        names: &[LayerTensor],
        parts: &[(LayerTensor, usize)],
    ) -> Result<Vec<f32>> {
        let mut b = Vec::new();
        for (&t, &(_, o)) in names.iter().zip(parts) {
            b.extend(self.load(TensorName::Layer(layer, t), &[o])?);
        }
        Ok(b)
    }

    /// The rows of `names` (each `[rows, inp]`) as `f32`, stacked.
    pub fn load_stacked(&self, names: &[(TensorName, usize)], inp: usize) -> Result<Vec<f32>> {
        let out: usize = names.iter().map(|(_, o)| o).sum();
        let mut w = Vec::with_capacity(out * inp);
        for &(name, rows) in names {
            w.extend(self.load(name, &[rows, inp])?);
        }
        Ok(w)
    }
}

fn checked_info<'f>(
    file: &'f GgufFile,
    name: &str,
    shape: &[usize],
) -> Result<&'f crate::gguf::TensorInfo> {
    let info = file.tensor_info(name)?;
    // `shape()` is row-major (ggml's dims reversed), like the HF shapes we compare with.
    let file_shape = info.shape();
    if file_shape != shape {
        return Err(HlmError::Model(format!(
            "{}: tensor '{name}' has shape {file_shape:?}, but the model config needs {shape:?}",
            file.path().display()
        )));
    }
    Ok(info)
}

fn load_gguf(file: &GgufFile, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    checked_info(file, name, shape)?;
    Ok(file.dequantize_tensor(name)?)
}

/// The memory-mapped files of a safetensors checkpoint (one file or shards).
pub struct SafetensorsFiles {
    folder: PathBuf,
    files: Vec<(PathBuf, Mmap)>,
    /// Tensor name -> index into `files`.
    index: HashMap<String, usize>,
}

impl SafetensorsFiles {
    /// Open `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
    pub fn open(folder: &Path) -> Result<Self> {
        let single = folder.join("model.safetensors");
        let index_path = folder.join("model.safetensors.index.json");
        let shard_names: Vec<String> = if single.is_file() {
            vec!["model.safetensors".into()]
        } else if index_path.is_file() {
            shards_of_index(&index_path)?
        } else {
            return Err(HlmError::Model(format!(
                "{}: no model.safetensors or model.safetensors.index.json in this folder",
                folder.display()
            )));
        };
        let mut files = Vec::with_capacity(shard_names.len());
        let mut index = HashMap::new();
        for shard in shard_names {
            let path = folder.join(&shard);
            let map = map_file(&path)?;
            let tensors = SafeTensors::deserialize(&map).map_err(|e| {
                HlmError::Model(format!(
                    "{}: not a valid safetensors file (corrupt or truncated): {e}",
                    path.display()
                ))
            })?;
            for name in tensors.names() {
                index.insert(name.to_string(), files.len());
            }
            files.push((path, map));
        }
        Ok(SafetensorsFiles {
            folder: folder.to_path_buf(),
            files,
            index,
        })
    }

    /// Load the tensor `name` as `f32` values of shape `shape` (F32, F16 or BF16 on disk); a
    /// missing tensor or another shape is an error naming the file.
    pub fn load_named(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let &file_ix = self.index.get(name).ok_or_else(|| {
            let files: Vec<String> = self
                .files
                .iter()
                .map(|(p, _)| p.display().to_string())
                .collect();
            HlmError::Model(format!(
                "tensor '{name}' is missing from {}",
                files.join(", ")
            ))
        })?;
        let (path, map) = &self.files[file_ix];
        let fail =
            |why: String| HlmError::Model(format!("{}: tensor '{name}': {why}", path.display()));
        // Parsed and validated in `open`; re-parsing the header is cheap next to the copy.
        let tensors = SafeTensors::deserialize(map).map_err(|e| fail(e.to_string()))?;
        let view = tensors.tensor(name).map_err(|e| fail(e.to_string()))?;
        if view.shape() != shape {
            return Err(fail(format!(
                "shape {:?}, but the model config needs {shape:?}",
                view.shape()
            )));
        }
        let bytes = view.data();
        let values = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(fail(format!(
                    "dtype {other:?} is not supported (F32, F16, BF16)"
                )));
            }
        };
        Ok(values)
    }
}

fn map_file(path: &Path) -> Result<Mmap> {
    let io = |source| HlmError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    // SAFETY: read-only private mapping; model files are treated as immutable while loaded
    // (only a concurrent truncation by another process could invalidate it).
    unsafe { Mmap::map(&file) }.map_err(io)
}

fn shards_of_index(index_path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index_path).map_err(|source| HlmError::Io {
        path: index_path.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| HlmError::Model(format!("{}: not valid JSON: {e}", index_path.display())))?;
    let map = json
        .get("weight_map")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| {
            HlmError::Model(format!("{}: no 'weight_map' object", index_path.display()))
        })?;
    let mut shards: Vec<String> = Vec::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            HlmError::Model(format!(
                "{}: weight_map entry '{tensor}' is not a file name",
                index_path.display()
            ))
        })?;
        // A shard name with a path separator could point outside the model folder.
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(HlmError::Model(format!(
                "{}: shard name '{file}' must be a plain file name",
                index_path.display()
            )));
        }
        if !shards.iter().any(|s| s == file) {
            shards.push(file.to_string());
        }
    }
    shards.sort();
    Ok(shards)
}

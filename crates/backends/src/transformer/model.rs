//! The decoder network on burn: RMSNorm, GQA attention with RoPE and a KV cache, SwiGLU.
//!
//! Linear weights are either `f32` on the device, stored transposed (`[in, out]`), or, for a
//! GGUF model on the CPU, ggml blocks used in place (see [`WeightLayout`]). The token
//! embedding stays on the host.

use burn::tensor::activation::{silu, softmax};
use burn::tensor::quantization::{QuantScheme, QuantValue, ScaleDtype};
use burn::tensor::{Bool, Device, Tensor, TensorData};
use hlm_core::{HlmError, LayerAttention, Result, TokenId};

use super::config::TransformerConfig;
use super::kv_cache::KvCache;
use super::rope::Rope;
use super::weights::{LayerTensor, LinearParts, TensorName, WeightStore, block_linears};
use crate::gguf::QuantMatrix;
use crate::layout::transpose;

/// A linear layer `y = x @ Wᵀ + b`, `W` being `[out, in]` as the files store it.
struct Linear {
    weights: LinearWeights,
    bias: Option<Tensor<1>>,
}

enum LinearWeights {
    /// `f32` on the device, transposed to `[in, out]` (so `x @ W` needs no per-call
    /// transpose) and stored as column blocks `[in, out_j]` side by side.
    ///
    /// On flex (eager, one op per calling thread; its matmul only parallelises above 192³
    /// multiply-adds, so a decode step's matrix-vector products ran on one core) the
    /// columns are split into one block per core at load and each block's product runs on
    /// its own scoped thread. On a GPU there is one block: the device parallelises.
    Dense(Vec<Tensor<2>>),
    /// ggml blocks in host memory, used in place from the GGUF mapping: the CPU path of a
    /// quantised model (see [`QuantMatrix`]). Activations come to the host and go back as
    /// a new tensor; on flex both are plain memory copies of `[seq, in]` and `[seq, out]`.
    Quantized(QuantMatrix),
}

impl Linear {
    /// A row-major `[out, inp]` matrix (as the files store it) on `device` as column blocks
    /// of `[inp, out]`: `parts` of them, or more where one would exceed [`MAX_BLOCK_BYTES`].
    /// Each block is the `f32` transpose of its rows or, with `q8` and `inp` a multiple of
    /// [`Q8_BLOCK`], 8-bit blocks of its rows read through a transposed view
    /// ([`q8_tensor`]).
    fn dense(w: &[f32], inp: usize, out: usize, parts: usize, device: &Device, q8: bool) -> Self {
        let by_size = (inp * out * std::mem::size_of::<f32>()).div_ceil(MAX_BLOCK_BYTES);
        let parts = parts.max(by_size).clamp(1, out.max(1));
        let width = out.div_ceil(parts);
        let blocks = w
            .chunks((width * inp).max(1))
            .map(|rows| {
                let cols = rows.len() / inp.max(1);
                if q8 && inp.is_multiple_of(Q8_BLOCK) {
                    q8_tensor(rows, cols, inp, device)
                } else {
                    let block = transpose(rows, cols, inp);
                    Tensor::from_data(TensorData::new(block, [inp, cols]), device)
                }
            })
            .collect();
        Linear {
            weights: LinearWeights::Dense(blocks),
            bias: None,
        }
    }

    /// Bytes its weights take where they live (device or host).
    fn weight_bytes(&self) -> usize {
        match &self.weights {
            LinearWeights::Dense(blocks) => blocks
                .iter()
                .map(|w| {
                    let [rows, cols] = w.dims();
                    if w.dtype().is_float() {
                        rows * cols * w.dtype().size()
                    } else {
                        // 8-bit values and one f32 scale per block.
                        rows * cols + rows * cols / Q8_BLOCK * 4
                    }
                })
                .sum(),
            LinearWeights::Quantized(m) => m.n_bytes(),
        }
    }

    fn quantized(m: QuantMatrix) -> Self {
        Linear {
            weights: LinearWeights::Quantized(m),
            bias: None,
        }
    }

    fn forward(&self, x: Tensor<2>) -> Result<Tensor<2>> {
        let y = match &self.weights {
            LinearWeights::Dense(blocks) => dense_product(x, blocks),
            LinearWeights::Quantized(m) => {
                let [n, inp] = x.dims();
                let device = x.device();
                let host = read_f32(x)?;
                let y = m.matmul_t(&host, n).ok_or_else(|| {
                    HlmError::Model(format!(
                        "an activation of {n} x {inp} does not fit a weight of {} x {}",
                        m.rows(),
                        m.cols()
                    ))
                })?;
                Tensor::from_data(TensorData::new(y, [n, m.rows()]), &device)
            }
        };
        Ok(match &self.bias {
            Some(b) => y + b.clone().unsqueeze::<2>(),
            None => y,
        })
    }
}

/// `x @ [w_1 | w_2 | ...]`; on flex one scoped thread per block when there are several.
fn dense_product(x: Tensor<2>, blocks: &[Tensor<2>]) -> Tensor<2> {
    match blocks {
        [w] => x.matmul(w.clone()),
        // On a GPU the device runs the blocks' products in parallel already.
        blocks if x.device() != Device::flex() => Tensor::cat(
            blocks.iter().map(|w| x.clone().matmul(w.clone())).collect(),
            1,
        ),
        blocks => {
            let parts: Vec<Tensor<2>> = std::thread::scope(|scope| {
                let handles: Vec<_> = blocks
                    .iter()
                    .map(|w| {
                        let (x, w) = (x.clone(), w.clone());
                        scope.spawn(move || x.matmul(w))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                    .collect()
            });
            Tensor::cat(parts, 1)
        }
    }
}

/// Where the weights of a GGUF model live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightLayout {
    /// On the CPU (flex): the file's ggml blocks in host memory, used in place (exactly the
    /// dequantised values). On a GPU: burn 8-bit block tensors, requantised at load from the
    /// dequantised weights with one `f32` scale per 32 inputs of an output (ggml's grouping):
    /// a quarter of the `f32` memory (1.125 bytes a weight), at an extra rounding of each
    /// weight to 1/254 of its block's largest magnitude. Safetensors models stay `f32`.
    #[default]
    Auto,
    /// Every weight dequantised to `f32` on the device (the reference the quantised paths are
    /// tested against; about 7x the memory of a Q4 file).
    Dense,
}

/// Where and how a model's linear weights are kept, per [`WeightLayout`] and device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    HostBlocks,
    DeviceQ8,
    DeviceF32,
}

impl WeightLayout {
    fn placement(self, device: &Device, store: &WeightStore) -> Placement {
        match (self, store) {
            (WeightLayout::Auto, WeightStore::Gguf(_)) if *device == Device::flex() => {
                Placement::HostBlocks
            }
            (WeightLayout::Auto, WeightStore::Gguf(_)) => Placement::DeviceQ8,
            _ => Placement::DeviceF32,
        }
    }
}

/// Inputs per scale of [`Placement::DeviceQ8`] weights.
const Q8_BLOCK: usize = 32;

/// Row-major `[cols, inp]` weights (`cols` outputs) as a logical `[inp, cols]` device tensor
/// stored as burn 8-bit blocks of the rows, i.e. blocks run along the inputs of each output,
/// as in ggml. (Blocks along the outputs of one input, which quantising the `[inp, cols]`
/// layout directly gives, derailed Qwen2.5-0.5B after one token: one large weight of an input
/// coarsens 31 outputs' weights.) Quantised on the host, so the `f32` matrix never occupies
/// the device: `scale = max |w| / 127`, `q = round(w / scale)` per block. burn reads the
/// transposed view without copying. `inp` must be a multiple of [`Q8_BLOCK`].
fn q8_tensor(rows: &[f32], cols: usize, inp: usize, device: &Device) -> Tensor<2> {
    let mut q = Vec::with_capacity(rows.len());
    let mut scales = Vec::with_capacity(rows.len() / Q8_BLOCK);
    for run in rows.chunks_exact(Q8_BLOCK) {
        let amax = run.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        // An all-zero run takes any positive scale: every q is 0.
        let scale = if amax > 0.0 { amax / 127.0 } else { 1.0 };
        scales.push(scale);
        q.extend(
            run.iter()
                .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8),
        );
    }
    // One-level blocks (a two-level scheme is dequantised in full before a matmul) with
    // f32 scales (f16 scales need a shader feature).
    let scheme = QuantScheme::default()
        .with_value(QuantValue::Q8S)
        .per_block([Q8_BLOCK as u8], ScaleDtype::F32);
    let data = TensorData::quantized(q, [cols, inp], scheme, &scales, None);
    Tensor::<2>::from_data(data, device).transpose()
}

/// The token embedding, looked up on the host: a lookup is a row copy (or one row's
/// dequantisation), and this keeps integer tensors out of the forward pass.
enum Embedding {
    /// `[vocab, hidden]`, row-major.
    Dense(Vec<f32>),
    /// The GGUF tensor in place, one row dequantised per token.
    Quantized(QuantMatrix),
}

/// The most bytes of one weight block: WebGPU's default limit of a storage buffer binding
/// (128 MiB), which software adapters such as lavapipe keep. A 151,936-token LM head in
/// `f32` (545 MB for Qwen2.5-0.5B) could not be allocated on wgpu there; it is now split
/// into column blocks under the limit.
const MAX_BLOCK_BYTES: usize = 128 << 20;

/// Column blocks per linear layer on `device`: one per core on flex, one on a GPU
/// ([`Linear::dense`] adds more where a block would exceed [`MAX_BLOCK_BYTES`]).
fn linear_parts(device: &Device) -> usize {
    if *device == Device::flex() {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        1
    }
}

/// One decoder layer. Q/K/V and gate/up are fused into one matmul each: fewer, larger
/// products run faster (flex only parallelises a matmul above a size threshold).
struct Block {
    attn_norm: Tensor<1>,
    /// Outputs `[q | k | v]`.
    qkv: Linear,
    o: Linear,
    ffn_norm: Tensor<1>,
    /// Outputs `[gate | up]`.
    gate_up: Linear,
    down: Linear,
}

/// Which positions get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitRows {
    /// Only the last fed position, read back to the host.
    Last,
    /// Only the last fed position, left on the device (drafting: the token filter queries it
    /// there and only small results come back).
    LastOnDevice,
    /// Every fed position (verification).
    All,
}

/// What one forward pass returns.
pub struct ForwardOutput {
    /// Logits per requested position, in order (empty for [`LogitRows::LastOnDevice`]).
    pub logits: Vec<Vec<f32>>,
    /// The last position's logits `[vocab]` on the device, for [`LogitRows::LastOnDevice`].
    pub device_logits: Option<Tensor<1>>,
    /// Attention of the newest position for the requested layers, in layer order.
    pub attention: Vec<LayerAttention>,
}

/// The weights of a decoder, on a burn device.
pub struct Network {
    cfg: TransformerConfig,
    device: Device,
    embedding: Embedding,
    blocks: Vec<Block>,
    final_norm: Tensor<1>,
    /// `[hidden] -> [vocab]`.
    lm_head: Linear,
    rope: Rope,
}

impl Network {
    /// Load and shape-check every tensor of `cfg` from `store`.
    pub fn load(
        cfg: &TransformerConfig,
        store: &WeightStore,
        device: &Device,
        layout: WeightLayout,
    ) -> Result<Self> {
        let (vocab, hidden) = (cfg.vocab_size, cfg.hidden_size);
        let vector = |name: TensorName, len: usize| -> Result<Tensor<1>> {
            let v = store.load(name, &[len])?;
            Ok(Tensor::from_data(TensorData::new(v, [len]), device))
        };
        let placement = layout.placement(device, store);
        // HF/GGUF keep linear weights as [out, in]. Parts of a fused projection are stacked
        // along `out` (appending rows).
        let linear = |i: usize, l: &LinearParts| -> Result<Linear> {
            let mut layer = load_linear(store, &l.names(i), l.inp, device, placement)?;
            layer.bias = match &l.bias {
                None => None,
                Some(names) => {
                    let b = store.load_bias(i, names, &l.parts)?;
                    Some(Tensor::from_data(TensorData::new(b, [l.out()]), device))
                }
            };
            Ok(layer)
        };
        let [qkv, o, gate_up, down] = block_linears(cfg);
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            use LayerTensor::*;
            blocks.push(Block {
                attn_norm: vector(TensorName::Layer(i, AttnNorm), hidden)?,
                qkv: linear(i, &qkv)?,
                o: linear(i, &o)?,
                ffn_norm: vector(TensorName::Layer(i, FfnNorm), hidden)?,
                gate_up: linear(i, &gate_up)?,
                down: linear(i, &down)?,
            });
        }
        let embedding = match store.quant_matrix(&[(TensorName::Embedding, vocab)], hidden)? {
            Some(m) => Embedding::Quantized(m),
            None => Embedding::Dense(store.load(TensorName::Embedding, &[vocab, hidden])?),
        };
        let head_name = if cfg.tied_embeddings {
            TensorName::Embedding
        } else {
            TensorName::LmHead
        };
        // A tied head reuses the embedding already in memory.
        let lm_head = match &embedding {
            Embedding::Quantized(m)
                if cfg.tied_embeddings && placement == Placement::HostBlocks =>
            {
                Linear::quantized(m.clone())
            }
            Embedding::Dense(w) if cfg.tied_embeddings => Linear::dense(
                w,
                hidden,
                vocab,
                linear_parts(device),
                device,
                placement == Placement::DeviceQ8,
            ),
            _ => load_linear(store, &[(head_name, vocab)], hidden, device, placement)?,
        };
        Ok(Network {
            cfg: cfg.clone(),
            device: device.clone(),
            embedding,
            blocks,
            final_norm: vector(TensorName::FinalNorm, hidden)?,
            lm_head,
            rope: Rope::new(cfg.head_dim, cfg.rope_theta, cfg.rope_layout),
        })
    }

    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }

    /// Bytes the linear layers' weights and the LM head take where they live: what
    /// [`WeightLayout`] decides (norms, biases and the host-side embedding excluded).
    pub fn linear_weight_bytes(&self) -> usize {
        self.blocks
            .iter()
            .flat_map(|b| [&b.qkv, &b.o, &b.gate_up, &b.down])
            .chain([&self.lm_head])
            .map(Linear::weight_bytes)
            .sum()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Feed `tokens` after the `cache.len()` tokens already in `cache`, appending their keys
    /// and values. `attention_layers` must be valid layer indices. On error the cache is left
    /// as it was.
    pub fn forward(
        &self,
        tokens: &[TokenId],
        cache: &mut KvCache,
        rows: LogitRows,
        attention_layers: &[usize],
    ) -> Result<ForwardOutput> {
        let mut out = self.forward_batch(&mut [(tokens, cache)], rows, attention_layers)?;
        out.pop()
            .ok_or_else(|| HlmError::Model("a batch of one returned nothing".into()))
    }

    /// Feed several independent sequences (each with its own cache and past length) in one
    /// pass: their tokens are stacked so every projection and MLP runs as one matrix product
    /// over all of them (the weights are read once per layer, which is what decoding is bound
    /// by), while attention runs per sequence over its own keys. One output per sequence, in
    /// order. On error every cache is left as it was.
    pub fn forward_batch(
        &self,
        seqs: &mut [(&[TokenId], &mut KvCache)],
        rows: LogitRows,
        attention_layers: &[usize],
    ) -> Result<Vec<ForwardOutput>> {
        if seqs.is_empty() || seqs.iter().any(|(t, _)| t.is_empty()) {
            return Err(HlmError::Model("forward needs at least one token".into()));
        }
        let pasts: Vec<usize> = seqs.iter().map(|(_, c)| c.len()).collect();
        let out = self.forward_uncommitted(seqs, rows, attention_layers);
        for ((tokens, cache), &past) in seqs.iter_mut().zip(&pasts) {
            if out.is_ok() {
                cache.commit(past + tokens.len());
            } else {
                cache.truncate(past);
            }
        }
        out
    }

    fn forward_uncommitted(
        &self,
        seqs: &mut [(&[TokenId], &mut KvCache)],
        rows: LogitRows,
        attention_layers: &[usize],
    ) -> Result<Vec<ForwardOutput>> {
        let cfg = &self.cfg;
        let all: Vec<TokenId> = seqs.iter().flat_map(|(t, _)| t.iter().copied()).collect();
        let mut x = self.embed(&all)?;
        let (q_dim, kv_dim) = (cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim);
        // Per sequence: its rows in the stack, RoPE angles and causal mask.
        let mut layout = Vec::with_capacity(seqs.len());
        let mut offset = 0;
        for (tokens, cache) in seqs.iter() {
            let (seq, past) = (tokens.len(), cache.len());
            let angles = self.rope.angles(past, seq, &self.device);
            let (group, total) = (cfg.kv_group(), past + seq);
            // Causal mask over [new positions, all keys]; one new token sees everything.
            // Rows are (query head in its KV group, position), see `group_queries`. Expanded
            // explicitly: not every backend broadcasts masks.
            let mask = (seq > 1).then(|| {
                Tensor::<2, Bool>::tril_mask([seq, total], past as i64, &self.device)
                    .unsqueeze::<4>()
                    .expand([cfg.n_kv_heads, group, seq, total])
                    .reshape([cfg.n_kv_heads, group * seq, total])
            });
            layout.push((offset, seq, total, angles, mask));
            offset += seq;
        }
        let single = layout.len() == 1;
        let mut attention: Vec<Vec<LayerAttention>> = vec![Vec::new(); seqs.len()];
        for (i, block) in self.blocks.iter().enumerate() {
            let h = rms_norm(x.clone(), &block.attn_norm, cfg.rms_eps);
            let qkv = block.qkv.forward(h)?;
            let mut mixed_parts = Vec::with_capacity(seqs.len());
            for (j, (_, cache)) in seqs.iter_mut().enumerate() {
                let (off, seq, total, angles, mask) = &layout[j];
                let (seq, total) = (*seq, *total);
                let rows_j = if single {
                    qkv.clone()
                } else {
                    qkv.clone().narrow(0, *off, seq)
                };
                let q = self.heads(rows_j.clone().narrow(1, 0, q_dim), cfg.n_heads);
                let k = self.heads(rows_j.clone().narrow(1, q_dim, kv_dim), cfg.n_kv_heads);
                let v = self.heads(rows_j.narrow(1, q_dim + kv_dim, kv_dim), cfg.n_kv_heads);
                let q = self.rope.apply(q, angles);
                let k = self.rope.apply(k, angles);
                let (keys, values) = cache.append(i, k, v);
                let q = group_queries(q, cfg.n_kv_heads);
                let scale = 1.0 / (cfg.head_dim as f64).sqrt();
                // [kv_heads, group * seq, total]
                let mut scores = q.matmul(keys.swap_dims(1, 2)).mul_scalar(scale);
                if let Some(mask) = mask {
                    scores = scores.mask_fill(mask.clone(), f32::NEG_INFINITY);
                }
                let probs = softmax(scores, 2);
                if attention_layers.contains(&i) {
                    let per_head = probs.clone().reshape([cfg.n_heads, seq, total]);
                    attention[j].push(newest_attention(i, per_head)?);
                }
                // [kv_heads, group * seq, head_dim] -> [heads, seq, head_dim] -> [seq, q_dim]
                mixed_parts.push(
                    probs
                        .matmul(values)
                        .reshape([cfg.n_heads, seq, cfg.head_dim])
                        .swap_dims(0, 1)
                        .reshape([seq, q_dim]),
                );
            }
            let mixed = if mixed_parts.len() == 1 {
                mixed_parts.pop().expect("one part")
            } else {
                Tensor::cat(mixed_parts, 0)
            };
            x = x + block.o.forward(mixed)?;
            let h = rms_norm(x.clone(), &block.ffn_norm, cfg.rms_eps);
            let gate_up = block.gate_up.forward(h)?;
            let inter = cfg.intermediate_size;
            let gated = silu(gate_up.clone().narrow(1, 0, inter)) * gate_up.narrow(1, inter, inter);
            x = x + block.down.forward(gated)?;
        }
        // The rows that get logits: per sequence all of them, or only its last.
        let x = match rows {
            LogitRows::All => x,
            LogitRows::Last | LogitRows::LastOnDevice if single => x.narrow(0, offset - 1, 1),
            LogitRows::Last | LogitRows::LastOnDevice => Tensor::cat(
                layout
                    .iter()
                    .map(|(off, seq, ..)| x.clone().narrow(0, off + seq - 1, 1))
                    .collect(),
                0,
            ),
        };
        let n_rows = x.dims()[0];
        let logits = self
            .lm_head
            .forward(rms_norm(x, &self.final_norm, cfg.rms_eps))?;
        if rows == LogitRows::LastOnDevice {
            let vocab = cfg.vocab_size;
            return Ok(attention
                .into_iter()
                .enumerate()
                .map(|(i, attention)| ForwardOutput {
                    logits: Vec::new(),
                    device_logits: Some(logits.clone().narrow(0, i, 1).reshape([vocab])),
                    attention,
                })
                .collect());
        }
        let flat = read_f32(logits)?;
        if flat.len() != n_rows * cfg.vocab_size {
            return Err(HlmError::Model(format!(
                "expected {n_rows} logit rows of {}, read {} values",
                cfg.vocab_size,
                flat.len()
            )));
        }
        let mut rows_iter = flat.chunks_exact(cfg.vocab_size).map(<[f32]>::to_vec);
        let mut outputs = Vec::with_capacity(seqs.len());
        for ((_, seq, ..), attention) in layout.iter().zip(attention) {
            let n = match rows {
                LogitRows::All => *seq,
                LogitRows::Last | LogitRows::LastOnDevice => 1,
            };
            outputs.push(ForwardOutput {
                logits: rows_iter.by_ref().take(n).collect(),
                device_logits: None,
                attention,
            });
        }
        Ok(outputs)
    }

    /// Gather embedding rows on the host: `[seq, hidden]`.
    fn embed(&self, tokens: &[TokenId]) -> Result<Tensor<2>> {
        let hidden = self.cfg.hidden_size;
        let mut rows = vec![0.0f32; tokens.len() * hidden];
        for (&t, row) in tokens.iter().zip(rows.chunks_exact_mut(hidden)) {
            let found = match &self.embedding {
                Embedding::Dense(table) => {
                    let start = t as usize * hidden;
                    table
                        .get(start..start + hidden)
                        .map(|src| row.copy_from_slice(src))
                }
                Embedding::Quantized(m) => m.row_into(t as usize, row),
            };
            found.ok_or_else(|| {
                HlmError::Model(format!(
                    "token id {t} is outside the vocabulary of {}",
                    self.cfg.vocab_size
                ))
            })?;
        }
        Ok(Tensor::from_data(
            TensorData::new(rows, [tokens.len(), hidden]),
            &self.device,
        ))
    }

    /// `[seq, heads * head_dim]` -> `[heads, seq, head_dim]`.
    fn heads(&self, x: Tensor<2>, heads: usize) -> Tensor<3> {
        let seq = x.dims()[0];
        x.reshape([seq, heads, self.cfg.head_dim]).swap_dims(0, 1)
    }
}

/// The linear layer whose weight stacks `names` (each `[rows, inp]`), kept as `placement`
/// says: the ggml blocks on the host when every part is held quantised, else on the device.
fn load_linear(
    store: &WeightStore,
    names: &[(TensorName, usize)],
    inp: usize,
    device: &Device,
    placement: Placement,
) -> Result<Linear> {
    if placement == Placement::HostBlocks
        && let Some(m) = store.quant_matrix(names, inp)?
    {
        return Ok(Linear::quantized(m));
    }
    let out: usize = names.iter().map(|(_, o)| o).sum();
    let w = store.load_stacked(names, inp)?;
    Ok(Linear::dense(
        &w,
        inp,
        out,
        linear_parts(device),
        device,
        placement == Placement::DeviceQ8,
    ))
}

/// `x / sqrt(mean(x²) + eps) * gamma` over the last dimension.
fn rms_norm(x: Tensor<2>, gamma: &Tensor<1>, eps: f64) -> Tensor<2> {
    let mean_sq = (x.clone() * x.clone()).mean_dim(1);
    x * mean_sq.add_scalar(eps).sqrt().recip() * gamma.clone().unsqueeze::<2>()
}

/// GQA without copying keys and values per query head: query head `h` uses KV head
/// `h / group`, and heads of one group are adjacent, so `[heads, seq, d]` regroups to
/// `[kv_heads, group * seq, d]` and one batched matmul per KV head serves its whole group.
fn group_queries(q: Tensor<3>, kv_heads: usize) -> Tensor<3> {
    let [heads, seq, d] = q.dims();
    q.reshape([kv_heads, heads / kv_heads * seq, d])
}

/// Attention probabilities of the last query position, per head, over all keys.
fn newest_attention(layer: usize, probs: Tensor<3>) -> Result<LayerAttention> {
    let [heads, seq, keys] = probs.dims();
    let flat = read_f32(probs.narrow(1, seq - 1, 1))?;
    Ok(LayerAttention {
        layer,
        heads: flat
            .chunks_exact(keys)
            .take(heads)
            .map(<[f32]>::to_vec)
            .collect(),
    })
}

fn read_f32<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.try_into_vec_as::<f32>()
        .map_err(|e| HlmError::Model(format!("cannot read a tensor back from the device: {e:?}")))
}

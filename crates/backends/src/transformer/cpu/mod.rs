//! The decoder on the CPU: the same network as [`super::model`], computed on host memory
//! with hlm's own kernels instead of burn ops.
//!
//! Why a second implementation: a decode step of SmolLM2-135M is ~360 small operations
//! (30 layers of norms, projections, RoPE, attention, SwiGLU), and llama.cpp finishes one in
//! ~8 ms on two cores. burn's flex backend allocates a tensor and dispatches per op; together
//! with the host round trip of each quantised product that overhead alone exceeded llama.cpp's
//! whole step (see docs/bench/decode-cpu.md). Here every step works on plain `f32` slices,
//! the products run on the ggml blocks in place ([`QuantMatrix`]), and the KV cache is a
//! growing host buffer ([`HostKvCache`]). The burn network stays the GPU path (wgpu), and the
//! two are tested against each other.
//!
//! Products follow the model's [`Precision`]: `exact` dequantises weights to `f32`
//! ([`QuantMatrix::matmul_t`], equal to Hugging Face transformers token for token), `fast`
//! multiplies 8-bit activations in integers ([`QuantMatrix::matmul_t_int8`], llama.cpp's
//! arithmetic).

mod attention;
mod kv_cache;
mod ops;

use std::sync::OnceLock;

use hlm_core::{HlmError, LayerAttention, Result, TokenId};

pub use kv_cache::{HostKvCache, MIN_GROWTH as KV_MIN_GROWTH};

use self::attention::{AttentionShape, Context, Queries, attend};
use super::config::TransformerConfig;
use super::precision::Precision;
use super::rope::Rope;
use super::weights::{LayerTensor, LinearParts, TensorName, WeightStore, block_linears};
use crate::gguf::{GgmlType, QuantMatrix, SharedBytes, quantize_q8_0};

/// A linear layer `y = x Wᵀ + b` on the CPU.
struct CpuLinear {
    /// `[out, in]` in ggml blocks (or F32 rows for unquantised weights).
    weights: QuantMatrix,
    bias: Option<Vec<f32>>,
}

impl CpuLinear {
    /// `[n, in]` activations to `[n, out]`.
    fn forward(&self, x: &[f32], n: usize, precision: Precision) -> Result<Vec<f32>> {
        let m = &self.weights;
        let y = match precision {
            Precision::Exact => m.matmul_t(x, n),
            Precision::Fast => m.matmul_t_int8(x, n),
        };
        let mut y = y.ok_or_else(|| {
            HlmError::Model(format!(
                "an activation of {n} x {} does not fit a weight of {} x {}",
                x.len() / n.max(1),
                m.rows(),
                m.cols()
            ))
        })?;
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(b.len()) {
                for (y, b) in row.iter_mut().zip(b) {
                    *y += b;
                }
            }
        }
        Ok(y)
    }
}

/// One decoder layer.
struct CpuBlock {
    attn_norm: Vec<f32>,
    /// Outputs `[q | k | v]`.
    qkv: CpuLinear,
    o: CpuLinear,
    ffn_norm: Vec<f32>,
    /// Outputs `[gate | up]`.
    gate_up: CpuLinear,
    down: CpuLinear,
}

/// What one pass returns for one sequence.
pub struct CpuOutput {
    /// Logits per requested position (the last one, or all fed ones), in order.
    pub logits: Vec<Vec<f32>>,
    /// Attention of the newest position for the requested layers, in layer order.
    pub attention: Vec<LayerAttention>,
}

/// The weights of a decoder in host memory.
pub struct CpuNetwork {
    cfg: TransformerConfig,
    precision: Precision,
    /// `[vocab, hidden]`, one row dequantised per token.
    embedding: QuantMatrix,
    blocks: Vec<CpuBlock>,
    final_norm: Vec<f32>,
    /// `[vocab, hidden]`.
    lm_head: CpuLinear,
    rope: Rope,
    /// Most positions one pass computes ([`CpuNetwork::set_prefill_chunk`]).
    prefill_chunk: usize,
}

/// Positions per pass unless configured: a pass's activations grow with its positions (for
/// Qwen2.5-Coder-1.5B ~70 KB a position in the MLP alone, ~1.2 GB at 16,384), so a long
/// prompt runs in pieces of this many, which keeps memory bounded and costs nothing
/// measurable (the weights are read once per 512 positions instead of once per prompt).
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

/// The largest `prefill_chunk` a config may set.
pub const MAX_PREFILL_CHUNK: usize = 1 << 16;

impl CpuNetwork {
    /// Load and shape-check every tensor of `cfg` from `store`. Quantised GGUF tensors stay
    /// in their file form; unquantised ones are kept as `f32`, or, for the `fast` precision,
    /// quantised to Q8_0 where the inputs are a multiple of 32.
    pub fn load(
        cfg: &TransformerConfig,
        store: &WeightStore,
        precision: Precision,
    ) -> Result<Self> {
        let hidden = cfg.hidden_size;
        let matrix = |names: &[(TensorName, usize)], inp: usize| -> Result<QuantMatrix> {
            if let Some(m) = store.quant_matrix(names, inp)? {
                return Ok(m);
            }
            let w = store.load_stacked(names, inp)?;
            let rows = w.len() / inp.max(1);
            dense_matrix(&w, rows, inp, precision, store)
        };
        let linear = |i: usize, l: &LinearParts| -> Result<CpuLinear> {
            Ok(CpuLinear {
                weights: matrix(&l.names(i), l.inp)?,
                bias: match &l.bias {
                    Some(names) => Some(store.load_bias(i, names, &l.parts)?),
                    None => None,
                },
            })
        };
        let [qkv, o, gate_up, down] = block_linears(cfg);
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            blocks.push(CpuBlock {
                attn_norm: store.load(TensorName::Layer(i, LayerTensor::AttnNorm), &[hidden])?,
                qkv: linear(i, &qkv)?,
                o: linear(i, &o)?,
                ffn_norm: store.load(TensorName::Layer(i, LayerTensor::FfnNorm), &[hidden])?,
                gate_up: linear(i, &gate_up)?,
                down: linear(i, &down)?,
            });
        }
        let vocab = cfg.vocab_size;
        // The lookup dequantises one row exactly whatever the precision, so an unquantised
        // table stays f32.
        let quantized_table = store.quant_matrix(&[(TensorName::Embedding, vocab)], hidden)?;
        let file_blocks = quantized_table.is_some();
        let embedding = match quantized_table {
            Some(m) => m,
            None => {
                let w = store.load(TensorName::Embedding, &[vocab, hidden])?;
                dense_matrix(&w, vocab, hidden, Precision::Exact, store)?
            }
        };
        let head_weights = match (cfg.tied_embeddings, precision) {
            (true, Precision::Fast) if !file_blocks => {
                // An f32 table gets its own quantised copy for the head's product.
                let w = store.load(TensorName::Embedding, &[vocab, hidden])?;
                dense_matrix(&w, vocab, hidden, precision, store)?
            }
            (true, _) => embedding.clone(),
            (false, _) => matrix(&[(TensorName::LmHead, vocab)], hidden)?,
        };
        let lm_head = CpuLinear {
            weights: head_weights,
            bias: None,
        };
        let network = CpuNetwork {
            cfg: cfg.clone(),
            precision,
            embedding,
            blocks,
            final_norm: store.load(TensorName::FinalNorm, &[hidden])?,
            lm_head,
            rope: Rope::new(cfg.head_dim, cfg.rope_theta, cfg.rope_layout),
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
        };
        if precision == Precision::Fast {
            // Repacked for the integer kernels now rather than in the first forward pass.
            for linear in network.linears() {
                linear.weights.prepare_int8();
            }
        }
        Ok(network)
    }

    /// Every linear layer, the head last.
    fn linears(&self) -> impl Iterator<Item = &CpuLinear> {
        self.blocks
            .iter()
            .flat_map(|b| [&b.qkv, &b.o, &b.gate_up, &b.down])
            .chain([&self.lm_head])
    }

    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Run passes of more than `positions` positions (all sequences together) in pieces of at
    /// most that many; clamped to `1..=MAX_PREFILL_CHUNK`. The results do not change: every
    /// position's arithmetic is the same in any pass.
    pub fn set_prefill_chunk(&mut self, positions: usize) {
        self.prefill_chunk = positions.clamp(1, MAX_PREFILL_CHUNK);
    }

    pub fn prefill_chunk(&self) -> usize {
        self.prefill_chunk
    }

    /// An empty KV cache for this network.
    pub fn new_cache(&self) -> HostKvCache {
        HostKvCache::new(self.cfg.n_layers, self.cfg.n_kv_heads, self.cfg.head_dim)
    }

    /// Bytes the linear layers' weights and the LM head take, as the products read them (the
    /// repacked panels at `fast` precision, the file form at `exact`).
    pub fn linear_weight_bytes(&self) -> usize {
        self.linears()
            .map(|l| match self.precision {
                Precision::Fast => l.weights.int8_bytes(),
                Precision::Exact => l.weights.n_bytes(),
            })
            .sum()
    }

    /// Bytes of the embedding table (in its file form).
    pub fn embedding_bytes(&self) -> usize {
        self.embedding.n_bytes()
    }

    /// Feed several independent sequences (each with its own cache and past length) in one
    /// pass: their tokens are stacked so every projection and MLP is one product over all of
    /// them (the weights are read once per layer), while attention runs per sequence over
    /// its own keys. Sequence `i` gets the logits of its last `tails[i]` fed positions (1
    /// for a draft step or a prompt, every position with `usize::MAX`): the vocabulary
    /// projection is the widest product of a pass, and a row nobody reads is never computed.
    /// One output per sequence, in order. On error every cache is left as it was.
    pub fn forward_batch(
        &self,
        seqs: &mut [(&[TokenId], &mut HostKvCache)],
        tails: &[usize],
        attention_layers: &[usize],
    ) -> Result<Vec<CpuOutput>> {
        if seqs.is_empty() || seqs.iter().any(|(t, _)| t.is_empty()) {
            return Err(HlmError::Model("forward needs at least one token".into()));
        }
        if tails.len() != seqs.len() {
            return Err(HlmError::Model(format!(
                "{} logit tails for {} sequences",
                tails.len(),
                seqs.len()
            )));
        }
        let pasts: Vec<usize> = seqs.iter().map(|(_, c)| c.len()).collect();
        // The whole pass runs on the decoder's pool, so that each product's split over the
        // cores is a work-stealing join between threads that are already awake, not a wake-up
        // of the pool and of the caller per product.
        let mut run = || self.forward_in_pieces(seqs, tails, attention_layers);
        let out = match pool() {
            Some(pool) => pool.install(run),
            None => run(),
        };
        if out.is_err() {
            for ((_, cache), &past) in seqs.iter_mut().zip(&pasts) {
                cache.truncate(past);
            }
        }
        out
    }

    /// The passes of [`CpuNetwork::forward_batch`], each of at most `prefill_chunk`
    /// positions: sequences are packed in order, and one longer than a pass is split (a
    /// sequence never appears twice in one pass, since its first piece then filled it).
    /// Each pass commits its positions, so the next one attends to them, and computes the
    /// logits of the wanted tail positions that fall in it.
    fn forward_in_pieces(
        &self,
        seqs: &mut [(&[TokenId], &mut HostKvCache)],
        tails: &[usize],
        attention_layers: &[usize],
    ) -> Result<Vec<CpuOutput>> {
        let chunk = self.prefill_chunk;
        let lens: Vec<usize> = seqs.iter().map(|(t, _)| t.len()).collect();
        // The first position of each sequence that gets logits.
        let wanted_from: Vec<usize> = lens
            .iter()
            .zip(tails)
            .map(|(&len, &tail)| len - tail.min(len))
            .collect();
        // (sequence, token range) of every pass.
        let mut passes: Vec<Vec<(usize, std::ops::Range<usize>)>> = vec![Vec::new()];
        let mut filled = 0;
        for (i, (tokens, _)) in seqs.iter().enumerate() {
            let mut start = 0;
            while start < tokens.len() {
                let end = tokens.len().min(start + chunk);
                if filled + (end - start) > chunk {
                    passes.push(Vec::new());
                    filled = 0;
                }
                filled += end - start;
                passes
                    .last_mut()
                    .expect("one pass at least")
                    .push((i, start..end));
                start = end;
            }
        }
        let mut outputs: Vec<CpuOutput> = (0..seqs.len())
            .map(|_| CpuOutput {
                logits: Vec::new(),
                attention: Vec::new(),
            })
            .collect();
        for pass in &passes {
            let mut members: Vec<(&[TokenId], &mut HostKvCache)> = Vec::with_capacity(pass.len());
            let mut member_tails = Vec::with_capacity(pass.len());
            let mut next = pass.iter().peekable();
            for (i, (tokens, cache)) in seqs.iter_mut().enumerate() {
                if let Some((_, range)) = next.next_if(|(j, _)| *j == i) {
                    let tokens: &[TokenId] = tokens;
                    members.push((&tokens[range.clone()], &mut **cache));
                    // The wanted positions are a suffix: those in this piece are its last ones.
                    member_tails.push(range.end - range.start.max(wanted_from[i]).min(range.end));
                }
            }
            let outs = self.forward_uncommitted(&mut members, &member_tails, attention_layers)?;
            for ((tokens, cache), (&(i, ref range), out)) in
                members.iter_mut().zip(pass.iter().zip(outs))
            {
                cache.commit(cache.len() + tokens.len());
                let whole = &mut outputs[i];
                let ends_sequence = range.end == lens[i];
                whole.logits.extend(out.logits);
                if ends_sequence {
                    whole.attention = out.attention;
                }
            }
        }
        Ok(outputs)
    }

    /// One pass; sequence `j` gets the logits of its last `tails[j]` positions (at most its
    /// length).
    fn forward_uncommitted(
        &self,
        seqs: &mut [(&[TokenId], &mut HostKvCache)],
        tails: &[usize],
        attention_layers: &[usize],
    ) -> Result<Vec<CpuOutput>> {
        let cfg = &self.cfg;
        let (hidden, d) = (cfg.hidden_size, cfg.head_dim);
        let (q_dim, kv_dim) = (cfg.n_heads * d, cfg.n_kv_heads * d);
        let qkv_width = q_dim + 2 * kv_dim;
        let all: Vec<TokenId> = seqs.iter().flat_map(|(t, _)| t.iter().copied()).collect();
        let n = all.len();
        let mut x = self.embed(&all)?;
        // Per sequence: its first row in the stack, its length and past, RoPE tables.
        let mut layout = Vec::with_capacity(seqs.len());
        let mut offset = 0;
        for (tokens, cache) in seqs.iter() {
            let (cos, sin) = self.rope.table(cache.len(), tokens.len());
            layout.push((offset, tokens.len(), cache.len(), cos, sin));
            offset += tokens.len();
        }
        let shape = AttentionShape {
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: d,
        };
        let mut attention: Vec<Vec<LayerAttention>> = vec![Vec::new(); seqs.len()];
        let mut h = vec![0.0f32; n * hidden];
        let mut mixed = vec![0.0f32; n * q_dim];
        let mut gated = vec![0.0f32; n * cfg.intermediate_size];
        let half = d / 2;
        for (i, block) in self.blocks.iter().enumerate() {
            ops::rms_norm(&x, &block.attn_norm, cfg.rms_eps, &mut h);
            let mut qkv = block.qkv.forward(&h, n, self.precision)?;
            let want = attention_layers.contains(&i);
            for (j, (_, cache)) in seqs.iter_mut().enumerate() {
                let (off, seq, past, cos, sin) = &layout[j];
                let rows = &mut qkv[off * qkv_width..(off + seq) * qkv_width];
                for (t, row) in rows.chunks_exact_mut(qkv_width).enumerate() {
                    let (c, s) = (
                        &cos[t * half..(t + 1) * half],
                        &sin[t * half..(t + 1) * half],
                    );
                    ops::rope(&mut row[..q_dim + kv_dim], d, c, s, cfg.rope_layout);
                    cache.append(i, &row[q_dim..q_dim + kv_dim], &row[q_dim + kv_dim..]);
                }
                let (keys, values) = cache.layer(i);
                let queries = Queries {
                    rows,
                    stride: qkv_width,
                    seq: *seq,
                };
                let context = Context {
                    keys,
                    values,
                    past: *past,
                };
                let out = &mut mixed[off * q_dim..(off + seq) * q_dim];
                let probs = attend(shape, queries, context, want, out);
                if let Some(heads) = probs {
                    attention[j].push(LayerAttention { layer: i, heads });
                }
            }
            let o = block.o.forward(&mixed, n, self.precision)?;
            add(&mut x, &o);
            ops::rms_norm(&x, &block.ffn_norm, cfg.rms_eps, &mut h);
            let gate_up = block.gate_up.forward(&h, n, self.precision)?;
            ops::swiglu(&gate_up, cfg.intermediate_size, &mut gated);
            let down = block.down.forward(&gated, n, self.precision)?;
            add(&mut x, &down);
        }
        // The rows that get logits: the last `tails[j]` of each sequence.
        let tails: Vec<usize> = layout
            .iter()
            .zip(tails)
            .map(|((_, seq, ..), &tail)| tail.min(*seq))
            .collect();
        let picked: Vec<f32> = layout
            .iter()
            .zip(&tails)
            .flat_map(|((off, seq, ..), tail)| {
                x[(off + seq - tail) * hidden..(off + seq) * hidden].iter()
            })
            .copied()
            .collect();
        let n_rows = picked.len() / hidden;
        let logits = if n_rows == 0 {
            Vec::new()
        } else {
            let mut normed = vec![0.0f32; picked.len()];
            ops::rms_norm(&picked, &self.final_norm, cfg.rms_eps, &mut normed);
            self.lm_head.forward(&normed, n_rows, self.precision)?
        };
        let vocab = cfg.vocab_size;
        let mut rows = logits.chunks_exact(vocab).map(<[f32]>::to_vec);
        Ok(tails
            .iter()
            .zip(attention)
            .map(|(&tail, attention)| CpuOutput {
                logits: rows.by_ref().take(tail).collect(),
                attention,
            })
            .collect())
    }

    /// Embedding rows of `tokens`: `[tokens, hidden]`.
    fn embed(&self, tokens: &[TokenId]) -> Result<Vec<f32>> {
        let hidden = self.cfg.hidden_size;
        let mut rows = vec![0.0f32; tokens.len() * hidden];
        for (&t, row) in tokens.iter().zip(rows.chunks_exact_mut(hidden)) {
            self.embedding.row_into(t as usize, row).ok_or_else(|| {
                HlmError::Model(format!(
                    "token id {t} is outside the vocabulary of {}",
                    self.cfg.vocab_size
                ))
            })?;
        }
        Ok(rows)
    }
}

/// The CPU decoder's threads, one per core; `None` if they could not be started (the
/// passes then run from the calling thread on rayon's global pool).
fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("hlm-cpu-{i}"))
            .build()
            .map_err(|e| tracing::warn!("cannot start the CPU decoder's threads: {e}"))
            .ok()
    })
    .as_ref()
}

/// `x += y`.
fn add(x: &mut [f32], y: &[f32]) {
    for (x, y) in x.iter_mut().zip(y) {
        *x += y;
    }
}

/// Row-major `[rows, inp]` `f32` weights as a [`QuantMatrix`]: Q8_0 blocks for the `fast`
/// precision when `inp` is a multiple of 32, else F32 rows.
fn dense_matrix(
    w: &[f32],
    rows: usize,
    inp: usize,
    precision: Precision,
    store: &WeightStore,
) -> Result<QuantMatrix> {
    let q8 = match precision {
        // Blocks must not straddle rows.
        Precision::Fast if inp.is_multiple_of(32) => quantize_q8_0(w),
        _ => None,
    };
    let (ty, bytes) = match q8 {
        Some(bytes) => (GgmlType::Q8_0, bytes),
        None => (
            GgmlType::F32,
            w.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
    };
    let mut m = QuantMatrix::new(inp);
    m.push(ty, SharedBytes::from(bytes), rows).map_err(|e| {
        HlmError::Model(format!(
            "{}: a weight of {rows} x {inp}: {e}",
            store.origin().display()
        ))
    })?;
    Ok(m)
}

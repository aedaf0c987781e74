//! [`Transformer`]: a loaded model with its KV state, usable as draft and as target.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};
use hlm_core::{
    AttentionMap, DraftModel, DraftStep, HlmError, LanguageModel, LayerAttention, LayerSelection,
    NextTokenLogits, Result, TargetModel, TextTokenizer, TokenId, WeightsKey,
};

use super::config::TransformerConfig;
use super::cpu::{CpuNetwork, DEFAULT_PREFILL_CHUNK, HostKvCache, MAX_PREFILL_CHUNK};
use super::kv_cache::KvCache;
use super::model::{LogitRows, Network, WeightLayout};
use super::precision::Precision;
use super::tokenizer::load_tokenizer;
use super::weights::{SafetensorsFiles, WeightStore};
use crate::gguf::GgufFile;
use crate::logits::DeviceLogits;

/// Where a model's files are, once a path has been classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelFiles {
    /// One GGUF file (weights, config and tokenizer).
    Gguf(PathBuf),
    /// A Hugging Face folder: `config.json`, safetensors, optional `tokenizer.json`.
    HfFolder(PathBuf),
}

impl ModelFiles {
    /// Classify `path`: a `.gguf` file, a HF folder (has `config.json`), or a folder holding
    /// exactly one `.gguf` file.
    pub fn classify(path: &Path) -> Result<Self> {
        if path.is_file() {
            // A file of a HF checkpoint stands for its folder.
            let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase());
            let in_hf_folder = name.is_some_and(|n| {
                n == "config.json"
                    || n.ends_with(".safetensors")
                    || n.ends_with(".safetensors.index.json")
            });
            if in_hf_folder && let Some(folder) = path.parent() {
                return Ok(ModelFiles::HfFolder(folder.to_path_buf()));
            }
            return Ok(ModelFiles::Gguf(path.to_path_buf()));
        }
        if !path.is_dir() {
            return Err(HlmError::Model(format!(
                "{}: no such model file or folder",
                path.display()
            )));
        }
        if path.join("config.json").is_file() {
            return Ok(ModelFiles::HfFolder(path.to_path_buf()));
        }
        let entries = std::fs::read_dir(path).map_err(|source| HlmError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut ggufs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
            })
            .collect();
        match ggufs.len() {
            1 => Ok(ModelFiles::Gguf(ggufs.remove(0))),
            0 => Err(HlmError::Model(format!(
                "{}: folder has neither config.json (Hugging Face) nor a .gguf file",
                path.display()
            ))),
            n => {
                ggufs.sort();
                let names: Vec<String> = ggufs.iter().map(|p| p.display().to_string()).collect();
                Err(HlmError::Model(format!(
                    "{}: folder holds {n} .gguf files ({}); name one of them",
                    path.display(),
                    names.join(", ")
                )))
            }
        }
    }

    /// The file or folder.
    pub fn path(&self) -> &Path {
        match self {
            ModelFiles::Gguf(p) | ModelFiles::HfFolder(p) => p,
        }
    }
}

/// A network whose weights are shared between sessions, with one sequence's KV state: the CPU
/// decoder on the CPU, burn's network on a GPU (or on flex, explicitly, for comparisons).
enum Decoder {
    Cpu {
        net: Arc<CpuNetwork>,
        cache: HostKvCache,
    },
    Burn {
        net: Arc<Network>,
        cache: KvCache,
        /// Most positions one pass computes (longer feeds run in pieces, as on the CPU).
        chunk: usize,
    },
}

impl Decoder {
    fn config(&self) -> &TransformerConfig {
        match self {
            Decoder::Cpu { net, .. } => net.config(),
            Decoder::Burn { net, .. } => net.config(),
        }
    }

    fn context_len(&self) -> usize {
        match self {
            Decoder::Cpu { cache, .. } => cache.len(),
            Decoder::Burn { cache, .. } => cache.len(),
        }
    }

    fn truncate(&mut self, len: usize) {
        match self {
            Decoder::Cpu { cache, .. } => cache.truncate(len),
            Decoder::Burn { cache, .. } => cache.truncate(len),
        }
    }

    /// The same weights with an empty KV state.
    fn fork(&self) -> Decoder {
        match self {
            Decoder::Cpu { net, .. } => Decoder::Cpu {
                net: Arc::clone(net),
                cache: net.new_cache(),
            },
            Decoder::Burn { net, chunk, .. } => Decoder::Burn {
                net: Arc::clone(net),
                cache: KvCache::new(net.config().n_layers),
                chunk: *chunk,
            },
        }
    }

    /// The weights this decoder runs on: decoders with one key share a batched pass.
    fn weights_key(&self) -> WeightsKey {
        match self {
            Decoder::Cpu { net, .. } => WeightsKey::of(net),
            Decoder::Burn { net, .. } => WeightsKey::of(net),
        }
    }

    fn linear_weight_bytes(&self) -> usize {
        match self {
            Decoder::Cpu { net, .. } => net.linear_weight_bytes(),
            Decoder::Burn { net, .. } => net.linear_weight_bytes(),
        }
    }

    /// Where it runs, for descriptions.
    fn location(&self) -> String {
        match self {
            Decoder::Cpu { net, .. } => format!("the CPU ({} precision)", net.precision()),
            Decoder::Burn { net, .. } => format!("{:?}", net.device()),
        }
    }

    /// Feed `tokens`; the next-token logits after the last of them and the newest position's
    /// attention for `layers`.
    fn step(
        &mut self,
        tokens: &[TokenId],
        layers: &[usize],
    ) -> Result<(Box<dyn NextTokenLogits>, Vec<LayerAttention>)> {
        match self {
            Decoder::Cpu { net, cache } => {
                let mut out = net.forward_batch(&mut [(tokens, cache)], &[1], layers)?;
                let out = out.pop().ok_or_else(no_output)?;
                let logits: Arc<[f32]> =
                    out.logits.into_iter().next().ok_or_else(no_output)?.into();
                // The filter's queries run on flex (their rows split over the cores); the host
                // copy is kept, so an upload reads nothing back.
                let tensor = Tensor::from_data(
                    TensorData::new(logits.to_vec(), [logits.len()]),
                    &Device::flex(),
                );
                Ok((
                    Box::new(DeviceLogits::with_host(tensor, logits)),
                    out.attention,
                ))
            }
            Decoder::Burn { net, cache, chunk } => {
                // A long feed (a prompt) runs in pieces; only the last piece's last position
                // gets logits and attention.
                let past = cache.len();
                let (head, last) = tokens.split_at(tokens.len() - tokens.len().min(*chunk));
                let out = head
                    .chunks(*chunk)
                    .try_for_each(|piece| net.forward(piece, cache, LogitRows::Last, &[]).map(drop))
                    .and_then(|()| net.forward(last, cache, LogitRows::LastOnDevice, layers));
                let out = out.inspect_err(|_| cache.truncate(past))?;
                let logits = out.device_logits.ok_or_else(no_output)?;
                Ok((Box::new(DeviceLogits::new(logits)), out.attention))
            }
        }
    }

    /// Feed `tokens`; the logits after each of the last `tail` of them.
    fn forward_tail(&mut self, tokens: &[TokenId], tail: usize) -> Result<Vec<Vec<f32>>> {
        match self {
            Decoder::Cpu { net, cache } => {
                let mut out = net.forward_batch(&mut [(tokens, cache)], &[tail], &[])?;
                Ok(out.pop().ok_or_else(no_output)?.logits)
            }
            Decoder::Burn { net, cache, chunk } => burn_pieces(net, cache, tokens, tail, *chunk),
        }
    }
}

/// [`Decoder::forward_tail`] on burn: passes of at most `chunk` positions (a pass's attention
/// scores grow with its positions times the context), logits only where the tail falls. On
/// error the cache is back where it was.
fn burn_pieces(
    net: &Network,
    cache: &mut KvCache,
    tokens: &[TokenId],
    tail: usize,
    chunk: usize,
) -> Result<Vec<Vec<f32>>> {
    let past = cache.len();
    let wanted_from = tokens.len() - tail.min(tokens.len());
    let mut logits = Vec::with_capacity(tail.min(tokens.len()));
    let chunk = chunk.max(1);
    let mut run = || -> Result<()> {
        for (k, piece) in tokens.chunks(chunk).enumerate() {
            let start = k * chunk;
            let end = start + piece.len();
            if end <= wanted_from {
                net.forward(piece, cache, LogitRows::Last, &[])?;
            } else {
                let rows = net.forward(piece, cache, LogitRows::All, &[])?.logits;
                let skip = wanted_from.saturating_sub(start);
                logits.extend(rows.into_iter().skip(skip));
            }
        }
        Ok(())
    };
    match run() {
        Ok(()) => Ok(logits),
        Err(e) => {
            cache.truncate(past);
            Err(e)
        }
    }
}

fn no_output() -> HlmError {
    HlmError::Model("forward returned no logits".into())
}

/// A LLaMA-family decoder (LLaMA, SmolLM, Qwen2) with its KV state: on the CPU hlm's own
/// decoder ([`super::cpu`]), on a GPU burn's ([`super::model`]).
pub struct Transformer {
    /// The weights are shared by [`TargetModel::fork`]s: one copy for every session.
    decoder: Decoder,
    max_context: usize,
    tokenizer: Option<Arc<dyn TextTokenizer>>,
    description: String,
}

impl Transformer {
    /// Load a model from a `.gguf` file, a HF folder or a folder with one `.gguf` file, at
    /// the default [`Precision`].
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::load_with(path, device, Precision::default())
    }

    /// [`Transformer::load`] at a given precision. On the CPU (`Device::flex()`) the model
    /// runs on the CPU decoder, a GGUF model's weights in their file form; on a GPU on burn,
    /// `exact` with `f32` weights and `fast` with 8-bit blocks ([`WeightLayout`]).
    pub fn load_with(path: &Path, device: &Device, precision: Precision) -> Result<Self> {
        let OpenedModel {
            cfg,
            store,
            tokenizer,
            origin,
        } = open_model(&ModelFiles::classify(path)?)?;
        let decoder = if *device == Device::flex() {
            let net = CpuNetwork::load(&cfg, &store, precision)?;
            Decoder::Cpu {
                cache: net.new_cache(),
                net: Arc::new(net),
            }
        } else {
            let layout = match (precision, &store) {
                (Precision::Fast, WeightStore::Gguf(_)) => WeightLayout::Auto,
                _ => WeightLayout::Dense,
            };
            burn_decoder(Network::load(&cfg, &store, device, layout)?)
        };
        Ok(Self::assemble(decoder, tokenizer, &origin))
    }

    /// burn's network on any device, `flex` included, with an explicit [`WeightLayout`]: the
    /// GPU path, and on the CPU an independent implementation to check the CPU decoder with.
    pub fn load_on_burn(path: &Path, device: &Device, layout: WeightLayout) -> Result<Self> {
        let OpenedModel {
            cfg,
            store,
            tokenizer,
            origin,
        } = open_model(&ModelFiles::classify(path)?)?;
        let layout = match store {
            WeightStore::Gguf(_) => layout,
            WeightStore::Safetensors(_) => WeightLayout::Dense,
        };
        let decoder = burn_decoder(Network::load(&cfg, &store, device, layout)?);
        Ok(Self::assemble(decoder, tokenizer, &origin))
    }

    fn assemble(
        decoder: Decoder,
        tokenizer: Option<Arc<dyn TextTokenizer>>,
        origin: &Path,
    ) -> Self {
        let cfg = decoder.config();
        // The folder names the model when the file has a generic name (`<name>/model.gguf`
        // in the models folder); clients match on it (`expect_model`).
        let file = origin.file_name().map_or_else(
            || origin.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let name = match origin.parent().and_then(|p| p.file_name()) {
            Some(parent) if origin.is_file() => format!("{}/{file}", parent.to_string_lossy()),
            _ => file,
        };
        let description = format!(
            "{name} ({:?}, {} layers, hidden {}, {}/{} heads, vocab {}) on {}",
            cfg.family,
            cfg.n_layers,
            cfg.hidden_size,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.vocab_size,
            decoder.location()
        );
        Transformer {
            max_context: cfg.max_context,
            decoder,
            tokenizer,
            description,
        }
    }

    /// Lower the context limit (e.g. to bound memory); it never rises above the model's own.
    pub fn with_max_context(mut self, max_context: usize) -> Self {
        self.max_context = max_context.min(self.decoder.config().max_context).max(1);
        self
    }

    /// Run passes of more than `positions` positions in pieces (see
    /// [`CpuNetwork::set_prefill_chunk`]; burn's network likewise), to bound a long prompt's
    /// memory. Set it before sessions share the weights ([`TargetModel::fork`]).
    pub fn with_prefill_chunk(mut self, positions: usize) -> Result<Self> {
        match &mut self.decoder {
            Decoder::Cpu { net, .. } => Arc::get_mut(net)
                .ok_or_else(|| {
                    HlmError::Model(
                        "prefill_chunk must be set before sessions share the model's weights"
                            .into(),
                    )
                })?
                .set_prefill_chunk(positions),
            Decoder::Burn { chunk, .. } => *chunk = positions.clamp(1, MAX_PREFILL_CHUNK),
        }
        Ok(self)
    }

    /// Most positions one pass computes.
    pub fn prefill_chunk(&self) -> usize {
        match &self.decoder {
            Decoder::Cpu { net, .. } => net.prefill_chunk(),
            Decoder::Burn { chunk, .. } => *chunk,
        }
    }

    /// Bytes the linear weights take where they live (see [`WeightLayout`]).
    pub fn linear_weight_bytes(&self) -> usize {
        self.decoder.linear_weight_bytes()
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &TransformerConfig {
        self.decoder.config()
    }

    fn check_feed(&self, tokens: &[TokenId]) -> Result<()> {
        if tokens.is_empty() {
            return Err(HlmError::Model("forward needs at least one token".into()));
        }
        let requested = self.decoder.context_len() + tokens.len();
        if requested > self.max_context {
            return Err(HlmError::ContextOverflow {
                requested,
                max: self.max_context,
            });
        }
        Ok(())
    }

    fn rollback(&mut self, len: usize) -> Result<()> {
        let available = self.decoder.context_len();
        if len > available {
            return Err(HlmError::Rollback {
                requested: len,
                available,
            });
        }
        self.decoder.truncate(len);
        Ok(())
    }
}

/// A model's files, opened: its config, weights, tokenizer and where they came from.
struct OpenedModel {
    cfg: TransformerConfig,
    store: WeightStore,
    tokenizer: Option<Arc<dyn TextTokenizer>>,
    origin: PathBuf,
}

fn open_model(files: &ModelFiles) -> Result<OpenedModel> {
    match files {
        ModelFiles::Gguf(path) => {
            let file = GgufFile::open(path)?;
            let cfg = TransformerConfig::from_gguf(&file)?;
            // The tokenizer is a `tokenizer.json` beside the file, else the embedded one.
            let tokenizer = load_tokenizer(path, Some(&file), cfg.vocab_size)?;
            Ok(OpenedModel {
                cfg,
                store: WeightStore::Gguf(file),
                tokenizer,
                origin: path.clone(),
            })
        }
        ModelFiles::HfFolder(folder) => {
            let cfg = TransformerConfig::from_hf_json(&folder.join("config.json"))?;
            let store = WeightStore::Safetensors(SafetensorsFiles::open(folder)?);
            let tokenizer = load_tokenizer(folder, None, cfg.vocab_size)?;
            Ok(OpenedModel {
                cfg,
                store,
                tokenizer,
                origin: folder.clone(),
            })
        }
    }
}

fn burn_decoder(net: Network) -> Decoder {
    Decoder::Burn {
        cache: KvCache::new(net.config().n_layers),
        net: Arc::new(net),
        chunk: DEFAULT_PREFILL_CHUNK,
    }
}

impl LanguageModel for Transformer {
    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn context_len(&self) -> usize {
        self.decoder.context_len()
    }

    fn truncate(&mut self, len: usize) -> Result<()> {
        self.rollback(len)
    }

    fn tokenizer(&self) -> Option<Arc<dyn TextTokenizer>> {
        self.tokenizer.clone()
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}

impl DraftModel for Transformer {
    fn forward(
        &mut self,
        tokens: &[TokenId],
        attention: Option<&LayerSelection>,
    ) -> Result<DraftStep> {
        self.check_feed(tokens)?;
        let layers = match attention {
            Some(sel) => sel.resolve(self.config().n_layers)?,
            None => Vec::new(),
        };
        let (logits, layers_attention) = self.decoder.step(tokens, &layers)?;
        Ok(DraftStep {
            logits,
            attention: attention.map(|_| AttentionMap {
                layers: layers_attention,
            }),
        })
    }
}

impl TargetModel for Transformer {
    fn forward_all(&mut self, tokens: &[TokenId]) -> Result<Vec<Vec<f32>>> {
        self.forward_tail(tokens, usize::MAX)
    }

    fn forward_tail(&mut self, tokens: &[TokenId], rows: usize) -> Result<Vec<Vec<f32>>> {
        self.check_feed(tokens)?;
        self.decoder.forward_tail(tokens, rows)
    }

    fn memory_profile(&self) -> Option<hlm_core::MemoryProfile> {
        // burn's network keeps its state on the GPU, in burn's own allocations.
        let Decoder::Cpu { net, .. } = &self.decoder else {
            return None;
        };
        let cfg = self.config();
        let f32s = std::mem::size_of::<f32>() as u64;
        let (hidden, d) = (cfg.hidden_size as u64, cfg.head_dim as u64);
        let (q_dim, kv_dim) = (cfg.n_heads as u64 * d, cfg.n_kv_heads as u64 * d);
        // Per position of a pass: the residual stream, its norm, q|k|v, the attention output,
        // gate|up and their product.
        let activations =
            3 * hidden + q_dim + 2 * kv_dim + q_dim + 3 * cfg.intermediate_size as u64;
        Some(hlm_core::MemoryProfile {
            weight_bytes: (net.linear_weight_bytes() + net.embedding_bytes()) as u64,
            kv_bytes_per_position: HostKvCache::worst_case_bytes(
                cfg.n_layers as u64 * 2 * kv_dim * f32s,
            ),
            kv_positions_per_session_slack: super::cpu::KV_MIN_GROWTH as u64,
            pass_bytes_per_position: activations * f32s,
            // Each head's scores over the context (the heads run in parallel).
            attention_bytes_per_context_position: cfg.n_heads as u64 * f32s,
            pass_positions: Some(self.prefill_chunk()),
            logits_bytes_per_row: cfg.vocab_size as u64 * f32s,
        })
    }

    fn weights_key(&self) -> Option<WeightsKey> {
        Some(self.decoder.weights_key())
    }

    fn forward_tail_with(
        &mut self,
        others: &mut [&mut dyn TargetModel],
        feeds: &[&[TokenId]],
        tails: &[usize],
    ) -> Vec<Result<Vec<Vec<f32>>>> {
        assert!(
            others.len() + 1 == feeds.len() && feeds.len() == tails.len(),
            "one feed and one tail per model"
        );
        let key = self.decoder.weights_key();
        let mut results: Vec<Option<Result<Vec<Vec<f32>>>>> =
            (0..feeds.len()).map(|_| None).collect();
        // The transformers on these weights with a valid feed go into the pass; an invalid
        // feed (empty, over the context) fails alone, and a model of another type or on other
        // weights (a caller that did not group by key) runs alone.
        let mut batch: Vec<(usize, &mut Transformer)> = Vec::with_capacity(feeds.len());
        let mut alone: Vec<(usize, &mut dyn TargetModel)> = Vec::new();
        let this = std::iter::once(self as &mut dyn TargetModel);
        for (i, m) in this.chain(others.iter_mut().map(|m| &mut **m)).enumerate() {
            if m.weights_key() != Some(key) {
                alone.push((i, m));
                continue;
            }
            let Some(t) = m.as_any_mut().and_then(|a| a.downcast_mut::<Transformer>()) else {
                continue;
            };
            match t.check_feed(feeds[i]) {
                Ok(()) => batch.push((i, t)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        if batch.len() == 1 {
            // A pass of one: the unbatched path (it splits a long feed into pieces).
            if let Some((i, t)) = batch.pop() {
                results[i] = Some(t.forward_tail(feeds[i], tails[i]));
            }
        }
        match run_batch(&mut batch, feeds, tails) {
            Ok(outs) => {
                for ((i, _), logits) in batch.iter().zip(outs) {
                    results[*i] = Some(Ok(logits));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for (i, _) in &batch {
                    results[*i] = Some(Err(HlmError::Model(format!("batched pass: {msg}"))));
                }
            }
        }
        for (i, m) in alone {
            results[i] = Some(m.forward_tail(feeds[i], tails[i]));
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(HlmError::Model(
                        "a model with this transformer's weights key is not a transformer".into(),
                    ))
                })
            })
            .collect()
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }

    fn fork(&self) -> Result<Box<dyn TargetModel>> {
        Ok(Box::new(Transformer {
            decoder: self.decoder.fork(),
            max_context: self.max_context,
            tokenizer: self.tokenizer.clone(),
            description: self.description.clone(),
        }))
    }
}

/// One pass over transformers that share their weights; the logits of the last `tails[i]`
/// fed positions of each.
fn run_batch(
    batch: &mut [(usize, &mut Transformer)],
    feeds: &[&[TokenId]],
    tails: &[usize],
) -> Result<Vec<Vec<Vec<f32>>>> {
    let Some((_, first)) = batch.first() else {
        return Ok(Vec::new());
    };
    match &first.decoder {
        Decoder::Cpu { net, .. } => {
            let net = Arc::clone(net);
            let mut seqs: Vec<(&[TokenId], &mut HostKvCache)> = Vec::new();
            let mut seq_tails = Vec::new();
            for (i, t) in batch.iter_mut() {
                if let Decoder::Cpu { cache, .. } = &mut t.decoder {
                    seqs.push((feeds[*i], cache));
                    seq_tails.push(tails[*i]);
                }
            }
            let outs = net.forward_batch(&mut seqs, &seq_tails, &[])?;
            Ok(outs.into_iter().map(|o| o.logits).collect())
        }
        Decoder::Burn { net, chunk, .. } => {
            let (net, chunk) = (Arc::clone(net), *chunk);
            // burn's batched pass is not split into pieces: a batch holding a long feed runs
            // one sequence at a time, in pieces.
            if batch.iter().any(|(i, _)| feeds[*i].len() > chunk) {
                let pasts: Vec<usize> =
                    batch.iter().map(|(_, t)| t.decoder.context_len()).collect();
                let outs: Result<Vec<_>> = batch
                    .iter_mut()
                    .map(|(i, t)| t.decoder.forward_tail(feeds[*i], tails[*i]))
                    .collect();
                if outs.is_err() {
                    // As a batched pass: all or nothing.
                    for ((_, t), &past) in batch.iter_mut().zip(&pasts) {
                        t.decoder.truncate(past);
                    }
                }
                return outs;
            }
            let mut seqs: Vec<(&[TokenId], &mut KvCache)> = Vec::new();
            for (i, t) in batch.iter_mut() {
                if let Decoder::Burn { cache, .. } = &mut t.decoder {
                    seqs.push((feeds[*i], cache));
                }
            }
            let outs = net.forward_batch(&mut seqs, LogitRows::All, &[])?;
            Ok(outs
                .into_iter()
                .zip(batch.iter())
                .map(|(o, (i, _))| {
                    let keep = tails[*i].min(o.logits.len());
                    let mut rows = o.logits;
                    rows.split_off(rows.len() - keep)
                })
                .collect())
        }
    }
}

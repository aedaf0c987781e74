//! [`Transformer`]: a loaded model with its KV state, usable as draft and as target.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::Device;
use hlm_core::{
    AttentionMap, DraftModel, DraftStep, HlmError, LayerSelection, Result, TargetModel,
    TextTokenizer, TokenId,
};

use super::config::TransformerConfig;
use super::kv_cache::KvCache;
use super::model::{LogitRows, Network, WeightLayout};
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

/// A LLaMA-family decoder (LLaMA, SmolLM, Qwen2) loaded on a burn device, with its KV state.
pub struct Transformer {
    /// Shared by [`TargetModel::fork`]s: one copy of the weights for every session.
    network: Arc<Network>,
    cache: KvCache,
    max_context: usize,
    tokenizer: Option<Arc<dyn TextTokenizer>>,
    description: String,
}

impl Transformer {
    /// Load a model from a `.gguf` file, a HF folder or a folder with one `.gguf` file.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        match ModelFiles::classify(path)? {
            ModelFiles::Gguf(file) => Self::from_gguf(&file, device),
            ModelFiles::HfFolder(folder) => Self::from_hf_folder(&folder, device),
        }
    }

    /// Load a GGUF file; the tokenizer is a `tokenizer.json` beside it, else the embedded one.
    /// On the CPU the weights stay quantised in memory ([`WeightLayout::Auto`]).
    pub fn from_gguf(path: &Path, device: &Device) -> Result<Self> {
        Self::from_gguf_with(path, device, WeightLayout::Auto)
    }

    /// [`Transformer::from_gguf`] with an explicit [`WeightLayout`].
    pub fn from_gguf_with(path: &Path, device: &Device, layout: WeightLayout) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let cfg = TransformerConfig::from_gguf(&file)?;
        let tokenizer = load_tokenizer(path, Some(&file), cfg.vocab_size)?;
        let store = WeightStore::Gguf(file);
        let network = Network::load(&cfg, &store, device, layout)?;
        Ok(Self::assemble(network, tokenizer, path))
    }

    /// Load a Hugging Face folder (`config.json`, `model.safetensors` or shards).
    pub fn from_hf_folder(folder: &Path, device: &Device) -> Result<Self> {
        let cfg = TransformerConfig::from_hf_json(&folder.join("config.json"))?;
        let store = WeightStore::Safetensors(SafetensorsFiles::open(folder)?);
        let network = Network::load(&cfg, &store, device, WeightLayout::Dense)?;
        let tokenizer = load_tokenizer(folder, None, cfg.vocab_size)?;
        Ok(Self::assemble(network, tokenizer, folder))
    }

    fn assemble(
        network: Network,
        tokenizer: Option<Arc<dyn TextTokenizer>>,
        origin: &Path,
    ) -> Self {
        let cfg = network.config();
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
            "{name} ({:?}, {} layers, hidden {}, {}/{} heads, vocab {}) on {:?}",
            cfg.family,
            cfg.n_layers,
            cfg.hidden_size,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.vocab_size,
            network.device()
        );
        Transformer {
            cache: KvCache::new(cfg.n_layers),
            max_context: cfg.max_context,
            network: Arc::new(network),
            tokenizer,
            description,
        }
    }

    /// Lower the context limit (e.g. to bound memory); it never rises above the model's own.
    pub fn with_max_context(mut self, max_context: usize) -> Self {
        self.max_context = max_context.min(self.network.config().max_context).max(1);
        self
    }

    /// The model's hyper-parameters.
    /// Bytes the linear weights take where they live (see [`WeightLayout`]).
    pub fn linear_weight_bytes(&self) -> usize {
        self.network.linear_weight_bytes()
    }

    pub fn config(&self) -> &TransformerConfig {
        self.network.config()
    }

    fn check_feed(&self, tokens: &[TokenId]) -> Result<()> {
        if tokens.is_empty() {
            return Err(HlmError::Model("forward needs at least one token".into()));
        }
        let requested = self.cache.len() + tokens.len();
        if requested > self.max_context {
            return Err(HlmError::ContextOverflow {
                requested,
                max: self.max_context,
            });
        }
        Ok(())
    }

    fn rollback(&mut self, len: usize) -> Result<()> {
        if len > self.cache.len() {
            return Err(HlmError::Rollback {
                requested: len,
                available: self.cache.len(),
            });
        }
        self.cache.truncate(len);
        Ok(())
    }
}

impl DraftModel for Transformer {
    fn vocab_size(&self) -> usize {
        self.network.config().vocab_size
    }

    fn n_layers(&self) -> usize {
        self.network.config().n_layers
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn context_len(&self) -> usize {
        self.cache.len()
    }

    fn forward(
        &mut self,
        tokens: &[TokenId],
        attention: Option<&LayerSelection>,
    ) -> Result<DraftStep> {
        self.check_feed(tokens)?;
        let layers = match attention {
            Some(sel) => sel.resolve(self.network.config().n_layers)?,
            None => Vec::new(),
        };
        let out =
            self.network
                .forward(tokens, &mut self.cache, LogitRows::LastOnDevice, &layers)?;
        let logits = out
            .device_logits
            .ok_or_else(|| HlmError::Model("forward returned no logits".into()))?;
        Ok(DraftStep {
            logits: Box::new(DeviceLogits::new(logits)),
            attention: attention.map(|_| AttentionMap {
                layers: out.attention,
            }),
        })
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

impl TargetModel for Transformer {
    fn vocab_size(&self) -> usize {
        self.network.config().vocab_size
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn context_len(&self) -> usize {
        self.cache.len()
    }

    fn forward_all(&mut self, tokens: &[TokenId]) -> Result<Vec<Vec<f32>>> {
        self.check_feed(tokens)?;
        let out = self
            .network
            .forward(tokens, &mut self.cache, LogitRows::All, &[])?;
        Ok(out.logits)
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

    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }

    fn fork(&self) -> Result<Box<dyn TargetModel>> {
        Ok(Box::new(Transformer {
            network: Arc::clone(&self.network),
            cache: KvCache::new(self.network.config().n_layers),
            max_context: self.max_context,
            tokenizer: self.tokenizer.clone(),
            description: self.description.clone(),
        }))
    }
}

/// Run `forward_all` for several target models in one pass when they are [`Transformer`]s that
/// share their weights (forks of one model, as a server's sessions are); otherwise one pass per
/// model. One result per model: a model whose feed is invalid (empty, over its context) fails
/// alone before the batch runs.
pub fn forward_all_batch(
    models: &mut [&mut dyn TargetModel],
    feeds: &[&[TokenId]],
) -> Vec<Result<Vec<Vec<f32>>>> {
    let mut results: Vec<Option<Result<Vec<Vec<f32>>>>> = (0..models.len()).map(|_| None).collect();
    // Transformers on one network, with a valid feed, go into the batch.
    let mut batch: Vec<(usize, &mut Transformer)> = Vec::new();
    let mut network: Option<Arc<Network>> = None;
    for (i, m) in models.iter_mut().enumerate() {
        let Some(t) = m.as_any_mut().and_then(|a| a.downcast_mut::<Transformer>()) else {
            continue;
        };
        if let Err(e) = t.check_feed(feeds[i]) {
            results[i] = Some(Err(e));
            continue;
        }
        let same = network.get_or_insert_with(|| Arc::clone(&t.network));
        if Arc::ptr_eq(same, &t.network) {
            batch.push((i, t));
        }
    }
    if batch.len() > 1
        && let Some(net) = network
    {
        let mut seqs: Vec<(&[TokenId], &mut KvCache)> = batch
            .iter_mut()
            .map(|(i, t)| (feeds[*i], &mut t.cache))
            .collect();
        match net.forward_batch(&mut seqs, LogitRows::All, &[]) {
            Ok(outs) => {
                for ((i, _), out) in batch.iter().zip(outs) {
                    results[*i] = Some(Ok(out.logits));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for (i, _) in &batch {
                    results[*i] = Some(Err(HlmError::Model(format!("batched pass: {msg}"))));
                }
            }
        }
    }
    models
        .iter_mut()
        .zip(results)
        .zip(feeds)
        .map(|((m, r), feed)| r.unwrap_or_else(|| m.forward_all(feed)))
        .collect()
}

//! [`TextTokenizer`] over the `tokenizers` crate: from a `tokenizer.json` next to the model,
//! or rebuilt from the GGUF vocabulary: `tokenizer.ggml.model = gpt2` (byte-level BPE with
//! merges: Qwen2, SmolLM, LLaMA-3) or `llama` (SentencePiece with scores: LLaMA-2,
//! TinyLlama, Mistral).

use std::path::Path;
use std::sync::Arc;

use hlm_core::{HlmError, Result, TextTokenizer, TokenId};
use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::normalizers::prepend::Prepend;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::utils::Sequence as NormalizerSequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::gguf::GgufFile;

/// GGUF `token_type` of control tokens (`<|im_start|>`, `<|endoftext|>`, ...).
const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF `token_type` of user-defined tokens, matched in text as a whole like control ones.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The split regex of Qwen2's pre-tokenizer (from its `tokenizer.json`, llama.cpp `qwen2`).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// LLaMA-3's (llama.cpp `llama-bpe`): like Qwen2 but digits in runs of up to three.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A byte-level BPE tokenizer with the model's special ids.
pub struct BpeTokenizer {
    inner: Tokenizer,
    /// Let the tokenizer's own post-processor add special tokens (a `tokenizer.json` that
    /// asks for BOS carries it there).
    post_process: bool,
    /// Prepended by hand when GGUF metadata asks for it.
    bos: Option<TokenId>,
    eos: Vec<TokenId>,
    vocab_size: usize,
    fingerprint: u64,
}

impl BpeTokenizer {
    fn new(
        inner: Tokenizer,
        post_process: bool,
        bos: Option<TokenId>,
        eos: Vec<TokenId>,
        model_vocab: usize,
    ) -> Self {
        let fingerprint = vocabulary_fingerprint(&inner);
        let vocab_size = model_vocab.max(inner.get_vocab_size(true));
        BpeTokenizer {
            inner,
            post_process,
            bos,
            eos,
            vocab_size,
            fingerprint,
        }
    }

    /// Load a Hugging Face `tokenizer.json`; `eos` come from the model's config.
    pub fn from_json_file(path: &Path, eos: Vec<TokenId>, model_vocab: usize) -> Result<Self> {
        let inner = Tokenizer::from_file(path).map_err(|e| {
            HlmError::Model(format!("{}: cannot load tokenizer: {e}", path.display()))
        })?;
        Ok(Self::new(inner, true, None, eos, model_vocab))
    }

    /// Rebuild the tokenizer stored in a GGUF file. `Ok(None)` when the file has none or its
    /// model type is neither `gpt2` (byte-level BPE) nor `llama` (SentencePiece).
    pub fn from_gguf(file: &GgufFile, model_vocab: usize) -> Result<Option<Self>> {
        let path = file.path();
        if !file.has_key("tokenizer.ggml.model") {
            return Ok(None);
        }
        let kind = file.get_str("tokenizer.ggml.model")?;
        let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
        let mut inner = match kind {
            "gpt2" => byte_level_bpe(file, tokens)?,
            "llama" => sentencepiece_bpe(file, tokens)?,
            other => {
                tracing::warn!(
                    "{}: tokenizer model '{other}' is not supported (gpt2 byte-level BPE and \
                     llama SentencePiece are); the model will have no tokenizer",
                    path.display()
                );
                return Ok(None);
            }
        };
        let token_types = if file.has_key("tokenizer.ggml.token_type") {
            file.get_i32_array("tokenizer.ggml.token_type")?
        } else {
            Vec::new()
        };
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(token_types.iter())
            .filter(|(_, ty)| matches!(**ty, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED))
            .map(|(t, ty)| AddedToken::from(t.clone(), *ty == TOKEN_TYPE_CONTROL).normalized(false))
            .collect();
        inner.add_special_tokens(&added);
        let id_key = |key: &str| -> Result<Option<TokenId>> {
            if file.has_key(key) {
                Ok(Some(file.get_u32(key)?))
            } else {
                Ok(None)
            }
        };
        let add_bos = file.has_key("tokenizer.ggml.add_bos_token")
            && file.get_bool("tokenizer.ggml.add_bos_token")?;
        let bos = if add_bos {
            Some(id_key("tokenizer.ggml.bos_token_id")?.ok_or_else(|| {
                HlmError::Model(format!(
                    "{}: add_bos_token is set but tokenizer.ggml.bos_token_id is missing",
                    path.display()
                ))
            })?)
        } else {
            None
        };
        let eos = gguf_eos(file)?;
        Ok(Some(Self::new(inner, false, bos, eos, model_vocab)))
    }
}

fn vocab_of(tokens: &[String]) -> tokenizers::models::bpe::Vocab {
    tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), id as u32))
        .collect()
}

/// `tokenizer.ggml.model = gpt2`: byte-level BPE from the vocabulary and merges, with the
/// pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre`.
fn byte_level_bpe(file: &GgufFile, tokens: &[String]) -> Result<Tokenizer> {
    let path = file.path();
    let merges: Vec<(String, String)> = file
        .get_str_array("tokenizer.ggml.merges")?
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    HlmError::Model(format!(
                        "{}: tokenizer.ggml.merges[{i}] = {m:?} is not two tokens separated by a space",
                        path.display()
                    ))
                })
        })
        .collect::<Result<_>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab_of(tokens), merges)
        .build()
        .map_err(|e| HlmError::Model(format!("{}: invalid BPE vocabulary: {e}", path.display())))?;
    let mut inner = Tokenizer::new(bpe);
    let pre = if file.has_key("tokenizer.ggml.pre") {
        file.get_str("tokenizer.ggml.pre")?
    } else {
        "default"
    };
    inner.with_pre_tokenizer(Some(pre_tokenizer(pre, path)?));
    inner.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
    Ok(inner)
}

/// SentencePiece's word-boundary mark, which stands for a space.
const SPACE_MARK: &str = "\u{2581}";

/// `tokenizer.ggml.model = llama`: a SentencePiece vocabulary with scores, as BPE the way
/// Hugging Face converts it (`LlamaConverter`): a merge for every token that splits into two
/// tokens, ranked by the merged token's score; spaces become `▁` and one is prepended
/// (unless `tokenizer.ggml.add_space_prefix` is false); bytes without a token fall back to
/// the `<0xNN>` tokens.
fn sentencepiece_bpe(file: &GgufFile, tokens: &[String]) -> Result<Tokenizer> {
    let path = file.path();
    let scores = file.get_f32_array("tokenizer.ggml.scores")?;
    if scores.len() != tokens.len() {
        return Err(HlmError::Model(format!(
            "{}: tokenizer.ggml.scores has {} entries for {} tokens",
            path.display(),
            scores.len(),
            tokens.len()
        )));
    }
    let vocab = vocab_of(tokens);
    let mut merges: Vec<(u32, u32, f32)> = Vec::new();
    for (piece, &score) in tokens.iter().zip(&scores) {
        let mut local: Vec<(u32, u32, f32)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (l, r) = piece.split_at(at);
                Some((*vocab.get(l)?, *vocab.get(r)?, score))
            })
            .collect();
        local.sort_by_key(|&(l, r, _)| (l, r));
        merges.extend(local);
    }
    // Stable: equal scores keep the order above, as in the Python converter.
    merges.sort_by(|a, b| b.2.total_cmp(&a.2));
    let merges: Vec<(String, String)> = merges
        .into_iter()
        .map(|(l, r, _)| (tokens[l as usize].clone(), tokens[r as usize].clone()))
        .collect();
    let unk = if file.has_key("tokenizer.ggml.unknown_token_id") {
        let id = file.get_u32("tokenizer.ggml.unknown_token_id")? as usize;
        tokens.get(id).cloned()
    } else {
        None
    };
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe = builder.build().map_err(|e| {
        HlmError::Model(format!(
            "{}: invalid SentencePiece vocabulary: {e}",
            path.display()
        ))
    })?;
    let mut inner = Tokenizer::new(bpe);
    let space_prefix = !file.has_key("tokenizer.ggml.add_space_prefix")
        || file.get_bool("tokenizer.ggml.add_space_prefix")?;
    let replace = |from: &str, to: &str| {
        Replace::new(from, to)
            .map_err(|e| HlmError::Model(format!("{}: tokenizer: {e}", path.display())))
    };
    let mut normalizers = Vec::new();
    if space_prefix {
        normalizers.push(NormalizerWrapper::Prepend(Prepend::new(SPACE_MARK.into())));
    }
    normalizers.push(NormalizerWrapper::Replace(replace(" ", SPACE_MARK)?));
    inner.with_normalizer(Some(NormalizerWrapper::Sequence(NormalizerSequence::new(
        normalizers,
    ))));
    let mut decoders = vec![
        DecoderWrapper::Replace(replace(SPACE_MARK, " ")?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if space_prefix {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    inner.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(
        decoders,
    ))));
    Ok(inner)
}

/// The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre`.
fn pre_tokenizer(pre: &str, path: &Path) -> Result<PreTokenizerWrapper> {
    let split = |regex: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(
            SplitPattern::Regex(regex.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| HlmError::Model(format!("{}: pre-tokenizer regex: {e}", path.display())))?;
        Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Split(split),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
        ])))
    };
    match pre {
        "qwen2" => split(QWEN2_SPLIT),
        "llama-bpe" | "llama3" => split(LLAMA3_SPLIT),
        // SmolLM: every digit alone, then the GPT-2 split.
        "smollm" => Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, true)),
        ]))),
        other => {
            if other != "default" && other != "gpt2" {
                tracing::warn!(
                    "{}: pre-tokenizer '{other}' unknown; using the GPT-2 split",
                    path.display()
                );
            }
            Ok(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
                false, false, true,
            )))
        }
    }
}

/// FNV-1a over the token strings in id order: equal exactly when the vocabularies are.
fn vocabulary_fingerprint(tok: &Tokenizer) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    };
    for id in 0..tok.get_vocab_size(true) as u32 {
        if let Some(t) = tok.id_to_token(id) {
            t.bytes().for_each(&mut eat);
        }
        // A separator no UTF-8 string contains.
        eat(0xff);
    }
    h
}

impl TextTokenizer for BpeTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<TokenId>> {
        let enc = self
            .inner
            .encode(text, self.post_process)
            .map_err(|e| HlmError::Model(format!("tokenizer: cannot encode: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        ids.extend(self.bos);
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    fn decode(&self, ids: &[TokenId]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| HlmError::Model(format!("tokenizer: cannot decode: {e}")))
    }

    fn eos_ids(&self) -> &[TokenId] {
        &self.eos
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

/// The tokenizer of a model at `model_path` (a GGUF file or a HF folder). A GGUF file's own
/// vocabulary wins, since it belongs to that very file; a `tokenizer.json` in the model's
/// folder is used for HF folders and for GGUF files without a usable embedded tokenizer.
/// `Ok(None)` when there is none.
pub fn load_tokenizer(
    model_path: &Path,
    gguf: Option<&GgufFile>,
    model_vocab: usize,
) -> Result<Option<Arc<dyn TextTokenizer>>> {
    if let Some(file) = gguf
        && let Some(tok) = BpeTokenizer::from_gguf(file, model_vocab)?
    {
        return Ok(Some(Arc::new(tok)));
    }
    let folder = if model_path.is_dir() {
        Some(model_path)
    } else {
        model_path.parent()
    };
    let Some(json) = folder
        .map(|f| f.join("tokenizer.json"))
        .filter(|p| p.is_file())
    else {
        return Ok(None);
    };
    let eos = match gguf {
        Some(file) => gguf_eos(file)?,
        None => folder.map(hf_eos).transpose()?.unwrap_or_default(),
    };
    let tok = BpeTokenizer::from_json_file(&json, eos, model_vocab)?;
    Ok(Some(Arc::new(tok)))
}

/// Control tokens that end a generation whichever the file names as its end of sequence:
/// an instruct model ends a chat turn with `<|im_end|>` (its GGUF `eos_token_id`) but a
/// completion with `<|endoftext|>`. Hugging Face's `generation_config.json` of Qwen2.5
/// lists both; llama.cpp stops at control tokens of these texts too.
const END_OF_GENERATION: [&str; 6] = [
    "<|endoftext|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|eom_id|>",
    "<end_of_turn>",
];

fn gguf_eos(file: &GgufFile) -> Result<Vec<TokenId>> {
    let mut eos = Vec::new();
    for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        if file.has_key(key) {
            eos.push(file.get_u32(key)?);
        }
    }
    if file.has_key("tokenizer.ggml.tokens") && file.has_key("tokenizer.ggml.token_type") {
        let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
        let types = file.get_i32_array("tokenizer.ggml.token_type")?;
        for (id, (text, ty)) in tokens.iter().zip(&types).enumerate() {
            let id = id as TokenId;
            if *ty == TOKEN_TYPE_CONTROL
                && END_OF_GENERATION.contains(&text.as_str())
                && !eos.contains(&id)
            {
                eos.push(id);
            }
        }
    }
    eos.dedup();
    Ok(eos)
}

/// `eos_token_id` (a number or a list) of `generation_config.json`, else `config.json`.
fn hf_eos(folder: &Path) -> Result<Vec<TokenId>> {
    for name in ["generation_config.json", "config.json"] {
        let path = folder.join(name);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| HlmError::Model(format!("{}: not valid JSON: {e}", path.display())))?;
        let ids: Vec<TokenId> = match json.get("eos_token_id") {
            Some(serde_json::Value::Number(n)) => {
                n.as_u64().into_iter().map(|v| v as TokenId).collect()
            }
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(serde_json::Value::as_u64)
                .map(|v| v as TokenId)
                .collect(),
            _ => continue,
        };
        if !ids.is_empty() {
            return Ok(ids);
        }
    }
    Ok(Vec::new())
}

//! Text <-> token ids, as the engine needs it for prompts and streaming.

use crate::{Result, TokenId};

/// A tokenizer shared by the draft and the target model.
pub trait TextTokenizer: Send + Sync {
    /// Encode text exactly as given (special tokens recognised, no BOS unless the model asks for it).
    fn encode(&self, text: &str) -> Result<Vec<TokenId>>;
    /// Decode ids to text.
    fn decode(&self, ids: &[TokenId]) -> Result<String>;
    /// Token ids that end generation.
    fn eos_ids(&self) -> &[TokenId];
    /// Number of entries of the model's vocabulary (the length of logit vectors).
    fn vocab_size(&self) -> usize;
    /// A stable fingerprint of the vocabulary, used to check that two models share it.
    fn fingerprint(&self) -> u64;
}

/// Streaming decoder: turns ids into text pieces without splitting multi-byte characters.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    ids: Vec<TokenId>,
    emitted: usize,
}

impl StreamDecoder {
    /// Push one id and return the newly complete text, if any.
    pub fn push(&mut self, tok: &dyn TextTokenizer, id: TokenId) -> Result<String> {
        self.ids.push(id);
        let text = tok.decode(&self.ids)?;
        // Hold back text that ends in a replacement character: the next token may complete it.
        if text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let piece = text.get(self.emitted..).unwrap_or("").to_string();
        self.emitted = text.len();
        Ok(piece)
    }
}

//! Honest small models for engine tests: a random trigram table supplies the logits, and one
//! real causal attention head over random embeddings supplies the attention map. The KV state
//! is the token history, so truncation and re-feeding behave as in a transformer.

#![allow(dead_code)]

pub mod harness;

use std::sync::Arc;

use hlm_core::{
    AttentionMap, DraftModel, DraftStep, HlmError, HostLogits, LanguageModel, LayerAttention,
    LayerSelection, Result, TargetModel, TextTokenizer, TokenId,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub struct TableLm {
    pub vocab: usize,
    /// logits[(prev2 * vocab + prev1)] = logit vector
    table: Vec<Vec<f32>>,
    embed: Vec<Vec<f32>>,
    wq: Vec<Vec<f32>>,
    wk: Vec<Vec<f32>>,
    pub history: Vec<TokenId>,
    pub max_context: usize,
    /// Number of forward calls and positions computed (to check work accounting).
    pub positions: u64,
}

impl TableLm {
    /// `sharpness` scales the random logits (higher = more peaked distributions).
    pub fn new(vocab: usize, seed: u64, sharpness: f32) -> Self {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let table = (0..vocab * vocab)
            .map(|_| (0..vocab).map(|_| r.random::<f32>() * sharpness).collect())
            .collect();
        let d = 4;
        let mut mat = |rows: usize, cols: usize| -> Vec<Vec<f32>> {
            (0..rows)
                .map(|_| (0..cols).map(|_| r.random::<f32>() * 2.0 - 1.0).collect())
                .collect()
        };
        let embed = mat(vocab, d);
        let wq = mat(d, d);
        let wk = mat(d, d);
        TableLm {
            vocab,
            table,
            embed,
            wq,
            wk,
            history: Vec::new(),
            max_context: 4096,
            positions: 0,
        }
    }

    /// Logits after a given history (the model's next-token distribution).
    pub fn logits_after(&self, history: &[TokenId]) -> Vec<f32> {
        let n = history.len();
        let p1 = history[n - 1] as usize;
        let p2 = if n >= 2 { history[n - 2] as usize } else { 0 };
        self.table[p2 * self.vocab + p1].clone()
    }

    fn project(&self, m: &[Vec<f32>], x: &[f32]) -> Vec<f32> {
        m.iter()
            .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    }

    /// One causal attention head: the newest position attends to every position.
    fn attention_row(&self) -> Vec<f32> {
        let last = *self.history.last().unwrap_or(&0) as usize;
        let q = self.project(&self.wq, &self.embed[last]);
        let scores: Vec<f32> = self
            .history
            .iter()
            .map(|&t| {
                let k = self.project(&self.wk, &self.embed[t as usize]);
                q.iter().zip(&k).map(|(a, b)| a * b).sum::<f32>() / 2.0
            })
            .collect();
        hlm_core::sampling::softmax_with_temperature(&scores, 1.0)
    }

    fn check_tokens(&self, tokens: &[TokenId]) -> Result<()> {
        if tokens.is_empty() {
            return Err(HlmError::Model("forward needs at least one token".into()));
        }
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(HlmError::Model(format!("token {t} out of vocabulary")));
        }
        Ok(())
    }

    fn do_truncate(&mut self, len: usize) -> Result<()> {
        if len > self.history.len() {
            return Err(HlmError::Rollback {
                requested: len,
                available: self.history.len(),
            });
        }
        self.history.truncate(len);
        Ok(())
    }
}

impl LanguageModel for TableLm {
    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn context_len(&self) -> usize {
        self.history.len()
    }

    fn truncate(&mut self, len: usize) -> Result<()> {
        self.do_truncate(len)
    }

    fn tokenizer(&self) -> Option<Arc<dyn TextTokenizer>> {
        None
    }

    fn describe(&self) -> String {
        format!("table model |V|={}", self.vocab)
    }
}

impl DraftModel for TableLm {
    fn forward(
        &mut self,
        tokens: &[TokenId],
        attention: Option<&LayerSelection>,
    ) -> Result<DraftStep> {
        self.check_tokens(tokens)?;
        self.history.extend_from_slice(tokens);
        self.positions += tokens.len() as u64;
        let attention = attention.map(|_| AttentionMap {
            layers: vec![LayerAttention {
                layer: 0,
                heads: vec![self.attention_row()],
            }],
        });
        Ok(DraftStep {
            logits: HostLogits::boxed(self.logits_after(&self.history)),
            attention,
        })
    }
}

impl TargetModel for TableLm {
    fn forward_all(&mut self, tokens: &[TokenId]) -> Result<Vec<Vec<f32>>> {
        self.check_tokens(tokens)?;
        let mut out = Vec::with_capacity(tokens.len());
        for &t in tokens {
            self.history.push(t);
            out.push(self.logits_after(&self.history));
        }
        self.positions += tokens.len() as u64;
        Ok(out)
    }
}

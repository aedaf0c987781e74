//! # hlm-eval
//!
//! Judging a pipeline's output: [`bertscore`] (BERTScore precision, recall and F1 with greedy
//! cosine matching of contextual token embeddings from a BERT encoder on burn, optional IDF
//! weighting), validated against the `bert-score` Python package.

pub mod bertscore;

pub use bertscore::{BertScore, BertScorer, IdfWeights};

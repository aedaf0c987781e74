//! # hlm-eval
//!
//! Judging a pipeline's output: [`bertscore`] (BERTScore precision, recall and F1 with greedy
//! cosine matching of contextual token embeddings from a BERT encoder on burn, optional IDF
//! weighting), validated against the `bert-score` Python package; [`bench`] (every method on
//! every prompt with shared models and seeds, per-method summaries, the paper's table, CSV);
//! [`humaneval`] (pass@1: completions run with their problems' unit tests in a sandboxed
//! Python); [`metrics`] (the table's figures) and [`stats`] (their bootstrap intervals and paired
//! differences).

pub mod bench;
pub mod bertscore;
pub mod humaneval;
pub mod metrics;
pub mod plots;
pub mod stats;

pub use bench::{BenchPrompt, BenchResults, MethodSummary, ModelPool, PromptResult};
pub use bertscore::{BertScore, BertScorer, IdfWeights};

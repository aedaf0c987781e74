//! The SentencePiece (`tokenizer.ggml.model = llama`) tokenizer rebuilt from a GGUF
//! vocabulary, against llama.cpp's own expected ids.
//!
//! `fixtures/llama-spm/` holds llama.cpp's vocabulary-only GGUF of LLaMA's 32,000-token
//! SentencePiece model (the vocabulary of LLaMA-2 and TinyLlama) with its tokenizer test:
//! `.inp` holds texts separated by `__ggml_vocab_test__` lines, `.out` the ids llama.cpp's
//! tokenizer gives each (no BOS), one line per text. Copied unchanged from llama.cpp's
//! `models/` folder (MIT licence), as vendored in llama-cpp-python 0.3.36.

use std::path::PathBuf;

use hlm_backends::gguf::GgufFile;
use hlm_backends::transformer::tokenizer::BpeTokenizer;
use hlm_core::{TextTokenizer, TokenId};

fn fixture(ext: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/llama-spm")
        .join(format!("ggml-vocab-llama-spm.gguf{ext}"))
}

fn tokenizer() -> BpeTokenizer {
    let file = GgufFile::open(fixture("")).expect("vocabulary GGUF");
    BpeTokenizer::from_gguf(&file, 32_000)
        .expect("valid tokenizer metadata")
        .expect("a llama tokenizer is supported")
}

fn cases() -> Vec<(String, Vec<TokenId>)> {
    let inp = std::fs::read_to_string(fixture(".inp")).expect(".inp");
    let out = std::fs::read_to_string(fixture(".out")).expect(".out");
    let texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let ids: Vec<Vec<TokenId>> = out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|t| t.parse().expect("an id"))
                .collect()
        })
        .collect();
    // The .inp file ends with a separator and a newline: one more (empty) piece than lines.
    assert!(
        texts.len() >= ids.len(),
        "{} texts, {} id lines",
        texts.len(),
        ids.len()
    );
    texts
        .into_iter()
        .zip(ids)
        .map(|(t, i)| (t.to_string(), i))
        .collect()
}

#[test]
fn encodes_like_llama_cpp() {
    let tok = tokenizer();
    let cases = cases();
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for (text, want) in &cases {
        let mut got = tok.encode(text).expect("encodes");
        // The file asks for BOS (add_bos_token); llama.cpp's test encodes without it.
        assert_eq!(got.first(), Some(&1), "BOS first for {text:?}");
        got.remove(0);
        if &got != want {
            failures.push(format!("{text:?}: got {got:?}, llama.cpp {want:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} texts differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn decodes_back_to_the_text() {
    let tok = tokenizer();
    for (text, ids) in cases() {
        let back = tok.decode(&ids).expect("decodes");
        assert_eq!(back, text, "ids {ids:?}");
    }
}

#[test]
fn special_tokens_and_eos_come_from_the_metadata() {
    let tok = tokenizer();
    assert_eq!(tok.eos_ids(), &[2]);
    assert_eq!(tok.vocab_size(), 32_000);
    // `</s>` in text is the control token, not its characters.
    let ids = tok.encode("Hi</s>").expect("encodes");
    assert_eq!(ids.last(), Some(&2), "{ids:?}");
}

//! Structure-aware fuzzing of what hlm reads from model files: the hyper-parameters of a
//! GGUF model (its metadata and tensor dims) and of a Hugging Face `config.json`, each around
//! the real tiny fixture weights. Whatever the numbers, loading returns the model or an error
//! naming the file; it never panics, aborts on an allocation or hangs, and a model that loads
//! runs a pass or refuses it.
//!
//! proptest drives the cases: `PROPTEST_CASES` of them (256 by default, what CI runs), and
//! `cargo xtask fuzz --minutes N` runs them for longer with fresh seeds. A failing case is
//! shrunk and kept in `proptest-regressions/fuzz.txt`, which is committed and replayed first.

#[path = "support/gguf_writer.rs"]
mod gguf_writer;

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use gguf_writer::Value as GgufValue;
use hlm_backends::Transformer;
use hlm_core::TargetModel;
use proptest::prelude::*;
use serde_json::{Value, json};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Numbers a crafted file would try: the edges, powers of two, and ordinary sizes.
fn count() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(2),
        Just(u32::MAX as u64),
        Just(u64::MAX),
        (0u32..40).prop_map(|k| 1u64 << k),
        1u64..200,
    ]
}

/// Load `path` and, if it loads, run a short pass; every outcome but a panic is fine, and a
/// refusal names the file.
fn load_and_run(path: &Path, named: &str) {
    match Transformer::load(path, &Device::flex()) {
        Ok(mut m) => {
            let _ = m.forward_all(&[1, 2, 3]);
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(named),
                "the error does not name {named}: {msg}"
            );
        }
    }
}

/// The llama keys of the fixture's GGUF that describe its shape.
const GGUF_KEYS: [&str; 6] = [
    "llama.block_count",
    "llama.context_length",
    "llama.embedding_length",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
];

proptest! {
    /// The tiny LLaMA as a GGUF with some of its shape metadata replaced or removed, and
    /// possibly its embedding's dims changed.
    #[test]
    fn gguf_hyper_parameters_never_panic(
        changes in proptest::collection::vec((0..GGUF_KEYS.len(), proptest::option::of(count())), 1..4),
        rope in proptest::option::of(prop_oneof![Just(f32::NAN), Just(-1.0f32), Just(0.0), Just(f32::INFINITY), Just(1e38)]),
        embd in proptest::option::of(proptest::collection::vec(count(), 0..4)),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("crafted.gguf");
        gguf_writer::write_tiny_llama_gguf_with(&fixture("tiny-llama"), &path, |b| {
            for (key, value) in &changes {
                match value {
                    Some(v) => b.set(GGUF_KEYS[*key], GgufValue::U32(*v as u32)),
                    None => b.remove(GGUF_KEYS[*key]),
                };
            }
            if let Some(theta) = rope {
                b.set("llama.rope.freq_base", GgufValue::F32(theta));
            }
            if let Some(dims) = &embd {
                b.set_dims("token_embd.weight", dims.clone());
            }
        });
        load_and_run(&path, "crafted.gguf");
    }

    /// The tiny Qwen2's `config.json` with some keys set to other numbers, other types, or
    /// removed, beside its real weights.
    #[test]
    fn hf_config_json_never_panics(
        changes in proptest::collection::vec((0..HF_KEYS.len(), json_value()), 1..5),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = std::fs::read_to_string(fixture("tiny-qwen2").join("config.json")).expect("config");
        let mut cfg: Value = serde_json::from_str(&text).expect("json");
        for (key, value) in &changes {
            match value {
                Some(v) => cfg[HF_KEYS[*key]] = v.clone(),
                None => {
                    cfg.as_object_mut().expect("object").remove(HF_KEYS[*key]);
                }
            }
        }
        std::fs::write(dir.path().join("config.json"), cfg.to_string()).expect("write");
        std::fs::copy(
            fixture("tiny-qwen2").join("model.safetensors"),
            dir.path().join("model.safetensors"),
        )
        .expect("copy");
        load_and_run(dir.path(), &dir.path().display().to_string());
    }
}

/// The keys of `config.json` that shape the model.
const HF_KEYS: [&str; 10] = [
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "num_hidden_layers",
    "vocab_size",
    "max_position_embeddings",
    "head_dim",
    "rms_norm_eps",
    "rope_theta",
];

/// A JSON value for a key (`None`: the key is removed).
fn json_value() -> impl Strategy<Value = Option<Value>> {
    proptest::option::of(prop_oneof![
        count().prop_map(|v| json!(v)),
        (-1000i64..0).prop_map(|v| json!(v)),
        prop_oneof![Just(1e300f64), Just(-0.5), Just(0.5), Just(1e-30)].prop_map(|v| json!(v)),
        Just(json!("32")),
        Just(json!(null)),
        Just(json!([32])),
    ])
}

//! The transformer against the HF transformers reference of the tiny fixtures: the CPU
//! decoder at `exact` precision, burn's network on flex (the GPU code, on the CPU), the two
//! against each other, and the `fast` precision within its rounding.

#[path = "support/gguf_writer.rs"]
mod gguf_writer;
#[path = "support/wgpu.rs"]
mod wgpu_support;

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use hlm_backends::{Precision, Transformer, WeightLayout};
use hlm_core::{DraftModel, LanguageModel, LayerSelection, TargetModel, TokenId};
use serde::Deserialize;

const TOLERANCE: f32 = 1e-4;
/// Largest logit error of 8-bit weights, relative to the largest logit: 2.9 % measured on
/// the tiny random model (lavapipe); the real-model check is the greedy test on wgpu.
const Q8_LOGIT_TOLERANCE: f32 = 0.05;

#[derive(Deserialize)]
struct Reference {
    input_ids: Vec<TokenId>,
    logits: Vec<Vec<f32>>,
    extra_ids: Vec<TokenId>,
    decode_logits: Vec<Vec<f32>>,
    attentions_last_layer_newest: Vec<Vec<f32>>,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).expect("reference");
    serde_json::from_str(&text).expect("reference.json parses")
}

fn load(name: &str) -> Transformer {
    Transformer::load_with(&fixture(name), &Device::flex(), Precision::Exact)
        .expect("fixture loads")
}

/// A scratch folder, removed when the returned guard drops: also when the test fails.
fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("hlm-transformer-{name}-"))
        .tempdir()
        .expect("scratch dir")
}

fn copy_fixture(name: &str, to: &Path) {
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(name).join(file), to.join(file)).expect("copy fixture");
    }
}

#[track_caller]
fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= tol, "{what}: max abs diff {worst} > {tol}");
}

#[track_caller]
fn assert_rows_close(got: &[Vec<f32>], want: &[Vec<f32>], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: rows");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_close(g, w, tol, &format!("{what} row {i}"));
    }
}

fn prefill_and_decode_match_reference(name: &str) {
    let r = reference(name);
    let mut m = load(name);
    let logits = m.forward_all(&r.input_ids).expect("prefill");
    assert_rows_close(&logits, &r.logits, TOLERANCE, "prefill logits");
    for (i, &id) in r.extra_ids.iter().enumerate() {
        let step = DraftModel::forward(&mut m, &[id], None).expect("decode");
        assert!(step.attention.is_none());
        assert_close(
            &step.logits.to_host().expect("read back"),
            &r.decode_logits[i],
            TOLERANCE,
            "decode logits",
        );
    }
    assert_eq!(m.context_len(), r.input_ids.len() + r.extra_ids.len());
}

fn newest_attention_matches_reference(name: &str) {
    let r = reference(name);
    let mut m = load(name);
    let step = DraftModel::forward(&mut m, &r.input_ids, Some(&LayerSelection::Last)).expect("fwd");
    let last = r.logits.last().expect("logits");
    assert_close(
        &step.logits.to_host().expect("read back"),
        last,
        TOLERANCE,
        "last logits",
    );
    let map = step.attention.expect("attention requested");
    assert_eq!(map.layers.len(), 1);
    assert_eq!(map.layers[0].layer, m.config().n_layers - 1);
    assert_rows_close(
        &map.layers[0].heads,
        &r.attentions_last_layer_newest,
        TOLERANCE,
        "attention",
    );
    let all = DraftModel::forward(&mut m, &[3], Some(&LayerSelection::All)).expect("fwd");
    let map = all.attention.expect("attention");
    assert_eq!(map.layers.len(), m.config().n_layers);
    for layer in &map.layers {
        for head in &layer.heads {
            assert_eq!(head.len(), r.input_ids.len() + 1);
            let sum: f32 = head.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5, "probabilities sum to {sum}");
        }
    }
}

fn rollback_and_refeed_reproduce_logits(name: &str) {
    let r = reference(name);
    let mut m = load(name);
    m.forward_all(&r.input_ids).expect("prefill");
    let first = m.forward_all(&r.extra_ids).expect("extra");
    LanguageModel::truncate(&mut m, r.input_ids.len()).expect("rollback");
    assert_eq!(m.context_len(), r.input_ids.len());
    let again = m.forward_all(&r.extra_ids).expect("extra again");
    assert_rows_close(&again, &first, 1e-6, "after rollback");
    assert_rows_close(
        &again,
        &r.decode_logits,
        TOLERANCE,
        "after rollback vs reference",
    );
    // A deeper rollback into the prompt, then the rest of the prompt again.
    m.truncate(5).expect("rollback");
    let rest = m.forward_all(&r.input_ids[5..]).expect("refeed");
    assert_rows_close(&rest, &r.logits[5..], TOLERANCE, "refed prompt");
    assert!(m.truncate(100).is_err(), "cannot grow by truncation");
}

fn batch_equals_token_by_token(name: &str) {
    let r = reference(name);
    let mut batched = load(name);
    let mut single = load(name);
    let all = batched.forward_all(&r.input_ids).expect("batch");
    for (i, &id) in r.input_ids.iter().enumerate() {
        let step = single.forward_all(&[id]).expect("single");
        assert_close(&step[0], &all[i], 1e-5, &format!("position {i}"));
    }
}

/// Passes split into pieces of `prefill_chunk` positions give the same bits as one pass:
/// all-position logits, the last position's logits and attention, and the state the next
/// step sees; several sessions batched together too.
fn pieces_equal_one_pass(name: &str, precision: Precision) {
    let r = reference(name);
    let load_chunked = |chunk: Option<usize>| {
        let m = Transformer::load_with(&fixture(name), &Device::flex(), precision).expect("loads");
        match chunk {
            Some(n) => m.with_prefill_chunk(n).expect("not shared yet"),
            None => m,
        }
    };
    let mut whole = load_chunked(None);
    let want = whole.forward_all(&r.input_ids).expect("one pass");
    let want_next =
        DraftModel::forward(&mut whole, &r.extra_ids, Some(&LayerSelection::All)).expect("next");
    for chunk in [1, 3] {
        let mut pieces = load_chunked(Some(chunk));
        let got = pieces.forward_all(&r.input_ids).expect("in pieces");
        assert_eq!(got, want, "{name} {precision} chunk {chunk}: all logits");
        let next = DraftModel::forward(&mut pieces, &r.extra_ids, Some(&LayerSelection::All))
            .expect("next");
        assert_eq!(
            next.logits.to_host().expect("host"),
            want_next.logits.to_host().expect("host"),
            "{name} {precision} chunk {chunk}: logits after the pieces"
        );
        let (a, b) = (
            next.attention.expect("attention"),
            want_next.attention.as_ref().expect("attention"),
        );
        assert_eq!(a.layers.len(), b.layers.len());
        for (x, y) in a.layers.iter().zip(&b.layers) {
            assert_eq!(
                x.heads, y.heads,
                "{name} chunk {chunk}: layer {} attention",
                x.layer
            );
        }
    }
    // Only the rows asked for, wherever the pieces fall: the same values as those rows of
    // every-row logits, and the same state.
    let n = r.input_ids.len();
    for chunk in [1, 3] {
        for tail in [1, 2, n, n + 5] {
            let mut m = load_chunked(Some(chunk));
            let got = m.forward_tail(&r.input_ids, tail).expect("tail");
            assert_eq!(
                got,
                want[n - tail.min(n)..],
                "{name} {precision} chunk {chunk}: the last {tail} rows"
            );
            assert_eq!(m.context_len(), n);
        }
    }
    // Sessions of one model with feeds of different lengths, batched, in pieces of 3.
    let base = load_chunked(Some(3));
    let mut sessions: Vec<Box<dyn TargetModel>> =
        (0..3).map(|_| base.fork().expect("fork")).collect();
    let feeds: Vec<&[TokenId]> = vec![&r.input_ids, &r.input_ids[..2], &r.input_ids[..1]];
    let got = {
        // Pushed one by one, a coercion site (as in `sessions_batched_in_one_pass_match_separate_passes`).
        let mut refs: Vec<&mut dyn TargetModel> = Vec::new();
        for s in sessions.iter_mut() {
            refs.push(s.as_mut());
        }
        hlm_core::forward_all_batch(&mut refs, &feeds)
    };
    for (i, (got, feed)) in got.into_iter().zip(&feeds).enumerate() {
        let mut alone = load_chunked(None);
        let want = alone.forward_all(feed).expect("alone");
        assert_eq!(got.expect("batched"), want, "{name}: session {i}");
    }
    // The same sessions batched with a tail each.
    let tails = [2, 1, 3];
    let mut sessions: Vec<Box<dyn TargetModel>> =
        (0..3).map(|_| base.fork().expect("fork")).collect();
    let got = {
        let mut refs: Vec<&mut dyn TargetModel> = Vec::new();
        for s in sessions.iter_mut() {
            refs.push(s.as_mut());
        }
        hlm_core::forward_tail_batch(&mut refs, &feeds, &tails)
    };
    for (i, ((got, feed), tail)) in got.into_iter().zip(&feeds).zip(tails).enumerate() {
        let want = load_chunked(None).forward_all(feed).expect("alone");
        let from = feed.len() - tail.min(feed.len());
        assert_eq!(
            got.expect("batched"),
            want[from..],
            "{name}: session {i} tail {tail}"
        );
    }
}

#[test]
fn passes_in_pieces_equal_one_pass() {
    for name in ["tiny-llama", "tiny-qwen2"] {
        for precision in [Precision::Exact, Precision::Fast] {
            pieces_equal_one_pass(name, precision);
        }
    }
}

/// burn's network (here on flex) runs long feeds in pieces too: the same logits as one pass
/// (to float rounding: the pieces' products have other shapes), only the rows asked for, and
/// the same next step.
#[test]
fn burn_passes_in_pieces_match_one_pass() {
    let name = "tiny-qwen2";
    let r = reference(name);
    let load = || {
        Transformer::load_on_burn(&fixture(name), &Device::flex(), WeightLayout::Dense)
            .expect("loads")
    };
    let close = |a: &[Vec<f32>], b: &[Vec<f32>], what: &str| {
        assert_eq!(a.len(), b.len(), "{what}: rows");
        for (x, y) in a.iter().zip(b) {
            let worst = x
                .iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-4, "{what}: differs by {worst}");
        }
    };
    let mut whole = load();
    let want = whole.forward_all(&r.input_ids).expect("one pass");
    let want_next = DraftModel::forward(&mut whole, &r.extra_ids, None)
        .expect("next")
        .logits
        .to_host()
        .expect("host");
    let n = r.input_ids.len();
    for tail in [1, 2, n] {
        let mut pieces = load().with_prefill_chunk(3).expect("not shared");
        let got = pieces.forward_tail(&r.input_ids, tail).expect("pieces");
        close(
            &got,
            &want[n - tail..],
            &format!("burn, chunk 3, last {tail} rows"),
        );
        let next = DraftModel::forward(&mut pieces, &r.extra_ids, None)
            .expect("next")
            .logits
            .to_host()
            .expect("host");
        close(
            &[next.to_vec()],
            &[want_next.to_vec()],
            "burn, chunk 3: the step after",
        );
    }
    // A prompt longer than a piece, fed as a draft model's step.
    let mut stepped = load().with_prefill_chunk(2).expect("not shared");
    let last = DraftModel::forward(&mut stepped, &r.input_ids, None)
        .expect("prompt in pieces")
        .logits
        .to_host()
        .expect("host");
    close(
        &[last.to_vec()],
        &want[n - 1..],
        "burn, chunk 2: a prompt's step",
    );
    assert_eq!(stepped.context_len(), n);
}

#[test]
fn impossible_prefill_chunk_is_refused_by_name() {
    let ctx = hlm_core::BuildContext {
        device: "cpu".into(),
        models_dir: None,
        link: None,
    };
    for bad in [0, (1 << 16) + 1] {
        let spec = hlm_backends::TransformerSpec {
            model: fixture("tiny-llama").display().to_string(),
            device: None,
            max_context: None,
            precision: None,
            prefill_chunk: Some(bad),
        };
        let err = spec.load(&ctx).err().expect("refused").to_string();
        assert!(
            err.contains("prefill_chunk") && err.contains("between 1 and 65536"),
            "{err}"
        );
    }
}

/// The local verifier's log-likelihood of a continuation equals log-softmax of HF
/// transformers' logits at the positions that predict it, and a verification session started
/// after it is unaffected.
fn log_likelihood_matches_reference(name: &str) {
    use hlm_core::Verifier;
    let r = reference(name);
    let mut v = hlm_core::LocalVerifier::new(
        Box::new(load(name)),
        std::sync::Arc::new(hlm_core::SpeculativeSampling {}),
    );
    let split = 4;
    let (prompt, continuation) = r.input_ids.split_at(split);
    let got = v
        .log_likelihood(prompt, continuation)
        .expect("scores")
        .expect("a local verifier scores sequences");
    assert_eq!(got.len(), continuation.len());
    for (i, (&t, &g)) in continuation.iter().zip(&got).enumerate() {
        let row = &r.logits[split - 1 + i];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max
            + row
                .iter()
                .map(|&l| (l as f64 - max).exp())
                .sum::<f64>()
                .ln();
        let want = row[t as usize] as f64 - lse;
        assert!(g <= 0.0, "log-probability {g} > 0");
        assert!((g - want).abs() < 1e-3, "token {i}: {g} vs {want}");
    }
    // Scoring a second time (after the first left its state behind) gives the same.
    let again = v.log_likelihood(prompt, continuation).unwrap().unwrap();
    assert_eq!(got, again);
    assert!(v.log_likelihood(&[], continuation).is_err());
    assert!(
        v.log_likelihood(prompt, &[64]).is_err(),
        "64 is outside the vocabulary"
    );
}

#[test]
fn tiny_llama_log_likelihood() {
    log_likelihood_matches_reference("tiny-llama");
}

#[test]
fn tiny_qwen2_log_likelihood() {
    log_likelihood_matches_reference("tiny-qwen2");
}

#[test]
fn tiny_llama_prefill_and_decode() {
    prefill_and_decode_match_reference("tiny-llama");
}

#[test]
fn tiny_qwen2_prefill_and_decode() {
    prefill_and_decode_match_reference("tiny-qwen2");
}

#[test]
fn tiny_llama_newest_attention() {
    newest_attention_matches_reference("tiny-llama");
}

#[test]
fn tiny_qwen2_newest_attention() {
    newest_attention_matches_reference("tiny-qwen2");
}

#[test]
fn tiny_llama_rollback() {
    rollback_and_refeed_reproduce_logits("tiny-llama");
}

#[test]
fn tiny_qwen2_rollback() {
    rollback_and_refeed_reproduce_logits("tiny-qwen2");
}

#[test]
fn tiny_llama_batch_equals_stepwise() {
    batch_equals_token_by_token("tiny-llama");
}

#[test]
fn tiny_qwen2_batch_equals_stepwise() {
    batch_equals_token_by_token("tiny-qwen2");
}

#[test]
fn out_of_vocabulary_and_empty_input_are_errors() {
    let mut m = load("tiny-llama");
    let err = m
        .forward_all(&[64])
        .expect_err("id 64 is outside 64 tokens");
    assert!(err.to_string().contains("64"), "{err}");
    assert_eq!(m.context_len(), 0, "state untouched after an error");
    assert!(m.forward_all(&[]).is_err());
    let mut capped = load("tiny-llama").with_max_context(4);
    assert!(capped.forward_all(&[1, 2, 3, 4, 5]).is_err());
}

#[test]
fn truncated_safetensors_names_the_file() {
    let scratch_dir = scratch("truncated");
    let dir = scratch_dir.path().to_path_buf();
    copy_fixture("tiny-llama", &dir);
    let weights = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights).expect("read");
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).expect("truncate");
    let err = Transformer::load(&dir, &Device::flex())
        .err()
        .expect("must fail");
    let msg = err.to_string();
    assert!(msg.contains("model.safetensors"), "{msg}");
    assert!(msg.contains("corrupt or truncated"), "{msg}");
}

#[test]
fn garbage_safetensors_header_names_the_file() {
    let scratch_dir = scratch("garbage");
    let dir = scratch_dir.path().to_path_buf();
    copy_fixture("tiny-llama", &dir);
    std::fs::write(
        dir.join("model.safetensors"),
        b"\xff\xff\xff\xff\xff\xff\xff\x7fnot json",
    )
    .expect("write");
    let msg = Transformer::load(&dir, &Device::flex())
        .err()
        .expect("must fail")
        .to_string();
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn missing_tensor_is_named() {
    // tiny-qwen2 ties its embeddings; claiming it does not makes lm_head.weight required.
    let scratch_dir = scratch("missing");
    let dir = scratch_dir.path().to_path_buf();
    copy_fixture("tiny-qwen2", &dir);
    let config = std::fs::read_to_string(dir.join("config.json")).expect("config");
    let untied = config.replace(
        "\"tie_word_embeddings\": true",
        "\"tie_word_embeddings\": false",
    );
    assert_ne!(config, untied);
    std::fs::write(dir.join("config.json"), untied).expect("write");
    let msg = Transformer::load(&dir, &Device::flex())
        .err()
        .expect("must fail")
        .to_string();
    assert!(msg.contains("lm_head.weight"), "{msg}");
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn shape_mismatch_is_an_error() {
    let scratch_dir = scratch("shape");
    let dir = scratch_dir.path().to_path_buf();
    copy_fixture("tiny-llama", &dir);
    let config = std::fs::read_to_string(dir.join("config.json")).expect("config");
    let wrong = config.replace("\"intermediate_size\": 48", "\"intermediate_size\": 40");
    assert_ne!(config, wrong);
    std::fs::write(dir.join("config.json"), wrong).expect("write");
    let msg = Transformer::load(&dir, &Device::flex())
        .err()
        .expect("must fail")
        .to_string();
    assert!(msg.contains("mlp.gate_proj.weight"), "{msg}");
    assert!(msg.contains("[48, 32]"), "{msg}");
}

#[test]
fn gguf_round_trip_matches_safetensors() {
    let scratch_dir = scratch("gguf");
    let dir = scratch_dir.path().to_path_buf();
    let path = dir.join("tiny-llama.gguf");
    gguf_writer::write_tiny_llama_gguf(&fixture("tiny-llama"), &path);
    let r = reference("tiny-llama");
    let mut from_gguf =
        Transformer::load_with(&path, &Device::flex(), Precision::Exact).expect("gguf loads");
    assert_eq!(
        from_gguf.config().rope_layout,
        hlm_backends::transformer::RopeLayout::Interleaved
    );
    let logits = from_gguf.forward_all(&r.input_ids).expect("prefill");
    assert_rows_close(&logits, &r.logits, TOLERANCE, "gguf prefill");
    let mut from_st = load("tiny-llama");
    let st = from_st.forward_all(&r.input_ids).expect("prefill");
    assert_rows_close(&logits, &st, 1e-5, "gguf vs safetensors");
    let decode = from_gguf.forward_all(&r.extra_ids).expect("decode");
    assert_rows_close(&decode, &r.decode_logits, TOLERANCE, "gguf decode");
    // The same file cut short names the file and the tensor that no longer fits.
    let bytes = std::fs::read(&path).expect("read");
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).expect("write");
    let msg = Transformer::load(&cut, &Device::flex())
        .err()
        .expect("must fail")
        .to_string();
    assert!(msg.contains("cut.gguf"), "{msg}");
}

/// A GGUF model on wgpu keeps its linear weights as burn 8-bit blocks (1.125 bytes a weight
/// where the input width is a multiple of 32, `f32` elsewhere), and its logits stay within
/// the extra rounding of the weights. Needs a GPU (or software) adapter: `HLM_TEST_WGPU=1`.
#[test]
fn gguf_on_wgpu_keeps_8_bit_weights() {
    let Some(device) = wgpu_support::device_if_enabled() else {
        return;
    };
    let scratch_dir = scratch("gguf-wgpu");
    let dir = scratch_dir.path().to_path_buf();
    let path = dir.join("tiny-llama.gguf");
    gguf_writer::write_tiny_llama_gguf(&fixture("tiny-llama"), &path);
    let r = reference("tiny-llama");
    let mut dense = Transformer::load_on_burn(&path, &device, WeightLayout::Dense).expect("f32");
    let mut q8 = Transformer::load_on_burn(&path, &device, WeightLayout::Auto).expect("q8");
    // Expected bytes from the shapes: [inp, out] per layer, then the head.
    let c = dense.config().clone();
    let (q_dim, kv_dim) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    let mut shapes = Vec::new();
    for _ in 0..c.n_layers {
        shapes.extend([
            (c.hidden_size, q_dim + 2 * kv_dim),
            (q_dim, c.hidden_size),
            (c.hidden_size, 2 * c.intermediate_size),
            (c.intermediate_size, c.hidden_size),
        ]);
    }
    shapes.push((c.hidden_size, c.vocab_size));
    let f32_bytes: usize = shapes.iter().map(|(i, o)| i * o * 4).sum();
    let q8_bytes: usize = shapes
        .iter()
        .map(|&(i, o)| {
            if i % 32 == 0 {
                i * o * 9 / 8
            } else {
                i * o * 4
            }
        })
        .sum();
    assert_eq!(dense.linear_weight_bytes(), f32_bytes);
    assert_eq!(q8.linear_weight_bytes(), q8_bytes);
    assert!(q8_bytes < f32_bytes / 2, "{q8_bytes} vs {f32_bytes}");
    let want = dense.forward_all(&r.input_ids).expect("prefill f32");
    assert_rows_close(&want, &r.logits, TOLERANCE, "wgpu f32 prefill");
    let got = q8.forward_all(&r.input_ids).expect("prefill q8");
    let largest = want.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .flatten()
        .zip(want.iter().flatten())
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("q8 vs f32 logits: max abs error {err}, largest logit {largest}");
    assert!(
        err <= Q8_LOGIT_TOLERANCE * largest,
        "error {err}, logits up to {largest}"
    );
    // Not the f32 numbers: the weights really were rounded.
    assert!(err > 0.0);
}

#[test]
fn model_names_resolve_under_the_models_dir() {
    let scratch_dir = scratch("models");
    let dir = scratch_dir.path().to_path_buf();
    std::fs::create_dir_all(dir.join("tiny")).expect("mkdir");
    let found = hlm_backends::resolve_model_path("tiny", Some(&dir)).expect("found");
    assert_eq!(found, dir.join("tiny"));
    let msg = hlm_backends::resolve_model_path("absent", Some(&dir))
        .expect_err("missing")
        .to_string();
    assert!(msg.contains("cargo xtask models fetch absent"), "{msg}");
    assert!(
        msg.contains(&dir.join("absent").display().to_string()),
        "{msg}"
    );
    assert!(hlm_backends::resolve_model_path("./nope.gguf", Some(&dir)).is_err());
    assert!(hlm_backends::parse_device("cpu").is_ok());
    let msg = hlm_backends::parse_device("tpu")
        .expect_err("unknown")
        .to_string();
    assert!(msg.contains("cpu") && msg.contains("wgpu"), "{msg}");
}

#[test]
fn spec_builds_from_config() {
    let spec: hlm_backends::TransformerSpec = toml::from_str(&format!(
        "model = {:?}\ndevice = \"cpu\"\nmax_context = 64\n",
        fixture("tiny-qwen2").display().to_string()
    ))
    .expect("spec parses");
    let ctx = hlm_core::BuildContext {
        device: "wgpu".into(),
        models_dir: None,
        link: None,
    };
    let draft = hlm_core::DraftModelSpec::build(&spec, &ctx).expect("draft builds");
    assert_eq!(draft.max_context(), 64);
    assert_eq!(draft.vocab_size(), 64);
    let target = hlm_core::TargetModelSpec::build(&spec, &ctx).expect("target builds");
    assert_eq!(target.vocab_size(), 64);
}

/// A GGUF whose embedded gpt2 tokenizer has control tokens, byte-level letters and a few
/// merges: specials are matched whole, merges apply, and decoding restores the text.
#[test]
fn gguf_embedded_tokenizer_encodes_and_decodes() {
    use gguf_writer::Value;
    let scratch_dir = scratch("tokenizer");
    let dir = scratch_dir.path().to_path_buf();
    let path = dir.join("tiny-llama.gguf");
    gguf_writer::write_tiny_llama_gguf(&fixture("tiny-llama"), &path);
    // Re-open the written model file and append tokenizer metadata by rebuilding it.
    let mut tokens: Vec<String> = vec![
        "<|endoftext|>".into(),
        "<|im_start|>".into(),
        "<|im_end|>".into(),
    ];
    tokens.extend(('a'..='z').map(String::from));
    tokens.push("Ġ".into());
    let merges = ["h e", "l l", "he ll", "hell o", "Ġ w"];
    tokens.extend(merges.iter().map(|m| m.replace(' ', "")));
    let n_real = tokens.len();
    tokens.extend((n_real..64).map(|i| format!("[PAD{i}]")));
    let mut types = vec![1i32; 64];
    types[..3].fill(3);
    let id = |t: &str| tokens.iter().position(|x| x == t).expect("token") as TokenId;
    let expected = vec![
        id("<|im_start|>"),
        id("hello"),
        id("Ġw"),
        id("o"),
        id("r"),
        id("l"),
        id("d"),
        id("<|im_end|>"),
    ];
    let tok_path = dir.join("with-tokenizer.gguf");
    gguf_writer::write_tiny_llama_gguf_with(&fixture("tiny-llama"), &tok_path, |b| {
        b.kv("tokenizer.ggml.model", Value::Str("gpt2".into()))
            .kv("tokenizer.ggml.pre", Value::Str("qwen2".into()))
            .kv("tokenizer.ggml.tokens", Value::StrArray(tokens.clone()))
            .kv("tokenizer.ggml.token_type", Value::I32Array(types.clone()))
            .kv(
                "tokenizer.ggml.merges",
                Value::StrArray(merges.iter().map(|m| m.to_string()).collect()),
            )
            .kv("tokenizer.ggml.eos_token_id", Value::U32(2))
            .kv("tokenizer.ggml.add_bos_token", Value::Bool(false));
    });
    let model = Transformer::load(&tok_path, &Device::flex()).expect("loads");
    let tok = model.tokenizer().expect("tokenizer from GGUF");
    let text = "<|im_start|>hello world<|im_end|>";
    let ids = tok.encode(text).expect("encode");
    assert_eq!(ids, expected);
    assert_eq!(tok.decode(&ids).expect("decode"), text);
    // The file's end of sequence, then `<|endoftext|>` by its control text (a completion
    // ends there, as Hugging Face's generation config and llama.cpp stop); `<|im_start|>` is
    // control too but ends nothing.
    assert_eq!(tok.eos_ids(), &[2, 0]);
    assert_eq!(tok.vocab_size(), 64);
    let plain = Transformer::load(&path, &Device::flex()).expect("loads");
    assert!(plain.tokenizer().is_none(), "no tokenizer metadata");
}

#[test]
fn explicit_layer_indices_select_attention() {
    let r = reference("tiny-qwen2");
    let mut m = load("tiny-qwen2");
    let sel = LayerSelection::Indices(vec![-1, 0]);
    let step = DraftModel::forward(&mut m, &r.input_ids, Some(&sel)).expect("fwd");
    let map = step.attention.expect("attention");
    let layers: Vec<usize> = map.layers.iter().map(|l| l.layer).collect();
    assert_eq!(layers, vec![0, 1]);
    assert_rows_close(
        &map.layers[1].heads,
        &r.attentions_last_layer_newest,
        TOLERANCE,
        "attention of layer -1",
    );
    let bad = LayerSelection::Indices(vec![2]);
    assert!(DraftModel::forward(&mut m, &[1], Some(&bad)).is_err());
    assert_eq!(m.context_len(), r.input_ids.len());
}

/// The same reference on the wgpu backend. Needs a GPU (or software) adapter, so it only
/// runs with `HLM_TEST_WGPU=1`.
#[test]
fn wgpu_matches_reference_when_enabled() {
    let Some(device) = wgpu_support::device_if_enabled() else {
        return;
    };
    for name in ["tiny-llama", "tiny-qwen2"] {
        let r = reference(name);
        let mut m = Transformer::load(&fixture(name), &device).expect("loads on wgpu");
        let logits = m.forward_all(&r.input_ids).expect("prefill");
        assert_rows_close(&logits, &r.logits, TOLERANCE, "wgpu prefill");
        let decode = m.forward_all(&r.extra_ids[..1]).expect("decode");
        assert_close(&decode[0], &r.decode_logits[0], TOLERANCE, "wgpu decode");
    }
}

/// Sessions of one model batched into one pass (different prompts, past lengths and feed
/// lengths) give each the logits of its own pass, and leave each KV state as its own pass would.
#[test]
fn sessions_batched_in_one_pass_match_separate_passes() {
    for name in ["tiny-llama", "tiny-qwen2"] {
        let base = load(name);
        let prompts: [&[TokenId]; 3] = [&[1, 5, 17, 33], &[2, 9], &[7, 7, 3, 60, 11, 4]];
        let feeds: [&[TokenId]; 3] = [&[8], &[3, 4, 5], &[12, 13]];
        // Separately.
        let mut want = Vec::new();
        for (p, f) in prompts.iter().zip(feeds) {
            let mut m = base.fork().expect("fork");
            m.forward_all(p).expect("prefill");
            want.push(m.forward_all(f).expect("feed"));
        }
        // Batched.
        let mut forks: Vec<Box<dyn TargetModel>> = prompts
            .iter()
            .map(|p| {
                let mut m = base.fork().expect("fork");
                m.forward_all(p).expect("prefill");
                m
            })
            .collect();
        let got = {
            // Pushed one by one: `push` is a coercion site, so each `&mut (dyn + 'static)`
            // shortens to the borrow's own lifetime (`collect` would not coerce).
            let mut refs: Vec<&mut dyn TargetModel> = Vec::new();
            for m in forks.iter_mut() {
                refs.push(m.as_mut());
            }
            hlm_core::forward_all_batch(&mut refs, &feeds)
        };
        for (i, (g, w)) in got.into_iter().zip(&want).enumerate() {
            assert_rows_close(
                &g.expect("batched"),
                w,
                1e-5,
                &format!("{name} session {i}"),
            );
        }
        // The caches continue correctly: one more token each, separately.
        for (i, m) in forks.iter_mut().enumerate() {
            assert_eq!(m.context_len(), prompts[i].len() + feeds[i].len());
            let mut fresh = base.fork().expect("fork");
            let mut all = prompts[i].to_vec();
            all.extend_from_slice(feeds[i]);
            fresh.forward_all(&all).expect("all");
            let a = m.forward_all(&[21]).expect("next");
            let b = fresh.forward_all(&[21]).expect("next");
            assert_rows_close(&a, &b, 1e-5, &format!("{name} session {i} after the batch"));
        }
        // A feed over one session's context fails alone; the others still run.
        let mut small = base.fork().expect("fork");
        let mut other = base.fork().expect("fork");
        small.forward_all(&[1]).expect("prefill");
        other.forward_all(&[1]).expect("prefill");
        let too_long = vec![3; base.max_context() + 1];
        let got = {
            let mut refs: Vec<&mut dyn TargetModel> = vec![small.as_mut(), other.as_mut()];
            hlm_core::forward_all_batch(&mut refs, &[&too_long, &[4]])
        };
        assert!(
            got[0]
                .as_ref()
                .is_err_and(|e| e.to_string().contains("exceeds"))
        );
        assert!(got[1].is_ok());
        assert_eq!(
            small.context_len(),
            1,
            "the refused session's state did not move"
        );
    }
}

/// `hlm_core::forward_tail_batch` on a mix of models: sessions of two models, interleaved,
/// run in one pass per model's weights (grouped by `weights_key`), and each gets the logits
/// of its own pass.
#[test]
fn a_batch_of_two_models_sessions_groups_them_by_weights() {
    let llama = load("tiny-llama");
    let qwen = load("tiny-qwen2");
    assert_ne!(
        TargetModel::weights_key(&llama),
        TargetModel::weights_key(&qwen)
    );
    let mut sessions: Vec<Box<dyn TargetModel>> = vec![
        llama.fork().expect("fork"),
        qwen.fork().expect("fork"),
        llama.fork().expect("fork"),
        qwen.fork().expect("fork"),
    ];
    assert_eq!(sessions[0].weights_key(), sessions[2].weights_key());
    let feeds: [&[TokenId]; 4] = [&[1, 5, 17], &[2, 9], &[7, 3, 60, 11], &[4]];
    let tails = [1, 2, 4, 1];
    let got = {
        let mut refs: Vec<&mut dyn TargetModel> = Vec::new();
        for s in sessions.iter_mut() {
            refs.push(s.as_mut());
        }
        hlm_core::forward_tail_batch(&mut refs, &feeds, &tails)
    };
    for (i, got) in got.into_iter().enumerate() {
        let model = if i % 2 == 0 { &llama } else { &qwen };
        let mut alone = model.fork().expect("fork");
        let want = alone.forward_tail(feeds[i], tails[i]).expect("alone");
        assert_rows_close(&got.expect("batched"), &want, 1e-5, &format!("session {i}"));
        assert_eq!(sessions[i].context_len(), feeds[i].len(), "session {i}");
    }
}

//! Real GGUF models against an independent runtime: the prompt's token ids and the first
//! greedy continuation tokens must equal those Hugging Face transformers computed from the
//! same file (`scripts/make_greedy_fixtures.py` wrote the fixture), at `exact` precision on the
//! CPU decoder and on burn's network. At `fast` precision (8-bit activations) the
//! continuation must agree until a near-tie: where it first differs, the two tokens' logits
//! must be within [`NEAR_TIE`] of each other under the exact arithmetic, and the fast path's
//! logits must stay within [`FAST_LOGIT_ERROR`] of the exact ones.
//!
//! The models come from `cargo xtask models fetch smollm2-135m-instruct
//! qwen2.5-coder-0.5b-instruct` (CI fetches them first). A model that is not present is
//! skipped with a note, unless `HLM_REQUIRE_MODELS=1`, which CI sets.

#[path = "support/wgpu.rs"]
mod wgpu_support;

use std::path::PathBuf;

use burn::tensor::Device;
use hlm_backends::{Precision, Transformer, WeightLayout};
use hlm_core::{LanguageModel, TargetModel, TokenId};
use serde::Deserialize;

/// Tokens that must agree (the fixture holds more; the issue asks for 32).
const MUST_AGREE: usize = 32;

#[derive(Deserialize)]
struct Fixture {
    models: std::collections::BTreeMap<String, Vec<Case>>,
}

#[derive(Deserialize)]
struct Case {
    prompt: String,
    prompt_ids: Vec<TokenId>,
    generated_ids: Vec<TokenId>,
}

fn fixture() -> Fixture {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/greedy_continuations.json");
    let text = std::fs::read_to_string(&path).expect("greedy fixture");
    serde_json::from_str(&text).expect("greedy fixture parses")
}

fn model_path(name: &str) -> Option<PathBuf> {
    let path = hlm_backends::transformer::default_models_dir(None)
        .unwrap_or_default()
        .join(name)
        .join("model.gguf");
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var("HLM_REQUIRE_MODELS").as_deref() != Ok("1"),
        "{} is missing (cargo xtask models fetch {name})",
        path.display()
    );
    eprintln!("skipping {name}: not fetched (cargo xtask models fetch {name})");
    None
}

fn argmax(row: &[f32]) -> TokenId {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as TokenId
}

/// Greedy ids after `prompt`, `n` of them, from a fresh KV state.
fn greedy(model: &mut Transformer, prompt: &[TokenId], n: usize) -> Vec<TokenId> {
    model.truncate(0).expect("reset");
    let mut last = model
        .forward_all(prompt)
        .expect("prefill")
        .pop()
        .expect("a row");
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let next = argmax(&last);
        out.push(next);
        last = model
            .forward_all(&[next])
            .expect("decode")
            .pop()
            .expect("a row");
    }
    out
}

/// Which implementation runs the model.
#[derive(Debug, Clone, Copy)]
enum Runtime {
    /// The CPU decoder at a precision.
    Cpu(Precision),
    /// burn's network with a weight layout, on the given device.
    Burn(WeightLayout),
}

fn load(path: &std::path::Path, runtime: Runtime, device: &Device) -> Transformer {
    match runtime {
        Runtime::Cpu(p) => Transformer::load_with(path, &Device::flex(), p),
        Runtime::Burn(layout) => Transformer::load_on_burn(path, device, layout),
    }
    .expect("loads")
}

fn check_model(name: &str, runtime: Runtime) {
    check_on(name, runtime, &Device::flex(), usize::MAX, MUST_AGREE);
}

/// The first `prompts` prompts of `name`, `tokens` greedy tokens each.
fn check_on(name: &str, runtime: Runtime, device: &Device, prompts: usize, tokens: usize) {
    let Some(path) = model_path(name) else {
        return;
    };
    let fixture = fixture();
    let cases = fixture.models.get(name).expect("model in the fixture");
    let mut model = load(&path, runtime, device);
    let tokenizer = model.tokenizer().expect("embedded tokenizer");
    for case in cases.iter().take(prompts) {
        let ids = tokenizer.encode(&case.prompt).expect("encodes");
        assert_eq!(
            ids, case.prompt_ids,
            "{name}: prompt ids of {:?}",
            case.prompt
        );
        let got = greedy(&mut model, &ids, tokens);
        let want = &case.generated_ids[..tokens];
        if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
            panic!(
                "{name} ({runtime:?}), prompt {:?}: token {i} is {} but transformers chose {}\n\
                 ours: {got:?}\nthem: {want:?}",
                case.prompt, got[i], want[i]
            );
        }
    }
}

#[test]
fn smollm2_greedy_matches_transformers() {
    check_model("smollm2-135m-instruct", Runtime::Cpu(Precision::Exact));
}

#[test]
fn qwen_0_5b_greedy_matches_transformers() {
    check_model(
        "qwen2.5-coder-0.5b-instruct",
        Runtime::Cpu(Precision::Exact),
    );
}

/// burn's network (the code a GPU runs) with f32 weights agrees too, on flex.
#[test]
fn smollm2_burn_dense_greedy_matches_transformers() {
    check_model("smollm2-135m-instruct", Runtime::Burn(WeightLayout::Dense));
}

/// The GPU path (8-bit weights on wgpu; layers over the 128 MiB buffer limit split into
/// blocks) on whatever adapter there is: Mesa's lavapipe in CI, where one prompt and 16 tokens
/// take about a minute. Only with `HLM_TEST_WGPU=1`.
#[test]
fn qwen_0_5b_greedy_matches_transformers_on_wgpu() {
    let Some(device) = wgpu_support::device_if_enabled() else {
        return;
    };
    check_on(
        "qwen2.5-coder-0.5b-instruct",
        Runtime::Burn(WeightLayout::Auto),
        &device,
        1,
        16,
    );
}

/// Largest gap between two tokens' exact logits that counts as a near-tie: where the `fast`
/// continuation first leaves transformers', the token transformers chose may lead the `fast`
/// choice by at most this much (a probability ratio of e^0.5 = 1.65).
const NEAR_TIE: f32 = 0.5;
/// Largest difference between a `fast` and an `exact` logit, relative to the exact row's
/// largest magnitude, over every prompt position of every case (measured: 0.045 SmolLM2,
/// 0.050 Qwen2.5-0.5B; llama.cpp rounds activations to 8 bits the same way).
const FAST_LOGIT_ERROR: f32 = 0.08;
/// Root-mean-square difference between `fast` and `exact` logits relative to the RMS of the
/// exact logits, over every prompt position of every case (measured: 0.025 SmolLM2, 0.016
/// Qwen2.5-0.5B).
const FAST_LOGIT_RMS_ERROR: f32 = 0.04;

/// The exact logits after `ids` (from a fresh state).
fn last_logits(model: &mut Transformer, ids: &[TokenId]) -> Vec<f32> {
    model.truncate(0).expect("reset");
    model
        .forward_all(ids)
        .expect("forward")
        .pop()
        .expect("a row")
}

fn check_fast(name: &str) {
    let Some(path) = model_path(name) else {
        return;
    };
    let fixture = fixture();
    let cases = fixture.models.get(name).expect("model in the fixture");
    let mut fast = load(&path, Runtime::Cpu(Precision::Fast), &Device::flex());
    let mut exact = load(&path, Runtime::Cpu(Precision::Exact), &Device::flex());
    let mut worst = 0.0f32;
    let (mut err_sq, mut ref_sq) = (0.0f64, 0.0f64);
    let mut agreed = Vec::new();
    for case in cases {
        // Logits of every prompt position, fast against exact.
        exact.truncate(0).expect("reset");
        fast.truncate(0).expect("reset");
        let want_rows = exact.forward_all(&case.prompt_ids).expect("exact");
        let got_rows = fast.forward_all(&case.prompt_ids).expect("fast");
        for (g, w) in got_rows.iter().zip(&want_rows) {
            let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let err = g
                .iter()
                .zip(w)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            worst = worst.max(err / scale);
            err_sq += g
                .iter()
                .zip(w)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>();
            ref_sq += w.iter().map(|&b| (b as f64).powi(2)).sum::<f64>();
        }
        let n = case.generated_ids.len();
        let got = greedy(&mut fast, &case.prompt_ids, n);
        let want = &case.generated_ids;
        let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) else {
            agreed.push(n);
            continue;
        };
        agreed.push(i);
        let mut prefix = case.prompt_ids.clone();
        prefix.extend_from_slice(&want[..i]);
        let l = last_logits(&mut exact, &prefix);
        let gap = l[want[i] as usize] - l[got[i] as usize];
        eprintln!(
            "{name}, prompt {:?}: fast agrees for {i} tokens, then takes {} where transformers \
             took {} (exact logits {} vs {}: gap {gap})",
            case.prompt, got[i], want[i], l[got[i] as usize], l[want[i] as usize]
        );
        assert!(
            gap <= NEAR_TIE,
            "{name}, prompt {:?}: token {i} is {} but transformers chose {}, which leads it by \
             {gap} (> {NEAR_TIE}) in the exact logits: not a near-tie",
            case.prompt,
            got[i],
            want[i]
        );
    }
    let rms = (err_sq / ref_sq).sqrt() as f32;
    eprintln!(
        "{name}: fast logits within {worst:.4} of the exact row maximum, RMS error {rms:.4} of \
         the exact RMS; greedy agreement {agreed:?} tokens"
    );
    assert!(
        worst <= FAST_LOGIT_ERROR,
        "{name}: fast logits differ by {worst} of the row maximum (> {FAST_LOGIT_ERROR})"
    );
    assert!(
        rms <= FAST_LOGIT_RMS_ERROR,
        "{name}: fast logits' RMS error is {rms} of the exact RMS (> {FAST_LOGIT_RMS_ERROR})"
    );
}

#[test]
fn smollm2_fast_greedy_diverges_only_at_near_ties() {
    check_fast("smollm2-135m-instruct");
}

#[test]
fn qwen_0_5b_fast_greedy_diverges_only_at_near_ties() {
    check_fast("qwen2.5-coder-0.5b-instruct");
}

//! End-to-end tests of the hybrid engine with the local verifier on honest table models:
//! statistical losslessness, exact scripted counts, rollback and the reference methods.

mod support;

use hlm_core::sampling::{argmax, softmax_with_temperature, token_index_bits};
use hlm_core::{
    AcceptanceRule, FilterAction, LanguageModel, LocalVerifier, SpeculativeSampling, TokenId,
    TokenKind,
};
use support::TableLm;
use support::harness::*;

#[test]
fn lossless_standard_hlm_gamma_1() {
    let s = Setup {
        vocab: 4,
        gamma: 1,
        action: FilterAction::Skip,
        bonus: false,
        temperature: 1.0,
        max_new: 3,
    };
    lossless_case(s, always, dense32);
}

#[test]
fn lossless_classic_speculative_gamma_3_with_bonus() {
    let s = Setup {
        vocab: 4,
        gamma: 3,
        action: FilterAction::StopDrafting,
        bonus: true,
        temperature: 1.0,
        max_new: 3,
    };
    lossless_case(s, never, dense32);
}

#[test]
fn lossless_gamma_2_rounds_in_skip_mode() {
    let s = Setup {
        vocab: 4,
        gamma: 2,
        action: FilterAction::Skip,
        bonus: false,
        temperature: 1.0,
        max_new: 3,
    };
    lossless_case(s, always, dense32);
}

#[test]
fn lossless_token_only_uploads() {
    let s = Setup {
        vocab: 4,
        gamma: 1,
        action: FilterAction::Skip,
        bonus: false,
        temperature: 1.0,
        max_new: 3,
    };
    lossless_case(s, always, token_only);
}

/// The same seed gives the same run; another seed gives another.
#[test]
fn runs_are_reproducible_from_the_seed() {
    let s = Setup {
        vocab: 8,
        gamma: 2,
        action: FilterAction::StopDrafting,
        bonus: true,
        temperature: 1.0,
        max_new: 24,
    };
    let mut p = build(&s, Box::new(SpeculativeSampling {}), never(), dense32());
    p.generation.seed = 5;
    let a = p.generate(&[1, 2], &mut |_| {}).unwrap();
    let b = p.generate(&[1, 2], &mut |_| {}).unwrap();
    assert_eq!(a.generated_ids, b.generated_ids);
    assert_eq!(a.stats.uplink_bits, b.stats.uplink_bits);
    let seqs: std::collections::HashSet<Vec<TokenId>> = (0..6)
        .map(|seed| {
            p.generation.seed = seed;
            p.generate(&[1, 2], &mut |_| {}).unwrap().generated_ids
        })
        .collect();
    assert!(seqs.len() > 1);
}

fn greedy_continuation(seed: u64, vocab: usize, prompt: &[TokenId], n: usize) -> Vec<TokenId> {
    let m = TableLm::new(vocab, seed, 3.0);
    let mut hist = prompt.to_vec();
    let mut out = vec![];
    for _ in 0..n {
        let t = argmax(&m.logits_after(&hist)) as TokenId;
        hist.push(t);
        out.push(t);
    }
    out
}

/// At temperature 0 every lossless configuration reproduces the target's greedy output, which
/// exercises rollback of both models after every rejection.
#[test]
fn greedy_runs_equal_target_greedy_for_every_gamma() {
    let vocab = 16;
    let prompt = [3u32, 7];
    let expected = greedy_continuation(TARGET_SEED, vocab, &prompt, 40);
    for (gamma, action, bonus) in [
        (1, FilterAction::Skip, false),
        (1, FilterAction::StopDrafting, true),
        (2, FilterAction::Skip, true),
        (4, FilterAction::StopDrafting, true),
        (5, FilterAction::StopDrafting, false),
    ] {
        let s = Setup {
            vocab,
            gamma,
            action,
            bonus,
            temperature: 0.0,
            max_new: 40,
        };
        let upload = if action == FilterAction::Skip {
            always()
        } else {
            never()
        };
        let mut p = build(&s, Box::new(SpeculativeSampling {}), upload, dense32());
        let r = p.generate(&prompt, &mut |_| {}).unwrap();
        assert_eq!(
            r.generated_ids, expected,
            "gamma {gamma} {action:?} bonus {bonus}"
        );
        assert!(r.stats.resamples > 0, "the case must exercise rejections");
        assert_eq!(
            r.stats.draft_n,
            r.stats.draft_n_accepted
                + r.stats.resamples
                + (r.stats.draft_n - r.stats.draft_n_accepted - r.stats.resamples)
        );
    }
}

#[test]
fn reference_methods_follow_their_model() {
    let vocab = 16;
    let prompt = [3u32, 7];
    let s = Setup {
        vocab,
        gamma: 1,
        action: FilterAction::Skip,
        bonus: false,
        temperature: 0.0,
        max_new: 20,
    };
    let mut slm = build(&s, Box::new(SpeculativeSampling {}), always(), dense32());
    slm.verifier = None;
    let r = slm.generate(&prompt, &mut |_| {}).unwrap();
    assert_eq!(
        r.generated_ids,
        greedy_continuation(DRAFT_SEED, vocab, &prompt, 20)
    );
    assert_eq!(
        (r.stats.uploads, r.stats.skips, r.stats.uplink_bits),
        (0, 20, 0)
    );
    let mut llm = build(&s, Box::new(SpeculativeSampling {}), always(), dense32());
    llm.draft = None;
    let r = llm.generate(&prompt, &mut |_| {}).unwrap();
    assert_eq!(
        r.generated_ids,
        greedy_continuation(TARGET_SEED, vocab, &prompt, 20)
    );
    assert!(r.kinds.iter().all(|k| *k == TokenKind::Target));
    // Only the prompt goes up (the server produced every other token itself); each round
    // returns ⌈log2 3⌉ + ⌈log2 16⌉ = 6 bits.
    assert_eq!(r.stats.uplink_bits, 2 * 4);
    assert_eq!(r.stats.downlink_bits, 20 * 6);
    assert_eq!(r.stats.verify_calls, 20);
}

/// Scripted uploads at temperature 0: which tokens were uploaded, their verdicts, the bits on
/// both links and the target's positions, all predicted by a direct simulation of the method.
#[test]
fn scripted_skipping_counts_are_exact() {
    let vocab = 6;
    let prompt = [1u32, 4, 2];
    let script = vec![
        true, false, false, true, true, false, true, false, false, false, true, true,
    ];
    let n = script.len();
    let s = Setup {
        vocab,
        gamma: 1,
        action: FilterAction::Skip,
        bonus: false,
        temperature: 0.0,
        max_new: n,
    };
    let mut p = build(
        &s,
        Box::new(SpeculativeSampling {}),
        Box::new(Script {
            upload: script.clone(),
        }),
        dense32(),
    );
    let mut events = vec![];
    let r = p
        .generate(&prompt, &mut |e| events.push((e.id, e.kind)))
        .unwrap();

    // Direct simulation.
    let draft = TableLm::new(vocab, DRAFT_SEED, 3.0);
    let target = TableLm::new(vocab, TARGET_SEED, 3.0);
    let idx = token_index_bits(vocab); // 3 bits
    let mut hist = prompt.to_vec();
    let mut expected = vec![];
    let (mut up_bits, mut down_bits) = (prompt.len() as u64 * idx, 0u64);
    let mut server_positions = prompt.len() as u64;
    let mut unseen_device = 0u64; // skipped tokens the server has not seen
    let mut unseen_total = 0u64; // + corrections
    for &upload in &script {
        let d = argmax(&draft.logits_after(&hist)) as TokenId;
        if upload {
            let y = argmax(&target.logits_after(&hist)) as TokenId;
            up_bits += unseen_device * idx + idx + vocab as u64 * 32;
            server_positions += unseen_total + 1;
            let kind = if y == d {
                TokenKind::Verified
            } else {
                TokenKind::Resampled
            };
            down_bits += 2 + if kind == TokenKind::Resampled { idx } else { 0 };
            unseen_device = 0;
            unseen_total = u64::from(kind == TokenKind::Resampled);
            expected.push((y, kind));
            hist.push(y);
        } else {
            expected.push((d, TokenKind::Skipped));
            unseen_device += 1;
            unseen_total += 1;
            hist.push(d);
        }
    }
    assert_eq!(events, expected);
    let uploads = script.iter().filter(|&&u| u).count() as u64;
    let resamples = expected
        .iter()
        .filter(|e| e.1 == TokenKind::Resampled)
        .count() as u64;
    assert!(
        resamples > 0 && resamples < uploads,
        "the script must mix verdicts"
    );
    let st = &r.stats;
    assert_eq!(st.uploads, uploads);
    assert_eq!(st.draft_n, uploads);
    assert_eq!(st.skips, n as u64 - uploads);
    assert_eq!(st.resamples, resamples);
    assert_eq!(st.draft_n_accepted, uploads - resamples);
    assert_eq!(st.verify_calls, uploads);
    assert_eq!(st.uplink_bits, up_bits);
    assert_eq!(st.downlink_bits, down_bits);
    assert_eq!(st.server_tokens, server_positions);
    assert_eq!(st.generated_tokens, n);
    assert!((st.upload_rate - uploads as f64 / n as f64).abs() < 1e-12);
}

/// A skipped token after an uploaded one in the same round (γ = 2) is discarded when the
/// uploaded one is rejected, and the draft model is rolled back past it.
#[test]
fn rejection_discards_later_skipped_tokens_of_the_round() {
    let vocab = 6;
    let prompt = [1u32, 4, 2];
    let script: Vec<bool> = (0..30).map(|i| i % 3 != 1).collect();
    let s = Setup {
        vocab,
        gamma: 2,
        action: FilterAction::Skip,
        bonus: false,
        temperature: 0.0,
        max_new: 30,
    };
    let mut p = build(
        &s,
        Box::new(SpeculativeSampling {}),
        Box::new(Script { upload: script }),
        dense32(),
    );
    let r = p.generate(&prompt, &mut |_| {}).unwrap();
    // Every committed token must be the greedy choice of whichever model decided it, given the
    // committed history: replay and check.
    let draft = TableLm::new(vocab, DRAFT_SEED, 3.0);
    let target = TableLm::new(vocab, TARGET_SEED, 3.0);
    let mut hist = prompt.to_vec();
    for (&t, &k) in r.generated_ids.iter().zip(&r.kinds) {
        let want = match k {
            TokenKind::Skipped => argmax(&draft.logits_after(&hist)),
            TokenKind::Verified | TokenKind::Resampled => argmax(&target.logits_after(&hist)),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(t as usize, want);
        hist.push(t);
    }
    assert!(r.stats.resamples > 0);
    assert!(
        r.stats.drafted > r.generated_ids.len() as u64,
        "some drafts were discarded"
    );
}

/// Calibration records: one per judged draft, with the exact rejection probability
/// max(0, 1 − y_d/x_d) computed from the two table models independently of the engine.
#[test]
fn calibration_records_carry_exact_rejection_probabilities() {
    let s = Setup {
        vocab: 6,
        gamma: 1,
        action: FilterAction::Skip,
        bonus: false,
        temperature: 1.0,
        max_new: 40,
    };
    // A rule that skips everything: calibration mode must still upload every draft.
    let mut p = build(&s, Box::new(SpeculativeSampling {}), never(), dense32());
    p.upload_everything = true;
    let prompt = [1, 2];
    let r = p.generate(&prompt, &mut |_| {}).unwrap();
    assert_eq!(r.stats.skips, 0);
    assert_eq!(r.records.len() as u64, r.stats.draft_n);
    assert!(r.records.len() >= 20);
    let draft = TableLm::new(s.vocab, DRAFT_SEED, 3.0);
    let target = TableLm::new(s.vocab, TARGET_SEED, 3.0);
    let mut accepted = 0;
    for rec in &r.records {
        // The context of the draft is the prompt plus the tokens committed before it.
        let mut ctx = prompt.to_vec();
        ctx.extend_from_slice(&r.generated_ids[..rec.index]);
        let x = softmax_with_temperature(&draft.logits_after(&ctx), 1.0)[rec.token as usize];
        let y = softmax_with_temperature(&target.logits_after(&ctx), 1.0)[rec.token as usize];
        assert!((rec.draft_prob - x).abs() < 1e-6, "{rec:?} vs x = {x}");
        assert!(
            (rec.target_prob.unwrap() - y).abs() < 1e-6,
            "{rec:?} vs y = {y}"
        );
        let rej = (1.0 - y / x).max(0.0);
        assert!((rec.rejection_probability.unwrap() - rej).abs() < 1e-5);
        if rej == 0.0 {
            assert!(
                rec.accepted,
                "a token with y_d >= x_d is always accepted: {rec:?}"
            );
        }
        accepted += usize::from(rec.accepted);
    }
    assert_eq!(accepted as u64, r.stats.draft_n_accepted);
}

/// Adaptive γ picks each round's length (0 = the target alone) from measured costs and the
/// acceptance so far: a stopping rule on the past, which keeps speculative sampling lossless.
#[test]
fn lossless_with_adaptive_gamma() {
    let s = Setup {
        vocab: 4,
        gamma: 4,
        action: FilterAction::StopDrafting,
        bonus: true,
        temperature: 1.0,
        max_new: 3,
    };
    let prompt = [1u32];
    let runs = 6000;
    let law = target_law(s.vocab, &prompt, s.max_new);
    let mut p = build(&s, Box::new(SpeculativeSampling {}), never(), dense32());
    p.speculation.adaptive = true;
    let p_value = chi_square_p(&sample_outputs(&mut p, &prompt, runs), &law, runs);
    assert!(
        p_value > 1e-3,
        "adaptive gamma rejected as lossy: p = {p_value}"
    );
}

/// At temperature 0, adaptive γ reproduces the target's greedy output whether it speculates
/// or lets the target decode alone (here the table models cost the same, so it does both:
/// target-only steps, probe rounds, and catching the draft model up afterwards).
#[test]
fn greedy_with_adaptive_gamma_equals_target_greedy() {
    let vocab = 16;
    let prompt = [3u32, 7];
    let expected = greedy_continuation(TARGET_SEED, vocab, &prompt, 60);
    let s = Setup {
        vocab,
        gamma: 4,
        action: FilterAction::StopDrafting,
        bonus: true,
        temperature: 0.0,
        max_new: 60,
    };
    let mut p = build(&s, Box::new(SpeculativeSampling {}), never(), dense32());
    p.speculation.adaptive = true;
    let r = p.generate(&prompt, &mut |_| {}).unwrap();
    assert_eq!(r.generated_ids, expected);
    assert!(
        r.stats.target_only_tokens > 0,
        "the first token is the target's alone"
    );
    assert!(
        r.stats.verify_calls > r.stats.target_only_tokens,
        "{:?}",
        r.stats
    );
    assert_eq!(r.stats.generated_tokens, 60);
}

/// Speculative sampling between two tiny random-weight transformers at `fast` precision
/// (their weights quantised to Q8_0, activations to 8 bits) gives the target's distribution
/// exactly: the target's verification pass over several positions computes the logits of
/// one position at a time bit for bit, so the law below, computed position by position, is
/// the law the engine samples. A verifier that accepts everything follows the draft model
/// instead and must be caught.
#[test]
fn lossless_on_tiny_transformers_at_fast_precision() {
    use burn::tensor::Device;
    use hlm_backends::{Precision, Transformer};
    use hlm_core::{DraftModel, TargetModel};
    let fixture = |name: &str| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    };
    let load = |name: &str| {
        Transformer::load_with(&fixture(name), &Device::flex(), Precision::Fast).expect("loads")
    };
    let (prompt, len, temperature, runs) = ([1u32, 5], 2usize, 0.5f32, 8000u64);
    // The target's law, one forward pass per prefix.
    let mut target = load("tiny-qwen2");
    let law = law_of(&prompt, len, |hist| {
        target.truncate(0).unwrap();
        let logits = target.forward_all(hist).unwrap().pop().unwrap();
        softmax_with_temperature(&logits, temperature)
    });
    let testable = law.values().filter(|&&p| p * runs as f64 >= 5.0).count();
    assert!(testable >= 20, "only {testable} cells can be tested");
    let pipeline = |rule: Box<dyn AcceptanceRule>| {
        let draft: Box<dyn DraftModel> = Box::new(load("tiny-llama"));
        let verifier = LocalVerifier::new(Box::new(load("tiny-qwen2")), rule.into());
        let mut p = build(
            &Setup {
                vocab: 64,
                gamma: 3,
                action: FilterAction::StopDrafting,
                bonus: true,
                temperature,
                max_new: len,
            },
            Box::new(SpeculativeSampling {}),
            never(),
            dense32(),
        );
        p.draft = Some(draft);
        p.verifier = Some(Box::new(verifier));
        p
    };
    let mut good = pipeline(Box::new(SpeculativeSampling {}));
    let p_good = chi_square_p(&sample_outputs(&mut good, &prompt, runs), &law, runs);
    assert!(
        p_good > 1e-3,
        "speculative sampling at fast precision rejected as lossy: p = {p_good}"
    );
    let mut broken = pipeline(Box::new(AcceptEverything {}));
    let p_broken = chi_square_p(&sample_outputs(&mut broken, &prompt, runs), &law, runs);
    assert!(
        p_broken < 1e-6,
        "a verifier that accepts everything passed: p = {p_broken}"
    );
}

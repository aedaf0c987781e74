//! The lossless hybrid methods on honest table models: split verification (DSSD: only x_d goes
//! up, the target's distribution comes down after a rejection) and deferred verification of
//! the tokens a filter skips (checked with the next upload, rolled back when rejected).
//! Chi-square losslessness against the target's exact law, with deliberately broken variants
//! that must fail, and exact counts against a direct simulation.

mod support;

use hlm_core::sampling::{argmax, sample, token_index_bits};
use hlm_core::{
    AcceptanceRule, FilterAction, Judgement, Pipeline, ResidualCodec, SpeculativeSampling,
    SplitJudgement, TokenId, TokenKind, UploadCodec, UploadRule,
};
use hlm_filters::SplitCodec;
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};
use support::TableLm;
use support::harness::*;

/// Deliberately wrong: a draft judged on x_d alone is never rejected, so a deferred token is
/// never rolled back (full uploads are judged exactly).
#[derive(Debug, Serialize, Deserialize)]
struct NeverRollBack {}

#[typetag::serde(name = "test_never_roll_back")]
impl AcceptanceRule for NeverRollBack {
    fn judge(&self, d: TokenId, x: &[f32], y: &[f32], r: &mut dyn RngCore) -> Judgement {
        SpeculativeSampling {}.judge(d, x, y, r)
    }
    fn judge_split(
        &self,
        _d: TokenId,
        _x: f32,
        _y: &[f32],
        _r: &mut dyn RngCore,
    ) -> SplitJudgement {
        SplitJudgement::Accept
    }
}

/// Deliberately wrong: a rejected split draft is replaced by a draw from y itself instead of the
/// residual norm(max(0, y − x)).
#[derive(Debug, Serialize, Deserialize)]
struct ReplaceFromTarget {}

#[typetag::serde(name = "test_replace_from_target")]
impl AcceptanceRule for ReplaceFromTarget {
    fn judge(&self, d: TokenId, x: &[f32], y: &[f32], r: &mut dyn RngCore) -> Judgement {
        SpeculativeSampling {}.judge(d, x, y, r)
    }
    fn judge_split(&self, d: TokenId, x_d: f32, y: &[f32], r: &mut dyn RngCore) -> SplitJudgement {
        let y_d = y[d as usize];
        if x_d <= y_d || r.random::<f64>() < (y_d / x_d) as f64 {
            SplitJudgement::Accept
        } else {
            SplitJudgement::Replace(sample(y, r) as TokenId)
        }
    }
}

fn broken() -> Vec<(&'static str, Box<dyn AcceptanceRule>)> {
    vec![
        (
            "split verification that never rolls back",
            Box::new(NeverRollBack {}),
        ),
        (
            "a replacement drawn from y, not the residual",
            Box::new(ReplaceFromTarget {}),
        ),
    ]
}

fn split() -> Box<dyn UploadCodec> {
    Box::new(SplitCodec {})
}

/// Uploads the tokens at even positions; the odd ones are skipped (deferred).
fn alternate() -> Box<dyn UploadRule> {
    Box::new(Script {
        upload: (0..64).map(|i| i % 2 == 0).collect(),
    })
}

fn sampled(gamma: usize, action: FilterAction, bonus: bool) -> Setup {
    Setup {
        vocab: 4,
        gamma,
        action,
        bonus,
        temperature: 1.0,
        max_new: 3,
    }
}

#[test]
fn split_verification_is_lossless_gamma_1() {
    let s = sampled(1, FilterAction::Skip, false);
    assert_lossless(&s, always, split, |_| {}, broken());
}

#[test]
fn split_verification_is_lossless_gamma_3_with_bonus() {
    let s = sampled(3, FilterAction::StopDrafting, true);
    assert_lossless(&s, never, split, |_| {}, broken());
}

#[test]
fn deferred_verification_is_lossless_gamma_1() {
    let s = sampled(1, FilterAction::Defer, false);
    assert_lossless(&s, alternate, dense32, |_| {}, broken());
}

/// Nothing is ever selected: every token is deferred, rounds are sent at `max_deferred`.
#[test]
fn deferred_verification_is_lossless_when_every_token_is_skipped() {
    let s = sampled(2, FilterAction::Defer, false);
    assert_lossless(
        &s,
        never,
        dense32,
        |p| p.speculation.max_deferred = 2,
        broken(),
    );
}

#[test]
fn deferred_verification_is_lossless_gamma_2_with_split_uploads_and_bonus() {
    let s = sampled(2, FilterAction::Defer, true);
    assert_lossless(
        &s,
        alternate,
        split,
        |p| p.speculation.max_deferred = 1,
        broken(),
    );
}

/// A top-1 residual distorts the replacement: the output is no longer the target's, and the run
/// records a non-zero bound; the exact dense residual records none.
#[test]
fn a_lossy_residual_is_caught_and_bounded() {
    let s = sampled(1, FilterAction::Skip, false);
    let prompt = [1u32];
    let mut p = build(&s, Box::new(SpeculativeSampling {}), always(), split());
    p.speculation.residual = ResidualCodec::TopK { k: 1, bits: 32 };
    let p_value = law_p_value(&mut p, &s, &prompt, 6000);
    assert!(
        p_value < 1e-6,
        "a top-1 residual passed as lossless: p = {p_value}"
    );
    let bound: f64 = (0..200)
        .map(|seed| {
            p.generation.seed = seed;
            p.generate(&prompt, &mut |_| {})
                .unwrap()
                .stats
                .residual_tv_bound
        })
        .sum();
    assert!(bound > 0.0);
    p.speculation.residual = ResidualCodec::default();
    for seed in 0..50 {
        p.generation.seed = seed;
        let r = p.generate(&prompt, &mut |_| {}).unwrap();
        assert_eq!(r.stats.residual_tv_bound, 0.0);
    }
}

/// Split verification at T = 1, γ = 1: every draft costs its id and 32 bits up; every rejection
/// is a residual download of |V| · 32 bits (or the top-k size), and its replacement, drawn on the
/// device, goes up as context with the next round.
#[test]
fn split_verification_counts_are_exact() {
    let vocab = 6;
    let idx = token_index_bits(vocab);
    let s = Setup {
        vocab,
        gamma: 1,
        action: FilterAction::Skip,
        bonus: false,
        temperature: 1.0,
        max_new: 40,
    };
    let prompt = [1u32, 2];
    for (residual, residual_bits) in [
        (ResidualCodec::Dense { bits: 32 }, vocab as u64 * 32),
        (
            ResidualCodec::TopK { k: 2, bits: 16 },
            token_index_bits(vocab + 1) + 2 * (16 + idx) + 32,
        ),
    ] {
        let mut p = build(&s, Box::new(SpeculativeSampling {}), always(), split());
        p.speculation.residual = residual;
        p.generation.seed = 3;
        let r = p.generate(&prompt, &mut |_| {}).unwrap();
        let st = &r.stats;
        assert!(st.resamples > 3 && st.resamples < 30, "{st:?}");
        assert_eq!(st.residual_downloads, st.resamples);
        assert_eq!(st.residual_bits, st.residual_downloads * residual_bits);
        assert_eq!(st.draft_n, st.drafted);
        assert_eq!(st.uploads, st.drafted);
        assert_eq!((st.deferred, st.rollbacks, st.discarded_drafts), (0, 0, 0));
        // The last replacement is never sent up when it ends the run.
        let last_replaced = r.kinds.last() == Some(&TokenKind::Resampled);
        let replacements_sent = st.resamples - u64::from(last_replaced);
        assert_eq!(
            st.uplink_bits,
            prompt.len() as u64 * idx + st.draft_n * (idx + 32) + replacements_sent * idx
        );
        // Each round's verdict count is ⌈log2(γ + 2)⌉ = 2 bits.
        assert_eq!(st.downlink_bits, st.verify_calls * 2 + st.residual_bits);
        assert_eq!(st.generated_tokens, 40);
    }
}

/// Deferred verification at T = 0 with scripted uploads (γ = 2, at most 3 deferred tokens a
/// round): every token, verdict, rollback, discarded draft and bit predicted by a direct
/// simulation of the method.
#[test]
fn deferred_verification_counts_are_exact() {
    let vocab = 6;
    let (gamma, max_deferred) = (2usize, 3usize);
    let prompt = [1u32, 4, 2];
    let script: Vec<bool> = (0..64).map(|i| i % 5 == 0 || i % 7 == 3).collect();
    let n = 30;
    let s = Setup {
        vocab,
        gamma,
        action: FilterAction::Defer,
        bonus: false,
        temperature: 0.0,
        max_new: n,
    };
    let mut p: Pipeline = build(
        &s,
        Box::new(SpeculativeSampling {}),
        Box::new(Script {
            upload: script.clone(),
        }),
        dense32(),
    );
    p.speculation.max_deferred = max_deferred;
    let mut events = vec![];
    let r = p
        .generate(&prompt, &mut |e| events.push((e.id, e.kind)))
        .unwrap();

    // Direct simulation.
    let draft = TableLm::new(vocab, DRAFT_SEED, 3.0);
    let target = TableLm::new(vocab, TARGET_SEED, 3.0);
    let idx = token_index_bits(vocab);
    let verdict_bits = token_index_bits(gamma + max_deferred + 2);
    let mut hist = prompt.to_vec();
    let mut expected: Vec<(TokenId, TokenKind)> = vec![];
    let (mut up, mut down) = (prompt.len() as u64 * idx, 0u64);
    let mut server = prompt.len() as u64;
    let (mut drafted, mut deferred, mut rollbacks, mut discarded) = (0u64, 0u64, 0u64, 0u64);
    let mut unseen = 0u64; // a replacement the server made and has not been fed
    let mut round: Vec<(TokenId, bool)> = vec![];
    while expected.len() < n {
        let mut ctx = hist.clone();
        ctx.extend(round.iter().map(|r| r.0));
        let d = argmax(&draft.logits_after(&ctx)) as TokenId;
        let upload = script[expected.len() + round.len()];
        drafted += 1;
        deferred += u64::from(!upload);
        round.push((d, upload));
        let uploads = round.iter().filter(|r| r.1).count();
        let deferrals = round.len() - uploads;
        if uploads < gamma && deferrals < max_deferred && expected.len() + round.len() < n {
            continue;
        }
        for &(_, u) in &round {
            up += idx + if u { vocab as u64 * 32 } else { 32 };
        }
        server += unseen + round.len() as u64;
        unseen = 0;
        down += verdict_bits;
        for (i, &(d, u)) in round.iter().enumerate() {
            let y = argmax(&target.logits_after(&hist)) as TokenId;
            if y == d {
                expected.push((d, TokenKind::Verified));
                hist.push(d);
            } else {
                expected.push((y, TokenKind::Resampled));
                hist.push(y);
                down += idx;
                unseen = 1;
                rollbacks += u64::from(!u);
                discarded += (round.len() - i - 1) as u64;
                break;
            }
        }
        round.clear();
    }
    assert_eq!(events, expected);
    let st = &r.stats;
    assert!(rollbacks > 0 && discarded > 0, "the script must roll back");
    assert_eq!(st.drafted, drafted);
    assert_eq!(st.deferred, deferred);
    assert_eq!(st.skips, deferred);
    assert_eq!(st.uploads, drafted - deferred);
    assert_eq!(st.draft_n, drafted);
    assert_eq!(st.rollbacks, rollbacks);
    assert_eq!(st.discarded_drafts, discarded);
    // Greedy replacements are the server's own: nothing comes down but the token.
    assert_eq!(st.residual_downloads, 0);
    assert_eq!(st.uplink_bits, up);
    assert_eq!(st.downlink_bits, down);
    assert_eq!(st.server_tokens, server);
}

/// At temperature 0 the lossless methods reproduce the target's greedy output.
#[test]
fn greedy_lossless_methods_equal_target_greedy() {
    let vocab = 16;
    let prompt = [3u32, 7];
    let target = TableLm::new(vocab, TARGET_SEED, 3.0);
    let mut hist = prompt.to_vec();
    for _ in 0..40 {
        let t = argmax(&target.logits_after(&hist)) as TokenId;
        hist.push(t);
    }
    let expected = hist[prompt.len()..].to_vec();
    for (gamma, action, upload, codec) in [
        (
            1,
            FilterAction::Skip,
            always as fn() -> _,
            split as fn() -> _,
        ),
        (3, FilterAction::StopDrafting, never, split),
        (1, FilterAction::Defer, alternate, dense32),
        (2, FilterAction::Defer, never, split),
    ] {
        let s = Setup {
            vocab,
            gamma,
            action,
            bonus: true,
            temperature: 0.0,
            max_new: 40,
        };
        let mut p = build(&s, Box::new(SpeculativeSampling {}), upload(), codec());
        let r = p.generate(&prompt, &mut |_| {}).unwrap();
        assert_eq!(r.generated_ids, expected, "gamma {gamma} {action:?}");
        assert!(r.stats.resamples > 0);
    }
}

//! Filter overhead per token: temperature perturbation (K = 20) over Qwen2.5's 151,936-entry
//! vocabulary, attention importance over one layer of 14 heads, and the thresholds, as the
//! engine calls them. Compare with one draft decode step of the same device (issue 4 target:
//! below 2 %). Run: `cargo bench -p hlm-filters --bench filter_overhead`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hlm_core::{
    AttentionMap, HostLogits, ImportanceScorer, LayerAttention, TokenView, UncertaintyEstimator,
    UploadRule,
};
use hlm_filters::{
    AttentionImportance, Combine, ImportanceCondition, MeanStdThreshold, RiskBoundThreshold,
    TemperaturePerturbation, TokenFilter, UncertaintyCondition,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const VOCAB: usize = 151_936;
const HEADS: usize = 14;
const CONTEXT: usize = 512;

fn logits(rng: &mut ChaCha8Rng) -> Vec<f32> {
    // Peaked like a language model's: a few large logits over a broad low floor.
    let mut l: Vec<f32> = (0..VOCAB)
        .map(|_| rng.random::<f32>() * 6.0 - 3.0)
        .collect();
    for i in 0..8 {
        l[i * 997] = 12.0 - i as f32;
    }
    l
}

fn attention(rng: &mut ChaCha8Rng) -> AttentionMap {
    let heads = (0..HEADS)
        .map(|_| {
            let w: Vec<f32> = (0..CONTEXT).map(|_| rng.random::<f32>()).collect();
            let s: f32 = w.iter().sum();
            w.into_iter().map(|x| x / s).collect()
        })
        .collect();
    AttentionMap {
        layers: vec![LayerAttention { layer: 23, heads }],
    }
}

fn bench(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let l = HostLogits::new(logits(&mut rng));
    let att = attention(&mut rng);
    let draft = 0u32;

    let tp = TemperaturePerturbation::default();
    c.bench_function("temperature_perturbation K=20, |V|=151936", |b| {
        b.iter(|| black_box(tp.estimate(black_box(&l), draft, &mut rng).ok()))
    });
    let imp = AttentionImportance::default();
    c.bench_function("attention importance, 14 heads x 512", |b| {
        b.iter(|| black_box(imp.score(black_box(&att)).ok()))
    });
    // OR makes both conditions run for every token (the worst case).
    let rule = TokenFilter {
        uncertainty: Some(UncertaintyCondition {
            estimator: Box::new(TemperaturePerturbation::default()),
            threshold: Box::new(RiskBoundThreshold::default()),
        }),
        importance: Some(ImportanceCondition {
            scorer: Box::new(AttentionImportance::default()),
            threshold: Box::new(MeanStdThreshold::default()),
        }),
        combine: Combine::Or,
    };
    c.bench_function("token_filter decide (both conditions)", |b| {
        b.iter(|| {
            let view = TokenView {
                logits: &l,
                temperature: 1.0,
                draft,
                attention: Some(&att),
                position: 0,
            };
            black_box(rule.decide(&view, &mut rng).ok())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! The token filter's per-token work where the draft's logits live, over Qwen2.5's 151,936-entry
//! vocabulary: temperature perturbation (K = 20), drawing the draft, the whole filter decision
//! as the engine makes it (draw, x_d, perturbation, attention importance, thresholds), and the
//! whole-vector read back that the host path needed every step (now only for uploaded tokens).
//! Host reference (the filters' own code on a host vector) vs burn flex (CPU), plus wgpu with
//! `HLM_BENCH_WGPU=1`. This is the one filter-overhead benchmark (hlm-filters' host-only
//! twin with the same synthetic workload was folded into it). When the
//! Qwen2.5-Coder-0.5B draft model is fetched, one of its decode steps on the same device is
//! measured too, the yardstick of issue 4's target (filter below 2 % of it).
//!
//! `cargo bench --workspace --profile dev --bench device_filter` (a release build of burn takes
//! ~30 min on a 2-core machine; dev builds dependencies at opt-level 2).

use std::hint::black_box;

use burn::tensor::{Tensor, TensorData};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use hlm_backends::{DeviceLogits, Transformer, parse_device, resolve_model_path};
use hlm_core::{
    AttentionMap, DraftModel, HostLogits, LanguageModel, LayerAttention, LayerSelection,
    NextTokenLogits, TokenView, UncertaintyEstimator, UploadRule,
};
use hlm_filters::{
    AttentionImportance, Combine, ImportanceCondition, MeanStdThreshold, RiskBoundThreshold,
    TemperaturePerturbation, TokenFilter, UncertaintyCondition,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const VOCAB: usize = 151_936;

fn logits() -> Vec<f32> {
    // Peaked like a language model's: a few large logits over a broad low floor.
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut l: Vec<f32> = (0..VOCAB)
        .map(|_| rng.random::<f32>() * 6.0 - 3.0)
        .collect();
    for i in 0..8 {
        l[i * 997] = 12.0 - i as f32;
    }
    l
}

/// One layer of attention of the newest position: 14 heads over 512 positions.
fn attention(rng: &mut ChaCha8Rng) -> AttentionMap {
    let heads = (0..14)
        .map(|_| {
            let w: Vec<f32> = (0..512).map(|_| rng.random::<f32>()).collect();
            let s: f32 = w.iter().sum();
            w.into_iter().map(|x| x / s).collect()
        })
        .collect();
    AttentionMap {
        layers: vec![LayerAttention { layer: 23, heads }],
    }
}

/// The paper's rule with both conditions evaluated for every token (OR: the worst case).
fn paper_rule() -> TokenFilter {
    TokenFilter {
        uncertainty: Some(UncertaintyCondition {
            estimator: Box::new(TemperaturePerturbation::default()),
            threshold: Box::new(RiskBoundThreshold::default()),
        }),
        importance: Some(ImportanceCondition {
            scorer: Box::new(AttentionImportance::default()),
            threshold: Box::new(MeanStdThreshold::default()),
        }),
        combine: Combine::Or,
    }
}

fn bench_on(c: &mut Criterion, name: &str, make: &dyn Fn() -> Box<dyn NextTokenLogits>) {
    let est = TemperaturePerturbation::default();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let l = make();
    c.bench_function(&format!("{name}: temperature_perturbation K=20"), |b| {
        b.iter(|| black_box(est.estimate(l.as_ref(), 0, &mut rng).ok()))
    });
    c.bench_function(&format!("{name}: sample the draft (T=1)"), |b| {
        b.iter(|| black_box(l.sample(1.0, rng.random::<f64>()).ok()))
    });
    // Everything the engine asks per drafted token: the draw, x_d, then the rule.
    let rule = paper_rule();
    let att = attention(&mut rng);
    c.bench_function(&format!("{name}: whole filter decision per token"), |b| {
        b.iter(|| {
            let d = l.sample(1.0, rng.random::<f64>()).ok()?;
            let x_d = l.token_probs(d, &[1.0]).ok()?;
            let view = TokenView {
                logits: l.as_ref(),
                temperature: 1.0,
                draft: d,
                attention: Some(&att),
                position: 0,
            };
            black_box(Some((x_d, rule.decide(&view, &mut rng).ok()?)))
        })
    });
    // A fresh handle per read: a read back is cached once done.
    c.bench_function(&format!("{name}: read the whole vector back"), |b| {
        b.iter_batched(make, |l| black_box(l.to_host().ok()), BatchSize::SmallInput)
    });
}

fn bench(c: &mut Criterion) {
    let host = logits();
    bench_on(c, "host", &|| HostLogits::boxed(host.clone()));
    let mut devices = vec!["cpu"];
    if std::env::var("HLM_BENCH_WGPU").as_deref() == Ok("1") {
        devices.push("wgpu");
    }
    for name in devices {
        let dev = match parse_device(name) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("skipping {name}: {e}");
                continue;
            }
        };
        let make = || -> Box<dyn NextTokenLogits> {
            let t = Tensor::<1>::from_data(TensorData::new(host.clone(), [VOCAB]), &dev);
            Box::new(DeviceLogits::new(t))
        };
        let label = if name == "cpu" { "flex" } else { "wgpu" };
        bench_on(c, label, &make);
        decode_step(c, label, &dev);
    }
}

/// One decode step of the real 0.5B draft model at a fixed context of 64 tokens, with the
/// attention of its last layer (what the paper's filter asks for), if the model is fetched.
fn decode_step(c: &mut Criterion, label: &str, dev: &burn::tensor::Device) {
    let name = "qwen2.5-coder-0.5b-instruct";
    let model = resolve_model_path(name, None).and_then(|p| Transformer::load(&p, dev));
    let mut model = match model {
        Ok(m) => m,
        Err(e) => {
            eprintln!("no decode-step yardstick ({name} not loaded: {e})");
            return;
        }
    };
    let context: Vec<u32> = (0..64).map(|i| 100 + i * 7).collect();
    if let Err(e) = DraftModel::forward(&mut model, &context, None) {
        eprintln!("prefill failed: {e}");
        return;
    }
    c.bench_function(&format!("{label}: {name} decode step (context 64)"), |b| {
        b.iter(|| {
            let step = DraftModel::forward(&mut model, &[42], Some(&LayerSelection::Last));
            let _ = model.truncate(64);
            black_box(step.ok().map(|s| s.logits.vocab_size()))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);

//! The token filter's per-token work where the draft's logits live, over Qwen2.5's 151,936-entry
//! vocabulary: temperature perturbation (K = 20), drawing the draft, and the whole-vector read
//! back that the host path needed every step (now only for uploaded tokens). Host reference vs
//! burn flex (CPU), plus wgpu with `HLM_BENCH_WGPU=1`. Compare with one draft decode step on the
//! same device (issue 4 target: filter below 2 %).
//!
//! `cargo bench --workspace --profile dev --bench device_filter` (a release build of burn takes
//! ~30 min on a 2-core machine; dev builds dependencies at opt-level 2).

use std::hint::black_box;

use burn::tensor::{Tensor, TensorData};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use hlm_backends::{DeviceLogits, parse_device};
use hlm_core::{HostLogits, NextTokenLogits, UncertaintyEstimator};
use hlm_filters::TemperaturePerturbation;
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
        bench_on(c, if name == "cpu" { "flex" } else { "wgpu" }, &make);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);

//! The token filter's queries answered on the burn device ([`DeviceLogits`]) agree with the host
//! reference ([`HostLogits`]) on flex, and on wgpu with `HLM_TEST_WGPU=1`; a real draft model's
//! step hands out device logits.

#[path = "support/wgpu.rs"]
mod wgpu_support;

use burn::tensor::{Tensor, TensorData};
use hlm_backends::{DeviceLogits, parse_device};
use hlm_core::{HostLogits, NextTokenLogits, UncertaintyEstimator};
use hlm_filters::{Entropy, TemperaturePerturbation, TopProbabilityMargin};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Language-model-like logits: a few large values over a broad floor.
fn peaked(vocab: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..vocab)
        .map(|i| {
            let floor = rng.random::<f32>() * 4.0 - 2.0;
            if i % 97 == 5 { floor + 9.0 } else { floor }
        })
        .collect()
}

fn on(device: &str, logits: &[f32]) -> DeviceLogits {
    let dev = parse_device(device).expect("device");
    let t = Tensor::<1>::from_data(TensorData::new(logits.to_vec(), [logits.len()]), &dev);
    DeviceLogits::new(t)
}

fn agree_with_host(device: &str) {
    let l = peaked(5_000, 1);
    let host = HostLogits::new(l.clone());
    let dev = on(device, &l);
    assert_eq!(dev.vocab_size(), 5_000);
    assert_eq!(&*dev.to_host().expect("read back"), &l[..]);

    let temps = [0.0f32, 1e-4, 0.3, 1.0, 2.0];
    let best = hlm_core::sampling::argmax(&l) as u32;
    for token in [best, 5, 6, 4_999] {
        let want = host.token_probs(token, &temps).expect("host");
        let got = dev.token_probs(token, &temps).expect("device");
        for (t, (g, w)) in temps.iter().zip(got.iter().zip(&want)) {
            let tol = 1e-6 + 1e-4 * w.abs();
            assert!(
                (g - w).abs() <= tol,
                "{device} p_{token}(T={t}): {g} vs {w}"
            );
        }
    }
    let e = host.entropy().expect("host");
    let got = dev.entropy().expect("device");
    assert!(
        (got - e).abs() < 1e-4 * e.max(1.0),
        "{device} entropy {got} vs {e}"
    );
    let [a, b] = host.top_two_probs().expect("host");
    let [ga, gb] = dev.top_two_probs().expect("device");
    assert!(
        (ga - a).abs() < 1e-5 && (gb - b).abs() < 1e-5,
        "{device} top two"
    );

    // Sampling by inverse CDF at the same uniforms: the same tokens except where f32 rounding
    // of the device's cumulative sum moves a boundary past u (rare).
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for t in [1.0f32, 0.6] {
        let n = 300;
        let same = (0..n)
            .filter(|_| {
                let u = rng.random::<f64>();
                dev.sample(t, u).expect("device") == host.sample(t, u).expect("host")
            })
            .count();
        assert!(same >= n - 3, "{device} T={t}: {same}/{n} samples agree");
    }
    assert_eq!(dev.sample(0.0, 0.7).expect("greedy"), best);
    // After a draw at T, the drawn token's probability at T is read from that draw's
    // distribution: the same value as computed afresh.
    let d = dev.sample(0.6, 0.42).expect("draw");
    let want = host.token_probs(d, &[0.6]).expect("host")[0];
    let got = dev.token_probs(d, &[0.6]).expect("device")[0];
    assert!(
        (got - want).abs() <= 1e-6 + 1e-4 * want,
        "{device} x_d {got} vs {want}"
    );

    // The estimators give the same value from the same random stream.
    let estimators: [Box<dyn UncertaintyEstimator>; 3] = [
        Box::new(TemperaturePerturbation::default()),
        Box::new(Entropy {}),
        Box::new(TopProbabilityMargin {}),
    ];
    for est in &estimators {
        for token in [best, 6] {
            let mut r1 = ChaCha8Rng::seed_from_u64(9);
            let mut r2 = r1.clone();
            let want = est.estimate(&host, token, &mut r1).expect("host");
            let got = est.estimate(&dev, token, &mut r2).expect("device");
            assert!(
                (got - want).abs() < 1e-4,
                "{device} {est:?}: {got} vs {want}"
            );
        }
    }

    let err = dev.token_probs(5_000, &[1.0]).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary of 5000"), "{err}");
}

#[test]
fn flex_answers_the_filter_queries_like_the_host() {
    agree_with_host("cpu");
}

#[test]
fn wgpu_answers_the_filter_queries_like_the_host_when_enabled() {
    if wgpu_support::device_if_enabled().is_some() {
        agree_with_host("wgpu");
    }
}

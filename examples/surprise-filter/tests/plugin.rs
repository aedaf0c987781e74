//! The example estimator is picked up from a config file through typetag, and computes what
//! it promises.

use std::path::Path;

use hlm_core::{HostLogits, PipelineConfig, UncertaintyEstimator};
use hlm_surprise_filter::DraftSurprise;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

#[test]
fn estimator_is_one_minus_draft_probability() {
    // softmax([0, ln 3]) = [0.25, 0.75]
    let logits = HostLogits::new(vec![0.0, 3f32.ln()]);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let e = DraftSurprise::default();
    assert!((e.estimate(&logits, 1, &mut rng).unwrap() - 0.25).abs() < 1e-6);
    assert!((e.estimate(&logits, 0, &mut rng).unwrap() - 0.75).abs() < 1e-6);
    let err = e.estimate(&logits, 2, &mut rng).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
}

#[test]
fn config_file_selects_the_plugin() {
    hlm_surprise_filter::link();
    hlm_cli::link_builtin_plugins();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("surprise-hlm.toml");
    let cfg = PipelineConfig::load(&path, &[]).expect("the example config loads");
    let toml = cfg.to_toml().expect("serialises");
    assert!(toml.contains("type = \"draft_surprise\""), "{toml}");
    let bad = PipelineConfig::load(
        &path,
        &["upload.uncertainty.estimator.temperature=0".to_string()],
    )
    .expect_err("temperature 0 is rejected")
    .to_string();
    assert!(bad.contains("temperature") && bad.contains("> 0"), "{bad}");
}

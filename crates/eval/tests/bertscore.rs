//! BERTScore on burn against the `bert-score` Python package on the same encoder and layers
//! (fixtures made by scripts/make_bertscore_fixtures.py): agreement within 1e-3.
//!
//! Needs the fetched all-MiniLM-L6-v2 (`cargo xtask models fetch all-minilm-l6-v2`; `cargo
//! xtask ci` fetches it).

use std::path::PathBuf;

use hlm_eval::BertScorer;
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    layer: usize,
    idf: bool,
    candidates: Vec<String>,
    references: Vec<String>,
    precision: Vec<f64>,
    recall: Vec<f64>,
    f1: Vec<f64>,
}

fn model() -> Option<PathBuf> {
    let dir = hlm_core::registry::models_dir().join("all-minilm-l6-v2");
    dir.join("model.safetensors").is_file().then_some(dir)
}

#[test]
fn agrees_with_the_bert_score_package() {
    let Some(dir) = model() else {
        eprintln!(
            "skipped: all-minilm-l6-v2 is not fetched (cargo xtask models fetch all-minilm-l6-v2)"
        );
        return;
    };
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bertscore.json"),
    )
    .expect("fixture");
    let fixture: Fixture = serde_json::from_str(&text).expect("fixture JSON");
    let mut worst = 0.0f64;
    for case in &fixture.cases {
        let mut scorer = BertScorer::load(&dir, case.layer).expect("scorer");
        let refs: Vec<&str> = case.references.iter().map(String::as_str).collect();
        scorer
            .set_idf(case.idf.then_some(refs.as_slice()))
            .expect("idf");
        for (i, (c, r)) in case.candidates.iter().zip(&case.references).enumerate() {
            let s = scorer.score(c, r).expect("score");
            for (what, got, want) in [
                ("precision", s.precision, case.precision[i]),
                ("recall", s.recall, case.recall[i]),
                ("f1", s.f1, case.f1[i]),
            ] {
                let err = (got - want).abs();
                worst = worst.max(err);
                assert!(
                    err < 1e-3,
                    "layer {} idf {} pair {i} {what}: {got} vs bert-score {want}",
                    case.layer,
                    case.idf
                );
            }
        }
    }
    eprintln!("bertscore: largest difference from bert-score {worst:.2e}");
}

#[test]
fn bad_layers_and_folders_are_named() {
    let e = BertScorer::load(std::path::Path::new("/nonexistent/bert"), 3)
        .err()
        .expect("no model")
        .to_string();
    assert!(e.contains("/nonexistent/bert"), "{e}");
    let Some(dir) = model() else {
        return;
    };
    let e = BertScorer::load(&dir, 7)
        .err()
        .expect("no layer 7")
        .to_string();
    assert!(e.contains("between 1 and 6"), "{e}");
}

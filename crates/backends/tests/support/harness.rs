//! The harness of the engine tests: pipelines of two table models, the target's exact law
//! of continuations, and the chi-square test that compares sampled outputs with it.

use std::collections::HashMap;

use hlm_core::sampling::softmax_with_temperature;
use hlm_core::{
    AcceptanceRule, FilterAction, GenerationConfig, Judgement, LocalVerifier, Pipeline, Result,
    SpeculationConfig, SplitJudgement, TokenId, TokenView, UploadCodec, UploadDecision, UploadRule,
};
use hlm_filters::{AlwaysUpload, DenseCodec, NeverUpload, TokenOnlyCodec};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, ContinuousCDF};

use super::TableLm;

pub const DRAFT_SEED: u64 = 101;
pub const TARGET_SEED: u64 = 202;

/// A deliberately wrong verifier rule: accepts every draft (output follows the draft model).
#[derive(Debug, Serialize, Deserialize)]
pub struct AcceptEverything {}

#[typetag::serde(name = "test_accept_everything")]
impl AcceptanceRule for AcceptEverything {
    fn judge(&self, _d: TokenId, _x: &[f32], _y: &[f32], _r: &mut dyn RngCore) -> Judgement {
        Judgement::Accept
    }
    fn judge_split(
        &self,
        _d: TokenId,
        _x_d: f32,
        _y: &[f32],
        _r: &mut dyn RngCore,
    ) -> SplitJudgement {
        SplitJudgement::Accept
    }
}

/// A rule that uploads exactly the scripted positions.
#[derive(Debug, Serialize, Deserialize)]
pub struct Script {
    pub upload: Vec<bool>,
}

#[typetag::serde(name = "test_script")]
impl UploadRule for Script {
    fn decide(&self, t: &TokenView<'_>, _r: &mut dyn RngCore) -> Result<UploadDecision> {
        Ok(UploadDecision::plain(
            self.upload.get(t.position).copied().unwrap_or(true),
        ))
    }
}

pub struct Setup {
    pub vocab: usize,
    pub gamma: usize,
    pub action: FilterAction,
    pub bonus: bool,
    pub temperature: f32,
    pub max_new: usize,
}

pub fn build(
    s: &Setup,
    rule: Box<dyn AcceptanceRule>,
    upload: Box<dyn UploadRule>,
    codec: Box<dyn UploadCodec>,
) -> Pipeline {
    Pipeline {
        draft: Some(Box::new(TableLm::new(s.vocab, DRAFT_SEED, 3.0))),
        verifier: Some(Box::new(LocalVerifier::new(
            Box::new(TableLm::new(s.vocab, TARGET_SEED, 3.0)),
            rule.into(),
        ))),
        upload: Some(upload),
        codec: Some(codec),
        link: None,
        energy: None,
        tokenizer: None,
        upload_everything: false,
        generation: GenerationConfig {
            max_new_tokens: s.max_new,
            temperature: s.temperature,
            seed: 0,
            stop_at_eos: true,
        },
        speculation: SpeculationConfig {
            gamma: s.gamma,
            filter_action: s.action,
            bonus_token: s.bonus,
            ..SpeculationConfig::default()
        },
        name: "test".into(),
    }
}

/// Exact probability of each continuation of length `len` under the target model.
pub fn target_law(vocab: usize, prompt: &[TokenId], len: usize) -> HashMap<Vec<TokenId>, f64> {
    let target = TableLm::new(vocab, TARGET_SEED, 3.0);
    law_of(prompt, len, |hist| {
        softmax_with_temperature(&target.logits_after(hist), 1.0)
    })
}

/// Exact probability of each continuation of length `len` of `prompt`, given the next-token
/// distribution after each history (`next(prompt + prefix)`).
pub fn law_of(
    prompt: &[TokenId],
    len: usize,
    mut next: impl FnMut(&[TokenId]) -> Vec<f32>,
) -> HashMap<Vec<TokenId>, f64> {
    let mut law = HashMap::new();
    let mut stack = vec![(Vec::<TokenId>::new(), 1.0f64)];
    while let Some((seq, p)) = stack.pop() {
        if seq.len() == len {
            law.insert(seq, p);
            continue;
        }
        let mut hist = prompt.to_vec();
        hist.extend(&seq);
        let y = next(&hist);
        for (t, &q) in y.iter().enumerate() {
            let mut next = seq.clone();
            next.push(t as TokenId);
            stack.push((next, p * q as f64));
        }
    }
    law
}

/// p-value of a chi-square goodness-of-fit test of `counts` against `law` (cells with an
/// expected count below 5 are pooled).
pub fn chi_square_p(
    counts: &HashMap<Vec<TokenId>, u64>,
    law: &HashMap<Vec<TokenId>, f64>,
    n: u64,
) -> f64 {
    let (mut stat, mut cells) = (0.0, 0usize);
    let (mut pooled_o, mut pooled_e) = (0.0, 0.0);
    for (seq, &p) in law {
        let e = p * n as f64;
        let o = *counts.get(seq).unwrap_or(&0) as f64;
        if e < 5.0 {
            pooled_o += o;
            pooled_e += e;
        } else {
            stat += (o - e).powi(2) / e;
            cells += 1;
        }
    }
    if pooled_e > 0.0 {
        stat += (pooled_o - pooled_e).powi(2) / pooled_e;
        cells += 1;
    }
    let df = (cells - 1) as f64;
    1.0 - ChiSquared::new(df).unwrap().cdf(stat)
}

pub fn sample_outputs(
    p: &mut Pipeline,
    prompt: &[TokenId],
    runs: u64,
) -> HashMap<Vec<TokenId>, u64> {
    let mut counts = HashMap::new();
    for seed in 0..runs {
        p.generation.seed = seed;
        let r = p.generate(prompt, &mut |_| {}).unwrap();
        *counts.entry(r.generated_ids).or_insert(0) += 1;
    }
    counts
}

pub fn always() -> Box<dyn UploadRule> {
    Box::new(AlwaysUpload {})
}
pub fn never() -> Box<dyn UploadRule> {
    Box::new(NeverUpload {})
}
pub fn dense32() -> Box<dyn UploadCodec> {
    Box::new(DenseCodec { bits: 32 })
}
pub fn token_only() -> Box<dyn UploadCodec> {
    Box::new(TokenOnlyCodec {})
}

/// The p-value of `p`'s sampled outputs (one run per seed `0..runs`) against the target's law.
pub fn law_p_value(p: &mut Pipeline, s: &Setup, prompt: &[TokenId], runs: u64) -> f64 {
    let law = target_law(s.vocab, prompt, s.max_new);
    chi_square_p(&sample_outputs(p, prompt, runs), &law, runs)
}

/// A method is lossless: with exact speculative sampling its outputs pass the chi-square test
/// against the target's law, and with each deliberately broken rule of `broken` they fail it,
/// which shows the test can fail. `tweak` sets what [`Setup`] does not (deferral limits, the
/// residual codec).
pub fn assert_lossless(
    s: &Setup,
    upload: fn() -> Box<dyn UploadRule>,
    codec: fn() -> Box<dyn UploadCodec>,
    tweak: fn(&mut Pipeline),
    broken: Vec<(&str, Box<dyn AcceptanceRule>)>,
) {
    let prompt = [1u32];
    let runs = 6000;
    let mut good = build(
        s,
        Box::new(hlm_core::SpeculativeSampling {}),
        upload(),
        codec(),
    );
    tweak(&mut good);
    let p_good = law_p_value(&mut good, s, &prompt, runs);
    assert!(
        p_good > 1e-3,
        "exact verification rejected as lossy: p = {p_good}"
    );
    for (what, rule) in broken {
        let mut bad = build(s, rule, upload(), codec());
        tweak(&mut bad);
        let p_bad = law_p_value(&mut bad, s, &prompt, runs);
        assert!(p_bad < 1e-6, "{what} passed as lossless: p = {p_bad}");
    }
}

/// [`assert_lossless`] with the broken rule that accepts every draft.
pub fn lossless_case(
    s: Setup,
    upload: fn() -> Box<dyn UploadRule>,
    codec: fn() -> Box<dyn UploadCodec>,
) {
    assert_lossless(
        &s,
        upload,
        codec,
        |_| {},
        vec![(
            "a verifier accepting everything",
            Box::new(AcceptEverything {}),
        )],
    );
}

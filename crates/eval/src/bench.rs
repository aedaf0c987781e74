//! The benchmark harness: every method on every prompt with the same seeds, then the paper's
//! comparison table with confidence intervals.
//!
//! Models are loaded once: methods that name the same draft or verifier spec share the loaded
//! model ([`ModelPool`]). Each prompt runs with `seeds` seeds (the config's seed, then the next
//! ones), every method on the same ones, so methods can be compared pairwise. BERTScore
//! compares each output with the prompt's dataset `reference` when it has one, otherwise with
//! `references` LLM-only samples of seeds no method runs with (their mean), so that a lossless
//! method scores as the LLM itself does; with no such samples, with the LLM-only output of the
//! same prompt and seed. The target's log-likelihood of every output is scored with the base
//! config's verifier.

use std::collections::{BTreeMap, HashMap};

use hlm_core::{
    BuildContext, Components, DraftModel, HlmError, Pipeline, PipelineConfig, Result, RunStats,
    TokenId, Verifier,
};
use serde::{Deserialize, Serialize};

use crate::bertscore::{BertScore, BertScorer};
use crate::humaneval::{Problem, Sandbox};
use crate::metrics::Metric;
use crate::stats::{self, Estimate, Interval, Term};

/// Seeds of the LLM-only reference samples start here, far from the seeds methods run with.
pub const REFERENCE_SEED_OFFSET: u64 = 1 << 32;

/// One prompt of a prompt set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchPrompt {
    pub id: String,
    pub text: String,
    /// A reference answer from the dataset, used when no LLM-only run gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// One method's run on one prompt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromptResult {
    pub method: String,
    pub prompt: String,
    /// The run's seed (`generation.seed` of its pipeline).
    #[serde(default)]
    pub seed: u64,
    pub text: String,
    pub generated_ids: Vec<TokenId>,
    /// Share of the reference's token positions where this run produced the same token
    /// (1 for the LLM-only run itself; `None` without an LLM-only run).
    pub token_agreement: Option<f64>,
    /// BERTScore against the reference (the mean over several references; `None` without a
    /// scorer or a reference).
    pub bertscore: Option<BertScore>,
    /// The target's mean negative log-likelihood per generated token (nats, temperature 1;
    /// `None` without a verifier that scores sequences).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_nll: Option<f64>,
    /// Whether the completion passed its problem's unit tests (HumanEval prompts with
    /// problems given; `None` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    pub stats: RunStats,
}

/// A method's results over all prompts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodSummary {
    pub method: String,
    pub prompts: usize,
    /// Seeds each prompt ran with.
    #[serde(default)]
    pub seeds: usize,
    pub generated_tokens: usize,
    pub bertscore_f1: Option<f64>,
    pub bertscore_precision: Option<f64>,
    pub bertscore_recall: Option<f64>,
    pub token_agreement: Option<f64>,
    /// The target's negative log-likelihood per generated token (nats).
    #[serde(default)]
    pub target_nll: Option<f64>,
    /// Share of completions passing their problem's unit tests (HumanEval pass@1).
    #[serde(default)]
    pub pass_at_1: Option<f64>,
    /// Uploaded / drafted tokens (0 for methods without a filter).
    pub upload_rate: f64,
    pub uplink_bits_per_token: f64,
    /// Verdicts, replacement tokens and residual distributions (split and deferred
    /// verification) per generated token.
    #[serde(default)]
    pub downlink_bits_per_token: f64,
    /// Modelled energy per generated token, by component (J).
    pub energy_per_token_j: Components,
    pub energy_per_token_total_j: f64,
    /// 1 − energy per token / standard HLM's (`None` without an `hlm` run).
    pub energy_saving_vs_hlm: Option<f64>,
    /// Generated tokens per modelled second and per wall-clock second.
    pub modelled_tokens_per_s: f64,
    pub wall_tokens_per_s: f64,
    /// Accepted / verified drafts.
    pub acceptance_rate: f64,
    /// The 95 % interval of each figure above ([`crate::stats`]).
    #[serde(default)]
    pub intervals: BTreeMap<Metric, Interval>,
    /// The 95 % interval of `energy_saving_vs_hlm` (paired with standard HLM's runs).
    #[serde(default)]
    pub energy_saving_interval: Option<Interval>,
    /// This method's figure less standard HLM's, on the runs both have (same prompts and
    /// seeds), with its paired interval (empty without an `hlm` run).
    #[serde(default)]
    pub vs_hlm: BTreeMap<Metric, Estimate>,
}

/// Loaded models, shared by the methods that name the same spec.
#[derive(Default)]
pub struct ModelPool {
    drafts: HashMap<String, Box<dyn DraftModel>>,
    verifiers: HashMap<String, Box<dyn Verifier>>,
}

fn spec_key<T: Serialize + ?Sized>(spec: &T) -> Result<String> {
    serde_json::to_string(spec)
        .map_err(|e| HlmError::Model(format!("cannot describe a model spec: {e}")))
}

/// The pool keys of a config's draft and verifier (their specs, serialised).
pub fn model_keys(cfg: &PipelineConfig) -> Result<(Option<String>, Option<String>)> {
    Ok((
        cfg.draft.as_ref().map(spec_key).transpose()?,
        cfg.verifier.as_ref().map(spec_key).transpose()?,
    ))
}

impl ModelPool {
    /// A pipeline for `cfg`, on pooled models where possible (loading the others).
    pub fn pipeline(&mut self, cfg: PipelineConfig, ctx: &BuildContext) -> Result<Pipeline> {
        let (draft_key, verifier_key) = model_keys(&cfg)?;
        let mut draft = draft_key.as_ref().and_then(|k| self.drafts.remove(k));
        let mut verifier = verifier_key.as_ref().and_then(|k| self.verifiers.remove(k));
        if (draft_key.is_some() && draft.is_none())
            || (verifier_key.is_some() && verifier.is_none())
        {
            // Each method's own device, as `hlm run` of its config would use.
            let mut ctx = ctx.clone();
            ctx.device = cfg.device.clone();
            let (d, v) =
                Pipeline::build_some_models(&cfg, &ctx, draft.is_none(), verifier.is_none())?;
            draft = draft.or(d);
            verifier = verifier.or(v);
        }
        Pipeline::with_models(cfg, draft, verifier)
    }

    /// Return a pipeline's models to the pool.
    pub fn give_back(
        &mut self,
        cfg_draft: Option<String>,
        cfg_verifier: Option<String>,
        p: Pipeline,
    ) {
        let (d, v) = p.into_models();
        if let (Some(k), Some(d)) = (cfg_draft, d) {
            self.drafts.insert(k, d);
        }
        if let (Some(k), Some(v)) = (cfg_verifier, v) {
            self.verifiers.insert(k, v);
        }
    }
}

/// What the harness reports as it goes.
pub enum Progress<'a> {
    /// Loading the models of a method.
    Loading { method: &'a str },
    /// One method finished one prompt with one seed (or an LLM-only reference sample).
    Done { method: &'a str, prompt: &'a str },
    /// Scoring one method's outputs with the target.
    Scoring { method: &'a str },
}

/// Everything a benchmark produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResults {
    pub methods: Vec<String>,
    pub results: Vec<PromptResult>,
    pub summary: Vec<MethodSummary>,
}

/// Run `methods` (name, config) on `prompts` with one seed. Text prompts are tokenized with
/// the pipeline's tokenizer; `scorer` computes BERTScore against the reference.
pub fn run(
    methods: Vec<(String, PipelineConfig)>,
    prompts: &[BenchPrompt],
    ctx: &BuildContext,
    scorer: Option<&BertScorer>,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<BenchResults> {
    let names: Vec<String> = methods.iter().map(|(n, _)| n.clone()).collect();
    let mut bench = Bench::new(prompts, ctx.clone(), scorer);
    let results = bench.run_methods(methods, progress)?;
    let summary = summarise(&names, &results);
    Ok(BenchResults {
        methods: names,
        results,
        summary,
    })
}

/// A benchmark session: loaded models and the LLM-only references persist across calls, so a
/// sweep runs each point on the same models and compares with the same references.
pub struct Bench<'a> {
    prompts: &'a [BenchPrompt],
    ctx: BuildContext,
    scorer: Option<&'a BertScorer>,
    seeds: usize,
    references: usize,
    likelihood: Option<PipelineConfig>,
    tasks: Option<(&'a HashMap<String, Problem>, Sandbox)>,
    pool: ModelPool,
    /// The LLM-only run of each (prompt, seed): token agreement's reference.
    reference_ids: HashMap<(String, u64), Vec<TokenId>>,
    reference_text: HashMap<(String, u64), String>,
    /// Independent LLM-only samples of each prompt: BERTScore's references.
    reference_samples: HashMap<String, Vec<String>>,
}

impl<'a> Bench<'a> {
    /// One seed a prompt, no reference samples, no likelihood scoring (see the setters).
    pub fn new(
        prompts: &'a [BenchPrompt],
        ctx: BuildContext,
        scorer: Option<&'a BertScorer>,
    ) -> Self {
        Bench {
            prompts,
            ctx,
            scorer,
            seeds: 1,
            references: 0,
            likelihood: None,
            tasks: None,
            pool: ModelPool::default(),
            reference_ids: HashMap::new(),
            reference_text: HashMap::new(),
            reference_samples: HashMap::new(),
        }
    }

    /// Run every prompt with `n` seeds (at least 1): the config's seed and the next ones.
    pub fn seeds(mut self, n: usize) -> Self {
        self.seeds = n.max(1);
        self
    }

    /// Draw `k` LLM-only samples of each prompt without a dataset reference (when an `llm`
    /// method runs) and score BERTScore against all of them.
    pub fn references(mut self, k: usize) -> Self {
        self.references = k;
        self
    }

    /// Score every output's log-likelihood with the verifier of `cfg` (the base config).
    pub fn likelihood(mut self, cfg: Option<PipelineConfig>) -> Self {
        self.likelihood = cfg.filter(|c| c.verifier.is_some());
        self
    }

    /// Run the completion of every prompt whose id is a task id of `problems` with that
    /// problem's unit tests in `sandbox` (HumanEval pass@1).
    pub fn tasks(mut self, problems: &'a HashMap<String, Problem>, sandbox: Sandbox) -> Self {
        self.tasks = Some((problems, sandbox));
        self
    }

    /// Run each method on every prompt and seed (an `llm` method first: it sets the
    /// references). Results in the order of `methods`.
    pub fn run_methods(
        &mut self,
        methods: Vec<(String, PipelineConfig)>,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<Vec<PromptResult>> {
        let names: Vec<String> = methods.iter().map(|(n, _)| n.clone()).collect();
        let mut methods = methods;
        methods.sort_by_key(|(n, _)| n != "llm");
        let mut results: Vec<PromptResult> = Vec::new();
        for (name, cfg) in methods {
            progress(Progress::Loading { method: &name });
            let (draft_key, verifier_key) = model_keys(&cfg)?;
            let mut p = self.pool.pipeline(cfg, &self.ctx)?;
            let from = results.len();
            let outcome = self.run_prompts(&name, &mut p, &mut results, progress);
            self.pool.give_back(draft_key, verifier_key, p);
            outcome?;
            progress(Progress::Scoring { method: &name });
            self.score_likelihood(&mut results[from..])?;
        }
        results.sort_by_key(|r| names.iter().position(|n| *n == r.method));
        Ok(results)
    }

    fn encode(p: &Pipeline, text: &str) -> Result<Vec<TokenId>> {
        match &p.tokenizer {
            Some(t) => t.encode(text),
            None => parse_ids(text),
        }
    }

    fn decode(p: &Pipeline, ids: &[TokenId]) -> Result<String> {
        match &p.tokenizer {
            Some(t) => t.decode(ids),
            None => Ok(String::new()),
        }
    }

    /// The LLM-only samples BERTScore compares with, for prompts without a dataset
    /// reference (once a session: a sweep's later points reuse them).
    fn draw_reference_samples(
        &mut self,
        p: &mut Pipeline,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<()> {
        let base = p.generation.seed;
        for prompt in self.prompts {
            if prompt.reference.is_some() || self.reference_samples.contains_key(&prompt.id) {
                continue;
            }
            let ids = Self::encode(p, &prompt.text)?;
            let mut samples = Vec::with_capacity(self.references);
            for k in 0..self.references as u64 {
                p.generation.seed = base.wrapping_add(REFERENCE_SEED_OFFSET).wrapping_add(k);
                let report = p.generate(&ids, &mut |_| {});
                p.generation.seed = base;
                samples.push(Self::decode(p, &report?.generated_ids)?);
                progress(Progress::Done {
                    method: "llm (reference)",
                    prompt: &prompt.id,
                });
            }
            self.reference_samples.insert(prompt.id.clone(), samples);
        }
        Ok(())
    }

    /// What BERTScore compares an output of `prompt` with `seed` against.
    fn bertscore_references(&self, prompt: &BenchPrompt, seed: u64) -> Vec<String> {
        if let Some(r) = &prompt.reference {
            return vec![r.clone()];
        }
        match self.reference_samples.get(&prompt.id) {
            Some(samples) if !samples.is_empty() => samples.clone(),
            _ => self
                .reference_text
                .get(&(prompt.id.clone(), seed))
                .cloned()
                .into_iter()
                .collect(),
        }
    }

    fn run_prompts(
        &mut self,
        name: &str,
        p: &mut Pipeline,
        results: &mut Vec<PromptResult>,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<()> {
        if name == "llm" && self.references > 0 {
            self.draw_reference_samples(p, progress)?;
        }
        let base = p.generation.seed;
        for prompt in self.prompts {
            let ids = Self::encode(p, &prompt.text)?;
            for s in 0..self.seeds as u64 {
                let seed = base.wrapping_add(s);
                p.generation.seed = seed;
                let report = p.generate(&ids, &mut |_| {});
                p.generation.seed = base;
                let report = report?;
                let text = Self::decode(p, &report.generated_ids)?;
                let key = (prompt.id.clone(), seed);
                if name == "llm" {
                    self.reference_ids
                        .insert(key.clone(), report.generated_ids.clone());
                    self.reference_text.insert(key.clone(), text.clone());
                }
                let token_agreement = self
                    .reference_ids
                    .get(&key)
                    .map(|r| agreement(&report.generated_ids, r));
                let bertscore = match self.scorer {
                    Some(scorer) if !text.trim().is_empty() => {
                        let refs = self.bertscore_references(prompt, seed);
                        mean_bertscore(scorer, &text, &refs)?
                    }
                    _ => None,
                };
                let passed = match &self.tasks {
                    Some((problems, sandbox)) => match problems.get(&prompt.id) {
                        Some(problem) => {
                            // The completion ends at its first end of generation (with
                            // `stop_at_eos = false` the run goes on past it).
                            let ids = &report.generated_ids;
                            let end = match &p.tokenizer {
                                Some(t) => ids
                                    .iter()
                                    .position(|id| t.eos_ids().contains(id))
                                    .unwrap_or(ids.len()),
                                None => ids.len(),
                            };
                            let completion = Self::decode(p, &ids[..end])?;
                            let verdict = sandbox.check(problem, &completion)?;
                            tracing::debug!("{name} {} seed {seed}: {verdict:?}", prompt.id);
                            Some(verdict.passed())
                        }
                        None => None,
                    },
                    None => None,
                };
                results.push(PromptResult {
                    method: name.to_string(),
                    prompt: prompt.id.clone(),
                    seed,
                    passed,
                    text,
                    generated_ids: report.generated_ids,
                    token_agreement,
                    bertscore,
                    target_nll: None,
                    stats: report.stats,
                });
                progress(Progress::Done {
                    method: name,
                    prompt: &prompt.id,
                });
            }
        }
        Ok(())
    }

    /// The target's mean negative log-likelihood of each result's tokens, with the
    /// likelihood config's verifier (shared with the methods through the pool).
    fn score_likelihood(&mut self, results: &mut [PromptResult]) -> Result<()> {
        let Some(cfg) = self.likelihood.as_ref() else {
            return Ok(());
        };
        let (_, key) = model_keys(cfg)?;
        let Some(key) = key else { return Ok(()) };
        let mut verifier = match self.pool.verifiers.remove(&key) {
            Some(v) => v,
            None => {
                let mut ctx = self.ctx.clone();
                ctx.device = cfg.device.clone();
                match Pipeline::build_some_models(cfg, &ctx, false, true)?.1 {
                    Some(v) => v,
                    None => return Ok(()),
                }
            }
        };
        let outcome = self.score_with(verifier.as_mut(), results);
        self.pool.verifiers.insert(key, verifier);
        outcome
    }

    fn score_with(&self, v: &mut dyn Verifier, results: &mut [PromptResult]) -> Result<()> {
        let tokenizer = v.tokenizer();
        for r in results.iter_mut().filter(|r| !r.generated_ids.is_empty()) {
            let Some(prompt) = self.prompts.iter().find(|p| p.id == r.prompt) else {
                continue;
            };
            let ids = match &tokenizer {
                Some(t) => t.encode(&prompt.text)?,
                None => parse_ids(&prompt.text)?,
            };
            let Some(logp) = v.log_likelihood(&ids, &r.generated_ids)? else {
                return Ok(());
            };
            r.target_nll = Some(-logp.iter().sum::<f64>() / logp.len() as f64);
        }
        Ok(())
    }
}

/// The mean BERTScore of `text` against each of `references` (the non-empty ones).
fn mean_bertscore(
    scorer: &BertScorer,
    text: &str,
    references: &[String],
) -> Result<Option<BertScore>> {
    let mut sum = BertScore {
        precision: 0.0,
        recall: 0.0,
        f1: 0.0,
    };
    let mut n = 0;
    for r in references.iter().filter(|r| !r.trim().is_empty()) {
        let b = scorer.score(text, r)?;
        sum.precision += b.precision;
        sum.recall += b.recall;
        sum.f1 += b.f1;
        n += 1;
    }
    Ok((n > 0).then(|| BertScore {
        precision: sum.precision / n as f64,
        recall: sum.recall / n as f64,
        f1: sum.f1 / n as f64,
    }))
}

/// Prompts without a tokenizer are comma-separated token ids.
fn parse_ids(text: &str) -> Result<Vec<TokenId>> {
    text.split(',')
        .map(|s| {
            s.trim().parse::<TokenId>().map_err(|_| {
                HlmError::invalid(
                    "prompt",
                    text,
                    "the pipeline has no tokenizer, so prompts must be comma-separated token ids",
                )
            })
        })
        .collect()
}

/// Share of `reference` positions where `ids` has the same token.
pub fn agreement(ids: &[TokenId], reference: &[TokenId]) -> f64 {
    if reference.is_empty() {
        return if ids.is_empty() { 1.0 } else { 0.0 };
    }
    let same = ids.iter().zip(reference).filter(|(a, b)| a == b).count();
    same as f64 / reference.len() as f64
}

/// `metric`'s terms of `runs`, grouped by prompt in first-seen order (each group in seed
/// order); runs without the figure are left out.
fn groups(runs: &[&PromptResult], metric: Metric) -> stats::Groups {
    let mut order: Vec<&str> = Vec::new();
    let mut by_prompt: HashMap<&str, Vec<(u64, Term)>> = HashMap::new();
    for r in runs {
        if let Some(t) = metric.term(r) {
            if !by_prompt.contains_key(r.prompt.as_str()) {
                order.push(&r.prompt);
            }
            by_prompt.entry(&r.prompt).or_default().push((r.seed, t));
        }
    }
    order
        .iter()
        .map(|p| {
            let mut g = by_prompt.remove(p).unwrap_or_default();
            g.sort_by_key(|(seed, _)| *seed);
            g.into_iter().map(|(_, t)| t).collect()
        })
        .collect()
}

/// `metric`'s terms of the runs of `a` and `b` on the same (prompt, seed), grouped alike.
fn paired_groups(
    a: &[&PromptResult],
    b: &[&PromptResult],
    metric: Metric,
) -> (stats::Groups, stats::Groups) {
    let b_terms: HashMap<(&str, u64), Term> = b
        .iter()
        .filter_map(|r| Some(((r.prompt.as_str(), r.seed), metric.term(r)?)))
        .collect();
    let mut order: Vec<&str> = Vec::new();
    let mut by_prompt: HashMap<&str, Vec<(u64, Term, Term)>> = HashMap::new();
    for r in a {
        let (Some(ta), Some(&tb)) = (metric.term(r), b_terms.get(&(r.prompt.as_str(), r.seed)))
        else {
            continue;
        };
        if !by_prompt.contains_key(r.prompt.as_str()) {
            order.push(&r.prompt);
        }
        by_prompt
            .entry(&r.prompt)
            .or_default()
            .push((r.seed, ta, tb));
    }
    let mut ga = Vec::new();
    let mut gb = Vec::new();
    for p in order {
        let mut g = by_prompt.remove(p).unwrap_or_default();
        g.sort_by_key(|(seed, _, _)| *seed);
        ga.push(g.iter().map(|(_, x, _)| *x).collect());
        gb.push(g.iter().map(|(_, _, y)| *y).collect());
    }
    (ga, gb)
}

/// Per-method aggregates: each figure a ratio of sums over the method's runs
/// ([`Metric::term`]: token-weighted for rates, run means for scores), with 95 % intervals,
/// and paired differences against standard HLM (`hlm`) where it ran.
pub fn summarise(methods: &[String], results: &[PromptResult]) -> Vec<MethodSummary> {
    let runs_of =
        |m: &str| -> Vec<&PromptResult> { results.iter().filter(|r| r.method == m).collect() };
    let hlm_runs = runs_of("hlm");
    methods
        .iter()
        .map(|m| {
            let rs = runs_of(m);
            let tokens: usize = rs.iter().map(|r| r.stats.generated_tokens).sum();
            let mut energy = Components::default();
            for r in &rs {
                energy.add(&r.stats.energy_j);
            }
            let energy = energy.scaled(if tokens > 0 { 1.0 / tokens as f64 } else { 0.0 });
            let estimates: BTreeMap<Metric, Estimate> = Metric::ALL
                .iter()
                .filter_map(|&metric| Some((metric, stats::estimate(&groups(&rs, metric))?)))
                .collect();
            let value = |metric: Metric| estimates.get(&metric).map(|e| e.value);
            let (vs_hlm, saving) = if hlm_runs.is_empty() {
                (BTreeMap::new(), None)
            } else {
                let vs: BTreeMap<Metric, Estimate> = Metric::ALL
                    .iter()
                    .filter_map(|&metric| {
                        let (a, b) = paired_groups(&rs, &hlm_runs, metric);
                        Some((metric, stats::paired(&a, &b, &|x, y| Some(x - y))?))
                    })
                    .collect();
                let (a, b) = paired_groups(&rs, &hlm_runs, Metric::EnergyPerTokenJ);
                let saving = stats::paired(&a, &b, &|x, y| (y > 0.0).then(|| 1.0 - x / y));
                (vs, saving)
            };
            let prompts: std::collections::HashSet<&str> =
                rs.iter().map(|r| r.prompt.as_str()).collect();
            let seeds: std::collections::HashSet<u64> = rs.iter().map(|r| r.seed).collect();
            MethodSummary {
                method: m.clone(),
                prompts: prompts.len(),
                seeds: seeds.len(),
                generated_tokens: tokens,
                bertscore_f1: value(Metric::BertscoreF1),
                bertscore_precision: mean(
                    rs.iter().filter_map(|r| r.bertscore.map(|b| b.precision)),
                ),
                bertscore_recall: mean(rs.iter().filter_map(|r| r.bertscore.map(|b| b.recall))),
                token_agreement: value(Metric::TokenAgreement),
                target_nll: value(Metric::TargetNll),
                pass_at_1: value(Metric::PassAt1),
                upload_rate: value(Metric::UploadRate).unwrap_or(0.0),
                uplink_bits_per_token: value(Metric::UplinkBitsPerToken).unwrap_or(0.0),
                downlink_bits_per_token: value(Metric::DownlinkBitsPerToken).unwrap_or(0.0),
                energy_per_token_total_j: energy.total(),
                energy_per_token_j: energy,
                energy_saving_vs_hlm: saving.map(|e| e.value),
                energy_saving_interval: saving.and_then(|e| e.interval),
                modelled_tokens_per_s: value(Metric::ModelledTokensPerS).unwrap_or(0.0),
                wall_tokens_per_s: value(Metric::WallTokensPerS).unwrap_or(0.0),
                acceptance_rate: value(Metric::AcceptanceRate).unwrap_or(0.0),
                intervals: estimates
                    .iter()
                    .filter_map(|(&k, e)| Some((k, e.interval?)))
                    .collect(),
                vs_hlm,
            }
        })
        .collect()
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (mut s, mut n) = (0.0, 0usize);
    for x in xs {
        s += x;
        n += 1;
    }
    (n > 0).then(|| s / n as f64)
}

/// `x` with its interval, as `metric` prints.
fn with_interval(metric: Metric, x: f64, interval: Option<&Interval>, signed: bool) -> String {
    match interval {
        Some(i) => format!(
            "{} [{}, {}]",
            metric.format(x, signed),
            metric.format(i.low, signed),
            metric.format(i.high, signed)
        ),
        None => metric.format(x, signed),
    }
}

/// The comparison table, shaped like the paper's (one row per method), each mean with its
/// 95 % interval; then, with a standard HLM run, every method's paired difference against it.
pub fn markdown_table(summary: &[MethodSummary]) -> String {
    let cell = |m: &MethodSummary, metric: Metric, x: Option<f64>| match x {
        Some(x) => with_interval(metric, x, m.intervals.get(&metric), false),
        None => "–".to_string(),
    };
    let tasks = summary.iter().any(|m| m.pass_at_1.is_some());
    let pass_head = if tasks { " pass@1 |" } else { "" };
    let pass_rule = if tasks { "---|" } else { "" };
    let mut s = format!(
        "| method | runs |{pass_head} BERTScore F1 | target NLL | token agreement | uploads | bits/token (up / down) | energy J/token (device / uplink / server / downlink) | energy saving vs HLM | tokens/s (modelled / wall) | acceptance |\n\
         |---|---|{pass_rule}---|---|---|---|---|---|---|---|---|\n",
    );
    for m in summary {
        let e = &m.energy_per_token_j;
        let saving = match m.energy_saving_vs_hlm {
            Some(x) => match m.energy_saving_interval {
                Some(i) => format!(
                    "{:.1} % [{:.1}, {:.1}]",
                    100.0 * x,
                    100.0 * i.low,
                    100.0 * i.high
                ),
                None => format!("{:.1} %", 100.0 * x),
            },
            None => "–".into(),
        };
        s += &format!(
            "| {} | {} × {} |{} {} | {} | {} | {} | {:.0} / {:.0} | {} ({:.3} / {:.4} / {:.3} / {:.5}) | {} | {} / {:.2} | {} |\n",
            m.method,
            m.prompts,
            m.seeds.max(1),
            if tasks {
                format!(" {} |", cell(m, Metric::PassAt1, m.pass_at_1))
            } else {
                String::new()
            },
            cell(m, Metric::BertscoreF1, m.bertscore_f1),
            cell(m, Metric::TargetNll, m.target_nll),
            cell(m, Metric::TokenAgreement, m.token_agreement),
            cell(m, Metric::UploadRate, Some(m.upload_rate)),
            m.uplink_bits_per_token,
            m.downlink_bits_per_token,
            cell(m, Metric::EnergyPerTokenJ, Some(m.energy_per_token_total_j)),
            e.device,
            e.uplink,
            e.server,
            e.downlink,
            saving,
            cell(m, Metric::ModelledTokensPerS, Some(m.modelled_tokens_per_s)),
            m.wall_tokens_per_s,
            cell(m, Metric::AcceptanceRate, Some(m.acceptance_rate)),
        );
    }
    s += "\nruns: prompts × seeds. [low, high]: 95 % interval, two-stage bootstrap over prompts \
          and seeds (";
    s += &format!("{} resamples).\n", stats::RESAMPLES);
    if summary.iter().any(|m| !m.vs_hlm.is_empty()) {
        s += &paired_table(summary);
    }
    s
}

/// The figures of the paired table.
const PAIRED: [Metric; 7] = [
    Metric::PassAt1,
    Metric::BertscoreF1,
    Metric::TargetNll,
    Metric::TokenAgreement,
    Metric::UploadRate,
    Metric::EnergyPerTokenJ,
    Metric::AcceptanceRate,
];

fn paired_table(summary: &[MethodSummary]) -> String {
    let shown: Vec<Metric> = PAIRED
        .into_iter()
        .filter(|m| summary.iter().any(|s| s.vs_hlm.contains_key(m)))
        .collect();
    let mut s = String::from(
        "\n**Against standard HLM** (each method less HLM on the same prompts and seeds; **bold**: the 95 % interval excludes zero)\n\n| method |",
    );
    for m in &shown {
        s += &format!(" Δ {} |", m.label());
    }
    s += "\n|---|";
    s += &"---|".repeat(shown.len());
    s += "\n";
    for m in summary.iter().filter(|m| m.method != "hlm") {
        s += &format!("| {} |", m.method);
        for &metric in &shown {
            let text = match m.vs_hlm.get(&metric) {
                Some(e) => {
                    let t = with_interval(metric, e.value, e.interval.as_ref(), true);
                    if e.interval.is_some_and(|i| i.excludes_zero()) {
                        format!("**{t}**")
                    } else {
                        t
                    }
                }
                None => "–".into(),
            };
            s += &format!(" {text} |");
        }
        s += "\n";
    }
    s
}

/// One CSV row per method and prompt.
pub fn csv(results: &[PromptResult]) -> String {
    let mut s = String::from(
        "method,prompt,seed,generated_tokens,bertscore_precision,bertscore_recall,bertscore_f1,token_agreement,target_nll,uploads,skips,drafted,draft_n_accepted,uplink_bits,downlink_bits,energy_device_j,energy_uplink_j,energy_server_j,energy_downlink_j,time_total_s,wall_s\n",
    );
    let o = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v}"));
    for r in results {
        let st = &r.stats;
        s += &format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            csv_field(&r.method),
            csv_field(&r.prompt),
            r.seed,
            st.generated_tokens,
            o(r.bertscore.map(|b| b.precision)),
            o(r.bertscore.map(|b| b.recall)),
            o(r.bertscore.map(|b| b.f1)),
            o(r.token_agreement),
            o(r.target_nll),
            st.uploads,
            st.skips,
            st.drafted,
            st.draft_n_accepted,
            st.uplink_bits,
            st.downlink_bits,
            st.energy_j.device,
            st.energy_j.uplink,
            st.energy_j.server,
            st.energy_j.downlink,
            st.time_s.total(),
            st.wall_s,
        );
    }
    s
}

/// The header of [`summary_csv_rows`].
pub const SUMMARY_CSV_HEADER: &str = "point,method,bertscore_f1,token_agreement,upload_rate,uplink_bits_per_token,energy_per_token_j,energy_saving_vs_hlm,modelled_tokens_per_s,acceptance_rate,target_nll,runs,bertscore_f1_low,bertscore_f1_high,energy_per_token_j_low,energy_per_token_j_high\n";

/// One CSV row per method of `summary`, labelled with the sweep `point` (a sweep writes the
/// rows of all its points under one [`SUMMARY_CSV_HEADER`]).
pub fn summary_csv_rows(point: &str, summary: &[MethodSummary]) -> String {
    let o = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v}"));
    let mut s = String::new();
    for m in summary {
        let bound = |metric: Metric, f: fn(&Interval) -> f64| m.intervals.get(&metric).map(f);
        s += &format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            csv_field(point),
            csv_field(&m.method),
            o(m.bertscore_f1),
            o(m.token_agreement),
            m.upload_rate,
            m.uplink_bits_per_token,
            m.energy_per_token_total_j,
            o(m.energy_saving_vs_hlm),
            m.modelled_tokens_per_s,
            m.acceptance_rate,
            o(m.target_nll),
            m.prompts * m.seeds.max(1),
            o(bound(Metric::BertscoreF1, |i| i.low)),
            o(bound(Metric::BertscoreF1, |i| i.high)),
            o(bound(Metric::EnergyPerTokenJ, |i| i.low)),
            o(bound(Metric::EnergyPerTokenJ, |i| i.high)),
        );
    }
    s
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_counts_matching_positions_of_the_reference() {
        assert_eq!(agreement(&[1, 2, 3, 4], &[1, 9, 3, 4]), 0.75);
        assert_eq!(agreement(&[1, 2], &[1, 2, 3, 4]), 0.5);
        assert_eq!(agreement(&[], &[]), 1.0);
    }

    #[test]
    fn summary_rows_have_one_field_per_header_column() {
        let m = MethodSummary {
            method: "iu-hlm".into(),
            prompts: 2,
            generated_tokens: 40,
            bertscore_f1: Some(0.7),
            bertscore_precision: None,
            bertscore_recall: None,
            token_agreement: None,
            upload_rate: 0.5,
            uplink_bits_per_token: 1598.0,
            downlink_bits_per_token: 3.0,
            energy_per_token_j: Default::default(),
            energy_per_token_total_j: 0.25,
            energy_saving_vs_hlm: Some(0.3),
            modelled_tokens_per_s: 0.6,
            wall_tokens_per_s: 1.0,
            acceptance_rate: 0.8,
            seeds: 3,
            target_nll: Some(1.25),
            pass_at_1: None,
            intervals: BTreeMap::from([(
                Metric::BertscoreF1,
                Interval {
                    low: 0.6,
                    high: 0.8,
                },
            )]),
            energy_saving_interval: None,
            vs_hlm: BTreeMap::new(),
        };
        let rows = summary_csv_rows("upload.lambda=0.5,1", &[m.clone(), m]);
        let header_fields = SUMMARY_CSV_HEADER.trim_end().split(',').count();
        assert_eq!(rows.lines().count(), 2);
        for line in rows.lines() {
            // The point label holds a comma, so it is quoted: one field more when split naively.
            assert!(
                line.starts_with("\"upload.lambda=0.5,1\",iu-hlm,0.7,,0.5,1598,")
                    && line.ends_with(",1.25,6,0.6,0.8,,"),
                "{line}"
            );
            assert_eq!(line.split(',').count(), header_fields + 1, "{line}");
        }
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}

//! The benchmark harness: every method on every prompt with the same seeds, then the paper's
//! comparison table.
//!
//! Models are loaded once: methods that name the same draft or verifier spec share the loaded
//! model ([`ModelPool`]). The reference of each prompt is the LLM-only output for the same
//! prompt and seed when the `llm` method runs, else the prompt's own `reference` field.

use std::collections::HashMap;

use hlm_core::{
    BuildContext, Components, DraftModel, HlmError, Pipeline, PipelineConfig, Result, RunStats,
    TokenId, Verifier,
};
use serde::{Deserialize, Serialize};

use crate::bertscore::{BertScore, BertScorer};

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
    pub text: String,
    pub generated_ids: Vec<TokenId>,
    /// Share of the reference's token positions where this run produced the same token
    /// (1 for the LLM-only run itself; `None` without an LLM-only run).
    pub token_agreement: Option<f64>,
    /// BERTScore against the reference (`None` without a scorer or a reference).
    pub bertscore: Option<BertScore>,
    pub stats: RunStats,
}

/// A method's results over all prompts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodSummary {
    pub method: String,
    pub prompts: usize,
    pub generated_tokens: usize,
    pub bertscore_f1: Option<f64>,
    pub bertscore_precision: Option<f64>,
    pub bertscore_recall: Option<f64>,
    pub token_agreement: Option<f64>,
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
    /// One method finished one prompt.
    Done { method: &'a str, prompt: &'a str },
}

/// Everything a benchmark produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResults {
    pub methods: Vec<String>,
    pub results: Vec<PromptResult>,
    pub summary: Vec<MethodSummary>,
}

/// Run `methods` (name, config) on `prompts`. Text prompts are tokenized with the pipeline's
/// tokenizer; `scorer` computes BERTScore against the reference.
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
    pool: ModelPool,
    reference_ids: HashMap<String, Vec<TokenId>>,
    reference_text: HashMap<String, String>,
}

impl<'a> Bench<'a> {
    pub fn new(
        prompts: &'a [BenchPrompt],
        ctx: BuildContext,
        scorer: Option<&'a BertScorer>,
    ) -> Self {
        Bench {
            prompts,
            ctx,
            scorer,
            pool: ModelPool::default(),
            reference_ids: HashMap::new(),
            reference_text: HashMap::new(),
        }
    }

    /// Run each method on every prompt (an `llm` method first: it sets the references).
    /// Results in the order of `methods`.
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
            let outcome = self.run_prompts(&name, &mut p, &mut results, progress);
            self.pool.give_back(draft_key, verifier_key, p);
            outcome?;
        }
        results.sort_by_key(|r| names.iter().position(|n| *n == r.method));
        Ok(results)
    }

    fn run_prompts(
        &mut self,
        name: &str,
        p: &mut Pipeline,
        results: &mut Vec<PromptResult>,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<()> {
        for prompt in self.prompts {
            let ids = match &p.tokenizer {
                Some(t) => t.encode(&prompt.text)?,
                None => parse_ids(&prompt.text)?,
            };
            let report = p.generate(&ids, &mut |_| {})?;
            let text = match &p.tokenizer {
                Some(t) => t.decode(&report.generated_ids)?,
                None => String::new(),
            };
            if name == "llm" {
                self.reference_ids
                    .insert(prompt.id.clone(), report.generated_ids.clone());
                self.reference_text.insert(prompt.id.clone(), text.clone());
            }
            let token_agreement = self
                .reference_ids
                .get(&prompt.id)
                .map(|r| agreement(&report.generated_ids, r));
            let reference = self
                .reference_text
                .get(&prompt.id)
                .cloned()
                .or_else(|| prompt.reference.clone());
            let bertscore = match (self.scorer, reference) {
                (Some(s), Some(r)) if !text.trim().is_empty() && !r.trim().is_empty() => {
                    Some(s.score(&text, &r)?)
                }
                _ => None,
            };
            results.push(PromptResult {
                method: name.to_string(),
                prompt: prompt.id.clone(),
                text,
                generated_ids: report.generated_ids,
                token_agreement,
                bertscore,
                stats: report.stats,
            });
            progress(Progress::Done {
                method: name,
                prompt: &prompt.id,
            });
        }
        Ok(())
    }
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

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (mut s, mut n) = (0.0, 0usize);
    for x in xs {
        s += x;
        n += 1;
    }
    (n > 0).then(|| s / n as f64)
}

/// Per-method aggregates (token-weighted for rates, prompt means for scores).
pub fn summarise(methods: &[String], results: &[PromptResult]) -> Vec<MethodSummary> {
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let mut out: Vec<MethodSummary> = methods
        .iter()
        .map(|m| {
            let rs: Vec<&PromptResult> = results.iter().filter(|r| &r.method == m).collect();
            let tokens: usize = rs.iter().map(|r| r.stats.generated_tokens).sum();
            let sum = |f: &dyn Fn(&RunStats) -> f64| rs.iter().map(|r| f(&r.stats)).sum::<f64>();
            let mut energy = Components::default();
            for r in &rs {
                energy.add(&r.stats.energy_j);
            }
            let energy = energy.scaled(ratio(1.0, tokens as f64));
            MethodSummary {
                method: m.clone(),
                prompts: rs.len(),
                generated_tokens: tokens,
                bertscore_f1: mean(rs.iter().filter_map(|r| r.bertscore.map(|b| b.f1))),
                bertscore_precision: mean(
                    rs.iter().filter_map(|r| r.bertscore.map(|b| b.precision)),
                ),
                bertscore_recall: mean(rs.iter().filter_map(|r| r.bertscore.map(|b| b.recall))),
                token_agreement: mean(rs.iter().filter_map(|r| r.token_agreement)),
                upload_rate: ratio(sum(&|s| s.uploads as f64), sum(&|s| s.drafted as f64)),
                uplink_bits_per_token: ratio(sum(&|s| s.uplink_bits as f64), tokens as f64),
                downlink_bits_per_token: ratio(sum(&|s| s.downlink_bits as f64), tokens as f64),
                energy_per_token_total_j: energy.total(),
                energy_per_token_j: energy,
                energy_saving_vs_hlm: None,
                modelled_tokens_per_s: ratio(tokens as f64, sum(&|s| s.time_s.total())),
                wall_tokens_per_s: ratio(tokens as f64, sum(&|s| s.wall_s)),
                acceptance_rate: ratio(
                    sum(&|s| s.draft_n_accepted as f64),
                    sum(&|s| s.draft_n as f64),
                ),
            }
        })
        .collect();
    let hlm = out
        .iter()
        .find(|s| s.method == "hlm")
        .map(|s| s.energy_per_token_total_j);
    if let Some(base) = hlm.filter(|&b| b > 0.0) {
        for s in &mut out {
            s.energy_saving_vs_hlm = Some(1.0 - s.energy_per_token_total_j / base);
        }
    }
    out
}

/// The comparison table, shaped like the paper's (one row per method).
pub fn markdown_table(summary: &[MethodSummary]) -> String {
    let opt = |x: Option<f64>, f: &dyn Fn(f64) -> String| x.map_or("–".to_string(), f);
    let pct = |x: f64| format!("{:.1} %", 100.0 * x);
    let mut s = String::from(
        "| method | BERTScore F1 | token agreement | uploads | bits/token (up / down) | energy J/token (device / uplink / server / downlink) | energy saving vs HLM | tokens/s (modelled / wall) | acceptance |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for m in summary {
        let e = &m.energy_per_token_j;
        s += &format!(
            "| {} | {} | {} | {} | {:.0} / {:.0} | {:.3} ({:.3} / {:.4} / {:.3} / {:.5}) | {} | {:.2} / {:.2} | {} |\n",
            m.method,
            opt(m.bertscore_f1, &|x| format!("{x:.4}")),
            opt(m.token_agreement, &|x| pct(x)),
            pct(m.upload_rate),
            m.uplink_bits_per_token,
            m.downlink_bits_per_token,
            m.energy_per_token_total_j,
            e.device,
            e.uplink,
            e.server,
            e.downlink,
            opt(m.energy_saving_vs_hlm, &|x| pct(x)),
            m.modelled_tokens_per_s,
            m.wall_tokens_per_s,
            pct(m.acceptance_rate),
        );
    }
    s
}

/// One CSV row per method and prompt.
pub fn csv(results: &[PromptResult]) -> String {
    let mut s = String::from(
        "method,prompt,generated_tokens,bertscore_precision,bertscore_recall,bertscore_f1,token_agreement,uploads,skips,drafted,draft_n_accepted,uplink_bits,downlink_bits,energy_device_j,energy_uplink_j,energy_server_j,energy_downlink_j,time_total_s,wall_s\n",
    );
    let o = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v}"));
    for r in results {
        let st = &r.stats;
        s += &format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            csv_field(&r.method),
            csv_field(&r.prompt),
            st.generated_tokens,
            o(r.bertscore.map(|b| b.precision)),
            o(r.bertscore.map(|b| b.recall)),
            o(r.bertscore.map(|b| b.f1)),
            o(r.token_agreement),
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
pub const SUMMARY_CSV_HEADER: &str = "point,method,bertscore_f1,token_agreement,upload_rate,uplink_bits_per_token,energy_per_token_j,energy_saving_vs_hlm,modelled_tokens_per_s,acceptance_rate\n";

/// One CSV row per method of `summary`, labelled with the sweep `point` (a sweep writes the
/// rows of all its points under one [`SUMMARY_CSV_HEADER`]).
pub fn summary_csv_rows(point: &str, summary: &[MethodSummary]) -> String {
    let o = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v}"));
    let mut s = String::new();
    for m in summary {
        s += &format!(
            "{},{},{},{},{},{},{},{},{},{}\n",
            csv_field(point),
            csv_field(&m.method),
            o(m.bertscore_f1),
            o(m.token_agreement),
            m.upload_rate,
            m.uplink_bits_per_token,
            m.energy_per_token_total_j,
            o(m.energy_saving_vs_hlm),
            m.modelled_tokens_per_s,
            m.acceptance_rate
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
        };
        let rows = summary_csv_rows("upload.lambda=0.5,1", &[m.clone(), m]);
        let header_fields = SUMMARY_CSV_HEADER.trim_end().split(',').count();
        assert_eq!(rows.lines().count(), 2);
        for line in rows.lines() {
            // The point label holds a comma, so it is quoted: one field more when split naively.
            assert!(
                line.starts_with("\"upload.lambda=0.5,1\",iu-hlm,0.7,,0.5,1598,"),
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

//! `hlm bench`: every method on every prompt, the paper's comparison table.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use hlm_core::PipelineConfig;
use hlm_eval::BertScorer;
use hlm_eval::bench::{self, Progress};
use hlm_eval::{BenchResults, PromptResult};

use crate::prompts::load_prompt_set;
use crate::run::OverrideArgs;

/// The methods of the papers' comparison, in table order.
pub const DEFAULT_METHODS: &str =
    "slm,llm,hlm,dssd,u-hlm,deferred-u-hlm,iu-hlm,deferred-iu-hlm,cu-hlm,random";

/// Options of `hlm bench`.
#[derive(Args, Debug)]
#[command(after_help = "\
Each method NAME is the pipeline METHOD_DIR/NAME.toml (default: the folder of --config, so
configs/slm.toml ... configs/random.toml). The base --config supplies what every method
shares: [generation], [link], [energy] and `device` (and -n/-t/-s/-d/--set apply to it), so
all methods see the same prompts, seeds, link and energy model. BERTScore compares each
output with the prompt's `reference`, else with --references LLM-only samples of it.
Examples:
  hlm bench -c configs/hlm.toml --prompts prompts/general.jsonl -n 32
  hlm bench -c configs/hlm.toml --prompts prompts/humaneval.jsonl --limit 10 --methods llm,hlm,iu-hlm
With --seeds N each mean of table.md carries a 95 % interval (bootstrap over prompts, then
seeds) and each method its paired difference against standard HLM (bold where the interval
excludes zero). Every output is also scored with the base config's verifier: the target's
negative log-likelihood per token, how far a lossy method drifts from the LLM.
  hlm bench -c configs/paper/hlm.toml --methods llm,hlm,u-hlm,iu-hlm --seeds 3 -n 20
HumanEval pass@1 (scripts/fetch-humaneval.sh first):
  hlm bench -c configs/paper/hlm.toml --prompts prompts/humaneval.jsonl --limit 20 -n 128 \
    --humaneval ~/.cache/hlm/humaneval/HumanEval.jsonl --methods llm,hlm,iu-hlm
Writes OUT/results.json (every run), OUT/results.csv and OUT/table.md.")]
pub struct BenchArgs {
    /// Base pipeline config: generation, link, energy and device shared by every method.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
    /// Prompts: JSONL with a prompt field (and optional id, reference) or one per line.
    #[arg(long, value_name = "FILE", default_value = "prompts/general.jsonl")]
    pub prompts: PathBuf,
    /// JSON field holding the prompt text.
    #[arg(long, default_value = "prompt")]
    pub prompt_field: String,
    /// Use only the first K prompts.
    #[arg(long, value_name = "K")]
    pub limit: Option<usize>,
    /// Comma-separated method names (config files in METHOD_DIR).
    #[arg(long, default_value = DEFAULT_METHODS, value_delimiter = ',')]
    pub methods: Vec<String>,
    /// Folder of the method configs (default: the folder of --config).
    #[arg(long, value_name = "DIR")]
    pub method_dir: Option<PathBuf>,
    #[command(flatten)]
    pub overrides: OverrideArgs,
    /// Output folder.
    #[arg(long, short = 'o', value_name = "DIR", default_value = "bench-results")]
    pub out: PathBuf,
    /// BERT encoder for BERTScore: a catalogue name or a folder.
    #[arg(long, default_value = "all-minilm-l6-v2")]
    pub scorer: String,
    /// Layer of the encoder whose hidden states BERTScore compares.
    #[arg(long, default_value_t = 6)]
    pub scorer_layer: usize,
    /// Weight BERTScore by IDF over the references.
    #[arg(long)]
    pub idf: bool,
    /// Skip BERTScore (no encoder needed).
    #[arg(long)]
    pub no_bertscore: bool,
    /// Seeds per prompt: every method runs each prompt with the config's seed and the next
    /// N − 1, so the table's intervals cover the sampling noise as well as the prompts.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub seeds: u64,
    /// LLM-only samples (of seeds no method runs with) that BERTScore compares each output
    /// with, for prompts without a dataset reference; 0: the same-seed LLM-only output.
    #[arg(long, value_name = "K", default_value_t = 3)]
    pub references: usize,
    /// Skip scoring each output's log-likelihood with the base config's verifier.
    #[arg(long)]
    pub no_likelihood: bool,
    /// HumanEval problems with their unit tests (`HumanEval.jsonl`, written by
    /// scripts/fetch-humaneval.sh): the completion of each prompt whose id is a task id is run
    /// with its tests in a sandboxed Python (pass@1 in the table).
    #[arg(long, value_name = "FILE")]
    pub humaneval: Option<PathBuf>,
    /// Python that runs the HumanEval tests.
    #[arg(long, value_name = "PATH", default_value = "python3")]
    pub python: PathBuf,
    /// Seconds a HumanEval completion may run before it is killed (and fails).
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    pub task_timeout: f64,
    /// Sweep a config key over START, START+STEP, ... ≤ STOP, e.g.
    /// `upload.importance.threshold.lambda=0:1:0.5` or `link.bandwidth_hz=5e6:20e6:5e6`.
    /// Repeatable (the grid of all combinations). Keys of [generation], [link], [energy] and
    /// `device` change the base (every method reruns); other keys change the methods whose
    /// config has them, and the others run once and are reused at every point.
    #[arg(long = "sweep", value_name = "KEY=START:STOP:STEP")]
    pub sweep: Vec<String>,
}

/// One sweep: a key and its values.
fn parse_sweep(s: &str) -> Result<(String, Vec<f64>)> {
    let bad =
        || anyhow::anyhow!("--sweep {s:?}: expected KEY=START:STOP:STEP with numbers, STEP > 0");
    let (key, range) = s.split_once('=').ok_or_else(bad)?;
    let parts: Vec<f64> = range
        .split(':')
        .map(|x| x.trim().parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad())?;
    let [start, stop, step] = parts[..] else {
        return Err(bad());
    };
    if !(step > 0.0 && step.is_finite() && start.is_finite() && stop >= start) {
        return Err(bad());
    }
    let n = ((stop - start) / step + 1e-9).floor() as usize + 1;
    if n > 1000 {
        bail!("--sweep {s:?}: {n} points is too many (at most 1000)");
    }
    Ok((
        key.trim().to_string(),
        (0..n).map(|i| start + i as f64 * step).collect(),
    ))
}

/// Every combination of the sweeps' values (one empty point without sweeps).
fn grid(sweeps: &[(String, Vec<f64>)]) -> Vec<Vec<(String, f64)>> {
    let mut points = vec![Vec::new()];
    for (key, values) in sweeps {
        points = points
            .into_iter()
            .flat_map(|p| {
                values.iter().map(move |&v| {
                    let mut q = p.clone();
                    q.push((key.clone(), v));
                    q
                })
            })
            .collect();
    }
    points
}

/// The value at the dotted `key` of a config's table.
fn lookup<'t>(table: &'t toml::Table, key: &str) -> Option<&'t toml::Value> {
    let (parents, last) = match key.rsplit_once('.') {
        Some((p, l)) => (Some(p), l),
        None => (None, key),
    };
    let mut cur = table;
    for part in parents.into_iter().flat_map(|p| p.split('.')) {
        match cur.get(part) {
            Some(toml::Value::Table(t)) => cur = t,
            _ => return None,
        }
    }
    cur.get(last)
}

/// Whether the dotted `key` exists in a config's table.
fn has_key(table: &toml::Table, key: &str) -> bool {
    lookup(table, key).is_some()
}

/// `key=value` for an override, as an integer where the config holds an integer (sample
/// counts, token limits), else as a float.
fn assignment(table: &toml::Table, key: &str, v: f64) -> String {
    match lookup(table, key) {
        Some(toml::Value::Integer(_)) if v.fract() == 0.0 => format!("{key}={}", v as i64),
        _ => format!("{key}={v:?}"),
    }
}

fn as_table(cfg: &PipelineConfig) -> Result<toml::Table> {
    Ok(cfg.to_toml()?.parse::<toml::Table>()?)
}

const BASE_SECTIONS: [&str; 4] = ["generation", "link", "energy", "device"];

fn point_label(point: &[(String, f64)]) -> String {
    point
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn method_config(
    dir: &Path,
    name: &str,
    base: &PipelineConfig,
    overrides: &[String],
) -> Result<PipelineConfig> {
    let path = dir.join(format!("{name}.toml"));
    if !path.is_file() {
        bail!(
            "method {name:?}: no config {} (methods are config files of --method-dir)",
            path.display()
        );
    }
    let mut cfg = PipelineConfig::load(&path, overrides)?;
    cfg.generation = base.generation.clone();
    cfg.device = base.device.clone();
    cfg.link = base.link.as_ref().map(round_trip).transpose()?;
    cfg.energy = base.energy.as_ref().map(round_trip).transpose()?;
    cfg.validate()
        .with_context(|| format!("method {name:?} ({})", path.display()))?;
    Ok(cfg)
}

/// A copy of a config-selected component (they are not `Clone`: serialise and parse back).
fn round_trip<T>(x: &T) -> Result<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let text = toml::to_string(x).context("cannot copy a component of the base config")?;
    Ok(toml::from_str(&text)?)
}

/// `hlm bench`.
pub fn bench(args: BenchArgs) -> Result<()> {
    let sweeps = args
        .sweep
        .iter()
        .map(|s| parse_sweep(s))
        .collect::<Result<Vec<_>>>()?;
    let base0 = PipelineConfig::load(&args.config, &args.overrides.to_overrides())?;
    let base_table = as_table(&base0)?;
    let is_base_key = |k: &str| {
        BASE_SECTIONS.contains(&k.split('.').next().unwrap_or("")) && has_key(&base_table, k)
    };
    let dir = args.method_dir.clone().unwrap_or_else(|| {
        args.config
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    });
    // Which methods each non-base sweep key touches (checked once, before any model loads).
    let mut method_tables = Vec::new();
    for m in &args.methods {
        method_tables.push(as_table(&method_config(&dir, m, &base0, &[])?)?);
    }
    for (key, _) in &sweeps {
        if !is_base_key(key) && !method_tables.iter().any(|t| has_key(t, key)) {
            bail!(
                "--sweep {key}: no method config and no [generation]/[link]/[energy] of the base has this key"
            );
        }
    }
    let mut prompts = load_prompt_set(&args.prompts, &args.prompt_field)?;
    if let Some(k) = args.limit {
        prompts.truncate(k);
    }
    let mut scorer = if args.no_bertscore {
        None
    } else {
        let folder =
            hlm_backends::resolve_model_path(&args.scorer, args.overrides.models_dir.as_deref())
                .with_context(|| {
                    format!(
                        "BERTScore encoder {:?} (cargo xtask models fetch all-minilm-l6-v2, or --no-bertscore)",
                        args.scorer
                    )
                })?;
        Some(
            BertScorer::load(&folder, args.scorer_layer).with_context(|| {
                format!("cannot load the BERTScore encoder {}", folder.display())
            })?,
        )
    };
    if let (Some(s), true) = (scorer.as_mut(), args.idf) {
        let refs: Vec<&str> = prompts
            .iter()
            .filter_map(|p| p.reference.as_deref())
            .collect();
        s.set_idf(Some(&refs))?;
    }
    let problems = match &args.humaneval {
        Some(path) => {
            let problems = hlm_eval::humaneval::load_problems(path)?;
            let matched = prompts
                .iter()
                .filter(|p| problems.contains_key(&p.id))
                .count();
            if matched == 0 {
                bail!(
                    "--humaneval {}: none of the {} prompts of {} has a HumanEval task id as its id",
                    path.display(),
                    prompts.len(),
                    args.prompts.display()
                );
            }
            Some(problems)
        }
        None => None,
    };
    let sandbox = match &problems {
        Some(_) => {
            if !(args.task_timeout.is_finite()
                && args.task_timeout > 0.0
                && args.task_timeout <= 3600.0)
            {
                bail!(
                    "--task-timeout {}: expected seconds in (0, 3600]",
                    args.task_timeout
                );
            }
            let mut s = hlm_eval::humaneval::Sandbox::new(Some(&args.python))?;
            s.timeout = Duration::from_secs_f64(args.task_timeout);
            Some(s)
        }
        None => None,
    };
    let points = grid(&sweeps);
    let runs_per_method = prompts.len() as u64 * args.seeds;
    let references = if args.methods.iter().any(|m| m == "llm") && !args.no_bertscore {
        prompts.iter().filter(|p| p.reference.is_none()).count() * args.references
    } else {
        0
    };
    let total =
        points.len() as u64 * args.methods.len() as u64 * runs_per_method + references as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} runs, ETA {eta}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    // Without a terminal the bar draws nothing: log each finished run instead (CI, nohup).
    let plain = !std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let ctx = args.overrides.build_context(&base0);
    let mut session = bench::Bench::new(&prompts, ctx, scorer.as_ref());
    if let (Some(problems), Some(sandbox)) = (&problems, sandbox) {
        session = session.tasks(problems, sandbox);
    }
    let mut session = session
        .seeds(args.seeds as usize)
        .references(
            if args.methods.iter().any(|m| m == "llm") && scorer.is_some() {
                args.references
            } else {
                0
            },
        )
        .likelihood(if args.no_likelihood {
            None
        } else {
            Some(PipelineConfig::load(
                &args.config,
                &args.overrides.to_overrides(),
            )?)
        });
    let mut reusable: Vec<PromptResult> = Vec::new();
    let mut outcomes: Vec<Outcome> = Vec::new();
    for point in &points {
        let label = point_label(point);
        let (base_kv, method_kv): (Vec<_>, Vec<_>) =
            point.iter().partition(|(k, _)| is_base_key(k));
        let mut overrides = args.overrides.to_overrides();
        overrides.extend(base_kv.iter().map(|(k, v)| assignment(&base_table, k, *v)));
        let base = PipelineConfig::load(&args.config, &overrides)?;
        let mut to_run = Vec::new();
        let mut reused = Vec::new();
        // Methods this point does not change: their results serve every later point.
        let mut ran_untouched: Vec<String> = Vec::new();
        for (m, table) in args.methods.iter().zip(&method_tables) {
            let kv: Vec<String> = method_kv
                .iter()
                .filter(|(k, _)| has_key(table, k))
                .map(|(k, v)| assignment(table, k, *v))
                .collect();
            let cached: Vec<PromptResult> = reusable
                .iter()
                .filter(|r| &r.method == m)
                .cloned()
                .collect();
            let untouched = base_kv.is_empty() && kv.is_empty();
            if untouched && !cached.is_empty() {
                bar.inc(cached.len() as u64);
                reused.extend(cached);
            } else {
                if untouched {
                    ran_untouched.push(m.clone());
                }
                to_run.push((m.clone(), method_config(&dir, m, &base, &kv)?));
            }
        }
        let mut results = session.run_methods(to_run, &mut |p| match p {
            Progress::Loading { method } => bar.set_message(format!("{label} {method}: loading")),
            Progress::Scoring { method } => {
                bar.set_message(format!("{label} {method}: scoring with the target"))
            }
            Progress::Done { method, prompt } => {
                bar.set_message(format!("{label} {method}: {prompt}"));
                bar.inc(1);
                if plain {
                    eprintln!(
                        "[{:>6.0} s] run {}/{total} {label} {method}: {prompt}",
                        started.elapsed().as_secs_f64(),
                        bar.position()
                    );
                }
            }
        })?;
        reusable.extend(
            results
                .iter()
                .filter(|r| ran_untouched.contains(&r.method))
                .cloned(),
        );
        results.extend(reused);
        results.sort_by_key(|r| args.methods.iter().position(|n| *n == r.method));
        let summary = bench::summarise(&args.methods, &results);
        outcomes.push(Outcome {
            point: label,
            values: point.clone(),
            bench: BenchResults {
                methods: args.methods.clone(),
                results,
                summary,
            },
        });
    }
    bar.finish_and_clear();
    write_outputs(&args.out, &outcomes, !sweeps.is_empty())
}

/// The results of one sweep point (the only one without a sweep).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    /// `key=value ...` of the point (empty without a sweep).
    pub point: String,
    pub values: Vec<(String, f64)>,
    pub bench: BenchResults,
}

/// Read what `write_outputs` saved: one bench (results.json holds its results), or a sweep
/// (results.json holds a list of points).
pub fn read_outcomes(dir: &Path) -> Result<(Vec<Outcome>, bool)> {
    let path = dir.join("results.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {} (is it an hlm bench output folder?)",
            path.display()
        )
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    if v.is_array() {
        let outcomes: Vec<Outcome> = serde_json::from_value(v)
            .with_context(|| format!("{}: not a list of sweep points", path.display()))?;
        Ok((outcomes, true))
    } else {
        let bench: BenchResults = serde_json::from_value(v)
            .with_context(|| format!("{}: not hlm bench results", path.display()))?;
        Ok((
            vec![Outcome {
                point: String::new(),
                values: Vec::new(),
                bench,
            }],
            false,
        ))
    }
}

/// results.json, results.csv (or sweep.csv), table.md and the plots.
pub fn write_outputs(out: &Path, outcomes: &[Outcome], sweep: bool) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let write = |name: &str, text: String| -> Result<()> {
        let p = out.join(name);
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))
    };
    let mut table = String::new();
    if sweep {
        write("results.json", serde_json::to_string_pretty(outcomes)?)?;
        let mut csv = String::from(bench::SUMMARY_CSV_HEADER);
        for oc in outcomes {
            let label = &oc.point;
            table += &format!(
                "### {label}\n\n{}\n",
                bench::markdown_table(&oc.bench.summary)
            );
            csv += &bench::summary_csv_rows(label, &oc.bench.summary);
        }
        write("sweep.csv", csv)?;
    } else if let Some(oc) = outcomes.first() {
        write("results.json", serde_json::to_string_pretty(&oc.bench)?)?;
        write("results.csv", bench::csv(&oc.bench.results))?;
        table = bench::markdown_table(&oc.bench.summary);
    }
    write("table.md", table.clone())?;
    let points: Vec<hlm_eval::plots::Point> = outcomes
        .iter()
        .map(|o| hlm_eval::plots::Point {
            values: &o.values,
            summary: &o.bench.summary,
        })
        .collect();
    let plots = hlm_eval::plots::bench_plots(out, &points)?;
    println!("{table}");
    println!(
        "results in {} ({} plots: {})",
        out.display(),
        plots.len(),
        plots
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Options of `hlm report`.
#[derive(Args, Debug)]
#[command(after_help = "\
Example:
  hlm bench -c configs/hlm.toml --prompts prompts/general.jsonl -o bench-results
  hlm report bench-results        # table.md, CSV and plots again, from results.json")]
pub struct ReportArgs {
    /// Folder written by `hlm bench` (holding results.json).
    pub dir: PathBuf,
}

/// `hlm report`: tables and plots from saved results, without running any model.
pub fn report(args: ReportArgs) -> Result<()> {
    let (mut outcomes, sweep) = read_outcomes(&args.dir)?;
    // The summaries again from the runs (a results.json of an older hlm has no intervals).
    for oc in &mut outcomes {
        oc.bench.summary = bench::summarise(&oc.bench.methods, &oc.bench.results);
    }
    write_outputs(&args.dir, &outcomes, sweep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_parse_into_inclusive_ranges_and_grids() {
        let (k, v) = parse_sweep("upload.importance.threshold.lambda=0:1:0.25").unwrap();
        assert_eq!(k, "upload.importance.threshold.lambda");
        assert_eq!(v, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        // A step that does not land on STOP stops before it.
        assert_eq!(parse_sweep("x=1:2:0.4").unwrap().1.len(), 3);
        for bad in ["x", "x=1:2", "x=1:2:0", "x=2:1:1", "x=a:b:c", "x=0:1:-1"] {
            assert!(parse_sweep(bad).is_err(), "{bad}");
        }
        assert!(
            parse_sweep("x=0:1e9:1")
                .unwrap_err()
                .to_string()
                .contains("too many")
        );
        let g = grid(&[
            ("a".into(), vec![1.0, 2.0]),
            ("b".into(), vec![3.0, 4.0, 5.0]),
        ]);
        assert_eq!(g.len(), 6);
        assert_eq!(g[5], vec![("a".to_string(), 2.0), ("b".to_string(), 5.0)]);
        assert_eq!(grid(&[]), vec![Vec::<(String, f64)>::new()]);
    }

    #[test]
    fn dotted_keys_are_found_only_where_they_exist() {
        let t: toml::Table = "[upload]\ntype = \"random\"\nskip_rate = 0.5\n[link.x]\ny = 1\n"
            .parse()
            .unwrap();
        assert!(has_key(&t, "upload.skip_rate"));
        assert!(has_key(&t, "link.x.y"));
        assert!(!has_key(&t, "upload.lambda"));
        assert!(!has_key(&t, "upload.skip_rate.deeper"));
        assert!(!has_key(&t, "codec"));
        let t: toml::Table = "[u]\nsamples = 20\nlambda = 0.5\n".parse().unwrap();
        assert_eq!(assignment(&t, "u.samples", 30.0), "u.samples=30");
        assert_eq!(assignment(&t, "u.lambda", 1.0), "u.lambda=1.0");
    }
}

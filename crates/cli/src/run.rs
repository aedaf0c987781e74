//! `hlm run`: one pipeline, one prompt.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use hlm_core::{BuildContext, Pipeline, PipelineConfig, TokenEvent, method_name};

use crate::output;
use crate::prompt::PromptArgs;

/// Options of `hlm run`.
#[derive(Args, Debug)]
#[command(after_help = "\
Every option below that changes the pipeline is applied as a `--set` override, so error
messages name the key. Examples:
  hlm run -c configs/iu-hlm.toml -p 'def fibonacci(n):'
  hlm run -c configs/cu-hlm.toml -p 'Explain a hash map.' --set codec.theta=0.05 --json
  hlm run -c configs/hlm.toml -p 'Hello' --device wgpu --show-decisions
  hlm run -c configs/iu-hlm.toml -p 'def add(a, b):' --baseline configs/hlm.toml")]
pub struct RunArgs {
    /// Pipeline config (TOML); see configs/ for one per method.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
    #[command(flatten)]
    pub prompt: PromptArgs,
    #[command(flatten)]
    pub overrides: OverrideArgs,
    /// Print one JSON object on the last line of stdout instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// After the run, print one line per token: its id, its decision and its text.
    #[arg(long)]
    pub show_decisions: bool,
    /// Also measure the energy of the run: CPU packages with Linux RAPL, NVIDIA GPUs with NVML
    /// (reported next to the modelled figures; a message says why a meter is not readable).
    #[arg(long)]
    pub measure_energy: bool,
    /// Also run this baseline pipeline (usually configs/hlm.toml, standard HLM) on the same
    /// prompt with the same generation options, and report the savings against it per
    /// generated token (the papers' headline metric). Loads the baseline's models too.
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// Do not stream the generated text (only the summary).
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Command-line shortcuts for common config keys, plus arbitrary `--set KEY=VALUE`.
#[derive(Args, Debug, Clone, Default)]
pub struct OverrideArgs {
    /// Tokens to generate (`generation.max_new_tokens`).
    #[arg(long, short = 'n')]
    pub max_new_tokens: Option<usize>,
    /// Sampling temperature, 0 = greedy (`generation.temperature`).
    #[arg(long, short = 't')]
    pub temperature: Option<f32>,
    /// Random seed of the run (`generation.seed`).
    #[arg(long, short = 's')]
    pub seed: Option<u64>,
    /// Compute device of the models: cpu or wgpu (`device`).
    #[arg(long, short = 'd')]
    pub device: Option<String>,
    /// Override any config key by its dotted path, e.g. `--set speculation.gamma=4`
    /// or `--set 'codec={ type = "top_k", k = 64 }'`. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Folder of fetched models (default: $HLM_MODELS or ~/.cache/hlm/models).
    #[arg(long, value_name = "DIR", env = "HLM_MODELS")]
    pub models_dir: Option<PathBuf>,
}

impl OverrideArgs {
    /// All overrides as `KEY=VALUE` strings, shortcuts first.
    pub fn to_overrides(&self) -> Vec<String> {
        let mut o = Vec::new();
        if let Some(n) = self.max_new_tokens {
            o.push(format!("generation.max_new_tokens={n}"));
        }
        if let Some(t) = self.temperature {
            o.push(format!("generation.temperature={t:?}"));
        }
        if let Some(s) = self.seed {
            o.push(format!("generation.seed={s}"));
        }
        if let Some(d) = &self.device {
            o.push(format!("device={}", toml_string(d)));
        }
        o.extend(self.set.iter().cloned());
        o
    }

    /// Where components are built.
    pub fn build_context(&self, cfg: &PipelineConfig) -> BuildContext {
        BuildContext {
            device: cfg.device.clone(),
            models_dir: Some(
                self.models_dir
                    .clone()
                    .unwrap_or_else(hlm_core::registry::models_dir),
            ),
            link: None,
        }
    }
}

/// Quote a string as a TOML basic string.
pub fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Build a pipeline with a spinner (loading real models takes a while).
pub fn build_pipeline(
    cfg: PipelineConfig,
    ctx: &BuildContext,
    show: bool,
) -> Result<(Pipeline, f64)> {
    let spinner = show.then(|| {
        let s = indicatif::ProgressBar::new_spinner();
        s.set_message("loading models…");
        s.enable_steady_tick(Duration::from_millis(120));
        s
    });
    let t0 = Instant::now();
    let pipeline = Pipeline::from_config(cfg, ctx);
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    Ok((pipeline?, t0.elapsed().as_secs_f64()))
}

/// `hlm run`.
pub fn run(args: RunArgs) -> Result<()> {
    let overrides = args.overrides.to_overrides();
    let cfg = PipelineConfig::load(&args.config, &overrides)?;
    let ctx = args.overrides.build_context(&cfg);
    let (mut pipeline, load_s) = build_pipeline(cfg, &ctx, !args.json)
        .with_context(|| format!("cannot build the pipeline of {}", args.config.display()))?;
    let tokenizer = pipeline.tokenizer.clone();
    let prompt = args.prompt.token_ids(tokenizer.as_deref())?;

    let stream = !args.json && !args.quiet;
    let mut text_stream = output::TextStream::new(tokenizer.as_deref());
    let mut on_token = |e: &TokenEvent| {
        if stream {
            text_stream.push(e.id);
        }
    };
    let meters = args.measure_energy.then(hlm_energy::Meters::open_all);
    let (report, measured) = match &meters {
        Some(m) => {
            let (r, readings) = m.measure(|| pipeline.generate(&prompt, &mut on_token));
            (r?, readings)
        }
        None => (pipeline.generate(&prompt, &mut on_token)?, Vec::new()),
    };
    text_stream.finish()?;
    let text = output::decode(tokenizer.as_deref(), &report.generated_ids)?;
    let method = method_name(&pipeline);
    let baseline = match &args.baseline {
        Some(path) => {
            let stats = run_baseline(path, &args.overrides, &prompt, !args.json)?;
            let savings = report.stats.savings_against(&stats.1);
            Some((stats.0, stats.1, savings))
        }
        None => None,
    };
    if args.json {
        let mut v = output::run_json(&pipeline.name, method, &report, &text, load_s)?;
        if let Some(obj) = v.as_object_mut() {
            if args.measure_energy {
                obj.insert("measured_energy".into(), serde_json::to_value(&measured)?);
            }
            if let Some((name, stats, savings)) = &baseline {
                obj.insert(
                    "baseline".into(),
                    serde_json::json!({ "pipeline": name, "stats": stats }),
                );
                obj.insert("savings".into(), serde_json::to_value(savings)?);
            }
        }
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    if stream {
        println!();
    }
    if args.show_decisions {
        println!("{}", output::decision_table(tokenizer.as_deref(), &report)?);
    }
    println!(
        "── {} ({method}); models loaded in {load_s:.1} s\n{}",
        pipeline.name,
        report.stats.summary()
    );
    if let Some((name, _, savings)) = &baseline {
        print!("{}", savings.summary(name));
    }
    for r in &measured {
        match &r.result {
            Ok(m) => println!(
                "measured   {}: {:.3} J over {:.2} s ({})",
                r.meter,
                m.joules,
                m.seconds,
                m.zones
                    .iter()
                    .map(|(z, j)| format!("{z} {j:.3} J"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(e) => println!("measured   {}: unavailable: {e}", r.meter),
        }
    }
    Ok(())
}

/// Run the baseline pipeline on the same prompt with the generation shortcuts of this run
/// (tokens, temperature, seed, device; not `--set`, whose keys belong to the other config).
fn run_baseline(
    path: &std::path::Path,
    overrides: &OverrideArgs,
    prompt: &[u32],
    show: bool,
) -> Result<(String, hlm_core::RunStats)> {
    let shortcuts = OverrideArgs {
        set: Vec::new(),
        ..overrides.clone()
    };
    let cfg = PipelineConfig::load(path, &shortcuts.to_overrides())?;
    let ctx = shortcuts.build_context(&cfg);
    let (mut pipeline, _) = build_pipeline(cfg, &ctx, show)
        .with_context(|| format!("cannot build the baseline pipeline of {}", path.display()))?;
    let spinner = show.then(|| {
        let s = indicatif::ProgressBar::new_spinner();
        s.set_message(format!("running the baseline {}…", pipeline.name));
        s.enable_steady_tick(Duration::from_millis(120));
        s
    });
    let report = pipeline
        .generate(prompt, &mut |_| {})
        .with_context(|| format!("baseline run of {} failed", path.display()))?;
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    Ok((pipeline.name.clone(), report.stats))
}

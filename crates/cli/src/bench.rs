//! `hlm bench`: every method on every prompt, the paper's comparison table.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use hlm_core::PipelineConfig;
use hlm_eval::BertScorer;
use hlm_eval::bench::{self, Progress};

use crate::prompts::load_prompt_set;
use crate::run::OverrideArgs;

/// The methods of the papers' comparison, in table order.
pub const DEFAULT_METHODS: &str = "slm,llm,hlm,u-hlm,iu-hlm,cu-hlm,random";

/// Options of `hlm bench`.
#[derive(Args, Debug)]
#[command(after_help = "\
Each method NAME is the pipeline METHOD_DIR/NAME.toml (default: the folder of --config, so
configs/slm.toml ... configs/random.toml). The base --config supplies what every method
shares: [generation], [link], [energy] and `device` (and -n/-t/-s/-d/--set apply to it), so
all methods see the same prompts, seeds, link and energy model. BERTScore compares each
output with the LLM-only output of the same prompt and seed (or the prompt's `reference`).
Examples:
  hlm bench -c configs/hlm.toml --prompts prompts/general.jsonl -n 32
  hlm bench -c configs/hlm.toml --prompts prompts/humaneval.jsonl --limit 10 --methods llm,hlm,iu-hlm
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
}

fn method_config(dir: &Path, name: &str, base: &PipelineConfig) -> Result<PipelineConfig> {
    let path = dir.join(format!("{name}.toml"));
    if !path.is_file() {
        bail!(
            "method {name:?}: no config {} (methods are config files of --method-dir)",
            path.display()
        );
    }
    let mut cfg = PipelineConfig::load(&path, &[])?;
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
    let base = PipelineConfig::load(&args.config, &args.overrides.to_overrides())?;
    let dir = args.method_dir.clone().unwrap_or_else(|| {
        args.config
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    });
    let methods = args
        .methods
        .iter()
        .map(|m| Ok((m.clone(), method_config(&dir, m, &base)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut prompts = load_prompt_set(&args.prompts, &args.prompt_field)?;
    if let Some(k) = args.limit {
        prompts.truncate(k);
    }
    let scorer = if args.no_bertscore {
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
    let mut scorer = scorer;
    if let (Some(s), true) = (scorer.as_mut(), args.idf) {
        let refs: Vec<&str> = prompts
            .iter()
            .filter_map(|p| p.reference.as_deref())
            .collect();
        s.set_idf(Some(&refs))?;
    }
    let ctx = args.overrides.build_context(&base);
    let total = (methods.len() * prompts.len()) as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} runs, ETA {eta}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let results = bench::run(methods, &prompts, &ctx, scorer.as_ref(), &mut |p| match p {
        Progress::Loading { method } => bar.set_message(format!("{method}: loading models")),
        Progress::Done { method, prompt } => {
            bar.set_message(format!("{method}: {prompt}"));
            bar.inc(1);
        }
    });
    bar.finish_and_clear();
    let results = results?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let write = |name: &str, text: String| -> Result<()> {
        let p = args.out.join(name);
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))
    };
    write("results.json", serde_json::to_string_pretty(&results)?)?;
    write("results.csv", bench::csv(&results.results))?;
    let table = bench::markdown_table(&results.summary);
    write("table.md", table.clone())?;
    println!("{table}");
    println!("results in {}", args.out.display());
    Ok(())
}

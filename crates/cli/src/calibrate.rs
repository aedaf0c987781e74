//! `hlm calibrate`: upload every token, record the filter's signals next to the exact rejection
//! probability, fit U-HLM's line rejection ≈ a·u + b and write the derived thresholds.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use hlm_core::{PipelineConfig, TokenRecord};
use hlm_filters::calibration::{LineFit, binned, fit_line, pearson, risk_threshold};
use serde_json::json;

use crate::prompts::load_prompts;
use crate::run::{OverrideArgs, build_pipeline, toml_string};

/// Options of `hlm calibrate`.
#[derive(Args, Debug)]
#[command(after_help = "\
The config must have both models and an `upload` rule with an uncertainty estimator (and
optionally an importance scorer); calibration uploads every token whatever the rule says.
Example:
  hlm calibrate -c configs/u-hlm.toml --prompts prompts/general.jsonl -n 32 \\
     --max-risk 0.05 --write configs/u-hlm-calibrated.toml")]
pub struct CalibrateArgs {
    /// Pipeline config to calibrate.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
    /// Prompts: a .jsonl file (field --prompt-field) or one prompt per line.
    #[arg(long, value_name = "FILE")]
    pub prompts: PathBuf,
    /// JSON field holding the prompt in a .jsonl file.
    #[arg(long, default_value = "prompt")]
    pub prompt_field: String,
    /// Use at most this many prompts.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Acceptable predicted rejection risk for the derived uncertainty threshold.
    #[arg(long, default_value_t = 0.0)]
    pub max_risk: f64,
    /// Write the config with the fitted risk_bound threshold to this file.
    #[arg(long, value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// Write every per-token record as JSONL to this file.
    #[arg(long, value_name = "FILE")]
    pub records: Option<PathBuf>,
    /// Plot rejection probability against uncertainty with the fitted line to STEM.svg and
    /// STEM.png.
    #[arg(long, value_name = "STEM")]
    pub plot: Option<PathBuf>,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub overrides: OverrideArgs,
}

/// `hlm calibrate`.
pub fn calibrate(args: CalibrateArgs) -> Result<()> {
    let overrides = args.overrides.to_overrides();
    let cfg = PipelineConfig::load(&args.config, &overrides)?;
    if cfg.draft.is_none() || cfg.verifier.is_none() {
        bail!(
            "{}: calibration needs both a [draft] model and a [verifier]",
            args.config.display()
        );
    }
    let mut prompts = load_prompts(&args.prompts, &args.prompt_field)?;
    if let Some(l) = args.limit {
        prompts.truncate(l.max(1));
    }
    let ctx = args.overrides.build_context(&cfg);
    let (mut pipeline, _) = build_pipeline(cfg, &ctx, !args.json)?;
    pipeline.upload_everything = true;
    let tokenizer = pipeline
        .tokenizer
        .clone()
        .context("calibration reads text prompts, but the models carry no tokenizer")?;

    let bar = indicatif::ProgressBar::new(prompts.len() as u64);
    if let Ok(s) = indicatif::ProgressStyle::with_template(
        "calibrating [{bar:30}] {pos}/{len} prompts, eta {eta}",
    ) {
        bar.set_style(s);
    }
    if args.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut records: Vec<TokenRecord> = Vec::new();
    for p in &prompts {
        let ids = tokenizer.encode(p)?;
        let report = pipeline.generate(&ids, &mut |_| {})?;
        records.extend(report.records);
        bar.inc(1);
    }
    bar.finish_and_clear();

    if let Some(path) = &args.records {
        let mut text = String::new();
        for r in &records {
            text += &serde_json::to_string(r)?;
            text.push('\n');
        }
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }

    let pairs = |f: fn(&TokenRecord) -> Option<f32>| -> Vec<(f64, f64)> {
        records
            .iter()
            .filter_map(|r| Some((f(r)? as f64, r.rejection_probability? as f64)))
            .collect()
    };
    let unc = pairs(|r| r.uncertainty);
    let imp = pairs(|r| r.importance);
    let xprob = pairs(|r| Some(r.draft_prob));
    if unc.is_empty() {
        bail!(
            "no uncertainty was recorded: the [upload] rule of {} has no uncertainty estimator",
            args.config.display()
        );
    }
    let fit = fit_line(&unc);
    let threshold = fit.as_ref().and_then(|f| risk_threshold(f, args.max_risk));
    if let Some(stem) = &args.plot {
        use hlm_eval::plots::{Series, draw};
        let mut series = vec![Series::new("tokens", unc.clone(), false)];
        if let Some(f) = &fit {
            let (lo, hi) = unc
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                    (a.min(p.0), b.max(p.0))
                });
            let mut line = Series::new(
                format!("fit {:.3}·u {:+.3} (R² {:.2})", f.a, f.b, f.r2),
                vec![(lo, f.a * lo + f.b), (hi, f.a * hi + f.b)],
                true,
            );
            line.markers = false;
            series.push(line);
        }
        draw(
            stem,
            "Rejection probability vs uncertainty",
            "uncertainty (share of perturbed samples that differ)",
            "rejection probability max(0, 1 - y/x)",
            &series,
        )?;
    }
    let mean_rej = unc.iter().map(|p| p.1).sum::<f64>() / unc.len() as f64;

    if let Some(out) = &args.write {
        let (Some(f), Some(_)) = (fit, threshold) else {
            bail!(
                "the fitted slope is below {} (rejection does not rise with uncertainty), so no risk threshold can be derived; nothing written",
                hlm_filters::calibration::MIN_SLOPE
            );
        };
        let mut o = overrides.clone();
        o.push(format!(
            "upload.uncertainty.threshold={{ type = {}, a = {:?}, b = {:?}, max_risk = {:?} }}",
            toml_string("risk_bound"),
            f.a as f32,
            f.b as f32,
            args.max_risk as f32
        ));
        let calibrated = PipelineConfig::load(&args.config, &o)?;
        let header = format!(
            "# Calibrated by `hlm calibrate` from {} on {} prompts ({} tokens): a = {:.4}, b = {:.4}, R² = {:.3}\n",
            args.config.display(),
            prompts.len(),
            f.n,
            f.a,
            f.b,
            f.r2
        );
        std::fs::write(out, header + &calibrated.to_toml()?)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }

    if args.json {
        let v = json!({
            "prompts": prompts.len(),
            "tokens": records.len(),
            "mean_rejection_probability": mean_rej,
            "fit": fit,
            "uncertainty_threshold": threshold,
            "max_risk": args.max_risk,
            "correlation": {
                "uncertainty": pearson(&unc),
                "importance": pearson(&imp),
                "draft_probability": pearson(&xprob),
            },
            "bins": binned(&unc, 0.0, 1.0, 10),
        });
        println!("{v}");
        return Ok(());
    }
    print_report(
        &records,
        fit,
        threshold,
        args.max_risk,
        &unc,
        &imp,
        &xprob,
        mean_rej,
    );
    if let Some(out) = &args.write {
        println!("wrote {}", out.display());
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn print_report(
    records: &[TokenRecord],
    fit: Option<LineFit>,
    threshold: Option<f64>,
    max_risk: f64,
    unc: &[(f64, f64)],
    imp: &[(f64, f64)],
    xprob: &[(f64, f64)],
    mean_rej: f64,
) {
    println!(
        "{} judged tokens, mean rejection probability {mean_rej:.4}",
        records.len()
    );
    let show = |r: Option<f64>| r.map_or("n/a".to_string(), |r| format!("{r:+.3}"));
    println!("\ncorrelation with the rejection probability (Pearson r):");
    println!(
        "  uncertainty        {}  ({} tokens)",
        show(pearson(unc)),
        unc.len()
    );
    println!(
        "  importance         {}  ({} tokens)",
        show(pearson(imp)),
        imp.len()
    );
    println!("  draft probability  {}", show(pearson(xprob)));
    println!("\nuncertainty bin   tokens  mean rejection");
    for b in binned(unc, 0.0, 1.0, 10) {
        println!(
            "  [{:.1}, {:.1})  {:>8}  {:.4}",
            b.lo, b.hi, b.count, b.mean_y
        );
    }
    match fit {
        Some(f) => {
            println!(
                "\nfit: rejection ≈ {:.4}·u {:+.4}   (R² = {:.3}, n = {})",
                f.a, f.b, f.r2, f.n
            );
            match threshold {
                Some(u) => println!(
                    "uncertainty threshold for max risk {max_risk}: u_th = {u:.4} (skip while u ≤ u_th)"
                ),
                None => println!(
                    "the slope is below the minimum (rejection does not rise with uncertainty): no threshold"
                ),
            }
        }
        None => println!("\nno fit: the uncertainty did not vary"),
    }
}

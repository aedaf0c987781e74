//! `hlm speed`: how fast one model's forward passes are on this machine: prefill, decode and
//! verification passes, the three shapes hlm's pipelines run (what `cargo xtask bench decode`
//! sets next to llama.cpp's `llama-bench`).

use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use hlm_backends::{Precision, TransformerSpec};
use hlm_core::{BuildContext, DraftModel, LanguageModel, TargetModel, TokenId};
use serde_json::json;

/// Options of `hlm speed`.
#[derive(Args, Debug)]
#[command(after_help = "\
Three measurements, each repeated (mean ± standard deviation over the repetitions):
  prefill  one pass over PROMPT_TOKENS tokens from an empty context (llama-bench -p);
  decode   DECODE_TOKENS one-token passes from a one-token context, each feeding the argmax
           of the last (llama-bench -n);
  verify   one pass over VERIFY_POSITIONS positions after the prompt (a verification of
           VERIFY_POSITIONS - 1 drafts and the bonus position), next to one decode pass at the
           same context: their ratio is what speculation pays per round for the target.
Prompt tokens are fixed pseudo-random ids, as llama-bench uses random ones. Examples:
  hlm speed -m qwen2.5-coder-1.5b-instruct
  hlm speed -m smollm2-135m-instruct --precision exact --json")]
pub struct SpeedArgs {
    /// Model name, .gguf file or Hugging Face folder.
    #[arg(long, short = 'm', value_name = "NAME_OR_PATH")]
    pub model: String,
    /// Arithmetic of the matrix products (see `hlm generate --help`).
    #[arg(long, default_value = "fast", value_parser = ["fast", "exact"])]
    pub precision: String,
    /// Compute device: cpu or wgpu.
    #[arg(long, short = 'd', default_value = "cpu")]
    pub device: String,
    /// Tokens of the prefill pass.
    #[arg(long, default_value_t = 64)]
    pub prompt_tokens: usize,
    /// One-token passes of the decode measurement.
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: usize,
    /// Positions of the verification pass (γ drafts + 1).
    #[arg(long, default_value_t = 5)]
    pub verify_positions: usize,
    /// Repetitions of each measurement (the first run of the process is a warm-up and not
    /// counted).
    #[arg(long, short = 'r', default_value_t = 3)]
    pub repetitions: usize,
    /// Folder of fetched models (default: $HLM_MODELS or ~/.cache/hlm/models).
    #[arg(long, value_name = "DIR", env = "HLM_MODELS")]
    pub models_dir: Option<std::path::PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Mean and standard deviation of some measurements.
fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

fn argmax(row: &[f32]) -> TokenId {
    // Ties to the first, as transformers' greedy search.
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0 as TokenId
}

/// `hlm speed`.
pub fn speed(args: SpeedArgs) -> Result<()> {
    if args.prompt_tokens == 0 || args.decode_tokens == 0 || args.verify_positions == 0 {
        bail!("--prompt-tokens, --decode-tokens and --verify-positions must be at least 1");
    }
    if args.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    let precision: Precision = args.precision.parse()?;
    let spec = TransformerSpec {
        model: args.model.clone(),
        device: Some(args.device.clone()),
        max_context: None,
        precision: Some(precision),
        prefill_chunk: None,
    };
    let ctx = BuildContext {
        device: args.device.clone(),
        models_dir: args.models_dir.clone(),
        link: None,
    };
    let t0 = Instant::now();
    let mut model = spec
        .load(&ctx)
        .with_context(|| format!("cannot load {}", args.model))?;
    let load_s = t0.elapsed().as_secs_f64();
    let vocab = model.vocab_size();
    let need = args
        .decode_tokens
        .checked_add(1)
        .map(|d| d.max(args.prompt_tokens))
        .and_then(|n| n.checked_add(args.verify_positions))
        .context("--prompt-tokens, --decode-tokens and --verify-positions are too large")?;
    let max = model.max_context();
    if need > max {
        bail!("the measurements need {need} positions, the model allows {max}");
    }
    // Fixed pseudo-random ids (a linear congruential sequence), like llama-bench's random
    // prompt tokens.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let prompt: Vec<TokenId> = (0..args.prompt_tokens)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % vocab as u64) as TokenId
        })
        .collect();
    let (mut prefill, mut decode, mut verify, mut step) = (vec![], vec![], vec![], vec![]);
    // Repetition 0 warms caches, page tables and thread pools up and is not counted.
    // Prefill and decode are the draft model's passes (logits of the last position only, as
    // llama-bench computes them); the verification pass and the decode pass it is set against
    // are the target's (logits of every position fed).
    for rep in 0..=args.repetitions {
        let m = &mut model;
        LanguageModel::truncate(m, 0)?;
        let t = Instant::now();
        DraftModel::forward(m, &prompt, None)?;
        let prefill_s = t.elapsed().as_secs_f64();

        LanguageModel::truncate(m, 0)?;
        let mut last = DraftModel::forward(m, &prompt[..1], None)?
            .logits
            .to_host()?;
        let t = Instant::now();
        for _ in 0..args.decode_tokens {
            let next = argmax(&last);
            last = DraftModel::forward(m, &[next], None)?.logits.to_host()?;
        }
        let decode_s = t.elapsed().as_secs_f64();

        LanguageModel::truncate(m, 0)?;
        m.forward_all(&prompt)?;
        let base = LanguageModel::context_len(m);
        let drafts: Vec<TokenId> = prompt
            .iter()
            .copied()
            .cycle()
            .take(args.verify_positions)
            .collect();
        let t = Instant::now();
        m.forward_all(&drafts)?;
        let verify_s = t.elapsed().as_secs_f64();
        LanguageModel::truncate(m, base)?;
        let t = Instant::now();
        m.forward_all(&drafts[..1])?;
        let step_s = t.elapsed().as_secs_f64();
        if rep > 0 {
            prefill.push(args.prompt_tokens as f64 / prefill_s);
            decode.push(args.decode_tokens as f64 / decode_s);
            verify.push(verify_s);
            step.push(step_s);
        }
    }
    let (pp, pp_sd) = mean_sd(&prefill);
    let (tg, tg_sd) = mean_sd(&decode);
    let ratios: Vec<f64> = verify.iter().zip(&step).map(|(v, s)| v / s).collect();
    let (ratio, ratio_sd) = mean_sd(&ratios);
    let (verify_ms, _) = mean_sd(&verify);
    let (step_ms, _) = mean_sd(&step);
    if args.json {
        println!(
            "{}",
            json!({
                "model": args.model,
                "description": model.describe(),
                "precision": precision.name(),
                "kernels": hlm_backends::gguf::int8::Isa::detect().name(),
                "threads": rayon_threads(),
                "load_s": load_s,
                "prompt_tokens": args.prompt_tokens,
                "decode_tokens": args.decode_tokens,
                "verify_positions": args.verify_positions,
                "repetitions": args.repetitions,
                "prefill_tokens_per_s": pp,
                "prefill_tokens_per_s_sd": pp_sd,
                "decode_tokens_per_s": tg,
                "decode_tokens_per_s_sd": tg_sd,
                "verify_s": verify_ms,
                "decode_step_s": step_ms,
                "verify_over_decode": ratio,
                "verify_over_decode_sd": ratio_sd,
            })
        );
    } else {
        println!(
            "{} (loaded in {load_s:.1} s; {} kernels)",
            model.describe(),
            hlm_backends::gguf::int8::Isa::detect().name()
        );
        println!(
            "  prefill {:>4} tokens   {pp:8.1} ± {pp_sd:.1} tokens/s",
            args.prompt_tokens
        );
        println!(
            "  decode  {:>4} tokens   {tg:8.2} ± {tg_sd:.2} tokens/s",
            args.decode_tokens
        );
        println!(
            "  verify  {:>4} positions {:7.2} ms = {ratio:.2} ± {ratio_sd:.2} x one decode pass ({:.2} ms) at context {}",
            args.verify_positions,
            verify_ms * 1e3,
            step_ms * 1e3,
            args.prompt_tokens
        );
    }
    Ok(())
}

/// Threads the CPU kernels use.
fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

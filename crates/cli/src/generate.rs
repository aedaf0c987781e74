//! `hlm generate`: one model, no verifier: plain generation, streamed.

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use hlm_core::{PipelineConfig, TokenEvent};
use serde_json::json;

use crate::output;
use crate::prompt::PromptArgs;
use crate::run::{OverrideArgs, build_pipeline, toml_string};

/// Options of `hlm generate`.
#[derive(Args, Debug)]
#[command(after_help = "\
MODEL is a name from `hlm models list` (fetched with `cargo xtask models fetch NAME`), a .gguf
file, or a Hugging Face folder (config.json, model.safetensors, tokenizer.json). Examples:
  hlm generate -m qwen2.5-coder-0.5b-instruct -p 'def fibonacci(n):' -n 40 -t 0
  hlm generate -m ./SmolLM2-135M-Instruct.Q4_1.gguf \\
     -p $'<|im_start|>user\\nWhat is the capital of France?<|im_end|>\\n<|im_start|>assistant\\n'")]
pub struct GenerateArgs {
    /// Model name, .gguf file or Hugging Face folder.
    #[arg(long, short = 'm', value_name = "NAME_OR_PATH")]
    pub model: String,
    #[command(flatten)]
    pub prompt: PromptArgs,
    #[command(flatten)]
    pub overrides: OverrideArgs,
    /// Print one JSON object (prompt_ids, generated_ids, text, timings) instead of streaming.
    #[arg(long)]
    pub json: bool,
    /// Arithmetic of the matrix products: `fast` (8-bit activations times the quantised
    /// weights in integers, llama.cpp's arithmetic) or `exact` (f32, equal to Hugging Face
    /// transformers token for token, slower).
    #[arg(long, default_value = "fast", value_parser = ["fast", "exact"])]
    pub precision: String,
}

/// The single-model pipeline of `hlm generate`, as config text.
pub fn generate_config(model: &str, precision: &str) -> String {
    format!(
        "name = \"generate\"\n[generation]\ntemperature = 0.7\n[draft]\ntype = \"transformer\"\nmodel = {}\nprecision = {}\n",
        toml_string(model),
        toml_string(precision)
    )
}

/// `hlm generate`.
pub fn generate(args: GenerateArgs) -> Result<()> {
    let text = generate_config(&args.model, &args.precision);
    let cfg = PipelineConfig::parse(&text, "hlm generate", &args.overrides.to_overrides())?;
    let ctx = args.overrides.build_context(&cfg);
    let (mut pipeline, load_s) = build_pipeline(cfg, &ctx, !args.json)?;
    let tokenizer = pipeline.tokenizer.clone();
    let prompt = args.prompt.token_ids(tokenizer.as_deref())?;
    let mut text_stream = output::TextStream::new(tokenizer.as_deref());
    let mut first_token_s = None;
    let t0 = Instant::now();
    let mut on_token = |e: &TokenEvent| {
        first_token_s.get_or_insert_with(|| t0.elapsed().as_secs_f64());
        if !args.json {
            text_stream.push(e.id);
        }
    };
    let report = pipeline.generate(&prompt, &mut on_token)?;
    text_stream.finish()?;
    let text = output::decode(tokenizer.as_deref(), &report.generated_ids)?;
    let s = &report.stats;
    if args.json {
        let v = json!({
            "model": args.model,
            "prompt_ids": report.prompt_ids,
            "generated_ids": report.generated_ids,
            "text": text,
            "load_s": load_s,
            "first_token_s": first_token_s.unwrap_or(0.0),
            "wall_s": s.wall_s,
            "tokens_per_s": s.tokens_per_s,
        });
        println!("{v}");
    } else {
        println!(
            "\n── {} tokens in {:.2} s ({:.2} tokens/s; first token after {:.2} s; load {:.1} s)",
            s.generated_tokens,
            s.wall_s,
            s.tokens_per_s,
            first_token_s.unwrap_or(0.0),
            load_s
        );
    }
    Ok(())
}

//! Manual smoke test: load a model, greedy-decode a few tokens, print the text and speed.
//!
//! ```sh
//! cargo run -p hlm-backends --example smoke -- /var/tmp/qwen05.gguf "def fibonacci(n):" [N] [cpu|wgpu]
//! ```

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use hlm_backends::{Transformer, parse_device};
use hlm_core::{DraftModel, LanguageModel, Result, TokenId};

fn run(model_path: &str, prompt: &str, n_new: usize, device: &str) -> Result<()> {
    let t0 = Instant::now();
    let mut model = Transformer::load(Path::new(model_path), &parse_device(device)?)?;
    println!(
        "loaded {} in {:.1} s",
        model.describe(),
        t0.elapsed().as_secs_f64()
    );
    let tokenizer = model
        .tokenizer()
        .ok_or_else(|| hlm_core::HlmError::Model("the model has no tokenizer".into()))?;
    let ids = tokenizer.encode(prompt)?;
    println!("prompt: {} tokens {:?}", ids.len(), ids);
    let t1 = Instant::now();
    let mut logits = model.forward(&ids, None)?.logits;
    let prefill = t1.elapsed();
    let mut generated = Vec::new();
    let t2 = Instant::now();
    for _ in 0..n_new {
        // Temperature 0: the argmax, computed on the model's device.
        let next: TokenId = logits.sample(0.0, 0.0)?;
        generated.push(next);
        if tokenizer.eos_ids().contains(&next) {
            break;
        }
        logits = model.forward(&[next], None)?.logits;
    }
    let decode = t2.elapsed();
    println!(
        "--- output ---\n{prompt}{}\n--------------",
        tokenizer.decode(&generated)?
    );
    println!(
        "prefill: {} tokens in {:.0} ms ({:.1} ms/token); decode: {} tokens, {:.1} ms/token",
        ids.len(),
        prefill.as_secs_f64() * 1e3,
        prefill.as_secs_f64() * 1e3 / ids.len() as f64,
        generated.len(),
        decode.as_secs_f64() * 1e3 / generated.len().max(1) as f64
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(model), Some(prompt)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: smoke MODEL PROMPT [N_TOKENS] [cpu|wgpu]");
        return ExitCode::from(2);
    };
    let n = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(20);
    let device = args.get(4).map_or("cpu", String::as_str);
    // Prompts on the command line carry "\n" literally; chat templates need real newlines.
    let prompt = prompt.replace("\\n", "\n");
    match run(model, &prompt, n, device) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

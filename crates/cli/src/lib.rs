//! `hlm`: run hybrid language model pipelines (a draft model on the device, a verifier on the
//! server, token filters deciding what is uploaded) from TOML config files.
//!
//! The command is a library so that a crate of plug-ins can ship its own `hlm` with its
//! policies linked in (typetag registers a type only if its crate is linked):
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     // my_filters::link();   // reference your crate so its registrations are kept
//!     hlm_cli::main()
//! }
//! ```

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod calibrate;
mod config_cmd;
mod generate;
mod models;
mod output;
mod prompt;
mod prompts;
mod run;
mod serve;
mod speed;

/// Hybrid language model inference: draft on the device, verify on the server, upload only
/// the tokens that matter.
#[derive(Parser, Debug)]
#[command(name = "hlm", version, about, long_about = None, after_help = EXAMPLES)]
struct Cli {
    /// Log level filter (e.g. `info`, `hlm_core=debug`); also read from RUST_LOG.
    #[arg(long, global = true, env = "RUST_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "\
Examples:
  cargo xtask models fetch qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct
  hlm run --config configs/iu-hlm.toml --prompt 'def fibonacci(n):'
  hlm run --config configs/u-hlm.toml --set upload.uncertainty.threshold.max_risk=0.1 --json
  hlm generate --model qwen2.5-coder-0.5b-instruct --prompt 'def quicksort(xs):' --max-new-tokens 40
  hlm speed --model qwen2.5-coder-1.5b-instruct
  hlm calibrate --config configs/u-hlm.toml --prompts prompts/general.jsonl --write u-hlm-cal.toml
  hlm bench --config configs/hlm.toml --prompts prompts/general.jsonl --max-new-tokens 32
  hlm serve --config configs/server.toml --listen 0.0.0.0:7070
  hlm run --config configs/remote-iu-hlm.toml --prompt 'def add(a, b):' --set verifier.address=HOST:7070
  hlm config check configs/*.toml
  hlm models list";

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one pipeline on one prompt and report its statistics.
    Run(run::RunArgs),
    /// Plain single-model generation (no verifier): what to run first.
    Generate(generate::GenerateArgs),
    /// Run methods × prompts and write the comparison table (BERTScore, uploads, energy...).
    Bench(bench::BenchArgs),
    /// Regenerate the tables and plots of an `hlm bench` folder without running models.
    Report(bench::ReportArgs),
    /// Fit the uncertainty/rejection line of a pipeline and derive its thresholds.
    Calibrate(calibrate::CalibrateArgs),
    /// Serve the target model to devices over the network (the split's server side).
    Serve(serve::ServeArgs),
    /// Measure one model's prefill, decode and verification speed on this machine.
    Speed(speed::SpeedArgs),
    /// Check or print pipeline configs.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// The real models hlm knows how to fetch, and whether they are fetched.
    #[command(subcommand)]
    Models(models::ModelsCommand),
}

/// Keep the typetag registrations of hlm's own plug-in crates (filters, energy, backends)
/// linked in. `main` calls it; call it too when you parse configs in a program of your own.
pub fn link_builtin_plugins() {
    // Referencing the crates keeps the linker from dropping their registrations.
    hlm_filters::link();
    hlm_energy::link();
    hlm_backends::link();
    hlm_net::link();
}

/// CubeCL's autotuner (wgpu) tries several kernels for a new shape and drops those that
/// panic while compiling: e.g. a quantised-matmul candidate whose vector width does not fit
/// 8-bit weights ("quantized view float vector size 2 must be a positive multiple of
/// num_quants 4"). It catches the panic, but Rust's default hook has already printed it with a
/// backtrace, which reads like a crash. Those are logged at debug level instead; every other
/// panic is reported as before.
fn quiet_caught_gpu_autotune_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let from_cubecl = info
            .location()
            .is_some_and(|l| l.file().contains("/cubecl-"));
        let on_main = std::thread::current().name() == Some("main");
        if from_cubecl && !on_main {
            tracing::debug!("GPU kernel candidate dropped by the autotuner: {info}");
        } else {
            default(info);
        }
    }));
}

/// Parse the command line and run `hlm`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    quiet_caught_gpu_autotune_panics();
    link_builtin_plugins();

    let result = match cli.command {
        Command::Run(a) => run::run(a),
        Command::Generate(a) => generate::generate(a),
        Command::Calibrate(a) => calibrate::calibrate(a),
        Command::Bench(a) => bench::bench(a),
        Command::Report(a) => bench::report(a),
        Command::Serve(a) => serve::serve(a),
        Command::Speed(a) => speed::speed(a),
        Command::Config(c) => config_cmd::config(c),
        Command::Models(c) => models::models(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, joined by ": " as `{:#}` joins them, but each cause only once:
/// many errors (ours and our dependencies') print their source in their own message as well
/// as returning it from `source()`, and `{:#}` would then say it twice.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !out.contains(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    /// A missing config file names the file and the OS error once.
    #[test]
    fn each_cause_is_reported_once() {
        let e = hlm_core::HlmError::ConfigRead {
            path: "missing.toml".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let text = error_chain(&anyhow::Error::from(e).context("loading the pipeline"));
        assert_eq!(
            text,
            "loading the pipeline: cannot read config file missing.toml: entity not found"
        );
        // A cause its parent does not repeat is still reported.
        let e = anyhow::anyhow!("inner cause").context("outer");
        assert_eq!(error_chain(&e), "outer: inner cause");
    }
}

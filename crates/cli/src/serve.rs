//! `hlm serve`: the verifier server of the network split.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use hlm_core::BuildContext;

/// Options of `hlm serve`.
#[derive(Args, Debug)]
#[command(after_help = "\
The server holds the target model (the LLM); devices run a pipeline whose verifier is
`type = \"remote\"`. Each session keeps its own KV state on one shared copy of the weights.
Examples:
  hlm serve --config configs/server.toml --listen 0.0.0.0:7070
  hlm run -c configs/remote-iu-hlm.toml -p 'def fibonacci(n):' --set verifier.address=HOST:7070
Logs (one line per session begun and ended, with its statistics) go to stderr; raise them
with --log info.")]
pub struct ServeArgs {
    /// Server config (TOML): `[model]`, `rule`, `[limits]`; see configs/server.toml.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
    /// Address to listen on.
    #[arg(
        long,
        short = 'l',
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:7070"
    )]
    pub listen: String,
    /// Compute device of the model, overriding the config's `device` (cpu or wgpu).
    #[arg(long, short = 'd')]
    pub device: Option<String>,
    /// Folder of fetched models (default: $HLM_MODELS or ~/.cache/hlm/models).
    #[arg(long, value_name = "DIR", env = "HLM_MODELS")]
    pub models_dir: Option<PathBuf>,
}

/// `hlm serve`.
pub fn serve(args: ServeArgs) -> Result<()> {
    let mut cfg = hlm_net::ServerConfig::load(&args.config)?;
    if let Some(d) = args.device {
        cfg.device = d;
    }
    let ctx = BuildContext {
        device: cfg.device.clone(),
        models_dir: Some(
            args.models_dir
                .unwrap_or_else(hlm_core::registry::models_dir),
        ),
        link: None,
    };
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message("loading the model…");
    spinner.enable_steady_tick(Duration::from_millis(120));
    let server = cfg.build(&ctx);
    spinner.finish_and_clear();
    let server =
        server.with_context(|| format!("cannot build the server of {}", args.config.display()))?;
    let listener = std::net::TcpListener::bind(&args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let info = server.info().clone();
    let budget = server.memory_budget();
    let limits = &cfg.limits;
    let handle = server
        .spawn(listener)
        .context("cannot start the server threads")?;
    eprintln!(
        "hlm serve: listening on {} (protocol v{}); {}; vocab {}, max context {}, up to {} sessions \
         ({} per connection), {} connections, {} tokens per request",
        handle.addr(),
        hlm_net::wire::PROTOCOL_VERSION,
        info.model,
        info.vocab_size,
        info.max_context,
        info.max_sessions,
        limits.max_sessions_per_connection,
        limits.max_connections,
        limits.max_request_tokens,
    );
    match budget {
        Some(b) => eprintln!("hlm serve: worst-case memory of these limits: {b}"),
        None => eprintln!("hlm serve: this model cannot state its memory; no worst case known"),
    }
    handle
        .wait()
        .context("hlm serve cannot go on serving (see the log above)")?;
    Ok(())
}

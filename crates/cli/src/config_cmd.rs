//! `hlm config check|show`: validate config files without loading any model.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Subcommand;
use hlm_core::PipelineConfig;

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Parse and validate config files (types, parameters, required parts); load no model.
    Check {
        /// Config files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Overrides applied to every file, as in `hlm run`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Print a config with every default filled in (after overrides).
    Show {
        file: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
}

/// A server config (`hlm serve`) has a top-level `[model]` and no pipeline parts.
fn is_server_config(path: &std::path::Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let Ok(table) = text.parse::<toml::Table>() else {
        return false;
    };
    table.contains_key("model") && !table.contains_key("draft") && !table.contains_key("verifier")
}

/// Run a `hlm config` subcommand.
pub fn config(cmd: ConfigCommand) -> Result<()> {
    match cmd {
        ConfigCommand::Check { files, set } => {
            let mut failed = 0;
            for f in &files {
                if is_server_config(f) {
                    match hlm_net::ServerConfig::load(f) {
                        Ok(_) => println!("ok     {}  (server)", f.display()),
                        Err(e) => {
                            failed += 1;
                            println!("error  {e}");
                        }
                    }
                    continue;
                }
                match PipelineConfig::load(f, &set) {
                    Ok(cfg) => println!(
                        "ok     {}  ({})",
                        f.display(),
                        cfg.name.as_deref().unwrap_or("unnamed")
                    ),
                    Err(e) => {
                        failed += 1;
                        println!("error  {e}");
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} of {} config files are invalid", files.len());
            }
            Ok(())
        }
        ConfigCommand::Show { file, set } => {
            let cfg = PipelineConfig::load(&file, &set)?;
            print!("{}", cfg.to_toml()?);
            Ok(())
        }
    }
}

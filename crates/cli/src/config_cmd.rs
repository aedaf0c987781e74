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

/// Run a `hlm config` subcommand.
pub fn config(cmd: ConfigCommand) -> Result<()> {
    match cmd {
        ConfigCommand::Check { files, set } => {
            let mut failed = 0;
            for f in &files {
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

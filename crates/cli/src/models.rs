//! `hlm models list`: the catalogue of fetchable models and what is on disk.

use anyhow::Result;
use clap::Subcommand;
use hlm_core::registry::{Catalogue, models_dir};

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// List the models hlm can fetch and whether each is present.
    List,
}

/// Run a `hlm models` subcommand.
pub fn models(cmd: ModelsCommand) -> Result<()> {
    match cmd {
        ModelsCommand::List => {
            let c = Catalogue::builtin()?;
            println!("models folder: {}", models_dir().display());
            for m in &c.models {
                let state = if m.is_fetched() { "fetched" } else { "missing" };
                println!("{:<30} {:<8} {:<8} {}", m.name, m.role, state, m.summary);
            }
            println!("\nfetch with: cargo xtask models fetch NAME...");
            Ok(())
        }
    }
}

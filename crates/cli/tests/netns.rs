//! The split between two Linux network namespaces joined by a veth pair whose device-side
//! egress (the uplink) is shaped by `tc tbf`: the measured uplink airtime of a run (its wall
//! time shaped minus unshaped) is compared with what the link model charged for the same run.
//!
//! Needs root and iproute2 (`ip netns`, `tc`); runs when HLM_TEST_NETNS=1 (`cargo xtask ci`
//! sets it when it runs as root) and says why it skips otherwise.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn sh(args: &[&str]) -> Result<(), String> {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// Two namespaces and a veth pair, removed on drop.
struct Netns {
    server: String,
    device: String,
    /// The device-side end of the veth pair (where the uplink is shaped).
    device_link: String,
}

impl Netns {
    fn create() -> Result<Self, String> {
        let id = std::process::id();
        let n = Netns {
            server: format!("hlm-srv-{id}"),
            device: format!("hlm-dev-{id}"),
            device_link: format!("hd{}", id % 100000),
        };
        let (s, d) = (n.server.as_str(), n.device.as_str());
        let (vs, vd) = (format!("hs{}", id % 100000), n.device_link.clone());
        sh(&["ip", "netns", "add", s])?;
        sh(&["ip", "netns", "add", d])?;
        sh(&[
            "ip", "link", "add", &vs, "type", "veth", "peer", "name", &vd,
        ])?;
        sh(&["ip", "link", "set", &vs, "netns", s])?;
        sh(&["ip", "link", "set", &vd, "netns", d])?;
        for (ns, dev, addr) in [(s, &vs, "10.99.0.1/24"), (d, &vd, "10.99.0.2/24")] {
            sh(&["ip", "-n", ns, "addr", "add", addr, "dev", dev])?;
            // Small packets so the token bucket's burst is a small part of the traffic.
            sh(&["ip", "-n", ns, "link", "set", dev, "mtu", "576", "up"])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(n)
    }

    fn shape_uplink(&self, rate: &str) -> Result<(), String> {
        let dev = &self.device_link;
        sh(&[
            "tc",
            "-n",
            &self.device,
            "qdisc",
            "replace",
            "dev",
            dev,
            "root",
            "tbf",
            "rate",
            rate,
            "burst",
            "600",
            "limit",
            "200000",
        ])
    }

    fn unshape(&self) -> Result<(), String> {
        let dev = &self.device_link;
        sh(&["tc", "-n", &self.device, "qdisc", "del", "dev", dev, "root"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.server]);
        let _ = sh(&["ip", "netns", "del", &self.device]);
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../backends/tests/fixtures")
}

fn run(ns: &str, config: &Path) -> Value {
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            env!("CARGO_BIN_EXE_hlm"),
            "run",
            "--config",
        ])
        .arg(config)
        .args(["--prompt-ids", "1,5,17,33", "--json"])
        .output()
        .expect("ip netns exec hlm run");
    assert!(
        o.status.success(),
        "hlm run in {ns} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(out.lines().last().expect("a JSON line")).expect("JSON")
}

#[test]
fn shaped_uplink_airtime_matches_the_link_model() {
    if std::env::var("HLM_TEST_NETNS").as_deref() != Ok("1") {
        eprintln!("skipped: set HLM_TEST_NETNS=1 (needs root, ip netns and tc)");
        return;
    }
    let ns = Netns::create().expect("network namespaces (root, iproute2)");
    let dir = tempfile::tempdir().expect("tempdir");
    let server_cfg = dir.path().join("server.toml");
    std::fs::write(
        &server_cfg,
        format!(
            "[model]\ntype = \"transformer\"\nmodel = {:?}\n",
            fixtures().join("tiny-qwen2").display().to_string()
        ),
    )
    .expect("write");
    let rate = 200_000.0;
    let client_cfg = dir.path().join("client.toml");
    std::fs::write(
        &client_cfg,
        format!(
            r#"name = "netns"
[generation]
max_new_tokens = 24
seed = 5
[draft]
type = "transformer"
model = {draft:?}
[verifier]
type = "remote"
address = "10.99.0.1:7071"
retries = 50
retry_delay_s = 0.1
[upload]
type = "always"
[codec]
type = "dense"
bits = 32
[link]
type = "fixed_rate"
uplink_bps = {rate}
downlink_bps = 1e12
[energy]
type = "analytic"
"#,
            draft = fixtures().join("tiny-llama").display().to_string()
        ),
    )
    .expect("write");
    let _server = Server(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.server,
                env!("CARGO_BIN_EXE_hlm"),
                "serve",
                "--config",
            ])
            .arg(&server_cfg)
            .args(["--listen", "10.99.0.1:7071"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("hlm serve"),
    );
    // Unshaped first (this also waits for the server to listen), then shaped.
    let t0 = Instant::now();
    let plain = run(&ns.device, &client_cfg);
    assert!(t0.elapsed() < Duration::from_secs(120));
    assert_eq!(plain["verifier_faults"], 0, "{plain}");
    ns.shape_uplink("200kbit").expect("tc tbf");
    let shaped = run(&ns.device, &client_cfg);
    ns.unshape().expect("tc qdisc del");
    assert_eq!(plain["generated_ids"], shaped["generated_ids"]);
    let wall = |v: &Value| v["wall_s"].as_f64().expect("wall_s");
    let measured = wall(&shaped) - wall(&plain);
    let modelled = shaped["time_s"]["uplink"].as_f64().expect("uplink time");
    let bits = shaped["uplink_bits"].as_f64().expect("bits");
    assert!((modelled - bits / rate).abs() < 1e-9);
    eprintln!(
        "netns: {bits} modelled uplink bits; modelled airtime {modelled:.3} s, measured through \
         tbf 200 kbit/s {measured:.3} s (ratio {:.2}; the wire adds frame, TCP/IP headers)",
        measured / modelled
    );
    // The wire carries at least the modelled bits, plus framing and TCP/IP headers
    // (about 30 % for these 260-byte messages).
    assert!(
        measured > 0.85 * modelled && measured < 2.0 * modelled,
        "measured {measured:.3} s vs modelled {modelled:.3} s"
    );
}

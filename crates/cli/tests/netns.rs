//! The split between two Linux network namespaces joined by a veth pair whose device-side
//! egress (the uplink) is shaped by `tc tbf`. Two properties of the link model are checked
//! against what the wire did:
//!
//! 1. **Bytes.** The device's veth counters give the bytes and packets it sent in a run. Less
//!    the per-packet Ethernet/IPv4/TCP headers, that is the TCP payload: the frames the client
//!    wrote. It must carry at least the bits the link model charged, and at most those plus
//!    the frame header and message fields of each message.
//! 2. **Airtime.** tbf sends at its configured rate, so the shaped run takes longer than the
//!    unshaped one by the counted wire bytes over the rate, less the credit the token bucket
//!    holds at the start (one bucket) and gathers while the uplink is idle (at most the rate
//!    times the idle time, which the unshaped run measures), and less the few packets of the
//!    connection's opening and closing that fall outside the run's clock.
//!
//! The server is started once and waited for (its "listening" line) before anything is
//! timed; a warm-up run absorbs first-request costs; each timed configuration runs twice and
//! the faster run counts, so that other load on the machine lengthens neither side.
//!
//! Needs root and iproute2 (`ip netns`, `tc`); runs when HLM_TEST_NETNS=1 (`cargo xtask ci`
//! sets it when it runs as root) and says why it skips otherwise.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// Uplink rate of the shaped runs (bits/s): low enough that a message's airtime (~90 ms for
/// ~560 wire bytes) is long next to the compute between messages.
const RATE_BPS: f64 = 50_000.0;
/// Veth MTU: small packets, so that one bucket of credit is a small part of a message.
const MTU: usize = 576;
/// tbf's bucket: the smallest that passes one whole frame (MTU + the 14-byte Ethernet header).
const BURST_BYTES: usize = 600;
/// Headers of one TCP segment on the veth: Ethernet 14, IPv4 20, TCP 20 + 12 (the timestamp
/// option Linux puts on every segment of a connection). A SYN carries 8 bytes more options;
/// it is counted as if it carried payload, which only loosens the lower bound by 8 bytes, and
/// the odd 42-byte ARP packet counts as -24 bytes (IPv6 is off on the veth, so no other
/// traffic shares the counters).
const SEGMENT_HEADER_BYTES: u64 = 14 + 20 + 32;
/// Device-side bytes of a connection that fall outside a run's clock (`wall_s`): the TCP
/// handshake's SYN (with options) and ACK and the Hello request before, the End request, FIN
/// and last ACK after; each request is one segment of at most 64 bytes of frame.
const OUTSIDE_THE_RUN_BYTES: u64 = (SEGMENT_HEADER_BYTES + 8)
    + SEGMENT_HEADER_BYTES
    + 2 * (SEGMENT_HEADER_BYTES + 64)
    + 2 * SEGMENT_HEADER_BYTES;
/// Per message beyond the payload bits the link model charges: the 8-byte frame header, and
/// postcard's enum tag, session id, lengths and option tags (each a varint of a few bytes).
const MESSAGE_OVERHEAD_BYTES: u64 = 8 + 32;

fn sh(args: &[&str]) -> Result<String, String> {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
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

/// What the device's end of the veth has sent so far.
#[derive(Debug, Clone, Copy)]
struct TxCounters {
    bytes: u64,
    packets: u64,
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
        let mtu = MTU.to_string();
        for (ns, dev, addr) in [(s, &vs, "10.99.0.1/24"), (d, &vd, "10.99.0.2/24")] {
            // No IPv6 neighbour discovery or router solicitations in the counted traffic.
            let no_v6 = format!("net.ipv6.conf.{dev}.disable_ipv6=1");
            sh(&["ip", "netns", "exec", ns, "sysctl", "-q", "-w", &no_v6])?;
            sh(&["ip", "-n", ns, "addr", "add", addr, "dev", dev])?;
            sh(&["ip", "-n", ns, "link", "set", dev, "mtu", &mtu, "up"])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(n)
    }

    fn shape_uplink(&self) -> Result<(), String> {
        let (rate, burst) = (format!("{RATE_BPS}bit"), BURST_BYTES.to_string());
        sh(&[
            "tc",
            "-n",
            &self.device,
            "qdisc",
            "replace",
            "dev",
            &self.device_link,
            "root",
            "tbf",
            "rate",
            &rate,
            "burst",
            &burst,
            "limit",
            "200000",
        ])
        .map(drop)
    }

    fn unshape(&self) -> Result<(), String> {
        let dev = &self.device_link;
        sh(&["tc", "-n", &self.device, "qdisc", "del", "dev", dev, "root"]).map(drop)
    }

    fn device_tx(&self) -> Result<TxCounters, String> {
        let out = sh(&[
            "ip",
            "-n",
            &self.device,
            "-s",
            "-j",
            "link",
            "show",
            "dev",
            &self.device_link,
        ])?;
        let v: Value = serde_json::from_str(&out).map_err(|e| format!("ip -j: {e}: {out}"))?;
        let tx = &v[0]["stats64"]["tx"];
        match (tx["bytes"].as_u64(), tx["packets"].as_u64()) {
            (Some(bytes), Some(packets)) => Ok(TxCounters { bytes, packets }),
            _ => Err(format!("no tx counters in `ip -s -j link show`: {out}")),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.server]);
        let _ = sh(&["ip", "netns", "del", &self.device]);
    }
}

struct Server(Child);

impl Server {
    /// Start `hlm serve` in `ns` and wait until it says it listens (its model is loaded and
    /// the socket bound), so no timed run includes its start-up.
    fn start(ns: &str, config: &Path, listen: &str) -> Server {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_hlm"), "serve"])
            .arg("--config")
            .arg(config)
            .args(["--listen", listen])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("hlm serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let server = Server(child);
        let (ready_tx, ready_rx) = mpsc::channel();
        // Keeps reading after the line, so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                } else if ready.is_some() {
                    eprintln!("hlm serve: {line}");
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("hlm serve did not say it listens within 120 s");
        server
    }
}

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
    let v: Value = serde_json::from_str(out.lines().last().expect("a JSON line")).expect("JSON");
    assert_eq!(v["verifier_faults"], 0, "{v}");
    v
}

fn wall(v: &Value) -> f64 {
    v["wall_s"].as_f64().expect("wall_s")
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
[upload]
type = "always"
[codec]
type = "dense"
bits = 32
[link]
type = "fixed_rate"
uplink_bps = {RATE_BPS}
downlink_bps = 1e12
[energy]
type = "analytic"
"#,
            draft = fixtures().join("tiny-llama").display().to_string()
        ),
    )
    .expect("write");
    let _server = Server::start(&ns.server, &server_cfg, "10.99.0.1:7071");
    // Warm-up: the server's first session pays one-off costs (allocations, thread pools).
    let first = run(&ns.device, &client_cfg);
    let plain = [run(&ns.device, &client_cfg), run(&ns.device, &client_cfg)];
    ns.shape_uplink().expect("tc tbf");
    let mut shaped = Vec::new();
    let mut sent = Vec::new();
    for _ in 0..2 {
        let before = ns.device_tx().expect("tx counters");
        shaped.push(run(&ns.device, &client_cfg));
        let after = ns.device_tx().expect("tx counters");
        sent.push(TxCounters {
            bytes: after.bytes - before.bytes,
            packets: after.packets - before.packets,
        });
    }
    ns.unshape().expect("tc qdisc del");
    for v in plain.iter().chain(&shaped) {
        assert_eq!(v["generated_ids"], first["generated_ids"], "runs differ");
    }

    // 1. Bytes: the wire carries the modelled bits plus framing, no more, no less.
    let s = &shaped[0];
    let bits = s["uplink_bits"].as_u64().expect("uplink_bits");
    let modelled = s["time_s"]["uplink"].as_f64().expect("uplink time");
    assert!((modelled - bits as f64 / RATE_BPS).abs() < 1e-9);
    // Hello, Begin and End besides one Verify per round.
    let messages = s["verify_calls"].as_u64().expect("verify_calls") + 3;
    for tx in &sent {
        let payload = tx.bytes - tx.packets * SEGMENT_HEADER_BYTES;
        let (low, high) = (
            bits.div_ceil(8),
            bits.div_ceil(8) + messages * MESSAGE_OVERHEAD_BYTES,
        );
        eprintln!(
            "netns: {bits} modelled uplink bits; the device sent {} bytes in {} packets, \
             {payload} bytes of TCP payload (expected {low}..={high})",
            tx.bytes, tx.packets
        );
        assert!(
            (low..=high).contains(&payload),
            "TCP payload {payload} bytes outside {low}..={high} ({messages} messages)"
        );
    }

    // 2. Airtime: the shaped run is longer by the wire's bytes at tbf's rate.
    let fastest = |runs: &[Value]| runs.iter().map(wall).fold(f64::INFINITY, f64::min);
    let (plain_s, shaped_s) = (fastest(&plain), fastest(&shaped));
    let measured = shaped_s - plain_s;
    let wire_bytes = sent.iter().map(|t| t.bytes).min().expect("two runs");
    let expected = wire_bytes as f64 * 8.0 / RATE_BPS;
    // Less than that: the bucket starts full, and refills while the uplink idles, which is at
    // most as long as the whole unshaped run; and the connection's opening (handshake, Hello)
    // and closing (End, FIN) are on the wire but outside the run's clock.
    let credit_bytes = BURST_BYTES as f64 + RATE_BPS / 8.0 * plain_s;
    let low = expected - (credit_bytes + OUTSIDE_THE_RUN_BYTES as f64) * 8.0 / RATE_BPS;
    // More than that only by what the machine's other load adds to the shaped run and not to
    // the unshaped one: at most the unshaped runs' own spread, twice, plus 1 ms a message of
    // scheduling.
    let spread = (wall(&plain[0]) - wall(&plain[1])).abs();
    let high = expected + 2.0 * spread + 1e-3 * messages as f64;
    eprintln!(
        "netns: modelled airtime {modelled:.3} s for {bits} bits; {wire_bytes} wire bytes at \
         {RATE_BPS} bit/s take {expected:.3} s; measured {measured:.3} s (shaped {shaped_s:.3} \
         s - unshaped {plain_s:.3} s; accepted {low:.3}..={high:.3} s)"
    );
    assert!(
        (low..=high).contains(&measured),
        "measured airtime {measured:.3} s outside {low:.3}..={high:.3} s"
    );
}

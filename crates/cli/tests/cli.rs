//! The `hlm` binary end to end on the tiny random-weight fixture transformers
//! (crates/backends/tests/fixtures: same vocabulary of 64, no tokenizer).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../backends/tests/fixtures")
}

fn hlm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hlm"))
        .args(args)
        .output()
        .expect("hlm runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The command failed and its error names `what` (a path, a key, an address).
fn assert_fails_naming(o: &Output, what: &str) {
    assert!(!o.status.success(), "should fail: {}", stdout(o));
    assert!(
        stderr(o).contains(what),
        "{what:?} not named in: {}",
        stderr(o)
    );
}

/// A hybrid pipeline: tiny LLaMA drafts, tiny Qwen2 verifies, `upload` chooses the method.
fn write_config(dir: &Path, upload: &str, codec: &str) -> PathBuf {
    let f = fixtures();
    let text = format!(
        r#"name = "tiny"
[generation]
max_new_tokens = 12
temperature = 1.0
seed = 7
[draft]
type = "transformer"
model = "{draft}"
[verifier]
type = "local"
[verifier.model]
type = "transformer"
model = "{target}"
[upload]
{upload}
[codec]
{codec}
[link]
type = "fixed_rate"
uplink_bps = 1e6
downlink_bps = 1e7
[energy]
type = "analytic"
"#,
        draft = f.join("tiny-llama").display(),
        target = f.join("tiny-qwen2").display(),
    );
    let p = dir.join("tiny.toml");
    std::fs::write(&p, text).expect("write config");
    p
}

fn run_json(config: &Path, extra: &[&str]) -> Value {
    let cfg = config.to_string_lossy().into_owned();
    let mut args = vec![
        "run",
        "--config",
        &cfg,
        "--prompt-ids",
        "1,5,17,33",
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = hlm(&args);
    assert!(o.status.success(), "hlm run failed: {}", stderr(&o));
    let out = stdout(&o);
    let last = out.lines().last().expect("a JSON line");
    serde_json::from_str(last).expect("the last line is JSON")
}

#[test]
fn hybrid_run_reports_consistent_statistics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(
        dir.path(),
        "type = \"always\"",
        "type = \"dense\"\nbits = 8",
    );
    let v = run_json(&cfg, &[]);
    let ids = v["generated_ids"].as_array().expect("generated_ids");
    assert_eq!(ids.len(), 12);
    assert_eq!(v["prompt_ids"], serde_json::json!([1, 5, 17, 33]));
    let n = |k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("{k} missing in {v}"))
    };
    // Every token is uploaded: each generated token is a verified draft or a resample.
    assert_eq!(n("skips"), 0);
    assert_eq!(n("uploads"), n("draft_n"));
    assert_eq!(n("draft_n_accepted") + n("resamples"), n("draft_n"));
    // Dense 8-bit payload of 64 probabilities per upload, plus ids.
    assert!(n("uplink_bits") >= n("uploads") * 64 * 8);
    for k in ["device", "uplink", "server", "downlink"] {
        assert!(v["energy_j"][k].as_f64().is_some(), "energy_j.{k} in {v}");
        assert!(v["time_s"][k].as_f64().is_some(), "time_s.{k} in {v}");
    }
    // Uplink airtime of the fixed 1 Mbit/s link is exactly bits / rate.
    let airtime = v["time_s"]["uplink"].as_f64().expect("uplink time");
    assert!(
        (airtime - n("uplink_bits") as f64 / 1e6).abs() < 1e-9,
        "{airtime}"
    );
    assert!(v["tokens_per_s"].as_f64().is_some() && v["wall_s"].as_f64().is_some());
    assert_eq!(v["text"], "");
}

#[test]
fn runs_are_reproducible_from_the_seed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(
        dir.path(),
        "type = \"random\"\nskip_rate = 0.5",
        "type = \"top_k\"\nk = 8",
    );
    let a = run_json(&cfg, &[]);
    let b = run_json(&cfg, &[]);
    assert_eq!(a["generated_ids"], b["generated_ids"]);
    assert_eq!(a["kinds"], b["kinds"]);
    let c = run_json(&cfg, &["--seed", "8"]);
    assert_ne!(
        (a["generated_ids"].clone(), a["kinds"].clone()),
        (c["generated_ids"].clone(), c["kinds"].clone()),
        "another seed should change the run"
    );
    assert!(a["skips"].as_u64().expect("skips") > 0);
}

#[test]
fn readable_summary_and_decision_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "type = \"always\"", "type = \"token_only\"");
    let c = cfg.to_string_lossy().into_owned();
    let o = hlm(&[
        "run",
        "-c",
        &c,
        "--prompt-ids",
        "3,4",
        "--show-decisions",
        "-n",
        "5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("decision"), "{out}");
    assert!(out.contains("draft_n") && out.contains("uplink"), "{out}");
}

#[test]
fn text_prompt_without_tokenizer_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "type = \"always\"", "type = \"dense\"");
    let c = cfg.to_string_lossy().into_owned();
    let o = hlm(&["run", "-c", &c, "--prompt", "hello"]);
    assert_fails_naming(&o, "--prompt-ids");
}

#[test]
fn missing_config_and_missing_model_name_the_path() {
    let o = hlm(&[
        "run",
        "-c",
        "/nonexistent/pipeline.toml",
        "--prompt-ids",
        "1",
    ]);
    assert_fails_naming(&o, "/nonexistent/pipeline.toml");

    let o = hlm(&[
        "generate",
        "-m",
        "/nonexistent/model.gguf",
        "--prompt-ids",
        "1",
    ]);
    assert_fails_naming(&o, "/nonexistent/model.gguf");
}

#[test]
fn generate_json_has_ids_and_timings() {
    let m = fixtures().join("tiny-qwen2");
    let m = m.to_string_lossy().into_owned();
    let o = hlm(&[
        "generate",
        "-m",
        &m,
        "--prompt-ids",
        "1,2,3",
        "-n",
        "6",
        "-t",
        "0",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let v: Value = serde_json::from_str(out.lines().last().expect("line")).expect("json");
    assert_eq!(v["prompt_ids"], serde_json::json!([1, 2, 3]));
    assert_eq!(v["generated_ids"].as_array().map(|a| a.len()), Some(6));
    assert!(v["wall_s"].as_f64().is_some() && v["load_s"].as_f64().is_some());
}

#[test]
fn config_check_accepts_every_shipped_config() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut args = vec!["config".to_string(), "check".to_string()];
    for e in std::fs::read_dir(&dir).expect("configs/") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "toml") {
            args.push(p.to_string_lossy().into_owned());
        }
    }
    let o = Command::new(env!("CARGO_BIN_EXE_hlm"))
        .args(&args)
        .output()
        .expect("runs");
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let bad = dir.join("../crates/cli/tests/does-not-exist.toml");
    let o = hlm(&["config", "check", &bad.to_string_lossy()]);
    assert!(!o.status.success());
}

#[test]
fn measured_energy_is_reported_or_explained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "type = \"always\"", "type = \"dense\"");
    let v = run_json(&cfg, &["--measure-energy", "-n", "3"]);
    let readings = v["measured_energy"]
        .as_array()
        .expect("one reading per meter");
    let meters: Vec<&str> = readings
        .iter()
        .filter_map(|r| r["meter"].as_str())
        .collect();
    assert_eq!(meters, ["rapl", "nvml"], "{v}");
    for m in readings {
        match m["method"].as_str() {
            Some("rapl") | Some("nvml") => {
                assert!(m["joules"].as_f64().is_some_and(|j| j >= 0.0), "{m}")
            }
            Some("unavailable") => {
                let e = m["error"].as_str().expect("a reason");
                assert!(
                    e.contains("RAPL") || e.contains("NVIDIA") || e.contains("NVML"),
                    "{e}"
                );
            }
            other => panic!("unexpected measured_energy {other:?}: {m}"),
        }
    }
    // Without the flag nothing is measured.
    let v = run_json(&cfg, &["-n", "3"]);
    assert!(v.get("measured_energy").is_none(), "{v}");
}

#[test]
fn savings_against_a_baseline_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base_dir = dir.path().join("base");
    std::fs::create_dir(&base_dir).expect("mkdir");
    let base = write_config(&base_dir, "type = \"always\"", "type = \"dense\"\nbits = 8");
    let cfg = write_config(
        dir.path(),
        "type = \"random\"\nskip_rate = 0.5",
        "type = \"top_k\"\nk = 8",
    );
    let base_cfg = base.to_string_lossy().into_owned();
    let v = run_json(&cfg, &["--baseline", &base_cfg]);
    // The baseline is the same run as running its config on its own (same prompt and seed).
    let alone = run_json(&base, &[]);
    let b = &v["baseline"]["stats"];
    for k in [
        "uplink_bits",
        "uploads",
        "generated_tokens",
        "downlink_bits",
    ] {
        assert_eq!(b[k], alone[k], "{k}");
    }
    let f = |x: &Value, k: &str| x[k].as_f64().unwrap_or_else(|| panic!("{k} in {x}"));
    let per_token = |x: &Value, k: &str| f(x, k) / f(x, "generated_tokens");
    let s = &v["savings"];
    let expect = 1.0 - per_token(&v, "uplink_bits") / per_token(b, "uplink_bits");
    assert!((f(s, "uplink_bits") - expect).abs() < 1e-9, "{s}");
    assert!(f(s, "uplink_bits") > 0.5, "top-8 of half the tokens: {s}");
    let expect = 1.0 - f(&v, "energy_per_token_j") / f(b, "energy_per_token_j");
    assert!((f(s, "energy") - expect).abs() < 1e-9, "{s}");
    // Uplink energy is P_tx x airtime on the same link, so its saving is the bits' saving.
    assert!(
        (f(&s["energy_by_component"], "uplink") - f(s, "uplink_bits")).abs() < 1e-9,
        "{s}"
    );
    // The readable summary says it too.
    let o = hlm(&[
        "run",
        "-c",
        &cfg.to_string_lossy(),
        "--prompt-ids",
        "1,5",
        "-n",
        "4",
        "--baseline",
        &base_cfg,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("savings    vs tiny: energy"),
        "{}",
        stdout(&o)
    );
    // A missing baseline config is named.
    let o = hlm(&[
        "run",
        "-c",
        &cfg.to_string_lossy(),
        "--prompt-ids",
        "1",
        "--baseline",
        "/nonexistent/hlm.toml",
    ]);
    assert_fails_naming(&o, "/nonexistent/hlm.toml");
}

/// The shipped link and device profiles change the modelled costs exactly as the formulas say.
#[test]
fn switching_profiles_changes_costs_as_the_formulas_say() {
    let dir = tempfile::tempdir().expect("tempdir");
    let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/profiles");
    let base = write_config(
        dir.path(),
        "type = \"always\"",
        "type = \"dense\"\nbits = 8",
    );
    let text = std::fs::read_to_string(&base).expect("read");
    // Drop the config's own [link] and [energy] tables: the profiles provide them.
    let own = text.split("[link]").next().expect("head").to_string();
    let with = |link: &str, device: &str| {
        let p = dir.path().join(format!("{link}-{device}.toml"));
        let include = format!(
            "include = [{:?}, {:?}]\n",
            profiles.join(format!("links/{link}.toml")),
            profiles.join(format!("devices/{device}.toml"))
        );
        std::fs::write(&p, include + &own).expect("write");
        run_json(&p, &[])
    };
    let f = |x: &Value, a: &str, b: &str| x[a][b].as_f64().unwrap_or_else(|| panic!("{a}.{b}"));
    let u = |x: &Value, k: &str| x[k].as_u64().unwrap_or_else(|| panic!("{k}")) as f64;
    // fixed-5mbps: 5 Mbit/s up, 20 Mbit/s down, 10 ms per message; phone: 0.2 W tx, 0.1 W rx,
    // 5 W device; laptop-gpu: 0.1 W tx, 0.1 W rx, 35 W device.
    for (device, tx, rx, device_w) in [("phone", 0.2, 0.1, 5.0), ("laptop-gpu", 0.1, 0.1, 35.0)] {
        let v = with("fixed-5mbps", device);
        let up_air = u(&v, "uplink_bits") / 5e6;
        let down_air = u(&v, "downlink_bits") / 20e6;
        assert!(
            (f(&v, "energy_j", "uplink") - tx * up_air).abs() < 1e-12,
            "{device}: {v}"
        );
        assert!(
            (f(&v, "energy_j", "downlink") - rx * down_air).abs() < 1e-12,
            "{device}"
        );
        // Link time = airtime + 10 ms per message; messages: the session start plus one per
        // verification round each way.
        let up_msgs = ((f(&v, "time_s", "uplink") - up_air) / 0.01).round();
        assert_eq!(up_msgs, u(&v, "verify_calls") + 1.0, "{v}");
        // Device energy = its power x its measured compute time.
        let ratio = f(&v, "energy_j", "device") / f(&v, "time_s", "device");
        assert!((ratio - device_w).abs() < 1e-9, "{device}: {ratio}");
    }
    // Same seed, same tokens: a 5G link changes airtime but not the bits sent.
    let a = with("fixed-5mbps", "phone");
    let b = with("5g", "phone");
    assert_eq!(a["generated_ids"], b["generated_ids"]);
    assert_eq!(a["uplink_bits"], b["uplink_bits"]);
    assert_ne!(f(&a, "time_s", "uplink"), f(&b, "time_s", "uplink"));
}

/// `hlm serve` and `hlm run` with `type = "remote"` in two processes give the tokens of the
/// same pipeline in one process.
#[test]
fn serve_and_remote_run_match_the_local_run() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let server_cfg = dir.path().join("server.toml");
    std::fs::write(
        &server_cfg,
        format!(
            "[model]\ntype = \"transformer\"\nmodel = {:?}\n[limits]\nmax_sessions = 4\n",
            fixtures().join("tiny-qwen2").display().to_string()
        ),
    )
    .expect("write");
    /// Kills the server however the test ends.
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut server = Server(
        Command::new(env!("CARGO_BIN_EXE_hlm"))
            .args(["serve", "--config"])
            .arg(&server_cfg)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("hlm serve starts"),
    );
    let stderr = server.0.stderr.take().expect("stderr");
    let mut lines = std::io::BufReader::new(stderr).lines();
    let banner = lines
        .next()
        .expect("a banner line")
        .expect("readable banner");
    let addr = banner
        .split("listening on ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {banner:?}"))
        .to_string();
    assert!(
        banner.contains("protocol v2") && banner.contains("vocab 64"),
        "{banner}"
    );
    let local = write_config(
        dir.path(),
        "type = \"always\"",
        "type = \"dense\"\nbits = 8",
    );
    let text = std::fs::read_to_string(&local).expect("read");
    let verifier_start = text.find("[verifier]").expect("verifier table");
    let verifier_end = text.find("[upload]").expect("upload table");
    let remote_text = format!(
        "{}[verifier]\ntype = \"remote\"\naddress = \"0.0.0.0:1\"\n{}",
        &text[..verifier_start],
        &text[verifier_end..]
    );
    let remote = dir.path().join("remote.toml");
    std::fs::write(&remote, remote_text).expect("write");
    let a = run_json(&local, &[]);
    let set = format!("verifier.address={addr}");
    let b = run_json(&remote, &["--set", &set]);
    drop(server);
    assert_eq!(a["generated_ids"], b["generated_ids"]);
    assert_eq!(a["kinds"], b["kinds"]);
    assert_eq!(a["uplink_bits"], b["uplink_bits"]);
    assert_eq!(b["verifier_faults"], 0);
}

#[test]
fn serve_reports_bad_configs_and_addresses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("server.toml");
    std::fs::write(
        &cfg,
        "[model]\ntype = \"transformer\"\nmodel = \"/nonexistent/model\"\n",
    )
    .expect("write");
    let o = hlm(&["serve", "--config", &cfg.to_string_lossy()]);
    assert_fails_naming(&o, "/nonexistent/model");
    std::fs::write(
        &cfg,
        format!(
            "[model]\ntype = \"transformer\"\nmodel = {:?}\n",
            fixtures().join("tiny-qwen2").display().to_string()
        ),
    )
    .expect("write");
    let o = hlm(&[
        "serve",
        "--config",
        &cfg.to_string_lossy(),
        "--listen",
        "not-an-address",
    ]);
    assert_fails_naming(&o, "cannot listen on not-an-address");
    // A limit out of its range is refused by name, by `hlm config check` as by `hlm serve`,
    // before the model loads (it used to pass the check and then stop the model worker
    // while the server went on listening).
    std::fs::write(
        &cfg,
        format!(
            "[model]\ntype = \"transformer\"\nmodel = {:?}\n[limits]\nidle_timeout_s = 1e300\n",
            fixtures().join("tiny-qwen2").display().to_string()
        ),
    )
    .expect("write");
    let o = hlm(&["serve", "--config", &cfg.to_string_lossy()]);
    assert_fails_naming(&o, "limits.idle_timeout_s");
    let o = hlm(&["config", "check", &cfg.to_string_lossy()]);
    assert!(!o.status.success());
    assert!(
        stdout(&o).contains("limits.idle_timeout_s"),
        "{}",
        stdout(&o)
    );
}

/// Method configs slm, llm, hlm, random of the fixtures in `dir`, and two id prompts.
/// Returns the base config and the prompts file.
fn bench_fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let base = write_config(dir, "type = \"always\"", "type = \"dense\"\nbits = 8");
    let text = std::fs::read_to_string(&base).expect("read");
    let (head, tail) = text.split_at(text.find("[upload]").expect("upload"));
    let tail = &tail[tail.find("[link]").expect("link")..];
    let method = |name: &str, body: &str| {
        std::fs::write(
            dir.join(format!("{name}.toml")),
            format!("{head}{body}\n{tail}")
                .replace("name = \"tiny\"", &format!("name = \"{name}\"")),
        )
        .expect("write");
    };
    method(
        "hlm",
        "[upload]\ntype = \"always\"\n[codec]\ntype = \"dense\"\nbits = 8",
    );
    method(
        "random",
        "[upload]\ntype = \"random\"\nskip_rate = 0.5\n[codec]\ntype = \"top_k\"\nk = 8",
    );
    // SLM-only and LLM-only: drop the other model.
    let without = |t: &str, table: &str, next: &str| {
        let a = t.find(table).expect("table");
        let b = t.find(next).expect("next");
        format!("{}{}", &t[..a], &t[b..])
    };
    std::fs::write(
        dir.join("slm.toml"),
        without(&text, "[verifier]", "[upload]").replace("name = \"tiny\"", "name = \"slm\""),
    )
    .expect("write");
    std::fs::write(
        dir.join("llm.toml"),
        without(&text, "[draft]", "[verifier]").replace("name = \"tiny\"", "name = \"llm\""),
    )
    .expect("write");
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "1,5,17,33\n2,9\n").expect("write");
    (base, prompts)
}

/// `hlm bench -c BASE --prompts PROMPTS --methods METHODS --no-bertscore -o OUT EXTRA...` on
/// the fixtures of [`bench_fixture`].
fn bench_on_fixture(
    (base, prompts): &(PathBuf, PathBuf),
    out: &Path,
    methods: &str,
    extra: &[&str],
) -> std::process::Output {
    let (base, prompts, out) = (
        base.to_string_lossy(),
        prompts.to_string_lossy(),
        out.to_string_lossy(),
    );
    let mut args = vec![
        "bench",
        "-c",
        &base,
        "--prompts",
        &prompts,
        "--methods",
        methods,
        "--no-bertscore",
        "-o",
        &out,
    ];
    args.extend_from_slice(extra);
    hlm(&args)
}

/// Parameters checked when the models are built (a codec against the vocabulary, a model
/// spec) are named by their full dotted paths too.
#[test]
fn build_time_parameter_errors_name_the_full_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(
        dir.path(),
        "type = \"always\"",
        "type = \"top_k\"\nk = 100000\nbits = 8",
    );
    let cfg = cfg.to_string_lossy();
    let run_with = |set: &[&str]| {
        let mut args = vec!["run", "-c", &cfg, "--prompt-ids", "1,5"];
        for s in set {
            args.extend(["--set", s]);
        }
        hlm(&args)
    };
    assert_fails_naming(&run_with(&[]), "`codec.k` = 100000");
    for (set, key) in [
        (
            "verifier.model.prefill_chunk=0",
            "`verifier.model.prefill_chunk` = 0",
        ),
        ("draft.prefill_chunk=0", "`draft.prefill_chunk` = 0"),
    ] {
        assert_fails_naming(&run_with(&["codec.k=4", set]), key);
    }
}

/// `hlm bench` on the tiny fixtures: four methods, two prompts, the files and the table.
#[test]
fn bench_runs_every_method_on_every_prompt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = bench_fixture(dir.path());
    let out = dir.path().join("out");
    let o = bench_on_fixture(&fixture, &out, "slm,llm,hlm,random", &["-n", "8"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = std::fs::read_to_string(out.join("table.md")).expect("table.md");
    let main_table = table.split("\n\n").next().expect("main table");
    assert_eq!(main_table.lines().count(), 2 + 4, "{table}");
    // One seed per prompt: two runs a method, intervals from the prompts alone; the paired
    // table lists the three methods other than standard HLM.
    assert!(table.contains("**Against standard HLM**"), "{table}");
    let paired = table
        .split("**Against standard HLM**")
        .nth(1)
        .expect("paired");
    for m in ["slm", "llm", "random"] {
        assert!(paired.contains(&format!("| {m} |")), "{m} in {paired}");
    }
    assert!(!paired.contains("| hlm |"), "{paired}");
    let csv = std::fs::read_to_string(out.join("results.csv")).expect("results.csv");
    assert_eq!(csv.lines().count(), 1 + 4 * 2, "{csv}");
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).expect("json"))
            .expect("JSON");
    let summary = |m: &str| {
        v["summary"]
            .as_array()
            .expect("summary")
            .iter()
            .find(|s| s["method"] == m)
            .unwrap_or_else(|| panic!("no {m} in {v}"))
            .clone()
    };
    assert_eq!(summary("llm")["token_agreement"], 1.0);
    assert_eq!(summary("hlm")["upload_rate"], 1.0);
    assert_eq!(summary("slm")["upload_rate"], 0.0);
    assert_eq!(summary("hlm")["energy_saving_vs_hlm"], 0.0);
    assert_eq!(summary("random")["generated_tokens"], 16);
    let r = summary("random")["upload_rate"].as_f64().expect("rate");
    assert!(r > 0.0 && r < 1.0, "{r}");
    // The per-run records agree with a plain `hlm run` of the same method and seed.
    let single = run_json(&dir.path().join("hlm.toml"), &["-n", "8"]);
    let first = v["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["method"] == "hlm" && r["prompt"] == "line-1")
        .expect("hlm on prompt 1")
        .clone();
    assert_eq!(first["generated_ids"], single["generated_ids"]);
    // Plots, and `hlm report` regenerates table and plots from results.json alone.
    for f in [
        "saving_vs_quality.svg",
        "saving_vs_quality.png",
        "throughput_vs_quality.svg",
        "throughput_vs_quality.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    std::fs::remove_file(out.join("table.md")).expect("rm");
    std::fs::remove_file(out.join("saving_vs_quality.png")).expect("rm");
    let o = hlm(&["report", &out.to_string_lossy()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(out.join("table.md")).expect("table.md again"),
        table
    );
    assert!(out.join("saving_vs_quality.png").is_file());
    let o = hlm(&["report", &dir.path().to_string_lossy()]);
    assert_fails_naming(&o, "results.json");
    // An unknown method names the file it looked for.
    let o = bench_on_fixture(&fixture, &out, "nope", &[]);
    assert_fails_naming(&o, "nope.toml");
}

/// `--seeds`: every method on every prompt with each seed; the first seed's runs are those of
/// a one-seed bench, the summaries carry intervals around their values, the target scores
/// every output, and the lossless methods' paired differences in agreement are exact zeros
/// where they must be.
#[test]
fn bench_with_seeds_gives_intervals_likelihoods_and_paired_differences() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = bench_fixture(dir.path());
    let out = dir.path().join("out");
    let o = bench_on_fixture(
        &fixture,
        &out,
        "slm,llm,hlm,random",
        &["--seeds", "3", "-n", "8", "-t", "1"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).expect("json"))
            .expect("JSON");
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), 4 * 2 * 3);
    let seed0: u64 = results[0]["seed"].as_u64().expect("seed");
    for m in ["slm", "llm", "hlm", "random"] {
        let mut seeds: Vec<u64> = results
            .iter()
            .filter(|r| r["method"] == m && r["prompt"] == "line-1")
            .map(|r| r["seed"].as_u64().expect("seed"))
            .collect();
        seeds.sort();
        assert_eq!(seeds, vec![seed0, seed0 + 1, seed0 + 2], "{m}");
    }
    // Every output scored by the target: a finite, positive NLL per token.
    for r in results {
        let nll = r["target_nll"]
            .as_f64()
            .unwrap_or_else(|| panic!("no NLL in {r}"));
        assert!(nll.is_finite() && nll > 0.0, "{r}");
    }
    // The first seed's hlm run is the plain `hlm run` of that seed.
    let single = run_json(&dir.path().join("hlm.toml"), &["-n", "8", "-t", "1"]);
    let first = results
        .iter()
        .find(|r| r["method"] == "hlm" && r["prompt"] == "line-1" && r["seed"] == seed0)
        .expect("hlm run");
    assert_eq!(first["generated_ids"], single["generated_ids"]);
    // Different seeds sample different continuations somewhere (T = 1).
    let ids = |seed: u64| {
        results
            .iter()
            .find(|r| r["method"] == "llm" && r["prompt"] == "line-1" && r["seed"] == seed)
            .expect("llm run")["generated_ids"]
            .clone()
    };
    assert!(
        ids(seed0) != ids(seed0 + 1) || ids(seed0) != ids(seed0 + 2),
        "three seeds, one output"
    );
    for s in v["summary"].as_array().expect("summary") {
        assert_eq!(s["seeds"], 3, "{s}");
        assert_eq!(s["prompts"], 2, "{s}");
        let nll = s["target_nll"].as_f64().expect("summary NLL");
        let i = &s["intervals"]["target_nll"];
        let (low, high) = (
            i["low"].as_f64().expect("low"),
            i["high"].as_f64().expect("high"),
        );
        assert!(low <= nll && nll <= high && low < high, "{s}");
        // The LLM-only run's agreement with itself is 1 in every resample.
        if s["method"] == "llm" {
            assert_eq!(s["intervals"]["token_agreement"]["low"], 1.0, "{s}");
        }
        // Standard HLM less itself: zero, exactly.
        if s["method"] == "hlm" {
            assert_eq!(s["vs_hlm"]["upload_rate"]["value"], 0.0, "{s}");
        }
    }
    // The SLM-only method uploads nothing where HLM uploads everything: a difference of
    // -100 points whose interval excludes zero, marked bold.
    let table = std::fs::read_to_string(out.join("table.md")).expect("table");
    let slm_row = table
        .split("**Against standard HLM**")
        .nth(1)
        .and_then(|t| t.lines().find(|l| l.starts_with("| slm |")))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        slm_row.contains("**-100.0 pp [-100.0 pp, -100.0 pp]**"),
        "{slm_row}"
    );
    assert!(table.contains("| slm | 2 × 3 |"), "{table}");
    // hlm report recomputes the same table from the runs alone.
    std::fs::remove_file(out.join("table.md")).expect("rm");
    let o = hlm(&["report", &out.to_string_lossy()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(out.join("table.md")).expect("again"),
        table
    );
}

/// `--humaneval`: each completion runs with its problem's tests, pass@1 enters the table. The
/// tiny fixtures have no tokenizer, so completions are empty: the problem of the first prompt
/// is complete without one and passes, the second's fails (whatever a method generates).
#[test]
fn bench_runs_humaneval_tests_on_completions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = bench_fixture(dir.path());
    let problems = dir.path().join("HumanEval.jsonl");
    let problem = |id: &str, body: &str| {
        serde_json::json!({
            "task_id": id,
            "prompt": format!("def f(x):\n{body}"),
            "test": "def check(candidate):\n    assert candidate(2) == 4\n",
            "entry_point": "f",
        })
        .to_string()
    };
    std::fs::write(
        &problems,
        format!(
            "{}\n{}\n",
            problem("line-1", "    return 2 * x\n"),
            problem("line-2", "    return x\n")
        ),
    )
    .expect("write");
    let out = dir.path().join("out");
    let run = |problems: &Path| {
        let problems = problems.to_string_lossy();
        let extra = ["--no-likelihood", "-n", "4", "--humaneval", &problems];
        bench_on_fixture(&fixture, &out, "hlm,random", &extra)
    };
    let o = run(&problems);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).expect("json"))
            .expect("JSON");
    for r in v["results"].as_array().expect("results") {
        assert_eq!(r["passed"], r["prompt"] == "line-1", "{r}");
        assert!(r["target_nll"].is_null(), "--no-likelihood: {r}");
    }
    for s in v["summary"].as_array().expect("summary") {
        assert_eq!(s["pass_at_1"], 0.5, "{s}");
    }
    let table = std::fs::read_to_string(out.join("table.md")).expect("table");
    assert!(
        table.contains("| pass@1 |") && table.contains("| 50.0 % ["),
        "{table}"
    );
    // Problems that match no prompt, or a file that is not HumanEval's, are refused.
    let other = dir.path().join("other.jsonl");
    std::fs::write(&other, format!("{}\n", problem("HumanEval/0", ""))).expect("write");
    let o = run(&other);
    assert_fails_naming(&o, "HumanEval task id");
    std::fs::write(&other, "{\"task_id\": \"line-1\"}\n").expect("write");
    let o = run(&other);
    assert_fails_naming(&o, "entry_point");
}

/// `--sweep` over a key of one method: that method runs at every point, the others once.
#[test]
fn bench_sweeps_a_method_knob() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = bench_fixture(dir.path());
    let out = dir.path().join("sweep");
    let sweep = |sweep: &str| {
        bench_on_fixture(
            &fixture,
            &out,
            "hlm,random",
            &["-n", "12", "--sweep", sweep],
        )
    };
    let o = sweep("upload.skip_rate=0.0:1.0:0.5");
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = std::fs::read_to_string(out.join("sweep.csv")).expect("sweep.csv");
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 3 * 2, "{csv}");
    let rate = |point: &str, method: &str| -> f64 {
        rows.iter()
            .find(|r| r[0] == point && r[1] == method)
            .unwrap_or_else(|| panic!("{point} {method} in {csv}"))[4]
            .parse()
            .expect("rate")
    };
    let p = |v: &str| format!("upload.skip_rate={v}");
    // Skipping nothing uploads everything; skipping everything uploads nothing.
    assert_eq!(rate(&p("0"), "random"), 1.0);
    assert_eq!(rate(&p("1"), "random"), 0.0);
    let half = rate(&p("0.5"), "random");
    assert!(half > 0.0 && half < 1.0, "{half}");
    // hlm has no skip_rate: the same results at every point.
    for v in ["0", "0.5", "1"] {
        assert_eq!(rate(&p(v), "hlm"), 1.0);
    }
    let table = std::fs::read_to_string(out.join("table.md")).expect("table.md");
    assert_eq!(table.matches("### upload.skip_rate=").count(), 3, "{table}");
    // No LLM-only run, so no quality axis: no trade-off plot, but the curves vs the key.
    for f in ["upload_rate.svg", "tokens_per_s.png", "energy_saving.svg"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let svg = std::fs::read_to_string(out.join("upload_rate.svg")).expect("svg");
    assert!(
        svg.contains("upload.skip_rate"),
        "the x axis names the swept key"
    );
    // The sweep's results.json is enough for `hlm report`.
    std::fs::remove_file(out.join("sweep.csv")).expect("rm");
    let o = hlm(&["report", &out.to_string_lossy()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("sweep.csv").is_file());
    // A key no config has, and a malformed range, are named.
    assert_fails_naming(&sweep("upload.nothing=0:1:1"), "upload.nothing");
    assert_fails_naming(&sweep("upload.skip_rate=1:0:0.5"), "START:STOP:STEP");
}

//! Every shipped config parses, round-trips through TOML unchanged, and bad configs are
//! rejected with messages that name the file, the key and what is accepted.

use std::path::{Path, PathBuf};

use hlm_core::PipelineConfig;

fn link() {
    hlm_filters::link();
    hlm_energy::link();
    hlm_backends::link();
    hlm_net::link();
}

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

/// Every pipeline config: configs/*.toml and the paper reproduction's configs/paper/*.toml
/// (not the server's config, not the shared setting the paper's methods include).
fn shipped() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = [configs_dir(), configs_dir().join("paper")]
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).expect("config dir exists"))
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .filter(|p| !p.ends_with("server.toml") && !p.ends_with("setup.toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn the_paper_configs_share_one_setting_and_inherit_down_the_chain() {
    link();
    let load = |m: &str| {
        let cfg = PipelineConfig::load(&configs_dir().join("paper").join(format!("{m}.toml")), &[])
            .unwrap_or_else(|e| panic!("configs/paper/{m}.toml: {e}"));
        cfg.to_toml().expect("serialises")
    };
    let methods = ["slm", "llm", "hlm", "u-hlm", "iu-hlm", "cu-hlm"];
    let tomls: Vec<String> = methods.iter().map(|m| load(m)).collect();
    // One modelled setting for all: the cell-edge link and the pass-based compute times.
    for (m, t) in methods.iter().zip(&tomls) {
        for key in [
            "bandwidth_hz = 1000000.0",
            "seconds_per_pass = 0.0016",
            "seconds_per_pass = 0.02",
        ] {
            assert!(t.contains(key), "{m} lacks `{key}`:\n{t}");
        }
    }
    let [_, _, hlm, u, iu, cu] = &tomls[..] else {
        unreachable!()
    };
    // The paper's method and CU-HLM inherit U-HLM's fitted line and standard HLM's models.
    for t in [u, iu, cu] {
        assert!(t.contains("a = 0.548") && t.contains("b = -0.0145"), "{t}");
        assert!(t.contains("qwen2.5-coder-1.5b-instruct"), "{t}");
    }
    assert!(hlm.contains("type = \"always\""), "{hlm}");
    assert!(
        iu.contains("type = \"mean_std\"") && !u.contains("mean_std"),
        "{iu}"
    );
    assert!(
        cu.contains("type = \"adaptive_top_k\"") && !u.contains("adaptive_top_k"),
        "{cu}"
    );
}

#[test]
fn the_server_config_parses_and_bad_limits_are_named() {
    link();
    hlm_net::link();
    let cfg = hlm_net::ServerConfig::load(&configs_dir().join("server.toml"))
        .expect("configs/server.toml loads");
    assert_eq!(cfg.limits.max_sessions, 64);
    let e = hlm_net::ServerConfig::parse(
        "[model]\ntype = \"transformer\"\nmodel = \"x\"\n[limits]\nmax_sessions = 0\n",
        "s.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("s.toml") && e.contains("max_sessions"), "{e}");
    let e = hlm_net::ServerConfig::parse(
        "[model]\ntype = \"transformer\"\nmodel = \"x\"\n[limits]\nmax_sesions = 3\n",
        "s.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("max_sesions"), "{e}");
}

#[test]
fn one_config_per_method_is_shipped() {
    let names: Vec<String> = shipped()
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    for m in [
        "slm",
        "llm",
        "hlm",
        "u-hlm",
        "iu-hlm",
        "cu-hlm",
        "random",
        "speculative",
        "dssd",
        "deferred-u-hlm",
        "deferred-iu-hlm",
    ] {
        assert!(
            names.iter().any(|n| n == m),
            "configs/{m}.toml missing; have {names:?}"
        );
    }
}

#[test]
fn every_shipped_config_round_trips() {
    link();
    for path in shipped() {
        let cfg = PipelineConfig::load(&path, &[])
            .unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()));
        let once = cfg.to_toml().expect("serialises");
        let again = PipelineConfig::parse(&once, "round trip", &[])
            .unwrap_or_else(|e| panic!("{} does not re-parse: {e}\n{once}", path.display()));
        assert_eq!(
            once,
            again.to_toml().expect("serialises"),
            "{}",
            path.display()
        );
        assert_eq!(
            cfg.name.as_deref(),
            path.file_stem().and_then(|s| s.to_str()),
            "the name of {} should match its file",
            path.display()
        );
    }
}

fn error_of(text: &str, overrides: &[&str]) -> String {
    link();
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    match PipelineConfig::parse(text, "bad.toml", &o) {
        Ok(c) => panic!("accepted a bad config: {c:?}"),
        Err(e) => e.to_string(),
    }
}

const MINIMAL: &str = r#"
[draft]
type = "transformer"
model = "some-model"
"#;

fn assert_contains(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} should contain {p:?}");
    }
}

#[test]
fn unknown_component_type_lists_accepted_types() {
    let m = error_of(&format!("{MINIMAL}[verifier]\ntype = \"teleport\"\n"), &[]);
    assert_contains(&m, &["bad.toml", "teleport", "local"]);
    let m = error_of(
        &format!(
            "{MINIMAL}[verifier]\ntype = \"local\"\n[verifier.model]\ntype = \"transformer\"\nmodel = \"x\"\n[upload]\ntype = \"sometimes\"\n[codec]\ntype = \"dense\"\n"
        ),
        &[],
    );
    assert_contains(
        &m,
        &["bad.toml", "sometimes", "always", "token_filter", "random"],
    );
}

#[test]
fn unknown_key_is_named() {
    let m = error_of(&format!("{MINIMAL}[generation]\nmax_tokens = 3\n"), &[]);
    assert_contains(&m, &["bad.toml", "max_tokens", "max_new_tokens"]);
}

#[test]
fn impossible_values_name_key_and_rule() {
    let m = error_of(MINIMAL, &["generation.temperature=-1"]);
    assert_contains(&m, &["bad.toml", "generation.temperature", ">= 0"]);
    let m = error_of(MINIMAL, &["speculation.gamma=0"]);
    assert_contains(&m, &["speculation.gamma", "between 1 and 64"]);
    let m = error_of(MINIMAL, &["speculation.gamma=65"]);
    assert_contains(&m, &["speculation.gamma", "between 1 and 64"]);
    let m = error_of(MINIMAL, &["speculation.adaptive=true"]);
    assert_contains(&m, &["speculation.adaptive", "stop_drafting"]);
    let m = error_of(MINIMAL, &["generation.max_new_tokens=0"]);
    assert_contains(&m, &["generation.max_new_tokens"]);
}

/// A nested component names its own keys and whoever holds it adds the path, so every error
/// names the key as a user writes it with `--set`.
#[test]
fn nested_parameters_are_named_by_their_full_dotted_path() {
    let filter = format!(
        "{MINIMAL}[verifier]\ntype = \"local\"\n[verifier.model]\ntype = \"transformer\"\nmodel = \"x\"\n\
         [upload]\ntype = \"token_filter\"\n[upload.uncertainty.estimator]\ntype = \"entropy\"\n\
         [upload.uncertainty.threshold]\ntype = \"fixed\"\nvalue = 0.5\n\
         [upload.importance.scorer]\ntype = \"attention\"\n\
         [upload.importance.threshold]\ntype = \"mean_std\"\nlambda = 1.0\n\
         [codec]\ntype = \"dense\"\n\
         [link]\ntype = \"fixed_rate\"\nuplink_bps = 1e6\ndownlink_bps = 1e7\n\
         [energy]\ntype = \"analytic\"\n"
    );
    for (set, key) in [
        (
            "upload.importance.threshold.lambda=nan",
            "`upload.importance.threshold.lambda`",
        ),
        (
            "upload.uncertainty.threshold.value=inf",
            "`upload.uncertainty.threshold.value`",
        ),
        ("link.uplink_bps=0", "`link.uplink_bps`"),
        ("link.latency_s=-1", "`link.latency_s`"),
        ("energy.uplink_tx_power_w=-1", "`energy.uplink_tx_power_w`"),
        (
            "speculation.residual={ type = \"top_k\", k = 0, bits = 8 }",
            "`speculation.residual.k`",
        ),
    ] {
        let m = error_of(&filter, &[set]);
        assert_contains(&m, &[key]);
    }
    let m = error_of(
        &format!("{MINIMAL}[upload]\ntype = \"random\"\nskip_rate = 2\n"),
        &[],
    );
    assert_contains(&m, &["`upload.skip_rate` = 2", "probability in [0, 1]"]);
    let m = error_of(
        &format!("{MINIMAL}[upload]\ntype = \"token_filter\"\n"),
        &[],
    );
    assert_contains(&m, &["`upload.uncertainty`", "importance"]);
}

#[test]
fn hybrid_pipeline_needs_upload_and_codec() {
    let both = format!(
        "{MINIMAL}[verifier]\ntype = \"local\"\n[verifier.model]\ntype = \"transformer\"\nmodel = \"x\"\n"
    );
    let m = error_of(&both, &[]);
    assert_contains(&m, &["upload", "required", "always"]);
    let m = error_of(&format!("{both}[upload]\ntype = \"always\"\n"), &[]);
    assert_contains(&m, &["codec", "required", "dense"]);
}

#[test]
fn empty_pipeline_is_rejected() {
    let m = error_of("name = \"nothing\"\n", &[]);
    assert_contains(&m, &["draft", "verifier"]);
}

#[test]
fn bad_filter_parameters_are_named() {
    let m = error_of(
        &format!("{MINIMAL}[upload]\ntype = \"random\"\nskip_rate = 1.5\n"),
        &[],
    );
    assert_contains(&m, &["skip_rate", "1.5"]);
}

#[test]
fn malformed_toml_and_missing_file_are_reported() {
    let m = error_of("[draft\n", &[]);
    assert_contains(&m, &["bad.toml"]);
    link();
    let e = PipelineConfig::load(Path::new("/nonexistent/x.toml"), &[])
        .expect_err("missing file")
        .to_string();
    assert_contains(&e, &["/nonexistent/x.toml"]);
}

#[test]
fn overrides_reach_nested_tables() {
    link();
    let path = configs_dir().join("iu-hlm.toml");
    let cfg = PipelineConfig::load(
        &path,
        &[
            "upload.importance.threshold.lambda=0.5".into(),
            "speculation.gamma=3".into(),
        ],
    )
    .expect("valid overrides");
    assert_eq!(cfg.speculation.gamma, 3);
    assert!(cfg.to_toml().expect("serialises").contains("lambda = 0.5"));
}

/// A wrongly typed value of a component's key is named with its table, in one block of text.
#[test]
fn a_mistyped_override_is_reported_without_blank_lines() {
    link();
    let path = configs_dir().join("hlm.toml");
    let e = PipelineConfig::load(&path, &["codec.bits=true".into()])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("invalid type: boolean `true`, expected u32") && e.contains("in `codec`"),
        "{e}"
    );
    assert!(!e.contains("\n\n"), "{e:?}");
}

#[test]
fn every_profile_can_be_included_and_validates() {
    link();
    let dir = configs_dir().join("profiles");
    let mut n = 0;
    for kind in ["devices", "links"] {
        for e in std::fs::read_dir(dir.join(kind)).expect("profile dir") {
            let p = e.expect("entry").path();
            let rel = format!(
                "profiles/{kind}/{}",
                p.file_name().expect("name").to_string_lossy()
            );
            let text = format!("include = [{rel:?}]\n{MINIMAL}");
            let cfg = PipelineConfig::parse_in(&text, &rel, Some(&configs_dir()), &[])
                .unwrap_or_else(|e| panic!("{rel}: {e}"));
            let toml = cfg.to_toml().expect("serialises");
            let section = if kind == "links" { "[link]" } else { "[energy" };
            assert!(
                toml.contains(section),
                "{rel} did not reach the config:\n{toml}"
            );
            n += 1;
        }
    }
    assert!(n >= 8, "only {n} profiles");
}

/// The paper's method on the tiny fixture pair, every section present: the base of the
/// fuzzed configs.
fn fixture_config() -> String {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../backends/tests/fixtures");
    format!(
        r#"name = "fuzzed"
device = "cpu"
[generation]
max_new_tokens = 4
temperature = 1.0
seed = 3
[draft]
type = "transformer"
model = {draft:?}
[verifier]
type = "local"
[verifier.model]
type = "transformer"
model = {target:?}
[upload]
type = "token_filter"
combine = "and"
[upload.uncertainty.estimator]
type = "temperature_perturbation"
samples = 8
theta_max = 2.0
[upload.uncertainty.threshold]
type = "risk_bound"
a = 0.815
b = -0.066
max_risk = 0.118
[upload.importance.scorer]
type = "attention"
layers = "last"
heads = "mean"
exclude_sink = true
[upload.importance.threshold]
type = "mean_std"
lambda = 1.0
[codec]
type = "dense"
bits = 8
[link]
type = "fixed_rate"
uplink_bps = 2e6
downlink_bps = 1e7
latency_s = 0.001
[energy]
type = "analytic"
"#,
        draft = fixtures.join("tiny-llama").display().to_string(),
        target = fixtures.join("tiny-qwen2").display().to_string(),
    )
}

/// Every leaf of a TOML table, as its path of keys.
fn leaves(table: &toml::Table, prefix: &[String], out: &mut Vec<Vec<String>>) {
    for (k, v) in table {
        let mut path = prefix.to_vec();
        path.push(k.clone());
        match v {
            toml::Value::Table(t) => leaves(t, &path, out),
            _ => out.push(path),
        }
    }
}

/// Set (or with `None` remove) the value at `path`.
fn set_at(table: &mut toml::Table, path: &[String], value: Option<toml::Value>) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut t = table;
    for p in parents {
        match t.get_mut(p) {
            Some(toml::Value::Table(inner)) => t = inner,
            _ => return,
        }
    }
    match value {
        Some(v) => {
            t.insert(last.clone(), v);
        }
        None => {
            t.remove(last);
        }
    }
}

/// A value a config key might be given by mistake or malice.
fn toml_value() -> impl proptest::strategy::Strategy<Value = Option<toml::Value>> {
    use proptest::prelude::*;
    use toml::Value as V;
    proptest::option::of(prop_oneof![
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(1),
            Just(i64::MAX),
            Just(1 << 20),
            2i64..100
        ]
        .prop_map(V::Integer),
        prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(-1.0),
            Just(0.0),
            Just(1e300),
            Just(0.5)
        ]
        .prop_map(V::Float),
        prop_oneof![
            Just("".to_string()),
            Just("last".to_string()),
            Just("x".repeat(3))
        ]
        .prop_map(V::String),
        any::<bool>().prop_map(V::Boolean),
        Just(V::Array(vec![V::Integer(1)])),
        Just(V::Table(toml::Table::new())),
    ])
}

proptest::proptest! {
    /// The fixture pipeline with some keys given other values or removed, sometimes an
    /// include of itself (a cycle) or of a second file: `hlm config check`'s parse either
    /// refuses it by name or accepts it, and what it accepts builds (or is refused) and runs
    /// four tokens without a panic. Cases: `PROPTEST_CASES` (256 by default; `cargo xtask
    /// fuzz --minutes N` runs more); failures are kept in proptest-regressions/configs.txt.
    #[test]
    fn pipeline_configs_never_panic(
        changes in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), toml_value()), 1..4),
        include in 0u8..3,
    ) {
        link();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut table: toml::Table = fixture_config().parse().expect("base parses");
        let mut paths = Vec::new();
        leaves(&table, &[], &mut paths);
        for (at, value) in &changes {
            let path: &Vec<String> = at.get(&paths);
            set_at(&mut table, path, value.clone());
        }
        let main = dir.path().join("main.toml");
        match include {
            1 => {
                table.insert("include".into(), toml::Value::Array(vec!["main.toml".into()]));
            }
            2 => {
                std::fs::write(dir.path().join("inc.toml"), "[generation]\nseed = 7\n").expect("write");
                table.insert("include".into(), toml::Value::Array(vec!["inc.toml".into()]));
            }
            _ => {}
        }
        std::fs::write(&main, toml::to_string(&table).expect("serialise")).expect("write");
        let cfg = match PipelineConfig::load(&main, &["generation.max_new_tokens=4".to_string()]) {
            Ok(cfg) => cfg,
            Err(e) => {
                proptest::prop_assert!(e.to_string().contains("main.toml"), "{e}");
                return Ok(());
            }
        };
        let ctx = hlm_core::BuildContext { device: "cpu".into(), models_dir: None, link: None };
        if let Ok(mut p) = hlm_core::Pipeline::from_config(cfg, &ctx) {
            let _ = p.generate(&[1, 5, 17], &mut |_| {});
        }
    }
}

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

//! Verification on a real llama-server (llama.cpp built from source by
//! `scripts/build-llama-cpp.sh`), started here on loopback on the tiny random-weight LLaMA
//! fixture written as a GGUF (F32, with a 64-token byte-level BPE tokenizer).
//!
//! The binary is `$HLM_LLAMA_SERVER`, else the build script's default output. CI sets the
//! variable, so there a missing binary fails; elsewhere these tests say they were skipped.

mod support;

#[path = "../../backends/tests/support/gguf_writer.rs"]
mod gguf_writer;

use std::cell::RefCell;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gguf_writer::Value;
use hlm_core::sampling::softmax_with_temperature;
use hlm_core::{HlmError, TargetModel, TokenId, TokenKind};
use statrs::distribution::{ChiSquared, ContinuousCDF};
use support::*;

/// A llama-server child process, killed when dropped.
struct LlamaServer {
    child: Option<Child>,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
    /// The served file.
    gguf: PathBuf,
    /// The same weights without the tokenizer: a local verifier on it knows no end-of-text
    /// token, as the engine verifier does not (the fixture draft model has no tokenizer), so
    /// the two runs stop drafting at the same places.
    plain_gguf: PathBuf,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl LlamaServer {
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HLM_LLAMA_SERVER") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "HLM_LLAMA_SERVER={} is not a file: run scripts/build-llama-cpp.sh",
            p.display()
        );
        return Some(p);
    }
    let default = PathBuf::from("/var/tmp/hlm-llama-cpp/build/bin/llama-server");
    if default.is_file() {
        return Some(default);
    }
    eprintln!(
        "skipped: no llama-server (build it with scripts/build-llama-cpp.sh or set \
         HLM_LLAMA_SERVER)"
    );
    None
}

/// The tiny LLaMA fixture as a GGUF llama.cpp loads: F32 weights and a byte-level BPE
/// vocabulary of 64 (control tokens, letters, a few merges, padding).
fn write_fixture_gguf(path: &Path) {
    let mut tokens: Vec<String> = vec![
        "<|endoftext|>".into(),
        "<|im_start|>".into(),
        "<|im_end|>".into(),
    ];
    tokens.extend(('a'..='z').map(String::from));
    tokens.push("Ġ".into());
    let merges = ["h e", "l l", "he ll", "hell o", "Ġ w"];
    tokens.extend(merges.iter().map(|m| m.replace(' ', "")));
    let n_real = tokens.len();
    tokens.extend((n_real..64).map(|i| format!("[PAD{i}]")));
    let mut types = vec![1i32; 64];
    types[..3].fill(3);
    gguf_writer::write_tiny_llama_gguf_with(&fixture("tiny-llama"), path, |b| {
        b.kv("tokenizer.ggml.model", Value::Str("gpt2".into()))
            .kv("tokenizer.ggml.pre", Value::Str("qwen2".into()))
            .kv("tokenizer.ggml.tokens", Value::StrArray(tokens))
            .kv("tokenizer.ggml.token_type", Value::I32Array(types))
            .kv(
                "tokenizer.ggml.merges",
                Value::StrArray(merges.iter().map(|m| m.to_string()).collect()),
            )
            .kv("tokenizer.ggml.eos_token_id", Value::U32(2))
            .kv("tokenizer.ggml.add_bos_token", Value::Bool(false));
    });
}

fn start() -> Option<LlamaServer> {
    start_serving(None)
}

/// llama-server on `model` (default: the tiny fixture, written here).
fn start_serving(model: Option<PathBuf>) -> Option<LlamaServer> {
    let bin = binary()?;
    let dir = tempfile::tempdir().expect("scratch dir");
    let gguf = match model {
        Some(m) => m,
        None => {
            let gguf = dir.path().join("tiny-llama.gguf");
            write_fixture_gguf(&gguf);
            gguf
        }
    };
    let plain_gguf = dir.path().join("tiny-llama-plain.gguf");
    gguf_writer::write_tiny_llama_gguf(&fixture("tiny-llama"), &plain_gguf);
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let log = dir.path().join("llama-server.log");
    let child = Command::new(&bin)
        .args(["-m"])
        .arg(&gguf)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        // f32 throughout, as the local verifier's exact path: an f32 KV cache (llama.cpp keeps
        // f16 by default) and no flash attention (its CPU kernel rounds through f16).
        .args(["-t", "1", "-c", "256", "-np", "1", "--no-webui"])
        .args(["-ctk", "f32", "-ctv", "f32", "-fa", "off"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("llama-server starts");
    let mut server = LlamaServer {
        child: Some(child),
        url: format!("http://127.0.0.1:{port}"),
        log,
        _dir: dir,
        gguf,
        plain_gguf,
    };
    let t0 = Instant::now();
    loop {
        if let Ok(r) = ureq::get(format!("{}/health", server.url)).call()
            && r.status() == 200
        {
            return Some(server);
        }
        if let Some(Ok(Some(status))) = server.child.as_mut().map(|c| c.try_wait()) {
            panic!(
                "llama-server exited ({status}): {}",
                std::fs::read_to_string(&server.log).unwrap_or_default()
            );
        }
        if t0.elapsed() > Duration::from_secs(60) {
            server.kill();
            panic!(
                "llama-server did not become healthy in 60 s: {}",
                std::fs::read_to_string(&server.log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// llama-server's own greedy continuation of the prompt.
fn own_greedy(server: &LlamaServer, n: usize) -> Vec<TokenId> {
    let own: serde_json::Value = ureq::post(format!("{}/completion", server.url))
        .send_json(serde_json::json!({
            "prompt": PROMPT, "n_predict": n, "temperature": 0.0, "ignore_eos": true,
            "return_tokens": true, "cache_prompt": false,
        }))
        .expect("completion")
        .body_mut()
        .read_json()
        .expect("json");
    let own: Vec<TokenId> = serde_json::from_value(own["tokens"].clone()).expect("tokens");
    assert_eq!(own.len(), n);
    own
}

/// `text` with the tiny Qwen2 fixture as the draft model: other weights than the target's,
/// so that drafts are rejected often (the statistical tests need rejections).
fn qwen2_draft(text: String) -> String {
    with_draft(text, &fixture("tiny-qwen2"))
}

/// `text` (a [`config`]) with `model` as the draft model.
fn with_draft(text: String, model: &Path) -> String {
    let llama = format!("{:?}", fixture("tiny-llama").display().to_string());
    assert!(text.contains(&llama));
    text.replacen(&llama, &format!("{:?}", model.display().to_string()), 1)
}

/// A fetched catalogue model's GGUF; `None` (skipped, with a note) when it is not fetched,
/// unless `HLM_REQUIRE_MODELS=1` (CI), where it must be.
fn fetched(name: &str) -> Option<PathBuf> {
    let path = hlm_backends::transformer::default_models_dir(None)
        .unwrap_or_default()
        .join(name)
        .join("model.gguf");
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var("HLM_REQUIRE_MODELS").as_deref() != Ok("1"),
        "{} is missing (cargo xtask models fetch {name})",
        path.display()
    );
    eprintln!("skipped: {name} is not fetched");
    None
}

fn engine_verifier(url: &str, extra: &str) -> String {
    format!("type = \"llama_server\"\nurl = \"{url}\"\n{extra}\n")
}

/// The local verifier on the same file, in f32 (`exact`) as llama-server computes F32 weights.
fn gguf_local_verifier(gguf: &Path) -> String {
    format!(
        "type = \"local\"\n[verifier.model]\ntype = \"transformer\"\nprecision = \"exact\"\nmodel = {:?}\n",
        gguf.display().to_string()
    )
}

const METHODS: &[(&str, &str, &str)] = &[
    // standard HLM: every token, dense 8-bit
    ("type = \"always\"", "type = \"dense\"\nbits = 8", ""),
    // half the tokens skipped at random, top-8 uploads
    (
        "type = \"random\"\nskip_rate = 0.5",
        "type = \"top_k\"\nk = 8\nbits = 16",
        "",
    ),
    // classic speculative decoding: gamma = 3 token-only drafts and a bonus token
    (
        "type = \"always\"",
        "type = \"token_only\"",
        "[speculation]\ngamma = 3\nbonus_token = true",
    ),
    // split verification: x_d up, the residual down after a rejection
    ("type = \"always\"", "type = \"split\"", ""),
];

/// The same weights verified in this process and by llama-server give the same run: every
/// token, its kind, the verdict counts and the residual traffic, for several methods, seeds
/// and temperatures (the temperature is applied on the device's side to llama-server's raw
/// distribution).
#[test]
fn a_run_verified_by_llama_server_equals_the_local_run() {
    let Some(server) = start() else { return };
    let mut residuals = 0;
    for (i, &(upload, codec, extra)) in METHODS.iter().enumerate() {
        for (seed, temperature) in [(3u64, 1.0), (11, 0.7), (5, 0.0)] {
            let set = vec![
                format!("generation.seed={seed}"),
                format!("generation.temperature={temperature}"),
            ];
            let local = run(
                &qwen2_draft(config(
                    &gguf_local_verifier(&server.plain_gguf),
                    upload,
                    codec,
                    extra,
                )),
                &set,
            );
            let engine = run(
                &qwen2_draft(config(
                    &engine_verifier(&server.url, ""),
                    upload,
                    codec,
                    extra,
                )),
                &set,
            );
            let what = format!("method {i}, seed {seed}, T = {temperature}");
            assert_eq!(local.generated_ids, engine.generated_ids, "{what}");
            assert_eq!(local.kinds, engine.kinds, "{what}");
            let (l, e) = (&local.stats, &engine.stats);
            assert_eq!(
                (
                    l.draft_n,
                    l.draft_n_accepted,
                    l.uplink_bits,
                    l.downlink_bits
                ),
                (
                    e.draft_n,
                    e.draft_n_accepted,
                    e.uplink_bits,
                    e.downlink_bits
                ),
                "{what}"
            );
            assert_eq!(l.residual_downloads, e.residual_downloads, "{what}");
            assert_eq!(e.verifier_faults, 0, "{what}");
            assert!(e.verify_calls > 0, "{what}");
            residuals += e.residual_downloads;
        }
    }
    assert!(residuals > 0, "split verification must download residuals");
}

/// At temperature 0 a lossless method gives the target's own greedy continuation: the one
/// llama-server generates by itself for the same prompt.
#[test]
fn greedy_hybrid_output_is_llama_servers_own_greedy_output() {
    let Some(server) = start() else { return };
    let own = own_greedy(&server, 16);
    for &(upload, codec, extra) in METHODS {
        let r = run(
            &qwen2_draft(config(
                &engine_verifier(&server.url, ""),
                upload,
                codec,
                extra,
            )),
            &["generation.temperature=0.0".into()],
        );
        let verified = r
            .kinds
            .iter()
            .all(|k| !matches!(k, TokenKind::Unverified | TokenKind::Skipped));
        if verified {
            assert_eq!(r.generated_ids, own, "{upload} / {codec}");
        } else {
            // A skipping method keeps unverified tokens; up to the first, the target's own.
            let first = r
                .kinds
                .iter()
                .position(|k| matches!(k, TokenKind::Unverified | TokenKind::Skipped))
                .unwrap();
            assert_eq!(r.generated_ids[..first], own[..first], "{upload} / {codec}");
        }
    }
}

/// The p-value of the `n`-th (1 or 2) generated token of `runs` seeds of `text` against the
/// tiny model's own law after the prompt (the second token's marginal law: Σ_a y(a) y(· | a);
/// computed in this process, exact arithmetic), and the runs' summed counts.
fn law_p_value(server: &LlamaServer, text: &str, n: usize, runs: u64) -> (f64, hlm_core::RunStats) {
    let mut t = hlm_backends::Transformer::load_with(
        &server.gguf,
        &hlm_backends::parse_device("cpu").expect("cpu"),
        hlm_backends::Precision::Exact,
    )
    .expect("fixture gguf loads");
    let mut next = |prefix: &[TokenId]| {
        hlm_core::LanguageModel::truncate(&mut t, 0).unwrap();
        let logits = t.forward_all(prefix).expect("forward");
        softmax_with_temperature(logits.last().unwrap(), 1.0)
    };
    let first = next(PROMPT);
    let vocab = first.len();
    // law[t]: the probability that the n-th token is t.
    let law: Vec<f64> = match n {
        1 => first.iter().map(|&p| p as f64).collect(),
        2 => {
            let mut law = vec![0.0f64; vocab];
            for (a, &pa) in first.iter().enumerate() {
                let mut prefix = PROMPT.to_vec();
                prefix.push(a as TokenId);
                for (l, p) in law.iter_mut().zip(next(&prefix)) {
                    *l += pa as f64 * p as f64;
                }
            }
            law
        }
        _ => unreachable!("1 or 2 tokens"),
    };
    let mut p = pipeline(text, &[format!("generation.max_new_tokens={n}")]);
    let mut counts = vec![0u64; law.len()];
    let mut stats = hlm_core::RunStats::default();
    for seed in 0..runs {
        p.generation.seed = seed;
        let r = p.generate(PROMPT, &mut |_| {}).expect("run");
        counts[r.generated_ids[n - 1] as usize] += 1;
        stats.resamples += r.stats.resamples;
        stats.bonus_tokens += r.stats.bonus_tokens;
        stats.residual_exact += r.stats.residual_exact;
        stats.residual_approx += r.stats.residual_approx;
        stats.residual_max_missing_mass = stats
            .residual_max_missing_mass
            .max(r.stats.residual_max_missing_mass);
    }
    let (mut stat, mut cells, mut pooled_o, mut pooled_e) = (0.0, 0usize, 0.0, 0.0);
    for (o, p) in counts.iter().zip(&law) {
        let (o, e) = (*o as f64, p * runs as f64);
        if e < 5.0 {
            pooled_o += o;
            pooled_e += e;
        } else {
            stat += (o - e).powi(2) / e;
            cells += 1;
        }
    }
    if pooled_e > 0.0 {
        stat += (pooled_o - pooled_e).powi(2) / pooled_e;
        cells += 1;
    }
    let p_value = 1.0 - ChiSquared::new((cells - 1) as f64).unwrap().cdf(stat);
    (p_value, stats)
}

/// The first generated token of standard HLM at T = 1 follows the target's distribution.
#[test]
fn sampled_first_tokens_follow_the_target_distribution() {
    let Some(server) = start() else { return };
    let text = qwen2_draft(config(
        &engine_verifier(&server.url, ""),
        "type = \"always\"",
        "type = \"dense\"\nbits = 32",
        "",
    ));
    let (p, st) = law_p_value(&server, &text, 1, 1500);
    assert!(p > 1e-3, "p = {p}");
    assert!(
        st.resamples > 100,
        "the case must exercise rejections: {st:?}"
    );
}

/// `distribution = "sampled"` (the drafted token's probability, engine draws for the
/// residual) is lossless too: dense uploads and token-only speculative drafts; and with no
/// engine draws at all, the fallback residual from the top 64 (here the whole vocabulary,
/// so nothing is missing) is exact as well.
#[test]
fn sampled_distribution_mode_is_lossless() {
    let Some(server) = start() else { return };
    for (codec, extra, verifier_extra) in [
        ("type = \"dense\"\nbits = 32", "", ""),
        (
            "type = \"token_only\"",
            "[speculation]\ngamma = 3\nbonus_token = true",
            "",
        ),
        ("type = \"dense\"\nbits = 32", "", "residual_tries = 0"),
    ] {
        let v = engine_verifier(
            &server.url,
            &format!("distribution = \"sampled\"\n{verifier_extra}"),
        );
        let text = qwen2_draft(config(&v, "type = \"always\"", codec, extra));
        let (p, st) = law_p_value(&server, &text, 1, 1500);
        let what = format!("{codec} {extra} {verifier_extra}");
        assert!(p > 1e-3, "{what}: p = {p}");
        assert!(st.resamples > 100, "{what}: {st:?}");
        if verifier_extra.is_empty() {
            assert_eq!(st.residual_approx, 0, "{what}: {st:?}");
            assert_eq!(st.residual_exact, st.resamples, "{what}");
        } else {
            assert_eq!(st.residual_approx, st.resamples, "{what}: {st:?}");
            assert!(st.residual_max_missing_mass < 1e-3, "{what}: {st:?}");
        }
    }
}

/// Bonus tokens drawn by llama-server (`distribution = "sampled"`) follow the target's law:
/// with the served weights as the draft model nearly every draft is accepted, so the second
/// token is nearly always the engine's bonus draw after the first, and its marginal law must
/// be Σ_a y(a) y(· | a).
#[test]
fn engine_drawn_bonus_tokens_follow_the_target_distribution() {
    let Some(server) = start() else { return };
    let v = engine_verifier(&server.url, "distribution = \"sampled\"");
    // `config`'s draft model is the tiny LLaMA fixture: the weights llama-server serves.
    // Dense uploads: the verifier tests against the draft's whole x, which here is y (a
    // token-only upload would be tested as a point mass and mostly rejected).
    let text = config(
        &v,
        "type = \"always\"",
        "type = \"dense\"\nbits = 32",
        "[speculation]\ngamma = 1\nbonus_token = true",
    );
    let runs = 1500;
    let (p, st) = law_p_value(&server, &text, 2, runs);
    assert!(p > 1e-3, "p = {p}");
    assert!(
        st.bonus_tokens > runs * 9 / 10,
        "bonus tokens must be drawn: {st:?}"
    );
}

/// A fallback that knows only the top 8 of 64 records what it did not know, and the run
/// goes on; temperatures other than 0 and 1 and split verification are refused by name; at
/// T = 0 the output is llama-server's own greedy output.
#[test]
fn sampled_distribution_mode_records_and_refuses() {
    let Some(server) = start() else { return };
    let v = engine_verifier(
        &server.url,
        "distribution = \"sampled\"\nresidual_tries = 0\nfallback_top_k = 8",
    );
    let text = qwen2_draft(config(
        &v,
        "type = \"always\"",
        "type = \"dense\"\nbits = 32",
        "",
    ));
    let r = run(&text, &[]);
    assert!(r.stats.residual_approx > 0, "{:?}", r.stats);
    assert!(r.stats.residual_max_missing_mass > 0.01, "{:?}", r.stats);
    assert!(r.stats.residual_tv_bound >= 2.0 * r.stats.residual_max_missing_mass);

    let v = engine_verifier(&server.url, "distribution = \"sampled\"");
    let warm = config(&v, "type = \"always\"", "type = \"dense\"", "");
    let e = pipeline(&warm, &["generation.temperature=0.7".into()])
        .generate(PROMPT, &mut |_| {})
        .expect_err("T = 0.7")
        .to_string();
    assert!(e.contains("temperature 0 or 1, not 0.7"), "{e}");
    let split = config(&v, "type = \"always\"", "type = \"split\"", "");
    let e = pipeline(&split, &[])
        .generate(PROMPT, &mut |_| {})
        .expect_err("split")
        .to_string();
    assert!(e.contains("split verification"), "{e}");

    let own = own_greedy(&server, 16);
    for (codec, extra) in [
        ("type = \"dense\"", ""),
        (
            "type = \"token_only\"",
            "[speculation]\ngamma = 3\nbonus_token = true",
        ),
    ] {
        let r = run(
            &qwen2_draft(config(&v, "type = \"always\"", codec, extra)),
            &["generation.temperature=0.0".into()],
        );
        assert_eq!(r.generated_ids, own, "{codec}");
        assert!(r.stats.resamples > 0, "{codec}: {:?}", r.stats);
    }
}

/// llama-server's report of a token forced by `logit_bias` is its raw probability, as in the
/// whole distribution (what the sampled mode's acceptance test relies on).
#[test]
fn a_forced_tokens_reported_probability_is_its_raw_probability() {
    use hlm_net::engines::{PointQuery, llama_server};
    let Some(server) = start() else { return };
    let post = |body: serde_json::Value| -> serde_json::Value {
        ureq::post(format!("{}/completion", server.url))
            .send_json(body)
            .expect("completion")
            .body_mut()
            .read_json()
            .expect("json")
    };
    let full = post(llama_server::completion_request(PROMPT, 64));
    let full: Vec<(u32, f64)> = full["completion_probabilities"][0]["top_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_u64().unwrap() as u32,
                e["logprob"].as_f64().unwrap(),
            )
        })
        .collect();
    for &(id, lp) in full.iter().rev().take(5) {
        let forced = post(llama_server::point_request(
            PROMPT,
            PointQuery::Token(id),
            1,
        ));
        let got = &forced["completion_probabilities"][0];
        assert_eq!(got["id"].as_u64(), Some(u64::from(id)));
        let got = got["logprob"].as_f64().unwrap();
        assert!(
            (got - lp).abs() < 1e-4,
            "token {id}: {got} forced, {lp} in the row"
        );
    }
}

/// The target's log-likelihood of a continuation, asked of llama-server one forced token at a
/// time, equals the local verifier's on the same weights (what `hlm bench` scores outputs
/// with), and a token outside the vocabulary is refused before anything is asked.
#[test]
fn llama_server_scores_continuations_as_the_local_verifier_does() {
    let Some(server) = start() else { return };
    let verifier = |text: String| {
        pipeline(
            &qwen2_draft(config(
                &text,
                "type = \"always\"",
                "type = \"dense\"\nbits = 8",
                "",
            )),
            &[],
        )
        .into_models()
        .1
        .expect("a verifier")
    };
    let mut local = verifier(gguf_local_verifier(&server.plain_gguf));
    let mut engine = verifier(engine_verifier(&server.url, ""));
    let continuation: Vec<TokenId> = vec![7, 40, 3, 3, 63, 12];
    let want = local
        .log_likelihood(PROMPT, &continuation)
        .expect("local scores")
        .expect("local has scores");
    let got = engine
        .log_likelihood(PROMPT, &continuation)
        .expect("llama-server scores")
        .expect("llama-server has scores");
    assert_eq!(got.len(), continuation.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() < 1e-3,
            "token {i}: llama-server {g}, local {w}"
        );
    }
    let err = engine
        .log_likelihood(PROMPT, &[64])
        .expect_err("64 is outside the vocabulary");
    assert!(err.to_string().contains("64"), "{err}");
}

/// llama-server killed mid-run: the rest of the run is kept unverified, nothing is lost, and
/// the tokens verified before the kill are the target's.
#[test]
fn a_killed_llama_server_takes_the_fault_path() {
    let Some(server) = start() else { return };
    let own = own_greedy(&server, 20);
    let text = qwen2_draft(config(
        &engine_verifier(
            &server.url,
            "connect_timeout_s = 0.5\nretries = 0\nreconnect_interval_s = 0.0",
        ),
        "type = \"always\"",
        "type = \"dense\"",
        "",
    ));
    let mut p = pipeline(
        &text,
        &[
            "generation.temperature=0.0".into(),
            "generation.max_new_tokens=20".into(),
        ],
    );
    let slot = RefCell::new(Some(server));
    let report = p
        .generate(PROMPT, &mut |e| {
            if e.index == 6
                && let Some(mut s) = slot.borrow_mut().take()
            {
                s.kill();
            }
        })
        .expect("the run goes on without its verifier");
    assert_eq!(report.generated_ids.len(), 20);
    assert!(report.stats.verifier_faults >= 1);
    let first_unverified = report
        .kinds
        .iter()
        .position(|k| *k == TokenKind::Unverified)
        .expect("tokens after the kill are unverified");
    assert!(first_unverified >= 6, "{:?}", report.kinds);
    assert_eq!(
        report.generated_ids[..first_unverified],
        own[..first_unverified],
        "verified tokens are the target's greedy choices"
    );
    assert!(
        report.kinds[first_unverified..]
            .iter()
            .all(|k| *k == TokenKind::Unverified),
        "{:?}",
        report.kinds
    );
}

/// A model other than the one named, or a server that is not there at the first session:
/// clear errors naming what was found.
#[test]
fn a_wrong_model_is_refused_by_name() {
    let Some(server) = start() else { return };
    let text = config(
        &engine_verifier(&server.url, "model = \"llama-2-7b\""),
        "type = \"always\"",
        "type = \"dense\"",
        "",
    );
    let err = pipeline(&text, &[])
        .generate(PROMPT, &mut |_| {})
        .expect_err("wrong model");
    let msg = err.to_string();
    assert!(matches!(err, HlmError::Incompatible(_)), "{msg}");
    assert!(
        msg.contains("tiny-llama.gguf") && msg.contains("llama-2-7b"),
        "{msg}"
    );
}

/// Real tokenizers: SmolLM2-135M served by llama-server and drafted by hlm from the same
/// file passes the first session's checks (the vocabulary, and hlm's tokenizer and
/// llama.cpp's splitting the probe string alike) and a greedy run is verified throughout;
/// Qwen2.5-Coder-0.5B as the draft is refused, naming both vocabularies.
#[test]
fn real_tokenizers_and_vocabularies_are_checked_at_the_first_session() {
    let (Some(smollm2), Some(qwen)) = (
        fetched("smollm2-135m-instruct"),
        fetched("qwen2.5-coder-0.5b-instruct"),
    ) else {
        return;
    };
    let Some(server) = start_serving(Some(smollm2.clone())) else {
        return;
    };
    let v = engine_verifier(&server.url, "distribution = \"sampled\"");
    let text = config(&v, "type = \"always\"", "type = \"token_only\"", "");
    let prompt = [1u32, 9690, 198, 2683, 359, 253, 5356, 5646, 11173];
    let overrides = ["generation.temperature=0.0".to_string()];
    let mut p = pipeline(&with_draft(text.clone(), &smollm2), &overrides);
    let r = p.generate(&prompt, &mut |_| {}).expect("a verified run");
    assert_eq!(r.stats.verifier_faults, 0);
    assert!(
        r.kinds.iter().all(|k| !matches!(k, TokenKind::Unverified)),
        "{:?}",
        r.kinds
    );
    let err = pipeline(&with_draft(text, &qwen), &overrides)
        .generate(&prompt, &mut |_| {})
        .expect_err("another vocabulary");
    let msg = err.to_string();
    assert!(matches!(err, HlmError::Incompatible(_)), "{msg}");
    assert!(msg.contains("49152") && msg.contains("151936"), "{msg}");
}

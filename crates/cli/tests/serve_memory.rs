//! `hlm serve` on a real model (Qwen2.5-Coder-0.5B, fetched by CI) under the longest prompt
//! its limits admit: the server's peak memory stays within the worst case it prints at start,
//! and grows with the prompt linearly (no row of logits per prompt token, no attention
//! matrix over the whole prompt). Skipped with a note when the model is not fetched, unless
//! `HLM_REQUIRE_MODELS=1` (CI).

#[path = "support/serve.rs"]
mod serve;

use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hlm_net::protocol::{Begin, Request, Response};
use hlm_net::wire::{read_frame, write_frame};

const MODEL: &str = "qwen2.5-coder-0.5b-instruct";

fn model_path() -> Option<PathBuf> {
    let path = hlm_core::registry::models_dir()
        .join(MODEL)
        .join("model.gguf");
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var("HLM_REQUIRE_MODELS").as_deref() != Ok("1"),
        "{} is missing (cargo xtask models fetch {MODEL})",
        path.display()
    );
    eprintln!("skipping: {MODEL} is not fetched (cargo xtask models fetch {MODEL})");
    None
}

#[test]
fn a_prompt_at_the_request_limit_fits_the_stated_memory() {
    let Some(model) = model_path() else {
        return;
    };
    const PROMPT: usize = 2048;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("server.toml");
    std::fs::write(
        &cfg,
        format!(
            "[model]\ntype = \"transformer\"\nmodel = {:?}\nprefill_chunk = 512\n\
             [limits]\nmax_sessions = 2\nmax_connections = 4\nmax_request_tokens = {PROMPT}\n\
             max_held_tokens = {PROMPT}\nmax_batch = 2\nmax_drafts = 8\n\
             max_message_bytes = 1048576\n",
            model.display().to_string()
        ),
    )
    .expect("write");
    let (server, addr, stated) = serve::start(&cfg);
    let idle = serve::status_bytes(server.0.id(), "VmHWM:");

    let mut c = TcpStream::connect(&addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
    let prompt = (0..PROMPT as u32).map(|i| (i * 7919) % 150_000).collect();
    let started = Instant::now();
    write_frame(
        &mut c,
        &Request::Begin(Begin {
            vocab_size: 0,
            tokenizer_fingerprint: None,
            prompt,
            temperature: 0.0,
            seed: 1,
            residual: Default::default(),
        }),
    )
    .expect("send");
    let (r, _) = read_frame::<_, Response>(&mut c, 1 << 20).expect("an answer");
    assert!(matches!(r, Response::Begun { .. }), "{r:?}");
    let prefill_s = started.elapsed().as_secs_f64();
    let peak = serve::status_bytes(server.0.id(), "VmHWM:");
    let file = std::fs::metadata(&model).expect("model file").len();
    eprintln!(
        "{MODEL}: a {PROMPT}-token prompt in {prefill_s:.1} s; peak RSS {} MB after loading, \
         {} MB after the prompt; file {} MB; stated worst case {} MB",
        idle / 1_000_000,
        peak / 1_000_000,
        file / 1_000_000,
        stated / 1_000_000
    );
    assert!(peak <= stated, "peak {peak} over the stated {stated}");
    // Linear in the prompt: its KV state (24 layers × 2 × 128 floats a position) and one
    // pass's activations, on top of what loading took. One row of logits per prompt token
    // would be 2048 × 151,936 × 4 bytes = 1.2 GB.
    let kv = (PROMPT * 24 * 2 * 128 * 4) as u64;
    let allowance = kv * 5 / 4 + 200_000_000;
    assert!(
        peak <= idle + allowance,
        "the prompt took {} MB over the loaded server's {} MB; linear memory allows {} MB",
        (peak - idle) / 1_000_000,
        idle / 1_000_000,
        allowance / 1_000_000
    );
}

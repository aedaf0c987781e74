//! Shared helpers of the split tests: the tiny random-weight fixture transformers of
//! crates/backends/tests/fixtures (LLaMA drafts, Qwen2 verifies; one vocabulary of 64).

#![allow(dead_code)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hlm_backends::{Transformer, parse_device};
use hlm_core::{BuildContext, ConfiguredRule, Pipeline, PipelineConfig, RunReport, TargetModel};
use hlm_net::protocol::{Begin, ErrorCode, Request, Response};
use hlm_net::wire::{read_frame, write_frame};
use hlm_net::{Server, ServerHandle, ServerLimits};

pub fn link() {
    hlm_filters::link();
    hlm_energy::link();
    hlm_backends::link();
    hlm_net::link();
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../backends/tests/fixtures")
        .join(name)
}

/// The fixture target model on the CPU.
pub fn target() -> Transformer {
    let device = parse_device("cpu").expect("cpu device");
    Transformer::load(&fixture("tiny-qwen2"), &device).expect("tiny-qwen2 loads")
}

/// A server of the fixture target on a free loopback port.
pub fn start_server(limits: ServerLimits) -> ServerHandle {
    start_server_with(Box::new(target()), limits, "127.0.0.1:0")
}

pub fn start_server_with(
    model: Box<dyn TargetModel>,
    limits: ServerLimits,
    addr: &str,
) -> ServerHandle {
    let server = Server::new(model, ConfiguredRule::default(), limits).expect("server");
    let listener = TcpListener::bind(addr).expect("bind");
    server.spawn(listener).expect("spawn")
}

/// A loopback address nothing listens on.
pub fn dead_address() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr");
    drop(l);
    a.to_string()
}

/// A pipeline config: `verifier` is the whole `[verifier]` table body.
pub fn config(verifier: &str, upload: &str, codec: &str, extra: &str) -> String {
    format!(
        r#"name = "split-test"
device = "cpu"
[generation]
max_new_tokens = 16
temperature = 1.0
seed = 3
{extra}
[draft]
type = "transformer"
model = {draft:?}
[verifier]
{verifier}
[upload]
{upload}
[codec]
{codec}
[link]
type = "fixed_rate"
uplink_bps = 2e6
downlink_bps = 1e7
latency_s = 0.001
[energy]
type = "analytic"
"#,
        draft = fixture("tiny-llama").display().to_string(),
    )
}

pub fn local_verifier() -> String {
    format!(
        "type = \"local\"\n[verifier.model]\ntype = \"transformer\"\nmodel = {:?}\n",
        fixture("tiny-qwen2").display().to_string()
    )
}

pub fn remote_verifier(addr: &str, extra: &str) -> String {
    format!("type = \"remote\"\naddress = \"{addr}\"\n{extra}\n")
}

pub fn pipeline(text: &str, overrides: &[String]) -> Pipeline {
    link();
    let cfg = PipelineConfig::parse(text, "test config", overrides).expect("config parses");
    let ctx = BuildContext {
        device: "cpu".into(),
        models_dir: None,
        link: None,
    };
    Pipeline::from_config(cfg, &ctx).expect("pipeline builds")
}

pub const PROMPT: &[u32] = &[1, 5, 17, 33, 2];

pub fn run(text: &str, overrides: &[String]) -> RunReport {
    pipeline(text, overrides)
        .generate(PROMPT, &mut |_| {})
        .expect("run")
}

/// A raw protocol client, for tests that speak to the server frame by frame.
pub struct Client(pub TcpStream);

impl Client {
    pub fn connect(s: &ServerHandle) -> Self {
        let t = TcpStream::connect(s.addr()).expect("connect");
        t.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Client(t)
    }

    pub fn ask(&mut self, r: &Request) -> Response {
        write_frame(&mut self.0, r).expect("write");
        read_frame::<_, Response>(&mut self.0, 1 << 24)
            .expect("answer")
            .0
    }

    pub fn begin(&mut self, vocab: u32, prompt: Vec<u32>) -> Response {
        self.ask(&Request::Begin(Begin {
            vocab_size: vocab,
            tokenizer_fingerprint: None,
            prompt,
            temperature: 1.0,
            seed: 0,
            residual: Default::default(),
        }))
    }

    /// After an error that closes the connection, the server has hung up.
    pub fn assert_closed(&mut self) {
        let mut b = [0u8; 1];
        match self.0.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("connection still open: {other:?}"),
        }
    }
}

pub fn code(r: &Response) -> (ErrorCode, String) {
    match r {
        Response::Error { code, message } => (*code, message.clone()),
        other => panic!("expected an error, got {other:?}"),
    }
}

pub fn session(r: &Response) -> u64 {
    match r {
        Response::Begun { session } => *session,
        other => panic!("expected Begun, got {other:?}"),
    }
}

pub fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

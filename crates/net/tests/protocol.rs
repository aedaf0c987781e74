//! The server against misbehaving clients, over raw TCP: every bad input gets a clear error,
//! and the server keeps serving everybody else.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hlm_core::{ProbQuantization, UploadPayload};
use hlm_net::protocol::{Begin, ErrorCode, Request, Response, Verify, WireDraft};
use hlm_net::wire::{PackedPayload, read_frame, write_frame};
use hlm_net::{ServerHandle, ServerLimits};
use support::*;

struct Client(TcpStream);

impl Client {
    fn connect(s: &ServerHandle) -> Self {
        let t = TcpStream::connect(s.addr()).expect("connect");
        t.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Client(t)
    }

    fn ask(&mut self, r: &Request) -> Response {
        write_frame(&mut self.0, r).expect("write");
        read_frame::<_, Response>(&mut self.0, 1 << 24)
            .expect("answer")
            .0
    }

    fn begin(&mut self, vocab: u32, prompt: Vec<u32>) -> Response {
        self.ask(&Request::Begin(Begin {
            vocab_size: vocab,
            tokenizer_fingerprint: None,
            prompt,
            temperature: 1.0,
            seed: 0,
        }))
    }

    /// After an error that closes the connection, the server has hung up.
    fn assert_closed(&mut self) {
        let mut b = [0u8; 1];
        match self.0.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("connection still open: {other:?}"),
        }
    }
}

fn code(r: &Response) -> (ErrorCode, String) {
    match r {
        Response::Error { code, message } => (*code, message.clone()),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn session(r: &Response) -> u64 {
    match r {
        Response::Begun { session } => *session,
        other => panic!("expected Begun, got {other:?}"),
    }
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn requests_get_answers_or_clear_errors() {
    let limits = ServerLimits {
        max_sessions: 2,
        max_context: 40,
        ..Default::default()
    };
    let server = start_server(limits);
    let mut c = Client::connect(&server);
    let Response::Info(info) = c.ask(&Request::Hello) else {
        panic!("no info");
    };
    assert_eq!(
        (info.vocab_size, info.max_context, info.max_sessions),
        (64, 40, 2)
    );

    // Sessions this connection does not own.
    let r = c.ask(&Request::End { session: 77 });
    let (k, m) = code(&r);
    assert_eq!(k, ErrorCode::UnknownSession);
    assert!(m.contains("77"), "{m}");
    // Incompatible device, empty and out-of-vocabulary prompts.
    let (k, m) = code(&c.begin(100, vec![1, 2]));
    assert_eq!(k, ErrorCode::Incompatible);
    assert!(m.contains("100") && m.contains("64"), "{m}");
    assert_eq!(code(&c.begin(64, vec![])).0, ErrorCode::BadRequest);
    let (k, m) = code(&c.begin(64, vec![1, 64]));
    assert_eq!(k, ErrorCode::BadRequest);
    assert!(m.contains("64"), "{m}");
    let (k, _) = code(&c.begin(64, vec![1; 41]));
    assert_eq!(k, ErrorCode::ContextTooLong);

    // A good session; a malformed payload; a context beyond the limit; then a good verify.
    let s = session(&c.begin(64, vec![1, 5, 17]));
    let bad = PackedPayload {
        kind: 0,
        bits: 8,
        data: vec![0; 10],
    };
    let r = c.ask(&Request::Verify(Verify {
        session: s,
        context: vec![],
        drafts: vec![WireDraft {
            token: 3,
            payload: Some(bad),
        }],
        bonus: false,
    }));
    let (k, m) = code(&r);
    assert_eq!(k, ErrorCode::BadRequest);
    assert!(m.contains("draft 0") && m.contains("needs 64"), "{m}");
    let (k, _) = code(&c.ask(&Request::Sync {
        session: s,
        tokens: vec![2; 38],
    }));
    assert_eq!(k, ErrorCode::ContextTooLong);
    let mut probs = vec![0.0f32; 64];
    probs[3] = 1.0;
    let dense = PackedPayload::pack(
        &UploadPayload::Dense {
            quantization: ProbQuantization::Linear8,
            probs,
        },
        64,
    );
    assert_eq!(
        dense.data.len(),
        64,
        "dense 8-bit payload: one byte per probability"
    );
    let r = c.ask(&Request::Verify(Verify {
        session: s,
        context: vec![],
        drafts: vec![WireDraft {
            token: 3,
            payload: Some(dense),
        }],
        bonus: true,
    }));
    let Response::Verdicts { verdicts, .. } = r else {
        panic!("no verdicts: {r:?}");
    };
    assert!(!verdicts.is_empty());
    // A token outside the vocabulary inside a request.
    let (k, m) = code(&c.ask(&Request::Sync {
        session: s,
        tokens: vec![500],
    }));
    assert_eq!(k, ErrorCode::BadRequest);
    assert!(m.contains("500"), "{m}");

    // The session limit.
    let _s2 = session(&c.begin(64, vec![1]));
    let (k, m) = code(&c.begin(64, vec![1]));
    assert_eq!(k, ErrorCode::Busy);
    assert!(m.contains("2 sessions"), "{m}");
    // End frees a slot and returns the statistics; ending twice is an error.
    let Response::Ended { stats } = c.ask(&Request::End { session: s }) else {
        panic!("not ended");
    };
    assert_eq!((stats.verify_requests, stats.drafts_judged), (1, 1));
    assert!(stats.bytes_in > 64);
    assert_eq!(
        code(&c.ask(&Request::End { session: s })).0,
        ErrorCode::UnknownSession
    );
    session(&c.begin(64, vec![1]));
    // The connection is still fine after all of that.
    assert!(matches!(c.ask(&Request::Hello), Response::Info(_)));
}

#[test]
fn broken_streams_are_refused_and_closed() {
    let server = start_server(ServerLimits {
        max_message_bytes: 1024,
        ..Default::default()
    });
    // Not the protocol at all.
    let mut c = Client::connect(&server);
    c.0.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (r, _) = read_frame::<_, Response>(&mut c.0, 1 << 20).unwrap();
    let (k, m) = code(&r);
    assert_eq!(k, ErrorCode::BadFrame);
    assert!(m.contains("not an hlm protocol frame"), "{m}");
    c.assert_closed();
    // Another protocol version.
    let mut c = Client::connect(&server);
    c.0.write_all(b"HLM\x09\x00\x00\x00\x00").unwrap();
    let (r, _) = read_frame::<_, Response>(&mut c.0, 1 << 20).unwrap();
    let (k, m) = code(&r);
    assert_eq!(k, ErrorCode::Version);
    assert!(m.contains("version 9"), "{m}");
    c.assert_closed();
    // Oversized: refused from the header, before the body is read.
    let mut c = Client::connect(&server);
    c.0.write_all(b"HLM\x01\x00\x00\x10\x00").unwrap();
    let (r, _) = read_frame::<_, Response>(&mut c.0, 1 << 20).unwrap();
    let (k, m) = code(&r);
    assert_eq!(k, ErrorCode::TooLarge);
    assert!(m.contains("1048576") && m.contains("1024"), "{m}");
    c.assert_closed();
    // A body that is not a request.
    let mut c = Client::connect(&server);
    c.0.write_all(b"HLM\x01\x03\x00\x00\x00\xff\xff\xff")
        .unwrap();
    let (r, _) = read_frame::<_, Response>(&mut c.0, 1 << 20).unwrap();
    assert_eq!(code(&r).0, ErrorCode::BadFrame);
    c.assert_closed();
    // A frame cut short by a client that vanishes.
    let mut c = Client::connect(&server);
    c.0.write_all(b"HLM\x01\x40\x00\x00\x00\x01\x02").unwrap();
    drop(c);
    // Through all of it the server kept serving.
    let mut c = Client::connect(&server);
    assert!(matches!(c.ask(&Request::Hello), Response::Info(_)));
    assert!(server.counters().errors.load(Ordering::Relaxed) >= 4);
}

#[test]
fn sessions_are_freed_when_clients_vanish_or_idle() {
    let server = start_server(ServerLimits {
        idle_timeout_s: 0.3,
        ..Default::default()
    });
    let c = server.counters();
    // A client that begins a session and disappears.
    let mut a = Client::connect(&server);
    session(&a.begin(64, vec![1, 2, 3]));
    drop(a);
    wait_for("the vanished client's session to end", || {
        c.sessions_ended.load(Ordering::Relaxed) == 1
    });
    // A client that stays connected but says nothing for longer than the idle timeout.
    let mut b = Client::connect(&server);
    session(&b.begin(64, vec![4]));
    wait_for("the idle session to end", || {
        c.sessions_ended.load(Ordering::Relaxed) == 2
    });
    assert_eq!(c.sessions_begun.load(Ordering::Relaxed), 2);
}

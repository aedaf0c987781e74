//! The server against misbehaving clients, over raw TCP: every bad input gets a clear error,
//! and the server keeps serving everybody else.

mod support;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hlm_core::{LanguageModel, ProbQuantization, TargetModel, UploadPayload};
use hlm_net::ServerLimits;
use hlm_net::protocol::{ErrorCode, Request, Response, Verify, WireDraft};
use hlm_net::wire::{PackedPayload, read_frame, write_frame};
use support::*;

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
    // A client of protocol version 1 (before split verification) is told why.
    let mut c = Client::connect(&server);
    c.0.write_all(b"HLM\x01\x00\x00\x00\x00").unwrap();
    let (r, _) = read_frame::<_, Response>(&mut c.0, 1 << 20).unwrap();
    let (k, m) = code(&r);
    assert_eq!(k, ErrorCode::Version);
    assert!(
        m.contains("version 1 is not supported") && m.contains("speaks version 2"),
        "{m}"
    );
    c.assert_closed();
    // Oversized: refused from the header, before the body is read.
    let mut c = Client::connect(&server);
    c.0.write_all(b"HLM\x02\x00\x00\x10\x00").unwrap();
    let (r, _) = read_frame::<_, Response>(&mut c.0, 1 << 20).unwrap();
    let (k, m) = code(&r);
    assert_eq!(k, ErrorCode::TooLarge);
    assert!(m.contains("1048576") && m.contains("1024"), "{m}");
    c.assert_closed();
    // A body that is not a request.
    let mut c = Client::connect(&server);
    c.0.write_all(b"HLM\x02\x03\x00\x00\x00\xff\xff\xff")
        .unwrap();
    let (r, _) = read_frame::<_, Response>(&mut c.0, 1 << 20).unwrap();
    assert_eq!(code(&r).0, ErrorCode::BadFrame);
    c.assert_closed();
    // A frame cut short by a client that vanishes.
    let mut c = Client::connect(&server);
    c.0.write_all(b"HLM\x02\x40\x00\x00\x00\x01\x02").unwrap();
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

/// A request that asks for work the limits do not allow is refused by name, before any model
/// work: a long prompt, a long sync, too many drafts.
#[test]
fn requests_beyond_the_limits_are_refused_by_name() {
    let server = start_server(ServerLimits {
        max_request_tokens: 16,
        max_drafts: 3,
        ..Default::default()
    });
    let mut c = Client::connect(&server);
    let (k, m) = code(&c.begin(64, vec![1; 17]));
    assert_eq!(k, ErrorCode::ContextTooLong);
    assert!(
        m.contains("17") && m.contains("limits.max_request_tokens"),
        "{m}"
    );
    let s = session(&c.begin(64, vec![1; 16]));
    let (k, m) = code(&c.ask(&Request::Sync {
        session: s,
        tokens: vec![2; 17],
    }));
    assert_eq!(k, ErrorCode::ContextTooLong);
    assert!(m.contains("limits.max_request_tokens"), "{m}");
    let drafts = (0..4)
        .map(|t| WireDraft {
            token: t,
            payload: None,
        })
        .collect();
    let (k, m) = code(&c.ask(&Request::Verify(Verify {
        session: s,
        context: vec![],
        drafts,
        bonus: false,
    })));
    assert_eq!(k, ErrorCode::BadRequest);
    assert!(
        m.contains("4 drafts") && m.contains("limits.max_drafts"),
        "{m}"
    );
    // The session was not touched by the refusals.
    let Response::Synced { context_len } = c.ask(&Request::Sync {
        session: s,
        tokens: vec![2; 16],
    }) else {
        panic!("no sync");
    };
    assert_eq!(context_len, 32);
}

/// The KV positions of all sessions together are bounded, whoever holds them.
#[test]
fn the_kv_budget_bounds_every_session_together() {
    let server = start_server(ServerLimits {
        max_held_tokens: 10,
        ..Default::default()
    });
    let held = || server.counters().held_tokens.load(Ordering::Relaxed);
    let mut a = Client::connect(&server);
    let mut b = Client::connect(&server);
    let s = session(&a.begin(64, vec![1; 6]));
    assert_eq!(held(), 6);
    let (k, m) = code(&b.begin(64, vec![1; 5]));
    assert_eq!(k, ErrorCode::Busy);
    assert!(
        m.contains("limits.max_held_tokens") && m.contains("6 of its 10"),
        "{m}"
    );
    // Growing a session counts too.
    let (k, _) = code(&a.ask(&Request::Sync {
        session: s,
        tokens: vec![2; 5],
    }));
    assert_eq!(k, ErrorCode::Busy);
    assert!(matches!(
        a.ask(&Request::Sync {
            session: s,
            tokens: vec![2; 4],
        }),
        Response::Synced { context_len: 10 }
    ));
    assert!(matches!(
        a.ask(&Request::End { session: s }),
        Response::Ended { .. }
    ));
    assert_eq!(held(), 0);
    session(&b.begin(64, vec![1; 10]));
}

/// Connections beyond `max_connections` are told why and closed; a freed slot is usable.
#[test]
fn connections_beyond_the_limit_are_refused_and_closed() {
    let server = start_server(ServerLimits {
        max_connections: 2,
        ..Default::default()
    });
    let counters = server.counters();
    let mut a = Client::connect(&server);
    let mut b = Client::connect(&server);
    for c in [&mut a, &mut b] {
        assert!(matches!(c.ask(&Request::Hello), Response::Info(_)));
    }
    let mut c = Client::connect(&server);
    let (r, _) = read_frame::<_, Response>(&mut c.0, 1 << 20).expect("a refusal");
    let (k, m) = code(&r);
    assert_eq!(k, ErrorCode::Busy);
    assert!(m.contains("2 connections"), "{m}");
    c.assert_closed();
    assert_eq!(counters.connections_refused.load(Ordering::Relaxed), 1);
    drop(a);
    wait_for("the closed connection to be released", || {
        counters.connections_open.load(Ordering::Relaxed) == 1
    });
    let mut d = Client::connect(&server);
    assert!(matches!(d.ask(&Request::Hello), Response::Info(_)));
}

/// One connection holds at most its quota of sessions; others still get theirs.
#[test]
fn one_connection_cannot_take_every_session() {
    let server = start_server(ServerLimits {
        max_sessions: 4,
        max_sessions_per_connection: 2,
        ..Default::default()
    });
    let mut hoarder = Client::connect(&server);
    let first = session(&hoarder.begin(64, vec![1]));
    session(&hoarder.begin(64, vec![1]));
    let (k, m) = code(&hoarder.begin(64, vec![1]));
    assert_eq!(k, ErrorCode::Busy);
    assert!(
        m.contains("quota of 2") && m.contains("max_sessions_per_connection"),
        "{m}"
    );
    let mut other = Client::connect(&server);
    session(&other.begin(64, vec![1]));
    // Ending one frees a place in the quota.
    assert!(matches!(
        hoarder.ask(&Request::End { session: first }),
        Response::Ended { .. }
    ));
    session(&hoarder.begin(64, vec![1]));
}

/// Empty syncs cost the server nothing and so buy nothing: a session (and a connection) kept
/// "alive" by them alone ends at the idle timeout.
#[test]
fn requests_without_work_do_not_keep_sessions_alive() {
    let server = start_server(ServerLimits {
        idle_timeout_s: 0.5,
        ..Default::default()
    });
    let counters = server.counters();
    let mut c = Client::connect(&server);
    let s = session(&c.begin(64, vec![1, 2]));
    let started = Instant::now();
    let mut ended_by_server = false;
    while started.elapsed() < Duration::from_secs(3) {
        let empty = Request::Sync {
            session: s,
            tokens: vec![],
        };
        if write_frame(&mut c.0, &empty).is_err() {
            ended_by_server = true;
            break;
        }
        match read_frame::<_, Response>(&mut c.0, 1 << 20) {
            Ok((Response::Synced { .. }, _)) => {}
            // The session idled out, or the server closed the idle connection.
            Ok((Response::Error { .. }, _)) | Err(_) => {
                ended_by_server = true;
                break;
            }
            Ok((other, _)) => panic!("unexpected answer {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        ended_by_server,
        "empty syncs kept the session alive for 3 s"
    );
    wait_for("the session to end", || {
        counters.sessions_ended.load(Ordering::Relaxed) == 1
    });
}

/// A frame trickled a byte at a time is cut off at the whole-frame deadline, not kept alive
/// by each byte.
#[test]
fn a_trickled_frame_is_cut_off_at_the_frame_deadline() {
    let server = start_server(ServerLimits {
        frame_timeout_s: 0.5,
        idle_timeout_s: 30.0,
        ..Default::default()
    });
    let mut c = Client::connect(&server);
    c.0.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    let started = Instant::now();
    // A header announcing 64 bytes, then one byte every 100 ms.
    c.0.write_all(b"HLM\x02\x40\x00\x00\x00").unwrap();
    let mut closed = false;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(100));
        if c.0.write_all(&[0]).is_err() {
            closed = true;
            break;
        }
        if server.counters().connections_open.load(Ordering::Relaxed) == 0 {
            closed = true;
            break;
        }
    }
    assert!(closed, "a trickled frame held its connection for 4 s");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// A client that sends requests and never reads the answers loses its connection at the
/// write timeout instead of pinning a thread.
#[test]
fn a_client_that_never_reads_is_dropped() {
    let server = start_server(ServerLimits {
        write_timeout_s: 0.3,
        ..Default::default()
    });
    let counters = server.counters();
    let mut c = Client::connect(&server);
    c.0.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    wait_for("the connection to open", || {
        counters.connections_open.load(Ordering::Relaxed) == 1
    });
    // Hellos until the buffers of both sides are full and writing blocks.
    let hello = {
        let mut v = Vec::new();
        write_frame(&mut v, &Request::Hello).unwrap();
        v
    };
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) && c.0.write_all(&hello).is_ok() {}
    wait_for("the server to drop the connection", || {
        counters.connections_open.load(Ordering::Relaxed) == 0
    });
    let mut d = Client::connect(&server);
    assert!(matches!(d.ask(&Request::Hello), Response::Info(_)));
}

/// A model that panics on one request: the server answers that request `Internal`, ends its
/// session, and goes on serving everybody else.
#[test]
fn a_panic_in_the_model_is_answered_and_the_server_goes_on() {
    let server = start_server_with(
        Box::new(PanicsOn(target(), 63)),
        ServerLimits::default(),
        "127.0.0.1:0",
    );
    let mut victim = Client::connect(&server);
    let mut bystander = Client::connect(&server);
    let s = session(&victim.begin(64, vec![1, 2]));
    let t = session(&bystander.begin(64, vec![1, 2]));
    let (k, m) = code(&victim.ask(&Request::Sync {
        session: s,
        tokens: vec![63],
    }));
    assert_eq!(k, ErrorCode::Internal);
    assert!(m.contains("session was ended"), "{m}");
    // The answer went out while the worker unwound; the count follows.
    wait_for("the panic to be counted", || {
        server.counters().worker_panics.load(Ordering::Relaxed) == 1
    });
    assert_eq!(
        code(&victim.ask(&Request::Sync {
            session: s,
            tokens: vec![3],
        }))
        .0,
        ErrorCode::UnknownSession
    );
    // Everybody else is served, the victim too with a new session.
    assert!(matches!(
        bystander.ask(&Request::Sync {
            session: t,
            tokens: vec![3],
        }),
        Response::Synced { context_len: 3 }
    ));
    session(&victim.begin(64, vec![1, 2]));
}

/// The fixture target with a defect: feeding `trigger` panics (as a backend bug would).
struct PanicsOn(hlm_backends::Transformer, u32);

impl LanguageModel for PanicsOn {
    fn vocab_size(&self) -> usize {
        self.0.vocab_size()
    }

    fn max_context(&self) -> usize {
        self.0.max_context()
    }

    fn context_len(&self) -> usize {
        self.0.context_len()
    }

    fn truncate(&mut self, len: usize) -> hlm_core::Result<()> {
        self.0.truncate(len)
    }

    fn tokenizer(&self) -> Option<std::sync::Arc<dyn hlm_core::TextTokenizer>> {
        None
    }

    fn describe(&self) -> String {
        "a defective fixture".into()
    }
}

impl TargetModel for PanicsOn {
    fn forward_all(&mut self, tokens: &[u32]) -> hlm_core::Result<Vec<Vec<f32>>> {
        assert!(!tokens.contains(&self.1), "a defect of the model");
        self.0.forward_all(tokens)
    }
    fn fork(&self) -> hlm_core::Result<Box<dyn hlm_core::TargetModel>> {
        Ok(Box::new(PanicsOn(target(), self.1)))
    }
}

/// If the model worker itself dies (here: a session's model panics while the idle sweep
/// drops it, outside any batch), the server stops accepting instead of leaving clients to
/// hang, and `wait` reports the failure (`hlm serve` then exits non-zero).
#[test]
fn a_dead_model_worker_stops_the_server_and_is_reported() {
    let server = start_server_with(
        Box::new(PanicsOnDrop {
            model: target(),
            armed: false,
        }),
        ServerLimits {
            idle_timeout_s: 0.2,
            ..Default::default()
        },
        "127.0.0.1:0",
    );
    let addr = server.addr();
    let mut c = Client::connect(&server);
    session(&c.begin(64, vec![1, 2]));
    // A second session on the same connection is kept busy, so that the connection never
    // idles out: its close would end the idle session inside a batch, where the worker
    // catches the panic and lives on (and `wait` would never return). So the idle session
    // ends in the sweep, outside any batch, whatever the load on the machine.
    let busy = session(&c.begin(64, vec![1, 2]));
    let keeper = std::thread::spawn(move || {
        for _ in 0..100 {
            let work = Request::Sync {
                session: busy,
                tokens: vec![3],
            };
            if write_frame(&mut c.0, &work).is_err() {
                break;
            }
            match read_frame::<_, Response>(&mut c.0, 1 << 20) {
                Ok((Response::Synced { .. }, _)) => {}
                _ => break,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    // The sweep ends the idle session; dropping its model kills the worker thread.
    let failed = server.wait();
    keeper.join().expect("the keeper thread");
    assert!(failed.is_err(), "the failure was not reported");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the server still accepts connections nobody can serve"
    );
}

/// The fixture target with a defect in its destructor, armed in its sessions (forks) only.
struct PanicsOnDrop {
    model: hlm_backends::Transformer,
    armed: bool,
}

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        // Only where the worker drops a session (Server::new also drops a trial fork).
        let in_worker = std::thread::current().name() == Some("hlm-model");
        if self.armed && in_worker && !std::thread::panicking() {
            panic!("a defect of the model's teardown");
        }
    }
}

impl LanguageModel for PanicsOnDrop {
    fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }

    fn max_context(&self) -> usize {
        self.model.max_context()
    }

    fn context_len(&self) -> usize {
        self.model.context_len()
    }

    fn truncate(&mut self, len: usize) -> hlm_core::Result<()> {
        self.model.truncate(len)
    }

    fn tokenizer(&self) -> Option<std::sync::Arc<dyn hlm_core::TextTokenizer>> {
        None
    }

    fn describe(&self) -> String {
        "a fixture that fails at teardown".into()
    }
}

impl TargetModel for PanicsOnDrop {
    fn forward_all(&mut self, tokens: &[u32]) -> hlm_core::Result<Vec<Vec<f32>>> {
        self.model.forward_all(tokens)
    }
    fn fork(&self) -> hlm_core::Result<Box<dyn hlm_core::TargetModel>> {
        Ok(Box::new(PanicsOnDrop {
            model: target(),
            armed: true,
        }))
    }
}

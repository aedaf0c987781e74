//! Structure-aware fuzzing of what the server and the client read from a peer: frames,
//! bit-packed payloads, and whole sequences of requests to a live server. Whatever arrives,
//! the decoders return a value or an error, and the server answers every request it can
//! read (or closes the connection after a frame it cannot), never panics, and goes on
//! serving.
//!
//! proptest drives the cases: `PROPTEST_CASES` of them (256 by default, what CI runs), and
//! `cargo xtask fuzz --minutes N` runs them for longer with fresh seeds. A failing case is
//! shrunk and kept in `proptest-regressions/fuzz.txt`, which is committed and replayed first.

mod support;

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hlm_net::protocol::{Begin, Request, Response, Verify, WireDraft};
use hlm_net::wire::{PackedPayload, read_frame, write_frame};
use hlm_net::{ServerHandle, ServerLimits};
use proptest::prelude::*;
use support::*;

/// Bytes of a frame: a well-formed header over an arbitrary body, or anything at all.
fn frame_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(|body| {
            let mut b = b"HLM\x02".to_vec();
            b.extend_from_slice(&(body.len() as u32).to_le_bytes());
            b.extend_from_slice(&body);
            b
        }),
        (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(len, body)| {
            let mut b = b"HLM\x02".to_vec();
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&body);
            b
        }),
        proptest::collection::vec(any::<u8>(), 0..80),
    ]
}

fn payload() -> impl Strategy<Value = PackedPayload> {
    (
        prop_oneof![Just(0u8), Just(1), Just(2), Just(3), any::<u8>()],
        prop_oneof![Just(0u8), Just(8), Just(16), Just(32), any::<u8>()],
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            // a draft probability's four bytes
            proptest::collection::vec(any::<u8>(), 4),
        ],
    )
        .prop_map(|(kind, bits, data)| PackedPayload { kind, bits, data })
}

/// A token id, mostly in the fixture's vocabulary of 64.
fn token() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 0u32..64, 1 => any::<u32>()]
}

fn request() -> impl Strategy<Value = Request> {
    let session = prop_oneof![Just(1u64), Just(2), any::<u64>()];
    prop_oneof![
        Just(Request::Hello),
        (
            prop_oneof![Just(64u32), Just(0), any::<u32>()],
            proptest::collection::vec(token(), 0..40),
            prop_oneof![
                Just(1.0f32),
                Just(0.0),
                Just(f32::NAN),
                Just(-1.0),
                Just(f32::INFINITY)
            ],
            any::<u64>(),
        )
            .prop_map(
                |(vocab_size, prompt, temperature, seed)| Request::Begin(Begin {
                    vocab_size,
                    tokenizer_fingerprint: None,
                    prompt,
                    temperature,
                    seed,
                    residual: Default::default(),
                })
            ),
        (
            session.clone(),
            proptest::collection::vec(token(), 0..10),
            proptest::collection::vec((token(), proptest::option::of(payload())), 0..6),
            any::<bool>(),
        )
            .prop_map(|(session, context, drafts, bonus)| Request::Verify(Verify {
                session,
                context,
                drafts: drafts
                    .into_iter()
                    .map(|(token, payload)| WireDraft { token, payload })
                    .collect(),
                bonus,
            })),
        (session.clone(), proptest::collection::vec(token(), 0..20))
            .prop_map(|(session, tokens)| Request::Sync { session, tokens }),
        session.prop_map(|session| Request::End { session }),
    ]
}

/// One server for every case (sessions and connections of earlier cases come and go).
fn server() -> &'static ServerHandle {
    static SERVER: OnceLock<ServerHandle> = OnceLock::new();
    SERVER.get_or_init(|| {
        start_server(ServerLimits {
            max_sessions: 8,
            max_context: 64,
            max_message_bytes: 4096,
            idle_timeout_s: 5.0,
            ..Default::default()
        })
    })
}

proptest! {
    #[test]
    fn frames_never_panic(bytes in frame_bytes()) {
        let _ = read_frame::<_, Request>(&mut bytes.as_slice(), 1 << 20);
        let _ = read_frame::<_, Response>(&mut bytes.as_slice(), 1 << 20);
    }

    #[test]
    fn payloads_unpack_or_are_refused(p in payload(), vocab in 1usize..300) {
        use hlm_core::UploadPayload;
        // What unpacks describes this vocabulary: a value per token, or k tokens in it.
        match p.unpack(vocab) {
            Ok(UploadPayload::Dense { probs, .. }) => prop_assert_eq!(probs.len(), vocab),
            Ok(UploadPayload::TopK { indices, probs, .. }) => {
                prop_assert!(indices.len() == probs.len() && indices.len() <= vocab);
                prop_assert!(indices.iter().all(|&i| (i as usize) < vocab));
            }
            Ok(UploadPayload::DraftProbability { .. }) => prop_assert_eq!(p.data.len(), 4),
            Ok(UploadPayload::TokenOnly) | Err(_) => {}
        }
    }

    /// A sequence of requests (and sometimes raw bytes) on one connection: every request
    /// read gets an answer frame, and the server is intact afterwards.
    #[test]
    fn a_live_server_answers_whatever_it_is_sent(
        requests in proptest::collection::vec(request(), 1..12),
        garbage in proptest::option::of(frame_bytes()),
    ) {
        let server = server();
        let mut c = Client::connect(server);
        c.0.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        for r in &requests {
            write_frame(&mut c.0, r).expect("send");
            let (answer, _) = read_frame::<_, Response>(&mut c.0, 1 << 24).expect("an answer");
            if let Response::Error { code, .. } = answer {
                prop_assert!(!code.closes_connection(), "{code:?} for a well-formed request");
            }
        }
        if let Some(g) = garbage {
            let _ = c.0.write_all(&g);
        }
        drop(c);
        let mut probe = Client::connect(server);
        prop_assert!(matches!(probe.ask(&Request::Hello), Response::Info(_)));
        let counters = server.counters();
        prop_assert_eq!(counters.worker_panics.load(Ordering::Relaxed), 0);
        prop_assert_eq!(counters.connection_panics.load(Ordering::Relaxed), 0);
    }
}

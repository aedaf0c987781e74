//! Load: 32 devices at once against one server on loopback. Every session must finish with
//! exactly the tokens its pipeline gives in one process. Run with `--nocapture` to see the
//! throughput and batching figures (reported in the issue note, not asserted: timing is for
//! benchmarks).

mod support;

use std::sync::atomic::Ordering;
use std::time::Instant;

use hlm_net::ServerLimits;
use support::*;

const SESSIONS: usize = 32;

fn method(addr: Option<&str>) -> String {
    let verifier = match addr {
        Some(a) => remote_verifier(a, "request_timeout_s = 120.0"),
        None => local_verifier(),
    };
    config(
        &verifier,
        "type = \"random\"\nskip_rate = 0.3",
        "type = \"top_k\"\nk = 16",
        "[speculation]\ngamma = 2",
    )
}

/// Run every session concurrently against a server with `max_batch`; returns the wall time.
fn load(max_batch: usize, expected: &[Vec<u32>]) -> (f64, u64, u64, u64) {
    let server = start_server(ServerLimits {
        max_batch,
        ..Default::default()
    });
    let addr = server.addr().to_string();
    let text = method(Some(&addr));
    // Build every pipeline first so the timed part is generation only.
    let pipelines: Vec<_> = (0..SESSIONS)
        .map(|i| pipeline(&text, &[format!("generation.seed={i}")]))
        .collect();
    let t0 = Instant::now();
    let outputs: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = pipelines
            .into_iter()
            .map(|mut p| {
                s.spawn(move || {
                    p.generate(PROMPT, &mut |_| {})
                        .expect("session completes")
                        .generated_ids
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let wall = t0.elapsed().as_secs_f64();
    for (i, (got, want)) in outputs.iter().zip(expected).enumerate() {
        assert_eq!(got, want, "session {i} differs from its in-process run");
    }
    let c = server.counters();
    assert_eq!(c.sessions_begun.load(Ordering::Relaxed), SESSIONS as u64);
    assert_eq!(c.errors.load(Ordering::Relaxed), 0);
    (
        wall,
        c.verify_requests.load(Ordering::Relaxed),
        c.batches.load(Ordering::Relaxed),
        c.max_batch_seen.load(Ordering::Relaxed),
    )
}

#[test]
fn thirty_two_concurrent_sessions_all_complete_correctly() {
    let local = method(None);
    let expected: Vec<Vec<u32>> = (0..SESSIONS)
        .map(|i| run(&local, &[format!("generation.seed={i}")]).generated_ids)
        .collect();
    for max_batch in [1, 32] {
        let (wall, requests, batches, max_seen) = load(max_batch, &expected);
        eprintln!(
            "load: {SESSIONS} sessions, max_batch {max_batch}: {requests} verify requests in \
             {wall:.3} s = {:.0} requests/s; {batches} worker batches, largest {max_seen}",
            requests as f64 / wall
        );
        assert!(max_seen <= max_batch as u64);
    }
}

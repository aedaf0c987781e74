//! Protocol overhead per verified token, model time excluded: the client packs the payload and
//! frames a `Verify`, the server side (a thread on loopback) reads and decodes it and unpacks
//! the payload as the real server does, then answers with framed verdicts; the client reads
//! them. Targets (issue 6): < 1 ms with a top-k payload, < 5 ms with a dense payload of
//! Qwen2.5's 151,936 probabilities.
//!
//! `cargo bench -p hlm-net --bench protocol_overhead`

use std::io::{BufReader, BufWriter, Write};
use std::net::{TcpListener, TcpStream};

use criterion::{Criterion, criterion_group, criterion_main};
use hlm_core::{ProbQuantization, UploadPayload, Verdict};
use hlm_net::protocol::{Request, Response, Verify, WireDraft};
use hlm_net::wire::{PackedPayload, read_frame, write_frame};

const VOCAB: usize = 151_936;

/// What the server does with a request, minus the model: decode, unpack, answer.
fn echo_server(listener: TcpListener) {
    let (stream, _) = listener.accept().expect("accept");
    stream.set_nodelay(true).expect("nodelay");
    let mut reader = BufReader::with_capacity(1 << 16, stream.try_clone().expect("clone"));
    let mut writer = BufWriter::new(stream);
    while let Ok((req, _)) = read_frame::<_, Request>(&mut reader, 64 << 20) {
        let Request::Verify(v) = req else { break };
        let mut verdicts = Vec::new();
        for d in &v.drafts {
            if let Some(p) = &d.payload {
                let payload = p.unpack(VOCAB).expect("valid payload");
                std::hint::black_box(&payload);
            }
            verdicts.push(Verdict::Accepted);
        }
        let answer = Response::Verdicts {
            verdicts,
            residual: None,
            server_tokens: v.drafts.len() as u64,
            compute_s: 0.0,
            target_probs: vec![Some(0.5); v.drafts.len()],
        };
        if write_frame(&mut writer, &answer).is_err() {
            break;
        }
    }
}

fn payloads() -> Vec<(&'static str, UploadPayload)> {
    // A peaked distribution, quantised as the codecs quantise it.
    let mut probs = vec![0.0f32; VOCAB];
    let mut mass = 1.0f32;
    for (i, p) in probs.iter_mut().enumerate().take(2000) {
        *p = mass * 0.3;
        mass -= *p;
        let _ = i;
    }
    let q8 = |p: &[f32]| {
        p.iter()
            .map(|&x| ProbQuantization::Linear8.roundtrip(x))
            .collect::<Vec<_>>()
    };
    vec![
        (
            "top-64, 8-bit",
            UploadPayload::TopK {
                quantization: ProbQuantization::Linear8,
                indices: (0..64).collect(),
                probs: q8(&probs[..64]),
            },
        ),
        (
            "dense 151936, 8-bit",
            UploadPayload::Dense {
                quantization: ProbQuantization::Linear8,
                probs: q8(&probs),
            },
        ),
        (
            "dense 151936, 32-bit",
            UploadPayload::Dense {
                quantization: ProbQuantization::Float32,
                probs: probs.clone(),
            },
        ),
    ]
}

fn protocol_overhead(c: &mut Criterion) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || echo_server(listener));
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut reader = BufReader::with_capacity(1 << 16, stream.try_clone().expect("clone"));
    let mut writer = BufWriter::with_capacity(1 << 16, stream);
    let mut group = c.benchmark_group("protocol_overhead_per_verified_token");
    for (name, payload) in payloads() {
        group.bench_function(name, |b| {
            b.iter(|| {
                let req = Request::Verify(Verify {
                    session: 1,
                    context: vec![17],
                    drafts: vec![WireDraft {
                        token: 0,
                        payload: Some(PackedPayload::pack(&payload, VOCAB)),
                    }],
                    bonus: false,
                });
                write_frame(&mut writer, &req).expect("write");
                writer.flush().expect("flush");
                let (answer, _) = read_frame::<_, Response>(&mut reader, 1 << 20).expect("answer");
                std::hint::black_box(answer)
            })
        });
    }
    group.finish();
    drop(writer);
    drop(reader);
    let _ = server.join();
}

criterion_group!(benches, protocol_overhead);
criterion_main!(benches);

//! Quantised CPU matrix products, one per ggml type the catalogued models use (Q4_0, Q4_1,
//! Q5_0, Q8_0, Q4_K, Q5_K, Q6_K), at the three shapes hlm runs: 1 activation row (a decode
//! step), 5 (a verification pass over γ + 1 positions) and 64 (a prefill). Each type is a
//! 4096 × 2048 matrix of seeded blocks (`gguf::synthetic`), multiplied with the `fast`
//! integer kernels (`QuantMatrix::matmul_t_int8`, the widest instruction set of this CPU or
//! `HLM_CPU_KERNELS`) and, for one row, with the `exact` `f32` path for comparison. Real
//! tensors of the fetched Qwen2.5-Coder files (the head and the largest MLP matrices) run too
//! when present. Throughput is weights per second (`rows × cols` per product, whatever the
//! number of activation rows): multiply by the rows for multiply-adds per second.
//!
//! `cargo bench --workspace --profile dev --bench quant_matmul`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hlm_backends::gguf::int8::Isa;
use hlm_backends::gguf::synthetic::random_rows;
use hlm_backends::gguf::{GgmlType, GgufFile, QuantMatrix, SharedBytes};

const TYPES: [GgmlType; 7] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// (model, tensor) pairs: the biggest matrices of a decode step.
const TENSORS: [(&str, &str); 4] = [
    ("qwen2.5-coder-0.5b-instruct", "blk.0.ffn_up.weight"), // Q5_0 4864 x 896
    ("qwen2.5-coder-0.5b-instruct", "output.weight"),       // Q8_0 151936 x 896
    ("qwen2.5-coder-1.5b-instruct", "blk.2.ffn_up.weight"), // Q4_K 8960 x 1536
    ("qwen2.5-coder-1.5b-instruct", "blk.0.ffn_down.weight"), // Q6_K 1536 x 8960
];

fn real(model: &str, tensor: &str) -> Option<QuantMatrix> {
    let path = hlm_backends::transformer::default_models_dir(None)?
        .join(model)
        .join("model.gguf");
    let file = GgufFile::open(&path).ok()?;
    let info = file.tensor_info(tensor).ok()?;
    let (ty, shape) = (info.ggml_type(), info.shape());
    let mut m = QuantMatrix::new(shape[1]);
    m.push(ty, file.tensor_shared(tensor).ok()?, shape[0])
        .ok()?;
    Some(m)
}

fn synthetic(ty: GgmlType) -> QuantMatrix {
    let (rows, cols) = (4096, 2048);
    let mut m = QuantMatrix::new(cols);
    m.push(ty, SharedBytes::from(random_rows(ty, rows, cols, 7)), rows)
        .expect("whole blocks");
    m
}

fn bench_matrix(c: &mut Criterion, name: &str, m: &QuantMatrix) {
    let mut group = c.benchmark_group(format!("quant_matmul/{name} {}x{}", m.rows(), m.cols()));
    group.sample_size(10);
    group.throughput(Throughput::Elements((m.rows() * m.cols()) as u64));
    let x: Vec<f32> = (0..64 * m.cols())
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0)
        .collect();
    for n in [1usize, 5, 64] {
        let x = &x[..n * m.cols()];
        group.bench_function(format!("fast rows={n}"), |b| {
            b.iter(|| black_box(m.matmul_t_int8(black_box(x), n)))
        });
    }
    let x = &x[..m.cols()];
    group.bench_function("exact rows=1", |b| {
        b.iter(|| black_box(m.matmul_t(black_box(x), 1)))
    });
    group.finish();
}

fn products(c: &mut Criterion) {
    eprintln!("integer kernels: {}", Isa::detect().name());
    for ty in TYPES {
        bench_matrix(c, &format!("{ty}"), &synthetic(ty));
    }
    // Larger than the last-level cache: streamed from memory as a decode step streams a model.
    if std::env::var_os("HLM_BENCH_LARGE").is_some() {
        for ty in [GgmlType::Q4_K, GgmlType::Q5_0] {
            let mut m = QuantMatrix::new(8192);
            m.push(
                ty,
                SharedBytes::from(random_rows(ty, 16384, 8192, 3)),
                16384,
            )
            .expect("whole blocks");
            bench_matrix(c, &format!("{ty} (memory-bound)"), &m);
        }
    }
    for (model, tensor) in TENSORS {
        match real(model, tensor) {
            Some(m) => bench_matrix(c, &format!("{model} {tensor}"), &m),
            None => eprintln!("skipping {model} {tensor}: not fetched"),
        }
    }
}

criterion_group!(benches, products);
criterion_main!(benches);

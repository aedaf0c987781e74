//! Quantised CPU matrix products (`QuantMatrix::matmul_t`) on real weights: tensors of the
//! fetched Qwen2.5-Coder GGUF files, one of each type the pair uses (Q5_0, Q8_0, Q4_K,
//! Q6_K), for one activation row (a decode step) and five (a verification pass over
//! γ + 1 = 5 positions). Throughput is reported as weights per second by criterion
//! (`Throughput::Elements`); a model whose file is missing is skipped.
//!
//! `cargo bench --workspace --profile dev --bench quant_matmul`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hlm_backends::gguf::{GgmlType, GgufFile, QuantMatrix};

/// (model, tensor) pairs: the biggest matrices of a decode step.
const TENSORS: [(&str, &str); 5] = [
    ("qwen2.5-coder-0.5b-instruct", "blk.0.ffn_up.weight"), // Q5_0 4864 x 896
    ("qwen2.5-coder-0.5b-instruct", "output.weight"),       // Q8_0 151936 x 896
    ("qwen2.5-coder-1.5b-instruct", "blk.2.ffn_up.weight"), // Q4_K 8960 x 1536
    ("qwen2.5-coder-1.5b-instruct", "blk.0.ffn_down.weight"), // Q6_K 1536 x 8960
    ("qwen2.5-coder-1.5b-instruct", "output.weight"),       // Q6_K 151936 x 1536
];

fn load(model: &str, tensor: &str) -> Option<(GgmlType, QuantMatrix)> {
    let path = hlm_backends::transformer::default_models_dir(None)?
        .join(model)
        .join("model.gguf");
    let file = GgufFile::open(&path).ok()?;
    let info = file.tensor_info(tensor).ok()?;
    let (ty, shape) = (info.ggml_type(), info.shape());
    let mut m = QuantMatrix::new(shape[1]);
    m.push(ty, file.tensor_shared(tensor).ok()?, shape[0])
        .ok()?;
    Some((ty, m))
}

fn products(c: &mut Criterion) {
    for (model, tensor) in TENSORS {
        let Some((ty, m)) = load(model, tensor) else {
            eprintln!("skipping {model} {tensor}: not fetched");
            continue;
        };
        let mut group = c.benchmark_group(format!(
            "quant_matmul/{ty} {}x{} ({model} {tensor})",
            m.rows(),
            m.cols()
        ));
        group.sample_size(10);
        for n in [1usize, 5] {
            let x: Vec<f32> = (0..n * m.cols())
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0)
                .collect();
            group.throughput(Throughput::Elements((m.rows() * m.cols() * n) as u64));
            group.bench_function(format!("rows={n}"), |b| {
                b.iter(|| black_box(m.matmul_t(black_box(&x), n)))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, products);
criterion_main!(benches);

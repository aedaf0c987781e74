//! Seeded ggml blocks with sane scales: test and benchmark data for the products of any
//! type, including types no catalogued model uses.

use super::types::GgmlType;

/// Seeded bytes for `rows` rows of `ty`, with every f16 scale field set to a small
/// finite value (random bits would give NaN/Inf scales).
///
/// Panics for a type it has no layout for (only the dequantisable block types and F16).
pub fn random_rows(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let n = ty.n_bytes((rows * cols) as u64).expect("block multiple") as usize;
    let mut state = seed;
    let mut bytes: Vec<u8> = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect();
    let block = ty.type_size();
    // Offsets of the f16 fields per block.
    let f16_fields: &[usize] = match ty {
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        GgmlType::F16 => &[],
        other => panic!("no test layout for {other}"),
    };
    for (i, b) in bytes.chunks_exact_mut(block).enumerate() {
        for &off in f16_fields {
            let v = half::f16::from_f32(0.01 + 0.001 * (i % 7) as f32);
            b[off..off + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    if ty == GgmlType::F16 {
        for (i, b) in bytes.chunks_exact_mut(2).enumerate() {
            let v = half::f16::from_f32(((i * 37 % 101) as f32 - 50.0) / 50.0);
            b.copy_from_slice(&v.to_le_bytes());
        }
    }
    bytes
}

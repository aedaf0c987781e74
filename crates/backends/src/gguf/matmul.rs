//! Matrix products straight from ggml blocks, on the CPU.
//!
//! A [`QuantMatrix`] is a stack of row ranges, each a run of ggml rows of one type (a fused
//! Q/K/V projection may mix Q5_0 and Q8_0), borrowed from the GGUF mapping. Its product
//! with activations dequantises one weight row at a time, bit-exactly as
//! [`super::dequantize`] would, and takes that row's dot products with the activation rows
//! before moving on (see the last paragraph for how). So the weights stay in memory in their file
//! form (a 1.5B model at Q4_K_M costs ~1 GB, not 7 GB of `f32`), and a decode step reads
//! 4–8 bits per weight instead of 32: decoding is bound by memory traffic.
//!
//! Rows are spread over rayon's pool in tasks of [`ROWS_PER_TASK`]. On x86-64 the same loops
//! are also compiled for AVX2+FMA and for AVX-512 and the widest the CPU has is chosen at
//! run time, so one binary is portable and still uses 8- or 16-wide fused multiply-adds
//! (AVX-512 decodes the Qwen pair 12-21 % faster than AVX2 on the development VM). With up
//! to eight activation rows (a decode step, a verification pass over γ + 1 positions) each
//! block is dequantised into registers and used for every row at once; with more (prefill),
//! each weight row is dequantised once into the scratch row and reused.

use rayon::prelude::*;

use super::dequant::{MAX_FUSED_ROWS, dequantize_row, dot_rows, validate};
use super::error::DequantError;
use super::reader::SharedBytes;
use super::types::GgmlType;
use crate::layout::transpose;

/// Weight rows per parallel task: large enough that the task overhead (~1 µs) is small
/// next to its work (32 rows of 896 weights ≈ 15 µs), small enough to balance two to
/// dozens of cores.
pub const ROWS_PER_TASK: usize = 32;

/// Consecutive rows of one ggml type.
#[derive(Clone, Debug)]
struct RowRange {
    ty: GgmlType,
    bytes: SharedBytes,
    rows: usize,
    row_bytes: usize,
}

/// A `[rows, cols]` matrix kept in ggml block form, rows stacked from one or more tensors.
#[derive(Clone, Debug)]
pub struct QuantMatrix {
    cols: usize,
    rows: usize,
    ranges: Vec<RowRange>,
}

impl QuantMatrix {
    /// An empty matrix of `cols` columns; add rows with [`QuantMatrix::push`].
    pub fn new(cols: usize) -> Self {
        QuantMatrix {
            cols,
            rows: 0,
            ranges: Vec::new(),
        }
    }

    /// Append `rows` rows of type `ty` held in `bytes` (row-major, as GGUF stores a
    /// `[rows, cols]` tensor). The type must be dequantisable and `cols` a multiple of its
    /// block size, and `bytes` must hold exactly `rows` rows.
    pub fn push(
        &mut self,
        ty: GgmlType,
        bytes: SharedBytes,
        rows: usize,
    ) -> Result<(), DequantError> {
        validate(ty, bytes.len(), rows as u64 * self.cols as u64)?;
        let row_bytes = bytes.len().checked_div(rows).unwrap_or(0);
        self.ranges.push(RowRange {
            ty,
            bytes,
            rows,
            row_bytes,
        });
        self.rows += rows;
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of weight data this matrix refers to.
    pub fn n_bytes(&self) -> usize {
        self.ranges.iter().map(|r| r.bytes.len()).sum()
    }

    /// Dequantise row `row` into `out` (length `cols`); `None` if `row` is out of range or
    /// `out` has the wrong length.
    pub fn row_into(&self, mut row: usize, out: &mut [f32]) -> Option<()> {
        if out.len() != self.cols {
            return None;
        }
        for r in &self.ranges {
            if row < r.rows {
                let start = row * r.row_bytes;
                dequantize_row(r.ty, &r.bytes[start..start + r.row_bytes], out);
                return Some(());
            }
            row -= r.rows;
        }
        None
    }

    /// `x @ selfᵀ`: `x` is `[n, cols]` row-major, the result `[n, rows]`. `None` if `x` is
    /// not `n` rows of `cols`.
    pub fn matmul_t(&self, x: &[f32], n: usize) -> Option<Vec<f32>> {
        if n == 0 || x.len() != n * self.cols {
            return None;
        }
        // Work in the transposed layout [rows, n] so every task owns a contiguous slice.
        let mut yt = vec![0.0f32; self.rows * n];
        let mut tasks: Vec<(&RowRange, usize, &mut [f32])> = Vec::new();
        let mut rest: &mut [f32] = &mut yt;
        for range in &self.ranges {
            for first in (0..range.rows).step_by(ROWS_PER_TASK) {
                let count = ROWS_PER_TASK.min(range.rows - first);
                let (out, tail) = rest.split_at_mut(count * n);
                tasks.push((range, first, out));
                rest = tail;
            }
        }
        let cols = self.cols;
        tasks.into_par_iter().for_each_init(
            || vec![0.0f32; cols],
            |scratch, (range, first, out)| {
                let count = out.len() / n;
                let start = first * range.row_bytes;
                let bytes = &range.bytes[start..start + count * range.row_bytes];
                let job = RowJob {
                    ty: range.ty,
                    bytes,
                    row_bytes: range.row_bytes,
                    x,
                };
                rows_times(job, scratch, out);
            },
        );
        if n == 1 {
            return Some(yt);
        }
        Some(transpose(&yt, self.rows, n))
    }
}

/// One task's inputs: whole rows of `ty` in `bytes` (`row_bytes` each) and the activations
/// `x` (`[n, cols]`).
#[derive(Clone, Copy)]
struct RowJob<'a> {
    ty: GgmlType,
    bytes: &'a [u8],
    row_bytes: usize,
    x: &'a [f32],
}

/// For each weight row in `bytes`: dequantise it into `scratch`, then write its dot product
/// with each row of `x` to `out` (`[rows, n]`).
fn rows_times(job: RowJob, scratch: &mut [f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("fma")
    {
        // SAFETY: the CPU has the features `rows_times_avx512` is compiled for.
        unsafe { rows_times_avx512(job, scratch, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features `rows_times_avx2` is compiled for.
        unsafe { rows_times_avx2(job, scratch, out) };
        return;
    }
    rows_times_generic::<false>(job, scratch, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
fn rows_times_avx512(job: RowJob, scratch: &mut [f32], out: &mut [f32]) {
    rows_times_generic::<true>(job, scratch, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn rows_times_avx2(job: RowJob, scratch: &mut [f32], out: &mut [f32]) {
    rows_times_generic::<true>(job, scratch, out)
}

#[inline(always)]
fn rows_times_generic<const FMA: bool>(job: RowJob, scratch: &mut [f32], out: &mut [f32]) {
    let RowJob {
        ty,
        bytes,
        row_bytes,
        x,
    } = job;
    let cols = scratch.len();
    let n = x.len() / cols;
    let rows = bytes.chunks_exact(row_bytes).zip(out.chunks_exact_mut(n));
    if n <= MAX_FUSED_ROWS && dot_rows::<FMA>(ty, &[], &[], &mut []) {
        // Decoding and verification (a few activation rows): each weight block is
        // dequantised into registers and used for every row at once.
        for (i, (row, y)) in rows.enumerate() {
            prefetch(bytes, i * row_bytes + PREFETCH_BYTES, row_bytes);
            dot_rows::<FMA>(ty, row, x, y);
        }
        return;
    }
    // Many activation rows (prefill) or an element type: dequantise each
    // weight row once and reuse it for every activation row.
    for (i, (row, y)) in rows.enumerate() {
        prefetch(bytes, i * row_bytes + PREFETCH_BYTES, row_bytes);
        dequantize_row(ty, row, scratch);
        for (y, x) in y.iter_mut().zip(x.chunks_exact(cols)) {
            *y = dot::<FMA>(scratch, x);
        }
    }
}

/// How far ahead of the row being multiplied its successors' bytes are requested. Decoding
/// streams every weight from DRAM once per token; the hardware prefetchers alone kept two
/// cores of the development VM at ~9 GB/s, explicit prefetches 4 KB ahead reach ~20 GB/s on
/// a Q8_0 matrix (`benches/quant_matmul.rs`: 1 KB, 4 KB, 16 KB ahead gave 18.4, 20.8,
/// 16.2 G weights/s).
const PREFETCH_BYTES: usize = 4096;

/// Ask the CPU to start loading `bytes[start..start + len]` into cache (a hint: no effect
/// on results, nothing outside `bytes` is touched).
#[inline(always)]
fn prefetch(bytes: &[u8], start: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let end = (start + len).min(bytes.len());
        let mut at = start;
        while at < end {
            // SAFETY: prefetching is a hint and never faults; the address is inside `bytes`.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    bytes.as_ptr().add(at).cast(),
                )
            };
            at += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (bytes, start, len);
}

/// Dot product with 16 independent accumulators, so the compiler can keep two 8-wide
/// vectors busy (a single running sum is a serial chain it may not reorder). With `FMA`
/// the multiply-adds are fused (only where the CPU has FMA: otherwise `mul_add` is a slow
/// library call).
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    const W: usize = 16;
    let mut acc = [0.0f32; W];
    let (ca, cb) = (a.chunks_exact(W), b.chunks_exact(W));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in ca.zip(cb) {
        for i in 0..W {
            acc[i] = if FMA {
                a[i].mul_add(b[i], acc[i])
            } else {
                acc[i] + a[i] * b[i]
            };
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::dequantize;

    /// Seeded bytes for `rows` rows of `ty`, with every f16 scale field set to a small
    /// finite value (random bits would give NaN/Inf scales).
    fn random_rows(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
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

    fn shared(bytes: Vec<u8>) -> SharedBytes {
        SharedBytes::from(bytes)
    }

    fn reference(ty: GgmlType, bytes: &[u8], rows: usize, cols: usize, x: &[f32]) -> Vec<f64> {
        let w = dequantize(ty, bytes, rows * cols).expect("dequantise");
        let n = x.len() / cols;
        let mut y = vec![0.0f64; n * rows];
        for t in 0..n {
            for r in 0..rows {
                y[t * rows + r] = (0..cols)
                    .map(|c| w[r * cols + c] as f64 * x[t * cols + c] as f64)
                    .sum();
            }
        }
        y
    }

    #[test]
    fn products_match_dequantised_reference_for_every_type() {
        let types = [
            GgmlType::F16,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ];
        let (cols, rows) = (512, 70); // 70 rows: two full tasks and a partial one
        for (k, ty) in types.into_iter().enumerate() {
            let bytes = random_rows(ty, rows, cols, 11 + k as u64);
            let mut m = QuantMatrix::new(cols);
            m.push(ty, shared(bytes.clone()), rows).expect("push");
            let mut first_row: Option<Vec<f32>> = None;
            // 1 and 3 rows: blocks dequantised in registers; 9: through the scratch row.
            for n in [1, 3, 9] {
                let x: Vec<f32> = (0..n * cols)
                    .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0)
                    .collect();
                let got = m.matmul_t(&x, n).expect("shapes");
                // Row 0 of x is the same for every n, and both ways sum in the same order.
                match &first_row {
                    None => first_row = Some(got[..rows].to_vec()),
                    Some(one) => assert_eq!(&got[..rows], one.as_slice(), "{ty} n={n}"),
                }
                let want = reference(ty, &bytes, rows, cols, &x);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    // f32 sums of 512 products against f64.
                    let tol = 1e-4 * (1.0 + w.abs());
                    assert!(
                        (*g as f64 - w).abs() <= tol,
                        "{ty} n={n} element {i}: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn stacked_ranges_of_different_types_and_rows() {
        let cols = 256;
        let a = random_rows(GgmlType::Q5_0, 40, cols, 1);
        let b = random_rows(GgmlType::Q6_K, 9, cols, 2);
        let mut m = QuantMatrix::new(cols);
        m.push(GgmlType::Q5_0, shared(a.clone()), 40)
            .expect("push a");
        m.push(GgmlType::Q6_K, shared(b.clone()), 9)
            .expect("push b");
        assert_eq!(
            (m.rows(), m.cols(), m.n_bytes()),
            (49, cols, a.len() + b.len())
        );
        let x: Vec<f32> = (0..2 * cols).map(|i| (i % 13) as f32 - 6.0).collect();
        let y = m.matmul_t(&x, 2).expect("shapes");
        let ya = reference(GgmlType::Q5_0, &a, 40, cols, &x);
        let yb = reference(GgmlType::Q6_K, &b, 9, cols, &x);
        for t in 0..2 {
            let want: Vec<f64> = ya[t * 40..t * 40 + 40]
                .iter()
                .chain(&yb[t * 9..t * 9 + 9])
                .copied()
                .collect();
            for (g, w) in y[t * 49..t * 49 + 49].iter().zip(&want) {
                assert!(
                    (*g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "{g} vs {w}"
                );
            }
        }
        // Row lookup = the dequantised row, bit for bit.
        let mut row = vec![0.0f32; cols];
        m.row_into(42, &mut row).expect("row 42");
        let whole = dequantize(GgmlType::Q6_K, &b, 9 * cols).expect("dequantise");
        assert_eq!(row, whole[2 * cols..3 * cols]);
        assert!(m.row_into(49, &mut row).is_none());
        assert!(m.matmul_t(&x[..cols + 1], 1).is_none());
    }

    /// The portable loops and each instruction-set variant this CPU can run give the same
    /// products (the dispatcher only ever runs the widest one).
    #[test]
    fn every_instruction_set_variant_agrees() {
        let (cols, rows) = (512, 8);
        for (k, ty) in [
            GgmlType::Q5_0,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
            GgmlType::F16,
        ]
        .into_iter()
        .enumerate()
        {
            let bytes = random_rows(ty, rows, cols, 40 + k as u64);
            let row_bytes = bytes.len() / rows;
            for n in [1, 2] {
                let x: Vec<f32> = (0..n * cols)
                    .map(|i| ((i % 17) as f32 - 8.0) / 8.0)
                    .collect();
                let want = reference(ty, &bytes, rows, cols, &x);
                let mut variants: Vec<(&str, Vec<f32>)> = Vec::new();
                let mut run = |name, f: &dyn Fn(&mut [f32], &mut [f32])| {
                    let (mut scratch, mut out) = (vec![0.0; cols], vec![0.0; rows * n]);
                    f(&mut scratch, &mut out);
                    variants.push((name, out));
                };
                let job = RowJob {
                    ty,
                    bytes: &bytes,
                    row_bytes,
                    x: &x,
                };
                run("generic", &|s, o| rows_times_generic::<false>(job, s, o));
                #[cfg(target_arch = "x86_64")]
                {
                    use std::arch::is_x86_feature_detected as has;
                    if has!("avx2") && has!("fma") {
                        // SAFETY: features checked.
                        run("avx2", &|s, o| unsafe { rows_times_avx2(job, s, o) });
                    }
                    if has!("avx512f") && has!("avx512bw") && has!("fma") {
                        // SAFETY: features checked.
                        run("avx512", &|s, o| unsafe { rows_times_avx512(job, s, o) });
                    }
                }
                for (name, out) in &variants {
                    // `out` is [rows, n]; `want` is [n, rows].
                    for r in 0..rows {
                        for t in 0..n {
                            let (g, w) = (out[r * n + t] as f64, want[t * rows + r]);
                            assert!(
                                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                                "{ty} {name} n={n} row {r}: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn wrong_sizes_are_refused() {
        let mut m = QuantMatrix::new(100); // not a multiple of 32
        let err = m
            .push(GgmlType::Q8_0, shared(vec![0; 34 * 4]), 1)
            .expect_err("100 columns are not whole Q8_0 blocks");
        assert!(err.to_string().contains("Q8_0"), "{err}");
        let mut m = QuantMatrix::new(64);
        assert!(m.push(GgmlType::Q8_0, shared(vec![0; 34 * 3]), 2).is_err());
        assert!(m.push(GgmlType::IQ2_XS, shared(vec![0; 66]), 1).is_err());
    }
}

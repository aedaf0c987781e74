//! Matrix products straight from ggml blocks, on the CPU, at two precisions.
//!
//! A [`QuantMatrix`] is a stack of row ranges, each a run of ggml rows of one type (a fused
//! Q/K/V projection may mix Q5_0 and Q8_0), borrowed from the GGUF mapping. So the weights
//! stay in memory in their file form (a 1.5B model at Q4_K_M costs ~1 GB, not 7 GB of `f32`),
//! and a decode step reads 4–8 bits per weight instead of 32.
//!
//! - `exact` ([`QuantMatrix::matmul_t`]): one weight row at a time is dequantised, bit-exactly
//!   as [`super::dequantize`] would, and dotted with the `f32` activation rows (up to eight
//!   rows straight from registers, more through a scratch row; both sum in the same order).
//!   Compiled for AVX-512, AVX2+FMA and baseline, chosen at run time.
//! - `fast` ([`QuantMatrix::matmul_t_int8`]): the rows repacked once in panels of 16 and
//!   multiplied in integers with 8-bit activations ([`super::int8`]).
//!
//! Rows are spread over rayon's pool in tasks of [`ROWS_PER_TASK`]; each task writes its
//! rows' columns of the result directly.

use std::sync::{Arc, OnceLock};

use rayon::prelude::*;

use super::dequant::{MAX_FUSED_ROWS, dequantize_row, dot_rows, validate};
use super::error::DequantError;
use super::int8::{
    self, ActivationBlocks, ActivationRow, Isa, PANEL, Panels, SMALL_BLOCK, SUPER_BLOCK,
    activation_block,
};
use super::reader::SharedBytes;
use super::types::GgmlType;

/// Weight rows per parallel task: large enough that the task overhead (~1 µs) is small
/// next to its work (32 rows of 896 weights ≈ 15 µs), small enough to balance two to
/// dozens of cores.
pub const ROWS_PER_TASK: usize = 32;

// A task of the integer path is whole panels (its first row starts a panel).
const _: () = assert!(ROWS_PER_TASK.is_multiple_of(PANEL));

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
    /// The ranges repacked for the integer kernels (`None` for a type without them), made by
    /// [`QuantMatrix::prepare_int8`] or the first integer product, shared by clones.
    panels: Arc<OnceLock<Vec<Option<Panels>>>>,
}

impl QuantMatrix {
    /// An empty matrix of `cols` columns; add rows with [`QuantMatrix::push`].
    pub fn new(cols: usize) -> Self {
        QuantMatrix {
            cols,
            rows: 0,
            ranges: Vec::new(),
            panels: Arc::new(OnceLock::new()),
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
    /// not `n` rows of `cols`. The `exact` precision: every weight is dequantised to `f32`
    /// (as [`super::dequantize`] gives it) and multiplied with the `f32` activations.
    pub fn matmul_t(&self, x: &[f32], n: usize) -> Option<Vec<f32>> {
        if n == 0 || x.len() != n * self.cols {
            return None;
        }
        Some(self.by_row_tasks(n, |task, scratch, out| {
            let range = &self.ranges[task.range];
            let out = &mut out[..task.rows * n];
            let job = RowJob {
                ty: range.ty,
                bytes: task.bytes(range),
                row_bytes: range.row_bytes,
                x,
            };
            rows_times(job, scratch.row(), out);
            TaskLayout::RowMajor
        }))
    }

    /// Repack the rows for the integer kernels ([`Panels`]) now, on every core, and drop the
    /// file pages they were read from out of resident memory (the file form stays mapped for
    /// [`QuantMatrix::row_into`] and the exact products; its pages come back when read). A
    /// model calls it at load for the `fast` precision; otherwise the first integer product
    /// does it. Takes about the matrix's bytes once more while it runs, then its bytes again
    /// in total.
    pub fn prepare_int8(&self) {
        self.panels();
    }

    fn panels(&self) -> &[Option<Panels>] {
        self.panels.get_or_init(|| {
            self.ranges
                .iter()
                .map(|r| {
                    let p = Panels::new(r.ty, &r.bytes, r.rows, self.cols);
                    if p.is_some() {
                        r.bytes.release_resident();
                    }
                    p
                })
                .collect()
        })
    }

    /// Bytes the integer products read: each range's repacked panels, or its file form where
    /// it has no integer kernel (all of the file form before [`QuantMatrix::prepare_int8`]).
    pub fn int8_bytes(&self) -> usize {
        let Some(panels) = self.panels.get() else {
            return self.n_bytes();
        };
        self.ranges
            .iter()
            .zip(panels)
            .map(|(r, p)| p.as_ref().map_or(r.bytes.len(), Panels::n_bytes))
            .sum()
    }

    /// `x @ selfᵀ` as [`QuantMatrix::matmul_t`], the `fast` precision: each row of `x` is
    /// quantised once to 8-bit blocks and multiplied in integers with the weights repacked in
    /// panels of 16 rows ([`super::int8`]). Rows of a type without an integer kernel (F32,
    /// F16, BF16) are multiplied exactly.
    pub fn matmul_t_int8(&self, x: &[f32], n: usize) -> Option<Vec<f32>> {
        if n == 0 || x.len() != n * self.cols {
            return None;
        }
        let isa = Isa::detect();
        let panels = self.panels();
        // One quantisation of the activations per block size the ranges need.
        let needs = |block| {
            self.ranges
                .iter()
                .any(|r| activation_block(r.ty) == Some(block))
        };
        let quantized =
            |block| needs(block).then(|| ActivationBlocks::quantize(x, self.cols, block));
        let (small, large) = (quantized(SMALL_BLOCK), quantized(SUPER_BLOCK));
        fn rows_of(a: &Option<ActivationBlocks>, n: usize) -> Vec<ActivationRow<'_>> {
            a.as_ref()
                .map_or_else(Vec::new, |a| (0..n).map(|t| a.row(t)).collect())
        }
        let (small_rows, large_rows) = (rows_of(&small, n), rows_of(&large, n));
        Some(self.by_row_tasks(n, |task, scratch, out| {
            let range = &self.ranges[task.range];
            let Some(p) = &panels[task.range] else {
                let job = RowJob {
                    ty: range.ty,
                    bytes: task.bytes(range),
                    row_bytes: range.row_bytes,
                    x,
                };
                rows_times(job, scratch.row(), &mut out[..task.rows * n]);
                return TaskLayout::RowMajor;
            };
            let acts = match activation_block(range.ty) {
                Some(SMALL_BLOCK) => &small_rows,
                _ => &large_rows,
            };
            // Panels of this task; `out` is [panel][n][16 lanes] (the lanes of a last,
            // padded panel past the range's end are dropped when written).
            let first = task.first / PANEL;
            let count = task.rows.div_ceil(PANEL);
            for (i, y) in out.chunks_exact_mut(PANEL * n).take(count).enumerate() {
                int8::panel_dot(isa, range.ty, p.panel(first + i), acts, y);
            }
            TaskLayout::Panels
        }))
    }

    /// Run `task(task, scratch row, out)` over the rows in tasks of [`ROWS_PER_TASK`] on
    /// rayon's pool; `out` has room for the task's rows of the result, laid out as the task
    /// says it wrote them ([`TaskLayout`]). Returns the result as `[n, rows]`.
    fn by_row_tasks<F>(&self, n: usize, task: F) -> Vec<f32>
    where
        F: Fn(&Task, &mut Scratch, &mut [f32]) -> TaskLayout + Sync,
    {
        let mut tasks: Vec<Task> = Vec::new();
        let mut matrix_row = 0;
        for (i, range) in self.ranges.iter().enumerate() {
            for first in (0..range.rows).step_by(ROWS_PER_TASK) {
                tasks.push(Task {
                    range: i,
                    first,
                    rows: ROWS_PER_TASK.min(range.rows - first),
                    matrix_row: matrix_row + first,
                });
            }
            matrix_row += range.rows;
        }
        let cols = self.cols;
        // Room for whole panels: a task's last panel may extend past its rows.
        let room = ROWS_PER_TASK.next_multiple_of(PANEL) * n;
        let mut y = vec![0.0f32; self.rows * n];
        let columns = ColumnWriter::new(&mut y, self.rows, n);
        tasks.into_par_iter().for_each_init(
            // The scratch row is sized by the tasks that use it (the exact path), not for
            // every split of the pool.
            || (Vec::new(), vec![0.0f32; room]),
            |(scratch, local): &mut (Vec<f32>, Vec<f32>), t| {
                let layout = task(&t, &mut Scratch { row: scratch, cols }, local);
                // SAFETY: the tasks cover disjoint rows of the matrix.
                unsafe { columns.write(t.matrix_row, t.rows, layout, local) };
            },
        );
        y
    }
}

/// A worker's scratch row of `cols` values, allocated the first time a task asks for it.
struct Scratch<'a> {
    row: &'a mut Vec<f32>,
    cols: usize,
}

impl Scratch<'_> {
    fn row(&mut self) -> &mut [f32] {
        if self.row.len() != self.cols {
            self.row.resize(self.cols, 0.0);
        }
        self.row
    }
}

/// One task of a product: rows `first..first + rows` of range `range`, which are rows
/// `matrix_row..` of the matrix.
struct Task {
    range: usize,
    first: usize,
    rows: usize,
    matrix_row: usize,
}

impl Task {
    /// The task's rows in the file form.
    fn bytes<'a>(&self, range: &'a RowRange) -> &'a [u8] {
        let start = self.first * range.row_bytes;
        &range.bytes[start..start + self.rows * range.row_bytes]
    }
}

/// How a task laid its results out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TaskLayout {
    /// `[rows, n]`: each weight row's results for the `n` activation rows.
    RowMajor,
    /// `[panels, n, 16]`: per panel of 16 weight rows, each activation row's 16 results.
    Panels,
}

/// Writes the columns `row..row + count` of an `[n, rows]` result from several tasks at once.
/// Each task owns its own rows of the weight matrix, so the columns they write never overlap.
struct ColumnWriter<'a> {
    out: *mut f32,
    rows: usize,
    n: usize,
    _borrow: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: the writer is shared between tasks that write disjoint columns (see `write`).
unsafe impl Sync for ColumnWriter<'_> {}

impl<'a> ColumnWriter<'a> {
    fn new(out: &'a mut [f32], rows: usize, n: usize) -> Self {
        assert_eq!(out.len(), rows * n);
        ColumnWriter {
            out: out.as_mut_ptr(),
            rows,
            n,
            _borrow: std::marker::PhantomData,
        }
    }

    /// Write a task's results for weight rows `row..row + count` (laid out in `local` as
    /// `layout` says) into columns `row..row + count` of the result.
    ///
    /// # Safety
    /// No other thread writes columns `row..row + count` at the same time (each task owns its
    /// rows).
    unsafe fn write(&self, row: usize, count: usize, layout: TaskLayout, local: &[f32]) {
        assert!(
            row + count <= self.rows,
            "columns {row}..{} of {}",
            row + count,
            self.rows
        );
        let n = self.n;
        if n == 1 {
            // One activation row (a decode step): both layouts hold the task's results in
            // order, and they are one run of the single output row.
            // SAFETY: as below, for t = 0 and i < count.
            let dst = unsafe { std::slice::from_raw_parts_mut(self.out.add(row), count) };
            dst.copy_from_slice(&local[..count]);
            return;
        }
        for i in 0..count {
            for t in 0..n {
                let v = match layout {
                    TaskLayout::RowMajor => local[i * n + t],
                    TaskLayout::Panels => local[(i / PANEL) * PANEL * n + t * PANEL + i % PANEL],
                };
                // SAFETY: t < n and row + i < rows, so the index is inside the `[n, rows]`
                // buffer this writer borrows mutably; no other thread writes these columns
                // (this function's contract).
                unsafe { *self.out.add(t * self.rows + row + i) = v };
            }
        }
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
pub(crate) const PREFETCH_BYTES: usize = 4096;

/// Ask the CPU to start loading `bytes[start..start + len]` into cache (a hint: no effect
/// on results, nothing outside `bytes` is touched).
#[inline(always)]
pub(crate) fn prefetch(bytes: &[u8], start: usize, len: usize) {
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
    use crate::gguf::synthetic::random_rows;

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

    /// The integer product of a matrix stacked from several types (a fused Q/K/V with F16
    /// rows, which take the exact path) stays within the activations' rounding of the exact
    /// product, and a row's result does not depend on how many rows share the product.
    #[test]
    fn int8_products_track_the_exact_ones_for_any_row_count() {
        let cols = 512;
        let parts = [
            (GgmlType::Q4_K, 40),
            (GgmlType::Q6_K, 9),
            (GgmlType::Q8_0, 33),
            (GgmlType::F16, 5),
        ];
        let mut m = QuantMatrix::new(cols);
        for (k, &(ty, rows)) in parts.iter().enumerate() {
            m.push(ty, shared(random_rows(ty, rows, cols, 90 + k as u64)), rows)
                .expect("push");
        }
        let rows = m.rows();
        let x: Vec<f32> = (0..70 * cols)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0)
            .collect();
        let first = m.matmul_t_int8(&x[..cols], 1).expect("shapes");
        for n in [1, 3, 9, 70] {
            let x = &x[..n * cols];
            let fast = m.matmul_t_int8(x, n).expect("shapes");
            let exact = m.matmul_t(x, n).expect("shapes");
            assert_eq!(fast[..rows], first[..], "row 0 with {n} rows");
            let scale = exact.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            for (i, (f, e)) in fast.iter().zip(&exact).enumerate() {
                assert!(
                    (f - e).abs() <= 0.02 * scale,
                    "n={n} element {i}: {f} vs {e}"
                );
            }
            // The F16 rows are multiplied exactly.
            for t in 0..n {
                let r = t * rows + rows - 1;
                assert_eq!(fast[r], exact[r], "F16 row, n={n}");
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

//! Activation rows quantised to 8-bit blocks, once per matrix product, for the integer dot
//! products of [`super`] (llama.cpp's route: its `Q8_0` / `Q8_K` `vec_dot_type`s).
//!
//! A row of `cols` values is cut into blocks of [`ActivationBlocks::block`] values (32 for the
//! 32-value weight formats, 256 for the K-quants); each block gets one `f32` scale
//! `d = max|x| / 127` and the values `q = round(x / d)` in `[-127, 127]`. Sums of the `q` over
//! every 16 and every 32 consecutive values are kept too: they turn a weight format's offset
//! or minimum (`q - 8` for Q4_0, `- dmin * m` for Q4_K, ...) into one multiply per group
//! instead of one per value.

use rayon::prelude::*;

/// Values per activation block for the 32-value weight formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).
pub const SMALL_BLOCK: usize = 32;
/// Values per activation block for the K-quants (Q4_K, Q5_K, Q6_K).
pub const SUPER_BLOCK: usize = 256;

/// `n` activation rows of `cols` values in 8-bit blocks of `block` values.
#[derive(Debug, Clone, Default)]
pub struct ActivationBlocks {
    cols: usize,
    block: usize,
    /// `[n, cols]`, row-major.
    qs: Vec<i8>,
    /// `[n, cols / block]`: one scale per block.
    scales: Vec<f32>,
    /// `[n, cols / 16]`: sums of `qs` over each 16 values.
    sums16: Vec<i16>,
    /// `[n, cols / 32]`: sums of `qs` over each 32 values.
    sums32: Vec<i16>,
    /// `[n, cols / 32]`: the same sums times their block's scale (the sum of the 32
    /// dequantised activations), for the offsets and minimums of the 32-value formats.
    scaled_sums32: Vec<f32>,
}

/// One quantised activation row, borrowed from [`ActivationBlocks`].
#[derive(Debug, Clone, Copy)]
pub struct ActivationRow<'a> {
    pub qs: &'a [i8],
    pub scales: &'a [f32],
    pub sums16: &'a [i16],
    pub sums32: &'a [i16],
    pub scaled_sums32: &'a [f32],
}

impl ActivationBlocks {
    /// Quantise the `x.len() / cols` rows of `x` (row-major) in blocks of `block` values.
    /// `cols` must be a multiple of `block`, and `block` a multiple of 32.
    pub fn quantize(x: &[f32], cols: usize, block: usize) -> Self {
        let mut a = ActivationBlocks::default();
        a.requantize(x, cols, block);
        a
    }

    /// [`ActivationBlocks::quantize`] into the buffers already held (no allocation once they
    /// are large enough).
    pub fn requantize(&mut self, x: &[f32], cols: usize, block: usize) {
        assert!(
            block.is_multiple_of(SMALL_BLOCK) && cols.is_multiple_of(block),
            "{cols} columns in blocks of {block}"
        );
        let n = x.len() / cols.max(1);
        self.cols = cols;
        self.block = block;
        self.qs.resize(n * cols, 0);
        self.scales.resize(n * cols / block, 0.0);
        self.sums16.resize(n * cols / 16, 0);
        self.sums32.resize(n * cols / 32, 0);
        self.scaled_sums32.resize(n * cols / 32, 0.0);
        let rows = x
            .par_chunks(cols)
            .zip(self.qs.par_chunks_mut(cols))
            .zip(self.scales.par_chunks_mut(cols / block))
            .zip(self.sums16.par_chunks_mut(cols / 16))
            .zip(self.sums32.par_chunks_mut(cols / 32))
            .zip(self.scaled_sums32.par_chunks_mut(cols / 32));
        // One row is too little work to share; many (a prefill) are split over the cores.
        let rows = rows.with_min_len(if n * cols < PARALLEL_MIN_VALUES { n } else { 1 });
        rows.for_each(|(((((x, qs), scales), sums16), sums32), scaled)| {
            quantize_row(x, block, qs, scales, sums16, sums32, scaled);
        });
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.qs.len() / self.cols.max(1)
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Values per scale (32 or 256).
    pub fn block(&self) -> usize {
        self.block
    }

    /// Row `t`.
    #[inline]
    pub fn row(&self, t: usize) -> ActivationRow<'_> {
        let c = self.cols;
        ActivationRow {
            qs: &self.qs[t * c..(t + 1) * c],
            scales: &self.scales[t * c / self.block..(t + 1) * c / self.block],
            sums16: &self.sums16[t * c / 16..(t + 1) * c / 16],
            sums32: &self.sums32[t * c / 32..(t + 1) * c / 32],
            scaled_sums32: &self.scaled_sums32[t * c / 32..(t + 1) * c / 32],
        }
    }
}

/// Below this many values the rows are quantised on the calling thread.
const PARALLEL_MIN_VALUES: usize = 1 << 15;

/// One row: its blocks, then the sums.
fn quantize_row(
    x: &[f32],
    block: usize,
    qs: &mut [i8],
    scales: &mut [f32],
    sums16: &mut [i16],
    sums32: &mut [i16],
    scaled: &mut [f32],
) {
    for ((x, q), d) in x
        .chunks_exact(block)
        .zip(qs.chunks_exact_mut(block))
        .zip(scales.iter_mut())
    {
        *d = quantize_block(x, q);
    }
    for (q, s) in qs.chunks_exact(16).zip(sums16.iter_mut()) {
        *s = q.iter().map(|&v| v as i16).sum();
    }
    for (pair, s) in sums16.chunks_exact(2).zip(sums32.iter_mut()) {
        *s = pair[0] + pair[1];
    }
    let per_scale = block / 32;
    for (k, (&s, out)) in sums32.iter().zip(scaled.iter_mut()).enumerate() {
        *out = scales[k / per_scale] * s as f32;
    }
}

/// Quantise one block: `q = round(x / d)` (ties to even, as `_mm256_round_ps` in ggml's AVX2
/// quantiser) with `d = max|x| / 127`; returns `d` (0 for an all-zero block, whose `q` are 0).
/// Written as fixed passes over the block so the compiler vectorises it.
#[inline]
fn quantize_block(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (q, &x) in q.iter_mut().zip(x) {
        // |x * id| <= 127 up to rounding; the clamp keeps a NaN-free input in range.
        *q = round_ties_even(x * id).clamp(-127.0, 127.0) as i8;
    }
    d
}

/// `x` rounded to the nearest integer, ties to even, for |x| < 2²²: adding and subtracting
/// 1.5 · 2²³ leaves no fraction bits, so the hardware's default rounding does the work.
/// (`f32::round_ties_even` is a library call per value on baseline x86-64; this vectorises.)
#[inline(always)]
fn round_ties_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_within_half_a_step() {
        let cols = 512;
        let x: Vec<f32> = (0..2 * cols)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 37.0)
            .collect();
        for block in [SMALL_BLOCK, SUPER_BLOCK] {
            let a = ActivationBlocks::quantize(&x, cols, block);
            assert_eq!((a.rows(), a.cols(), a.block()), (2, cols, block));
            for t in 0..2 {
                let r = a.row(t);
                for (i, &q) in r.qs.iter().enumerate() {
                    let d = r.scales[i / block];
                    let v = x[t * cols + i];
                    assert!(
                        (q as f32 * d - v).abs() <= 0.5 * d * 1.0001,
                        "{v} vs {q} * {d}"
                    );
                }
                for (k, &s) in r.sums16.iter().enumerate() {
                    let want: i16 = r.qs[16 * k..16 * k + 16].iter().map(|&q| q as i16).sum();
                    assert_eq!(s, want);
                }
                for (k, &s) in r.sums32.iter().enumerate() {
                    assert_eq!(s, r.sums16[2 * k] + r.sums16[2 * k + 1]);
                    let d = r.scales[32 * k / block];
                    assert_eq!(r.scaled_sums32[k], d * s as f32);
                }
                // The block's largest magnitude maps to ±127.
                let amax = r.qs[..block].iter().map(|q| q.unsigned_abs()).max();
                assert_eq!(amax, Some(127));
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        for (x, want) in [
            (0.5, 0.0),
            (1.5, 2.0),
            (2.5, 2.0),
            (-0.5, 0.0),
            (-1.5, -2.0),
            (126.4, 126.0),
            (-126.6, -127.0),
        ] {
            assert_eq!(round_ties_even(x), want, "{x}");
            assert_eq!(round_ties_even(x), f32::round_ties_even(x), "{x}");
        }
    }

    #[test]
    fn zero_blocks_have_zero_scale_and_values() {
        let a = ActivationBlocks::quantize(&[0.0; 64], 64, SMALL_BLOCK);
        assert_eq!(a.row(0).scales, &[0.0, 0.0]);
        assert!(a.row(0).qs.iter().all(|&q| q == 0));
    }
}

//! The element-wise and per-row steps of the CPU decoder: RMSNorm, SwiGLU, RoPE, softmax and
//! small dot products, on host `f32` slices.

use rayon::prelude::*;

use super::super::config::RopeLayout;

/// `out = x / sqrt(mean(x²) + eps) * gamma` for every row of `x` (row length `gamma.len()`).
/// The mean is summed in `f64`, closer to the exact value than any `f32` order.
pub fn rms_norm(x: &[f32], gamma: &[f32], eps: f64, out: &mut [f32]) {
    let n = gamma.len();
    for (x, y) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let mean_sq = x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / n as f64;
        let inv = (1.0 / (mean_sq + eps).sqrt()) as f32;
        for ((y, &x), &g) in y.iter_mut().zip(x).zip(gamma) {
            *y = x * inv * g;
        }
    }
}

/// `silu(gate) * up` per row of `[gate | up]` (`inter` values each), into `out`
/// (`[rows, inter]`). One `exp` per value: a pass over several rows is split over the cores
/// in pieces of [`SWIGLU_PIECE`] values.
pub fn swiglu(gate_up: &[f32], inter: usize, out: &mut [f32]) {
    let piece = |(gate, up, y): (&[f32], &[f32], &mut [f32])| {
        for ((y, &g), &u) in y.iter_mut().zip(gate).zip(up) {
            *y = g / (1.0 + (-g).exp()) * u;
        }
    };
    let pieces = gate_up
        .chunks_exact(2 * inter)
        .zip(out.chunks_exact_mut(inter))
        .flat_map(|(gu, y)| {
            let (gate, up) = gu.split_at(inter);
            gate.chunks(SWIGLU_PIECE)
                .zip(up.chunks(SWIGLU_PIECE))
                .zip(y.chunks_mut(SWIGLU_PIECE))
                .map(|((g, u), y)| (g, u, y))
        });
    // Below 8 pieces (a decode step of a small model) the threads' hand-over costs more.
    if gate_up.len() < 8 * SWIGLU_PIECE {
        pieces.for_each(piece);
    } else {
        pieces.par_bridge().for_each(piece);
    }
}

/// Values per parallel piece of [`swiglu`].
const SWIGLU_PIECE: usize = 2048;

/// Rotate each `head_dim`-wide head of `x` (`heads` of them, contiguous) by the angles whose
/// cosines and sines are `cos`, `sin` (`head_dim / 2` each).
pub fn rope(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32], layout: RopeLayout) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        match layout {
            RopeLayout::HalfSplit => {
                let (a, b) = head.split_at_mut(half);
                for i in 0..half {
                    let (x1, x2) = (a[i], b[i]);
                    a[i] = x1 * cos[i] - x2 * sin[i];
                    b[i] = x2 * cos[i] + x1 * sin[i];
                }
            }
            RopeLayout::Interleaved => {
                for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                    let (x1, x2) = (pair[0], pair[1]);
                    pair[0] = x1 * cos[i] - x2 * sin[i];
                    pair[1] = x2 * cos[i] + x1 * sin[i];
                }
            }
        }
    }
}

/// In-place softmax of `x` (max-shifted).
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Dot product with 8 independent accumulators (a chain the compiler can vectorise).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const W: usize = 8;
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
            acc[i] += a[i] * b[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `y += p * v`.
#[inline]
pub fn axpy(y: &mut [f32], p: f32, v: &[f32]) {
    for (y, &v) in y.iter_mut().zip(v) {
        *y += p * v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norms_and_activations_by_hand() {
        let mut out = [0.0f32; 2];
        rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0, &mut out);
        // rms = sqrt(12.5)
        let r = 12.5f32.sqrt();
        assert!((out[0] - 3.0 / r).abs() < 1e-6 && (out[1] - 8.0 / r).abs() < 1e-6);
        let mut y = [0.0f32; 1];
        swiglu(&[1.0, 3.0], 1, &mut y);
        assert!((y[0] - 3.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6);
        let mut p = [1.0f32, 2.0, 3.0];
        softmax(&mut p);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6 && p[2] > p[1]);
    }

    #[test]
    fn rope_rotates_pairs_of_each_layout() {
        let (c, s) = ([0.0f32, 1.0], [1.0f32, 0.0]);
        // Half-split pairs (0, 2) and (1, 3): the first rotated by 90°, the second by 0.
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        rope(&mut x, 4, &c, &s, RopeLayout::HalfSplit);
        assert_eq!(x, [-3.0, 2.0, 1.0, 4.0]);
        // Interleaved pairs (0, 1) and (2, 3).
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        rope(&mut x, 4, &c, &s, RopeLayout::Interleaved);
        assert_eq!(x, [-2.0, 1.0, 3.0, 4.0]);
    }

    #[test]
    fn dot_matches_a_plain_sum() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.1).collect();
        let want: f32 = a.iter().zip(&b).map(|(a, b)| a * b).sum();
        assert!((dot(&a, &b) - want).abs() < 1e-3);
    }
}

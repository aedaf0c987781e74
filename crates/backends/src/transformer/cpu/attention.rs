//! Causal grouped-query attention of new positions over a sequence's KV cache, on the host.

use rayon::prelude::*;

use super::ops::{axpy, dot, softmax};

/// Shapes of one layer's attention.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// Below this many multiply-adds a layer's attention runs on the calling thread: spreading a
/// decode step's few thousand over the cores costs more than it saves.
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// The queries of a pass: `seq` rows starting `stride` floats apart, each `[n_heads,
/// head_dim]` first (the rest of a row, e.g. its keys and values, is not read).
#[derive(Debug, Clone, Copy)]
pub struct Queries<'a> {
    pub rows: &'a [f32],
    pub stride: usize,
    pub seq: usize,
}

/// A sequence's keys and values (`[positions, n_kv_heads * head_dim]`, the new positions'
/// included), and how many positions came before this pass.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub past: usize,
}

/// For each new position `t` at absolute position `past + t`: softmax-weighted values over
/// the keys `0..=past + t`, written to `out[t]` (`[n_heads * head_dim]`). Query head `h` reads
/// KV head `h / (n_heads / n_kv_heads)`. Returns the probabilities of the last position per
/// head when `want_probs`.
pub fn attend(
    shape: AttentionShape,
    queries: Queries,
    context: Context,
    want_probs: bool,
    out: &mut [f32],
) -> Option<Vec<Vec<f32>>> {
    let AttentionShape {
        n_heads,
        n_kv_heads,
        head_dim: d,
    } = shape;
    let Queries {
        rows: q,
        stride: q_stride,
        seq,
    } = queries;
    let Context { keys, values, past } = context;
    let group = n_heads / n_kv_heads;
    let kv_width = n_kv_heads * d;
    let total = past + seq;
    let scale = 1.0 / (d as f32).sqrt();
    // One head: its `[seq, d]` output and the last position's probabilities.
    let head = |h: usize| -> (Vec<f32>, Option<Vec<f32>>) {
        let kv = (h / group) * d;
        let mut o = vec![0.0f32; seq * d];
        let mut scores = vec![0.0f32; total];
        let mut last = None;
        for t in 0..seq {
            let visible = past + t + 1;
            let qh = &q[t * q_stride + h * d..t * q_stride + (h + 1) * d];
            let s = &mut scores[..visible];
            for (j, s) in s.iter_mut().enumerate() {
                *s = dot(qh, &keys[j * kv_width + kv..j * kv_width + kv + d]) * scale;
            }
            softmax(s);
            let oh = &mut o[t * d..(t + 1) * d];
            for (j, &p) in s.iter().enumerate() {
                axpy(oh, p, &values[j * kv_width + kv..j * kv_width + kv + d]);
            }
            if want_probs && t + 1 == seq {
                last = Some(s.to_vec());
            }
        }
        (o, last)
    };
    let macs = n_heads * seq * total * d;
    let heads: Vec<(Vec<f32>, Option<Vec<f32>>)> = if macs < PARALLEL_MIN_MACS {
        (0..n_heads).map(head).collect()
    } else {
        (0..n_heads).into_par_iter().map(head).collect()
    };
    let q_dim = n_heads * d;
    let mut probs = want_probs.then(|| Vec::with_capacity(n_heads));
    for (h, (o, last)) in heads.into_iter().enumerate() {
        for t in 0..seq {
            out[t * q_dim + h * d..t * q_dim + (h + 1) * d].copy_from_slice(&o[t * d..(t + 1) * d]);
        }
        if let (Some(p), Some(last)) = (probs.as_mut(), last) {
            p.push(last);
        }
    }
    probs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two heads sharing one KV head, two new positions after one past position: the output
    /// is the softmax-weighted mean of the visible values, computed here by hand.
    #[test]
    fn causal_weights_by_hand() {
        let shape = AttentionShape {
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 2,
        };
        let keys = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        // Queries: position 1 (sees keys 0, 1) and 2 (sees 0, 1, 2); head 1 is all zeros.
        let q = [2.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0];
        let mut out = [0.0f32; 8];
        let queries = Queries {
            rows: &q,
            stride: 4,
            seq: 2,
        };
        let context = Context {
            keys: &keys,
            values: &values,
            past: 1,
        };
        let probs = attend(shape, queries, context, true, &mut out).expect("probs");
        let s = 2.0f32.sqrt(); // q·k / sqrt(2) for the matching key
        let w = |logits: &[f32]| {
            let e: Vec<f32> = logits.iter().map(|l| l.exp()).collect();
            let z: f32 = e.iter().sum();
            e.into_iter().map(|e| e / z).collect::<Vec<f32>>()
        };
        let p1 = w(&[s, 0.0]);
        assert!((out[0] - (p1[0] * 1.0 + p1[1] * 3.0)).abs() < 1e-5);
        // Head 1 (zero query) weighs the visible values equally.
        assert!((out[2] - 2.0).abs() < 1e-5 && (out[3] - 3.0).abs() < 1e-5);
        let p2 = w(&[0.0, s, s]);
        assert!((out[5] - (p2[0] * 2.0 + p2[1] * 4.0 + p2[2] * 6.0)).abs() < 1e-5);
        assert_eq!(probs.len(), 2);
        for (a, b) in probs[0].iter().zip(&p2) {
            assert!((a - b).abs() < 1e-6);
        }
        assert!(probs[1].iter().all(|&p| (p - 1.0 / 3.0).abs() < 1e-6));
    }
}

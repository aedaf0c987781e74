//! Numerically careful softmax and categorical sampling on host vectors.

use rand::{Rng, RngCore};

/// Index of the largest value (the first one on ties). Returns 0 for an empty slice.
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &x) in v.iter().enumerate() {
        if x > best_v {
            best_v = x;
            best = i;
        }
    }
    best
}

/// Softmax of `logits / temperature`. A temperature of 0 (or below) gives the one-hot
/// distribution of the argmax, which makes sampling greedy.
pub fn softmax_with_temperature(logits: &[f32], temperature: f32) -> Vec<f32> {
    let mut out = vec![0.0f32; logits.len()];
    if logits.is_empty() {
        return out;
    }
    if temperature <= 0.0 {
        out[argmax(logits)] = 1.0;
        return out;
    }
    let inv_t = 1.0 / temperature;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for (o, &l) in out.iter_mut().zip(logits) {
        let e = ((l - max) * inv_t).exp();
        *o = e;
        sum += e as f64;
    }
    let inv = (1.0 / sum) as f32;
    for o in &mut out {
        *o *= inv;
    }
    out
}

/// Draw an index from unnormalised non-negative weights. Returns `None` when every weight is
/// zero (or the slice is empty). Accumulates in f64 so that 150k-entry vocabularies stay exact.
pub fn sample_weights(weights: &[f32], rng: &mut dyn RngCore) -> Option<usize> {
    let total: f64 = weights.iter().map(|&w| w.max(0.0) as f64).sum();
    if total <= 0.0 || !total.is_finite() {
        return None;
    }
    let target = rng.random::<f64>() * total;
    let mut acc = 0.0f64;
    let mut last_positive = None;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            acc += w as f64;
            last_positive = Some(i);
            if target < acc {
                return Some(i);
            }
        }
    }
    // Rounding can leave `target` a hair above the accumulated sum.
    last_positive
}

/// Draw an index from a probability vector; falls back to the argmax if it sums to zero.
pub fn sample(probs: &[f32], rng: &mut dyn RngCore) -> usize {
    sample_weights(probs, rng).unwrap_or_else(|| argmax(probs))
}

/// Number of bits needed to send one token id of a vocabulary of `vocab` entries: ⌈log2 |V|⌉.
pub fn token_index_bits(vocab: usize) -> u64 {
    if vocab <= 1 {
        return 1;
    }
    (usize::BITS - (vocab - 1).leading_zeros()) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn index_bits_are_ceil_log2() {
        assert_eq!(token_index_bits(32_000), 15);
        assert_eq!(token_index_bits(151_936), 18);
        assert_eq!(token_index_bits(32_768), 15);
        assert_eq!(token_index_bits(32_769), 16);
        assert_eq!(token_index_bits(2), 1);
    }

    #[test]
    fn softmax_sums_to_one_and_zero_temperature_is_one_hot() {
        let l = [1.0, 3.0, -2.0, 3.0];
        let p = softmax_with_temperature(&l, 1.0);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[1] > p[0] && p[0] > p[2]);
        assert_eq!(softmax_with_temperature(&l, 0.0), vec![0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn sampling_follows_weights() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let w = [0.0, 1.0, 3.0, 0.0];
        let mut counts = [0usize; 4];
        for _ in 0..40_000 {
            counts[sample_weights(&w, &mut rng).unwrap()] += 1;
        }
        assert_eq!(counts[0] + counts[3], 0);
        let frac = counts[2] as f64 / 40_000.0;
        assert!((frac - 0.75).abs() < 0.01, "{frac}");
        assert_eq!(sample_weights(&[0.0, 0.0], &mut rng), None);
    }
}

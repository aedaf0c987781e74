//! Quantising `f32` weights to ggml's Q8_0, for models without quantised weights (safetensors
//! checkpoints) on the `fast` CPU path.

use super::types::GgmlType;

/// Bytes of one Q8_0 block: an f16 scale and 32 signed values.
const Q8_0_BLOCK_BYTES: usize = 34;

/// `w` (a multiple of 32 values) as Q8_0 blocks, as ggml's `quantize_row_q8_0_ref`:
/// `d = max|w| / 127` stored as f16, `q = round(w / d)`. `None` when `w.len()` is not a
/// multiple of 32.
pub fn quantize_q8_0(w: &[f32]) -> Option<Vec<u8>> {
    let block = GgmlType::Q8_0.block_size();
    if !w.len().is_multiple_of(block) {
        return None;
    }
    let mut out = Vec::with_capacity(w.len() / block * Q8_0_BLOCK_BYTES);
    for run in w.chunks_exact(block) {
        let amax = run.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
        out.extend(
            run.iter()
                .map(|&v| (v * id).round().clamp(-127.0, 127.0) as i8 as u8),
        );
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::dequantize;

    #[test]
    fn q8_0_round_trip_is_within_half_a_step() {
        let w: Vec<f32> = (0..96)
            .map(|i| ((i * 37 % 53) as f32 - 26.0) / 9.0)
            .collect();
        let bytes = quantize_q8_0(&w).expect("whole blocks");
        assert_eq!(bytes.len(), 3 * Q8_0_BLOCK_BYTES);
        let back = dequantize(GgmlType::Q8_0, &bytes, w.len()).expect("dequantise");
        for (run, back) in w.chunks(32).zip(back.chunks(32)) {
            let d = run.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
            for (a, b) in run.iter().zip(back) {
                // Half a step, plus the f16 rounding of d (relative 2^-11) times 127.
                assert!((a - b).abs() <= 0.5 * d + 127.0 * d / 2048.0, "{a} vs {b}");
            }
        }
        assert!(quantize_q8_0(&w[..40]).is_none());
    }
}

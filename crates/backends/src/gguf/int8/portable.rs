//! The integer dot products in plain Rust: the definition the vector kernels are tested
//! against, and the kernels of CPUs without one (their fixed-size integer loops
//! auto-vectorise, e.g. for NEON).
//!
//! For every format the block's integer dot product `Σ q_w · q_a` is exact (`i32`); the
//! format's offset or minimum enters through the activation's block sums; each block then adds
//! `scale_w · scale_a · (integer sum)` to an `f32` total.

use super::activations::ActivationRow;
use crate::gguf::dequant::f16_bits_to_f32;
use crate::gguf::types::GgmlType;

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

/// `out[t] = Σ dequantised(w) · a_t` for each activation row `a_t` of `acts` (one weight row
/// `w` of type `ty`, validated by the caller). `false` for a type without an integer kernel.
pub(crate) fn dot_rows(ty: GgmlType, w: &[u8], acts: &[ActivationRow], out: &mut [f32]) -> bool {
    for (a, y) in acts.iter().zip(out.iter_mut()) {
        *y = match ty {
            GgmlType::Q4_0 => q4_0(w, a),
            GgmlType::Q4_1 => q4_1(w, a),
            GgmlType::Q5_0 => q5_0(w, a),
            GgmlType::Q5_1 => q5_1(w, a),
            GgmlType::Q8_0 => q8_0(w, a),
            GgmlType::Q4_K => q4_k(w, a),
            GgmlType::Q5_K => q5_k(w, a),
            GgmlType::Q6_K => q6_k(w, a),
            _ => return false,
        };
    }
    true
}

/// `Σ lo[j] a[j] + hi[j] a[j + 16]` over the 16 bytes of a 32-value block whose element `j`
/// is the low nibble of byte `j` and element `j + 16` the high nibble (plus `bit4` per element).
#[inline(always)]
fn nibble_dot(qs: &[u8], high_bits: u32, a: &[i8]) -> i32 {
    let mut s = 0i32;
    for j in 0..16 {
        let lo = (qs[j] & 0x0f) as i32 | ((((high_bits >> j) & 1) << 4) as i32);
        let hi = (qs[j] >> 4) as i32 | ((((high_bits >> (j + 16)) & 1) << 4) as i32);
        s += lo * a[j] as i32 + hi * a[j + 16] as i32;
    }
    s
}

fn q4_0(w: &[u8], a: &ActivationRow) -> f32 {
    let mut y = 0.0f32;
    for (k, b) in w.chunks_exact(18).enumerate() {
        let i = nibble_dot(&b[2..18], 0, &a.qs[32 * k..32 * k + 32]) - 8 * a.sums32[k] as i32;
        y += f16_at(b, 0) * a.scales[k] * i as f32;
    }
    y
}

fn q4_1(w: &[u8], a: &ActivationRow) -> f32 {
    let mut y = 0.0f32;
    for (k, b) in w.chunks_exact(20).enumerate() {
        let i = nibble_dot(&b[4..20], 0, &a.qs[32 * k..32 * k + 32]);
        y += f16_at(b, 0) * a.scales[k] * i as f32 + f16_at(b, 2) * a.scaled_sums32[k];
    }
    y
}

fn q5_0(w: &[u8], a: &ActivationRow) -> f32 {
    let mut y = 0.0f32;
    for (k, b) in w.chunks_exact(22).enumerate() {
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let i = nibble_dot(&b[6..22], qh, &a.qs[32 * k..32 * k + 32]) - 16 * a.sums32[k] as i32;
        y += f16_at(b, 0) * a.scales[k] * i as f32;
    }
    y
}

fn q5_1(w: &[u8], a: &ActivationRow) -> f32 {
    let mut y = 0.0f32;
    for (k, b) in w.chunks_exact(24).enumerate() {
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let i = nibble_dot(&b[8..24], qh, &a.qs[32 * k..32 * k + 32]);
        y += f16_at(b, 0) * a.scales[k] * i as f32 + f16_at(b, 2) * a.scaled_sums32[k];
    }
    y
}

fn q8_0(w: &[u8], a: &ActivationRow) -> f32 {
    let mut y = 0.0f32;
    for (k, b) in w.chunks_exact(34).enumerate() {
        let q = &a.qs[32 * k..32 * k + 32];
        let i: i32 = b[2..34]
            .iter()
            .zip(q)
            .map(|(&w, &a)| (w as i8) as i32 * a as i32)
            .sum();
        y += f16_at(b, 0) * a.scales[k] * i as f32;
    }
    y
}

/// The 8 six-bit scales and mins of a Q4_K/Q5_K super-block (ggml `get_scale_min_k4`).
#[inline(always)]
pub(crate) fn k_scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 0x3f;
        mn[j] = s[j + 4] & 0x3f;
        sc[j + 4] = (s[j + 8] & 0x0f) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, mn)
}

/// Q4_K and Q5_K: sub-block `2i` is the low nibbles of `qs[32i..32i + 32]`, `2i + 1` the high
/// nibbles, bit 4 (Q5_K) is bit `s` of `qh[l]` for element `l` of sub-block `s`.
#[inline(always)]
fn k4_or_k5(b: &[u8], qh: Option<&[u8]>, qs: &[u8], a: &ActivationRow, k: usize) -> f32 {
    let (sc, mn) = k_scales_mins(&b[4..16]);
    let q8 = &a.qs[256 * k..256 * k + 256];
    let mut sumi = 0i32;
    let mut summ = 0i32;
    for i in 0..4 {
        let (s1, s2) = (2 * i, 2 * i + 1);
        let q = &qs[32 * i..32 * i + 32];
        let (mut d1, mut d2) = (0i32, 0i32);
        for l in 0..32 {
            let (h1, h2) = match qh {
                Some(qh) => (((qh[l] >> s1) & 1) << 4, ((qh[l] >> s2) & 1) << 4),
                None => (0, 0),
            };
            d1 += ((q[l] & 0x0f) | h1) as i32 * q8[64 * i + l] as i32;
            d2 += ((q[l] >> 4) | h2) as i32 * q8[64 * i + 32 + l] as i32;
        }
        sumi += sc[s1] as i32 * d1 + sc[s2] as i32 * d2;
        summ += mn[s1] as i32 * a.sums32[8 * k + s1] as i32
            + mn[s2] as i32 * a.sums32[8 * k + s2] as i32;
    }
    let da = a.scales[k];
    f16_at(b, 0) * da * sumi as f32 - f16_at(b, 2) * da * summ as f32
}

fn q4_k(w: &[u8], a: &ActivationRow) -> f32 {
    let mut y = 0.0f32;
    for (k, b) in w.chunks_exact(144).enumerate() {
        y += k4_or_k5(b, None, &b[16..144], a, k);
    }
    y
}

fn q5_k(w: &[u8], a: &ActivationRow) -> f32 {
    let mut y = 0.0f32;
    for (k, b) in w.chunks_exact(176).enumerate() {
        y += k4_or_k5(b, Some(&b[16..48]), &b[48..176], a, k);
    }
    y
}

/// Q6_K: in half `h` of a super-block, element `l + 32j` (j = 0..4) takes the low (j even) or
/// high (j odd) nibble of `ql[64h + l + 32(j & 1)]` and bits `2j..2j + 2` of `qh[32h + l]`;
/// each 16 elements have their own scale; the value is `q - 32`.
fn q6_k(w: &[u8], a: &ActivationRow) -> f32 {
    let mut y = 0.0f32;
    for (k, b) in w.chunks_exact(210).enumerate() {
        let q8 = &a.qs[256 * k..256 * k + 256];
        let mut sumi = 0i32;
        for h in 0..2 {
            let ql = &b[64 * h..64 * h + 64];
            let qh = &b[128 + 32 * h..128 + 32 * h + 32];
            let mut sub = [0i32; 8];
            for l in 0..32 {
                let q = [
                    (ql[l] & 0x0f) | ((qh[l] & 0x03) << 4),
                    (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 0x03) << 4),
                    (ql[l] >> 4) | (((qh[l] >> 4) & 0x03) << 4),
                    (ql[l + 32] >> 4) | (((qh[l] >> 6) & 0x03) << 4),
                ];
                for (j, &q) in q.iter().enumerate() {
                    sub[2 * j + l / 16] += q as i32 * q8[128 * h + 32 * j + l] as i32;
                }
            }
            for (s, &dot) in sub.iter().enumerate() {
                // Sub-block s of this half: elements 16s..16s + 16 of it.
                let scale = (b[192 + 8 * h + s] as i8) as i32;
                sumi += scale * (dot - 32 * a.sums16[16 * k + 8 * h + s] as i32);
            }
        }
        y += f16_at(b, 208) * a.scales[k] * sumi as f32;
    }
    y
}

//! Dequantisers for ggml block formats, bit-exact with gguf-py's `gguf.quants.dequantize`
//! (numpy, f32 arithmetic) and thus with ggml's reference `dequantize_row_*`.
//!
//! Bit-exactness rules: all arithmetic is in `f32`, in the same order as gguf-py
//! (e.g. Q4_K is `(d * sc) * q - (dmin * m)`: both products are rounded separately, never
//! fused — Rust never contracts `a * b + c` into an FMA unless `mul_add` is called), and
//! f16 → f32 is an exact bit conversion (NaN payloads kept, as numpy does).
//!
//! Speed: every format is a loop over fixed-size blocks (`chunks_exact` on the input and
//! output, converted to fixed-size arrays so bounds checks vanish) with constant-trip
//! inner loops that LLVM vectorises; no allocation besides the output. These run on the
//! load path of 1.5B-parameter models (≈ 1 GB of Q4_K/Q6_K per model); they are
//! single-threaded, so a loader that wants more can split tensors across threads.

use super::error::DequantError;
use super::types::{GgmlType, QK_K};

/// Dequantises `n_elements` values of type `ty` from `bytes`, which must hold exactly
/// `n_elements / block_size * type_size` bytes.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n_elements: usize) -> Result<Vec<f32>, DequantError> {
    let n = validate(ty, bytes.len(), n_elements as u64)?;
    let mut out = vec![0.0f32; n];
    dequantize_row(ty, bytes, &mut out);
    Ok(out)
}

/// Dequantises `bytes` into `out`; the element count is `out.len()`.
pub fn dequantize_into(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    validate(ty, bytes.len(), out.len() as u64)?;
    dequantize_row(ty, bytes, out);
    Ok(())
}

/// Checks that `ty` is supported and that `n_bytes` holds exactly `n_elements` values;
/// returns `n_elements` as `usize`.
pub(crate) fn validate(
    ty: GgmlType,
    n_bytes: usize,
    n_elements: u64,
) -> Result<usize, DequantError> {
    if !ty.can_dequantize() {
        return Err(DequantError::UnsupportedType(ty));
    }
    let block_size = ty.block_size();
    let expected = ty
        .n_bytes(n_elements)
        .ok_or(DequantError::NotBlockMultiple {
            ty,
            n_elements,
            block_size,
        })?;
    if expected != n_bytes as u64 {
        return Err(DequantError::ByteLength {
            ty,
            n_elements,
            expected,
            got: n_bytes,
        });
    }
    // Every type has ≤ 8 elements per byte, so this only fails on 32-bit targets.
    usize::try_from(n_elements).map_err(|_| DequantError::ByteLength {
        ty,
        n_elements,
        expected,
        got: n_bytes,
    })
}

/// Dequantises whole blocks of `bytes` into `out` without checking lengths: for hot loops
/// over rows whose geometry was validated once ([`validate`]). `ty` must be dequantisable
/// (an unsupported type panics) and `bytes` hold exactly `out.len()` values (otherwise only
/// the whole blocks that fit are written). Inlined, so that the callers compiled for wider
/// vector units (see `super::matmul`) vectorise these loops for them.
#[inline(always)]
pub(crate) fn dequantize_row(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => f32_le(bytes, out),
        GgmlType::F16 => f16_le(bytes, out),
        GgmlType::BF16 => bf16_le(bytes, out),
        GgmlType::Q8_0 => blocks::<34, 32>(bytes, out, q8_0),
        GgmlType::Q4_0 => blocks::<18, 32>(bytes, out, q4_0),
        GgmlType::Q4_1 => blocks::<20, 32>(bytes, out, q4_1),
        GgmlType::Q5_0 => blocks::<22, 32>(bytes, out, q5_0),
        GgmlType::Q5_1 => blocks::<24, 32>(bytes, out, q5_1),
        GgmlType::Q4_K => blocks::<144, QK_K>(bytes, out, q4_k),
        GgmlType::Q5_K => blocks::<176, QK_K>(bytes, out, q5_k),
        GgmlType::Q6_K => blocks::<210, QK_K>(bytes, out, q6_k),
        _ => unreachable!("validate() rejects {ty}"),
    }
}

/// Most activation rows [`dot_rows`] takes at once (its accumulators stay in L1).
pub(crate) const MAX_FUSED_ROWS: usize = 8;

/// `out[t] = dot(dequantised row, x_t)` for the `out.len()` rows of `x` (each as long as the
/// row), without materialising the row, for the block types: each block is dequantised into a
/// stack array (bit-exactly as [`dequantize_row`]) and multiplied with every activation row's
/// slice while still in registers. The sums run in the same order as dequantising the whole
/// row first and taking 16-lane dot products, so both give identical results. `false` (and
/// `out` untouched) for element types (F32, F16, BF16), which have no blocks to fuse. At most
/// [`MAX_FUSED_ROWS`] rows. With `FMA` the multiply-adds are fused (for callers compiled
/// with the FMA feature only: elsewhere `mul_add` is a slow library call).
#[inline(always)]
pub(crate) fn dot_rows<const FMA: bool>(
    ty: GgmlType,
    bytes: &[u8],
    x: &[f32],
    out: &mut [f32],
) -> bool {
    // One row (decoding) gets its own copy of the loops, with the accumulators in registers.
    if out.len() == 1 {
        dot_rows_upto::<FMA, 1>(ty, bytes, x, out)
    } else {
        dot_rows_upto::<FMA, MAX_FUSED_ROWS>(ty, bytes, x, out)
    }
}

#[inline(always)]
fn dot_rows_upto<const FMA: bool, const N: usize>(
    ty: GgmlType,
    bytes: &[u8],
    x: &[f32],
    out: &mut [f32],
) -> bool {
    match ty {
        GgmlType::Q8_0 => block_dots::<34, 32, FMA, N>(bytes, x, out, q8_0),
        GgmlType::Q4_0 => block_dots::<18, 32, FMA, N>(bytes, x, out, q4_0),
        GgmlType::Q4_1 => block_dots::<20, 32, FMA, N>(bytes, x, out, q4_1),
        GgmlType::Q5_0 => block_dots::<22, 32, FMA, N>(bytes, x, out, q5_0),
        GgmlType::Q5_1 => block_dots::<24, 32, FMA, N>(bytes, x, out, q5_1),
        GgmlType::Q4_K => block_dots::<144, QK_K, FMA, N>(bytes, x, out, q4_k),
        GgmlType::Q5_K => block_dots::<176, QK_K, FMA, N>(bytes, x, out, q5_k),
        GgmlType::Q6_K => block_dots::<210, QK_K, FMA, N>(bytes, x, out, q6_k),
        _ => return false,
    }
    true
}

#[inline(always)]
fn block_dots<const TS: usize, const BS: usize, const FMA: bool, const N: usize>(
    bytes: &[u8],
    x: &[f32],
    out: &mut [f32],
    f: fn(&[u8; TS], &mut [f32; BS]),
) {
    const W: usize = 16;
    let n = out.len().min(N);
    if n == 0 {
        return;
    }
    let cols = x.len() / out.len();
    let mut acc = [[0.0f32; W]; N];
    let mut w = [0.0f32; BS];
    for (k, b) in bytes.chunks_exact(TS).enumerate() {
        let Ok(b) = b.try_into() else { unreachable!() };
        f(b, &mut w);
        for (t, acc) in acc.iter_mut().enumerate().take(n) {
            let start = t * cols + k * BS;
            let xb = &x[start..start + BS];
            for (wc, xc) in w.chunks_exact(W).zip(xb.chunks_exact(W)) {
                for i in 0..W {
                    acc[i] = if FMA {
                        wc[i].mul_add(xc[i], acc[i])
                    } else {
                        acc[i] + wc[i] * xc[i]
                    };
                }
            }
        }
    }
    for (y, acc) in out.iter_mut().zip(&acc) {
        *y = acc.iter().sum();
    }
}

#[inline(always)]
fn blocks<const TS: usize, const BS: usize>(
    bytes: &[u8],
    out: &mut [f32],
    f: fn(&[u8; TS], &mut [f32; BS]),
) {
    for (b, y) in bytes.chunks_exact(TS).zip(out.chunks_exact_mut(BS)) {
        // Infallible: chunks_exact yields exactly TS / BS items.
        let (Ok(b), Ok(y)) = (b.try_into(), y.try_into()) else {
            unreachable!()
        };
        f(b, y);
    }
}

/// Exact IEEE half → single conversion on bits (numpy's `npy_halfbits_to_floatbits`):
/// subnormals are normalised exactly, Inf/NaN keep their payload.
#[inline(always)]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = if exp == 0x1f {
        0x7f80_0000 | (man << 13)
    } else if exp == 0 {
        // man × 2^-24: exact (man < 2^10; the product is a normal f32). 0 stays 0.
        (man as f32 * (1.0 / 16_777_216.0)).to_bits()
    } else {
        ((exp + 112) << 23) | (man << 13)
    };
    f32::from_bits(sign | bits)
}

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

#[inline(always)]
fn f32_le(bytes: &[u8], out: &mut [f32]) {
    for (y, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

#[inline(always)]
fn f16_le(bytes: &[u8], out: &mut [f32]) {
    for (y, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *y = f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
    }
}

#[inline(always)]
fn bf16_le(bytes: &[u8], out: &mut [f32]) {
    for (y, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *y = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
    }
}

/// Q8_0: `d: f16, qs: [i8; 32]`; `y = q * d`.
#[inline(always)]
fn q8_0(b: &[u8; 34], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = (q as i8) as f32 * d;
    }
}

/// Q4_0: `d: f16, qs: [u8; 16]`; element j < 16 is the low nibble of `qs[j]`, j ≥ 16
/// the high nibble of `qs[j - 16]`; `y = d * (q - 8)`.
#[inline(always)]
fn q4_0(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    let (lo, hi) = y.split_at_mut(16);
    for j in 0..16 {
        lo[j] = d * ((qs[j] & 0x0f) as i32 - 8) as f32;
        hi[j] = d * ((qs[j] >> 4) as i32 - 8) as f32;
    }
}

/// Q4_1: `d: f16, m: f16, qs: [u8; 16]`; `y = d * q + m`.
#[inline(always)]
fn q4_1(b: &[u8; 20], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    let (lo, hi) = y.split_at_mut(16);
    for j in 0..16 {
        lo[j] = d * (qs[j] & 0x0f) as f32 + m;
        hi[j] = d * (qs[j] >> 4) as f32 + m;
    }
}

/// Q5_0: `d: f16, qh: u32, qs: [u8; 16]`; bit j of `qh` is bit 4 of element j;
/// `y = d * (q - 16)`.
#[inline(always)]
fn q5_0(b: &[u8; 22], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    let (lo, hi) = y.split_at_mut(16);
    for j in 0..16 {
        let l = (qs[j] & 0x0f) as u32 | (((qh >> j) & 1) << 4);
        let h = (qs[j] >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4);
        lo[j] = d * (l as i32 - 16) as f32;
        hi[j] = d * (h as i32 - 16) as f32;
    }
}

/// Q5_1: `d: f16, m: f16, qh: u32, qs: [u8; 16]`; `y = d * q + m`.
#[inline(always)]
fn q5_1(b: &[u8; 24], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    let (lo, hi) = y.split_at_mut(16);
    for j in 0..16 {
        let l = (qs[j] & 0x0f) as u32 | (((qh >> j) & 1) << 4);
        let h = (qs[j] >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4);
        lo[j] = d * l as f32 + m;
        hi[j] = d * h as f32 + m;
    }
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

/// Q4_K: `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`. Eight sub-blocks of 32;
/// sub-block `2i` takes the low nibbles of `qs[32i..32i+32]`, `2i+1` the high nibbles.
/// `y = (d * sc) * q - (dmin * m)`.
#[inline(always)]
fn q4_k(b: &[u8; 144], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let (sc, mn) = k_scales_mins(&b[4..16]);
    let qs = &b[16..144];
    for i in 0..4 {
        let d1 = d * sc[2 * i] as f32;
        let m1 = dmin * mn[2 * i] as f32;
        let d2 = d * sc[2 * i + 1] as f32;
        let m2 = dmin * mn[2 * i + 1] as f32;
        let q = &qs[32 * i..32 * i + 32];
        let (y1, y2) = y[64 * i..64 * i + 64].split_at_mut(32);
        for l in 0..32 {
            y1[l] = d1 * (q[l] & 0x0f) as f32 - m1;
            y2[l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// Q5_K: `d, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`; as Q4_K with
/// bit 4 of element `l` of sub-block `s` in bit `s` of `qh[l]`.
#[inline(always)]
fn q5_k(b: &[u8; 176], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let (sc, mn) = k_scales_mins(&b[4..16]);
    let qh = &b[16..48];
    let qs = &b[48..176];
    for i in 0..4 {
        let (s1, s2) = (2 * i, 2 * i + 1);
        let d1 = d * sc[s1] as f32;
        let m1 = dmin * mn[s1] as f32;
        let d2 = d * sc[s2] as f32;
        let m2 = dmin * mn[s2] as f32;
        let q = &qs[32 * i..32 * i + 32];
        let (y1, y2) = y[64 * i..64 * i + 64].split_at_mut(32);
        for l in 0..32 {
            let q1 = (q[l] & 0x0f) | (((qh[l] >> s1) & 1) << 4);
            let q2 = (q[l] >> 4) | (((qh[l] >> s2) & 1) << 4);
            y1[l] = d1 * q1 as f32 - m1;
            y2[l] = d2 * q2 as f32 - m2;
        }
    }
}

/// Q6_K: `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`. Two halves of 128;
/// in half `h`, element `l + 32k` (k = 0..4) takes the low (k even) or high (k odd) nibble
/// of `ql[64h + l + 32(k & 1)]` and bits `2k..2k+2` of `qh[32h + l]`; each run of 16
/// elements has its own scale. `y = (d * scale) * (q - 32)`.
#[inline(always)]
fn q6_k(b: &[u8; 210], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 208);
    let mut ds = [0.0f32; 16];
    for (ds, &s) in ds.iter_mut().zip(&b[192..208]) {
        *ds = d * (s as i8) as f32;
    }
    for h in 0..2 {
        let ql = &b[64 * h..64 * h + 64];
        let qh = &b[128 + 32 * h..128 + 32 * h + 32];
        let y = &mut y[128 * h..128 * h + 128];
        let ds = &ds[8 * h..8 * h + 8];
        for g in 0..2 {
            // l in 16g..16g+16 shares scale index g (+2 per 32-element step).
            for l in 16 * g..16 * g + 16 {
                let q1 = (ql[l] & 0x0f) | ((qh[l] & 0x03) << 4);
                let q2 = (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 0x03) << 4);
                let q3 = (ql[l] >> 4) | (((qh[l] >> 4) & 0x03) << 4);
                let q4 = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 0x03) << 4);
                y[l] = ds[g] * (q1 as i32 - 32) as f32;
                y[l + 32] = ds[g + 2] * (q2 as i32 - 32) as f32;
                y[l + 64] = ds[g + 4] * (q3 as i32 - 32) as f32;
                y[l + 96] = ds[g + 6] * (q4 as i32 - 32) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exhaustive check of the f16 conversion against the definition
    /// `(-1)^s × 2^(e-15) × (1 + m/1024)` (subnormal: `2^-14 × m/1024`), in f64.
    #[test]
    fn f16_conversion_exhaustive() {
        for h in 0..=u16::MAX {
            let got = f16_bits_to_f32(h);
            let s = if h & 0x8000 != 0 { -1.0f64 } else { 1.0 };
            let e = ((h >> 10) & 0x1f) as i32;
            let m = (h & 0x3ff) as f64;
            if e == 0x1f {
                assert_eq!(
                    got.to_bits(),
                    ((h as u32 & 0x8000) << 16) | 0x7f80_0000 | ((h as u32 & 0x3ff) << 13)
                );
                continue;
            }
            let want = if e == 0 {
                s * m / 1024.0 * 2f64.powi(-14)
            } else {
                s * (1.0 + m / 1024.0) * 2f64.powi(e - 15)
            };
            assert_eq!(got as f64, want, "h = {h:#06x}");
            assert_eq!(got.is_sign_negative(), h & 0x8000 != 0, "sign of {h:#06x}");
        }
    }
}

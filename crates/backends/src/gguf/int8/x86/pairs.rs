//! 512-bit kernels for several activation rows (a verification pass, a prefill) on AVX-512
//! VNNI: the rows come in pairs ([`PairRow`]), the same 32 values of both rows side by side,
//! so one 512-bit multiply takes a weight chunk (unpacked once, in 256 bits, and broadcast to
//! both halves) with two rows at once. That halves the instructions per multiply-add of the
//! 256-bit kernels and leaves room in the 32 vector registers for four pairs.
//!
//! Every lane computes exactly what the 256-bit kernel ([`super`]) computes for its row, in
//! the same order (the same integer sums, the same `f32` products, accumulations and final
//! horizontal sums), so a row's result is bit-identical whether it is multiplied alone
//! (decoding) or in a pair (verification): verifying drafts gives the logits of decoding
//! them one by one. The module's safety contract is [`super`]'s, with pairs for rows.
#![allow(unsafe_op_in_unsafe_fn)]
// The kernels step several fixed-size arrays of registers (accumulators, row pointers) in
// lock-step by row index; zipping three or four of them would hide that.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::super::activations::PairRow;
use super::{
    Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0, SmallFormat, f16_at, hsum, hsum128, k45_chunk,
    k45_scales, load, q6_half, q6_scale, q6_scales, scale_and_min, scale_of,
};
use crate::gguf::matmul::{PREFETCH_BYTES, prefetch};
use crate::gguf::types::GgmlType;

/// Most pairs one call takes.
pub(crate) const PAIR_TILE: usize = 4;

/// For each weight row of `bytes` (`row_bytes` each) and each of the `n` activation rows that
/// `pairs` hold (row `2p` and `2p + 1` in pair `p`; an odd last row paired with itself),
/// `out[row * n + t] = row · t`; `false` for a type without a kernel.
///
/// # Safety
/// The CPU must have AVX2, FMA, F16C, AVX512F/BW/DQ/VL and AVX512-VNNI; `pairs` hold
/// `n.div_ceil(2)` pairs of rows as long as a weight row, quantised for `ty`; `out` holds
/// `rows × n` values.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq,avx512vnni")]
pub(crate) unsafe fn rows_pairs(
    ty: GgmlType,
    bytes: &[u8],
    row_bytes: usize,
    pairs: &[PairRow],
    n: usize,
    out: &mut [f32],
) -> bool {
    let kernel = match ty {
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q4_K => q4_k,
        GgmlType::Q5_K => q5_k,
        GgmlType::Q6_K => q6_k,
        _ => return false,
    };
    kernel(bytes, row_bytes, pairs, n, out);
    true
}

/// One weight format's kernel for `P` pairs: `out[2p]`, `out[2p + 1]` for pair `p`.
trait PairFormat {
    unsafe fn pairs<const P: usize>(w: &[u8], pairs: &[PairRow], out: &mut [f32]);
}

/// The loop over a task's weight rows runs inside the loop over tiles of pairs: one tile's
/// activations (at most 8 rows) stay in L1 while every weight row of the task passes by,
/// instead of every row's activations streaming from L2 for each weight row.
macro_rules! entries {
    ($($name:ident $format:ident),*) => {$(
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq,avx512vnni")]
        unsafe fn $name(bytes: &[u8], row_bytes: usize, pairs: &[PairRow], n: usize, out: &mut [f32]) {
            let mut two = [0.0f32; 2 * PAIR_TILE];
            let mut start = 0;
            while start < pairs.len() {
                let p = &pairs[start..];
                let count = p.len().min(PAIR_TILE);
                let first = 2 * start;
                let last = (first + 2 * count).min(n);
                let rows = bytes.chunks_exact(row_bytes).zip(out.chunks_exact_mut(n));
                for (i, (w, y)) in rows.enumerate() {
                    if start == 0 {
                        prefetch(bytes, i * row_bytes + PREFETCH_BYTES, row_bytes);
                    }
                    match count {
                        1 => $format::pairs::<1>(w, p, &mut two),
                        2 => $format::pairs::<2>(w, p, &mut two),
                        3 => $format::pairs::<3>(w, p, &mut two),
                        _ => $format::pairs::<4>(w, p, &mut two),
                    }
                    y[first..last].copy_from_slice(&two[..last - first]);
                }
                start += count;
            }
        }
    )*};
}
entries!(q4_0 Q4_0, q4_1 Q4_1, q5_0 Q5_0, q5_1 Q5_1, q8_0 Q8_0, q4_k Q4_K, q5_k Q5_K, q6_k Q6_K);

/// The 256-bit weight vector `v` in both halves.
#[inline(always)]
unsafe fn both(v: __m256i) -> __m512i {
    _mm512_broadcast_i64x4(v)
}

/// `a` in the first 8 lanes, `b` in the last 8.
#[inline(always)]
unsafe fn halves(a: f32, b: f32) -> __m512 {
    _mm512_insertf32x8::<1>(_mm512_castps256_ps512(_mm256_set1_ps(a)), _mm256_set1_ps(b))
}

/// The two rows' horizontal sums, as the 256-bit kernel takes them.
#[inline(always)]
unsafe fn hsum_halves(v: __m512) -> (f32, f32) {
    (
        hsum(_mm512_castps512_ps256(v)),
        hsum(_mm512_extractf32x8_ps::<1>(v)),
    )
}

/// `vpdpwssd` itself: LLVM's generic tuning rewrites the intrinsic into `vpmaddwd` +
/// `vpaddd`, one instruction more per multiply on the critical port; the benchmarks
/// (`--bench quant_matmul`, 5 and 64 rows) run faster with the fused instruction.
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn dpwssd512(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
    let mut acc = acc;
    std::arch::asm!(
        "vpdpwssd {acc}, {a}, {b}",
        acc = inout(zmm_reg) acc,
        a = in(zmm_reg) a,
        b = in(zmm_reg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

#[inline(always)]
unsafe fn load512(p: *const i8) -> __m512i {
    _mm512_loadu_si512(p.cast())
}

/// The 32-value formats: per block and pair, one `dpbusd` for both rows, the rows' scales
/// from one load; even and odd blocks in two sets of accumulators, offsets or minimums in
/// lanes 0 and 8 of a third and fourth (as the 256-bit kernel's scalar chains).
#[inline(always)]
unsafe fn small_pairs<const P: usize, S: SmallFormat>(
    w: &[u8],
    pairs: &[PairRow],
    out: &mut [f32],
) {
    let blocks = w.len() / S::BYTES;
    let (mut acc0, mut acc1) = ([_mm512_setzero_ps(); P], [_mm512_setzero_ps(); P]);
    let (mut ex0, mut ex1) = ([_mm512_setzero_ps(); P], [_mm512_setzero_ps(); P]);
    let base = w.as_ptr();
    let mut k = 0;
    while k + 1 < blocks {
        small_pair_block::<P, S>(base, k, pairs, &mut acc0, &mut ex0);
        small_pair_block::<P, S>(base, k + 1, pairs, &mut acc1, &mut ex1);
        k += 2;
    }
    if k < blocks {
        small_pair_block::<P, S>(base, k, pairs, &mut acc0, &mut ex0);
    }
    for p in 0..P {
        let (t0, t1) = hsum_halves(_mm512_add_ps(acc0[p], acc1[p]));
        let mut lanes = [0.0f32; 16];
        _mm512_storeu_ps(lanes.as_mut_ptr(), _mm512_add_ps(ex0[p], ex1[p]));
        let (e0, e1) = (lanes[0], lanes[8]);
        let (y0, y1) = if S::MIN {
            (t0 + e0, t1 + e1)
        } else {
            (t0 - S::OFFSET * e0, t1 - S::OFFSET * e1)
        };
        *out.get_unchecked_mut(2 * p) = y0;
        *out.get_unchecked_mut(2 * p + 1) = y1;
    }
}

#[inline(always)]
unsafe fn small_pair_block<const P: usize, S: SmallFormat>(
    base: *const u8,
    k: usize,
    pairs: &[PairRow],
    acc: &mut [__m512; P],
    ex: &mut [__m512; P],
) {
    let b = base.add(k * S::BYTES);
    let (d, m) = scale_and_min(b, S::MIN);
    let u = both(S::unpack(b));
    let (dv, mv) = (
        _mm512_set1_ps(d),
        _mm512_set1_ps(if S::MIN { m } else { d }),
    );
    for p in 0..P {
        let pr = pairs.get_unchecked(p);
        let a = load512(pr.qs.as_ptr().add(64 * k));
        let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, a);
        let s = _mm512_mul_ps(dv, _mm512_loadu_ps(pr.scales.as_ptr().add(16 * k)));
        acc[p] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(dot), acc[p]);
        let sums = _mm512_loadu_ps(pr.sums.as_ptr().add(16 * k));
        ex[p] = _mm512_add_ps(ex[p], _mm512_mul_ps(mv, sums));
    }
}

macro_rules! small_pair_format {
    ($($t:ident),*) => {$(
        impl PairFormat for $t {
            #[inline(always)]
            unsafe fn pairs<const P: usize>(w: &[u8], pairs: &[PairRow], out: &mut [f32]) {
                small_pairs::<P, $t>(w, pairs, out)
            }
        }
    )*};
}
small_pair_format!(Q4_0, Q4_1, Q5_0, Q5_1);

impl PairFormat for Q8_0 {
    #[inline(always)]
    unsafe fn pairs<const P: usize>(w: &[u8], pairs: &[PairRow], out: &mut [f32]) {
        let blocks = w.len() / 34;
        let (mut acc0, mut acc1) = ([_mm512_setzero_ps(); P], [_mm512_setzero_ps(); P]);
        let mut k = 0;
        while k + 1 < blocks {
            q8_0_pair_block::<P>(w.as_ptr(), k, pairs, &mut acc0);
            q8_0_pair_block::<P>(w.as_ptr(), k + 1, pairs, &mut acc1);
            k += 2;
        }
        if k < blocks {
            q8_0_pair_block::<P>(w.as_ptr(), k, pairs, &mut acc0);
        }
        for p in 0..P {
            let (y0, y1) = hsum_halves(_mm512_add_ps(acc0[p], acc1[p]));
            *out.get_unchecked_mut(2 * p) = y0;
            *out.get_unchecked_mut(2 * p + 1) = y1;
        }
    }
}

#[inline(always)]
unsafe fn q8_0_pair_block<const P: usize>(
    base: *const u8,
    k: usize,
    pairs: &[PairRow],
    acc: &mut [__m512; P],
) {
    let b = base.add(k * 34);
    let d = f16_at(b);
    let q = load(b.add(2));
    // |q| as unsigned bytes; the activations take q's sign (AVX-512 has no `vpsignb`: negate
    // where q < 0; where q = 0 the weight is 0 anyway).
    let u = both(_mm256_sign_epi8(q, q));
    let negative = _mm512_movepi8_mask(both(q));
    let dv = _mm512_set1_ps(d);
    for p in 0..P {
        let pr = pairs.get_unchecked(p);
        let a = load512(pr.qs.as_ptr().add(64 * k));
        let s = _mm512_mask_sub_epi8(a, negative, _mm512_setzero_si512(), a);
        let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, s);
        let scale = _mm512_mul_ps(dv, _mm512_loadu_ps(pr.scales.as_ptr().add(16 * k)));
        acc[p] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(dot), acc[p]);
    }
}

/// Q4_K and Q5_K: per 64-value chunk, both sub-blocks' nibbles broadcast to both halves and
/// multiplied with each pair's two chunks (`maddubs`, then `dpwssd` with the sub-block scale);
/// per super-block one scaled accumulation per pair, and the minimums of both rows in one
/// 256-bit `madd`.
#[inline(always)]
unsafe fn k45_pairs<const P: usize, const Q5: bool>(w: &[u8], pairs: &[PairRow], out: &mut [f32]) {
    let bytes = if Q5 { 176 } else { 144 };
    let blocks = w.len() / bytes;
    let mut acc = [_mm512_setzero_ps(); P];
    let mut acc_min = [_mm256_setzero_ps(); P];
    for k in 0..blocks {
        let b = w.as_ptr().add(k * bytes);
        let d = f16_at(b);
        let dmin = f16_at(b.add(2));
        let (scales, mins) = k45_scales(b);
        let mins = _mm256_set_m128i(mins, mins);
        let qs = b.add(if Q5 { 48 } else { 16 });
        let mut qh = if Q5 {
            load(b.add(16))
        } else {
            _mm256_setzero_si256()
        };
        let mut sumi = [_mm512_setzero_si512(); P];
        for i in 0..4 {
            let (lo, hi) = k45_chunk::<Q5>(qs, i, &mut qh);
            let (lo, hi) = (both(lo), both(hi));
            let (s1, s2) = (
                both(scale_of(scales, 2 * i)),
                both(scale_of(scales, 2 * i + 1)),
            );
            for p in 0..P {
                let q8 = pairs
                    .get_unchecked(p)
                    .qs
                    .as_ptr()
                    .add(2 * (256 * k + 64 * i));
                let m1 = _mm512_maddubs_epi16(lo, load512(q8));
                sumi[p] = dpwssd512(sumi[p], m1, s1);
                let m2 = _mm512_maddubs_epi16(hi, load512(q8.add(64)));
                sumi[p] = dpwssd512(sumi[p], m2, s2);
            }
        }
        for p in 0..P {
            let pr = pairs.get_unchecked(p);
            let (da0, da1) = (
                *pr.first.scales.get_unchecked(k),
                *pr.second.scales.get_unchecked(k),
            );
            acc[p] = _mm512_fmadd_ps(
                halves(d * da0, d * da1),
                _mm512_cvtepi32_ps(sumi[p]),
                acc[p],
            );
            let sums = _mm256_set_m128i(
                _mm_loadu_si128(pr.second.sums32.as_ptr().add(8 * k).cast()),
                _mm_loadu_si128(pr.first.sums32.as_ptr().add(8 * k).cast()),
            );
            let m = _mm256_cvtepi32_ps(_mm256_madd_epi16(mins, sums));
            let dm = _mm256_set_m128(_mm_set1_ps(dmin * da1), _mm_set1_ps(dmin * da0));
            acc_min[p] = _mm256_fmadd_ps(dm, m, acc_min[p]);
        }
    }
    for p in 0..P {
        let (t0, t1) = hsum_halves(acc[p]);
        let m0 = hsum128(_mm256_castps256_ps128(acc_min[p]));
        let m1 = hsum128(_mm256_extractf128_ps::<1>(acc_min[p]));
        *out.get_unchecked_mut(2 * p) = t0 - m0;
        *out.get_unchecked_mut(2 * p + 1) = t1 - m1;
    }
}

impl PairFormat for Q4_K {
    #[inline(always)]
    unsafe fn pairs<const P: usize>(w: &[u8], pairs: &[PairRow], out: &mut [f32]) {
        k45_pairs::<P, false>(w, pairs, out)
    }
}

impl PairFormat for Q5_K {
    #[inline(always)]
    unsafe fn pairs<const P: usize>(w: &[u8], pairs: &[PairRow], out: &mut [f32]) {
        k45_pairs::<P, true>(w, pairs, out)
    }
}

impl PairFormat for Q6_K {
    #[inline(always)]
    unsafe fn pairs<const P: usize>(w: &[u8], pairs: &[PairRow], out: &mut [f32]) {
        let blocks = w.len() / 210;
        let mut acc = [_mm512_setzero_ps(); P];
        for k in 0..blocks {
            let b = w.as_ptr().add(k * 210);
            let d = f16_at(b.add(208));
            let scales = b.add(192).cast::<i8>();
            let scale16 = q6_scales(scales);
            let mut sumi = [_mm512_setzero_si512(); P];
            for h in 0..2 {
                for (j, q) in q6_half(b, h).iter().enumerate() {
                    let (q, scale) = (both(*q), both(q6_scale(scale16, h, j)));
                    for p in 0..P {
                        let q8 = pairs.get_unchecked(p).qs.as_ptr();
                        let a = load512(q8.add(2 * (256 * k + 128 * h + 32 * j)));
                        sumi[p] = dpwssd512(sumi[p], _mm512_maddubs_epi16(q, a), scale);
                    }
                }
            }
            // The values are q - 32: subtract 32 · Σ scale · (sum of 16 activations).
            let scale16 = both(scale16);
            for p in 0..P {
                let pr = pairs.get_unchecked(p);
                let sums = _mm512_inserti64x4::<1>(
                    _mm512_castsi256_si512(_mm256_loadu_si256(
                        pr.first.sums16.as_ptr().add(16 * k).cast(),
                    )),
                    _mm256_loadu_si256(pr.second.sums16.as_ptr().add(16 * k).cast()),
                );
                let offset = _mm512_slli_epi32::<5>(_mm512_madd_epi16(scale16, sums));
                let (da0, da1) = (
                    *pr.first.scales.get_unchecked(k),
                    *pr.second.scales.get_unchecked(k),
                );
                let total = _mm512_cvtepi32_ps(_mm512_sub_epi32(sumi[p], offset));
                acc[p] = _mm512_fmadd_ps(halves(d * da0, d * da1), total, acc[p]);
            }
        }
        for p in 0..P {
            let (y0, y1) = hsum_halves(acc[p]);
            *out.get_unchecked_mut(2 * p) = y0;
            *out.get_unchecked_mut(2 * p + 1) = y1;
        }
    }
}

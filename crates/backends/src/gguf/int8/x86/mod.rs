//! The integer dot products on x86-64 with 256-bit vectors: AVX2 (`maddubs` + `madd`, as
//! ggml's `arch/x86/quants.c`), and AVX-512 VNNI on 256-bit registers (`dpbusd`, and `dpwssd`
//! that fuses `madd` with the accumulation).
//!
//! Each kernel multiplies one weight row with `R` activation rows: the weight bytes are
//! loaded and unpacked once and used for every row, each row keeps its own accumulators, so a
//! row's result does not depend on `R` (a verification pass gives bit-identical logits to
//! one position at a time). Both instruction sets give identical results too: `maddubs`
//! never saturates on these formats (at most 2 · 128 · 127 < 2¹⁵ per pair, the sign trick of
//! Q8_0 included), so the integer sums are exact either way, and the float steps are the same.
//!
//! Safety contract of every `unsafe fn` here: the CPU has the features of the entry point
//! that calls it (`avx2,fma,f16c`, plus `avx512vnni,avx512vl` when `VNNI`), `w` holds whole
//! blocks of the kernel's format, each activation row holds `blocks × block size` values in
//! blocks of the format's activation type, and `acts.len() >= R`, `out.len() >= R`. Under that
//! contract the bodies are nothing but intrinsics and in-bounds pointer reads, so they are not
//! split into `unsafe` blocks one by one.
#![allow(unsafe_op_in_unsafe_fn)]
// The kernels step several fixed-size arrays of registers (accumulators, row pointers) in
// lock-step by row index; zipping three or four of them would hide that.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

mod pairs;

pub(crate) use pairs::rows_pairs;

use super::activations::ActivationRow;
use crate::gguf::matmul::{PREFETCH_BYTES, prefetch};
use crate::gguf::types::GgmlType;

/// Most activation rows one call takes with AVX2 (16 vector registers).
pub(crate) const AVX2_TILE: usize = 4;
/// Most activation rows one call takes with AVX-512 (32 vector registers).
pub(crate) const AVX512_TILE: usize = 8;

/// AVX2 entry point: for each weight row of `bytes` (`row_bytes` each) and each activation
/// row `t` of `acts`, `out[row * n + t] = row · acts[t]` (`n = acts.len()`, activation rows in
/// tiles of [`AVX2_TILE`]); `false` for a type without a kernel.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; see the module's contract for the slices (each row
/// of `bytes` is one `w`), and `out` holds `rows × n` values.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn rows_avx2(
    ty: GgmlType,
    bytes: &[u8],
    row_bytes: usize,
    acts: &[ActivationRow],
    out: &mut [f32],
) -> bool {
    let kernel = match ty {
        GgmlType::Q4_0 => avx2::q4_0,
        GgmlType::Q4_1 => avx2::q4_1,
        GgmlType::Q5_0 => avx2::q5_0,
        GgmlType::Q5_1 => avx2::q5_1,
        GgmlType::Q8_0 => avx2::q8_0,
        GgmlType::Q4_K => avx2::q4_k,
        GgmlType::Q5_K => avx2::q5_k,
        GgmlType::Q6_K => avx2::q6_k,
        _ => return false,
    };
    kernel(bytes, row_bytes, acts, out);
    true
}

/// AVX-512 VNNI entry point (256-bit registers), as [`rows_avx2`] with tiles of
/// [`AVX512_TILE`].
///
/// # Safety
/// The CPU must have AVX2, FMA, F16C, AVX512-VNNI and AVX512-VL; slices as [`rows_avx2`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
pub(crate) unsafe fn rows_vnni(
    ty: GgmlType,
    bytes: &[u8],
    row_bytes: usize,
    acts: &[ActivationRow],
    out: &mut [f32],
) -> bool {
    let kernel = match ty {
        GgmlType::Q4_0 => vnni::q4_0,
        GgmlType::Q4_1 => vnni::q4_1,
        GgmlType::Q5_0 => vnni::q5_0,
        GgmlType::Q5_1 => vnni::q5_1,
        GgmlType::Q8_0 => vnni::q8_0,
        GgmlType::Q4_K => vnni::q4_k,
        GgmlType::Q5_K => vnni::q5_k,
        GgmlType::Q6_K => vnni::q6_k,
        _ => return false,
    };
    kernel(bytes, row_bytes, acts, out);
    true
}

/// One function per (format, instruction set), compiled with that set's features, into which
/// the generic loops below are inlined (a generic loop compiled without the features would
/// call every intrinsic instead of emitting it). Each runs over all the rows of a task, so the
/// call costs once per task, not once per row.
macro_rules! kernels {
    ($module:ident, $vnni:literal, $tile:expr, $features:literal) => {
        mod $module {
            use super::*;
            kernels!(@each $vnni, $tile, $features,
                q4_0 Q4_0, q4_1 Q4_1, q5_0 Q5_0, q5_1 Q5_1, q8_0 Q8_0, q4_k Q4_K, q5_k Q5_K,
                q6_k Q6_K);
        }
    };
    (@each $vnni:literal, $tile:expr, $features:literal, $($name:ident $format:ident),*) => {$(
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $name(
            bytes: &[u8],
            row_bytes: usize,
            acts: &[ActivationRow],
            out: &mut [f32],
        ) {
            let n = acts.len();
            if n == 1 {
                for (i, (w, y)) in bytes.chunks_exact(row_bytes).zip(out.iter_mut()).enumerate() {
                    prefetch(bytes, i * row_bytes + PREFETCH_BYTES, row_bytes);
                    $format::dot::<$vnni, 1>(w, acts, std::slice::from_mut(y));
                }
                return;
            }
            // Tiles of activation rows outside, weight rows inside: a tile's activations stay
            // in L1 while the task's weight rows pass by.
            let mut tile_out = [0.0f32; AVX512_TILE];
            let mut start = 0;
            while start < n {
                let a = &acts[start..];
                let count = a.len().min($tile);
                let rows = bytes.chunks_exact(row_bytes).zip(out.chunks_exact_mut(n));
                for (i, (w, y)) in rows.enumerate() {
                    if start == 0 {
                        prefetch(bytes, i * row_bytes + PREFETCH_BYTES, row_bytes);
                    }
                    tile::<$vnni, $format>(count, w, a, &mut tile_out);
                    y[start..start + count].copy_from_slice(&tile_out[..count]);
                }
                start += count;
            }
        }
    )*};
}
kernels!(avx2, false, AVX2_TILE, "avx2,fma,f16c");
kernels!(
    vnni,
    true,
    AVX512_TILE,
    "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"
);

/// Formats, as types so that each (format, tile) pair is one monomorphised loop.
#[allow(non_camel_case_types)]
struct Q4_0;
#[allow(non_camel_case_types)]
struct Q4_1;
#[allow(non_camel_case_types)]
struct Q5_0;
#[allow(non_camel_case_types)]
struct Q5_1;
#[allow(non_camel_case_types)]
struct Q8_0;
#[allow(non_camel_case_types)]
struct Q4_K;
#[allow(non_camel_case_types)]
struct Q5_K;
#[allow(non_camel_case_types)]
struct Q6_K;

/// One weight format's kernel for `R` activation rows.
trait Format {
    unsafe fn dot<const V: bool, const R: usize>(w: &[u8], acts: &[ActivationRow], out: &mut [f32]);
}

/// The first `count` (1 to 8) rows of `acts` in one tile.
#[inline(always)]
unsafe fn tile<const V: bool, F: Format>(
    count: usize,
    w: &[u8],
    acts: &[ActivationRow],
    out: &mut [f32],
) {
    match count {
        1 => F::dot::<V, 1>(w, acts, out),
        2 => F::dot::<V, 2>(w, acts, out),
        3 => F::dot::<V, 3>(w, acts, out),
        4 => F::dot::<V, 4>(w, acts, out),
        5 => F::dot::<V, 5>(w, acts, out),
        6 => F::dot::<V, 6>(w, acts, out),
        7 => F::dot::<V, 7>(w, acts, out),
        _ => F::dot::<V, 8>(w, acts, out),
    }
}

/// `acc + Σ u·s` over each group of 4 bytes, per 32-bit lane (`u` unsigned, `s` signed).
#[inline(always)]
unsafe fn dot_u8i8<const V: bool>(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    if V {
        _mm256_dpbusd_epi32(acc, u, s)
    } else {
        let pairs = _mm256_maddubs_epi16(u, s);
        _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }
}

/// `acc + Σ (u·s pair sums) × scale` per 32-bit lane, `scale` being 16-bit lanes.
#[inline(always)]
unsafe fn dot_u8i8_scaled<const V: bool>(
    acc: __m256i,
    u: __m256i,
    s: __m256i,
    scale: __m256i,
) -> __m256i {
    let pairs = _mm256_maddubs_epi16(u, s);
    if V {
        _mm256_dpwssd_epi32(acc, pairs, scale)
    } else {
        _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, scale))
    }
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

#[inline(always)]
unsafe fn hsum128(v: __m128) -> f32 {
    let s = _mm_add_ps(v, _mm_movehl_ps(v, v));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// The f16 at `p` (unaligned), converted exactly.
#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = p.cast::<u16>().read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline(always)]
unsafe fn load(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p.cast())
}

#[inline(always)]
unsafe fn load_i8(p: *const i8) -> __m256i {
    _mm256_loadu_si256(p.cast())
}

/// 16 bytes of packed nibbles as 32 bytes: the low nibbles first, then the high ones (the
/// element order of the 32-value formats).
#[inline(always)]
unsafe fn nibbles_32(p: *const u8) -> __m256i {
    let qs = _mm_loadu_si128(p.cast());
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(qs), qs);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// The 32 bits of `qh` as 32 bytes of `0x10` (bit set) or `0` (ggml `bytes_from_bits_32`).
#[inline(always)]
unsafe fn bit4_bytes(qh: u32) -> __m256i {
    let shuffle = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), shuffle);
    let bits = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
    let set = _mm256_cmpeq_epi8(bits, _mm256_set1_epi64x(-1));
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// A 32-value format: its bytes per block, the 32 unsigned values of a block, and how they
/// map to weights: `d · (q - OFFSET)`, or `d · q + m` with `MIN` (`m` the f16 at byte 2).
trait SmallFormat {
    const BYTES: usize;
    const OFFSET: f32;
    const MIN: bool;
    unsafe fn unpack(block: *const u8) -> __m256i;
}

impl SmallFormat for Q4_0 {
    const BYTES: usize = 18;
    const OFFSET: f32 = 8.0;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(b: *const u8) -> __m256i {
        nibbles_32(b.add(2))
    }
}

impl SmallFormat for Q4_1 {
    const BYTES: usize = 20;
    const OFFSET: f32 = 0.0;
    const MIN: bool = true;
    #[inline(always)]
    unsafe fn unpack(b: *const u8) -> __m256i {
        nibbles_32(b.add(4))
    }
}

impl SmallFormat for Q5_0 {
    const BYTES: usize = 22;
    const OFFSET: f32 = 16.0;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(b: *const u8) -> __m256i {
        let qh = u32::from_le(b.add(2).cast::<u32>().read_unaligned());
        _mm256_or_si256(nibbles_32(b.add(6)), bit4_bytes(qh))
    }
}

impl SmallFormat for Q5_1 {
    const BYTES: usize = 24;
    const OFFSET: f32 = 0.0;
    const MIN: bool = true;
    #[inline(always)]
    unsafe fn unpack(b: *const u8) -> __m256i {
        let qh = u32::from_le(b.add(4).cast::<u32>().read_unaligned());
        _mm256_or_si256(nibbles_32(b.add(8)), bit4_bytes(qh))
    }
}

/// The scale `d` (and, with `MIN`, the minimum `m`) of the block at `b`: the f16s at bytes 0
/// and 2, converted together.
#[inline(always)]
unsafe fn scale_and_min(b: *const u8, min: bool) -> (f32, f32) {
    if min {
        let both = _mm_cvtph_ps(_mm_cvtsi32_si128(b.cast::<i32>().read_unaligned()));
        (_mm_cvtss_f32(both), _mm_cvtss_f32(_mm_movehdup_ps(both)))
    } else {
        (f16_at(b), 0.0)
    }
}

/// The loop of the 32-value formats: per block one integer dot product per row, scaled by
/// `d · d_a`; the offset or minimum goes through the activations' scaled block sums. Even and
/// odd blocks go to two sets of accumulators, so two chains of dependent additions are in
/// flight at once.
#[inline(always)]
unsafe fn small_blocks<const V: bool, const R: usize, S: SmallFormat>(
    w: &[u8],
    acts: &[ActivationRow],
    out: &mut [f32],
) {
    let blocks = w.len() / S::BYTES;
    let a = RowPointers::<R>::new(acts);
    let (mut acc0, mut acc1) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
    let (mut extra0, mut extra1) = ([0.0f32; R], [0.0f32; R]);
    let base = w.as_ptr();
    let mut k = 0;
    while k + 1 < blocks {
        small_block::<V, R, S>(base, k, &a, &mut acc0, &mut extra0);
        small_block::<V, R, S>(base, k + 1, &a, &mut acc1, &mut extra1);
        k += 2;
    }
    if k < blocks {
        small_block::<V, R, S>(base, k, &a, &mut acc0, &mut extra0);
    }
    for r in 0..R {
        let total = hsum(_mm256_add_ps(acc0[r], acc1[r]));
        let extra = extra0[r] + extra1[r];
        *out.get_unchecked_mut(r) = if S::MIN {
            total + extra
        } else {
            total - S::OFFSET * extra
        };
    }
}

/// Block `k` of the row at `base` into one set of accumulators.
#[inline(always)]
unsafe fn small_block<const V: bool, const R: usize, S: SmallFormat>(
    base: *const u8,
    k: usize,
    a: &RowPointers<R>,
    acc: &mut [__m256; R],
    extra: &mut [f32; R],
) {
    let b = base.add(k * S::BYTES);
    let (d, m) = scale_and_min(b, S::MIN);
    let u = S::unpack(b);
    for r in 0..R {
        let p = dot_u8i8::<V>(_mm256_setzero_si256(), u, load_i8(a.qs[r].add(32 * k)));
        let s = _mm256_set1_ps(d * *a.scales[r].add(k));
        acc[r] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(p), acc[r]);
        extra[r] += if S::MIN { m } else { d } * *a.scaled_sums[r].add(k);
    }
}

macro_rules! small_format {
    ($($t:ident),*) => {$(
        impl Format for $t {
            #[inline(always)]
            unsafe fn dot<const V: bool, const R: usize>(
                w: &[u8],
                a: &[ActivationRow],
                y: &mut [f32],
            ) {
                small_blocks::<V, R, $t>(w, a, y)
            }
        }
    )*};
}
small_format!(Q4_0, Q4_1, Q5_0, Q5_1);

/// The activation rows' value, scale and sum pointers, read once per weight row instead of
/// once per block.
struct RowPointers<const R: usize> {
    qs: [*const i8; R],
    scales: [*const f32; R],
    sums16: [*const i16; R],
    sums32: [*const i16; R],
    scaled_sums: [*const f32; R],
}

impl<const R: usize> RowPointers<R> {
    #[inline(always)]
    unsafe fn new(acts: &[ActivationRow]) -> Self {
        let mut p = RowPointers {
            qs: [std::ptr::null(); R],
            scales: [std::ptr::null(); R],
            sums16: [std::ptr::null(); R],
            sums32: [std::ptr::null(); R],
            scaled_sums: [std::ptr::null(); R],
        };
        for r in 0..R {
            let a = acts.get_unchecked(r);
            p.qs[r] = a.qs.as_ptr();
            p.scales[r] = a.scales.as_ptr();
            p.sums16[r] = a.sums16.as_ptr();
            p.sums32[r] = a.sums32.as_ptr();
            p.scaled_sums[r] = a.scaled_sums32.as_ptr();
        }
        p
    }
}

impl Format for Q8_0 {
    #[inline(always)]
    unsafe fn dot<const V: bool, const R: usize>(w: &[u8], acts: &[ActivationRow], y: &mut [f32]) {
        let blocks = w.len() / 34;
        let a = RowPointers::<R>::new(acts);
        let (mut acc0, mut acc1) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
        let mut k = 0;
        while k + 1 < blocks {
            q8_0_block::<V, R>(w.as_ptr(), k, &a, &mut acc0);
            q8_0_block::<V, R>(w.as_ptr(), k + 1, &a, &mut acc1);
            k += 2;
        }
        if k < blocks {
            q8_0_block::<V, R>(w.as_ptr(), k, &a, &mut acc0);
        }
        for r in 0..R {
            *y.get_unchecked_mut(r) = hsum(_mm256_add_ps(acc0[r], acc1[r]));
        }
    }
}

#[inline(always)]
unsafe fn q8_0_block<const V: bool, const R: usize>(
    base: *const u8,
    k: usize,
    a: &RowPointers<R>,
    acc: &mut [__m256; R],
) {
    let b = base.add(k * 34);
    let d = f16_at(b);
    let q = load(b.add(2));
    // |q| as unsigned bytes, the sign moved to the activations (ggml's trick).
    let u = _mm256_sign_epi8(q, q);
    for r in 0..R {
        let s = _mm256_sign_epi8(load_i8(a.qs[r].add(32 * k)), q);
        let p = dot_u8i8::<V>(_mm256_setzero_si256(), u, s);
        let scale = _mm256_set1_ps(d * *a.scales[r].add(k));
        acc[r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc[r]);
    }
}

/// Q4_K and Q5_K: per 64 values, 32 bytes of nibbles (sub-block `2i` low, `2i + 1` high), for
/// Q5_K also bit `s` of `qh[l]` as bit 4; six-bit scales and mins per 32 values.
#[inline(always)]
unsafe fn k4_or_k5<const V: bool, const R: usize, const Q5: bool>(
    w: &[u8],
    acts: &[ActivationRow],
    out: &mut [f32],
) {
    let bytes = if Q5 { 176 } else { 144 };
    let blocks = w.len() / bytes;
    let a = RowPointers::<R>::new(acts);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut acc_min = [_mm_setzero_ps(); R];
    for k in 0..blocks {
        let b = w.as_ptr().add(k * bytes);
        let d = f16_at(b);
        let dmin = f16_at(b.add(2));
        let (scales, mins) = k45_scales(b);
        let qs = b.add(if Q5 { 48 } else { 16 });
        let mut qh = if Q5 {
            load(b.add(16))
        } else {
            _mm256_setzero_si256()
        };
        let mut sumi = [_mm256_setzero_si256(); R];
        for i in 0..4 {
            let (lo, hi) = k45_chunk::<Q5>(qs, i, &mut qh);
            let (s1, s2) = (scale_of(scales, 2 * i), scale_of(scales, 2 * i + 1));
            for r in 0..R {
                let q8 = a.qs[r].add(256 * k + 64 * i);
                sumi[r] = dot_u8i8_scaled::<V>(sumi[r], lo, load_i8(q8), s1);
                sumi[r] = dot_u8i8_scaled::<V>(sumi[r], hi, load_i8(q8.add(32)), s2);
            }
        }
        for r in 0..R {
            let da = *a.scales[r].add(k);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * da), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
            let sums = _mm_loadu_si128(a.sums32[r].add(8 * k).cast());
            let m = _mm_cvtepi32_ps(_mm_madd_epi16(mins, sums));
            acc_min[r] = _mm_fmadd_ps(_mm_set1_ps(dmin * da), m, acc_min[r]);
        }
    }
    for r in 0..R {
        *out.get_unchecked_mut(r) = hsum(acc[r]) - hsum128(acc_min[r]);
    }
}

/// The 8 six-bit scales and 8 mins of the Q4_K/Q5_K super-block at `b`, unpacked with 32-bit
/// masks as ggml does (`utmp`, `kmask1..3`): the scales as 16-bit lanes 0..8 of both 128-bit
/// halves (for [`scale_of`]), the mins as 16-bit lanes of a 128-bit vector.
#[inline(always)]
unsafe fn k45_scales(b: *const u8) -> (__m256i, __m128i) {
    const K1: u32 = 0x3f3f_3f3f;
    const K2: u32 = 0x0f0f_0f0f;
    const K3: u32 = 0x0303_0303;
    let s = b.add(4).cast::<u32>();
    let (u0, u1, u2) = (
        u32::from_le(s.read_unaligned()),
        u32::from_le(s.add(1).read_unaligned()),
        u32::from_le(s.add(2).read_unaligned()),
    );
    let mins_hi = ((u2 >> 4) & K2) | (((u1 >> 6) & K3) << 4);
    let scales_hi = (u2 & K2) | (((u0 >> 6) & K3) << 4);
    let (scales_lo, mins_lo) = (u0 & K1, u1 & K1);
    let both = _mm256_cvtepu8_epi16(_mm_set_epi32(
        mins_hi as i32,
        mins_lo as i32,
        scales_hi as i32,
        scales_lo as i32,
    ));
    (
        _mm256_permute2x128_si256::<0x00>(both, both),
        _mm256_extracti128_si256::<1>(both),
    )
}

/// Byte shuffles that copy 16-bit lane `s` of each 128-bit half to all 8 lanes of the half.
static LANE_OF: [[u8; 32]; 8] = {
    let mut m = [[0u8; 32]; 8];
    let mut s = 0;
    while s < 8 {
        let mut i = 0;
        while i < 32 {
            m[s][i] = (2 * s + i % 2) as u8;
            i += 1;
        }
        s += 1;
    }
    m
};

/// Sub-block `s`'s scale (of [`k45_scales`]) in every 16-bit lane.
#[inline(always)]
unsafe fn scale_of(scales: __m256i, s: usize) -> __m256i {
    _mm256_shuffle_epi8(scales, _mm256_loadu_si256(LANE_OF[s].as_ptr().cast()))
}

/// Chunk `i` (values `64i..64i + 64`) of a Q4_K/Q5_K super-block whose nibbles start at
/// `qs`: sub-block `2i` (low nibbles) and `2i + 1` (high), with Q5_K's bit 4 taken from the
/// running `qh` (shifted on by two sub-blocks).
#[inline(always)]
unsafe fn k45_chunk<const Q5: bool>(
    qs: *const u8,
    i: usize,
    qh: &mut __m256i,
) -> (__m256i, __m256i) {
    let (low, one) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(1));
    let q4 = load(qs.add(32 * i));
    let mut lo = _mm256_and_si256(q4, low);
    let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q4), low);
    if Q5 {
        let h1 = _mm256_slli_epi16::<4>(_mm256_and_si256(*qh, one));
        let h2 = _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<1>(*qh), one));
        lo = _mm256_or_si256(lo, h1);
        hi = _mm256_or_si256(hi, h2);
        *qh = _mm256_srli_epi16::<2>(*qh);
    }
    (lo, hi)
}

impl Format for Q4_K {
    #[inline(always)]
    unsafe fn dot<const V: bool, const R: usize>(w: &[u8], a: &[ActivationRow], y: &mut [f32]) {
        k4_or_k5::<V, R, false>(w, a, y)
    }
}

impl Format for Q5_K {
    #[inline(always)]
    unsafe fn dot<const V: bool, const R: usize>(w: &[u8], a: &[ActivationRow], y: &mut [f32]) {
        k4_or_k5::<V, R, true>(w, a, y)
    }
}

/// Bits 0..2 of each byte of `v`, moved to bits 4..6 (Q6_K's high bits).
#[inline(always)]
unsafe fn q6_high(v: __m256i) -> __m256i {
    _mm256_slli_epi16::<4>(_mm256_and_si256(v, _mm256_set1_epi8(0x03)))
}

/// The four 32-value vectors of half `h` of the Q6_K super-block at `b`, unsigned (q + 32):
/// values `32j..32j + 32` of the half in vector `j`.
#[inline(always)]
unsafe fn q6_half(b: *const u8, h: usize) -> [__m256i; 4] {
    let low = _mm256_set1_epi8(0x0f);
    let ql0 = load(b.add(64 * h));
    let ql1 = load(b.add(64 * h + 32));
    let qh = load(b.add(128 + 32 * h));
    [
        _mm256_or_si256(_mm256_and_si256(ql0, low), q6_high(qh)),
        _mm256_or_si256(
            _mm256_and_si256(ql1, low),
            q6_high(_mm256_srli_epi16::<2>(qh)),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), low),
            q6_high(_mm256_srli_epi16::<4>(qh)),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), low),
            q6_high(_mm256_srli_epi16::<6>(qh)),
        ),
    ]
}

/// The 16 scales of a Q6_K super-block (at `scales`) as 16-bit lanes, for [`q6_scale`]: lanes
/// 0..8 hold half 0's, 8..16 half 1's.
#[inline(always)]
unsafe fn q6_scales(scales: *const i8) -> __m256i {
    _mm256_cvtepi8_epi16(_mm_loadu_si128(scales.cast()))
}

/// Byte shuffles for [`q6_scale`]: in the low half, 16-bit lane `2j` everywhere, in the high
/// half lane `2j + 1`.
static Q6_LANES: [[u8; 32]; 4] = {
    let mut m = [[0u8; 32]; 4];
    let mut j = 0;
    while j < 4 {
        let mut i = 0;
        while i < 32 {
            let lane = 2 * j + i / 16;
            m[j][i] = (2 * lane + i % 2) as u8;
            i += 1;
        }
        j += 1;
    }
    m
};

/// The 16-bit lane scales of vector `j` of half `h` (`scales` from [`q6_scales`]): its first
/// 16 values (the low 128 bits after `maddubs`) have sub-block scale `2j` of the half, the
/// others `2j + 1`.
#[inline(always)]
unsafe fn q6_scale(scales: __m256i, h: usize, j: usize) -> __m256i {
    let half = if h == 0 {
        _mm256_permute2x128_si256::<0x00>(scales, scales)
    } else {
        _mm256_permute2x128_si256::<0x11>(scales, scales)
    };
    _mm256_shuffle_epi8(half, _mm256_loadu_si256(Q6_LANES[j].as_ptr().cast()))
}

impl Format for Q6_K {
    #[inline(always)]
    unsafe fn dot<const V: bool, const R: usize>(w: &[u8], acts: &[ActivationRow], y: &mut [f32]) {
        let blocks = w.len() / 210;
        let a = RowPointers::<R>::new(acts);
        let mut acc = [_mm256_setzero_ps(); R];
        for k in 0..blocks {
            let b = w.as_ptr().add(k * 210);
            let d = f16_at(b.add(208));
            let scales = b.add(192).cast::<i8>();
            let scale16 = q6_scales(scales);
            let mut sumi = [_mm256_setzero_si256(); R];
            for h in 0..2 {
                for (j, q) in q6_half(b, h).iter().enumerate() {
                    let scale = q6_scale(scale16, h, j);
                    for r in 0..R {
                        let q8 = load_i8(a.qs[r].add(256 * k + 128 * h + 32 * j));
                        sumi[r] = dot_u8i8_scaled::<V>(sumi[r], *q, q8, scale);
                    }
                }
            }
            // The values are q - 32: subtract 32 · Σ scale · (sum of 16 activations).
            for r in 0..R {
                let sums = _mm256_loadu_si256(a.sums16[r].add(16 * k).cast());
                let offset = _mm256_slli_epi32::<5>(_mm256_madd_epi16(scale16, sums));
                let da = *a.scales[r].add(k);
                let total = _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi[r], offset));
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * da), total, acc[r]);
            }
        }
        for r in 0..R {
            *y.get_unchecked_mut(r) = hsum(acc[r]);
        }
    }
}

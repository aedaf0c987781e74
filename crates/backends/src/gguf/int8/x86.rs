//! The panel kernels ([`super::panels`]) on x86-64: AVX-512 VNNI with one 512-bit
//! vector per k-group (16 rows, `vpdpbusd` with 4 broadcast activation bytes), and AVX2 with
//! two 256-bit halves (`vpmaddubsw` + `vpmaddwd`). Both compute exactly the arithmetic the
//! panels module documents, in its order (integer dots are exact, every float step is one
//! rounding), so they equal the portable kernel bit for bit.
//!
//! A tile of up to [`TILE`] activation rows shares each block's unpacked weights, which stay
//! in registers; the accumulators are one vector (or two halves) per activation row.
//!
//! Safety contract of every `unsafe fn` here: the CPU has the entry point's features, `panel`
//! is whole panel blocks of the kernel's format, every activation row holds `blocks × block
//! values` values quantised for the format, and `out` holds `16 × acts.len()` values.
#![allow(unsafe_op_in_unsafe_fn)]
// The kernels step several fixed-size arrays of registers by row index in lock-step.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::activations::ActivationRow;
use super::panels::{PANEL, offset};
use crate::gguf::types::GgmlType;

/// Most activation rows that share one unpacking of a block.
pub(crate) const TILE: usize = 8;

/// The formats' shapes: scale fields and value bytes per 32 values.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Q4_0, Q5_0, Q8_0: `d · (q - offset)`.
    Offset,
    /// Q4_1, Q5_1: `d · q + m`.
    Min,
    /// Q4_K, Q5_K.
    K45,
    /// Q6_K.
    K6,
}

/// How a format's 32 values are stored (see the panels module).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Values {
    Four,
    FourPlusBit,
    FourPlusTwo,
    Eight,
}

const fn kind(ty: GgmlType) -> (Kind, Values) {
    match ty {
        GgmlType::Q4_0 => (Kind::Offset, Values::Four),
        GgmlType::Q5_0 => (Kind::Offset, Values::FourPlusBit),
        GgmlType::Q8_0 => (Kind::Offset, Values::Eight),
        GgmlType::Q4_1 => (Kind::Min, Values::Four),
        GgmlType::Q5_1 => (Kind::Min, Values::FourPlusBit),
        GgmlType::Q4_K => (Kind::K45, Values::Four),
        GgmlType::Q5_K => (Kind::K45, Values::FourPlusBit),
        _ => (Kind::K6, Values::FourPlusTwo),
    }
}

/// How many k-groups' 16-bit pair sums (`w₀a₀ + w₁a₁`, |a| ≤ 127) add without overflow
/// before widening: `run · 2 · max w · 127 ≤ 32767` (4 bits: 8 · 2 · 15 · 127 = 30480;
/// 5 bits: 4 · 2 · 31 · 127 = 31496; 6 bits: 2 · 2 · 63 · 127 = 32004). Signed 8-bit weights
/// widen every group.
const fn widening_run(v: Values) -> usize {
    match v {
        Values::Four => 8,
        Values::FourPlusBit => 4,
        Values::FourPlusTwo => 2,
        Values::Eight => 1,
    }
}

const fn value_bytes(v: Values) -> usize {
    match v {
        Values::Four => 256,
        Values::FourPlusBit => 320,
        Values::FourPlusTwo => 384,
        Values::Eight => 512,
    }
}

/// One panel kernel: `out[t * 16 + r] = row r of panel · acts[t]`.
type Kernel = unsafe fn(&[u8], &[ActivationRow], &mut [f32]);

/// AVX-512 VNNI entry point: `out[t * 16 + r] = row r of panel · acts[t]`; `false` for a
/// type without a kernel.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C; slices as the module says.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq,avx512vnni")]
pub(crate) unsafe fn panel_avx512(
    ty: GgmlType,
    panel: &[u8],
    acts: &[ActivationRow],
    out: &mut [f32],
) -> bool {
    run(z::kernel(ty), panel, acts, out)
}

/// AVX2 entry point, as [`panel_avx512`].
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; slices as the module says.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn panel_avx2(
    ty: GgmlType,
    panel: &[u8],
    acts: &[ActivationRow],
    out: &mut [f32],
) -> bool {
    run(y::kernel(ty), panel, acts, out)
}

/// Run `kernel` if there is one (the caller holds its features); whether it ran.
#[inline(always)]
unsafe fn run(
    kernel: Option<Kernel>,
    panel: &[u8],
    acts: &[ActivationRow],
    out: &mut [f32],
) -> bool {
    match kernel {
        Some(kernel) => {
            kernel(panel, acts, out);
            true
        }
        None => false,
    }
}

/// One function per (format, instruction set) with the features on, the generic tile loop
/// inlined into it.
macro_rules! entries {
    ($module:ident, $lanes:ty, $features:literal) => {
        mod $module {
            use super::*;
            entries!(@each $lanes, $features, q4_0 Q4_0, q4_1 Q4_1, q5_0 Q5_0, q5_1 Q5_1,
                q8_0 Q8_0, q4_k Q4_K, q5_k Q5_K, q6_k Q6_K);
        }
    };
    (@each $lanes:ty, $features:literal, $($name:ident $ty:ident),*) => {
        /// This instruction set's kernel for `ty`, if it has one.
        pub(super) fn kernel(ty: GgmlType) -> Option<Kernel> {
            match ty {
                $(GgmlType::$ty => Some($name as Kernel),)*
                _ => None,
            }
        }
        $(
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $name(panel: &[u8], acts: &[ActivationRow], out: &mut [f32]) {
            const TY: GgmlType = GgmlType::$ty;
            let mut start = 0;
            while start < acts.len() {
                let a = &acts[start..];
                let y = &mut out[start * PANEL..];
                let count = a.len().min(TILE);
                // The first tile streams the panel from memory; later ones find it in cache.
                let ahead = start == 0 && (count > 1 || prefetch_for_one_row());
                match count {
                    1 => panel_tile::<$lanes, 1>(TY, panel, a, y, ahead),
                    2 => panel_tile::<$lanes, 2>(TY, panel, a, y, ahead),
                    3 => panel_tile::<$lanes, 3>(TY, panel, a, y, ahead),
                    4 => panel_tile::<$lanes, 4>(TY, panel, a, y, ahead),
                    5 => panel_tile::<$lanes, 5>(TY, panel, a, y, ahead),
                    6 => panel_tile::<$lanes, 6>(TY, panel, a, y, ahead),
                    7 => panel_tile::<$lanes, 7>(TY, panel, a, y, ahead),
                    _ => panel_tile::<$lanes, 8>(TY, panel, a, y, ahead),
                }
                start += count;
            }
        }
    )*
    };
}
entries!(
    z,
    Zmm,
    "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq,avx512vnni"
);
entries!(y, Ymm2, "avx2,fma,f16c");

/// 16 lanes (a panel's rows) of integers or floats, and the few operations the kernel needs:
/// one 512-bit vector, or two 256-bit halves.
trait Lanes: Copy {
    type I: Copy;
    type F: Copy;
    unsafe fn zero_i() -> Self::I;
    unsafe fn zero_f() -> Self::F;
    /// 64 bytes at `p`.
    unsafe fn load(p: *const u8) -> Self::I;
    /// Low and high nibbles of each byte.
    unsafe fn nibbles(v: Self::I) -> (Self::I, Self::I);
    /// Whether the high nibbles may stay where they are (`v & 0xF0`: 16 times their value)
    /// and their dot be divided by 16 afterwards, saving a shift per 64 bytes: only where a
    /// dot of weights up to 240 cannot saturate (VNNI's `vpdpbusd` sums into 32 bits; AVX2's
    /// `vpmaddubsw` saturates 16-bit pair sums).
    const HIGH_NIBBLES_IN_PLACE: bool = false;
    /// Low nibbles, and high nibbles left in place (`v & 0xF0`).
    unsafe fn nibbles_in_place(v: Self::I) -> (Self::I, Self::I) {
        Self::nibbles(v)
    }
    /// `v >> 4` per 32-bit lane, arithmetic (exact on the multiples of 16 it is given).
    unsafe fn srai4_i(v: Self::I) -> Self::I;
    /// `v | 0x10` in the bytes whose bit is set in `bits`.
    unsafe fn or_bit4(v: Self::I, bits: u64) -> Self::I;
    /// `v | ((hi >> 2i) & 3) << 4` per byte.
    unsafe fn or_hi2(v: Self::I, hi: Self::I, i: u32) -> Self::I;
    /// Signed bytes made unsigned for the dot (and the offset that adds to the dot).
    unsafe fn signed_weights(v: Self::I) -> Self::I;
    /// `acc + Σ w·a` per 32-bit lane (4 bytes of each row) with `a` = the 4 bytes at `p`
    /// broadcast; `SIGNED` weights come from [`Lanes::signed_weights`].
    unsafe fn dot4<const SIGNED: bool>(acc: Self::I, w: Self::I, p: *const i8) -> Self::I;
    /// The offset a [`Lanes::signed_weights`] dot carries per unit of activation sum.
    const SIGNED_OFFSET: i32;
    /// Whether [`Lanes::dot_runs`] is cheaper than one [`Lanes::dot4`] per k-group.
    const WIDENS_IN_RUNS: bool = false;
    /// `Σ_g w_g·a_g` over the unsigned k-groups `range`, widened to 32 bits once per `run`
    /// groups (narrow partial sums added first; the caller bounds `run` so they cannot
    /// overflow). Only called where [`Lanes::WIDENS_IN_RUNS`].
    unsafe fn dot_runs(
        kg: &[Self::I; 8],
        range: std::ops::Range<usize>,
        a: *const i8,
        run: usize,
    ) -> Self::I {
        let _ = run;
        let mut acc = Self::zero_i();
        for g in range {
            acc = Self::dot4::<false>(acc, kg[g], a.add(4 * g));
        }
        acc
    }
    unsafe fn sub_i(v: Self::I, x: i32) -> Self::I;
    unsafe fn add_i(a: Self::I, b: Self::I) -> Self::I;
    /// `a · b` per 32-bit lane (the low 32 bits; the callers keep it exact).
    unsafe fn mullo_i(a: Self::I, b: Self::I) -> Self::I;
    /// 16 unsigned bytes at `p` as 32-bit lanes.
    unsafe fn u8s_i(p: *const u8) -> Self::I;
    /// 16 signed bytes at `p` as 32-bit lanes.
    unsafe fn i8s_i(p: *const u8) -> Self::I;
    /// 32 unsigned bytes at `p` as 16-bit lanes: lane `r` of the 32-bit view holds bytes
    /// `2r` and `2r + 1`.
    unsafe fn u8_pairs(p: *const u8) -> Self::I;
    /// `acc + w₀·a₀ + w₁·a₁` per 32-bit lane, with `w` 16-bit pairs ([`Lanes::u8_pairs`])
    /// and `(a₀, a₁)` the two `i16` at `p`, broadcast (exact while the sums fit in 32 bits).
    unsafe fn dot_pairs(acc: Self::I, w: Self::I, p: *const i16) -> Self::I;
    unsafe fn cvt(v: Self::I) -> Self::F;
    /// 16 f16 at `p`.
    unsafe fn f16s(p: *const u8) -> Self::F;
    unsafe fn mul_s(a: Self::F, b: f32) -> Self::F;
    /// `a · b + c`, fused.
    unsafe fn fma_s(a: Self::F, b: f32, c: Self::F) -> Self::F;
    /// `a · b + c`, fused, with `a` a vector.
    unsafe fn fma(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// `c - a · b`, fused, with `b` a vector.
    unsafe fn fnma(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    unsafe fn store(p: *mut f32, v: Self::F);
}

#[derive(Clone, Copy)]
struct Zmm;

impl Lanes for Zmm {
    type I = __m512i;
    type F = __m512;
    const SIGNED_OFFSET: i32 = 128;
    #[inline(always)]
    unsafe fn zero_i() -> __m512i {
        _mm512_setzero_si512()
    }
    #[inline(always)]
    unsafe fn zero_f() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m512i {
        _mm512_loadu_si512(p.cast())
    }
    #[inline(always)]
    unsafe fn nibbles(v: __m512i) -> (__m512i, __m512i) {
        let low = _mm512_set1_epi8(0x0f);
        (
            _mm512_and_si512(v, low),
            _mm512_and_si512(_mm512_srli_epi16::<4>(v), low),
        )
    }
    const HIGH_NIBBLES_IN_PLACE: bool = true;
    #[inline(always)]
    unsafe fn nibbles_in_place(v: __m512i) -> (__m512i, __m512i) {
        (
            _mm512_and_si512(v, _mm512_set1_epi8(0x0f)),
            _mm512_and_si512(v, _mm512_set1_epi8(0xf0_u8 as i8)),
        )
    }
    #[inline(always)]
    unsafe fn srai4_i(v: __m512i) -> __m512i {
        _mm512_srai_epi32::<4>(v)
    }
    #[inline(always)]
    unsafe fn or_bit4(v: __m512i, bits: u64) -> __m512i {
        // A nibble has bit 4 clear, so adding 16 sets it (AVX-512 has no byte-masked OR).
        _mm512_mask_add_epi8(v, bits, v, _mm512_set1_epi8(0x10))
    }
    #[inline(always)]
    unsafe fn or_hi2(v: __m512i, hi: __m512i, i: u32) -> __m512i {
        // Bits 2i, 2i + 1 of each byte go straight to bits 4, 5 (one shift of the 16-bit
        // lanes; what crosses into the neighbouring byte lands outside 0x30), and one
        // ternary-logic op makes `v | (moved & 0x30)`: 2 instructions a k-group where a
        // shift down, a mask, a shift up and an OR took 4 (Q6_K's 1-row products were
        // compute-bound where double-pumped 512-bit units halve the rate, as on Zen 4).
        let moved = match i {
            0 => _mm512_slli_epi16::<4>(hi),
            1 => _mm512_slli_epi16::<2>(hi),
            2 => hi,
            _ => _mm512_srli_epi16::<2>(hi),
        };
        // imm 0xF8: A | (B & C) with A = v, B = moved, C = the mask.
        _mm512_ternarylogic_epi32::<0xF8>(v, moved, _mm512_set1_epi8(0x30))
    }
    #[inline(always)]
    unsafe fn signed_weights(v: __m512i) -> __m512i {
        _mm512_xor_si512(v, _mm512_set1_epi8(-128))
    }
    #[inline(always)]
    unsafe fn dot4<const SIGNED: bool>(acc: __m512i, w: __m512i, p: *const i8) -> __m512i {
        let a = _mm512_set1_epi32(p.cast::<i32>().read_unaligned());
        _mm512_dpbusd_epi32(acc, w, a)
    }
    #[inline(always)]
    unsafe fn sub_i(v: __m512i, x: i32) -> __m512i {
        _mm512_sub_epi32(v, _mm512_set1_epi32(x))
    }
    #[inline(always)]
    unsafe fn add_i(a: __m512i, b: __m512i) -> __m512i {
        _mm512_add_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn mullo_i(a: __m512i, b: __m512i) -> __m512i {
        _mm512_mullo_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn u8s_i(p: *const u8) -> __m512i {
        _mm512_cvtepu8_epi32(_mm_loadu_si128(p.cast()))
    }
    #[inline(always)]
    unsafe fn i8s_i(p: *const u8) -> __m512i {
        _mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast()))
    }
    #[inline(always)]
    unsafe fn u8_pairs(p: *const u8) -> __m512i {
        _mm512_cvtepu8_epi16(_mm256_loadu_si256(p.cast()))
    }
    #[inline(always)]
    unsafe fn dot_pairs(acc: __m512i, w: __m512i, p: *const i16) -> __m512i {
        let a = _mm512_set1_epi32(p.cast::<i32>().read_unaligned());
        _mm512_dpwssd_epi32(acc, w, a)
    }
    #[inline(always)]
    unsafe fn cvt(v: __m512i) -> __m512 {
        _mm512_cvtepi32_ps(v)
    }
    #[inline(always)]
    unsafe fn f16s(p: *const u8) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
    }
    #[inline(always)]
    unsafe fn mul_s(a: __m512, b: f32) -> __m512 {
        _mm512_mul_ps(a, _mm512_set1_ps(b))
    }
    #[inline(always)]
    unsafe fn fma_s(a: __m512, b: f32, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, _mm512_set1_ps(b), c)
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn fnma(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fnmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        _mm512_storeu_ps(p, v)
    }
}

/// Two 256-bit halves: rows 0..8 and 8..16.
#[derive(Clone, Copy)]
struct Ymm2;

#[inline(always)]
unsafe fn pair_i(f: impl Fn(usize) -> __m256i) -> [__m256i; 2] {
    [f(0), f(1)]
}

impl Lanes for Ymm2 {
    type I = [__m256i; 2];
    type F = [__m256; 2];
    const SIGNED_OFFSET: i32 = 0;
    // `vpmaddubsw` leaves 16-bit pair sums; widening each k-group's with `vpmaddwd` and
    // adding it cost two of every three instructions of a dot. Adding the 16-bit sums of a
    // run of groups first and widening once is exact while the run's sums fit in 16 bits.
    const WIDENS_IN_RUNS: bool = true;
    #[inline(always)]
    unsafe fn dot_runs(
        kg: &[[__m256i; 2]; 8],
        range: std::ops::Range<usize>,
        a: *const i8,
        run: usize,
    ) -> [__m256i; 2] {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); 2];
        let mut g = range.start;
        while g < range.end {
            let end = (g + run).min(range.end);
            let mut pairs = [_mm256_setzero_si256(); 2];
            for j in g..end {
                let b = _mm256_set1_epi32(a.add(4 * j).cast::<i32>().read_unaligned());
                for h in 0..2 {
                    pairs[h] = _mm256_add_epi16(pairs[h], _mm256_maddubs_epi16(kg[j][h], b));
                }
            }
            for h in 0..2 {
                acc[h] = _mm256_add_epi32(acc[h], _mm256_madd_epi16(pairs[h], ones));
            }
            g = end;
        }
        acc
    }
    #[inline(always)]
    unsafe fn zero_i() -> [__m256i; 2] {
        [_mm256_setzero_si256(); 2]
    }
    #[inline(always)]
    unsafe fn zero_f() -> [__m256; 2] {
        [_mm256_setzero_ps(); 2]
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> [__m256i; 2] {
        pair_i(|h| _mm256_loadu_si256(p.add(32 * h).cast()))
    }
    #[inline(always)]
    unsafe fn nibbles(v: [__m256i; 2]) -> ([__m256i; 2], [__m256i; 2]) {
        let low = _mm256_set1_epi8(0x0f);
        (
            pair_i(|h| _mm256_and_si256(v[h], low)),
            pair_i(|h| _mm256_and_si256(_mm256_srli_epi16::<4>(v[h]), low)),
        )
    }
    #[inline(always)]
    unsafe fn or_bit4(v: [__m256i; 2], bits: u64) -> [__m256i; 2] {
        pair_i(|h| {
            let word = (bits >> (32 * h)) as u32;
            let shuffle = _mm256_set_epi64x(
                0x0303_0303_0303_0303,
                0x0202_0202_0202_0202,
                0x0101_0101_0101_0101,
                0,
            );
            let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(word as i32), shuffle);
            let probe = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
            let set = _mm256_cmpeq_epi8(probe, _mm256_set1_epi64x(-1));
            _mm256_or_si256(v[h], _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
        })
    }
    #[inline(always)]
    unsafe fn or_hi2(v: [__m256i; 2], hi: [__m256i; 2], i: u32) -> [__m256i; 2] {
        // As the AVX-512 version: one shift puts bits 2i, 2i + 1 at bits 4, 5 (what crosses
        // bytes lands outside 0x30), then a mask and an OR: 3 instructions where 4 were.
        pair_i(|h| {
            let moved = match i {
                0 => _mm256_slli_epi16::<4>(hi[h]),
                1 => _mm256_slli_epi16::<2>(hi[h]),
                2 => hi[h],
                _ => _mm256_srli_epi16::<2>(hi[h]),
            };
            _mm256_or_si256(v[h], _mm256_and_si256(moved, _mm256_set1_epi8(0x30)))
        })
    }
    #[inline(always)]
    unsafe fn signed_weights(v: [__m256i; 2]) -> [__m256i; 2] {
        v
    }
    #[inline(always)]
    unsafe fn dot4<const SIGNED: bool>(
        acc: [__m256i; 2],
        w: [__m256i; 2],
        p: *const i8,
    ) -> [__m256i; 2] {
        let a = _mm256_set1_epi32(p.cast::<i32>().read_unaligned());
        let ones = _mm256_set1_epi16(1);
        pair_i(|h| {
            let pairs = if SIGNED {
                // |w| unsigned, w's sign moved to the activations (ggml's trick; maddubs of
                // 128 · 127 · 2 does not saturate).
                _mm256_maddubs_epi16(_mm256_sign_epi8(w[h], w[h]), _mm256_sign_epi8(a, w[h]))
            } else {
                _mm256_maddubs_epi16(w[h], a)
            };
            _mm256_add_epi32(acc[h], _mm256_madd_epi16(pairs, ones))
        })
    }
    #[inline(always)]
    unsafe fn sub_i(v: [__m256i; 2], x: i32) -> [__m256i; 2] {
        pair_i(|h| _mm256_sub_epi32(v[h], _mm256_set1_epi32(x)))
    }
    #[inline(always)]
    unsafe fn add_i(a: [__m256i; 2], b: [__m256i; 2]) -> [__m256i; 2] {
        pair_i(|h| _mm256_add_epi32(a[h], b[h]))
    }
    #[inline(always)]
    unsafe fn mullo_i(a: [__m256i; 2], b: [__m256i; 2]) -> [__m256i; 2] {
        pair_i(|h| _mm256_mullo_epi32(a[h], b[h]))
    }
    #[inline(always)]
    unsafe fn u8s_i(p: *const u8) -> [__m256i; 2] {
        pair_i(|h| _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(8 * h).cast())))
    }
    #[inline(always)]
    unsafe fn i8s_i(p: *const u8) -> [__m256i; 2] {
        pair_i(|h| _mm256_cvtepi8_epi32(_mm_loadl_epi64(p.add(8 * h).cast())))
    }
    #[inline(always)]
    unsafe fn u8_pairs(p: *const u8) -> [__m256i; 2] {
        pair_i(|h| _mm256_cvtepu8_epi16(_mm_loadu_si128(p.add(16 * h).cast())))
    }
    #[inline(always)]
    unsafe fn dot_pairs(acc: [__m256i; 2], w: [__m256i; 2], p: *const i16) -> [__m256i; 2] {
        let a = _mm256_set1_epi32(p.cast::<i32>().read_unaligned());
        pair_i(|h| _mm256_add_epi32(acc[h], _mm256_madd_epi16(w[h], a)))
    }
    #[inline(always)]
    unsafe fn srai4_i(v: [__m256i; 2]) -> [__m256i; 2] {
        pair_i(|h| _mm256_srai_epi32::<4>(v[h]))
    }
    #[inline(always)]
    unsafe fn cvt(v: [__m256i; 2]) -> [__m256; 2] {
        [_mm256_cvtepi32_ps(v[0]), _mm256_cvtepi32_ps(v[1])]
    }
    #[inline(always)]
    unsafe fn f16s(p: *const u8) -> [__m256; 2] {
        [
            _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
            _mm256_cvtph_ps(_mm_loadu_si128(p.add(16).cast())),
        ]
    }
    #[inline(always)]
    unsafe fn mul_s(a: [__m256; 2], b: f32) -> [__m256; 2] {
        let b = _mm256_set1_ps(b);
        [_mm256_mul_ps(a[0], b), _mm256_mul_ps(a[1], b)]
    }
    #[inline(always)]
    unsafe fn fma_s(a: [__m256; 2], b: f32, c: [__m256; 2]) -> [__m256; 2] {
        let b = _mm256_set1_ps(b);
        [
            _mm256_fmadd_ps(a[0], b, c[0]),
            _mm256_fmadd_ps(a[1], b, c[1]),
        ]
    }
    #[inline(always)]
    unsafe fn fma(a: [__m256; 2], b: [__m256; 2], c: [__m256; 2]) -> [__m256; 2] {
        [
            _mm256_fmadd_ps(a[0], b[0], c[0]),
            _mm256_fmadd_ps(a[1], b[1], c[1]),
        ]
    }
    #[inline(always)]
    unsafe fn fnma(a: [__m256; 2], b: [__m256; 2], c: [__m256; 2]) -> [__m256; 2] {
        [
            _mm256_fnmadd_ps(a[0], b[0], c[0]),
            _mm256_fnmadd_ps(a[1], b[1], c[1]),
        ]
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: [__m256; 2]) {
        _mm256_storeu_ps(p, v[0]);
        _mm256_storeu_ps(p.add(8), v[1]);
    }
}

/// The 8 k-group vectors of 32 values whose value parts start at `v`; with `in_place`
/// (4-bit values only), the odd k-groups are 16 times their values
/// ([`Lanes::HIGH_NIBBLES_IN_PLACE`]).
#[inline(always)]
unsafe fn kgroups<L: Lanes>(values: Values, v: *const u8, in_place: bool) -> [L::I; 8] {
    let mut kg = [L::zero_i(); 8];
    if values == Values::Eight {
        for g in 0..8 {
            kg[g] = L::signed_weights(L::load(v.add(64 * g)));
        }
        return kg;
    }
    for c in 0..4 {
        let chunk = L::load(v.add(64 * c));
        let (lo, hi) = if in_place {
            L::nibbles_in_place(chunk)
        } else {
            L::nibbles(chunk)
        };
        (kg[2 * c], kg[2 * c + 1]) = (lo, hi);
    }
    match values {
        Values::FourPlusBit => {
            let words = v.add(256).cast::<u64>();
            for g in 0..8 {
                kg[g] = L::or_bit4(kg[g], u64::from_le(words.add(g).read_unaligned()));
            }
        }
        Values::FourPlusTwo => {
            for h in 0..2 {
                let hi = L::load(v.add(256 + 64 * h));
                for i in 0..4 {
                    kg[4 * h + i] = L::or_hi2(kg[4 * h + i], hi, i as u32);
                }
            }
        }
        _ => {}
    }
    kg
}

/// `Σ_g dot4(kg[g], a + 4g)` over k-groups `range`, in `chains` (1 or 2) accumulators
/// (one `vpdpbusd` waits 5 cycles for the previous one into the same register: with few
/// activation rows, two chains a row keep both vector units busy). Integer sums: the order
/// does not change the result. With `in_place` (two chains, a range from an even k-group:
/// the second chain sums the odd k-groups), the odd k-groups are 16 times their values
/// ([`kgroups`]) and their chain is divided by 16, exactly.
#[inline(always)]
unsafe fn dot<L: Lanes, const SIGNED: bool>(
    kg: &[L::I; 8],
    range: std::ops::Range<usize>,
    a: *const i8,
    chains: usize,
    run: usize,
    in_place: bool,
) -> L::I {
    if L::WIDENS_IN_RUNS && !SIGNED && run > 1 {
        return L::dot_runs(kg, range, a, run);
    }
    let mut acc = [L::zero_i(); 2];
    for (i, g) in range.enumerate() {
        let c = if chains == 2 { i % 2 } else { 0 };
        acc[c] = L::dot4::<SIGNED>(acc[c], kg[g], a.add(4 * g));
    }
    if in_place {
        L::add_i(acc[0], L::srai4_i(acc[1]))
    } else if chains == 2 {
        L::add_i(acc[0], acc[1])
    } else {
        acc[0]
    }
}

/// How far ahead of the block being multiplied the panel's bytes are requested from memory.
/// A decode step streams every weight once; the hardware prefetcher alone let the loads of
/// each block stall, and with several activation rows the stalls added to the compute
/// instead of hiding under it.
const PREFETCH_BYTES: usize = 2048;
/// Further ahead, into L2 only: more requests in flight than the L1's fill buffers allow.
const PREFETCH_L2_BYTES: usize = 12288;

/// Whether a tile of one activation row (a decode step) prefetches its panel too. A tile of
/// several rows is compute-bound, and the loads the hardware prefetcher left stalling added
/// to the compute (Ice Lake and Zen 4 alike). One row is memory-bound: on Ice Lake the
/// software prefetch made it faster too, on Zen 4 it made the 1.5B's decode step slower
/// (alternating runs, 2 threads: 19.8 tok/s with it, 22.4 without; its hardware prefetcher
/// streams the panels on its own, and the prefetch instructions cost issue slots and
/// memory requests). So it is off for AMD's CPUs and on for the others.
fn prefetch_for_one_row() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        // CPUID leaf 0: the vendor string in EBX, EDX, ECX.
        let vendor = __cpuid(0);
        let amd = (vendor.ebx, vendor.edx, vendor.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
        !amd
    })
}

/// Ask for the cache lines of `len` bytes from `p + PREFETCH_BYTES` on (a hint; it never
/// faults, even past the end of the panel, where the next panel of the task follows).
#[inline(always)]
unsafe fn prefetch_ahead(p: *const u8, len: usize) {
    let mut at = 0;
    while at < len {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES + at).cast());
        _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(PREFETCH_L2_BYTES + at).cast());
        at += 64;
    }
}

/// Accumulator chains per activation row for a tile of `r` rows: two while few rows give few
/// independent chains, one when the rows are enough.
const fn chains(r: usize) -> usize {
    if r <= 4 { 2 } else { 1 }
}

/// The first `R` activation rows of `acts` against every block of `panel`; with `ahead`,
/// the bytes ahead of each block are prefetched.
#[inline(always)]
unsafe fn panel_tile<L: Lanes, const R: usize>(
    ty: GgmlType,
    panel: &[u8],
    acts: &[ActivationRow],
    out: &mut [f32],
    ahead: bool,
) {
    let (kind, values) = kind(ty);
    let Some(layout) = super::panels::layout(ty) else {
        return;
    };
    let blocks = panel.len() / layout.bytes;
    let mut qs = [std::ptr::null::<i8>(); R];
    let mut scales = [std::ptr::null::<f32>(); R];
    let mut sums16 = [std::ptr::null::<i16>(); R];
    let mut sums32 = [std::ptr::null::<i16>(); R];
    let mut scaled = [std::ptr::null::<f32>(); R];
    for r in 0..R {
        let a = acts.get_unchecked(r);
        qs[r] = a.qs.as_ptr();
        scales[r] = a.scales.as_ptr();
        sums16[r] = a.sums16.as_ptr();
        sums32[r] = a.sums32.as_ptr();
        scaled[r] = a.scaled_sums32.as_ptr();
    }
    let mut acc = [L::zero_f(); R];
    let signed = values == Values::Eight;
    let off = offset(ty) + if signed { L::SIGNED_OFFSET } else { 0 };
    let vb = value_bytes(values);
    let run = widening_run(values);
    // High nibbles in place where two chains a row separate the odd k-groups.
    let in_place = L::HIGH_NIBBLES_IN_PLACE && values == Values::Four && chains(R) == 2;
    for k in 0..blocks {
        let pb = panel.as_ptr().add(k * layout.bytes);
        if ahead {
            prefetch_ahead(pb, layout.bytes);
        }
        match kind {
            Kind::Offset | Kind::Min => {
                let d = L::f16s(pb);
                let m = if kind == Kind::Min {
                    L::f16s(pb.add(32))
                } else {
                    L::zero_f()
                };
                let v = pb.add(if kind == Kind::Min { 64 } else { 32 });
                let kg = kgroups::<L>(values, v, in_place);
                for r in 0..R {
                    let a = qs[r].add(32 * k);
                    let mut dt = if signed {
                        dot::<L, true>(&kg, 0..8, a, chains(R), run, false)
                    } else {
                        dot::<L, false>(&kg, 0..8, a, chains(R), run, in_place)
                    };
                    if off != 0 {
                        dt = L::sub_i(dt, off * *sums32[r].add(k) as i32);
                    }
                    let da = *scales[r].add(k);
                    acc[r] = L::fma(L::cvt(dt), L::mul_s(d, da), acc[r]);
                    if kind == Kind::Min {
                        acc[r] = L::fma_s(m, *scaled[r].add(k), acc[r]);
                    }
                }
            }
            Kind::K45 => {
                let d = L::f16s(pb);
                let dmin = L::f16s(pb.add(32));
                // The sub-block scales multiply the exact integer dots in integers (at most
                // 8 · 63 · 32 · 31 · 127 < 2^31), and the minimums the activations' integer
                // sub-block sums (8 · 63 · 32 · 127), so one conversion and one FMA a
                // super-block replace three float operations a sub-block for each.
                let mut isum = [L::zero_i(); R];
                let mut imin = [L::zero_i(); R];
                for pair in 0..4 {
                    let mn = L::u8_pairs(pb.add(64 + 128 + 32 * pair));
                    for r in 0..R {
                        imin[r] = L::dot_pairs(imin[r], mn, sums32[r].add(8 * k + 2 * pair));
                    }
                }
                for sub in 0..8 {
                    let sc = L::u8s_i(pb.add(64 + 16 * sub));
                    let kg = kgroups::<L>(values, pb.add(320 + sub * vb), in_place);
                    for r in 0..R {
                        let a = qs[r].add(256 * k + 32 * sub);
                        let dt = dot::<L, false>(&kg, 0..8, a, chains(R), run, in_place);
                        isum[r] = L::add_i(isum[r], L::mullo_i(dt, sc));
                    }
                }
                for r in 0..R {
                    let da = *scales[r].add(k);
                    acc[r] = L::fnma(L::cvt(imin[r]), L::mul_s(dmin, da), acc[r]);
                    acc[r] = L::fma(L::cvt(isum[r]), L::mul_s(d, da), acc[r]);
                }
            }
            Kind::K6 => {
                let d = L::f16s(pb);
                // As Q4_K's: the signed 16-value sub-block scales multiply the integer dots
                // (less the offset) in integers: at most 16 · 16 · 32 · 127 · 128 < 2^31.
                let mut isum = [L::zero_i(); R];
                for sub in 0..8 {
                    let kg = kgroups::<L>(values, pb.add(288 + sub * vb), false);
                    for half in 0..2 {
                        let s = 2 * sub + half;
                        let sc = L::i8s_i(pb.add(32 + 16 * s));
                        for r in 0..R {
                            let a = qs[r].add(256 * k + 32 * sub);
                            let g = 4 * half..4 * half + 4;
                            let dt = dot::<L, false>(&kg, g, a, chains(R), run, false);
                            let dt = L::sub_i(dt, 32 * *sums16[r].add(16 * k + s) as i32);
                            isum[r] = L::add_i(isum[r], L::mullo_i(dt, sc));
                        }
                    }
                }
                for r in 0..R {
                    let da = *scales[r].add(k);
                    acc[r] = L::fma(L::cvt(isum[r]), L::mul_s(d, da), acc[r]);
                }
            }
        }
    }
    for r in 0..R {
        L::store(out.as_mut_ptr().add(PANEL * r), acc[r]);
    }
}

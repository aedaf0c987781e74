//! Weights repacked for the integer kernels: panels of 16 rows whose values are interleaved
//! so that one 64-byte vector holds 4 consecutive values of each of the 16 rows (ggml's
//! "repack" idea, `block_q4_Kx8` and friends).
//!
//! A kernel then multiplies 4 activation values, broadcast, with 16 rows at once
//! (`vpdpbusd`): the lanes of the result are the panel's rows. No horizontal sums, one
//! scale conversion per block for 16 rows, and a block's unpacked weights serve every
//! activation row of a tile while they sit in registers. A panel takes exactly the bytes
//! its 16 rows take in the file (Q4_K/Q5_K: 2-3 % more, their 6-bit scales unpacked).
//!
//! Panel block layout, per 32 values of the 16 rows (a *k-group* is 4 consecutive values;
//! k-group `g` as a vector: byte `4r + i` is row `r`'s value `4g + i`):
//! - 4-bit values: 4 chunks of 64 bytes, chunk `c` holds k-group `2c` in its low nibbles and
//!   `2c + 1` in its high ones;
//! - a 5th bit: 8 × u64, bit `j` of word `g` is bit 4 of byte `j` of k-group `g`;
//! - Q6_K's upper 2 bits: 2 chunks of 64 bytes, chunk `h` holds bits 4..6 of k-group
//!   `4h + i` in its bits `2i..2i + 2`;
//! - 8-bit values (Q8_0): 8 chunks, one per k-group, signed.
//!
//! Around the values: the f16 scales (and minimums) of the 16 rows, 16 of each, and for the
//! K-quants the sub-block scales as bytes, sub-block-major (16 rows each), then for Q4_K and
//! Q5_K the sub-block minimums in pairs of sub-blocks (`2p`, `2p + 1` of row `r` at bytes
//! `32p + 2r`, `+ 1`). Rows past the end of a matrix are padded with zero blocks (scale 0).
//!
//! Arithmetic (the kernels of every instruction set compute this, in this order, per lane):
//! per block the exact integer dot `Σ q·a` of unsigned values `q` with the 8-bit
//! activations, less `OFFSET · Σ a` for the formats with an offset. The 32-value formats
//! then add `acc += f32(dot) · (d · d_a)` and the minimum, `acc += m · s_a` (Q4_1, Q5_1;
//! `s_a` the block's sum of dequantised activations). The K-quants sum, in integers over
//! the super-block (exact: below 2^31), `dot · sc` of every sub-block (8 of 32 values; Q6_K
//! 16 of 16, signed scales) and, for Q4_K and Q5_K, `mn · Σ a` (`Σ a` the activations'
//! integer sub-block sum); once a super-block they add `acc -= f32(Σ mn·Σa) · (dmin · d_a)`,
//! then `acc += f32(Σ dot·sc) · (d · d_a)`. Every multiply-add is fused.

use rayon::prelude::*;

use super::activations::ActivationRow;
use crate::gguf::dequant::f16_bits_to_f32;
use crate::gguf::types::{GgmlType, QK_K};

/// Rows per panel.
pub const PANEL: usize = 16;
/// Bytes of one k-group vector: 4 values of each row of a panel.
const KGROUP: usize = 4 * PANEL;

/// Where the parts of a panel block are, per format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Values of a row per panel block (32, or 256 for the K-quants).
    pub values: usize,
    /// Bytes of a panel block.
    pub bytes: usize,
}

/// The panel layout of `ty`, `None` for a type without integer kernels.
pub(crate) fn layout(ty: GgmlType) -> Option<Layout> {
    let small = |bytes| Layout { values: 32, bytes };
    let large = |bytes| Layout {
        values: QK_K,
        bytes,
    };
    Some(match ty {
        GgmlType::Q4_0 => small(32 + 256),
        GgmlType::Q4_1 => small(64 + 256),
        GgmlType::Q5_0 => small(32 + 256 + 64),
        GgmlType::Q5_1 => small(64 + 256 + 64),
        GgmlType::Q8_0 => small(32 + 512),
        GgmlType::Q4_K => large(64 + 256 + 8 * 256),
        GgmlType::Q5_K => large(64 + 256 + 8 * (256 + 64)),
        GgmlType::Q6_K => large(32 + 256 + 8 * (256 + 128)),
        _ => return None,
    })
}

/// Rows of one ggml type repacked in panels.
#[derive(Clone)]
pub struct Panels {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    layout: Layout,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Panels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Panels({} {}x{})", self.ty, self.rows, self.cols)
    }
}

/// One row's block, decoded: unsigned values and the scale fields.
#[derive(Clone, Copy)]
struct Decoded {
    q: [u8; QK_K],
    /// f16 bits of d (Q6_K: d; K-quants: d), and of m / dmin.
    d: u16,
    m: u16,
    /// K-quant sub-block scales (Q6_K: 16 signed, as bytes) and mins.
    sc: [u8; 16],
    mn: [u8; 8],
}

impl Decoded {
    const ZERO: Decoded = Decoded {
        q: [0; QK_K],
        d: 0,
        m: 0,
        sc: [0; 16],
        mn: [0; 8],
    };
}

fn f16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Decode one ggml block of `ty` (one row's part of a panel block).
fn decode(ty: GgmlType, b: &[u8]) -> Decoded {
    let mut out = Decoded::ZERO;
    let nibbles = |qs: &[u8], q: &mut [u8]| {
        for j in 0..16 {
            q[j] = qs[j] & 0x0f;
            q[j + 16] = qs[j] >> 4;
        }
    };
    let bit4 = |qh: u32, q: &mut [u8]| {
        for (j, q) in q.iter_mut().enumerate().take(32) {
            *q |= (((qh >> j) & 1) << 4) as u8;
        }
    };
    match ty {
        GgmlType::Q4_0 => {
            out.d = f16(b, 0);
            nibbles(&b[2..18], &mut out.q);
        }
        GgmlType::Q4_1 => {
            (out.d, out.m) = (f16(b, 0), f16(b, 2));
            nibbles(&b[4..20], &mut out.q);
        }
        GgmlType::Q5_0 => {
            out.d = f16(b, 0);
            nibbles(&b[6..22], &mut out.q);
            bit4(u32::from_le_bytes([b[2], b[3], b[4], b[5]]), &mut out.q);
        }
        GgmlType::Q5_1 => {
            (out.d, out.m) = (f16(b, 0), f16(b, 2));
            nibbles(&b[8..24], &mut out.q);
            bit4(u32::from_le_bytes([b[4], b[5], b[6], b[7]]), &mut out.q);
        }
        GgmlType::Q8_0 => {
            out.d = f16(b, 0);
            out.q[..32].copy_from_slice(&b[2..34]);
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            (out.d, out.m) = (f16(b, 0), f16(b, 2));
            let (sc, mn) = crate::gguf::dequant::k_scales_mins(&b[4..16]);
            out.sc[..8].copy_from_slice(&sc);
            out.mn = mn;
            let (qh, qs) = if ty == GgmlType::Q5_K {
                (Some(&b[16..48]), &b[48..176])
            } else {
                (None, &b[16..144])
            };
            for i in 0..4 {
                for l in 0..32 {
                    let (s1, s2) = (2 * i, 2 * i + 1);
                    let (h1, h2) = match qh {
                        Some(qh) => (((qh[l] >> s1) & 1) << 4, ((qh[l] >> s2) & 1) << 4),
                        None => (0, 0),
                    };
                    out.q[64 * i + l] = (qs[32 * i + l] & 0x0f) | h1;
                    out.q[64 * i + 32 + l] = (qs[32 * i + l] >> 4) | h2;
                }
            }
        }
        GgmlType::Q6_K => {
            out.d = f16(b, 208);
            out.sc.copy_from_slice(&b[192..208]);
            for h in 0..2 {
                let (ql, qh) = (&b[64 * h..64 * h + 64], &b[128 + 32 * h..160 + 32 * h]);
                for l in 0..32 {
                    let q = &mut out.q[128 * h..128 * h + 128];
                    q[l] = (ql[l] & 0x0f) | ((qh[l] & 3) << 4);
                    q[l + 32] = (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4);
                    q[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    q[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                }
            }
        }
        _ => unreachable!("layout() rejects {ty}"),
    }
    out
}

/// Write 32 values (`q[base..base + 32]` of each row) in the panel value layout of `ty` into
/// `out` (the block's value parts: 4-bit chunks, then the 5th-bit words or the 2-bit chunks).
fn pack_values(ty: GgmlType, rows: &[Decoded; PANEL], base: usize, out: &mut [u8]) {
    let value = |g: usize, j: usize| rows[j / 4].q[base + 4 * g + j % 4];
    if ty == GgmlType::Q8_0 {
        for g in 0..8 {
            for j in 0..KGROUP {
                out[g * KGROUP + j] = value(g, j);
            }
        }
        return;
    }
    for c in 0..4 {
        for j in 0..KGROUP {
            out[c * KGROUP + j] = (value(2 * c, j) & 0x0f) | ((value(2 * c + 1, j) & 0x0f) << 4);
        }
    }
    let rest = &mut out[4 * KGROUP..];
    match ty {
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => {
            for g in 0..8 {
                let mut word = 0u64;
                for j in 0..KGROUP {
                    word |= (((value(g, j) >> 4) & 1) as u64) << j;
                }
                rest[8 * g..8 * g + 8].copy_from_slice(&word.to_le_bytes());
            }
        }
        GgmlType::Q6_K => {
            for h in 0..2 {
                for j in 0..KGROUP {
                    let mut byte = 0u8;
                    for i in 0..4 {
                        byte |= ((value(4 * h + i, j) >> 4) & 3) << (2 * i);
                    }
                    rest[h * KGROUP + j] = byte;
                }
            }
        }
        _ => {}
    }
}

/// Bytes of the value parts of 32 values of a panel.
fn value_bytes(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q8_0 => 8 * KGROUP,
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => 4 * KGROUP + 64,
        GgmlType::Q6_K => 6 * KGROUP,
        _ => 4 * KGROUP,
    }
}

impl Panels {
    /// Repack `rows` rows of `ty` (`bytes`, row-major, `cols` values a row, validated whole
    /// blocks); `None` for a type without integer kernels.
    pub fn new(ty: GgmlType, bytes: &[u8], rows: usize, cols: usize) -> Option<Panels> {
        let layout = layout(ty)?;
        let blocks = cols / layout.values;
        let block_bytes = ty.type_size();
        let row_bytes = blocks * block_bytes;
        let panels = rows.div_ceil(PANEL);
        let panel_bytes = blocks * layout.bytes;
        let mut out = vec![0u8; panels * panel_bytes];
        // Panels are independent: repacked on every core (a model's weights at load).
        out.par_chunks_mut(panel_bytes.max(1))
            .enumerate()
            .for_each(|(p, panel)| {
                let mut decoded = [Decoded::ZERO; PANEL];
                for k in 0..blocks {
                    for (r, d) in decoded.iter_mut().enumerate() {
                        let row = p * PANEL + r;
                        *d = if row < rows {
                            let at = row * row_bytes + k * block_bytes;
                            decode(ty, &bytes[at..at + block_bytes])
                        } else {
                            Decoded::ZERO
                        };
                    }
                    let at = k * layout.bytes;
                    pack_block(ty, &decoded, &mut panel[at..at + layout.bytes]);
                }
            });
        Some(Panels {
            ty,
            rows,
            cols,
            layout,
            bytes: out,
        })
    }

    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Panels held (the last may be padded).
    pub fn panels(&self) -> usize {
        self.rows.div_ceil(PANEL)
    }

    /// Bytes held.
    pub fn n_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Panel `p`'s bytes.
    pub(crate) fn panel(&self, p: usize) -> &[u8] {
        let size = self.cols / self.layout.values * self.layout.bytes;
        &self.bytes[p * size..(p + 1) * size]
    }
}

/// Write one panel block (scale fields, then values) of `ty` from its 16 rows' blocks.
fn pack_block(ty: GgmlType, rows: &[Decoded; PANEL], out: &mut [u8]) {
    let mut at = 0;
    let put_f16 = |out: &mut [u8], at: &mut usize, f: fn(&Decoded) -> u16| {
        for r in rows {
            out[*at..*at + 2].copy_from_slice(&f(r).to_le_bytes());
            *at += 2;
        }
    };
    put_f16(out, &mut at, |r| r.d);
    if matches!(
        ty,
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K
    ) {
        put_f16(out, &mut at, |r| r.m);
    }
    match ty {
        GgmlType::Q4_K | GgmlType::Q5_K => {
            for s in 0..8 {
                for r in rows {
                    out[at] = r.sc[s];
                    at += 1;
                }
            }
            // The minimums in pairs of sub-blocks: row `r`'s minimums of sub-blocks `2p`
            // and `2p + 1` side by side, one 16-bit pair a lane for the kernels' pair dots.
            for p in 0..4 {
                for r in rows {
                    out[at] = r.mn[2 * p];
                    out[at + 1] = r.mn[2 * p + 1];
                    at += 2;
                }
            }
        }
        GgmlType::Q6_K => {
            for s in 0..16 {
                for r in rows {
                    out[at] = r.sc[s];
                    at += 1;
                }
            }
        }
        _ => {}
    }
    let values = if matches!(ty, GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K) {
        8
    } else {
        1
    };
    let vb = value_bytes(ty);
    for v in 0..values {
        pack_values(ty, rows, 32 * v, &mut out[at..at + vb]);
        at += vb;
    }
    debug_assert_eq!(at, out.len());
}

/// Offset subtracted from the unsigned values (`d · (q - OFFSET)`), per format.
pub(crate) fn offset(ty: GgmlType) -> i32 {
    match ty {
        GgmlType::Q4_0 => 8,
        GgmlType::Q5_0 => 16,
        GgmlType::Q6_K => 32,
        _ => 0,
    }
}

/// The value of k-group `g`, byte `j` (row `j / 4`, value `4g + j % 4`) of the 32 values at
/// `v` (the value parts of a panel block), unsigned (Q8_0: signed, as i32).
fn stored_value(ty: GgmlType, v: &[u8], g: usize, j: usize) -> i32 {
    if ty == GgmlType::Q8_0 {
        return v[g * KGROUP + j] as i8 as i32;
    }
    let chunk = v[(g / 2) * KGROUP + j];
    let mut q = if g.is_multiple_of(2) {
        chunk & 0x0f
    } else {
        chunk >> 4
    } as i32;
    let rest = &v[4 * KGROUP..];
    match ty {
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => {
            let word = u64::from_le_bytes(rest[8 * g..8 * g + 8].try_into().expect("8 bytes"));
            q |= (((word >> j) & 1) as i32) << 4;
        }
        GgmlType::Q6_K => {
            let byte = rest[(g / 4) * KGROUP + j];
            q |= (((byte >> (2 * (g % 4))) & 3) as i32) << 4;
        }
        _ => {}
    }
    q
}

/// The panel kernel in plain Rust (its per-lane loops index several rows' state at once): `out[t * PANEL + r]` = row `r` of `panel` times
/// activation row `t` of `acts`, for every `t`. The reference of the vector kernels (same
/// arithmetic, same order: results equal bit for bit) and the kernel of other CPUs.
#[allow(clippy::needless_range_loop)]
pub(crate) fn panel_dot(ty: GgmlType, panel: &[u8], acts: &[ActivationRow], out: &mut [f32]) {
    let Some(layout) = layout(ty) else { return };
    let blocks = panel.len() / layout.bytes;
    let vb = value_bytes(ty);
    let min = matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1);
    for (t, a) in acts.iter().enumerate() {
        let mut acc = [0.0f32; PANEL];
        for k in 0..blocks {
            let pb = &panel[k * layout.bytes..(k + 1) * layout.bytes];
            let d = |r: usize| f16_bits_to_f32(u16::from_le_bytes([pb[2 * r], pb[2 * r + 1]]));
            let m = |r: usize| {
                let at = 32 + 2 * r;
                f16_bits_to_f32(u16::from_le_bytes([pb[at], pb[at + 1]]))
            };
            match ty {
                GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => {
                    let scales = if ty == GgmlType::Q6_K { 32 } else { 64 };
                    let values = scales + 256;
                    let da = a.scales[k];
                    // The scaled integer dots of the super-block, and (Q4_K/Q5_K) its
                    // minimums times the activations' integer sums, per row.
                    let mut isum = [0i32; PANEL];
                    let mut imin = [0i32; PANEL];
                    for sub in 0..8 {
                        let v = &pb[values + sub * vb..values + (sub + 1) * vb];
                        let first = 256 * k + 32 * sub;
                        for r in 0..PANEL {
                            if ty == GgmlType::Q6_K {
                                for half in 0..2 {
                                    let mut dot = 0i32;
                                    for g in 4 * half..4 * half + 4 {
                                        for i in 0..4 {
                                            let q = stored_value(ty, v, g, 4 * r + i);
                                            dot += q * a.qs[first + 4 * g + i] as i32;
                                        }
                                    }
                                    let s16 = (first / 16) + half;
                                    dot -= 32 * a.sums16[s16] as i32;
                                    let sc = pb[scales + (2 * sub + half) * PANEL + r] as i8;
                                    isum[r] += dot * sc as i32;
                                }
                            } else {
                                let mut dot = 0i32;
                                for g in 0..8 {
                                    for i in 0..4 {
                                        let q = stored_value(ty, v, g, 4 * r + i);
                                        dot += q * a.qs[first + 4 * g + i] as i32;
                                    }
                                }
                                let sc = pb[scales + sub * PANEL + r] as i32;
                                let mn = pb[scales + 128 + (sub / 2) * 32 + 2 * r + sub % 2];
                                isum[r] += dot * sc;
                                imin[r] += mn as i32 * a.sums32[first / 32] as i32;
                            }
                        }
                    }
                    for r in 0..PANEL {
                        if ty != GgmlType::Q6_K {
                            acc[r] = (imin[r] as f32).mul_add(-(m(r) * da), acc[r]);
                        }
                        acc[r] = (isum[r] as f32).mul_add(d(r) * da, acc[r]);
                    }
                }
                _ => {
                    let values = if min { 64 } else { 32 };
                    let v = &pb[values..values + vb];
                    let da = a.scales[k];
                    for r in 0..PANEL {
                        let mut dot = 0i32;
                        for g in 0..8 {
                            for i in 0..4 {
                                let q = stored_value(ty, v, g, 4 * r + i);
                                dot += q * a.qs[32 * k + 4 * g + i] as i32;
                            }
                        }
                        dot -= offset(ty) * a.sums32[k] as i32;
                        acc[r] = (dot as f32).mul_add(d(r) * da, acc[r]);
                        if min {
                            acc[r] = m(r).mul_add(a.scaled_sums32[k], acc[r]);
                        }
                    }
                }
            }
        }
        out[t * PANEL..(t + 1) * PANEL].copy_from_slice(&acc);
    }
}

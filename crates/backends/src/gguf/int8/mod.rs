//! Integer dot products of ggml weight blocks with 8-bit activations: the `fast` precision of
//! the CPU path, llama.cpp's route to the memory-bandwidth limit (see
//! `shared/research/cpu-kernels.md` of the project).
//!
//! Once per matrix product, each activation row is quantised to 8-bit blocks
//! ([`ActivationBlocks`]: 32 values a scale for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 weights, 256 for
//! Q4_K/Q5_K/Q6_K, as ggml's `Q8_0`/`Q8_K`). A weight block is then multiplied with it in
//! integers (`u8 × i8` pairs summed exactly) and scaled once per block, so a decode step
//! touches each weight byte once with a few integer instructions instead of dequantising it
//! to `f32`: the products stay memory-bound where the `f32` route was compute-bound.
//!
//! The kernels, chosen once per process by [`Isa::detect`]:
//! - AVX-512 VNNI (`dpbusd`/`dpwssd` on 256-bit registers, tiles of up to 8 activation rows),
//! - AVX2 + FMA + F16C (`maddubs`/`madd`, tiles of up to 4),
//! - portable Rust (every other CPU; fixed-size integer loops the compiler vectorises).
//!
//! All three compute the same exact integer sums; AVX2 and AVX-512 give bit-identical results,
//! and a row's result never depends on how many rows share the product. The price of speed
//! is the rounding of activations to 8 bits (relative error ≤ 1/254 of a block's largest
//! value), which llama.cpp pays too; the `exact` precision ([`super::QuantMatrix::matmul_t`])
//! keeps `f32` activations.

mod activations;
mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

pub use activations::{
    ActivationBlocks, ActivationPairs, ActivationRow, PairRow, SMALL_BLOCK, SUPER_BLOCK,
};

use super::types::GgmlType;

/// The instruction set the integer kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 F/BW/DQ/VL and VNNI (Ice Lake, Sapphire Rapids, Zen 4 and later), with AVX2,
    /// FMA, F16C: 256-bit kernels for one activation row, 512-bit ones for pairs of rows.
    Avx512Vnni,
    /// AVX2, FMA and F16C (Haswell, Zen 1 and later).
    Avx2,
    /// Plain Rust.
    Portable,
}

impl Isa {
    /// The widest instruction set this CPU has (detected once), or the one named by
    /// `HLM_CPU_KERNELS` (`avx512-vnni`, `avx2` or `portable`) if the CPU has it: to measure
    /// the narrower kernels on a wider CPU.
    pub fn detect() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let available = Isa::available();
            if let Ok(name) = std::env::var("HLM_CPU_KERNELS") {
                match available.iter().find(|i| i.key() == name.trim()) {
                    Some(&isa) => return isa,
                    None => tracing::warn!(
                        "HLM_CPU_KERNELS={name}: not one this CPU runs ({}); using {}",
                        available
                            .iter()
                            .map(|i| i.key())
                            .collect::<Vec<_>>()
                            .join(", "),
                        available[0].key()
                    ),
                }
            }
            available[0]
        })
    }

    /// The name `HLM_CPU_KERNELS` takes.
    pub fn key(self) -> &'static str {
        match self {
            Isa::Avx512Vnni => "avx512-vnni",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// Every instruction set this CPU can run, widest first (`Portable` always last).
    pub fn available() -> Vec<Isa> {
        let mut isas = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            let avx512 = has!("avx512f")
                && has!("avx512vl")
                && has!("avx512bw")
                && has!("avx512dq")
                && has!("avx512vnni");
            if avx2 && avx512 {
                isas.push(Isa::Avx512Vnni);
            }
            if avx2 {
                isas.push(Isa::Avx2);
            }
        }
        isas.push(Isa::Portable);
        isas
    }

    /// A short name for logs and benchmark tables.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512Vnni => "AVX-512 VNNI",
            Isa::Avx2 => "AVX2",
            Isa::Portable => "portable",
        }
    }
}

/// Values per activation scale that weights of `ty` are multiplied with, or `None` when `ty`
/// has no integer kernel (F32, F16, BF16 and the formats hlm only parses).
pub fn activation_block(ty: GgmlType) -> Option<usize> {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
            Some(SMALL_BLOCK)
        }
        GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => Some(SUPER_BLOCK),
        _ => None,
    }
}

/// `out[row * n + t] = dequantised(row) · acts[t]` for every weight row of `bytes` (rows of
/// type `ty`, `row_bytes` each, whole blocks) and every activation row `t` of `acts`
/// (`n = acts.len()`), with `isa` (one of [`Isa::available`]). Each activation row holds as many
/// values as a weight row, quantised in blocks of [`activation_block`]`(ty)`. One call covers
/// a whole task's rows. `false` (and `out` untouched) for a type without a kernel.
#[cfg(test)]
pub(crate) fn rows_dot(
    isa: Isa,
    ty: GgmlType,
    bytes: &[u8],
    row_bytes: usize,
    acts: &[ActivationRow],
    out: &mut [f32],
) -> bool {
    rows_dot_paired(isa, ty, bytes, row_bytes, acts, &[], out)
}

/// [`rows_dot`], given the activation rows also in pairs ([`ActivationPairs`] of the same
/// rows, or none): with [`Isa::Avx512Vnni`] and two or more rows the 512-bit pair kernels run
/// (the same results, bit for bit, in fewer instructions).
pub(crate) fn rows_dot_paired(
    isa: Isa,
    ty: GgmlType,
    bytes: &[u8],
    row_bytes: usize,
    acts: &[ActivationRow],
    pairs: &[PairRow],
    out: &mut [f32],
) -> bool {
    let n = acts.len();
    if n == 0 || row_bytes == 0 {
        return activation_block(ty).is_some();
    }
    let rows = bytes.len() / row_bytes;
    assert!(
        bytes.len() == rows * row_bytes && out.len() == rows * n,
        "{} bytes are not whole rows of {row_bytes}, or {} outputs are not {rows} x {n}",
        bytes.len(),
        out.len()
    );
    let values = ty.block_size() * row_bytes / ty.type_size();
    assert!(
        acts.iter().all(|a| a.qs.len() == values),
        "activation rows must hold {values} values"
    );
    assert!(
        pairs.is_empty()
            || (pairs.len() == n.div_ceil(2) && pairs.iter().all(|p| p.qs.len() == 2 * values)),
        "{} pairs of {n} rows of {values} values",
        pairs.len()
    );
    match isa {
        // SAFETY: `Isa::available` only lists instruction sets the CPU has; the slices are as
        // the kernels require (checked above).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if n > 1 && !pairs.is_empty() => unsafe {
            x86::rows_pairs(ty, bytes, row_bytes, pairs, n, out)
        },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => unsafe { x86::rows_vnni(ty, bytes, row_bytes, acts, out) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::rows_avx2(ty, bytes, row_bytes, acts, out) },
        _ => bytes
            .chunks_exact(row_bytes)
            .zip(out.chunks_exact_mut(n))
            .all(|(w, y)| portable::dot_rows(ty, w, acts, y)),
    }
}

#[cfg(test)]
mod tests;

//! Integer dot products of ggml weight blocks with 8-bit activations: the `fast` precision of
//! the CPU path, llama.cpp's route to the memory-bandwidth limit (see
//! `shared/research/cpu-kernels.md` of the project).
//!
//! Once per matrix product, each activation row is quantised to 8-bit blocks
//! ([`ActivationBlocks`]: 32 values a scale for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 weights, 256 for
//! Q4_K/Q5_K/Q6_K, as ggml's `Q8_0`/`Q8_K`). The weights are repacked once, at load, in
//! panels of 16 rows ([`Panels`]) whose values are interleaved so that 4 broadcast
//! activation bytes multiply 4 values of all 16 rows in one instruction; the lanes of the
//! result are the rows. Integer sums are exact, and each block is scaled once per row.
//!
//! The kernels, chosen once per process by [`Isa::detect`]:
//! - AVX-512 VNNI: one 512-bit `vpdpbusd` per 4 values of 16 rows;
//! - AVX2 + FMA + F16C: the same in two 256-bit halves (`vpmaddubsw` + `vpmaddwd`);
//! - portable Rust (every other CPU).
//!
//! A tile of up to 8 activation rows (a verification pass, a prefill) shares each block's
//! unpacked weights, which stay in registers. All three kernels perform the same arithmetic
//! in the same order and give the same bits, and a row's result does not depend on how many
//! activation rows share the call: verifying drafts gives the logits of decoding them one by
//! one. The price of speed is the rounding of activations to 8 bits (relative error ≤ 1/254
//! of a block's largest value), which llama.cpp pays too; the `exact` precision
//! ([`super::QuantMatrix::matmul_t`]) keeps `f32` activations.

mod activations;
mod panels;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

pub use activations::{ActivationBlocks, ActivationRow, SMALL_BLOCK, SUPER_BLOCK};
pub use panels::{PANEL, Panels};

use super::types::GgmlType;

/// The instruction set the integer kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 F/BW/DQ/VL and VNNI (Ice Lake, Sapphire Rapids, Zen 4 and later), with AVX2,
    /// FMA and F16C.
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

    /// Whether this CPU runs `isa` (detected once).
    pub fn runnable(isa: Isa) -> bool {
        static AVAILABLE: OnceLock<Vec<Isa>> = OnceLock::new();
        AVAILABLE.get_or_init(Isa::available).contains(&isa)
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

/// `out[t * PANEL + r]` = row `r` of `panel` (one panel of `ty`, [`Panels`]) times activation
/// row `t` of `acts` (quantised in blocks of [`activation_block`]`(ty)`, as long as the
/// panel's rows), with `isa` (one of [`Isa::available`]). Every instruction set gives the
/// same bits.
pub(crate) fn panel_dot(
    isa: Isa,
    ty: GgmlType,
    panel: &[u8],
    acts: &[ActivationRow],
    out: &mut [f32],
) {
    let Some(layout) = panels::layout(ty) else {
        return;
    };
    let values = panel.len() / layout.bytes * layout.values;
    let block = activation_block(ty).unwrap_or(SMALL_BLOCK);
    // The vector kernels read every part of a row by raw pointer: each must be complete.
    let whole = |a: &ActivationRow| {
        a.qs.len() == values
            && a.scales.len() == values / block
            && a.sums16.len() == values / 16
            && a.sums32.len() == values / 32
            && a.scaled_sums32.len() == values / 32
    };
    assert!(
        panel.len().is_multiple_of(layout.bytes)
            && out.len() == PANEL * acts.len()
            && acts.iter().all(whole),
        "a panel of {} bytes of {ty} against {} activation rows (quantised in blocks of {block})",
        panel.len(),
        acts.len()
    );
    assert!(
        Isa::runnable(isa),
        "{} kernels on a CPU without them",
        isa.name()
    );
    match isa {
        // SAFETY: the CPU has the instruction set (checked above), and the slices are as the
        // kernels require (checked above).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => unsafe {
            x86::panel_avx512(ty, panel, acts, out);
        },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe {
            x86::panel_avx2(ty, panel, acts, out);
        },
        _ => panels::panel_dot(ty, panel, acts, out),
    }
}

#[cfg(test)]
mod tests;

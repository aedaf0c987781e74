//! The integer kernels against the dequantised weights times the dequantised activations (in
//! `f64`): what they compute exactly, up to `f32` summation; and against each other.

use super::*;
use crate::gguf::dequantize;
use crate::gguf::synthetic::random_rows;

const TYPES: [GgmlType; 8] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

fn activations(n: usize, cols: usize, seed: usize) -> Vec<f32> {
    (0..n * cols)
        .map(|i| (((i + seed) * 7919 % 2003) as f32 - 1001.0) / 613.0)
        .collect()
}

/// `Σ w · (q_a d_a)` in f64: the exact value of the integer product.
fn reference(w: &[f32], a: &ActivationBlocks, t: usize) -> f64 {
    let row = a.row(t);
    w.iter()
        .enumerate()
        .map(|(i, &w)| w as f64 * row.qs[i] as f64 * row.scales[i / a.block()] as f64)
        .sum()
}

/// Repacked panels (rows not a multiple of 16 included) give, on every instruction set and
/// bit for bit the same, each row's integer product with each activation row; and a row's
/// result does not depend on how many activation rows share the call.
#[test]
fn panels_compute_the_integer_product_on_every_instruction_set() {
    let cols = 512;
    for (k, ty) in TYPES.into_iter().enumerate() {
        let rows = 21;
        let bytes = random_rows(ty, rows, cols, 500 + k as u64);
        let row_bytes = bytes.len() / rows;
        let panels = Panels::new(ty, &bytes, rows, cols).expect("a panel layout");
        assert_eq!(panels.panels(), 2);
        let block = activation_block(ty).expect("kernel");
        let n = 11;
        let x = activations(n, cols, 9 * k);
        let a = ActivationBlocks::quantize(&x, cols, block);
        let acts: Vec<ActivationRow> = (0..n).map(|t| a.row(t)).collect();
        let mut first: Option<Vec<f32>> = None;
        for isa in Isa::available() {
            let mut got = vec![0.0f32; 2 * PANEL * n];
            for p in 0..2 {
                panel_dot(
                    isa,
                    ty,
                    panels.panel(p),
                    &acts,
                    &mut got[p * PANEL * n..(p + 1) * PANEL * n],
                );
            }
            for t in 0..n {
                for r in 0..rows {
                    let (p, lane) = (r / PANEL, r % PANEL);
                    let g = got[p * PANEL * n + t * PANEL + lane] as f64;
                    let w = dequantize(ty, &bytes[r * row_bytes..(r + 1) * row_bytes], cols)
                        .expect("dq");
                    let want = reference(&w, &a, t);
                    let scale: f64 = w
                        .iter()
                        .zip(&x[t * cols..])
                        .map(|(w, x)| (w * x).abs() as f64)
                        .sum();
                    assert!(
                        (g - want).abs() <= 1e-5 * scale + 1e-6,
                        "{ty} {isa:?} row {r} act {t}: {g} vs {want}"
                    );
                }
            }
            // One activation row at a time: the same bits.
            for t in 0..n {
                let mut one = vec![0.0f32; PANEL];
                panel_dot(isa, ty, panels.panel(1), &acts[t..t + 1], &mut one);
                assert_eq!(
                    one[..],
                    got[PANEL * n + t * PANEL..PANEL * n + (t + 1) * PANEL],
                    "{ty} {isa:?} act {t}"
                );
            }
            match &first {
                None => first = Some(got),
                Some(f) => assert_eq!(
                    f,
                    &got,
                    "{ty}: {isa:?} differs from {:?}",
                    Isa::available()[0]
                ),
            }
        }
    }
}

#[test]
fn types_without_a_kernel_have_no_panels() {
    assert_eq!(activation_block(GgmlType::F16), None);
    assert!(Panels::new(GgmlType::F16, &[0; 64], 1, 32).is_none());
    assert!(Panels::new(GgmlType::IQ2_XS, &[0; 66], 1, 256).is_none());
}

/// Blocks at the limits of every format (all values at their largest, Q8_0 at -128 and 127,
/// Q6_K scales at -128, K-quant scales and mins at 63) against activations at ±127: no
/// intermediate sum saturates or overflows on any instruction set.
#[test]
fn extreme_values_neither_saturate_nor_overflow() {
    let cols = 512;
    for ty in TYPES {
        for fill in [0xffu8, 0x80, 0x7f] {
            let rows = 16;
            let mut bytes = random_rows(ty, rows, cols, 1);
            let scale = half::f16::from_f32(0.01).to_le_bytes();
            for b in bytes.chunks_exact_mut(ty.type_size()) {
                let keep: &[usize] = match ty {
                    GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 => &[0],
                    GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
                    _ => &[208],
                };
                b.fill(fill);
                for &at in keep {
                    b[at..at + 2].copy_from_slice(&scale);
                }
            }
            let w = dequantize(ty, &bytes, rows * cols).expect("dequantise");
            let panels = Panels::new(ty, &bytes, rows, cols).expect("panels");
            let block = activation_block(ty).expect("kernel");
            for sign in [1.0f32, -1.0] {
                let x = vec![sign; 3 * cols];
                let a = ActivationBlocks::quantize(&x, cols, block);
                assert!(a.row(0).qs.iter().all(|&q| q == (127.0 * sign) as i8));
                let acts: Vec<ActivationRow> = (0..3).map(|t| a.row(t)).collect();
                let mut first: Option<Vec<f32>> = None;
                for isa in Isa::available() {
                    let mut got = vec![0.0f32; PANEL * 3];
                    panel_dot(isa, ty, panels.panel(0), &acts, &mut got);
                    for r in 0..rows {
                        let want = reference(&w[r * cols..(r + 1) * cols], &a, 0);
                        let g = got[r] as f64;
                        assert!(
                            (g - want).abs() <= 1e-4 * want.abs().max(1.0),
                            "{ty} fill {fill:#x} sign {sign} {isa:?} row {r}: {g} vs {want}"
                        );
                    }
                    match &first {
                        None => first = Some(got),
                        Some(f) => assert_eq!(f, &got, "{ty} fill {fill:#x}: {isa:?} differs"),
                    }
                }
            }
        }
    }
}

//! The integer kernels against the dequantised weights times the dequantised activations (in
//! `f64`): what they compute exactly, up to `f32` summation.

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

/// One weight row against `acts`.
fn dot_rows(isa: Isa, ty: GgmlType, w: &[u8], acts: &[ActivationRow], out: &mut [f32]) -> bool {
    rows_dot(isa, ty, w, w.len(), acts, &mut out[..acts.len()])
}

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

#[test]
fn every_kernel_computes_the_integer_product() {
    let cols = 512;
    for (k, ty) in TYPES.into_iter().enumerate() {
        let bytes = random_rows(ty, 1, cols, 100 + k as u64);
        let w = dequantize(ty, &bytes, cols).expect("dequantise");
        let block = activation_block(ty).expect("an integer kernel");
        let x = activations(9, cols, k);
        let a = ActivationBlocks::quantize(&x, cols, block);
        let rows: Vec<ActivationRow> = (0..9).map(|t| a.row(t)).collect();
        for isa in Isa::available() {
            let mut out = vec![0.0f32; 9];
            assert!(dot_rows(isa, ty, &bytes, &rows, &mut out), "{ty} {isa:?}");
            for (t, &got) in out.iter().enumerate() {
                let want = reference(&w, &a, t);
                let scale: f64 = w
                    .iter()
                    .zip(&x[t * cols..])
                    .map(|(w, x)| (w * x).abs() as f64)
                    .sum();
                assert!(
                    (got as f64 - want).abs() <= 1e-5 * scale + 1e-6,
                    "{ty} {isa:?} row {t}: {got} vs {want}"
                );
                // And within the activations' rounding of the f32 product.
                let exact: f64 = w
                    .iter()
                    .zip(&x[t * cols..])
                    .map(|(w, x)| (w * x) as f64)
                    .sum();
                assert!(
                    (got as f64 - exact).abs() <= 0.01 * scale,
                    "{ty} {isa:?} row {t}: {got} vs f32 {exact}"
                );
            }
        }
    }
}

/// A row's result is the same whatever tile it is computed in, and the two x86 kernels agree
/// bit for bit.
#[test]
fn results_do_not_depend_on_the_tile_or_the_vector_kernel() {
    let cols = 768;
    for (k, ty) in TYPES.into_iter().enumerate() {
        let bytes = random_rows(ty, 1, cols, 7 + k as u64);
        let block = activation_block(ty).expect("kernel");
        let x = activations(9, cols, 3 * k);
        let a = ActivationBlocks::quantize(&x, cols, block);
        let rows: Vec<ActivationRow> = (0..9).map(|t| a.row(t)).collect();
        let mut vector: Option<Vec<f32>> = None;
        for isa in Isa::available() {
            let mut all = vec![0.0f32; 9];
            dot_rows(isa, ty, &bytes, &rows, &mut all);
            for n in 1..=9 {
                let mut some = vec![0.0f32; n];
                dot_rows(isa, ty, &bytes, &rows[..n], &mut some);
                assert_eq!(some, all[..n], "{ty} {isa:?} with {n} rows");
            }
            if isa != Isa::Portable {
                match &vector {
                    None => vector = Some(all),
                    Some(v) => assert_eq!(v, &all, "{ty}: {isa:?} differs"),
                }
            }
        }
    }
}

/// Many weight rows in one call give each row's own product, in `[rows, n]` order.
#[test]
fn a_task_of_rows_is_its_rows_one_by_one() {
    let (cols, rows, n) = (512, 37, 3);
    for (k, ty) in TYPES.into_iter().enumerate() {
        let bytes = random_rows(ty, rows, cols, 70 + k as u64);
        let row_bytes = bytes.len() / rows;
        let a = ActivationBlocks::quantize(
            &activations(n, cols, k),
            cols,
            activation_block(ty).expect("kernel"),
        );
        let acts: Vec<ActivationRow> = (0..n).map(|t| a.row(t)).collect();
        for isa in Isa::available() {
            let mut all = vec![0.0f32; rows * n];
            assert!(rows_dot(isa, ty, &bytes, row_bytes, &acts, &mut all));
            for (r, w) in bytes.chunks_exact(row_bytes).enumerate() {
                let mut one = vec![0.0f32; n];
                dot_rows(isa, ty, w, &acts, &mut one);
                assert_eq!(one, all[r * n..(r + 1) * n], "{ty} {isa:?} row {r}");
            }
        }
    }
}

/// The 512-bit pair kernels give every row the bits the one-row kernels give it.
#[test]
fn pair_kernels_equal_the_row_kernels_bit_for_bit() {
    if !Isa::available().contains(&Isa::Avx512Vnni) {
        eprintln!("skipped: this CPU has no AVX-512 VNNI");
        return;
    }
    let (cols, rows) = (768, 5);
    for (k, ty) in TYPES.into_iter().enumerate() {
        let bytes = random_rows(ty, rows, cols, 300 + k as u64);
        let row_bytes = bytes.len() / rows;
        let block = activation_block(ty).expect("kernel");
        for n in 2..=11 {
            let a = ActivationBlocks::quantize(&activations(n, cols, 5 * k + n), cols, block);
            let acts: Vec<ActivationRow> = (0..n).map(|t| a.row(t)).collect();
            let pairs = ActivationPairs::new(&a);
            let pair_rows: Vec<PairRow> = (0..pairs.len()).map(|p| pairs.pair(p, &a)).collect();
            let mut paired = vec![0.0f32; rows * n];
            assert!(rows_dot_paired(
                Isa::Avx512Vnni,
                ty,
                &bytes,
                row_bytes,
                &acts,
                &pair_rows,
                &mut paired
            ));
            for isa in [Isa::Avx512Vnni, Isa::Avx2] {
                let mut single = vec![0.0f32; rows * n];
                rows_dot(isa, ty, &bytes, row_bytes, &acts, &mut single);
                assert_eq!(paired, single, "{ty} with {n} rows vs {isa:?}");
            }
        }
    }
}

#[test]
fn types_without_a_kernel_say_so() {
    assert_eq!(activation_block(GgmlType::F16), None);
    let a = ActivationBlocks::quantize(&[1.0; 32], 32, SMALL_BLOCK);
    let mut out = [0.0f32];
    for isa in Isa::available() {
        assert!(!dot_rows(
            isa,
            GgmlType::F16,
            &[0; 64],
            &[a.row(0)],
            &mut out
        ));
    }
    assert_eq!(out, [0.0]);
}

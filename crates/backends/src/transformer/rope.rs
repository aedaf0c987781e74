//! Rotary position embedding for both pair layouts, written by hand because burn's
//! `RotaryEncoding` only knows the interleaved one.

use burn::tensor::{Device, Tensor, TensorData};

use super::config::RopeLayout;

/// Inverse frequencies `theta^(-2i/head_dim)` for `i < head_dim/2`.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
    layout: RopeLayout,
}

/// cos/sin of the angles of a run of positions, shaped for broadcasting over heads.
pub struct RopeAngles {
    cos: Tensor<2>,
    sin: Tensor<2>,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f64, layout: RopeLayout) -> Self {
        // Rounded to f32 like HF and llama.cpp do, so angles at large positions agree with
        // the references to the last bit that matters.
        let inv_freq = (0..head_dim / 2)
            .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
            .collect();
        Rope { inv_freq, layout }
    }

    /// cos and sin of the angles for positions `start .. start + len`, row-major
    /// `[len, head_dim/2]` each.
    pub fn table(&self, start: usize, len: usize) -> (Vec<f32>, Vec<f32>) {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for pos in start..start + len {
            for &f in &self.inv_freq {
                // The product is taken in f32 (as HF does), the trigonometry in f64.
                let angle = f64::from(pos as f32 * f);
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        (cos, sin)
    }

    /// [`Rope::table`] as tensors on `device`, `[len, head_dim/2]` each.
    pub fn angles(&self, start: usize, len: usize, device: &Device) -> RopeAngles {
        let half = self.inv_freq.len();
        let (cos, sin) = self.table(start, len);
        RopeAngles {
            cos: Tensor::from_data(TensorData::new(cos, [len, half]), device),
            sin: Tensor::from_data(TensorData::new(sin, [len, half]), device),
        }
    }

    /// Rotate `x` of shape `[heads, seq, head_dim]` by `angles` (of the same `seq`).
    pub fn apply(&self, x: Tensor<3>, angles: &RopeAngles) -> Tensor<3> {
        let [heads, seq, head_dim] = x.dims();
        let half = head_dim / 2;
        match self.layout {
            RopeLayout::HalfSplit => {
                let cos = angles.cos.clone().unsqueeze::<3>();
                let sin = angles.sin.clone().unsqueeze::<3>();
                let x1 = x.clone().narrow(2, 0, half);
                let x2 = x.narrow(2, half, half);
                let r1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
                let r2 = x2 * cos + x1 * sin;
                Tensor::cat(vec![r1, r2], 2)
            }
            RopeLayout::Interleaved => {
                let pairs: Tensor<4> = x.reshape([heads, seq, half, 2]);
                let cos: Tensor<4> = angles.cos.clone().reshape([1, seq, half, 1]);
                let sin: Tensor<4> = angles.sin.clone().reshape([1, seq, half, 1]);
                let x1 = pairs.clone().narrow(3, 0, 1);
                let x2 = pairs.narrow(3, 1, 1);
                let r1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
                let r2 = x2 * cos + x1 * sin;
                Tensor::cat(vec![r1, r2], 3).reshape([heads, seq, head_dim])
            }
        }
    }
}

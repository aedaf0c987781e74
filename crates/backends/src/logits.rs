//! Draft logits kept on the model's burn device, and the token filter's queries on them.
//!
//! Each query is a handful of tensor ops over the vocabulary that run where the logits are
//! (flex on the CPU, wgpu on any GPU) and return a few numbers: the draft's probability at K
//! temperatures is one `[K, V]` scale-exp-sum with K + 1 numbers read back, a sample is one
//! cumulative sum and a count. The whole vector is read back only by
//! [`NextTokenLogits::to_host`], which the engine calls for tokens it uploads. The math is
//! [`hlm_core::logits`]'s host reference, in f32 on the device. Over 151,936 logits with
//! K = 20, flex takes 10.5 ms against 11.8 ms for the host kernels (`--bench device_filter`).

use std::sync::{Arc, Mutex, OnceLock};

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use hlm_core::logits::check_token;
use hlm_core::{HlmError, NextTokenLogits, Result, TokenId};

/// Logits `[vocab]` on a burn device.
pub struct DeviceLogits {
    logits: Tensor<1>,
    vocab: usize,
    host: OnceLock<Arc<[f32]>>,
    argmax: OnceLock<usize>,
    /// The distribution `sample` drew from last, with its temperature: the engine asks for the
    /// drawn token's probability at the same temperature next, which is then one read.
    sampled: Mutex<Option<(f32, Tensor<2>)>>,
}

impl std::fmt::Debug for DeviceLogits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceLogits")
            .field("vocab", &self.vocab)
            .field("device", &self.logits.device())
            .finish()
    }
}

impl DeviceLogits {
    /// Wrap a `[vocab]` tensor.
    pub fn new(logits: Tensor<1>) -> Self {
        let vocab = logits.dims()[0];
        DeviceLogits {
            logits,
            vocab,
            host: OnceLock::new(),
            argmax: OnceLock::new(),
            sampled: Mutex::new(None),
        }
    }

    /// Wrap a `[vocab]` tensor whose values are also at hand on the host (`host`), so
    /// [`NextTokenLogits::to_host`] reads nothing back.
    pub fn with_host(logits: Tensor<1>, host: Arc<[f32]>) -> Self {
        let l = DeviceLogits::new(logits);
        let _ = l.host.set(host);
        l
    }

    /// `[1, vocab]`, the shape every query starts from.
    fn row(&self) -> Tensor<2> {
        self.logits.clone().reshape([1, self.vocab])
    }

    fn argmax(&self) -> Result<usize> {
        if let Some(&i) = self.argmax.get() {
            return Ok(i);
        }
        let i = read_ints(self.logits.clone().argmax(0))?
            .first()
            .copied()
            .ok_or_else(|| HlmError::Model("argmax returned nothing".into()))?;
        let i = usize::try_from(i).map_err(|_| HlmError::Model(format!("argmax returned {i}")))?;
        Ok(*self.argmax.get_or_init(|| i))
    }

    /// The distribution of the last `sample` if it was drawn at temperature `t`.
    fn sampled_at(&self, t: f32) -> Option<Tensor<2>> {
        let s = self.sampled.lock().ok()?;
        s.as_ref()
            .filter(|(at, _)| *at == t)
            .map(|(_, p)| p.clone())
    }

    fn non_empty(&self) -> Result<()> {
        if self.vocab == 0 {
            return Err(HlmError::Filter("empty logits".into()));
        }
        Ok(())
    }
}

impl NextTokenLogits for DeviceLogits {
    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn to_host(&self) -> Result<Arc<[f32]>> {
        if let Some(h) = self.host.get() {
            return Ok(h.clone());
        }
        let v: Arc<[f32]> = read_floats(self.logits.clone())?.into();
        Ok(self.host.get_or_init(|| v).clone())
    }

    fn token_probs(&self, token: TokenId, temperatures: &[f32]) -> Result<Vec<f32>> {
        self.non_empty()?;
        let d = check_token(token, self.vocab)?;
        if let [t] = temperatures
            && let Some(probs) = self.sampled_at(*t)
        {
            return read_floats(probs.narrow(1, d, 1));
        }
        // Temperatures <= 0 are the argmax's one-hot distribution. The rest share one [K, V]
        // pass: with s = l − max(l), p_d(θ) = exp(s_d/θ) / Σ_i exp(s_i/θ). The device computes
        // the K sums and s_d (three passes over [K, V]: scale, exp, sum) and sends back K + 1
        // numbers; the K divisions happen here.
        let positive: Vec<f32> = temperatures.iter().copied().filter(|&t| t > 0.0).collect();
        let mut device_probs = Vec::new();
        if !positive.is_empty() {
            let (k, v) = (positive.len(), self.vocab);
            let row = self.row();
            let shifted = row.clone() - row.max_dim(1).expand([1, v]);
            let inv: Vec<f32> = positive.iter().map(|t| 1.0 / t).collect();
            let s_d = shifted.clone().narrow(1, d, 1).reshape([1]);
            let device = self.logits.device();
            let (sums, s_d) = if device == Device::flex() && k > 1 {
                // flex runs each op on the calling thread: split the K rows over the cores
                // (on a GPU one [K, V] pass is already parallel).
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                let chunk = k.div_ceil(threads.min(k));
                let parts: Vec<Result<Vec<f32>>> = std::thread::scope(|scope| {
                    let handles: Vec<_> = inv
                        .chunks(chunk)
                        .map(|c| {
                            let shifted = shifted.clone();
                            scope.spawn(move || read_floats(exp_sums_by_row(shifted, c)))
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| {
                            h.join().unwrap_or_else(|_| {
                                Err(HlmError::Model("a filter thread panicked".into()))
                            })
                        })
                        .collect()
                });
                let mut sums = Vec::with_capacity(k);
                for p in parts {
                    sums.extend(p?);
                }
                (sums, first(read_floats(s_d)?)?)
            } else {
                let back = read_floats(Tensor::cat(vec![exp_sums(shifted, &inv, v), s_d], 0))?;
                let (sums, s_d) = back.split_at(k);
                (sums.to_vec(), first(s_d.to_vec())?)
            };
            device_probs = sums
                .iter()
                .zip(&inv)
                .map(|(z, inv)| (s_d * inv).exp() / z)
                .collect();
        }
        let best = if positive.len() < temperatures.len() {
            Some(self.argmax()?)
        } else {
            None
        };
        let mut from_device = device_probs.into_iter();
        temperatures
            .iter()
            .map(|&t| {
                if t > 0.0 {
                    from_device
                        .next()
                        .ok_or_else(|| HlmError::Model("too few probabilities read back".into()))
                } else {
                    Ok(if best == Some(d) { 1.0 } else { 0.0 })
                }
            })
            .collect()
    }

    fn entropy(&self) -> Result<f32> {
        self.non_empty()?;
        let p = softmax(self.row(), 1);
        let log_p = log_softmax(self.row(), 1);
        let h = (p * log_p).sum().neg();
        first(read_floats(h)?)
    }

    fn top_two_probs(&self) -> Result<[f32; 2]> {
        self.non_empty()?;
        if self.vocab == 1 {
            return Ok([1.0, 0.0]);
        }
        let top = read_floats(softmax(self.row(), 1).topk(2, 1))?;
        match top[..] {
            [a, b] => Ok([a, b]),
            _ => Err(HlmError::Model(format!(
                "top-2 read back {} values",
                top.len()
            ))),
        }
    }

    fn sample(&self, temperature: f32, u: f64) -> Result<TokenId> {
        self.non_empty()?;
        if temperature <= 0.0 {
            return Ok(self.argmax()? as TokenId);
        }
        // Inverse CDF: the token is the number of cumulative probabilities <= u · total.
        let probs = softmax(self.row().div_scalar(temperature), 1);
        if let Ok(mut s) = self.sampled.lock() {
            *s = Some((temperature, probs.clone()));
        }
        let cdf = probs.cumsum(1);
        let target = cdf
            .clone()
            .narrow(1, self.vocab - 1, 1)
            .mul_scalar(u as f32)
            .expand([1, self.vocab]);
        let below = cdf.lower_equal(target).int().sum();
        let n = first(read_ints(below)?)?;
        // Rounding can put u · total at or past the last cumulative value.
        Ok((n.max(0) as usize).min(self.vocab - 1) as TokenId)
    }

    fn location(&self) -> String {
        format!("{:?}", self.logits.device())
    }
}

/// Σ_i exp(s_i · inv_k) for each inverse temperature: three passes over `[K, V]` (scale, exp,
/// sum), `K` values out.
fn exp_sums(shifted: Tensor<2>, inv: &[f32], vocab: usize) -> Tensor<1> {
    let k = inv.len();
    let inv = Tensor::<2>::from_data(TensorData::new(inv.to_vec(), [k, 1]), &shifted.device());
    (shifted.expand([k, vocab]) * inv.expand([k, vocab]))
        .exp()
        .sum_dim(1)
        .reshape([k])
}

/// [`exp_sums`] one temperature at a time: the same three passes, but over one `[1, V]` row
/// (600 KB for 151,936 logits) that stays in cache between them, instead of a `[K, V]` block
/// that goes through memory three times. For the CPU, where each op runs eagerly.
fn exp_sums_by_row(shifted: Tensor<2>, inv: &[f32]) -> Tensor<1> {
    Tensor::cat(
        inv.iter()
            .map(|&i| shifted.clone().mul_scalar(i).exp().sum())
            .collect(),
        0,
    )
}

fn read_floats<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.try_into_vec_as::<f32>()
        .map_err(|e| HlmError::Model(format!("cannot read logits back from the device: {e:?}")))
}

fn read_ints<const D: usize>(t: Tensor<D, Int>) -> Result<Vec<i64>> {
    t.try_into_vec_as::<i64>()
        .map_err(|e| HlmError::Model(format!("cannot read an index back from the device: {e:?}")))
}

fn first<T: Copy>(v: Vec<T>) -> Result<T> {
    v.first()
        .copied()
        .ok_or_else(|| HlmError::Model("the device returned no value".into()))
}

//! Confidence intervals for the bench's means, and for the paired differences between two
//! methods run on the same prompts and seeds.
//!
//! Every figure of the table is a ratio of sums over runs, `Σ num / Σ den`: a mean of
//! per-run scores has `den = 1`, a token-weighted rate (uploads per drafted token, joules per
//! generated token) has the run's own denominator. Its interval comes from a two-stage
//! (cluster) bootstrap: draw the prompts with replacement, then each drawn prompt's seeds with
//! replacement, and recompute the ratio; the 2.5 % and 97.5 % quantiles of the resampled
//! ratios bound the 95 % interval. Prompts are the outer stage because runs of one prompt are
//! correlated (a hard prompt is hard for every seed): resampling runs as if independent would
//! make the intervals too narrow.
//!
//! A difference between two methods resamples the *same* prompts and seeds for both (they
//! ran on the same ones), so what the prompts share cancels: a paired interval is much
//! narrower than the two methods' own intervals suggest. The resampling uses a fixed seed,
//! so `hlm report` recomputes the same intervals from the saved runs.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Resamples of the bootstrap.
pub const RESAMPLES: usize = 2000;
/// Coverage of the intervals.
pub const CONFIDENCE: f64 = 0.95;
/// Seed of the resampling (fixed: the same runs give the same intervals).
const BOOTSTRAP_SEED: u64 = 0x6869_6d2d_6369;

/// One run's contribution to a ratio of sums.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Term {
    pub num: f64,
    pub den: f64,
}

impl Term {
    /// A per-run value averaged with weight 1.
    pub fn value(x: f64) -> Self {
        Term { num: x, den: 1.0 }
    }
}

/// A 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

impl Interval {
    /// Whether the interval lies entirely on one side of zero.
    pub fn excludes_zero(&self) -> bool {
        self.low > 0.0 || self.high < 0.0
    }
}

/// A point estimate and its interval (`None` with fewer than two runs to resample, or when a
/// resample leaves a denominator of zero).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub value: f64,
    pub interval: Option<Interval>,
}

/// Runs grouped by prompt: `groups[p][s]` is prompt `p`'s run with seed `s`.
pub type Groups = Vec<Vec<Term>>;

fn ratio(num: f64, den: f64) -> Option<f64> {
    (den != 0.0 && num.is_finite() && den.is_finite()).then(|| num / den)
}

fn sums(groups: &[Vec<Term>]) -> (f64, f64) {
    groups
        .iter()
        .flatten()
        .fold((0.0, 0.0), |(n, d), t| (n + t.num, d + t.den))
}

/// The ratio of sums over every run, with its bootstrap interval.
pub fn estimate(groups: &[Vec<Term>]) -> Option<Estimate> {
    let (n, d) = sums(groups);
    let value = ratio(n, d)?;
    let interval = bootstrap(&[groups], &|s| ratio(s[0].0, s[0].1));
    Some(Estimate { value, interval })
}

/// `combine(a's ratio, b's ratio)` (a difference, say) over runs of two methods on the same
/// prompts and seeds (`a` and `b` of the same shape), with its paired bootstrap interval.
pub fn paired(
    a: &[Vec<Term>],
    b: &[Vec<Term>],
    combine: &dyn Fn(f64, f64) -> Option<f64>,
) -> Option<Estimate> {
    let same_shape = a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.len() == y.len());
    if !same_shape {
        return None;
    }
    let of = |s: &[(f64, f64)]| combine(ratio(s[0].0, s[0].1)?, ratio(s[1].0, s[1].1)?);
    let (an, ad) = sums(a);
    let (bn, bd) = sums(b);
    let value = of(&[(an, ad), (bn, bd)])?;
    let interval = bootstrap(&[a, b], &of);
    Some(Estimate { value, interval })
}

/// A statistic of resampled sums: `(Σ num, Σ den)` of each sample.
type Statistic<'f> = &'f dyn Fn(&[(f64, f64)]) -> Option<f64>;

/// The percentile interval of `statistic` over two-stage resamples of `samples` (all of the
/// same shape; each resample draws the same prompts and seeds for all of them).
fn bootstrap(samples: &[&[Vec<Term>]], statistic: Statistic<'_>) -> Option<Interval> {
    let groups = samples[0];
    let runs: usize = groups.iter().map(Vec::len).sum();
    if runs < 2 || groups.iter().any(Vec::is_empty) {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(BOOTSTRAP_SEED);
    let mut values = Vec::with_capacity(RESAMPLES);
    let mut acc = vec![(0.0, 0.0); samples.len()];
    for _ in 0..RESAMPLES {
        acc.iter_mut().for_each(|a| *a = (0.0, 0.0));
        for _ in 0..groups.len() {
            let p = rng.random_range(0..groups.len());
            for _ in 0..groups[p].len() {
                let s = rng.random_range(0..groups[p].len());
                for (a, sample) in acc.iter_mut().zip(samples) {
                    let t = sample[p][s];
                    a.0 += t.num;
                    a.1 += t.den;
                }
            }
        }
        values.push(statistic(&acc)?);
    }
    values.sort_by(f64::total_cmp);
    let tail = (1.0 - CONFIDENCE) / 2.0;
    let at = |q: f64| values[((q * (RESAMPLES - 1) as f64).round() as usize).min(RESAMPLES - 1)];
    Some(Interval {
        low: at(tail),
        high: at(1.0 - tail),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_distr::{Distribution, Normal};

    fn normal_groups(rng: &mut ChaCha8Rng, prompts: usize, seeds: usize, mean: f64) -> Groups {
        let between = Normal::new(0.0, 1.0).unwrap();
        let within = Normal::new(0.0, 0.5).unwrap();
        (0..prompts)
            .map(|_| {
                let p = mean + between.sample(rng);
                (0..seeds)
                    .map(|_| Term::value(p + within.sample(rng)))
                    .collect()
            })
            .collect()
    }

    /// The 95 % interval of a mean covers the true mean in about 95 % of repeated
    /// experiments (prompt effects shared by their seeds, as in a bench): the property an
    /// interval exists for. A bootstrap that treated runs as independent would cover far less.
    #[test]
    fn intervals_cover_the_true_mean_at_their_level() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let trials = 300;
        let covered = (0..trials)
            .filter(|_| {
                let g = normal_groups(&mut rng, 30, 3, 2.0);
                let i = estimate(&g).unwrap().interval.unwrap();
                i.low <= 2.0 && 2.0 <= i.high
            })
            .count();
        let rate = covered as f64 / trials as f64;
        // Binomial sd at 0.95 over 300 trials is 0.013; the percentile bootstrap at 30
        // clusters undercovers slightly.
        assert!((0.88..=0.99).contains(&rate), "coverage {rate}");
    }

    /// Pairing removes what both methods share: two methods whose runs differ by a small
    /// constant have overlapping own intervals but a paired difference excluding zero.
    #[test]
    fn paired_differences_cancel_the_shared_prompt_effect() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let a = normal_groups(&mut rng, 20, 2, 0.0);
        let noise = Normal::new(0.0, 0.05).unwrap();
        let b: Groups = a
            .iter()
            .map(|g| {
                g.iter()
                    .map(|t| Term::value(t.num + 0.1 + noise.sample(&mut rng)))
                    .collect()
            })
            .collect();
        let (ea, eb) = (estimate(&a).unwrap(), estimate(&b).unwrap());
        let (ia, ib) = (ea.interval.unwrap(), eb.interval.unwrap());
        assert!(ia.high > ib.low, "own intervals overlap: {ia:?} {ib:?}");
        let d = paired(&b, &a, &|x, y| Some(x - y)).unwrap();
        assert!((d.value - 0.1).abs() < 0.03, "{d:?}");
        let i = d.interval.unwrap();
        assert!(i.excludes_zero() && i.low < 0.1 && 0.1 < i.high, "{i:?}");
        // Against itself the difference is exactly zero, and so is its interval.
        let z = paired(&a, &a, &|x, y| Some(x - y)).unwrap();
        assert_eq!(z.value, 0.0);
        assert!(!z.interval.unwrap().excludes_zero());
    }

    #[test]
    fn ratios_of_sums_weight_runs_by_their_denominators() {
        // 3 uploads of 4 drafts and 1 of 16: 4 / 20, not the mean of 0.75 and 0.0625.
        let g = vec![
            vec![Term { num: 3.0, den: 4.0 }],
            vec![Term {
                num: 1.0,
                den: 16.0,
            }],
        ];
        assert_eq!(estimate(&g).unwrap().value, 0.2);
        let i = estimate(&g).unwrap().interval.unwrap();
        assert!(i.low >= 1.0 / 16.0 && i.high <= 0.75, "{i:?}");
        // The same runs give the same interval (hlm report recomputes it).
        assert_eq!(estimate(&g).unwrap(), estimate(&g).unwrap());
    }

    #[test]
    fn too_few_runs_or_mismatched_pairs_give_no_interval() {
        let one = vec![vec![Term::value(1.0)]];
        assert_eq!(estimate(&one).unwrap().interval, None);
        assert_eq!(estimate(&[]), None, "no runs: no value");
        let two = vec![vec![Term::value(1.0), Term::value(2.0)]];
        assert!(paired(&two, &one, &|x, y| Some(x - y)).is_none());
        let zero = vec![vec![Term { num: 0.0, den: 0.0 }; 2]];
        assert_eq!(estimate(&zero), None, "no denominator: no ratio");
    }
}

//! Calibration math for `hlm calibrate`: the least-squares line rejection ≈ a·u + b (U-HLM's
//! linear model between uncertainty and rejection probability), its R², correlations, and the
//! binned table that shows whether skipping low-uncertainty tokens is justified.

use serde::Serialize;

/// A fitted line y ≈ a·x + b.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LineFit {
    pub a: f64,
    pub b: f64,
    /// Coefficient of determination (1 − SS_res / SS_tot); 0 when y is constant.
    pub r2: f64,
    /// Points used.
    pub n: usize,
}

/// Means and centred sums of squares and products of (x, y) pairs (`None` below 2 points).
struct Moments {
    mx: f64,
    my: f64,
    sxx: f64,
    syy: f64,
    sxy: f64,
}

fn moments(points: &[(f64, f64)]) -> Option<Moments> {
    if points.len() < 2 {
        return None;
    }
    let nf = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / nf;
    let my = points.iter().map(|p| p.1).sum::<f64>() / nf;
    let (mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0);
    for &(x, y) in points {
        sxx += (x - mx).powi(2);
        syy += (y - my).powi(2);
        sxy += (x - mx) * (y - my);
    }
    Some(Moments {
        mx,
        my,
        sxx,
        syy,
        sxy,
    })
}

/// Ordinary least squares over (x, y) pairs; `None` with fewer than 2 points or constant x.
pub fn fit_line(points: &[(f64, f64)]) -> Option<LineFit> {
    let Moments {
        mx,
        my,
        sxx,
        syy: ss_tot,
        sxy,
    } = moments(points)?;
    if sxx <= 0.0 {
        return None;
    }
    let a = sxy / sxx;
    let b = my - a * mx;
    let ss_res: f64 = points.iter().map(|p| (p.1 - (a * p.0 + b)).powi(2)).sum();
    let r2 = if ss_tot > 0.0 {
        1.0 - ss_res / ss_tot
    } else {
        0.0
    };
    Some(LineFit {
        a,
        b,
        r2,
        n: points.len(),
    })
}

/// Pearson correlation; `None` when either side is constant or there are < 2 points.
pub fn pearson(points: &[(f64, f64)]) -> Option<f64> {
    let Moments { sxx, syy, sxy, .. } = moments(points)?;
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// One bin of the calibration table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bin {
    /// x range [lo, hi) (the last bin includes hi).
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    /// Mean y in the bin (NaN-free: 0 when empty).
    pub mean_y: f64,
}

/// `bins` equal-width bins of x over [lo, hi] with the mean y of each.
pub fn binned(points: &[(f64, f64)], lo: f64, hi: f64, bins: usize) -> Vec<Bin> {
    let bins = bins.max(1);
    let w = (hi - lo) / bins as f64;
    let mut sum = vec![0.0; bins];
    let mut cnt = vec![0usize; bins];
    for &(x, y) in points {
        if !(x >= lo && x <= hi) || w <= 0.0 {
            continue;
        }
        let i = (((x - lo) / w) as usize).min(bins - 1);
        sum[i] += y;
        cnt[i] += 1;
    }
    (0..bins)
        .map(|i| Bin {
            lo: lo + w * i as f64,
            hi: lo + w * (i + 1) as f64,
            count: cnt[i],
            mean_y: if cnt[i] > 0 {
                sum[i] / cnt[i] as f64
            } else {
                0.0
            },
        })
        .collect()
}

/// The smallest slope that makes a threshold: the fitted rejection probability must rise by at
/// least 0.001 from u = 0 to u = 1. Below that the line is flat noise (e.g. a pair that never
/// rejects) and (max_risk − b) / a would be an arbitrary, possibly huge, number.
pub const MIN_SLOPE: f64 = 1e-3;

/// U-HLM's threshold: the uncertainty at which the fitted risk a·u + b reaches `max_risk`;
/// `None` unless the slope is at least [`MIN_SLOPE`].
pub fn risk_threshold(fit: &LineFit, max_risk: f64) -> Option<f64> {
    (fit.a >= MIN_SLOPE).then(|| (max_risk - fit.b) / fit.a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_line_is_recovered_with_r2_one() {
        let pts: Vec<(f64, f64)> = (0..10)
            .map(|i| (i as f64 * 0.1, 0.815 * i as f64 * 0.1 - 0.066))
            .collect();
        let f = fit_line(&pts).unwrap();
        assert!(
            (f.a - 0.815).abs() < 1e-12 && (f.b + 0.066).abs() < 1e-12,
            "{f:?}"
        );
        assert!((f.r2 - 1.0).abs() < 1e-12);
        assert_eq!(f.n, 10);
        let u = risk_threshold(&f, 0.0).unwrap();
        assert!((u - 0.066 / 0.815).abs() < 1e-12);
    }

    #[test]
    fn hand_computed_fit() {
        // x = 0,1,2; y = 1,2,4: mx = 1, my = 7/3, sxx = 2, sxy = 3 -> a = 1.5, b = 5/6;
        // residuals 1/6, -1/3, 1/6 -> ss_res = 1/6; ss_tot = 14/3 -> r2 = 1 - 1/28.
        let f = fit_line(&[(0.0, 1.0), (1.0, 2.0), (2.0, 4.0)]).unwrap();
        assert!((f.a - 1.5).abs() < 1e-12 && (f.b - 5.0 / 6.0).abs() < 1e-12);
        assert!((f.r2 - (1.0 - 1.0 / 28.0)).abs() < 1e-12, "{}", f.r2);
        let r = pearson(&[(0.0, 1.0), (1.0, 2.0), (2.0, 4.0)]).unwrap();
        assert!(
            (r * r - f.r2).abs() < 1e-12,
            "r² equals R² for a simple line fit"
        );
    }

    #[test]
    fn degenerate_inputs_give_none() {
        assert!(fit_line(&[(1.0, 2.0)]).is_none());
        assert!(fit_line(&[(1.0, 2.0), (1.0, 3.0)]).is_none());
        assert!(pearson(&[(1.0, 2.0), (2.0, 2.0)]).is_none());
        let f = fit_line(&[(0.0, 1.0), (1.0, 0.5)]).unwrap();
        assert!(
            risk_threshold(&f, 0.0).is_none(),
            "negative slope has no risk threshold"
        );
        // A pair that (almost) never rejects: a flat line gives no threshold either.
        let flat = fit_line(&[(0.0, 0.0), (1.0, 1e-6), (0.5, 0.0)]).unwrap();
        assert!(flat.a > 0.0 && flat.a < MIN_SLOPE, "{flat:?}");
        assert!(risk_threshold(&flat, 0.05).is_none());
    }

    #[test]
    fn bins_count_and_average() {
        let b = binned(
            &[
                (0.05, 1.0),
                (0.15, 0.0),
                (0.12, 1.0),
                (1.0, 0.5),
                (2.0, 9.0),
            ],
            0.0,
            1.0,
            10,
        );
        assert_eq!(b.len(), 10);
        assert_eq!((b[0].count, b[0].mean_y), (1, 1.0));
        assert_eq!((b[1].count, b[1].mean_y), (2, 0.5));
        assert_eq!(
            (b[9].count, b[9].mean_y),
            (1, 0.5),
            "x = hi lands in the last bin; 2.0 is out"
        );
    }
}

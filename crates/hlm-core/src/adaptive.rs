//! Choosing the draft length γ of each round from what speculation costs and gains here.
//!
//! With acceptance rate α, a round of γ drafts yields `E(γ) = (1 − α^(γ+1)) / (1 − α)` tokens
//! (the accepted drafts, then a correction or bonus token; Leviathan et al. 2023, Thm 3.8),
//! and costs `(γ + 1) · t_draft + t_verify(γ + 1)`: γ draft steps, the draft model's pass over
//! the correction or bonus token, and one target pass over γ + 1 positions. `γ = 0` is the target decoding alone (one token per pass over one position).
//! [`AdaptiveGamma`] measures `t_draft`, `t_verify(n)` for each `n` it sees and α, and picks
//! the γ with the most tokens per second. The `+1` of the textbook formula assumes a pass over
//! γ + 1 positions costs what one costs; on a CPU it does not, so `t_verify` is measured per
//! position count (interpolated linearly between the counts seen, extrapolated from the
//! nearest two). Where speculation cannot win, γ = 0 switches it off; a probe round of γ = 1
//! after [`AdaptiveGamma::PROBE_EVERY`] target-only tokens keeps α and `t_draft` current.
//! A probe is not free (the draft model first catches up on every token the target decoded
//! alone, then drafts, and the target verifies two positions): on a 2-core Zen 3 the Qwen pair
//! (a draft step costs half a target pass) lost 7 % to probes every 16 tokens. So each probe
//! that leaves speculation off doubles the wait before the next, up to
//! [`AdaptiveGamma::MAX_PROBE_EVERY`], and a probe that switches it on resets the wait.

/// Running estimates of a run's costs and acceptance, and the γ they recommend.
#[derive(Debug, Clone)]
pub struct AdaptiveGamma {
    max_gamma: usize,
    /// Exponentially weighted accepted and judged drafts (prior: 1 of 2).
    accepted: f64,
    judged: f64,
    /// Seconds per draft step (exponential average), once measured.
    draft_s: Option<f64>,
    /// Seconds per target pass over `n` positions (exponential average), index `n`.
    verify_s: Vec<Option<f64>>,
    /// Target-only tokens since speculation was last tried.
    off_for: usize,
    /// Target-only tokens the next probe waits for.
    probe_after: usize,
}

impl AdaptiveGamma {
    /// Weight of the newest measurement in the running averages.
    const RATE: f64 = 0.2;
    /// How many past drafts the acceptance rate remembers, roughly.
    const MEMORY: f64 = 64.0;
    /// Target-only tokens before the first probe round once speculation is off.
    pub const PROBE_EVERY: usize = 16;
    /// The longest wait between probe rounds (each probe that fails doubles the wait).
    pub const MAX_PROBE_EVERY: usize = 256;

    /// γ at most `max_gamma` (clamped to `1..=`[`crate::config::MAX_GAMMA`]).
    pub fn new(max_gamma: usize) -> Self {
        let max_gamma = max_gamma.clamp(1, crate::config::MAX_GAMMA);
        AdaptiveGamma {
            max_gamma,
            accepted: 1.0,
            judged: 2.0,
            draft_s: None,
            verify_s: vec![None; max_gamma + 2],
            off_for: 0,
            probe_after: Self::PROBE_EVERY,
        }
    }

    /// The current acceptance estimate α.
    pub fn acceptance(&self) -> f64 {
        self.accepted / self.judged
    }

    /// One draft step took `seconds`.
    pub fn record_draft(&mut self, seconds: f64) {
        self.draft_s = Some(average(self.draft_s, seconds));
    }

    /// A target pass over `positions` positions took `seconds`.
    pub fn record_verify(&mut self, positions: usize, seconds: f64) {
        if let Some(slot) = self.verify_s.get_mut(positions) {
            *slot = Some(average(*slot, seconds));
        }
    }

    /// Of `judged` drafts of a round, `accepted` were accepted.
    pub fn record_round(&mut self, judged: usize, accepted: usize) {
        let keep = (1.0 - 1.0 / Self::MEMORY).powi(judged as i32);
        self.accepted = self.accepted * keep + accepted as f64;
        self.judged = self.judged * keep + judged as f64;
    }

    /// The γ of the next round (0: let the target decode this token alone).
    pub fn next_gamma(&mut self) -> usize {
        let best = self.best_gamma();
        if best > 0 {
            self.off_for = 0;
            self.probe_after = Self::PROBE_EVERY;
            return best;
        }
        self.off_for += 1;
        if self.off_for > self.probe_after {
            self.off_for = 0;
            // Reset by the next call if this probe switches speculation back on.
            self.probe_after = (self.probe_after * 2).min(Self::MAX_PROBE_EVERY);
            return 1;
        }
        0
    }

    /// The γ with the highest expected tokens per second under the current estimates;
    /// before anything is measured, the target alone (which measures `t_verify(1)`), then
    /// the longest rounds (which measure the rest).
    pub fn best_gamma(&self) -> usize {
        let Some(one) = self.verify_s[1] else {
            return 0;
        };
        let Some(draft) = self.draft_s else {
            return self.max_gamma;
        };
        let alpha = self.acceptance().clamp(0.0, 0.999_999);
        let seen = self.measured();
        let mut best = (0, 1.0 / one.max(f64::MIN_POSITIVE));
        for gamma in 1..=self.max_gamma {
            let tokens = (1.0 - alpha.powi(gamma as i32 + 1)) / (1.0 - alpha);
            let cost = (gamma + 1) as f64 * draft + self.verify_cost(gamma + 1, &seen);
            let speed = tokens / cost.max(f64::MIN_POSITIVE);
            if speed > best.1 {
                best = (gamma, speed);
            }
        }
        best.0
    }

    /// The position counts measured so far and their costs, in order.
    fn measured(&self) -> Vec<(f64, f64)> {
        self.verify_s
            .iter()
            .enumerate()
            .filter_map(|(k, t)| t.map(|t| (k as f64, t)))
            .collect()
    }

    /// `t_verify(n)`: measured, else interpolated between the nearest measured counts, else
    /// extrapolated from the nearest two (never below the cost of one position). `seen` is
    /// [`AdaptiveGamma::measured`].
    fn verify_cost(&self, n: usize, seen: &[(f64, f64)]) -> f64 {
        if let Some(t) = self.verify_s[n] {
            return t;
        }
        let x = n as f64;
        let below = seen.iter().rev().find(|(k, _)| *k < x);
        let above = seen.iter().find(|(k, _)| *k > x);
        let line =
            |(x0, y0): (f64, f64), (x1, y1): (f64, f64)| y0 + (y1 - y0) * (x - x0) / (x1 - x0);
        let t = match (below, above) {
            (Some(&a), Some(&b)) => line(a, b),
            (Some(_), None) if seen.len() >= 2 => line(seen[seen.len() - 2], seen[seen.len() - 1]),
            (None, Some(_)) if seen.len() >= 2 => line(seen[0], seen[1]),
            (Some(&(_, t)), None) | (None, Some(&(_, t))) => t,
            (None, None) => 0.0,
        };
        let floor = self.verify_s[1].unwrap_or(0.0);
        t.max(floor)
    }
}

fn average(old: Option<f64>, new: f64) -> f64 {
    match old {
        None => new,
        Some(old) => old + AdaptiveGamma::RATE * (new - old),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(draft: f64, verify: impl Fn(usize) -> f64, alpha: f64) -> AdaptiveGamma {
        let mut g = AdaptiveGamma::new(6);
        for n in 1..=7 {
            g.record_verify(n, verify(n));
        }
        g.record_draft(draft);
        // Long run at the given acceptance rate.
        for _ in 0..50 {
            g.record_round(100, (100.0 * alpha) as usize);
        }
        g
    }

    #[test]
    fn starts_with_the_target_alone_then_the_longest_rounds() {
        let mut g = AdaptiveGamma::new(4);
        assert_eq!(g.next_gamma(), 0);
        g.record_verify(1, 0.05);
        assert_eq!(g.best_gamma(), 4);
    }

    #[test]
    fn cheap_drafts_that_are_accepted_make_long_rounds() {
        // A draft step costs 5 % of a target pass, which costs the same for any count.
        // (γ = 6: 3.95 tokens for 0.135 s; γ = 5: 3.69 for 0.13.)
        let g = measured(0.005, |_| 0.1, 0.8);
        assert_eq!(g.best_gamma(), 6);
    }

    #[test]
    fn the_textbook_optimum_when_passes_are_memory_bound() {
        // c = 0.2, α = 0.7: E/((γ + 1) c + 1) is 1.21, 1.37, 1.41, 1.39 for γ = 1..4.
        let g = measured(0.2, |_| 1.0, 0.7);
        assert_eq!(g.best_gamma(), 3);
    }

    /// The draft model's pass over each round's correction token counts: at c = 0.4 and
    /// α = 0.5 one draft a round gives 1.5 tokens for 1.8 target passes of time.
    #[test]
    fn the_correction_token_pass_is_counted() {
        let g = measured(0.4, |_| 1.0, 0.5);
        assert_eq!(g.best_gamma(), 0);
    }

    #[test]
    fn speculation_switches_off_where_it_cannot_win() {
        // Drafts at 40 % of a target pass, accepted 30 % of the time: α < c, no γ helps.
        let mut g = measured(0.4, |n| 1.0 + 0.1 * (n as f64 - 1.0), 0.3);
        assert_eq!(g.best_gamma(), 0);
        let rounds: Vec<usize> = (0..=AdaptiveGamma::PROBE_EVERY)
            .map(|_| g.next_gamma())
            .collect();
        assert!(rounds[..AdaptiveGamma::PROBE_EVERY].iter().all(|&r| r == 0));
        assert_eq!(rounds[AdaptiveGamma::PROBE_EVERY], 1, "a probe round");
    }

    /// Probes that find speculation still losing come at 16, then 32, 64, ... target-only
    /// tokens apart, up to the cap; one that finds it winning resets the wait.
    #[test]
    fn failed_probes_back_off_and_a_winning_one_resets() {
        let mut g = measured(0.4, |n| 1.0 + 0.1 * (n as f64 - 1.0), 0.3);
        let mut gaps = vec![];
        let mut since = 0;
        for _ in 0..2000 {
            if g.next_gamma() == 1 {
                gaps.push(since);
                since = 0;
            } else {
                since += 1;
            }
        }
        let cap = AdaptiveGamma::MAX_PROBE_EVERY;
        assert_eq!(&gaps[..6], &[16, 32, 64, 128, cap, cap]);
        // Drafts become cheap and always accepted: the next probe turns speculation on ...
        g.record_draft(1e-4);
        for _ in 0..50 {
            g.record_draft(1e-4);
            g.record_round(100, 100);
        }
        assert!(g.next_gamma() > 1);
        // ... and when it loses again, the first probe comes after 16 tokens once more.
        for _ in 0..50 {
            g.record_draft(0.4);
            g.record_round(100, 30);
        }
        let off = (0..=AdaptiveGamma::PROBE_EVERY).map(|_| g.next_gamma());
        assert_eq!(off.filter(|&r| r == 1).count(), 1);
        assert_eq!(g.next_gamma(), 0);
    }

    #[test]
    fn costs_between_measured_counts_are_interpolated() {
        let mut g = AdaptiveGamma::new(8);
        g.record_verify(1, 1.0);
        g.record_verify(5, 2.0);
        let seen = g.measured();
        assert!((g.verify_cost(3, &seen) - 1.5).abs() < 1e-12);
        // Beyond the last count: the line through the last two.
        assert!((g.verify_cost(9, &seen) - 3.0).abs() < 1e-12);
        g.record_round(10, 10);
        assert!(g.acceptance() > 0.8);
    }
}

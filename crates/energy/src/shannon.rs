//! Shannon-capacity link: R = W·log2(1 + SNR), SNR = P_tx·G·|h|² / (N0·W), with optional
//! Rayleigh block fading and an outage floor with retries.
//!
//! No wireless parameters are published for the papers this project reproduces (research notes
//! §1.4), so every default here is an assumption, stated next to it.

use hlm_core::{Direction, HlmError, LinkModel, Result, Transfer};
use rand::RngCore;
use rand_distr::{Distribution, Exp1};
use serde::{Deserialize, Serialize};

use crate::units::{db_to_linear, dbm_to_watts, finite, non_negative, positive};

/// Small-scale fading on top of the mean channel gain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fading {
    /// |h|² = 1: the rate is the same for every message.
    #[default]
    None,
    /// |h|² ~ Exp(1) (Rayleigh amplitude), held for `coherence_messages` messages.
    Rayleigh,
}

/// A Shannon-capacity link. The channel gain is either fixed (`gain_db`) or the log-distance
/// path loss G_dB = `reference_gain_db` − 10·`path_loss_exponent`·log10(`distance_m` / 1 m);
/// exactly one of `gain_db` and `distance_m` must be set.
///
/// Uplink and downlink share the bandwidth, the noise and the fade (a TDD channel is
/// reciprocal); they differ in transmit power. One fade is held for `coherence_messages`
/// messages, counted over both directions.
///
/// Outage: a message whose rate is below `outage_rate_bps` costs one `retry_slot_s` of airtime
/// and is retried with a fresh fade (which starts a new coherence block); after `max_attempts`
/// failed attempts it is sent at the floor rate. [`Transfer::outage`] is set if any attempt
/// failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShannonLink {
    /// Channel bandwidth W (Hz).
    pub bandwidth_hz: f64,
    /// Device transmit power (W), used for the uplink SNR.
    pub uplink_tx_power_w: f64,
    /// Server / base-station transmit power (W), used for the downlink SNR.
    pub downlink_tx_power_w: f64,
    /// Noise power spectral density N0 (dBm/Hz); add the receiver noise figure here.
    pub noise_psd_dbm_per_hz: f64,
    /// Fixed mean channel gain G (dB, normally negative). Excludes `distance_m`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gain_db: Option<f64>,
    /// Device–server distance (m) for the log-distance path loss. Excludes `gain_db`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distance_m: Option<f64>,
    /// Path-loss exponent n (only with `distance_m`; default 3.0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_loss_exponent: Option<f64>,
    /// Gain at the 1 m reference distance (dB; only with `distance_m`; default −40 dB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_gain_db: Option<f64>,
    /// Fixed one-way latency per message (s): propagation and processing, no transmit energy.
    pub latency_s: f64,
    /// Small-scale fading model.
    pub fading: Fading,
    /// Messages one fade is held for (1 = a fresh fade per message).
    pub coherence_messages: u32,
    /// Rate floor (bit/s) below which a message is in outage; 0 disables outage.
    pub outage_rate_bps: f64,
    /// Airtime (s) lost by one failed attempt.
    pub retry_slot_s: f64,
    /// Failed attempts before a message is sent at the floor rate anyway.
    pub max_attempts: u32,
    /// The fade of the current coherence block; per run, not a parameter.
    #[serde(skip)]
    block: FadeBlock,
}

/// Path-loss exponent when only `distance_m` is given. Assumption: the middle of the 2.7–3.5
/// range for urban cellular radio (Rappaport, *Wireless Communications*, table 4.2).
pub const DEFAULT_PATH_LOSS_EXPONENT: f64 = 3.0;

/// Gain at 1 m when only `distance_m` is given: free-space loss 20·log10(4π·1 m/λ) = 40.0 dB at
/// 2.4 GHz (λ = 0.125 m). Assumption: the carrier frequency; at 3.5 GHz it is 43.3 dB.
pub const DEFAULT_REFERENCE_GAIN_DB: f64 = -40.0;

impl Default for ShannonLink {
    fn default() -> Self {
        ShannonLink {
            // Assumption: a 10 MHz channel (a common LTE/NR carrier width).
            bandwidth_hz: 10e6,
            // 23 dBm ≈ 0.2 W: the maximum output of a 3GPP power-class-3 phone (TS 38.101-1).
            uplink_tx_power_w: 0.2,
            // Assumption: 30 dBm = 1 W, a small-cell / edge access point (a macro cell sends
            // up to 46 dBm ≈ 40 W).
            downlink_tx_power_w: 1.0,
            // Thermal noise kT at 290 K, no noise figure.
            noise_psd_dbm_per_hz: -174.0,
            gain_db: None,
            distance_m: None,
            path_loss_exponent: None,
            reference_gain_db: None,
            latency_s: 0.0,
            fading: Fading::None,
            coherence_messages: 1,
            outage_rate_bps: 0.0,
            // One NR slot at 15 kHz subcarrier spacing is 1 ms (TS 38.211).
            retry_slot_s: 1e-3,
            // Assumption: generous enough that the floor fallback is rare at sane SNRs.
            max_attempts: 10,
            block: FadeBlock::default(),
        }
    }
}

/// The fade of the current coherence block and how many more messages it covers.
#[derive(Debug, Clone, Copy, Default)]
struct FadeBlock {
    gain: f64,
    left: u32,
}

impl ShannonLink {
    /// Mean channel gain G in dB, from `gain_db` or the path loss.
    pub fn channel_gain_db(&self) -> Result<f64> {
        match (self.gain_db, self.distance_m) {
            (Some(g), None) => {
                if self.path_loss_exponent.is_some() || self.reference_gain_db.is_some() {
                    return Err(HlmError::invalid(
                        "gain_db",
                        g,
                        "`path_loss_exponent` and `reference_gain_db` only apply with `distance_m`; \
                         remove them or replace `gain_db` by `distance_m`",
                    ));
                }
                Ok(g)
            }
            (None, Some(d)) => {
                let n = self
                    .path_loss_exponent
                    .unwrap_or(DEFAULT_PATH_LOSS_EXPONENT);
                let g0 = self.reference_gain_db.unwrap_or(DEFAULT_REFERENCE_GAIN_DB);
                Ok(g0 - 10.0 * n * d.log10())
            }
            (Some(g), Some(_)) => Err(HlmError::invalid(
                "gain_db",
                g,
                "set either `gain_db` (fixed gain) or `distance_m` (path loss), not both",
            )),
            (None, None) => Err(HlmError::invalid(
                "gain_db",
                "(unset)",
                "set either `gain_db` (fixed gain in dB) or `distance_m` (log-distance path loss)",
            )),
        }
    }

    /// Mean SNR (linear) in `direction`: P_tx·G / (N0·W), i.e. with |h|² = 1.
    pub fn mean_snr(&self, direction: Direction) -> Result<f64> {
        let p = match direction {
            Direction::Uplink => self.uplink_tx_power_w,
            Direction::Downlink => self.downlink_tx_power_w,
        };
        let noise_w = dbm_to_watts(self.noise_psd_dbm_per_hz) * self.bandwidth_hz;
        Ok(p * db_to_linear(self.channel_gain_db()?) / noise_w)
    }

    /// Shannon rate W·log2(1 + SNR) at the given linear SNR.
    pub fn rate_at_snr(&self, snr: f64) -> f64 {
        self.bandwidth_hz * (1.0 + snr).log2()
    }

    /// The fade for a new message: the block's, or a fresh one when the block is used up.
    fn block_fade(&mut self, rng: &mut dyn RngCore) -> f64 {
        if self.block.left == 0 {
            self.new_block(rng);
        }
        self.block.gain
    }

    /// Start a coherence block at this message with a fresh fade.
    fn new_block(&mut self, rng: &mut dyn RngCore) -> f64 {
        let gain = match self.fading {
            Fading::None => 1.0,
            Fading::Rayleigh => Exp1.sample(rng),
        };
        self.block = FadeBlock {
            gain,
            left: self.coherence_messages.max(1),
        };
        gain
    }
}

#[typetag::serde(name = "shannon")]
impl LinkModel for ShannonLink {
    fn transfer(
        &mut self,
        bits: u64,
        direction: Direction,
        _now_s: f64,
        rng: &mut dyn RngCore,
    ) -> Result<Transfer> {
        let snr = self.mean_snr(direction)?;
        let floor = self.outage_rate_bps;
        let mut fade = self.block_fade(rng);
        let mut failed_airtime = 0.0;
        let mut outage = false;
        let mut rate = None;
        for attempt in 1..=self.max_attempts.max(1) {
            let r = self.rate_at_snr(snr * fade);
            if r >= floor {
                rate = Some(r);
                break;
            }
            outage = true;
            failed_airtime += self.retry_slot_s;
            if attempt < self.max_attempts {
                fade = self.new_block(rng);
            }
        }
        // Every attempt failed: the message goes out at the floor rate.
        let rate = rate.unwrap_or(floor);
        self.block.left = self.block.left.saturating_sub(1);
        let data_airtime = if bits == 0 { 0.0 } else { bits as f64 / rate };
        if !data_airtime.is_finite() {
            return Err(HlmError::Energy(format!(
                "shannon link: rate {rate} bit/s cannot carry {bits} bits (deep fade with no \
                 outage floor; set `outage_rate_bps` > 0)"
            )));
        }
        Ok(Transfer {
            airtime_s: failed_airtime + data_airtime,
            latency_s: self.latency_s,
            rate_bps: rate,
            outage,
        })
    }

    fn validate(&self) -> Result<()> {
        positive("bandwidth_hz", self.bandwidth_hz)?;
        positive("uplink_tx_power_w", self.uplink_tx_power_w)?;
        positive("downlink_tx_power_w", self.downlink_tx_power_w)?;
        finite("noise_psd_dbm_per_hz", self.noise_psd_dbm_per_hz)?;
        if let Some(g) = self.gain_db {
            finite("gain_db", g)?;
        }
        if let Some(d) = self.distance_m
            && !(d.is_finite() && d >= 1.0)
        {
            return Err(HlmError::invalid(
                "distance_m",
                d,
                "must be a finite distance >= 1 m (the path loss is referenced at 1 m)",
            ));
        }
        if let Some(n) = self.path_loss_exponent {
            positive("path_loss_exponent", n)?;
        }
        if let Some(g0) = self.reference_gain_db {
            finite("reference_gain_db", g0)?;
        }
        self.channel_gain_db()?;
        non_negative("latency_s", self.latency_s)?;
        if self.coherence_messages == 0 {
            return Err(HlmError::invalid(
                "coherence_messages",
                0,
                "must be >= 1 message",
            ));
        }
        non_negative("outage_rate_bps", self.outage_rate_bps)?;
        non_negative("retry_slot_s", self.retry_slot_s)?;
        if self.max_attempts == 0 {
            return Err(HlmError::invalid("max_attempts", 0, "must be >= 1 attempt"));
        }
        // Without fading every retry sees the same rate: a rate below the floor would make every
        // message an outage, which is a configuration mistake rather than a channel condition.
        if self.fading == Fading::None {
            for dir in [Direction::Uplink, Direction::Downlink] {
                let r = self.rate_at_snr(self.mean_snr(dir)?);
                if r < self.outage_rate_bps {
                    return Err(HlmError::invalid(
                        "outage_rate_bps",
                        self.outage_rate_bps,
                        format!(
                            "above the {dir:?} rate {r:.4e} bit/s of a channel without fading: \
                             every message would be in outage"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.block = FadeBlock::default();
    }

    fn fresh(&self) -> Box<dyn LinkModel> {
        let mut link = self.clone();
        link.reset();
        Box::new(link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    /// N0 = −170 dBm/Hz = 1e−20 W/Hz, W = 10 MHz → N = 1e−13 W; P = 1 W, G = −100 dB = 1e−10
    /// → SNR = 1e−10 / 1e−13 = 1000.
    fn snr_1000() -> ShannonLink {
        ShannonLink {
            bandwidth_hz: 10e6,
            uplink_tx_power_w: 1.0,
            downlink_tx_power_w: 0.1,
            noise_psd_dbm_per_hz: -170.0,
            gain_db: Some(-100.0),
            ..Default::default()
        }
    }

    fn rng() -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(7)
    }

    #[test]
    fn closed_form_rate_and_airtime() {
        let mut l = snr_1000();
        l.latency_s = 0.005;
        l.validate().unwrap();
        assert!(close(l.mean_snr(Direction::Uplink).unwrap(), 1000.0, 1e-12));
        // R = 10e6 · log2(1001) = 10e6 · 9.967226258835993 = 99.672 Mbit/s.
        let t = l
            .transfer(92_000 * 8, Direction::Uplink, 0.0, &mut rng())
            .unwrap();
        assert!(close(t.rate_bps, 99_672_262.588_36, 1e-9), "{}", t.rate_bps);
        // 92,000 bytes = 736,000 bits → 736,000 / 99,672,262.59 = 7.384201 ms.
        assert!(close(t.airtime_s, 7.384_201e-3, 1e-6), "{}", t.airtime_s);
        assert_eq!(t.latency_s, 0.005);
        assert!(!t.outage);
        // Downlink at 0.1 W: SNR 100, R = 10e6 · log2(101) = 66.582 Mbit/s.
        let t = l
            .transfer(1000, Direction::Downlink, 0.0, &mut rng())
            .unwrap();
        assert!(close(t.rate_bps, 66_582_114.827_52, 1e-9), "{}", t.rate_bps);
        // An empty message still pays the latency, but no airtime.
        let t = l.transfer(0, Direction::Uplink, 0.0, &mut rng()).unwrap();
        assert_eq!((t.airtime_s, t.latency_s), (0.0, 0.005));
    }

    #[test]
    fn path_loss() {
        // G = −40 − 10·3·log10(100) = −100 dB with the default reference and exponent.
        let l = ShannonLink {
            distance_m: Some(100.0),
            ..Default::default()
        };
        l.validate().unwrap();
        assert!(close(l.channel_gain_db().unwrap(), -100.0, 1e-12));
        // Explicit: G = −30 − 10·2·log10(50) = −30 − 33.9794 = −63.9794 dB.
        let l = ShannonLink {
            distance_m: Some(50.0),
            path_loss_exponent: Some(2.0),
            reference_gain_db: Some(-30.0),
            ..Default::default()
        };
        assert!(close(l.channel_gain_db().unwrap(), -63.979_400_087, 1e-10));
        // Defaults at 100 m: N = 3.981e−21 · 1e7 = 3.981e−14 W, SNR = 0.2 · 1e−10 / 3.981e−14
        // = 502.38 (27.0 dB).
        let l = ShannonLink {
            distance_m: Some(100.0),
            ..Default::default()
        };
        assert!(close(
            l.mean_snr(Direction::Uplink).unwrap(),
            502.377_286,
            1e-6
        ));
    }

    #[test]
    fn gain_must_be_given_exactly_once() {
        let e = ShannonLink::default().validate().unwrap_err().to_string();
        assert!(e.contains("`gain_db`") && e.contains("distance_m"), "{e}");
        let both = ShannonLink {
            gain_db: Some(-90.0),
            distance_m: Some(10.0),
            ..Default::default()
        };
        let e = both.validate().unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");
        let stray = ShannonLink {
            gain_db: Some(-90.0),
            path_loss_exponent: Some(3.0),
            ..Default::default()
        };
        let e = stray.validate().unwrap_err().to_string();
        assert!(e.contains("only apply with `distance_m`"), "{e}");
    }

    #[test]
    fn validate_names_the_key() {
        let cases: Vec<(ShannonLink, &str)> = vec![
            (
                ShannonLink {
                    bandwidth_hz: 0.0,
                    ..snr_1000()
                },
                "bandwidth_hz",
            ),
            (
                ShannonLink {
                    uplink_tx_power_w: -1.0,
                    ..snr_1000()
                },
                "uplink_tx_power_w",
            ),
            (
                ShannonLink {
                    downlink_tx_power_w: f64::NAN,
                    ..snr_1000()
                },
                "downlink_tx_power_w",
            ),
            (
                ShannonLink {
                    noise_psd_dbm_per_hz: f64::INFINITY,
                    ..snr_1000()
                },
                "noise_psd_dbm_per_hz",
            ),
            (
                ShannonLink {
                    latency_s: -0.1,
                    ..snr_1000()
                },
                "latency_s",
            ),
            (
                ShannonLink {
                    coherence_messages: 0,
                    ..snr_1000()
                },
                "coherence_messages",
            ),
            (
                ShannonLink {
                    max_attempts: 0,
                    ..snr_1000()
                },
                "max_attempts",
            ),
            (
                ShannonLink {
                    retry_slot_s: -1.0,
                    ..snr_1000()
                },
                "retry_slot_s",
            ),
            (
                ShannonLink {
                    gain_db: None,
                    distance_m: Some(0.5),
                    ..snr_1000()
                },
                "distance_m",
            ),
            (
                ShannonLink {
                    gain_db: None,
                    distance_m: Some(5.0),
                    path_loss_exponent: Some(0.0),
                    ..snr_1000()
                },
                "path_loss_exponent",
            ),
            // No fading: 100 Mbit/s floor above the 99.67 Mbit/s uplink rate → permanent outage.
            (
                ShannonLink {
                    outage_rate_bps: 100e6,
                    ..snr_1000()
                },
                "outage_rate_bps",
            ),
        ];
        for (l, key) in cases {
            let e = l.validate().unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{key}: {e}");
        }
        // With fading the same floor is a legitimate (frequent) outage.
        let l = ShannonLink {
            outage_rate_bps: 100e6,
            fading: Fading::Rayleigh,
            ..snr_1000()
        };
        l.validate().unwrap();
    }

    /// Recover |h|² from the reported rate: SNR = 2^(R/W) − 1 = 1000·|h|².
    fn fade_of(t: &Transfer) -> f64 {
        ((t.rate_bps / 10e6).exp2() - 1.0) / 1000.0
    }

    #[test]
    fn a_fresh_link_starts_its_own_coherence_block() {
        // A block of 4 messages: after one transfer the link holds a fade for 3 more.
        let mut used = ShannonLink {
            fading: Fading::Rayleigh,
            coherence_messages: 4,
            ..snr_1000()
        };
        used.transfer(8, Direction::Uplink, 0.0, &mut rng())
            .unwrap();
        let mut fresh = used.fresh();
        let mut new = ShannonLink {
            fading: Fading::Rayleigh,
            coherence_messages: 4,
            ..snr_1000()
        };
        // Seeded alike, the fresh copy draws as a new link does; the used one keeps its fade.
        let mut rng_a = ChaCha8Rng::seed_from_u64(99);
        let mut rng_b = ChaCha8Rng::seed_from_u64(99);
        let a = fresh
            .transfer(8, Direction::Uplink, 0.0, &mut rng_a)
            .unwrap();
        let b = new.transfer(8, Direction::Uplink, 0.0, &mut rng_b).unwrap();
        assert_eq!(a, b);
        let mut rng_c = ChaCha8Rng::seed_from_u64(99);
        let c = used
            .transfer(8, Direction::Uplink, 0.0, &mut rng_c)
            .unwrap();
        assert_ne!(
            fade_of(&c),
            fade_of(&a),
            "the used link's fade is its first draw's"
        );
    }

    #[test]
    fn rayleigh_mean_gain_is_one() {
        let mut l = ShannonLink {
            fading: Fading::Rayleigh,
            ..snr_1000()
        };
        let mut r = rng();
        let n = 20_000;
        let mean = (0..n)
            .map(|_| fade_of(&l.transfer(8, Direction::Uplink, 0.0, &mut r).unwrap()))
            .sum::<f64>()
            / n as f64;
        // Exp(1) has variance 1: the standard error of the mean is 1/√20000 = 0.0071; 4σ = 0.028.
        assert!((mean - 1.0).abs() < 0.028, "{mean}");
    }

    #[test]
    fn outage_probability_matches_exponential_cdf() {
        // Floor R_min = W·log2(1 + 1000·x) with x = 0.2 → P(|h|² < x) = 1 − e^(−0.2) = 0.18127.
        let x: f64 = 0.2;
        let floor = 10e6 * (1.0 + 1000.0 * x).log2();
        let mut l = ShannonLink {
            fading: Fading::Rayleigh,
            outage_rate_bps: floor,
            max_attempts: 1,
            ..snr_1000()
        };
        l.validate().unwrap();
        let mut r = rng();
        let n = 20_000;
        let mut outages = 0;
        for _ in 0..n {
            let t = l.transfer(1000, Direction::Uplink, 0.0, &mut r).unwrap();
            if t.outage {
                outages += 1;
                // One failed slot, then the message at the floor rate.
                assert_eq!(t.rate_bps, floor);
                assert!(close(t.airtime_s, 1e-3 + 1000.0 / floor, 1e-12));
            } else {
                assert!(t.rate_bps >= floor);
            }
        }
        let p = outages as f64 / n as f64;
        let expect = 1.0 - (-x).exp();
        // Binomial standard error √(p(1−p)/n) = 0.00272; 4σ = 0.011.
        assert!((p - expect).abs() < 0.011, "{p} vs {expect}");
    }

    #[test]
    fn retries_draw_fresh_fades_and_cost_slots() {
        // A floor of x = 0.2 with 10 attempts: P(all fail) = 0.18127^10 ≈ 4e−8, so every message
        // ends above the floor, after k failed slots with P(k) geometric: E[k] = p/(1−p) = 0.2214.
        let x: f64 = 0.2;
        let floor = 10e6 * (1.0 + 1000.0 * x).log2();
        let mut l = ShannonLink {
            fading: Fading::Rayleigh,
            outage_rate_bps: floor,
            ..snr_1000()
        };
        let mut r = rng();
        let n = 20_000;
        let mut slots = 0.0;
        for _ in 0..n {
            let t = l.transfer(0, Direction::Uplink, 0.0, &mut r).unwrap();
            assert!(t.rate_bps >= floor);
            assert_eq!(t.outage, t.airtime_s > 0.0);
            slots += t.airtime_s / 1e-3;
        }
        let mean = slots / n as f64;
        let p = 1.0 - (-x).exp();
        // Geometric variance p/(1−p)² = 0.2704: standard error 0.0037; 4σ = 0.015.
        assert!((mean - p / (1.0 - p)).abs() < 0.015, "{mean}");
    }

    #[test]
    fn block_fading_holds_the_fade() {
        let mut l = ShannonLink {
            fading: Fading::Rayleigh,
            coherence_messages: 5,
            ..snr_1000()
        };
        let mut r = rng();
        let fades: Vec<f64> = (0..20)
            .map(|i| {
                // Alternate directions: both share the block.
                let dir = if i % 2 == 0 {
                    Direction::Uplink
                } else {
                    Direction::Downlink
                };
                let t = l.transfer(8, dir, 0.0, &mut r).unwrap();
                let snr0 = l.mean_snr(dir).unwrap();
                ((t.rate_bps / 10e6).exp2() - 1.0) / snr0
            })
            .collect();
        for block in fades.chunks(5) {
            for f in block {
                assert!(close(*f, block[0], 1e-9), "{fades:?}");
            }
        }
        for w in fades.chunks(5).collect::<Vec<_>>().windows(2) {
            assert_ne!(w[0][0], w[1][0]);
        }
        // reset() starts a new block at the next message: same rng → same first fade.
        l.reset();
        let mut r = rng();
        let t = l.transfer(8, Direction::Uplink, 0.0, &mut r).unwrap();
        assert!(close(fade_of(&t), fades[0], 1e-9));
    }

    #[test]
    fn no_fading_draws_nothing() {
        // Without fading the rng is untouched, so the link does not perturb other streams.
        let mut l = snr_1000();
        let mut r = rng();
        l.transfer(100, Direction::Uplink, 0.0, &mut r).unwrap();
        assert_eq!(r.next_u64(), rng().next_u64());
    }

    #[test]
    fn toml_round_trip() {
        let l: Box<dyn LinkModel> = toml::from_str(
            r#"
            type = "shannon"
            bandwidth_hz = 20e6
            distance_m = 30.0
            fading = "rayleigh"
            coherence_messages = 4
            "#,
        )
        .unwrap();
        l.validate().unwrap();
        let s = toml::to_string(&l).unwrap();
        assert!(
            s.contains("type = \"shannon\"") && s.contains("distance_m = 30.0"),
            "{s}"
        );
        assert!(
            !s.contains("gain_db = "),
            "unset options are not written: {s}"
        );
        let e = toml::from_str::<Box<dyn LinkModel>>("type = \"shannon\"\nbandwith_hz = 1.0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bandwith_hz"), "{e}");
        let e = toml::from_str::<Box<dyn LinkModel>>("type = \"shannon\"\nfading = \"rician\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rician"), "{e}");
    }
}

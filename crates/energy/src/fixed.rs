//! Fixed-rate link: a constant rate per direction and a fixed latency (a wired link, or a
//! measured average wireless rate).

use hlm_core::{Direction, LinkModel, Result, Transfer};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::units::{non_negative, positive};

/// Airtime = bits / rate of the direction; latency is added per message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedRateLink {
    /// Device-to-server rate (bit/s).
    pub uplink_bps: f64,
    /// Server-to-device rate (bit/s).
    pub downlink_bps: f64,
    /// One-way latency per message (s).
    #[serde(default)]
    pub latency_s: f64,
}

#[typetag::serde(name = "fixed_rate")]
impl LinkModel for FixedRateLink {
    fn transfer(
        &mut self,
        bits: u64,
        direction: Direction,
        _now_s: f64,
        _rng: &mut dyn RngCore,
    ) -> Result<Transfer> {
        let rate = match direction {
            Direction::Uplink => self.uplink_bps,
            Direction::Downlink => self.downlink_bps,
        };
        Ok(Transfer::at_rate(bits, rate, self.latency_s))
    }

    fn validate(&self) -> Result<()> {
        positive("uplink_bps", self.uplink_bps)?;
        positive("downlink_bps", self.downlink_bps)?;
        non_negative("latency_s", self.latency_s)
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

    #[test]
    fn airtime_is_bits_over_rate() {
        let mut l = FixedRateLink {
            uplink_bps: 10e6,
            downlink_bps: 50e6,
            latency_s: 0.02,
        };
        l.validate().unwrap();
        let mut r = ChaCha8Rng::seed_from_u64(0);
        // 92,000 bytes = 736,000 bits at 10 Mbit/s = 73.6 ms.
        let t = l.transfer(736_000, Direction::Uplink, 0.0, &mut r).unwrap();
        assert!((t.airtime_s - 0.0736).abs() < 1e-15);
        assert_eq!((t.latency_s, t.rate_bps, t.outage), (0.02, 10e6, false));
        // 15 bits at 50 Mbit/s = 0.3 µs.
        let t = l.transfer(15, Direction::Downlink, 0.0, &mut r).unwrap();
        assert!((t.airtime_s - 3e-7).abs() < 1e-20);
    }

    #[test]
    fn validate_and_parse() {
        let e = FixedRateLink {
            uplink_bps: 0.0,
            downlink_bps: 1.0,
            latency_s: 0.0,
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("`uplink_bps`"), "{e}");
        let e = FixedRateLink {
            uplink_bps: 1.0,
            downlink_bps: 1.0,
            latency_s: -1.0,
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("`latency_s`"), "{e}");
        let l: Box<dyn LinkModel> =
            toml::from_str("type = \"fixed_rate\"\nuplink_bps = 1e6\ndownlink_bps = 2e6").unwrap();
        l.validate().unwrap();
        // Rates have no sensible default: leaving one out is an error.
        let e = toml::from_str::<Box<dyn LinkModel>>("type = \"fixed_rate\"\nuplink_bps = 1e6")
            .unwrap_err()
            .to_string();
        assert!(e.contains("downlink_bps"), "{e}");
    }
}

//! Link emulation: hold each message for the airtime the link model gives for its exact byte
//! count (plus the link's latency), so a split run on a fast network takes as long as it would
//! over the modelled one ("5 Mbit/s Wi-Fi" on loopback).
//!
//! Store-and-forward: a message is held for its whole airtime before it is written (uplink) or
//! after it has been read (downlink). The emulator's link is a copy of the pipeline's `[link]`
//! with its own random stream, so a deterministic link (fixed rate, Shannon without fading)
//! gives exactly the modelled times, and a fading link the same statistics.

use std::time::{Duration, Instant};

use hlm_core::{Direction, HlmError, LinkModel, RandomStream, Result};
use rand_chacha::ChaCha8Rng;

/// Paces messages by a link model.
pub struct LinkEmulator {
    link: Box<dyn LinkModel>,
    rng: ChaCha8Rng,
    /// Modelled time of the link so far (the `now` of trace links).
    clock_s: f64,
    /// Total time held, per direction (uplink, downlink).
    held_s: [f64; 2],
}

impl LinkEmulator {
    /// Emulate `link`, with fading draws from `seed`.
    pub fn new(mut link: Box<dyn LinkModel>, seed: u64) -> Result<Self> {
        link.validate()?;
        link.reset();
        // Apart from the engine's own link stream.
        let rng = RandomStream::LinkEmulator.rng(seed);
        Ok(LinkEmulator {
            link,
            rng,
            clock_s: 0.0,
            held_s: [0.0; 2],
        })
    }

    /// How long a message of `bytes` takes in `direction` (airtime plus latency), advancing
    /// the link's clock.
    pub fn delay(&mut self, bytes: usize, direction: Direction) -> Result<Duration> {
        let t = self
            .link
            .transfer(bytes as u64 * 8, direction, self.clock_s, &mut self.rng)?;
        let s = t.airtime_s + t.latency_s;
        self.clock_s += s;
        self.held_s[usize::from(direction == Direction::Downlink)] += s;
        Duration::try_from_secs_f64(s)
            .map_err(|_| HlmError::Energy(format!("link gave an impossible delay of {s} s")))
    }

    /// Hold the calling thread for a message of `bytes` in `direction`, counting from `since`
    /// (time already spent on the real network counts towards the emulated time).
    pub fn hold(&mut self, bytes: usize, direction: Direction, since: Instant) -> Result<()> {
        let d = self.delay(bytes, direction)?;
        if let Some(rest) = d.checked_sub(since.elapsed()) {
            std::thread::sleep(rest);
        }
        Ok(())
    }

    /// Total time held so far: (uplink, downlink), seconds.
    pub fn held_s(&self) -> (f64, f64) {
        (self.held_s[0], self.held_s[1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_the_links_airtime_of_the_exact_bytes() {
        hlm_energy::link();
        let link = hlm_energy::FixedRateLink {
            uplink_bps: 1e6,
            downlink_bps: 8e6,
            latency_s: 0.002,
        };
        let mut e = LinkEmulator::new(Box::new(link), 0).unwrap();
        // 1,000 bytes = 8,000 bits at 1 Mbit/s = 8 ms, + 2 ms latency.
        let d = e.delay(1000, Direction::Uplink).unwrap();
        assert!((d.as_secs_f64() - 0.010).abs() < 1e-9, "{d:?}");
        // 100 bytes down at 8 Mbit/s = 0.1 ms + 2 ms.
        let d = e.delay(100, Direction::Downlink).unwrap();
        assert!((d.as_secs_f64() - 0.0021).abs() < 1e-9, "{d:?}");
        let (up, down) = e.held_s();
        assert!((up - 0.010).abs() < 1e-12 && (down - 0.0021).abs() < 1e-12);
        // Holding really waits.
        let t0 = Instant::now();
        e.hold(2500, Direction::Uplink, Instant::now()).unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(22));
    }
}

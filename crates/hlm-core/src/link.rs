//! The wireless (or wired) link between device and server: payload bits to airtime.

use rand::RngCore;

use crate::Result;

/// Direction of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Device to server.
    Uplink,
    /// Server to device.
    Downlink,
}

/// The result of sending one message.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Transfer {
    /// Time the radio is busy sending the payload (seconds); transmit energy is spent here.
    pub airtime_s: f64,
    /// Propagation and processing latency (seconds); no transmit energy.
    pub latency_s: f64,
    /// Achieved rate (bit/s) for this message.
    pub rate_bps: f64,
    /// The link was in outage (rate below its floor) for this message.
    pub outage: bool,
}

impl Transfer {
    /// A message of `bits` sent at a constant `rate_bps` without outage.
    pub fn at_rate(bits: u64, rate_bps: f64, latency_s: f64) -> Self {
        Transfer {
            airtime_s: bits as f64 / rate_bps,
            latency_s,
            rate_bps,
            outage: false,
        }
    }
}

/// Turns a payload size into airtime and latency.
#[typetag::serde(tag = "type")]
pub trait LinkModel: std::fmt::Debug + Send + Sync {
    /// Send `bits` in `direction` at modelled time `now_s` (seconds since the run began).
    fn transfer(
        &mut self,
        bits: u64,
        direction: Direction,
        now_s: f64,
        rng: &mut dyn RngCore,
    ) -> Result<Transfer>;
    /// Check parameters before a run.
    fn validate(&self) -> Result<()> {
        Ok(())
    }
    /// Reset per-run state (fading block, trace position).
    fn reset(&mut self) {}
    /// A link of this configuration with fresh per-run state, for a second user of the same
    /// `[link]` (the network emulator of a remote verifier) that must not share this one's
    /// state. Usually `let mut l = self.clone(); l.reset(); Box::new(l)`.
    fn fresh(&self) -> Box<dyn LinkModel>;
}

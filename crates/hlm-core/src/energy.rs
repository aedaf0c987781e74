//! Energy and time per component of the hybrid pipeline.

use serde::{Deserialize, Serialize};

use crate::{Result, Transfer};

/// One number per component of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Components {
    /// Draft model (and filter) compute on the device.
    pub device: f64,
    /// Uplink transmission.
    pub uplink: f64,
    /// Target model compute on the server.
    pub server: f64,
    /// Downlink reception.
    pub downlink: f64,
}

impl Components {
    /// Sum of all components.
    pub fn total(&self) -> f64 {
        self.device + self.uplink + self.server + self.downlink
    }
    /// Component-wise sum.
    pub fn add(&mut self, other: &Components) {
        self.device += other.device;
        self.uplink += other.uplink;
        self.server += other.server;
        self.downlink += other.downlink;
    }
    /// Component-wise scale.
    pub fn scaled(&self, f: f64) -> Components {
        Components {
            device: self.device * f,
            uplink: self.uplink * f,
            server: self.server * f,
            downlink: self.downlink * f,
        }
    }
}

/// The work of one step of the pipeline, as the energy model needs it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Work {
    /// Positions the draft model computed.
    pub device_tokens: u64,
    /// Measured device compute time (seconds) for them, filter included.
    pub device_compute_s: f64,
    /// The uplink message, if one was sent.
    pub uplink: Option<Transfer>,
    /// Positions the target model computed.
    pub server_tokens: u64,
    /// Measured server compute time (seconds).
    pub server_compute_s: f64,
    /// The downlink message, if one was sent.
    pub downlink: Option<Transfer>,
}

/// Energy (J) and time (s) of a piece of work, by component.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Costs {
    pub energy_j: Components,
    pub time_s: Components,
}

impl Costs {
    /// Component-wise sum.
    pub fn add(&mut self, other: &Costs) {
        self.energy_j.add(&other.energy_j);
        self.time_s.add(&other.time_s);
    }
}

/// Turns work into joules and seconds per component.
#[typetag::serde(tag = "type")]
pub trait EnergyModel: std::fmt::Debug + Send + Sync {
    /// Cost of one step of work.
    fn cost(&self, work: &Work) -> Result<Costs>;
    /// Check parameters before a run.
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

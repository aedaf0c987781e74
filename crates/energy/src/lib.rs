//! # hlm-energy
//!
//! Link and energy models of the hybrid pipeline, as config-selected plug-ins. No wireless or
//! energy constants are published for the papers this project reproduces, so every default is
//! an assumption documented where it is defined.
//!
//! Links ([`hlm_core::LinkModel`], the `[link]` table; no `[link]` = an ideal, free and instant
//! link):
//!
//! - [`ShannonLink`] (`type = "shannon"`): R = W·log2(1 + SNR) with
//!   SNR = P_tx·G·|h|² / (N0·W); G fixed (`gain_db`) or log-distance path loss
//!   G_dB = G_1m − 10·n·log10(d / 1 m); optional Rayleigh block fading |h|² ~ Exp(1) held for
//!   `coherence_messages` messages; messages below `outage_rate_bps` retry after a
//!   `retry_slot_s`. Airtime = bits / R (+ failed slots).
//! - [`FixedRateLink`] (`type = "fixed_rate"`): airtime = bits / rate of the direction.
//! - [`TraceLink`] (`type = "trace"`): rate linearly interpolated from a `time_s,rate_bps` CSV
//!   at the modelled time of the message, optionally looped.
//!
//! Every link adds its fixed `latency_s` per message, which costs time but no energy.
//!
//! Energy ([`hlm_core::EnergyModel`], the `[energy]` table):
//!
//! - [`AnalyticEnergy`] (`type = "analytic"`): device and server E = P·T (or J/FLOP × FLOPs)
//!   with T measured, per token, or FLOPs / FLOP rate; uplink E = P_tx × airtime; downlink
//!   E = P_rx × airtime; link time = airtime + latency.
//!
//! Measured ([`measured`]): CPU package energy from Linux RAPL and NVIDIA GPU energy from NVML
//! (cargo feature `nvml`, library loaded at run time) over a window around the work
//! (`hlm run --measure-energy`), reported next to the analytic figures.

pub mod analytic;
pub mod fixed;
pub mod measured;
pub mod shannon;
pub mod trace;
pub mod units;

pub use analytic::{AnalyticEnergy, ComputeSide, ComputeTime};
pub use fixed::FixedRateLink;
pub use measured::{
    EnergyCounters, EnergyWindow, MeasuredEnergy, MeterError, MeterReading, Meters, NvmlMeter,
    RaplMeter, Zone, counter_delta_uj,
};
pub use shannon::{Fading, ShannonLink};
pub use trace::{Trace, TraceLink};
pub use units::{db_to_linear, dbm_to_watts, linear_to_db};

/// Make sure the plug-ins of this crate are linked into a binary that only names them in config
/// files (typetag registers them at start-up, but only if the crate is linked at all).
pub fn link() {}

//! Measured energy: counters read over a window around the work.
//!
//! The analytic model says what a run *would* cost on the modelled hardware; these meters say
//! what it *did* cost on the machine it ran on:
//!
//! - [`RaplMeter`]: CPU package energy from Linux RAPL (powercap);
//! - [`NvmlMeter`]: NVIDIA GPU board energy from NVML's total-energy counter (cargo feature
//!   `nvml`; `libnvidia-ml.so` is loaded at run time, so the same binary runs without a driver).
//!
//! Both are cumulative counters, so a measurement is the difference of two readings
//! ([`counter_delta_uj`] handles one wrap-around). [`Meters`] opens every meter of the machine
//! and keeps the reason for each one that is not readable, so a report can say why.
//!
//! ```no_run
//! let meters = hlm_energy::Meters::open_all();
//! let (answer, readings) = meters.measure(|| 6 * 7);
//! for r in &readings {
//!     match &r.result {
//!         Ok(m) => println!("{}: {:.2} J over {:.2} s", r.meter, m.joules, m.seconds),
//!         Err(why) => println!("{}: unavailable: {why}", r.meter),
//!     }
//! }
//! # let _ = answer;
//! ```

mod nvml;
mod rapl;

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

pub use nvml::NvmlMeter;
pub use rapl::{POWERCAP_ROOT, RaplMeter};

/// Why energy could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    #[error(
        "no RAPL energy counters under {0} (not Linux, no intel_rapl/amd powercap driver, or a VM that hides them)"
    )]
    NoCounters(PathBuf),
    #[error(
        "cannot read RAPL counter {path}: {source}; since Linux 5.10 energy_uj is readable by root only \
         (run as root, or `sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj`)"
    )]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("RAPL counter {path} holds {content:?}, not a number of microjoules")]
    Malformed { path: PathBuf, content: String },
    #[error("NVML: {0}")]
    Nvml(String),
    #[error("this hlm was built without the `{0}` cargo feature (rebuild with `--features {0}`)")]
    NotBuilt(&'static str),
}

/// One counter of a meter (a CPU package, a GPU).
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    /// Readable name, e.g. `package-0` or `gpu-0 NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// The counter wraps to 0 after this many microjoules.
    pub max_range_uj: u64,
}

/// A set of cumulative energy counters.
pub trait EnergyCounters {
    /// How it measures (`"rapl"`, `"nvml"`), as reported.
    fn method(&self) -> &'static str;
    /// The counters, in the order [`EnergyCounters::read_uj`] returns them.
    fn zones(&self) -> &[Zone];
    /// Current value of every counter, in microjoules.
    fn read_uj(&self) -> Result<Vec<u64>, MeterError>;
}

/// Energy measured over a window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MeasuredEnergy {
    /// How it was measured (`"rapl"`, `"nvml"`).
    pub method: &'static str,
    /// Total joules over all zones.
    pub joules: f64,
    /// Joules per zone, by zone name (e.g. `package-0`).
    pub zones: Vec<(String, f64)>,
    /// Length of the window.
    pub seconds: f64,
}

/// An open measurement window on one meter.
pub struct EnergyWindow<'a> {
    counters: &'a dyn EnergyCounters,
    start: Vec<u64>,
    t0: Instant,
}

/// Microjoules between two readings of a counter that wraps to 0 after `max_range_uj`.
pub fn counter_delta_uj(before: u64, after: u64, max_range_uj: u64) -> u64 {
    if after >= before {
        after - before
    } else {
        // One wrap-around: from `before` up to the range limit, then from 0 to `after`.
        max_range_uj.saturating_sub(before) + after
    }
}

impl<'a> EnergyWindow<'a> {
    /// Start a window on `counters` now.
    pub fn start(counters: &'a dyn EnergyCounters) -> Result<Self, MeterError> {
        Ok(EnergyWindow {
            counters,
            start: counters.read_uj()?,
            t0: Instant::now(),
        })
    }

    /// Close the window. Correct if each counter wrapped at most once (a package at 200 W
    /// takes about 20 minutes to wrap a 2^38 µJ range).
    pub fn finish(self) -> Result<MeasuredEnergy, MeterError> {
        let end = self.counters.read_uj()?;
        let seconds = self.t0.elapsed().as_secs_f64();
        let zones: Vec<(String, f64)> = self
            .counters
            .zones()
            .iter()
            .zip(self.start.iter().zip(&end))
            .map(|(z, (&a, &b))| {
                (
                    z.name.clone(),
                    counter_delta_uj(a, b, z.max_range_uj) as f64 * 1e-6,
                )
            })
            .collect();
        Ok(MeasuredEnergy {
            method: self.counters.method(),
            joules: zones.iter().map(|(_, j)| j).sum(),
            zones,
            seconds,
        })
    }
}

/// What one meter measured, or why it could not.
#[derive(Debug, Clone, Serialize)]
pub struct MeterReading {
    /// `"rapl"` or `"nvml"`.
    pub meter: &'static str,
    /// The measurement, or the reason it is missing.
    #[serde(flatten, serialize_with = "reading_result")]
    pub result: Result<MeasuredEnergy, String>,
}

fn reading_result<S: serde::Serializer>(
    r: &Result<MeasuredEnergy, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    match r {
        Ok(m) => m.serialize(s),
        Err(e) => {
            let mut map = s.serialize_map(Some(2))?;
            map.serialize_entry("method", "unavailable")?;
            map.serialize_entry("error", e)?;
            map.end()
        }
    }
}

/// A meter by name: open, or the reason it could not be opened.
pub type NamedMeter = (&'static str, Result<Box<dyn EnergyCounters>, MeterError>);

/// Every energy meter of this machine, open or with the reason it is not.
pub struct Meters {
    meters: Vec<NamedMeter>,
}

impl Meters {
    /// Open RAPL and NVML.
    pub fn open_all() -> Self {
        let rapl = RaplMeter::open().map(|m| Box::new(m) as Box<dyn EnergyCounters>);
        let nvml = NvmlMeter::open().map(|m| Box::new(m) as Box<dyn EnergyCounters>);
        Meters {
            meters: vec![("rapl", rapl), ("nvml", nvml)],
        }
    }

    /// Meters given by the caller (tests, or a program with its own counters).
    pub fn from_parts(meters: Vec<NamedMeter>) -> Self {
        Meters { meters }
    }

    /// Run `work` inside one window per meter; one reading per meter, in order.
    pub fn measure<T>(&self, work: impl FnOnce() -> T) -> (T, Vec<MeterReading>) {
        let windows: Vec<Result<EnergyWindow<'_>, String>> = self
            .meters
            .iter()
            .map(|(_, m)| match m {
                Ok(m) => EnergyWindow::start(m.as_ref()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            })
            .collect();
        let out = work();
        let readings = self
            .meters
            .iter()
            .zip(windows)
            .map(|((name, _), w)| MeterReading {
                meter: name,
                result: w.and_then(|w| w.finish().map_err(|e| e.to_string())),
            })
            .collect();
        (out, readings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A counter that advances by a scripted amount at each read.
    struct Scripted {
        zones: Vec<Zone>,
        values: Vec<Vec<u64>>,
        next: Cell<usize>,
    }

    impl EnergyCounters for Scripted {
        fn method(&self) -> &'static str {
            "scripted"
        }
        fn zones(&self) -> &[Zone] {
            &self.zones
        }
        fn read_uj(&self) -> Result<Vec<u64>, MeterError> {
            let i = self.next.get();
            self.next.set(i + 1);
            self.values
                .get(i)
                .cloned()
                .ok_or(MeterError::Nvml("counter gone".into()))
        }
    }

    #[test]
    fn delta_handles_wrap_around() {
        assert_eq!(counter_delta_uj(100, 350, 1000), 250);
        assert_eq!(counter_delta_uj(900, 50, 1000), 150);
        assert_eq!(counter_delta_uj(7, 7, 1000), 0);
    }

    #[test]
    fn meters_measure_each_window_and_keep_the_reasons() {
        let zone = |n: &str| Zone {
            name: n.into(),
            max_range_uj: 1_000_000,
        };
        let ok = Scripted {
            zones: vec![zone("a"), zone("b")],
            values: vec![vec![10, 999_000], vec![2_010, 500]],
            next: Cell::new(0),
        };
        let fails_at_end = Scripted {
            zones: vec![zone("c")],
            values: vec![vec![0]],
            next: Cell::new(0),
        };
        let meters = Meters::from_parts(vec![
            ("ok", Ok(Box::new(ok))),
            ("gone", Ok(Box::new(fails_at_end))),
            ("absent", Err(MeterError::NotBuilt("nvml"))),
        ]);
        let (x, r) = meters.measure(|| 42);
        assert_eq!(x, 42);
        let m = r[0].result.as_ref().unwrap();
        // a: 2000 µJ; b wraps: 1000 + 500 µJ.
        assert_eq!(m.zones, vec![("a".into(), 0.002), ("b".into(), 0.0015)]);
        assert!((m.joules - 0.0035).abs() < 1e-12);
        assert_eq!(r[1].result.as_ref().unwrap_err(), "NVML: counter gone");
        let e = r[2].result.as_ref().unwrap_err();
        assert!(e.contains("--features nvml"), "{e}");
        let j = serde_json::to_value(&r[2]).unwrap();
        assert_eq!(j["meter"], "absent");
        assert_eq!(j["method"], "unavailable");
        let j = serde_json::to_value(&r[0]).unwrap();
        assert_eq!(j["method"], "scripted");
        assert_eq!(j["meter"], "ok");
    }
}

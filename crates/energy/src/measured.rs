//! Measured energy: CPU package energy from Linux RAPL through the powercap interface.
//!
//! The analytic model says what a run *would* cost on the modelled hardware; this meter says
//! what it *did* cost on the machine it ran on, over a window around the work. Only the
//! top-level zones (`intel-rapl:N`, one per package; AMD exposes the same names) are summed,
//! since sub-zones (cores, uncore, dram) are parts of them.
//!
//! ```no_run
//! let meter = hlm_energy::RaplMeter::open()?;
//! let window = meter.start()?;
//! // ... the work ...
//! let measured = window.finish()?;
//! println!("{:.2} J ({})", measured.joules, measured.method);
//! # Ok::<(), hlm_energy::MeterError>(())
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

/// Where Linux exposes RAPL.
pub const POWERCAP_ROOT: &str = "/sys/class/powercap";

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
}

/// One package zone.
#[derive(Debug, Clone)]
struct Zone {
    name: String,
    energy_uj: PathBuf,
    max_range_uj: u64,
}

/// The RAPL package counters of this machine.
#[derive(Debug, Clone)]
pub struct RaplMeter {
    zones: Vec<Zone>,
}

/// Energy measured over a window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MeasuredEnergy {
    /// How it was measured (`"rapl"`).
    pub method: &'static str,
    /// Total joules over all zones.
    pub joules: f64,
    /// Joules per zone, by zone name (e.g. `package-0`).
    pub zones: Vec<(String, f64)>,
    /// Length of the window.
    pub seconds: f64,
}

/// An open measurement window.
#[derive(Debug)]
pub struct EnergyWindow<'a> {
    meter: &'a RaplMeter,
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

fn read_u64(path: &Path) -> Result<u64, MeterError> {
    let text = std::fs::read_to_string(path).map_err(|source| MeterError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    text.trim().parse().map_err(|_| MeterError::Malformed {
        path: path.to_path_buf(),
        content: text.trim().to_string(),
    })
}

impl RaplMeter {
    /// Open the counters of this machine.
    pub fn open() -> Result<Self, MeterError> {
        Self::open_at(Path::new(POWERCAP_ROOT))
    }

    /// Open the counters under a powercap-like folder (tests use a fake tree).
    pub fn open_at(root: &Path) -> Result<Self, MeterError> {
        let entries =
            std::fs::read_dir(root).map_err(|_| MeterError::NoCounters(root.to_path_buf()))?;
        let mut zones = Vec::new();
        for e in entries.flatten() {
            let dir_name = e.file_name().to_string_lossy().into_owned();
            // Top-level zones only: `intel-rapl:0`, not `intel-rapl:0:1`.
            let Some(rest) = dir_name.strip_prefix("intel-rapl:") else {
                continue;
            };
            if rest.contains(':') {
                continue;
            }
            let dir = e.path();
            let name = std::fs::read_to_string(dir.join("name"))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| dir_name.clone());
            let max_range_uj = read_u64(&dir.join("max_energy_range_uj"))?;
            let energy_uj = dir.join("energy_uj");
            read_u64(&energy_uj)?;
            zones.push(Zone {
                name,
                energy_uj,
                max_range_uj,
            });
        }
        if zones.is_empty() {
            return Err(MeterError::NoCounters(root.to_path_buf()));
        }
        zones.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(RaplMeter { zones })
    }

    fn read(&self) -> Result<Vec<u64>, MeterError> {
        self.zones.iter().map(|z| read_u64(&z.energy_uj)).collect()
    }

    /// Start a window now.
    pub fn start(&self) -> Result<EnergyWindow<'_>, MeterError> {
        Ok(EnergyWindow {
            meter: self,
            start: self.read()?,
            t0: Instant::now(),
        })
    }
}

impl EnergyWindow<'_> {
    /// Close the window. Correct if each counter wrapped at most once (a package at 200 W
    /// takes about 20 minutes to wrap a 2^38 µJ range).
    pub fn finish(self) -> Result<MeasuredEnergy, MeterError> {
        let end = self.meter.read()?;
        let zones: Vec<(String, f64)> = self
            .meter
            .zones
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
            method: "rapl",
            joules: zones.iter().map(|(_, j)| j).sum(),
            zones,
            seconds: self.t0.elapsed().as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_tree(zones: &[(&str, &str, u64, u64)]) -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "hlm-rapl-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        for (dir, name, energy, max) in zones {
            let d = root.join(dir);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("name"), format!("{name}\n")).unwrap();
            std::fs::write(d.join("energy_uj"), format!("{energy}\n")).unwrap();
            std::fs::write(d.join("max_energy_range_uj"), format!("{max}\n")).unwrap();
        }
        root
    }

    #[test]
    fn delta_handles_wrap_around() {
        assert_eq!(counter_delta_uj(100, 350, 1000), 250);
        assert_eq!(counter_delta_uj(900, 50, 1000), 150);
        assert_eq!(counter_delta_uj(7, 7, 1000), 0);
    }

    #[test]
    fn window_sums_top_level_packages_across_a_wrap() {
        let root = fake_tree(&[
            ("intel-rapl:0", "package-0", 999_000_000, 1_000_000_000),
            ("intel-rapl:1", "package-1", 5_000_000, 1_000_000_000),
            ("intel-rapl:0:0", "core", 1, 1_000_000_000),
        ]);
        let meter = RaplMeter::open_at(&root).unwrap();
        let w = meter.start().unwrap();
        // package-0 wraps: 999 J -> 1000 J (range) -> 2 J, i.e. 3 J; package-1 uses 1.5 J.
        std::fs::write(root.join("intel-rapl:0/energy_uj"), "2000000\n").unwrap();
        std::fs::write(root.join("intel-rapl:1/energy_uj"), "6500000\n").unwrap();
        let m = w.finish().unwrap();
        assert_eq!(m.method, "rapl");
        assert_eq!(
            m.zones.len(),
            2,
            "sub-zone core must not be counted: {:?}",
            m.zones
        );
        assert!((m.zones[0].1 - 3.0).abs() < 1e-9, "{:?}", m.zones);
        assert!((m.joules - 4.5).abs() < 1e-9, "{}", m.joules);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn missing_and_unreadable_counters_say_why() {
        let e = RaplMeter::open_at(Path::new("/nonexistent/powercap")).unwrap_err();
        assert!(e.to_string().contains("no RAPL energy counters"), "{e}");
        let root = fake_tree(&[("intel-rapl:0", "package-0", 1, 10)]);
        std::fs::write(root.join("intel-rapl:0/energy_uj"), "lots\n").unwrap();
        let e = RaplMeter::open_at(&root).unwrap_err();
        assert!(
            e.to_string().contains("not a number") && e.to_string().contains("energy_uj"),
            "{e}"
        );
        std::fs::remove_file(root.join("intel-rapl:0/energy_uj")).unwrap();
        let e = RaplMeter::open_at(&root).unwrap_err();
        assert!(e.to_string().contains("root"), "{e}");
        let _ = std::fs::remove_dir_all(&root);
    }
}

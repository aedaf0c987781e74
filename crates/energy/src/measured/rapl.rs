//! CPU package energy from Linux RAPL through the powercap interface.
//!
//! Only the top-level zones (`intel-rapl:N`, one per package; AMD exposes the same names) are
//! summed, since sub-zones (cores, uncore, dram) are parts of them.

use std::path::{Path, PathBuf};

use super::{EnergyCounters, MeterError, Zone};

/// Where Linux exposes RAPL.
pub const POWERCAP_ROOT: &str = "/sys/class/powercap";

/// The RAPL package counters of this machine.
#[derive(Debug, Clone)]
pub struct RaplMeter {
    zones: Vec<Zone>,
    files: Vec<PathBuf>,
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
        let mut found = Vec::new();
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
            found.push((Zone { name, max_range_uj }, energy_uj));
        }
        if found.is_empty() {
            return Err(MeterError::NoCounters(root.to_path_buf()));
        }
        found.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        let (zones, files) = found.into_iter().unzip();
        Ok(RaplMeter { zones, files })
    }
}

impl EnergyCounters for RaplMeter {
    fn method(&self) -> &'static str {
        "rapl"
    }

    fn zones(&self) -> &[Zone] {
        &self.zones
    }

    fn read_uj(&self) -> Result<Vec<u64>, MeterError> {
        self.files.iter().map(|f| read_u64(f)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measured::EnergyWindow;

    /// A powercap tree of `zones`, removed when the guard drops (also when a test fails).
    fn fake_tree(zones: &[(&str, &str, u64, u64)]) -> tempfile::TempDir {
        let tree = tempfile::tempdir().unwrap();
        for (dir, name, energy, max) in zones {
            let d = tree.path().join(dir);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("name"), format!("{name}\n")).unwrap();
            std::fs::write(d.join("energy_uj"), format!("{energy}\n")).unwrap();
            std::fs::write(d.join("max_energy_range_uj"), format!("{max}\n")).unwrap();
        }
        tree
    }

    #[test]
    fn window_sums_top_level_packages_across_a_wrap() {
        let tree = fake_tree(&[
            ("intel-rapl:0", "package-0", 999_000_000, 1_000_000_000),
            ("intel-rapl:1", "package-1", 5_000_000, 1_000_000_000),
            ("intel-rapl:0:0", "core", 1, 1_000_000_000),
        ]);
        let root = tree.path();
        let meter = RaplMeter::open_at(root).unwrap();
        let w = EnergyWindow::start(&meter).unwrap();
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
    }

    #[test]
    fn missing_and_unreadable_counters_say_why() {
        let e = RaplMeter::open_at(Path::new("/nonexistent/powercap")).unwrap_err();
        assert!(e.to_string().contains("no RAPL energy counters"), "{e}");
        let tree = fake_tree(&[("intel-rapl:0", "package-0", 1, 10)]);
        let root = tree.path();
        std::fs::write(root.join("intel-rapl:0/energy_uj"), "lots\n").unwrap();
        let e = RaplMeter::open_at(root).unwrap_err();
        assert!(
            e.to_string().contains("not a number") && e.to_string().contains("energy_uj"),
            "{e}"
        );
        std::fs::remove_file(root.join("intel-rapl:0/energy_uj")).unwrap();
        let e = RaplMeter::open_at(root).unwrap_err();
        assert!(e.to_string().contains("root"), "{e}");
    }
}

//! NVIDIA GPU energy from NVML's total-energy counter (`nvmlDeviceGetTotalEnergyConsumption`:
//! millijoules since the driver loaded; Volta and newer).
//!
//! Behind the cargo feature `nvml`. `libnvidia-ml.so` ships with the driver, not with CUDA, and
//! is loaded at run time, so a binary built with the feature still starts on machines without
//! an NVIDIA driver and reports why the GPU was not measured.

use super::{EnergyCounters, MeterError, Zone};

/// The energy counters of every NVIDIA GPU NVML sees (all of them: the model may run on any).
pub struct NvmlMeter {
    #[cfg(feature = "nvml")]
    nvml: nvml_wrapper::Nvml,
    zones: Vec<Zone>,
}

impl std::fmt::Debug for NvmlMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlMeter")
            .field("zones", &self.zones)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "nvml")]
fn nvml_error(what: &str, e: nvml_wrapper::error::NvmlError) -> MeterError {
    use nvml_wrapper::error::NvmlError;
    MeterError::Nvml(match e {
        NvmlError::LibloadingError(e) => format!(
            "cannot load the NVIDIA Management Library (libnvidia-ml.so.1, part of the NVIDIA \
             driver): {e}"
        ),
        NvmlError::DriverNotLoaded => "the NVIDIA driver is not loaded".to_string(),
        NvmlError::NoPermission => format!("{what}: permission denied"),
        NvmlError::NotSupported => format!(
            "{what}: not supported by this GPU (NVML's energy counter needs Volta or newer)"
        ),
        e => format!("{what}: {e}"),
    })
}

impl NvmlMeter {
    /// Load NVML and open the counter of every GPU.
    #[cfg(feature = "nvml")]
    pub fn open() -> Result<Self, MeterError> {
        let nvml = nvml_wrapper::Nvml::init().map_err(|e| nvml_error("initialisation", e))?;
        let count = nvml
            .device_count()
            .map_err(|e| nvml_error("device count", e))?;
        if count == 0 {
            return Err(MeterError::Nvml("NVML sees no GPU".into()));
        }
        let mut zones = Vec::new();
        for i in 0..count {
            let what = format!("GPU {i}");
            let d = nvml.device_by_index(i).map_err(|e| nvml_error(&what, e))?;
            let name = d.name().unwrap_or_else(|_| "NVIDIA GPU".into());
            d.total_energy_consumption()
                .map_err(|e| nvml_error(&format!("energy counter of GPU {i} ({name})"), e))?;
            zones.push(Zone {
                name: format!("gpu-{i} {name}"),
                // A u64 of millijoules does not wrap in practice.
                max_range_uj: u64::MAX,
            });
        }
        Ok(NvmlMeter { nvml, zones })
    }

    /// Without the `nvml` feature: always an error that says how to get it.
    #[cfg(not(feature = "nvml"))]
    pub fn open() -> Result<Self, MeterError> {
        Err(MeterError::NotBuilt("nvml"))
    }
}

impl EnergyCounters for NvmlMeter {
    fn method(&self) -> &'static str {
        "nvml"
    }

    fn zones(&self) -> &[Zone] {
        &self.zones
    }

    #[cfg(feature = "nvml")]
    fn read_uj(&self) -> Result<Vec<u64>, MeterError> {
        (0..self.zones.len() as u32)
            .map(|i| {
                let what = format!("GPU {i}");
                let d = self
                    .nvml
                    .device_by_index(i)
                    .map_err(|e| nvml_error(&what, e))?;
                let mj = d
                    .total_energy_consumption()
                    .map_err(|e| nvml_error(&what, e))?;
                Ok(mj.saturating_mul(1000))
            })
            .collect()
    }

    #[cfg(not(feature = "nvml"))]
    fn read_uj(&self) -> Result<Vec<u64>, MeterError> {
        Err(MeterError::NotBuilt("nvml"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine without an NVIDIA driver (CI) opening says why; on one with it, the
    /// counter reads and never runs backwards.
    #[test]
    fn opens_or_says_why() {
        match NvmlMeter::open() {
            Ok(m) => {
                let a = m.read_uj().unwrap();
                let b = m.read_uj().unwrap();
                assert!(a.iter().zip(&b).all(|(a, b)| b >= a), "{a:?} {b:?}");
            }
            Err(e) => {
                let e = e.to_string();
                assert!(
                    e.contains("NVIDIA") || e.contains("NVML") || e.contains("--features nvml"),
                    "{e}"
                );
            }
        }
    }
}

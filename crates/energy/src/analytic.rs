//! Analytic energy model: power × time per component (research notes §5.2).
//!
//! ```toml
//! [energy]
//! type = "analytic"
//! uplink_tx_power_w = 0.2
//! downlink_rx_power_w = 0.1
//! [energy.device]
//! power_w = 5.0
//! time = "measured"                  # or { seconds_per_token = 0.02 }
//! [energy.server]                    # or { flops_per_token = 1.4e10, flops_per_s = 1e14 }
//! time = { seconds_per_pass = 0.0016, flops_per_token = 3.1e9, flops_per_s = 1.5e14 }
//! joules_per_flop = 1e-11            # optional: replaces power_w × time for the FLOPs
//! ```
//!
//! `seconds_per_pass` (optional, with either modelled form) is a fixed cost of every model pass
//! that computes at least one position, whatever its length: batch-1 decoding on a GPU is
//! memory-bound, so one pass costs about (weight bytes / memory bandwidth) however many
//! positions it verifies. It is what makes skipping verification save server energy in the
//! papers' sense ("skips the LLM computation"), since skipped tokens still enter the server's
//! context at the next upload, in the same pass.
//!
//! No power or energy constants are published for the papers this project reproduces (research
//! notes §5, §7), so every default below is an assumption, stated next to it.

use std::fmt;

use hlm_core::{Costs, EnergyModel, HlmError, Result, Transfer, Work};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::units::{non_negative, positive};

/// Assumption: a phone-class SoC running the draft model draws about 5 W sustained (phones
/// throttle above a few watts of sustained load).
pub const DEFAULT_DEVICE_POWER_W: f64 = 5.0;
/// Assumption: the verifier's GPU runs at its board power; 300 W is the TDP of a data-centre GPU
/// such as an NVIDIA A100 80 GB PCIe.
pub const DEFAULT_SERVER_POWER_W: f64 = 300.0;
/// 23 dBm ≈ 0.2 W, the maximum output of a 3GPP power-class-3 phone (TS 38.101-1), the same as
/// the Shannon link's default. Radiated power only: a whole modem draws more (raise it to
/// model that).
pub const DEFAULT_UPLINK_TX_POWER_W: f64 = 0.2;
/// Assumption: 0.1 W for the phone's receive chain while a downlink message arrives.
pub const DEFAULT_DOWNLINK_RX_POWER_W: f64 = 0.1;

/// How long a side computes for a step.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum ComputeTime {
    /// The wall-clock time the engine measured (`time = "measured"`).
    #[default]
    Measured,
    /// A fixed time per pass plus one per computed position
    /// (`time = { seconds_per_token = ..., seconds_per_pass = ... }`, either may be left out).
    PerToken {
        seconds_per_token: f64,
        seconds_per_pass: f64,
    },
    /// A fixed time per pass plus FLOPs per position over a sustained FLOP rate
    /// (`time = { flops_per_token = ..., flops_per_s = ..., seconds_per_pass = ... }`); a dense
    /// transformer needs about 2 × parameters FLOPs per token.
    Flops {
        flops_per_token: f64,
        flops_per_s: f64,
        seconds_per_pass: f64,
    },
}

impl ComputeTime {
    /// Seconds of one pass over `tokens` positions, given the measured time: (fixed pass time,
    /// per-position time). A pass over no positions costs nothing.
    pub fn seconds(&self, tokens: u64, measured_s: f64) -> (f64, f64) {
        if tokens == 0 && !matches!(self, ComputeTime::Measured) {
            return (0.0, 0.0);
        }
        match *self {
            ComputeTime::Measured => (0.0, measured_s),
            ComputeTime::PerToken {
                seconds_per_token,
                seconds_per_pass,
            } => (seconds_per_pass, tokens as f64 * seconds_per_token),
            ComputeTime::Flops {
                flops_per_token,
                flops_per_s,
                seconds_per_pass,
            } => (
                seconds_per_pass,
                tokens as f64 * flops_per_token / flops_per_s,
            ),
        }
    }
}

impl Serialize for ComputeTime {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let pass = |p: f64| (p != 0.0).then_some(p);
        let table = match *self {
            ComputeTime::Measured => return s.serialize_str("measured"),
            ComputeTime::PerToken {
                seconds_per_token,
                seconds_per_pass,
            } => TimeTable {
                seconds_per_token: Some(seconds_per_token),
                seconds_per_pass: pass(seconds_per_pass),
                ..TimeTable::default()
            },
            ComputeTime::Flops {
                flops_per_token,
                flops_per_s,
                seconds_per_pass,
            } => TimeTable {
                flops_per_token: Some(flops_per_token),
                flops_per_s: Some(flops_per_s),
                seconds_per_pass: pass(seconds_per_pass),
                ..TimeTable::default()
            },
        };
        table.serialize(s)
    }
}

/// The table form of [`ComputeTime`], before checking which fields go together.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeTable {
    #[serde(skip_serializing_if = "Option::is_none")]
    seconds_per_token: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    flops_per_token: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    flops_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seconds_per_pass: Option<f64>,
}

const TIME_FORMS: &str = "\"measured\", { seconds_per_token = ... } or \
                          { flops_per_token = ..., flops_per_s = ... }, \
                          each optionally with seconds_per_pass = ...";

// Hand-written rather than `#[serde(untagged)]` so a wrong value says what is accepted instead
// of "data did not match any variant".
impl<'de> Deserialize<'de> for ComputeTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ComputeTime;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(TIME_FORMS)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<ComputeTime, E> {
                match v {
                    "measured" => Ok(ComputeTime::Measured),
                    _ => Err(E::custom(format!(
                        "unknown time `{v}`: expected {TIME_FORMS}"
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<ComputeTime, A::Error> {
                let t = TimeTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let seconds_per_pass = t.seconds_per_pass.unwrap_or(0.0);
                match (t.seconds_per_token, t.flops_per_token, t.flops_per_s) {
                    (Some(seconds_per_token), None, None) => Ok(ComputeTime::PerToken {
                        seconds_per_token,
                        seconds_per_pass,
                    }),
                    (None, None, None) if t.seconds_per_pass.is_some() => {
                        Ok(ComputeTime::PerToken {
                            seconds_per_token: 0.0,
                            seconds_per_pass,
                        })
                    }
                    (None, Some(flops_per_token), Some(flops_per_s)) => Ok(ComputeTime::Flops {
                        flops_per_token,
                        flops_per_s,
                        seconds_per_pass,
                    }),
                    _ => Err(de::Error::custom(format!(
                        "time needs exactly one of {TIME_FORMS}"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Compute on one side (device or server).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ComputeSide {
    /// Power drawn while computing (W).
    pub power_w: f64,
    /// Where the compute time comes from.
    pub time: ComputeTime,
    /// If set, energy = joules_per_flop × FLOPs instead of power_w × time (needs FLOP-based
    /// `time`, which supplies the FLOPs per token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub joules_per_flop: Option<f64>,
}

impl ComputeSide {
    /// Measured time at `power_w`.
    pub fn measured(power_w: f64) -> Self {
        ComputeSide {
            power_w,
            time: ComputeTime::Measured,
            joules_per_flop: None,
        }
    }

    /// (energy J, time s) for one pass over `tokens` positions with `measured_s` measured.
    pub fn cost(&self, tokens: u64, measured_s: f64) -> (f64, f64) {
        let (pass_s, tokens_s) = self.time.seconds(tokens, measured_s);
        let tokens_e = match (self.joules_per_flop, self.time) {
            (
                Some(j),
                ComputeTime::Flops {
                    flops_per_token, ..
                },
            ) => j * flops_per_token * tokens as f64,
            _ => self.power_w * tokens_s,
        };
        (self.power_w * pass_s + tokens_e, pass_s + tokens_s)
    }

    fn validate(&self, side: &str) -> Result<()> {
        non_negative(&format!("{side}.power_w"), self.power_w)?;
        match self.time {
            ComputeTime::Measured => {}
            ComputeTime::PerToken {
                seconds_per_token,
                seconds_per_pass,
            } => {
                non_negative(&format!("{side}.time.seconds_per_token"), seconds_per_token)?;
                non_negative(&format!("{side}.time.seconds_per_pass"), seconds_per_pass)?;
            }
            ComputeTime::Flops {
                flops_per_token,
                flops_per_s,
                seconds_per_pass,
            } => {
                non_negative(&format!("{side}.time.seconds_per_pass"), seconds_per_pass)?;
                positive(&format!("{side}.time.flops_per_token"), flops_per_token)?;
                positive(&format!("{side}.time.flops_per_s"), flops_per_s)?;
            }
        }
        if let Some(j) = self.joules_per_flop {
            let key = format!("{side}.joules_per_flop");
            non_negative(&key, j)?;
            if !matches!(self.time, ComputeTime::Flops { .. }) {
                return Err(HlmError::invalid(
                    key,
                    j,
                    "needs FLOPs per token: set time = { flops_per_token = ..., flops_per_s = ... }",
                ));
            }
        }
        Ok(())
    }
}

/// [`ComputeSide`] as written, with `power_w` optional so each side can default differently.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSide {
    power_w: Option<f64>,
    #[serde(default)]
    time: ComputeTime,
    joules_per_flop: Option<f64>,
}

impl RawSide {
    fn with_default_power(self, power_w: f64) -> ComputeSide {
        ComputeSide {
            power_w: self.power_w.unwrap_or(power_w),
            time: self.time,
            joules_per_flop: self.joules_per_flop,
        }
    }
}

fn device_side<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<ComputeSide, D::Error> {
    Ok(RawSide::deserialize(d)?.with_default_power(DEFAULT_DEVICE_POWER_W))
}

fn server_side<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<ComputeSide, D::Error> {
    Ok(RawSide::deserialize(d)?.with_default_power(DEFAULT_SERVER_POWER_W))
}

/// Energy and time per component:
///
/// - device: E = `device.power_w` × T_dev (or J/FLOP × FLOPs), T_dev measured or modelled;
/// - server: the same with `server`;
/// - uplink: E = `uplink_tx_power_w` × airtime, T = airtime + latency;
/// - downlink: E = `downlink_rx_power_w` × airtime, T = airtime + latency.
///
/// Latency costs time but no energy (the radio is not sending); idle power while waiting for
/// the server is not counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticEnergy {
    #[serde(deserialize_with = "device_side")]
    pub device: ComputeSide,
    #[serde(deserialize_with = "server_side")]
    pub server: ComputeSide,
    /// Device transmit power during uplink airtime (W).
    pub uplink_tx_power_w: f64,
    /// Device receive power during downlink airtime (W).
    pub downlink_rx_power_w: f64,
}

impl Default for AnalyticEnergy {
    fn default() -> Self {
        AnalyticEnergy {
            device: ComputeSide::measured(DEFAULT_DEVICE_POWER_W),
            server: ComputeSide::measured(DEFAULT_SERVER_POWER_W),
            uplink_tx_power_w: DEFAULT_UPLINK_TX_POWER_W,
            downlink_rx_power_w: DEFAULT_DOWNLINK_RX_POWER_W,
        }
    }
}

/// (energy J, time s) of one message at `power_w`; no message costs nothing.
fn radio(message: Option<&Transfer>, power_w: f64) -> (f64, f64) {
    message.map_or((0.0, 0.0), |t| {
        (power_w * t.airtime_s, t.airtime_s + t.latency_s)
    })
}

#[typetag::serde(name = "analytic")]
impl EnergyModel for AnalyticEnergy {
    fn cost(&self, work: &Work) -> Result<Costs> {
        let (dev_e, dev_t) = self.device.cost(work.device_tokens, work.device_compute_s);
        let (srv_e, srv_t) = self.server.cost(work.server_tokens, work.server_compute_s);
        let (up_e, up_t) = radio(work.uplink.as_ref(), self.uplink_tx_power_w);
        let (down_e, down_t) = radio(work.downlink.as_ref(), self.downlink_rx_power_w);
        let mut c = Costs::default();
        c.energy_j.device = dev_e;
        c.energy_j.server = srv_e;
        c.energy_j.uplink = up_e;
        c.energy_j.downlink = down_e;
        c.time_s.device = dev_t;
        c.time_s.server = srv_t;
        c.time_s.uplink = up_t;
        c.time_s.downlink = down_t;
        Ok(c)
    }

    fn validate(&self) -> Result<()> {
        self.device.validate("device")?;
        self.server.validate("server")?;
        non_negative("uplink_tx_power_w", self.uplink_tx_power_w)?;
        non_negative("downlink_rx_power_w", self.downlink_rx_power_w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1e-300)
    }

    fn parse(s: &str) -> std::result::Result<Box<dyn EnergyModel>, String> {
        toml::from_str::<Box<dyn EnergyModel>>(s).map_err(|e| e.to_string())
    }

    #[test]
    fn measured_defaults_per_component() {
        let m = AnalyticEnergy::default();
        m.validate().unwrap();
        let w = Work {
            device_tokens: 4,
            device_compute_s: 0.02,
            // 7.384 ms of airtime (92 kB at 99.67 Mbit/s) + 5 ms latency.
            uplink: Some(Transfer {
                airtime_s: 7.384e-3,
                latency_s: 5e-3,
                rate_bps: 99.67e6,
                outage: false,
            }),
            server_tokens: 5,
            server_compute_s: 0.03,
            downlink: Some(Transfer {
                airtime_s: 1e-6,
                latency_s: 5e-3,
                rate_bps: 20e6,
                outage: false,
            }),
        };
        let c = m.cost(&w).unwrap();
        // device 5 W × 0.02 s = 0.1 J; server 300 W × 0.03 s = 9 J.
        assert!(close(c.energy_j.device, 0.1) && close(c.time_s.device, 0.02));
        assert!(close(c.energy_j.server, 9.0) && close(c.time_s.server, 0.03));
        // uplink 0.2 W × 7.384 ms = 1.4768 mJ over 12.384 ms (latency costs no energy).
        assert!(close(c.energy_j.uplink, 1.4768e-3) && close(c.time_s.uplink, 12.384e-3));
        // downlink 0.1 W × 1 µs = 0.1 µJ over 5.001 ms.
        assert!(close(c.energy_j.downlink, 1e-7) && close(c.time_s.downlink, 5.001e-3));
        // No messages: the radio costs nothing.
        let c = m
            .cost(&Work {
                device_tokens: 1,
                device_compute_s: 0.01,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            (c.energy_j.uplink, c.time_s.uplink, c.energy_j.downlink),
            (0.0, 0.0, 0.0)
        );
    }

    #[test]
    fn modelled_time_and_flop_energy() {
        let m = AnalyticEnergy {
            device: ComputeSide {
                power_w: 4.0,
                time: ComputeTime::PerToken {
                    seconds_per_token: 0.025,
                    seconds_per_pass: 0.0,
                },
                joules_per_flop: None,
            },
            server: ComputeSide {
                power_w: 300.0,
                // LLaMA-2-7B: 2 × 7e9 = 1.4e10 FLOP/token at 1e14 FLOP/s → 0.14 ms/token.
                time: ComputeTime::Flops {
                    flops_per_token: 1.4e10,
                    flops_per_s: 1e14,
                    seconds_per_pass: 0.0,
                },
                joules_per_flop: None,
            },
            ..Default::default()
        };
        m.validate().unwrap();
        let w = Work {
            device_tokens: 3,
            device_compute_s: 99.0,
            server_tokens: 5,
            server_compute_s: 99.0,
            ..Default::default()
        };
        let c = m.cost(&w).unwrap();
        // device 3 × 25 ms = 75 ms, × 4 W = 0.3 J (the measured 99 s is ignored).
        assert!(close(c.time_s.device, 0.075) && close(c.energy_j.device, 0.3));
        // server 5 × 0.14 ms = 0.7 ms, × 300 W = 0.21 J.
        assert!(close(c.time_s.server, 7e-4) && close(c.energy_j.server, 0.21));
        // J/FLOP: 1e−11 J × 1.4e10 FLOP × 5 tokens = 0.7 J, whatever power_w says.
        let m = AnalyticEnergy {
            server: ComputeSide {
                joules_per_flop: Some(1e-11),
                ..m.server
            },
            ..m
        };
        m.validate().unwrap();
        let c = m.cost(&w).unwrap();
        assert!(close(c.energy_j.server, 0.7) && close(c.time_s.server, 7e-4));
    }

    #[test]
    fn a_pass_costs_its_fixed_time_once_whatever_its_length() {
        // A memory-bound GPU verifier: 1.6 ms to read the weights per pass, 20 µs per position.
        let m = parse(
            r#"
            type = "analytic"
            [server]
            power_w = 300.0
            time = { seconds_per_pass = 0.0016, flops_per_token = 3e9, flops_per_s = 1.5e14 }
            "#,
        )
        .unwrap();
        m.validate().unwrap();
        let server = |tokens: u64| {
            m.cost(&Work {
                server_tokens: tokens,
                server_compute_s: 99.0,
                ..Default::default()
            })
            .unwrap()
        };
        // One position: 1.6 ms + 20 µs = 1.62 ms, × 300 W = 0.486 J.
        let one = server(1);
        assert!(close(one.time_s.server, 1.62e-3), "{one:?}");
        assert!(close(one.energy_j.server, 0.486), "{one:?}");
        // Four positions in one pass (three skipped tokens caught up, one verified): the pass
        // is paid once, so 1.6 ms + 4 × 20 µs = 1.68 ms, far less than four passes.
        let four = server(4);
        assert!(close(four.time_s.server, 1.68e-3), "{four:?}");
        assert!(close(four.energy_j.server, 0.504), "{four:?}");
        // No positions: no pass.
        assert_eq!(server(0).energy_j.server, 0.0);
        // seconds_per_pass alone is a fixed cost per pass; it round-trips through TOML.
        let m = parse("type = \"analytic\"\n[device]\ntime = { seconds_per_pass = 0.02 }").unwrap();
        let c = m
            .cost(&Work {
                device_tokens: 7,
                ..Default::default()
            })
            .unwrap();
        assert!(
            close(c.time_s.device, 0.02) && close(c.energy_j.device, 0.1),
            "{c:?}"
        );
        let s = toml::to_string(&m).unwrap();
        assert!(s.contains("seconds_per_pass = 0.02"), "{s}");
        let e = parse("type = \"analytic\"\n[server]\ntime = { seconds_per_pass = -1.0 }")
            .and_then(|m| m.validate().map_err(|e| e.to_string()))
            .unwrap_err();
        assert!(e.contains("server.time.seconds_per_pass"), "{e}");
    }

    #[test]
    fn validate_names_the_key() {
        let base = AnalyticEnergy::default();
        let cases = [
            (
                AnalyticEnergy {
                    uplink_tx_power_w: -1.0,
                    ..base.clone()
                },
                "uplink_tx_power_w",
            ),
            (
                AnalyticEnergy {
                    downlink_rx_power_w: f64::NAN,
                    ..base.clone()
                },
                "downlink_rx_power_w",
            ),
            (
                AnalyticEnergy {
                    device: ComputeSide::measured(-5.0),
                    ..base.clone()
                },
                "device.power_w",
            ),
            (
                AnalyticEnergy {
                    server: ComputeSide {
                        time: ComputeTime::Flops {
                            flops_per_token: 1e9,
                            flops_per_s: 0.0,
                            seconds_per_pass: 0.0,
                        },
                        ..base.server
                    },
                    ..base.clone()
                },
                "server.time.flops_per_s",
            ),
            (
                AnalyticEnergy {
                    device: ComputeSide {
                        time: ComputeTime::PerToken {
                            seconds_per_token: -1.0,
                            seconds_per_pass: 0.0,
                        },
                        ..base.device
                    },
                    ..base.clone()
                },
                "device.time.seconds_per_token",
            ),
            (
                AnalyticEnergy {
                    device: ComputeSide {
                        joules_per_flop: Some(1e-11),
                        ..base.device
                    },
                    ..base.clone()
                },
                "device.joules_per_flop",
            ),
        ];
        for (m, key) in cases {
            let e = m.validate().unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{key}: {e}");
        }
    }

    #[test]
    fn toml_forms_and_side_defaults() {
        let m = parse(
            r#"
            type = "analytic"
            [device]
            time = { seconds_per_token = 0.02 }
            [server]
            power_w = 250.0
            time = { flops_per_token = 1.4e10, flops_per_s = 1e14 }
            joules_per_flop = 1e-11
            "#,
        )
        .unwrap();
        m.validate().unwrap();
        let s = toml::to_string(&m).unwrap();
        let back: AnalyticEnergy = toml::from_str(&s.replace("type = \"analytic\"\n", "")).unwrap();
        // The device keeps its own default power (5 W), not the server's.
        assert_eq!(back.device.power_w, DEFAULT_DEVICE_POWER_W);
        assert_eq!(
            back.device.time,
            ComputeTime::PerToken {
                seconds_per_token: 0.02,
                seconds_per_pass: 0.0,
            }
        );
        assert_eq!(back.server.power_w, 250.0);
        assert_eq!(back.server.joules_per_flop, Some(1e-11));
        // A side given with only `time` still defaults its power per side.
        let m: AnalyticEnergy = toml::from_str("[server]\ntime = \"measured\"").unwrap();
        assert_eq!((m.device.power_w, m.server.power_w), (5.0, 300.0));
        assert_eq!(AnalyticEnergy::default(), toml::from_str("").unwrap());
    }

    #[test]
    fn toml_errors_say_what_is_accepted() {
        let e = parse("type = \"analytic\"\n[device]\ntime = \"modelled\"").unwrap_err();
        assert!(
            e.contains("unknown time `modelled`") && e.contains("seconds_per_token"),
            "{e}"
        );
        let e =
            parse("type = \"analytic\"\n[device]\ntime = { flops_per_token = 1e9 }").unwrap_err();
        assert!(e.contains("time needs exactly one of"), "{e}");
        let e = parse("type = \"analytic\"\n[device]\ntime = { seconds_per_tok = 1 }").unwrap_err();
        assert!(e.contains("seconds_per_tok"), "{e}");
        let e = parse("type = \"analytic\"\n[device]\npower = 1").unwrap_err();
        assert!(e.contains("power"), "{e}");
        let e = parse("type = \"analytic\"\nuplink_power_w = 1").unwrap_err();
        assert!(e.contains("uplink_power_w"), "{e}");
    }
}

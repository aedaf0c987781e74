//! Trace-driven link: the rate follows a measured (or synthetic) rate-vs-time trace.
//!
//! File format: CSV with the header `time_s,rate_bps` or `time_s,rate_bps,downlink_rate_bps`,
//! one row per sample, times strictly increasing, rates > 0. Blank lines and lines starting
//! with `#` are ignored. Without a downlink column both directions use `rate_bps`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hlm_core::{Direction, HlmError, LinkModel, Result, Transfer};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::units::non_negative;

/// Rate at modelled time `now_s` by linear interpolation between trace samples; before the first
/// sample the first rate holds, after the last the last rate holds, unless `repeat` loops the
/// trace with period (last time − first time). A message is sent at the rate of the moment it
/// starts. `path` is relative to the working directory of the process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceLink {
    /// The CSV trace file.
    pub path: PathBuf,
    /// Loop the trace instead of holding its last rate.
    #[serde(default)]
    pub repeat: bool,
    /// One-way latency per message (s).
    #[serde(default)]
    pub latency_s: f64,
    /// The parsed file, loaded once by `validate` or the first transfer; never serialised, so
    /// a written config holds only the parameters above.
    #[serde(skip)]
    trace: OnceLock<Trace>,
}

impl TraceLink {
    /// A trace link over `path` (not read until first use).
    pub fn new(path: impl Into<PathBuf>, repeat: bool, latency_s: f64) -> Self {
        TraceLink {
            path: path.into(),
            repeat,
            latency_s,
            trace: OnceLock::new(),
        }
    }

    /// The parsed trace, reading the file on first call.
    pub fn trace(&self) -> Result<&Trace> {
        if let Some(t) = self.trace.get() {
            return Ok(t);
        }
        let text = std::fs::read_to_string(&self.path).map_err(|source| HlmError::Io {
            path: self.path.clone(),
            source,
        })?;
        let parsed = Trace::parse(&text, &self.path)?;
        Ok(self.trace.get_or_init(|| parsed))
    }
}

/// A parsed rate trace.
#[derive(Clone, PartialEq)]
pub struct Trace {
    time_s: Vec<f64>,
    uplink_bps: Vec<f64>,
    downlink_bps: Option<Vec<f64>>,
}

impl fmt::Debug for Trace {
    // Traces can hold many thousands of rows; a debug print of the link should stay readable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trace")
            .field("rows", &self.time_s.len())
            .field("span_s", &(self.time_s.first(), self.time_s.last()))
            .field("downlink_column", &self.downlink_bps.is_some())
            .finish()
    }
}

const HEADER_UP: [&str; 2] = ["time_s", "rate_bps"];
const HEADER_BOTH: [&str; 3] = ["time_s", "rate_bps", "downlink_rate_bps"];

impl Trace {
    /// Parse CSV `text`; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Trace> {
        let err = |line: usize, msg: String| {
            HlmError::invalid("path", path.display(), format!("line {line}: {msg}"))
        };
        let mut rows = text
            .trim_start_matches('\u{feff}')
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        let Some((hline, header)) = rows.next() else {
            return Err(HlmError::invalid(
                "path",
                path.display(),
                "the trace file is empty",
            ));
        };
        let names: Vec<&str> = header.split(',').map(str::trim).collect();
        let columns: &[&str] = if names == HEADER_UP {
            &HEADER_UP
        } else if names == HEADER_BOTH {
            &HEADER_BOTH
        } else {
            return Err(err(
                hline,
                format!(
                    "header `{header}` must be `time_s,rate_bps` or \
                     `time_s,rate_bps,downlink_rate_bps`"
                ),
            ));
        };
        let mut t = Trace {
            time_s: Vec::new(),
            uplink_bps: Vec::new(),
            downlink_bps: (columns.len() == 3).then(Vec::new),
        };
        for (n, line) in rows {
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            if cells.len() != columns.len() {
                return Err(err(
                    n,
                    format!("{} columns, the header has {}", cells.len(), columns.len()),
                ));
            }
            let mut values = [0.0; 3];
            for (k, (cell, name)) in cells.iter().zip(columns).enumerate() {
                values[k] = match cell.parse::<f64>() {
                    Ok(v) if v.is_finite() => v,
                    _ => {
                        return Err(err(
                            n,
                            format!("`{cell}` is not a finite number (column {name})"),
                        ));
                    }
                };
                if k > 0 && values[k] <= 0.0 {
                    return Err(err(n, format!("{name} = {} must be > 0", values[k])));
                }
            }
            if let Some(&prev) = t.time_s.last()
                && values[0] <= prev
            {
                return Err(err(
                    n,
                    format!(
                        "time_s = {} does not increase (previous row {prev})",
                        values[0]
                    ),
                ));
            }
            t.time_s.push(values[0]);
            t.uplink_bps.push(values[1]);
            if let Some(d) = t.downlink_bps.as_mut() {
                d.push(values[2]);
            }
        }
        if t.time_s.len() < 2 {
            return Err(HlmError::invalid(
                "path",
                path.display(),
                format!("{} data rows; a trace needs at least 2", t.time_s.len()),
            ));
        }
        Ok(t)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.time_s.len()
    }

    /// Whether the trace has no samples (never true for a parsed trace).
    pub fn is_empty(&self) -> bool {
        self.time_s.is_empty()
    }

    /// Rate (bit/s) in `direction` at time `now_s`.
    pub fn rate_at(&self, now_s: f64, direction: Direction, repeat: bool) -> f64 {
        let rates = match (direction, &self.downlink_bps) {
            (Direction::Downlink, Some(d)) => d,
            _ => &self.uplink_bps,
        };
        let (first, last) = (self.time_s[0], self.time_s[self.time_s.len() - 1]);
        let t = if repeat {
            first + (now_s - first).rem_euclid(last - first)
        } else {
            now_s
        };
        // First sample strictly after t; the segment is [i−1, i].
        let i = self.time_s.partition_point(|&x| x <= t);
        if i == 0 {
            return rates[0];
        }
        if i == self.time_s.len() {
            return rates[i - 1];
        }
        let (t0, t1) = (self.time_s[i - 1], self.time_s[i]);
        let w = (t - t0) / (t1 - t0);
        rates[i - 1] + w * (rates[i] - rates[i - 1])
    }
}

#[typetag::serde(name = "trace")]
impl LinkModel for TraceLink {
    fn transfer(
        &mut self,
        bits: u64,
        direction: Direction,
        now_s: f64,
        _rng: &mut dyn RngCore,
    ) -> Result<Transfer> {
        let rate = self.trace()?.rate_at(now_s, direction, self.repeat);
        Ok(Transfer::at_rate(bits, rate, self.latency_s))
    }

    fn validate(&self) -> Result<()> {
        non_negative("latency_s", self.latency_s)?;
        self.trace().map(|_| ())
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

    fn parse(s: &str) -> Result<Trace> {
        Trace::parse(s, Path::new("t.csv"))
    }

    /// A temporary file, removed when dropped.
    struct TempFile(PathBuf);
    impl TempFile {
        fn new(name: &str, text: &str) -> Self {
            let p =
                std::env::temp_dir().join(format!("hlm-energy-{}-{name}.csv", std::process::id()));
            std::fs::write(&p, text).unwrap();
            TempFile(p)
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    const TRACE: &str = "time_s,rate_bps\n0,10e6\n1,20e6\n3,40e6\n";

    #[test]
    fn interpolation() {
        let t = parse(TRACE).unwrap();
        let up = Direction::Uplink;
        assert_eq!(t.rate_at(0.0, up, false), 10e6);
        // Halfway between (0, 10) and (1, 20): 15 Mbit/s.
        assert_eq!(t.rate_at(0.5, up, false), 15e6);
        // (1, 20) → (3, 40): at t = 2.5, 20 + 0.75·20 = 35 Mbit/s.
        assert_eq!(t.rate_at(2.5, up, false), 35e6);
        // Exactly on a sample, and past the end (holds the last rate), before the start.
        assert_eq!(t.rate_at(1.0, up, false), 20e6);
        assert_eq!(t.rate_at(10.0, up, false), 40e6);
        assert_eq!(t.rate_at(-1.0, up, false), 10e6);
        // Without a downlink column the downlink uses rate_bps.
        assert_eq!(t.rate_at(0.5, Direction::Downlink, false), 15e6);
    }

    #[test]
    fn repeat_loops_with_the_trace_span() {
        let t = parse(TRACE).unwrap();
        let up = Direction::Uplink;
        // Period 3 s: t = 3.5 → 0.5 (15 Mbit/s); t = 8.5 → 2.5 (35 Mbit/s).
        assert_eq!(t.rate_at(3.5, up, true), 15e6);
        assert!((t.rate_at(8.5, up, true) - 35e6).abs() < 1e-6);
        // At a whole period the trace starts over at its first rate.
        assert_eq!(t.rate_at(3.0, up, true), 10e6);
    }

    #[test]
    fn downlink_column_and_format_tolerance() {
        // BOM, CRLF, spaces, comments and blank lines are accepted.
        let t = parse(
            "\u{feff}# measured 2025-01-01\r\n time_s , rate_bps , downlink_rate_bps\r\n\r\n0, 1e6, 5e6\r\n2, 3e6, 7e6\r\n",
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.rate_at(1.0, Direction::Uplink, false), 2e6);
        assert_eq!(t.rate_at(1.0, Direction::Downlink, false), 6e6);
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases = [
            (
                "time_s,rate_bps\n0,1e6\n1,abc\n",
                "line 3: `abc` is not a finite number (column rate_bps)",
            ),
            (
                "time_s,rate_bps\n0,1e6\n0,2e6\n",
                "line 3: time_s = 0 does not increase",
            ),
            (
                "time_s,rate_bps\n0,1e6\n",
                "1 data rows; a trace needs at least 2",
            ),
            (
                "time_s,rate_bps\n0,1e6\n1,0\n",
                "line 3: rate_bps = 0 must be > 0",
            ),
            (
                "time_s,rate_bps,downlink_rate_bps\n0,1,1\n1,1,-2\n",
                "line 3: downlink_rate_bps = -2 must be > 0",
            ),
            (
                "time_s,rate_bps\n0,1e6\n\n# x\n1,1e6,3\n",
                "line 5: 3 columns, the header has 2",
            ),
            ("time,rate\n0,1\n", "line 1: header `time,rate`"),
            (
                "time_s,rate_bps\n0,1e6\n1,inf\n",
                "line 3: `inf` is not a finite number",
            ),
            ("\n\n", "empty"),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.contains("`path` = t.csv") && e.contains(want),
                "{want}: {e}"
            );
        }
    }

    #[test]
    fn link_loads_lazily_and_serialises_parameters_only() {
        let f = TempFile::new("lazy", TRACE);
        let mut l = TraceLink::new(&f.0, true, 0.01);
        let mut r = ChaCha8Rng::seed_from_u64(0);
        // 15 Mbit/s at t = 3.5 (looped): 1.5e6 bits take 0.1 s.
        let t = l
            .transfer(1_500_000, Direction::Uplink, 3.5, &mut r)
            .unwrap();
        assert!((t.airtime_s - 0.1).abs() < 1e-12);
        assert_eq!((t.latency_s, t.outage), (0.01, false));
        let s = toml::to_string(&(Box::new(l.clone()) as Box<dyn LinkModel>)).unwrap();
        assert!(
            s.contains("type = \"trace\"") && s.contains("repeat = true"),
            "{s}"
        );
        assert!(
            !s.contains("trace ="),
            "the loaded trace is not written: {s}"
        );
        // The loaded copy survives the file disappearing; a fresh link does not.
        drop(f);
        l.transfer(8, Direction::Uplink, 0.0, &mut r).unwrap();
        let back: Box<dyn LinkModel> = toml::from_str(&s).unwrap();
        let e = back.validate().unwrap_err().to_string();
        assert!(e.contains("hlm-energy-"), "{e}");
    }

    #[test]
    fn validate_reports_file_errors() {
        let f = TempFile::new("bad", "time_s,rate_bps\n0,1e6\n1,x\n");
        let e = TraceLink::new(&f.0, false, 0.0)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&f.0.display().to_string()) && e.contains("line 3"),
            "{e}"
        );
        let e = TraceLink::new("/nonexistent/trace.csv", false, 0.0)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/trace.csv"), "{e}");
        let e = TraceLink::new(&f.0, false, -1.0)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("`latency_s`"), "{e}");
    }
}

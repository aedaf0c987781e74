//! One vocabulary for checking parameters. A component checks its own keys by their names in
//! its own table (`lambda`, `k`), and whoever nests the component adds the path to it
//! ([`HlmError::within`]: `upload.importance.threshold` + `lambda`), so that an error always
//! names the full dotted key a user would write with `--set`.

use crate::{HlmError, Result};

/// Reject NaN and ±∞ (a TOML file can spell them: `nan`, `inf`).
pub fn finite(key: &str, v: f64) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(HlmError::invalid(key, v, "must be a finite number"))
    }
}

/// A finite number > 0 (rates, bandwidths, powers that divide or feed a logarithm).
pub fn positive(key: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(HlmError::invalid(key, v, "must be a finite number > 0"))
    }
}

/// A finite number ≥ 0 (latencies, powers that may be switched off).
pub fn non_negative(key: &str, v: f64) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(HlmError::invalid(key, v, "must be a finite number >= 0"))
    }
}

/// A probability: a number in [0, 1].
pub fn probability(key: &str, v: f64) -> Result<()> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(HlmError::invalid(key, v, "must be a probability in [0, 1]"))
    }
}

/// A number in `[low, high]` (a NaN is in no range).
pub fn in_range(key: &str, v: f64, low: f64, high: f64) -> Result<()> {
    if (low..=high).contains(&v) {
        Ok(())
    } else {
        Err(HlmError::invalid(
            key,
            v,
            format!("must be between {low} and {high}"),
        ))
    }
}

impl HlmError {
    /// This error as seen from the table that holds the component at `path`: a bad
    /// parameter's key gains the path (`lambda` in `upload.importance.threshold` becomes
    /// `upload.importance.threshold.lambda`); other errors are unchanged.
    pub fn within(self, path: &str) -> Self {
        match self {
            HlmError::InvalidParameter { key, value, reason } => HlmError::InvalidParameter {
                key: format!("{path}.{key}"),
                value,
                reason,
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_check_names_its_key_and_rule() {
        assert!(finite("x", 1.0).is_ok() && finite("x", f64::NAN).is_err());
        assert!(positive("x", 1e-9).is_ok() && positive("x", 0.0).is_err());
        assert!(non_negative("x", 0.0).is_ok() && non_negative("x", -1e-9).is_err());
        assert!(probability("x", 1.0).is_ok() && probability("x", 1.5).is_err());
        assert!(probability("x", f64::NAN).is_err());
        assert!(
            in_range("x", 2.0, 1.0, 2.0).is_ok() && in_range("x", f64::INFINITY, 1.0, 2.0).is_err()
        );
        let e = positive("bandwidth_hz", -3.0).unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid parameter `bandwidth_hz` = -3: must be a finite number > 0"
        );
    }

    #[test]
    fn nesting_prefixes_the_key_path() {
        let e = probability("lambda", 2.0)
            .unwrap_err()
            .within("threshold")
            .within("upload.importance");
        assert!(
            e.to_string()
                .starts_with("invalid parameter `upload.importance.threshold.lambda` = 2"),
            "{e}"
        );
        let other = HlmError::Model("x".into()).within("upload");
        assert_eq!(other.to_string(), "model error: x");
    }
}

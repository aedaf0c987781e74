//! Decibel conversions (the parameter checks are hlm-core's [`hlm_core::validate`]).

/// A power ratio in dB to a linear ratio: 10^(dB/10).
pub fn db_to_linear(db: f64) -> f64 {
    10f64.powf(db / 10.0)
}

/// A linear power ratio to dB: 10·log10(x).
pub fn linear_to_db(x: f64) -> f64 {
    10.0 * x.log10()
}

/// A power in dBm to watts: 1 mW · 10^(dBm/10). Also converts a PSD in dBm/Hz to W/Hz.
pub fn dbm_to_watts(dbm: f64) -> f64 {
    1e-3 * db_to_linear(dbm)
}

pub(crate) use hlm_core::validate::{finite, non_negative, positive};

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(f64::MIN_POSITIVE)
    }

    #[test]
    fn decibels() {
        assert!(close(db_to_linear(0.0), 1.0, 1e-15));
        assert!(close(db_to_linear(30.0), 1000.0, 1e-12));
        assert!(close(db_to_linear(-100.0), 1e-10, 1e-12));
        // 3 dB is a factor of 1.9953 (not exactly 2).
        assert!(close(db_to_linear(3.0), 1.995_262_315, 1e-9));
        assert!(close(linear_to_db(1000.0), 30.0, 1e-12));
        assert!(close(linear_to_db(db_to_linear(-37.5)), -37.5, 1e-12));
    }

    #[test]
    fn dbm() {
        // 0 dBm = 1 mW, 30 dBm = 1 W, 23 dBm = 0.1995 W (a 3GPP power-class-3 phone).
        assert!(close(dbm_to_watts(0.0), 1e-3, 1e-12));
        assert!(close(dbm_to_watts(30.0), 1.0, 1e-12));
        assert!(close(dbm_to_watts(23.0), 0.199_526_231, 1e-8));
        // Thermal noise at 290 K: −174 dBm/Hz = 10^(−20.4) W/Hz = 3.981e−21 W/Hz.
        assert!(close(dbm_to_watts(-174.0), 3.981_071_7e-21, 1e-7));
    }

    #[test]
    fn checks_name_the_key() {
        assert!(positive("link.x", 1.0).is_ok());
        let e = positive("link.x", 0.0).unwrap_err().to_string();
        assert!(e.contains("`link.x`") && e.contains("> 0"), "{e}");
        assert!(positive("k", f64::NAN).is_err());
        assert!(non_negative("k", 0.0).is_ok());
        assert!(non_negative("k", -1e-9).is_err());
        assert!(non_negative("k", f64::INFINITY).is_err());
        assert!(finite("k", -5.0).is_ok());
        assert!(finite("k", f64::NEG_INFINITY).is_err());
    }
}

//! Human units in the config file: durations (`"30s"`, `"250ms"`, `"1m 30s"`) and byte
//! sizes (`"1MiB"`, `"64KB"`, `65536`).
//!
//! Plain functions ([`parse_size`], [`parse_duration`], [`format_size`]) plus serde helpers
//! for `#[serde(with = "...")]`. This module depends on no other part of wsgate.
//!
//! Durations must carry a unit: a bare `30` is ambiguous (seconds? milliseconds?), so it
//! is rejected with a hint instead of guessed. Sizes may be bare integers (bytes), as
//! DESIGN §3 allows.

use std::fmt;
use std::time::Duration;

/// Why a size or duration string was rejected. The text is shown to operators.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UnitError(String);

/// Size suffixes, matched case-insensitively. Bare `k`/`m`/`g` are left out on purpose:
/// whether they mean 1000 or 1024 differs between tools.
const SIZE_UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("kb", 1_000),
    ("kib", 1 << 10),
    ("mb", 1_000_000),
    ("mib", 1 << 20),
    ("gb", 1_000_000_000),
    ("gib", 1 << 30),
    ("tb", 1_000_000_000_000),
    ("tib", 1 << 40),
];

/// Parses a byte size: an integer or decimal number followed by an optional unit
/// (`B`, `KB`, `KiB`, `MB`, `MiB`, `GB`, `GiB`, `TB`, `TiB`; any case, spaces allowed
/// before the unit). Binary units are powers of 1024, decimal ones powers of 1000.
/// `"1.5MiB"` is accepted when it comes to a whole number of bytes.
pub(crate) fn parse_size(text: &str) -> Result<u64, UnitError> {
    let s = text.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let unit = unit.trim_start().to_ascii_lowercase();
    if number.is_empty() {
        return Err(UnitError(format!(
            "invalid size {text:?}: expected a number with an optional unit, like \"64KiB\" or \"1MiB\""
        )));
    }
    let Some(&(_, multiplier)) = SIZE_UNITS.iter().find(|(name, _)| *name == unit) else {
        let hint = match unit.as_str() {
            "k" | "m" | "g" | "t" => format!(
                " (write \"{number}{u}iB\" for powers of 1024 or \"{number}{u}B\" for powers of 1000)",
                u = unit.to_ascii_uppercase()
            ),
            _ => String::new(),
        };
        return Err(UnitError(format!(
            "invalid size {text:?}: unknown unit {:?}{hint}; use B, KB, KiB, MB, MiB, GB, GiB, TB or TiB",
            unit
        )));
    };
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    let bad_number = || UnitError(format!("invalid size {text:?}: {number:?} is not a number"));
    if frac_part.contains('.') || (int_part.is_empty() && frac_part.is_empty()) {
        return Err(bad_number());
    }
    let too_big = || UnitError(format!("invalid size {text:?}: too large"));
    // Exact decimal arithmetic: 1.5MiB is 1572864 bytes, no float rounding.
    let int: u128 = if int_part.is_empty() { 0 } else { int_part.parse().map_err(|_| too_big())? };
    let mut total = int.checked_mul(u128::from(multiplier)).ok_or_else(too_big)?;
    if !frac_part.is_empty() {
        if frac_part.len() > 18 {
            return Err(bad_number());
        }
        let frac: u128 = frac_part.parse().map_err(|_| bad_number())?;
        let scale = 10u128.pow(frac_part.len() as u32);
        let scaled = frac * u128::from(multiplier);
        if scaled % scale != 0 {
            return Err(UnitError(format!("invalid size {text:?}: not a whole number of bytes")));
        }
        total = total.checked_add(scaled / scale).ok_or_else(too_big)?;
    }
    u64::try_from(total).map_err(|_| too_big())
}

/// Formats a byte count with the largest binary unit that divides it exactly
/// (`1048576` → `"1MiB"`), or as plain bytes (`"1000B"`).
pub(crate) fn format_size(bytes: u64) -> String {
    for (unit, mult) in [("TiB", 1u64 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes != 0 && bytes % mult == 0 {
            return format!("{}{unit}", bytes / mult);
        }
    }
    format!("{bytes}B")
}

/// Parses a duration with units, as `humantime` does: `"30s"`, `"250ms"`, `"1m 30s"`,
/// `"2h"`. A bare number is rejected with a hint, because its unit would be a guess.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let s = text.trim();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(bare_number_hint(s));
    }
    humantime::parse_duration(s)
        .map_err(|e| UnitError(format!("invalid duration {text:?}: {e}; write e.g. \"30s\", \"250ms\" or \"1m 30s\"")))
}

/// Formats a duration the way [`parse_duration`] reads it back (`"1m 30s"`, `"250ms"`).
pub(crate) fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    humantime::format_duration(d).to_string()
}

fn bare_number_hint(number: impl fmt::Display) -> UnitError {
    UnitError(format!("a duration needs a unit: write \"{number}s\" (or \"{number}ms\")"))
}

/// Serde helpers for a `usize` byte size: reads an integer or a size string, writes the
/// shortest exact string (`"1MiB"`).
pub(crate) mod size {
    use super::{format_size, parse_size};
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    /// Serializes a size as a string such as `"16KiB"`.
    pub(crate) fn serialize<S: Serializer>(value: &usize, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_size(*value as u64))
    }

    /// Deserializes a size from an integer (bytes) or a string with a unit.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        d.deserialize_any(SizeVisitor)
    }

    struct SizeVisitor;

    impl Visitor<'_> for SizeVisitor {
        type Value = usize;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size: an integer number of bytes or a string like \"64KiB\"")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<usize, E> {
            usize::try_from(v).map_err(|_| E::custom(format!("size {v} is too large")))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<usize, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("size {v} is negative"))).and_then(|v| self.visit_u64(v))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<usize, E> {
            Err(E::custom(format!("size {v} is not a whole number of bytes; use a string such as \"1.5MiB\"")))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
            let n = parse_size(v).map_err(E::custom)?;
            self.visit_u64(n)
        }
    }
}

/// Serde helpers for a [`Duration`] written as a string with units.
pub(crate) mod duration {
    use super::{bare_number_hint, format_duration, parse_duration};
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;
    use std::time::Duration;

    /// Serializes a duration as a string such as `"30s"`.
    pub(crate) fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*value))
    }

    /// Deserializes a duration from a string with units; numbers are rejected with a hint.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }

    pub(super) struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration string like \"30s\" or \"250ms\"")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Err(E::custom(bare_number_hint(v)))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            Err(E::custom(bare_number_hint(v)))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            Err(E::custom(bare_number_hint(v)))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }
    }
}

/// Serde helpers for an `Option<Duration>` (absent = `None`).
pub(crate) mod opt_duration {
    use super::duration::DurationVisitor;
    use super::format_duration;
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;
    use std::time::Duration;

    /// Serializes `Some(d)` as a duration string and `None` as none.
    pub(crate) fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_some(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    /// Deserializes an optional duration string.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        d.deserialize_option(OptVisitor)
    }

    struct OptVisitor;

    impl<'de> Visitor<'de> for OptVisitor {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration string like \"30s\" or \"250ms\"")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(DurationVisitor).map(Some)
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's error type, in a test closure
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("16KiB"), Ok(16 * 1024));
        assert_eq!(parse_size("16kib"), Ok(16 * 1024));
        assert_eq!(parse_size("64KB"), Ok(64_000));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1 MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1.5MiB"), Ok(1_572_864));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert_eq!(parse_size(".5KiB"), Ok(512));
    }

    #[test]
    fn bad_sizes() {
        for bad in ["", "MiB", "1.2.3KiB", "1.5B", "12 parsecs", "-1KiB", "1e3", "99999999999999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        let e = parse_size("16k").unwrap_err().to_string();
        assert!(e.contains("16KiB") && e.contains("16KB"), "{e}");
    }

    #[test]
    fn size_round_trip() {
        for n in [0u64, 1, 512, 1000, 1024, 16 * 1024, 1 << 20, 1_572_864, 3 << 30] {
            assert_eq!(parse_size(&format_size(n)), Ok(n), "{n}");
        }
        assert_eq!(format_size(1 << 20), "1MiB");
        assert_eq!(format_size(1000), "1000B");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations() {
        let e = parse_duration("30").unwrap_err().to_string();
        assert!(e.contains("write \"30s\""), "{e}");
        assert!(parse_duration("fast").unwrap_err().to_string().contains("\"fast\""));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn duration_round_trip() {
        for d in [Duration::ZERO, Duration::from_millis(250), Duration::from_secs(90), Duration::from_secs(7200)] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }

    #[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
    struct Units {
        #[serde(with = "size")]
        size: usize,
        #[serde(with = "duration")]
        wait: Duration,
        #[serde(with = "opt_duration", default, skip_serializing_if = "Option::is_none")]
        maybe: Option<Duration>,
    }

    #[test]
    fn serde_helpers() {
        use figment::providers::{Format, Toml};
        let get = |text: &str| figment::Figment::from(Toml::string(text)).extract::<Units>();
        let u = get("size = 65536\nwait = \"1m 30s\"").unwrap();
        assert_eq!(u, Units { size: 65536, wait: Duration::from_secs(90), maybe: None });
        let u = get("size = \"1MiB\"\nwait = \"250ms\"\nmaybe = \"2s\"").unwrap();
        assert_eq!(u.size, 1 << 20);
        assert_eq!(u.maybe, Some(Duration::from_secs(2)));
        let e = get("size = 1\nwait = 30").unwrap_err().to_string();
        assert!(e.contains("write \"30s\""), "{e}");
        let e = get("size = -1\nwait = \"1s\"").unwrap_err().to_string();
        assert!(e.contains("negative"), "{e}");
        let e = get("size = 1\nwait = \"1s\"\nmaybe = 5").unwrap_err().to_string();
        assert!(e.contains("write \"5s\""), "{e}");
    }
}

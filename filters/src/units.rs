//! Human-readable units in YAML: durations (`250ms`, `30s`, `8h`) and sizes (`10MB`, `64KiB`).
//!
//! Durations use `humantime`; sizes are parsed here because the crates that do it accept
//! ambiguous forms (`10m`, fractions) that we would rather reject.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A duration written as a string (`250ms`, `30s`, `1h 30m`). Zero is allowed only where
/// the consuming field says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// The wrapped duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string such as \"250ms\", \"30s\" or \"8h\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<HumanDuration, E> {
                humantime::parse_duration(s.trim())
                    .map(HumanDuration)
                    .map_err(|e| E::custom(format!("invalid duration {s:?}: {e}")))
            }
        }
        deserializer.deserialize_str(V)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

/// A byte size written as a string: an integer with an optional unit, `B`, `KB`/`MB`/`GB`
/// (powers of 1000) or `KiB`/`MiB`/`GiB` (powers of 1024). Bare integers are bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

const UNITS: [(&str, u64); 7] = [
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("B", 1),
];

impl ByteSize {
    /// Number of bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Parses `10MB`, `64KiB`, `512`, `512B` (unit case-sensitive, optional space before it).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(digits_end);
        if num.is_empty() {
            return Err(format!(
                "invalid size {s:?}: expected a number such as \"10MB\""
            ));
        }
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid size {s:?}: number too large"))?;
        let unit = unit.trim_start();
        let factor = if unit.is_empty() {
            1
        } else {
            UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, f)| *f)
                .ok_or_else(|| {
                    format!("invalid size {s:?}: unknown unit {unit:?} (use B, KB, MB, GB, KiB, MiB or GiB)")
                })?
        };
        n.checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| format!("invalid size {s:?}: too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 != 0 {
            for (name, factor) in UNITS {
                if self.0.is_multiple_of(factor) {
                    return write!(f, "{}{}", self.0 / factor, name);
                }
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"10MB\" or \"64KiB\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ByteSize, E> {
                ByteSize::parse(s).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(n))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_decimal_and_binary_units() {
        assert_eq!(ByteSize::parse("10MB"), Ok(ByteSize(10_000_000)));
        assert_eq!(ByteSize::parse("64KiB"), Ok(ByteSize(65_536)));
        assert_eq!(ByteSize::parse("512"), Ok(ByteSize(512)));
        assert_eq!(ByteSize::parse("1 GiB"), Ok(ByteSize(1 << 30)));
        for bad in [
            "",
            "MB",
            "10mb",
            "1.5MB",
            "-1",
            "10XB",
            "99999999999999999999GB",
        ] {
            assert!(ByteSize::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn sizes_display_round_trip() {
        for s in ["10MB", "64KiB", "3B", "1GiB"] {
            let parsed = ByteSize::parse(s).expect("valid");
            assert_eq!(ByteSize::parse(&parsed.to_string()), Ok(parsed));
        }
    }

    #[test]
    fn durations_parse_and_reject_garbage() {
        let d: HumanDuration = serde_json::from_str("\"250ms\"").expect("valid");
        assert_eq!(d.get(), Duration::from_millis(250));
        assert!(serde_json::from_str::<HumanDuration>("\"5 parsecs\"").is_err());
        assert!(serde_json::from_str::<HumanDuration>("30").is_err());
    }
}

/// A percentage written as `50%` (or a bare number `50`), 0–100, kept as a fraction.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Percent(f64);

impl Percent {
    /// `p` percent; `None` outside 0–100 or not finite.
    pub fn new(p: f64) -> Option<Self> {
        (p.is_finite() && (0.0..=100.0).contains(&p)).then_some(Self(p / 100.0))
    }

    /// The share as a fraction in `0.0..=1.0`.
    pub fn fraction(self) -> f64 {
        self.0
    }

    /// Parses `50%`, `12.5%` or `50`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let n = t.strip_suffix('%').unwrap_or(t).trim();
        n.parse::<f64>()
            .ok()
            .and_then(Self::new)
            .ok_or_else(|| format!("invalid percentage {s:?}: expected 0% to 100%"))
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0 * 100.0)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Percent;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a percentage such as \"50%\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Percent, E> {
                Percent::parse(s).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Percent, E> {
                Percent::parse(&n.to_string()).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Percent, E> {
                Percent::new(n).ok_or_else(|| E::custom(format!("invalid percentage {n}")))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod percent_tests {
    use super::*;

    #[test]
    fn percentages_parse_in_range_only() {
        assert_eq!(Percent::parse("50%").map(Percent::fraction), Ok(0.5));
        assert_eq!(Percent::parse("12.5%").map(Percent::fraction), Ok(0.125));
        assert_eq!(Percent::parse("100").map(Percent::fraction), Ok(1.0));
        for bad in ["101%", "-1%", "abc", "NaN%", ""] {
            assert!(Percent::parse(bad).is_err(), "{bad}");
        }
        let p: Percent = serde_json::from_str("20").expect("bare number");
        assert_eq!(p.fraction(), 0.2);
    }
}

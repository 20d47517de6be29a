//! Value types of the configuration: each parses from a string and, when it
//! cannot, says what it got and what it expected. serde reports the field
//! path around the message.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

macro_rules! from_str_deserialize {
    ($t:ty) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(de::Error::custom)
            }
        }
    };
}

/// A duration written like "90s", "15m", "2h" or "30d".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurationSpec {
    pub seconds: u64,
}

impl FromStr for DurationSpec {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a duration, expected like \"15m\" (units s, m, h, d)");
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (n, unit) = t.split_at(split);
        let n: u64 = n.parse().map_err(|_| bad())?;
        let scale = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            _ => return Err(bad()),
        };
        Ok(DurationSpec { seconds: n.checked_mul(scale).ok_or_else(bad)? })
    }
}
from_str_deserialize!(DurationSpec);

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.seconds;
        match () {
            _ if s.is_multiple_of(86_400) && s > 0 => write!(f, "{}d", s / 86_400),
            _ if s.is_multiple_of(3_600) && s > 0 => write!(f, "{}h", s / 3_600),
            _ if s.is_multiple_of(60) && s > 0 => write!(f, "{}m", s / 60),
            _ => write!(f, "{s}s"),
        }
    }
}

/// An ISO 3166-1 alpha-2 country code, e.g. "US", "GB", "IN".
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Country(pub String);

impl FromStr for Country {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text.len() == 2 && text.bytes().all(|b| b.is_ascii_uppercase()) {
            if text == "UK" {
                return Err("\"UK\" is not an ISO 3166-1 code: the United Kingdom is \"GB\"".into());
            }
            Ok(Country(text.to_owned()))
        } else {
            Err(format!("{text:?} is not an ISO 3166-1 alpha-2 country code, expected like \"US\""))
        }
    }
}
from_str_deserialize!(Country);

/// A jurisdiction: an ISO 3166-1 country ("GB") or an ISO 3166-2
/// subdivision ("US-NY", "AU-NSW", "IN-KA").
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Jurisdiction(pub String);

impl Jurisdiction {
    pub fn country(&self) -> &str {
        &self.0[..2]
    }
}

impl FromStr for Jurisdiction {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not an ISO 3166-1 or 3166-2 code, expected like \"US-NY\" or \"GB\"");
        let (country, sub) = match text.split_once('-') {
            Some((c, s)) => (c, Some(s)),
            None => (text, None),
        };
        Country::from_str(country).map_err(|_| bad())?;
        if let Some(sub) = sub
            && !(1..=3).contains(&sub.len())
        {
            return Err(bad());
        }
        if let Some(sub) = sub
            && !sub.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            return Err(bad());
        }
        Ok(Jurisdiction(text.to_owned()))
    }
}
from_str_deserialize!(Jurisdiction);

/// An IANA time zone name, e.g. "America/New_York".
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct TimeZoneName(pub String);

impl TimeZoneName {
    pub fn time_zone(&self) -> jiff::tz::TimeZone {
        jiff::tz::TimeZone::get(&self.0).unwrap_or(jiff::tz::TimeZone::UTC)
    }
}

impl FromStr for TimeZoneName {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        jiff::tz::TimeZone::get(text)
            .map(|_| TimeZoneName(text.to_owned()))
            .map_err(|_| format!("{text:?} is not an IANA time zone, expected like \"Europe/London\""))
    }
}
from_str_deserialize!(TimeZoneName);

/// A DICOM AE title: 1 to 16 characters of the default repertoire, no
/// backslash, no control characters (PS3.5 Table 6.2-1, AE).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct AeTitle(pub String);

impl FromStr for AeTitle {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() || trimmed.len() > 16 {
            return Err(format!("{text:?} is not an AE title: 1 to 16 characters"));
        }
        if !trimmed.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\\') {
            return Err(format!("{text:?} is not an AE title: printable ASCII without '\\\\'"));
        }
        Ok(AeTitle(trimmed.to_owned()))
    }
}
from_str_deserialize!(AeTitle);

/// A calendar date "YYYY-MM-DD".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date(pub jiff::civil::Date);

impl FromStr for Date {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        text.parse::<jiff::civil::Date>()
            .map(Date)
            .map_err(|_| format!("{text:?} is not a date, expected like \"2027-12-31\""))
    }
}
from_str_deserialize!(Date);

/// A time of day "HH:MM", local to some time zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay {
    pub minute_of_day: u32,
}

impl FromStr for TimeOfDay {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a time of day, expected like \"08:30\" (24:00 for midnight at the end)");
        let (h, m) = text.split_once(':').ok_or_else(bad)?;
        let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if h > 24 || m > 59 || (h == 24 && m != 0) || text.len() != 5 {
            return Err(bad());
        }
        Ok(TimeOfDay { minute_of_day: h * 60 + m })
    }
}
from_str_deserialize!(TimeOfDay);

/// ISO 4217 minor-unit exponents of the currencies Meridian bills in.
pub fn currency_exponent(code: &str) -> Option<u32> {
    match code {
        "USD" | "EUR" | "GBP" | "INR" | "AUD" | "CAD" | "CHF" | "SGD" | "AED" | "BRL" | "MXN" | "ZAR" | "NZD"
        | "SEK" | "NOK" | "DKK" | "PHP" | "PLN" => Some(2),
        "JPY" | "KRW" | "CLP" | "ISK" => Some(0),
        "KWD" | "BHD" | "OMR" | "JOD" => Some(3),
        _ => None,
    }
}

/// A decimal amount in major units; converted to minor units once the
/// currency is known (see [`Amount::minor_units`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Decimal(pub String);

impl FromStr for Decimal {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not an amount, expected a decimal string like \"45.00\"");
        let digits = text.strip_prefix('-').unwrap_or(text);
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        if digits.contains('.') && frac.is_empty() {
            return Err(bad());
        }
        Ok(Decimal(text.to_owned()))
    }
}
from_str_deserialize!(Decimal);

impl Decimal {
    /// Integer minor units at `exponent` decimal places; an error when the
    /// amount has more places than the currency.
    pub fn minor_units(&self, exponent: u32) -> Result<i64, String> {
        let negative = self.0.starts_with('-');
        let digits = self.0.trim_start_matches('-');
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let frac = frac.trim_end_matches('0');
        if frac.len() as u32 > exponent {
            return Err(format!("{:?} has more decimal places than the currency's {exponent}", self.0));
        }
        let mut units: i64 = int.parse().map_err(|_| format!("{:?} is too large", self.0))?;
        units = units.checked_mul(10i64.pow(exponent)).ok_or_else(|| format!("{:?} is too large", self.0))?;
        let mut f = frac.to_owned();
        while (f.len() as u32) < exponent {
            f.push('0');
        }
        if !f.is_empty() {
            units += f.parse::<i64>().map_err(|_| format!("{:?} is too large", self.0))?;
        }
        Ok(if negative { -units } else { units })
    }
}

/// A share, written "25%" or "12.5%": kept in millionths of the whole
/// (25% = 250,000), so a percentage needs no float.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percent {
    pub per_million: u32,
}

impl FromStr for Percent {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a percentage, expected like \"25%\" or \"12.5%\"");
        let number = text.strip_suffix('%').ok_or_else(bad)?;
        let decimal: Decimal = number.parse().map_err(|_| bad())?;
        if decimal.0.starts_with('-') {
            return Err(bad());
        }
        // Four decimal places of a percent are millionths of the whole.
        let units = decimal.minor_units(4).map_err(|_| format!("{text:?} has more than four decimal places"))?;
        u32::try_from(units).map(|per_million| Percent { per_million }).map_err(|_| bad())
    }
}
from_str_deserialize!(Percent);

/// An SLA credit: a share of the breached read's price, or a fixed amount.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Credit {
    Share(Percent),
    Fixed(Decimal),
}

impl FromStr for Credit {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text.ends_with('%') {
            return text.parse().map(Credit::Share);
        }
        text.parse()
            .map(Credit::Fixed)
            .map_err(|_| format!("{text:?} is neither a percentage (\"25%\") nor an amount (\"10.00\")"))
    }
}
from_str_deserialize!(Credit);

/// How a line's amount is rounded to the currency's minor unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// Half away from zero (commercial rounding).
    #[default]
    HalfUp,
    /// Half to even (banker's rounding).
    HalfEven,
    /// Toward zero.
    Down,
}

/// A work RVU, a decimal like "0.85", kept in thousandths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rvu {
    pub milli: u32,
}

impl<'de> Deserialize<'de> for Rvu {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let decimal: Decimal = text.parse().map_err(de::Error::custom)?;
        let milli = decimal.minor_units(3).map_err(de::Error::custom)?;
        u32::try_from(milli)
            .map(|milli| Rvu { milli })
            .map_err(|_| de::Error::custom(format!("{text:?} is not a positive RVU")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_say_what_is_expected() {
        assert_eq!("15m".parse::<DurationSpec>().unwrap().seconds, 900);
        assert_eq!("30d".parse::<DurationSpec>().unwrap().to_string(), "30d");
        assert_eq!(
            "15 minutes".parse::<DurationSpec>().unwrap_err(),
            "\"15 minutes\" is not a duration, expected like \"15m\" (units s, m, h, d)"
        );
        assert!("m".parse::<DurationSpec>().is_err());
        assert!("5w".parse::<DurationSpec>().is_err());
    }

    #[test]
    fn a_region_log_is_embedded_unless_configured() {
        let r: crate::Region = toml::from_str("name = \"x\"\ncountry = \"US\"\ntime_zone = \"UTC\"").unwrap();
        assert_eq!(r.log, crate::LogConfig::Embedded { partitions: 8 });
        let r: crate::Region = toml::from_str(
            "name = \"x\"\ncountry = \"US\"\ntime_zone = \"UTC\"\n[log]\nkind = \"kafka\"\nbootstrap_servers = \"k:9092\"\nretention = \"30d\"",
        )
        .unwrap();
        assert!(
            matches!(r.log, crate::LogConfig::Kafka { partitions: 8, replication_factor: 3, retention: Some(d), .. } if d.seconds == 2_592_000)
        );
        let bad = toml::from_str::<crate::Region>(
            "name = \"x\"\ncountry = \"US\"\ntime_zone = \"UTC\"\n[log]\nkind = \"kafka\"\nbootstrap = \"k\"",
        );
        assert!(bad.is_err());
    }

    #[test]
    fn codes_and_names_are_checked() {
        assert!("US-NY".parse::<Jurisdiction>().is_ok());
        assert!("AU-NSW".parse::<Jurisdiction>().is_ok());
        assert!("GB".parse::<Jurisdiction>().is_ok());
        assert!("us-ny".parse::<Jurisdiction>().is_err());
        assert!("US-NEWY".parse::<Jurisdiction>().is_err());
        assert!("UK".parse::<Country>().unwrap_err().contains("\"GB\""));
        assert!("Asia/Kolkata".parse::<TimeZoneName>().is_ok());
        assert!("Mars/Olympus".parse::<TimeZoneName>().is_err());
        assert!("ACME_CT1".parse::<AeTitle>().is_ok());
        assert!("A_VERY_LONG_AE_TITLE".parse::<AeTitle>().is_err());
        assert!("BAD\\AE".parse::<AeTitle>().is_err());
        assert_eq!("08:30".parse::<TimeOfDay>().unwrap().minute_of_day, 510);
        assert!("8:30".parse::<TimeOfDay>().is_err());
        assert!("25:00".parse::<TimeOfDay>().is_err());
    }

    #[test]
    fn amounts_become_integer_minor_units() {
        let d: Decimal = "45.5".parse().unwrap();
        assert_eq!(d.minor_units(2).unwrap(), 4550);
        assert_eq!("1250".parse::<Decimal>().unwrap().minor_units(0).unwrap(), 1250);
        assert!("0.001".parse::<Decimal>().unwrap().minor_units(2).is_err());
        assert_eq!("-3.10".parse::<Decimal>().unwrap().minor_units(2).unwrap(), -310);
        assert!("4,50".parse::<Decimal>().is_err());
        assert!("45.".parse::<Decimal>().is_err());
        assert_eq!(currency_exponent("JPY"), Some(0));
        assert_eq!(currency_exponent("XYZ"), None);
    }
}

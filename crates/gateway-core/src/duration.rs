//! ISO 8601 durations (`P30D`, `P1M`, `P1Y2M`, `PT12H`) for products that give access for a fixed time.
//! Years and months are calendar steps (one month after 31 January is the last day of February), the way
//! the stores count subscription periods.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::{Date, Month, OffsetDateTime};

use crate::time::Timestamp;

/// A parsed ISO 8601 duration. Only non-negative whole numbers are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IsoDuration {
    pub years: u32,
    pub months: u32,
    pub weeks: u32,
    pub days: u32,
    pub hours: u32,
    pub minutes: u32,
    pub seconds: u32,
}

/// The longest duration accepted: a hundred years is longer than any access sold, and keeps every
/// end date far inside the calendar's range.
pub const MAX_DAYS: u64 = 36_525;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an ISO 8601 duration of at most 100 years, such as P30D, P1M, P1Y or PT12H")]
pub struct DurationError(pub String);

impl IsoDuration {
    /// The shape of a duration, as the OpenAPI document states it: `P`, then date units in the order
    /// Y, M, W, D, then `T` and time units in the order H, M, S; at least one unit; at most nine digits
    /// each. Written without lookaround so every client's regex engine reads it alike.
    pub const PATTERN: &str = concat!(
        "^P(([0-9]{1,9}Y([0-9]{1,9}M)?([0-9]{1,9}W)?([0-9]{1,9}D)?|[0-9]{1,9}M([0-9]{1,9}W)?([0-9]{1,9}D)?",
        "|[0-9]{1,9}W([0-9]{1,9}D)?|[0-9]{1,9}D)",
        "(T([0-9]{1,9}H([0-9]{1,9}M)?([0-9]{1,9}S)?|[0-9]{1,9}M([0-9]{1,9}S)?|[0-9]{1,9}S))?",
        "|T([0-9]{1,9}H([0-9]{1,9}M)?([0-9]{1,9}S)?|[0-9]{1,9}M([0-9]{1,9}S)?|[0-9]{1,9}S))$"
    );

    /// Reads [`IsoDuration::PATTERN`], without the range [`IsoDuration::check_range`] adds.
    pub fn parse_shape(s: &str) -> Result<Self, DurationError> {
        let err = || DurationError(s.to_owned());
        let rest = s.strip_prefix('P').ok_or_else(err)?;
        let mut out = IsoDuration::default();
        let mut in_time = false;
        let mut number = String::new();
        let mut units = 0;
        // The rank of the last unit read: units come in their order, each at most once.
        let mut last = 0;
        for c in rest.chars() {
            match c {
                '0'..='9' if number.len() < 9 => number.push(c),
                'T' if !in_time && number.is_empty() => {
                    in_time = true;
                    last = 4;
                }
                unit => {
                    let n: u32 = number.parse().map_err(|_| err())?;
                    number.clear();
                    units += 1;
                    let (rank, slot) = match (in_time, unit) {
                        (false, 'Y') => (1, &mut out.years),
                        (false, 'M') => (2, &mut out.months),
                        (false, 'W') => (3, &mut out.weeks),
                        (false, 'D') => (4, &mut out.days),
                        (true, 'H') => (5, &mut out.hours),
                        (true, 'M') => (6, &mut out.minutes),
                        (true, 'S') => (7, &mut out.seconds),
                        _ => return Err(err()),
                    };
                    if rank <= last {
                        return Err(err());
                    }
                    last = rank;
                    *slot = n;
                }
            }
        }
        if !number.is_empty() || units == 0 || (in_time && last == 4) {
            return Err(err());
        }
        Ok(out)
    }

    /// The range the gateway takes: longer than nothing, at most [`MAX_DAYS`]. A sum over units, which
    /// no pattern can state.
    pub fn check_range(&self) -> Result<(), DurationError> {
        if *self == IsoDuration::default() || self.approx_days() > MAX_DAYS {
            return Err(DurationError(self.to_string()));
        }
        Ok(())
    }
}

impl FromStr for IsoDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, DurationError> {
        let d = Self::parse_shape(s)?;
        d.check_range().map_err(|_| DurationError(s.to_owned()))?;
        Ok(d)
    }
}

impl fmt::Display for IsoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("P")?;
        for (n, u) in [
            (self.years, 'Y'),
            (self.months, 'M'),
            (self.weeks, 'W'),
            (self.days, 'D'),
        ] {
            if n > 0 {
                write!(f, "{n}{u}")?;
            }
        }
        if self.hours + self.minutes + self.seconds > 0 {
            f.write_str("T")?;
            for (n, u) in [(self.hours, 'H'), (self.minutes, 'M'), (self.seconds, 'S')] {
                if n > 0 {
                    write!(f, "{n}{u}")?;
                }
            }
        }
        Ok(())
    }
}

impl Serialize for IsoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The shape only: a product's [`check_range`](IsoDuration::check_range) is a rule of its own, so an
/// API body of the right shape and the wrong length is told apart from one of the wrong shape.
impl<'de> Deserialize<'de> for IsoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IsoDuration::parse_shape(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for IsoDuration {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(IsoDuration::PATTERN))
            .description(Some(
                "An ISO 8601 duration such as P30D, P1M or P1Y: longer than nothing and at most 100 years in total (a longer one is refused with 422)",
            ))
            .examples(["P30D"])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for IsoDuration {}

impl IsoDuration {
    /// The length in days, rounding months and years up, for bounds checks.
    pub fn approx_days(&self) -> u64 {
        let secs =
            u64::from(self.hours) * 3600 + u64::from(self.minutes) * 60 + u64::from(self.seconds);
        u64::from(self.years) * 366
            + u64::from(self.months) * 31
            + u64::from(self.weeks) * 7
            + u64::from(self.days)
            + secs.div_ceil(86_400)
    }

    /// The instant this long after `from`, stepping calendar months first, then fixed units.
    pub fn after(&self, from: Timestamp) -> Timestamp {
        let start = from.to_datetime();
        let total_months = i64::from(self.years) * 12 + i64::from(self.months);
        let dt = add_months(start, total_months);
        let fixed_secs = i64::from(self.weeks) * 7 * 86_400
            + i64::from(self.days) * 86_400
            + i64::from(self.hours) * 3600
            + i64::from(self.minutes) * 60
            + i64::from(self.seconds);
        let moved = Timestamp::from_datetime(dt);
        moved.plus_millis(fixed_secs.saturating_mul(1000))
    }
}

fn add_months(dt: OffsetDateTime, months: i64) -> OffsetDateTime {
    if months == 0 {
        return dt;
    }
    let index = i64::from(dt.year()) * 12 + i64::from(dt.month() as u8) - 1 + months;
    let year = i32::try_from(index.div_euclid(12)).unwrap_or(i32::MAX);
    let month = Month::try_from((index.rem_euclid(12) + 1) as u8).unwrap_or(Month::December);
    let last_day = time::util::days_in_month(month, year);
    let day = dt.day().min(last_day);
    match Date::from_calendar_date(year, month, day) {
        Ok(date) => dt.replace_date(date),
        Err(_) => dt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn parses_and_prints() {
        for s in ["P30D", "P1M", "P1Y2M", "PT12H", "P1W", "P1DT2H3M4S"] {
            let d: IsoDuration = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
        }
        for bad in [
            "P101Y",
            "P8000Y",
            "P4000000D",
            "PT4000000000S",
            "",
            "P",
            "30D",
            "PT",
            "P1H",
            "P-1D",
            "P1.5D",
            "P0D",
            "P1DT",
            "P1D1Y",
            "P1D2D",
            "PT1H1H",
            "P0000000001D",
        ] {
            assert!(
                bad.parse::<IsoDuration>().is_err(),
                "{bad} should be refused"
            );
        }
    }

    proptest::proptest! {
        /// The parser reads exactly the documented pattern.
        #[test]
        fn the_shape_is_the_pattern(s in "P[0-9YMWDTHS]{0,8}|P[0-9]{1,10}[YMWD]|[PT0-9DHMS]{0,5}") {
            let stated = regex::Regex::new(IsoDuration::PATTERN).unwrap().is_match(&s);
            proptest::prop_assert_eq!(IsoDuration::parse_shape(&s).is_ok(), stated, "{}", s);
        }
    }

    #[test]
    fn months_are_calendar_steps() {
        let d: IsoDuration = "P1M".parse().unwrap();
        assert_eq!(
            d.after(at("2026-01-31T08:00:00Z")),
            at("2026-02-28T08:00:00Z")
        );
        let y: IsoDuration = "P1Y".parse().unwrap();
        assert_eq!(
            y.after(at("2028-02-29T00:00:00Z")),
            at("2029-02-28T00:00:00Z")
        );
        let days: IsoDuration = "P30D".parse().unwrap();
        assert_eq!(
            days.after(at("2026-11-01T00:00:00Z")),
            at("2026-12-01T00:00:00Z")
        );
    }
}

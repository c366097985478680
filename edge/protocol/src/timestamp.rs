//! temporenc "DTS" timestamps with microsecond precision, always 8 bytes.
//!
//! Layout (64 bits, most significant first):
//! `01` type tag · `01` precision (µs) · year 12 · month-1 4 · day-1 5 · hour 5 ·
//! minute 6 · second 6 · microsecond 20 · `00` padding.
//!
//! temporenc reserves the all-ones value of each component for "missing"; a device
//! timestamp must be complete, so a missing component is an error here.

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use thiserror::Error;

/// Encoded size of a DTS timestamp with microsecond precision.
pub const TIMESTAMP_LEN: usize = 8;

const TYPE_TAG_DTS: u64 = 0b01;
const PRECISION_MICROS: u64 = 0b01;

/// Why 8 bytes are not a valid device timestamp, or a time cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TimestampError {
    #[error("not a temporenc DTS value (type tag {0:#04b}, expected 0b01)")]
    WrongType(u8),
    #[error("temporenc precision {0:#04b} is not microseconds (0b01)")]
    WrongPrecision(u8),
    #[error("timestamp {0} is missing (temporenc all-ones marker)")]
    Missing(&'static str),
    #[error("timestamp {component} {value} is out of range")]
    OutOfRange { component: &'static str, value: u32 },
    #[error("timestamp padding bits are {0:#04b}, expected 0b00")]
    Padding(u8),
    #[error("{year:04}-{month:02}-{day:02} is not a calendar date")]
    NotADate { year: u32, month: u32, day: u32 },
    #[error("year {0} cannot be encoded (temporenc years are 0..=4094)")]
    YearNotEncodable(i32),
    #[error(
        "time has sub-microsecond precision ({0} ns); device timestamps carry whole microseconds"
    )]
    SubMicrosecond(u32),
    #[error("leap seconds cannot be encoded")]
    LeapSecond,
}

/// Decode 8 bytes of temporenc DTS (µs) into a UTC instant.
pub fn decode_timestamp(bytes: [u8; TIMESTAMP_LEN]) -> Result<DateTime<Utc>, TimestampError> {
    let v = u64::from_be_bytes(bytes);
    let field = |shift: u32, bits: u32| ((v >> shift) & ((1u64 << bits) - 1)) as u32;

    let tag = field(62, 2);
    if u64::from(tag) != TYPE_TAG_DTS {
        return Err(TimestampError::WrongType(tag as u8));
    }
    let precision = field(60, 2);
    if u64::from(precision) != PRECISION_MICROS {
        return Err(TimestampError::WrongPrecision(precision as u8));
    }
    let year = field(48, 12);
    let month0 = field(44, 4);
    let day0 = field(39, 5);
    let hour = field(34, 5);
    let minute = field(28, 6);
    let second = field(22, 6);
    let micros = field(2, 20);
    let padding = field(0, 2);

    for (name, value, missing) in [
        ("year", year, 4095),
        ("month", month0, 15),
        ("day", day0, 31),
        ("hour", hour, 31),
        ("minute", minute, 63),
        ("second", second, 63),
    ] {
        if value == missing {
            return Err(TimestampError::Missing(name));
        }
    }
    for (component, value, max) in [
        ("month", month0 + 1, 12),
        ("hour", hour, 23),
        ("minute", minute, 59),
        ("second", second, 59),
        ("microsecond", micros, 999_999),
    ] {
        if value > max {
            return Err(TimestampError::OutOfRange { component, value });
        }
    }
    if padding != 0 {
        return Err(TimestampError::Padding(padding as u8));
    }
    let (month, day) = (month0 + 1, day0 + 1);
    let date = NaiveDate::from_ymd_opt(year as i32, month, day)
        .ok_or(TimestampError::NotADate { year, month, day })?;
    let time =
        date.and_hms_micro_opt(hour, minute, second, micros)
            .ok_or(TimestampError::OutOfRange {
                component: "time",
                value: hour,
            })?;
    Ok(time.and_utc())
}

/// Encode a UTC instant as 8 bytes of temporenc DTS (µs).
pub fn encode_timestamp(ts: &DateTime<Utc>) -> Result<[u8; TIMESTAMP_LEN], TimestampError> {
    let year = ts.year();
    if !(0..=4094).contains(&year) {
        return Err(TimestampError::YearNotEncodable(year));
    }
    let nanos = ts.nanosecond();
    if nanos >= 1_000_000_000 {
        return Err(TimestampError::LeapSecond);
    }
    if !nanos.is_multiple_of(1_000) {
        return Err(TimestampError::SubMicrosecond(nanos));
    }
    let v = (TYPE_TAG_DTS << 62)
        | (PRECISION_MICROS << 60)
        | (u64::from(year as u32) << 48)
        | (u64::from(ts.month0()) << 44)
        | (u64::from(ts.day0()) << 39)
        | (u64::from(ts.hour()) << 34)
        | (u64::from(ts.minute()) << 28)
        | (u64::from(ts.second()) << 22)
        | (u64::from(nanos / 1_000) << 2);
    Ok(v.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn documented_example_encodes_to_documented_bytes() {
        let ts = Utc
            .with_ymd_and_hms(2023, 6, 1, 12, 0, 0)
            .single()
            .expect("valid");
        let bytes = encode_timestamp(&ts).expect("encodable");
        assert_eq!(hex::encode(bytes), "57e7503000000000");
        assert_eq!(decode_timestamp(bytes), Ok(ts));
    }

    #[test]
    fn missing_year_is_rejected() {
        // year = 4095 (all ones), everything else zero.
        let v: u64 = (1 << 62) | (1 << 60) | (0xFFF << 48);
        assert_eq!(
            decode_timestamp(v.to_be_bytes()),
            Err(TimestampError::Missing("year"))
        );
    }

    #[test]
    fn february_thirtieth_is_not_a_date() {
        let v: u64 = (1 << 62) | (1 << 60) | (2024 << 48) | (1 << 44) | (29 << 39);
        assert_eq!(
            decode_timestamp(v.to_be_bytes()),
            Err(TimestampError::NotADate {
                year: 2024,
                month: 2,
                day: 30
            })
        );
    }

    #[test]
    fn microseconds_above_999999_are_rejected() {
        let v: u64 = (1 << 62) | (1 << 60) | (2024 << 48) | (1_000_000 << 2);
        assert_eq!(
            decode_timestamp(v.to_be_bytes()),
            Err(TimestampError::OutOfRange {
                component: "microsecond",
                value: 1_000_000
            })
        );
    }

    #[test]
    fn other_precisions_and_types_are_rejected() {
        let ms: u64 = (1 << 62) | (2024 << 48);
        assert_eq!(
            decode_timestamp(ms.to_be_bytes()),
            Err(TimestampError::WrongPrecision(0))
        );
        let date_only: u64 = 0b100 << 61;
        assert_eq!(
            decode_timestamp(date_only.to_be_bytes()),
            Err(TimestampError::WrongType(0b10))
        );
    }

    #[test]
    fn sub_microsecond_times_are_not_encodable() {
        let ts = Utc
            .timestamp_opt(1_700_000_000, 1_500)
            .single()
            .expect("valid");
        assert_eq!(
            encode_timestamp(&ts),
            Err(TimestampError::SubMicrosecond(1_500))
        );
    }
}

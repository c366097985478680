//! Avro values as readable JSON: timestamps in RFC 3339, bytes in hex, unions unwrapped.

use apache_avro::types::Value;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map};

pub fn to_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Boolean(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::Long(l) => json!(l),
        Value::Float(f) => json!(f),
        Value::Double(d) => json!(d),
        Value::Bytes(b) | Value::Fixed(_, b) => json!(hex::encode(b)),
        Value::String(s) | Value::Enum(_, s) => json!(s),
        Value::Union(_, inner) => to_json(inner),
        Value::Array(items) => serde_json::Value::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => {
            let map: Map<String, serde_json::Value> = entries
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect();
            serde_json::Value::Object(map)
        }
        Value::Record(fields) => {
            let map: Map<String, serde_json::Value> = fields
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect();
            serde_json::Value::Object(map)
        }
        Value::TimestampMicros(us) | Value::LocalTimestampMicros(us) => {
            timestamp(DateTime::from_timestamp_micros(*us), *us)
        }
        Value::TimestampMillis(ms) | Value::LocalTimestampMillis(ms) => {
            timestamp(DateTime::from_timestamp_millis(*ms), *ms)
        }
        other => serde_json::Value::try_from(other.clone())
            .unwrap_or_else(|_| json!(format!("{other:?}"))),
    }
}

fn timestamp(ts: Option<DateTime<Utc>>, raw: i64) -> serde_json::Value {
    ts.map_or(json!(raw), |t| {
        json!(t.to_rfc3339_opts(SecondsFormat::Micros, true))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_bytes_enums_and_unions_read_naturally() {
        let value = Value::Record(vec![
            ("t".into(), Value::TimestampMicros(1_685_620_800_123_456)),
            ("b".into(), Value::Bytes(vec![0, 0, 0, 42])),
            ("e".into(), Value::Enum(1, "IDLE".into())),
            ("u".into(), Value::Union(1, Box::new(Value::Int(7)))),
            ("n".into(), Value::Union(0, Box::new(Value::Null))),
        ]);
        assert_eq!(
            to_json(&value),
            json!({"t": "2023-06-01T12:00:00.123456Z", "b": "0000002a", "e": "IDLE", "u": 7, "n": null})
        );
    }
}

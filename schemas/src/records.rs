//! Rust types for the catalog's Avro schemas, shared by every producer and consumer.
//!
//! The types are generated from `schemas/avro/*.avsc` at build time (`build.rs`, with
//! `rsgen-avro`): a record type per schema file, named as its Avro record, an enum per Avro
//! enum (`AT_AND_T` becomes `Carrier::AtAndT`), `Option` for a union with null. Each
//! top-level record names its file ([`TopicRecord::SCHEMA_FILE`]); the tests below
//! round-trip a populated value of each through the real schema. Timestamps are microseconds since the Unix epoch (UTC), as in
//! the schemas' `timestamp-micros`.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Now, in the records' unit: microseconds since the Unix epoch (0 if the clock is before it).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// A value type bound to one schema file of the catalog.
pub trait TopicRecord: Serialize + DeserializeOwned + Send + 'static {
    /// File name under `schemas/avro/`.
    const SCHEMA_FILE: &'static str;
}

/// A type a state store can hold: its values go to the store's changelog as Avro, with this
/// schema registered under the changelog topic's subject (so the registry checks a change of
/// the store's type like any other schema change). Every catalog record type is one, and so
/// are the primitives below.
pub trait StoreValue: Serialize + DeserializeOwned + Send + 'static {
    /// The Avro schema of the values, as JSON text.
    fn avro_schema() -> &'static str;
}

impl<T: TopicRecord> StoreValue for T {
    fn avro_schema() -> &'static str {
        crate::SCHEMA_FILES
            .iter()
            .find(|(file, _)| *file == T::SCHEMA_FILE)
            .map(|(_, text)| *text)
            // Unreachable for generated types; a hand-made TopicRecord naming no catalog file
            // gets a schema that fails to parse, and the processor refuses to start.
            .unwrap_or("")
    }
}

/// Vectors of a catalog record type: an Avro array of that record.
impl<T: TopicRecord> StoreValue for Vec<T> {
    fn avro_schema() -> &'static str {
        static SCHEMAS: std::sync::Mutex<Vec<(&'static str, &'static str)>> =
            std::sync::Mutex::new(Vec::new());
        let mut known = SCHEMAS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, text)) = known.iter().find(|(file, _)| *file == T::SCHEMA_FILE) {
            return text;
        }
        let text: &'static str = Box::leak(
            format!(
                r#"{{"type": "array", "items": {}}}"#,
                <T as StoreValue>::avro_schema()
            )
            .into_boxed_str(),
        );
        known.push((T::SCHEMA_FILE, text));
        text
    }
}

macro_rules! primitive_store_values {
    ($($t:ty => $schema:literal),* $(,)?) => {
        $(impl StoreValue for $t {
            fn avro_schema() -> &'static str {
                $schema
            }
        })*
    };
}

primitive_store_values!(
    i64 => r#""long""#,
    i32 => r#""int""#,
    f64 => r#""double""#,
    bool => r#""boolean""#,
    String => r#""string""#,
);

/// The generated types, one per named type of the catalog's schemas (`build.rs`).
#[allow(clippy::all, missing_docs, deprecated)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/record_types.rs"));
}

pub use generated::*;

include!(concat!(env!("OUT_DIR"), "/topic_records.rs"));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SCHEMA_FILES;
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::writer::datum::GenericDatumWriter;
    use apache_avro::{from_value, to_value, Schema};

    fn round_trip<T: TopicRecord + PartialEq + std::fmt::Debug>(value: T) {
        let text = SCHEMA_FILES
            .iter()
            .find(|(f, _)| *f == T::SCHEMA_FILE)
            .map(|(_, t)| *t)
            .unwrap_or_else(|| panic!("{} is not a catalog schema", T::SCHEMA_FILE));
        let schema = Schema::parse_str(text).expect("schema");
        let avro = to_value(&value)
            .and_then(|v| v.resolve(&schema))
            .unwrap_or_else(|e| panic!("{}: value does not fit the schema: {e}", T::SCHEMA_FILE));
        let bytes = GenericDatumWriter::builder(&schema)
            .build()
            .and_then(|w| w.write_value_to_vec(avro))
            .expect("encode");
        let back = GenericDatumReader::builder(&schema)
            .build()
            .and_then(|r| r.read_value(&mut bytes.as_slice()))
            .expect("decode");
        let decoded: T = from_value(&back).unwrap_or_else(|e| panic!("{}: {e}", T::SCHEMA_FILE));
        assert_eq!(decoded, value, "{}", T::SCHEMA_FILE);
        // The direct serde path (no intermediate Value) writes the same bytes and reads them back.
        let direct = GenericDatumWriter::builder(&schema)
            .build()
            .and_then(|w| w.write_ser_to_vec(&value))
            .unwrap_or_else(|e| panic!("{}: direct encode: {e}", T::SCHEMA_FILE));
        assert_eq!(direct, bytes, "{}: direct encoding differs", T::SCHEMA_FILE);
        let read: T = GenericDatumReader::builder(&schema)
            .build()
            .and_then(|r| r.read_deser(&mut direct.as_slice()))
            .unwrap_or_else(|e| panic!("{}: direct decode: {e}", T::SCHEMA_FILE));
        assert_eq!(read, value, "{}: direct decoding differs", T::SCHEMA_FILE);
    }

    const T0: i64 = 1_685_620_800_123_456;

    #[test]
    fn every_record_type_round_trips_through_its_schema() {
        round_trip(SensorReading {
            modem_id: "356938035643809".into(),
            device_id: 3,
            sensor: "temp".into(),
            timestamp: T0,
            value: Some(-7),
            data: vec![0xff, 0xff, 0xff, 0xf9],
            received_at: T0 + 1,
            sequence: Some(9),
        });
        round_trip(GrafanaReading {
            modem_id: "1".into(),
            device_id: 1,
            value: 42,
        });
        round_trip(DeviceSession {
            modem_id: "356938035643809".into(),
            gateway: "gateway-a".into(),
            address: "203.0.113.7:40123".into(),
            protocol: SessionProtocol::V1,
            authenticated: false,
            first_seen: T0,
            last_seen: T0 + 30_000_000,
            address_changes: 2,
            clock_offset_ms: Some(-1_250),
            sequence: Some(7),
            sequence_reserved: Some(1031),
        });
        round_trip(IotStatusReport {
            modem_id: "1".into(),
            status: IotStatus::OffNominal,
            received_at: T0,
            sequence: None,
        });
        round_trip(CarrierSwitchRequest {
            request_id: "00000000000000ff".into(),
            modem_id: "1".into(),
            carrier: Carrier::TMobile,
            requested_at: T0,
            deadline: T0 + 30_000_000,
            requested_by: Some("ops".into()),
        });
        round_trip(CarrierSwitchAck {
            modem_id: "1".into(),
            request_id: None,
            status: AckStatus::Nack,
            carrier: Carrier::AtAndT,
            received_at: T0,
            sequence: Some(1),
            reason: Some("stale_perform".into()),
        });
        round_trip(DownlinkDelivery {
            request_id: "00000000000000ff".into(),
            modem_id: "1".into(),
            event: DeliveryEvent::Undeliverable,
            attempt: 4,
            address: None,
            reason: Some("deadline".into()),
            at: T0,
        });
        round_trip(CarrierState {
            modem_id: "1".into(),
            carrier: Some(Carrier::Verizon),
            last_status: Some(IotStatus::Nominal),
            last_seen: Some(T0),
            updated_at: T0,
            clock_offset_ms: Some(42),
            requests: vec![SwitchRequestState {
                request_id: "00000000000000ff".into(),
                carrier: Carrier::Disconnect,
                state: RequestState::TimedOut,
                requested_at: T0,
                deadline: T0 + 1,
                sent_at: Some(T0),
                attempts: 3,
                completed_at: None,
                result_carrier: Some(Carrier::Verizon),
                reason: None,
            }],
        });
        round_trip(Anomaly {
            modem_id: "1".into(),
            device_id: 2,
            sensor: "gyro".into(),
            kind: AnomalyKind::Spike,
            value: Some(900),
            expected_low: Some(-3.5),
            expected_high: Some(3.5),
            score: Some(12.0),
            sensor_time: T0,
            detected_at: T0 + 5,
            detail: "far above the recent range".into(),
        });
        round_trip(DeviceStats {
            count: 31,
            mean: 2.5,
            variance: 0.25,
            last_value: Some(3),
            same_run: 2,
            stuck_reported: false,
        });
        round_trip(LastSeen {
            received_at: T0,
            sensor_time: T0 - 7,
            silent_reported: true,
        });
        round_trip(GatewayReject {
            received_at: T0,
            source: "127.0.0.1:5000".into(),
            reason: "truncated".into(),
            detail: "IoT Data truncated".into(),
            modem_id: None,
            raw: vec![0, 1],
        });
    }
}

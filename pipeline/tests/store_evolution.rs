//! Changelog values are Avro frames of the store's registered schema. What a restore does with
//! values written otherwise: with an older schema of the store (converted by Avro schema
//! resolution), as JSON by a version from before Avro changelogs (converted), or in a schema
//! nobody knows (kept as written, so nothing is lost, and reading that key fails).

use serde::Serialize;
use switchyard_pipeline::engine::{Engine, Restored};
use switchyard_pipeline::{Context, ProcessError, Processor, Record, Topology};
use switchyard_schemas::records::{ReadingCount, SensorReading, StoreValue};
use switchyard_schemas::wire::SchemaCodec;
use switchyard_schemas::Catalog;

struct Counter;

impl Processor for Counter {
    fn topology(&self) -> Topology {
        Topology::new("reading-counter")
            .input::<SensorReading>("imu")
            .store::<ReadingCount>("counts")
    }

    fn process(&mut self, _: &Record<'_>, _: &mut Context<'_>) -> Result<(), ProcessError> {
        Ok(())
    }
}

const STORE_ID: i32 = 5;

fn engine() -> Engine<Counter> {
    let catalog = Catalog::embedded().expect("catalog");
    let mut engine = Engine::new(Counter, &catalog).expect("topology");
    engine.set_store_id("counts", STORE_ID);
    engine
}

/// Restore one changelog record of the `counts` store and start task 0 with it, as the
/// runner starts a task once its stores are restored.
fn restore_one(engine: &mut Engine<Counter>, key: &str, value: Vec<u8>) -> Restored {
    let mut stores = engine.empty_stores();
    let outcome = engine.restore(&mut stores, "counts", key.into(), Some(value));
    engine.revoke(0);
    engine.assign(0, stores);
    outcome
}

fn count() -> ReadingCount {
    ReadingCount {
        modem_id: "m1".into(),
        sensor: "imu".into(),
        count: 41,
        last_sensor_time: 1_700_000_000_000_000,
    }
}

/// The store's value as an older version of it wrote it: one field more, since dropped.
#[derive(Serialize)]
struct OlderCount {
    modem_id: String,
    sensor: String,
    count: i64,
    last_sensor_time: i64,
    note: String,
}

const OLDER_SCHEMA: &str = r#"{"type": "record", "name": "ReadingCount", "namespace": "io.switchyard",
  "fields": [{"name": "modem_id", "type": "string"}, {"name": "sensor", "type": "string"},
             {"name": "count", "type": "long"}, {"name": "last_sensor_time", "type": "long"},
             {"name": "note", "type": "string"}]}"#;

#[test]
fn the_store_schema_is_the_declared_types() {
    let engine = engine();
    let codec = engine.store_schema("counts").expect("declared");
    let declared = SchemaCodec::parse(<ReadingCount as StoreValue>::avro_schema()).expect("parses");
    assert_eq!(codec.schema(), declared.schema());
}

#[test]
fn a_value_in_an_older_schema_of_the_store_is_converted() {
    let mut engine = engine();
    let older = SchemaCodec::parse(OLDER_SCHEMA).expect("older schema");
    engine.add_writer(3, older.clone());
    let c = count();
    let bytes = older
        .encode(
            3,
            &OlderCount {
                modem_id: c.modem_id.clone(),
                sensor: c.sensor.clone(),
                count: c.count,
                last_sensor_time: c.last_sensor_time,
                note: "dropped since".into(),
            },
        )
        .expect("encode");
    assert_eq!(
        restore_one(&mut engine, "m1/imu", bytes),
        Restored::Converted
    );
    let store = engine.store(0, "counts").expect("store");
    assert_eq!(store.get::<ReadingCount>("m1/imu"), Ok(Some(count())));
}

#[test]
fn a_json_value_from_before_avro_changelogs_is_converted() {
    let mut engine = engine();
    let json = serde_json::to_vec(&count()).expect("json");
    assert_eq!(
        restore_one(&mut engine, "m1/imu", json),
        Restored::Converted
    );
    let store = engine.store(0, "counts").expect("store");
    assert_eq!(store.get::<ReadingCount>("m1/imu"), Ok(Some(count())));
}

#[test]
fn a_value_in_an_unknown_schema_is_kept_and_reading_it_fails() {
    let mut engine = engine();
    let current = engine.store_schema("counts").expect("declared");
    let bytes = current.encode(99, &count()).expect("encode");
    let outcome = restore_one(&mut engine, "m1/imu", bytes);
    assert!(
        matches!(&outcome, Restored::Unreadable(reason) if reason.contains("schema id 99")),
        "{outcome:?}"
    );
    let store = engine.store(0, "counts").expect("store");
    assert_eq!(store.len(), 1, "the value is kept, not dropped");
    let err = store.get::<ReadingCount>("m1/imu").expect_err("unreadable");
    assert!(err.to_string().contains("schema id 99"), "{err}");
    // A value of the store's own schema is kept as written.
    let own = current.encode(STORE_ID, &count()).expect("encode");
    assert_eq!(restore_one(&mut engine, "m2/imu", own), Restored::AsWritten);
}

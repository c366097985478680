//! The engine through the test driver: typed records in and out, stores, timers, error
//! policies, and restoring stores from the changelog.

use std::time::Duration;

use switchyard_pipeline::engine::headers;
use switchyard_pipeline::{
    Context, ErrorPolicy, FailureKind, ProcessError, Processor, Record, TestDriver, Timer,
    TimerKind, Topology,
};
use switchyard_schemas::records::{GrafanaReading, SensorReading};
use switchyard_schemas::{Catalog, CATALOG_TOML};

/// Projects readings, counts them per modem, and counts timer firings.
struct Counter {
    policy: ErrorPolicy,
}

impl Processor for Counter {
    fn topology(&self) -> Topology {
        Topology::new("counter")
            .inputs::<SensorReading>(["imu", "temp"])
            .output::<GrafanaReading>("imu-grafana")
            .store::<i64>("counts")
            .timer("minute", TimerKind::StreamTime, Duration::from_secs(60))
            .timer("tick", TimerKind::WallClock, Duration::from_secs(10))
            .on_error(self.policy)
            .on_undecodable(self.policy)
    }

    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let reading: SensorReading = record.value()?;
        let counts = ctx.store("counts")?;
        let n: i64 = counts.get(&reading.modem_id)?.unwrap_or(0);
        counts.put(&reading.modem_id, &(n + 1))?;
        if reading.value == Some(666) {
            return Err(ProcessError::failed("the number of the beast"));
        }
        if let Some(value) = reading.value {
            let out = GrafanaReading {
                modem_id: reading.modem_id.clone(),
                device_id: reading.device_id,
                value,
            };
            ctx.send(
                "imu-grafana",
                &reading.modem_id,
                &out,
                Some(reading.timestamp / 1000),
            )?;
        }
        Ok(())
    }

    fn punctuate(&mut self, timer: &Timer, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let store = ctx.store("counts")?;
        let key = format!("timer:{}", timer.name);
        let n: i64 = store.get(&key)?.unwrap_or(0);
        store.put(&key, &(n + 1))
    }
}

fn catalog() -> Catalog {
    let extra = r#"
[[topic]]
name = "counter-dlq"
role = "dead-letter"
key = "original"
value_format = "raw"
partitions = 1
cleanup_policy = "delete"
description = "test"
"#;
    Catalog::parse(&format!("{CATALOG_TOML}{extra}")).expect("catalog")
}

fn driver(policy: ErrorPolicy) -> TestDriver<Counter> {
    TestDriver::with_catalog(Counter { policy }, catalog(), 1).expect("topology is valid")
}

fn reading(modem: &str, value: Option<i32>, sensor_time_us: i64) -> SensorReading {
    SensorReading {
        modem_id: modem.into(),
        device_id: 1,
        sensor: "imu".into(),
        timestamp: sensor_time_us,
        value,
        data: value.map(|v| v.to_be_bytes().to_vec()).unwrap_or_default(),
        received_at: sensor_time_us + 5,
        sequence: None,
    }
}

#[test]
fn records_flow_through_with_typed_values_and_timestamps() {
    let mut d = driver(ErrorPolicy::DeadLetter);
    d.pipe(
        "imu",
        "m1",
        &reading("m1", Some(7), 1_000_000_000),
        2_000_000,
    )
    .expect("ok");
    d.pipe(
        "temp",
        "m2",
        &reading("m2", Some(-3), 1_500_000_000),
        2_000_001,
    )
    .expect("ok");
    d.pipe("imu", "m1", &reading("m1", None, 1_600_000_000), 2_000_002)
        .expect("ok");
    let out = d.read_output::<GrafanaReading>("imu-grafana");
    assert_eq!(out.len(), 2, "a reading without a value is not projected");
    assert_eq!(out[0].key.as_deref(), Some("m1"));
    assert_eq!(
        out[0].value,
        GrafanaReading {
            modem_id: "m1".into(),
            device_id: 1,
            value: 7
        }
    );
    assert_eq!(
        out[0].timestamp_ms,
        Some(1_000_000),
        "record time set from the sensor time"
    );
    assert_eq!(out[1].value.value, -3);
    let store = d.store(0, "counts").expect("store");
    assert_eq!(store.get::<i64>("m1"), Ok(Some(2)));
    assert_eq!(store.get::<i64>("m2"), Ok(Some(1)));
    assert!(
        d.read_output::<GrafanaReading>("imu-grafana").is_empty(),
        "read_output drains"
    );
}

#[test]
fn undecodable_records_are_dead_lettered_with_their_origin() {
    let mut d = driver(ErrorPolicy::DeadLetter);
    d.pipe_raw("imu", Some(b"m1"), Some(b"not avro at all"), 42)
        .expect("continues");
    d.pipe_raw("imu", Some(b"m1"), Some(&[0, 0, 0, 0, 99, 1, 2]), 43)
        .expect("continues");
    d.pipe("imu", "m1", &reading("m1", Some(1), 1), 44)
        .expect("ok");
    let dead = d.dead_letters();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].kind, FailureKind::Undecodable);
    assert_eq!(
        dead[0].payload.as_deref(),
        Some(&b"not avro at all"[..]),
        "kept exactly"
    );
    assert_eq!(dead[0].key.as_deref(), Some(&b"m1"[..]));
    assert_eq!(dead[0].headers[headers::TOPIC], "imu");
    assert_eq!(dead[0].headers[headers::PARTITION], "0");
    assert_eq!(dead[0].headers[headers::OFFSET], "0");
    assert_eq!(dead[0].headers[headers::TIMESTAMP], "42");
    assert_eq!(dead[0].headers[headers::PROCESSOR], "counter");
    assert_eq!(dead[0].headers[headers::REASON], "undecodable");
    assert!(
        dead[0].headers[headers::ERROR].contains("magic"),
        "{:?}",
        dead[0].headers
    );
    assert!(
        dead[1].headers[headers::ERROR].contains("schema id 99"),
        "{:?}",
        dead[1].headers
    );
    assert_eq!(
        d.read_output::<GrafanaReading>("imu-grafana").len(),
        1,
        "processing continued"
    );
}

#[test]
fn a_failing_record_is_dead_lettered_and_its_store_writes_are_undone() {
    let mut d = driver(ErrorPolicy::DeadLetter);
    d.pipe("imu", "m1", &reading("m1", Some(1), 1), 1)
        .expect("ok");
    d.pipe("imu", "m1", &reading("m1", Some(666), 2), 2)
        .expect("continues");
    let dead = d.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].kind, FailureKind::Failed);
    assert_eq!(dead[0].headers[headers::ERROR], "the number of the beast");
    assert_eq!(
        d.store(0, "counts")
            .and_then(|s| s.get::<i64>("m1").ok().flatten()),
        Some(1),
        "the failed record's count was rolled back"
    );
}

#[test]
fn the_stop_policy_stops_at_the_bad_record() {
    let mut d = driver(ErrorPolicy::Stop);
    d.pipe("imu", "m1", &reading("m1", Some(1), 1), 1)
        .expect("ok");
    let stopped = d
        .pipe_raw("imu", Some(b"m1"), Some(b"junk"), 2)
        .expect_err("stops");
    assert_eq!((stopped.topic.as_str(), stopped.offset), ("imu", 1));
    assert!(d.dead_letters().is_empty());
}

#[test]
fn timers_fire_on_stream_time_and_wall_clock() {
    let mut d = driver(ErrorPolicy::DeadLetter);
    let ticks = |d: &TestDriver<Counter>, name: &str| {
        d.store(0, "counts")
            .and_then(|s| s.get::<i64>(&format!("timer:{name}")).ok().flatten())
            .unwrap_or(0)
    };
    // Stream time advances with record timestamps (ms); the minute timer fires on crossings.
    d.pipe("imu", "m1", &reading("m1", Some(1), 0), 10_000)
        .expect("ok");
    d.pipe("imu", "m1", &reading("m1", Some(1), 0), 59_999)
        .expect("ok");
    assert_eq!(ticks(&d, "minute"), 0);
    d.pipe("imu", "m1", &reading("m1", Some(1), 0), 60_000)
        .expect("ok");
    assert_eq!(ticks(&d, "minute"), 1);
    d.pipe("imu", "m1", &reading("m1", Some(1), 0), 30_000)
        .expect("ok");
    assert_eq!(
        ticks(&d, "minute"),
        1,
        "an older record does not move stream time back"
    );
    d.pipe("imu", "m1", &reading("m1", Some(1), 0), 185_000)
        .expect("ok");
    assert_eq!(ticks(&d, "minute"), 2);
    // Wall clock: every 10 s.
    d.advance_wall_clock(Duration::from_secs(9)).expect("ok");
    assert_eq!(ticks(&d, "tick"), 0);
    d.advance_wall_clock(Duration::from_secs(1)).expect("ok");
    assert_eq!(ticks(&d, "tick"), 1);
    d.advance_wall_clock(Duration::from_secs(10)).expect("ok");
    assert_eq!(ticks(&d, "tick"), 2);
}

#[test]
fn a_restarted_processor_resumes_from_its_changelog() {
    let mut d = driver(ErrorPolicy::DeadLetter);
    for i in 0..5 {
        d.pipe("imu", "m1", &reading("m1", Some(i), 1), 1)
            .expect("ok");
    }
    d.pipe("imu", "m2", &reading("m2", Some(1), 1), 1)
        .expect("ok");
    let mut d = d
        .restart(Counter {
            policy: ErrorPolicy::DeadLetter,
        })
        .expect("restart");
    assert_eq!(
        d.store(0, "counts")
            .and_then(|s| s.get::<i64>("m1").ok().flatten()),
        Some(5)
    );
    d.pipe("imu", "m1", &reading("m1", Some(9), 1), 1)
        .expect("ok");
    assert_eq!(
        d.store(0, "counts")
            .and_then(|s| s.get::<i64>("m1").ok().flatten()),
        Some(6)
    );
}

#[test]
fn keys_are_spread_over_tasks_with_their_own_stores() {
    let mut d = TestDriver::with_catalog(
        Counter {
            policy: ErrorPolicy::DeadLetter,
        },
        catalog(),
        3,
    )
    .expect("valid");
    for m in ["a", "b", "c", "d", "e", "f"] {
        d.pipe("imu", m, &reading(m, Some(1), 1), 1).expect("ok");
    }
    let total: usize = (0..3)
        .map(|p| d.store(p, "counts").map_or(0, |s| s.len()))
        .sum();
    assert_eq!(total, 6);
    for m in ["a", "b", "c"] {
        let p = d.partition_for(m);
        assert_eq!(
            d.store(p, "counts")
                .and_then(|s| s.get::<i64>(m).ok().flatten()),
            Some(1),
            "{m} lives in task {p}"
        );
    }
}

/// A processor reading a topic as the wrong type refuses to start with a clear message.
struct WrongType;

impl Processor for WrongType {
    fn topology(&self) -> Topology {
        Topology::new("counter").input::<GrafanaReading>("imu")
    }
    fn process(&mut self, _: &Record<'_>, _: &mut Context<'_>) -> Result<(), ProcessError> {
        Ok(())
    }
}

#[test]
fn a_type_that_does_not_match_its_topic_refuses_to_start() {
    let err = TestDriver::with_catalog(WrongType, catalog(), 1)
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("imu")
            && text.contains("grafana-reading.avsc")
            && text.contains("sensor-reading.avsc"),
        "{text}"
    );
}

/// A processor without a dead-letter topic in the catalog is told to add one.
#[test]
fn a_missing_dead_letter_topic_is_named() {
    let err = TestDriver::new(Counter {
        policy: ErrorPolicy::DeadLetter,
    })
    .err()
    .expect("refused");
    assert!(err.to_string().contains("counter-dlq"), "{err}");
}

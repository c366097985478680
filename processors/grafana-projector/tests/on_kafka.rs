//! grafana-projector on a real broker and registry.

use std::time::Duration;

use switchyard_schemas::records::{GrafanaReading, SensorReading};
use switchyard_testkit::{http_get_text, metric_sum, wait_for, Stack};

/// An hour ago, with sub-millisecond digits: recent enough to be projected (the projector
/// dead-letters sensor times older than the projected topic's retention).
fn t0_us() -> i64 {
    (switchyard_schemas::records::now_us() - 3_600_000_000) / 1_000_000 * 1_000_000 + 123_456
}

fn reading(
    modem: &str,
    sensor: &str,
    device_id: i64,
    value: Option<i32>,
    t_us: i64,
) -> SensorReading {
    SensorReading {
        modem_id: modem.into(),
        device_id,
        sensor: sensor.into(),
        timestamp: t_us,
        value,
        data: value
            .map(|v| v.to_be_bytes().to_vec())
            .unwrap_or_else(|| vec![9, 9, 9]),
        received_at: t_us + 3_000_000,
        sequence: None,
    }
}

#[test]
fn readings_reach_their_grafana_topics_at_sensor_time() {
    let t0 = t0_us();
    let stack = Stack::start().expect("stack");
    let (_projector, metrics) = stack
        .start_processor("grafana-projector", "grafana-projector", &[])
        .expect("healthy");
    let sensors = [("imu", 1), ("gyro", 2), ("temp", 3), ("unknown", 77)];
    for (i, (sensor, device)) in sensors.iter().enumerate() {
        let records: Vec<(String, SensorReading, i64)> = (0..20)
            .map(|n| {
                let t = t0 + (i as i64 * 1000 + n) * 1_000_000;
                // Record timestamp = arrival, three seconds after the sensor time.
                (
                    "356938035643809".to_string(),
                    reading(
                        "356938035643809",
                        sensor,
                        *device,
                        Some(n as i32 * 10 - 50),
                        t,
                    ),
                    t / 1000 + 3000,
                )
            })
            .collect();
        stack.produce(sensor, &records).expect("produce");
    }
    stack
        .produce(
            "temp",
            &[("m".to_string(), reading("m", "temp", 3, None, t0), 1)],
        )
        .expect("produce");

    let inputs: Vec<&str> = sensors.iter().map(|(s, _)| *s).collect();
    for (i, (sensor, device)) in sensors.iter().enumerate() {
        let topic = format!("{sensor}-grafana");
        let out = stack
            .read_once_committed::<GrafanaReading>(
                "grafana-projector",
                &inputs,
                &topic,
                Duration::from_secs(120),
            )
            .expect("projections");
        assert_eq!(out.len(), 20, "{topic}");
        let latest = http_get_text(
            stack.registry.addr,
            &format!("/subjects/{topic}-value/versions/latest"),
        )
        .expect("registry");
        let latest_id = serde_json::from_str::<serde_json::Value>(&latest).expect("json")["id"]
            .as_i64()
            .expect("id");
        let mut seen: Vec<(i64, i32)> = Vec::new();
        for r in &out {
            assert_eq!(r.value.device_id, *device);
            assert_eq!(r.raw.key.as_deref(), Some(&b"356938035643809"[..]));
            let payload = r.raw.payload.as_deref().expect("payload");
            let id = i32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]);
            assert_eq!(
                i64::from(id),
                latest_id,
                "written with the latest {topic}-value schema, which Grafana decodes with"
            );
            seen.push((r.raw.timestamp_ms.expect("timestamp"), r.value.value));
        }
        seen.sort();
        let expected: Vec<(i64, i32)> = (0..20)
            .map(|n| {
                (
                    (t0 + (i as i64 * 1000 + n) * 1_000_000) / 1000,
                    n as i32 * 10 - 50,
                )
            })
            .collect();
        assert_eq!(
            seen, expected,
            "{topic}: record time is the sensor time, not the arrival time"
        );
    }
    wait_for(
        "the skipped reading to be counted",
        Duration::from_secs(10),
        || {
            metric_sum(
                &http_get_text(metrics, "/metrics").unwrap_or_default(),
                "switchyard_processor_events_total{",
            ) == 1.0
        },
    )
    .expect("counted");
}

/// Under exactly-once, offsets are committed inside transactions. A run of readings that
/// produce nothing (no number to plot) must still be committed, or the group never moves past
/// them: after a restart they would all be read again, and the lag would never fall.
#[test]
fn under_exactly_once_readings_that_project_nothing_are_committed() {
    let t0 = t0_us();
    let stack = Stack::start().expect("stack");
    let (_projector, metrics) = stack
        .start_processor(
            "grafana-projector",
            "grafana-projector",
            &[
                ("SWITCHYARD_PROCESSING_GUARANTEE", "exactly-once".into()),
                ("SWITCHYARD_INSTANCE_ID", "skips".into()),
            ],
        )
        .expect("healthy");
    const SKIPPED: usize = 50;
    let records: Vec<(String, SensorReading, i64)> = (0..SKIPPED)
        .map(|n| {
            let t = t0 + n as i64 * 1_000_000;
            let modem = format!("m{}", n % 7);
            (modem.clone(), reading(&modem, "imu", 1, None, t), t / 1000)
        })
        .collect();
    stack.produce("imu", &records).expect("produce");
    wait_for(
        "every skipped reading to be processed",
        Duration::from_secs(60),
        || {
            metric_sum(
                &http_get_text(metrics, "/metrics").unwrap_or_default(),
                "switchyard_processor_events_total{",
            ) == SKIPPED as f64
        },
    )
    .expect("processed");
    let bootstrap = stack.broker.bootstrap();
    let mut committed = 0;
    let outcome = wait_for(
        "the group's offsets to cover the skipped readings",
        Duration::from_secs(30),
        || {
            committed = switchyard_testkit::kafka::committed_total(
                &bootstrap,
                "grafana-projector",
                &["imu"],
            )
            .unwrap_or(0);
            committed == SKIPPED as i64
        },
    );
    assert!(
        outcome.is_ok(),
        "{committed} of {SKIPPED} processed readings committed"
    );
    assert!(
        switchyard_testkit::kafka::read_to_end(&bootstrap, "imu-grafana")
            .expect("read")
            .is_empty(),
        "nothing was projected"
    );
}

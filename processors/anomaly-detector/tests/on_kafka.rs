//! anomaly-detector on a real broker and registry.

use std::time::Duration;

use switchyard_schemas::records::{Anomaly, AnomalyKind, SensorReading};
use switchyard_testkit::Stack;

#[test]
fn a_spike_in_a_sensor_stream_is_published() {
    let stack = Stack::start().expect("stack");
    let (_detector, _) = stack
        .start_processor("anomaly-detector", "anomaly-detector", &[])
        .expect("healthy");
    let t0 = 1_700_000_000_000_000i64;
    let records: Vec<(String, SensorReading, i64)> = (0..200)
        .map(|i| {
            let value = if i == 150 { 500 } else { 20 + (i % 5) };
            let t = t0 + i64::from(i) * 1_000_000;
            let reading = switchyard_testkit::imu_reading("77", value, t);
            ("77".to_string(), reading, t / 1000)
        })
        .collect();
    stack.produce("imu", &records).expect("produce");
    // Every reading processed before the alarms are counted, so a false alarm among the
    // readings after the spike fails the test as a missing spike does.
    let found = stack
        .read_once_committed::<Anomaly>(
            "anomaly-detector",
            &["imu"],
            "anomalies",
            Duration::from_secs(120),
        )
        .expect("anomalies");
    assert_eq!(found.len(), 1, "{found:?}");
    let a = &found[0].value;
    assert_eq!(
        (a.kind, a.value, a.modem_id.as_str(), a.sensor.as_str()),
        (AnomalyKind::Spike, Some(500), "77", "imu")
    );
    assert_eq!(a.sensor_time, t0 + 150_000_000);
    assert_eq!(
        found[0].raw.timestamp_ms,
        Some((t0 + 150_000_000) / 1000),
        "record time = sensor time"
    );
}

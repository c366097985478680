//! The test broker itself: what tests rely on it to do, or not to do.

use std::time::Duration;

use switchyard_testkit::{kafka, Stack};

/// Test data carries sensor times from 2023 as record times, older than every catalog
/// topic's retention. Kafka's first retention pass, 30 s after start by default, deleted
/// such inputs under tests still reading them. Nothing to wait on here but the clock: the
/// record must still be there after that first pass would have run.
#[test]
fn records_older_than_retention_outlive_the_first_retention_pass() {
    let stack = Stack::start().expect("stack");
    let bootstrap = stack.broker.bootstrap();
    let sensor_time_2023_ms = 1_690_000_000_000;
    kafka::produce(
        &bootstrap,
        "imu",
        &[("k".into(), vec![1], sensor_time_2023_ms)],
    )
    .expect("produce");
    std::thread::sleep(Duration::from_secs(40));
    let left = kafka::read_to_end(&bootstrap, "imu").expect("read imu");
    assert_eq!(left.len(), 1, "retention deleted the test's record");
}

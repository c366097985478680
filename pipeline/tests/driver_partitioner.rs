//! The TestDriver puts each key in the task librdkafka's producer sends it to, so a test sees
//! the same grouping of keys into tasks as production: checked against a real producer and
//! a real broker.

use switchyard_pipeline::default_partition;
use switchyard_testkit::kafka::{produce, read_to_end};
use switchyard_testkit::Stack;

#[test]
fn test_driver_partitions_keys_as_librdkafka_does() {
    // `imu`: a catalog topic of three partitions (the payloads need not be readings here).
    let stack = Stack::start().expect("stack");
    let bootstrap = stack.broker.bootstrap();
    let keys: Vec<String> = (0..300)
        .map(|i| format!("35693803564{i:04}"))
        .chain(["0", "modem-a", "é", "4242"].map(String::from))
        .collect();
    let records: Vec<(String, Vec<u8>, i64)> = keys
        .iter()
        .map(|k| (k.clone(), k.as_bytes().to_vec(), 1_700_000_000_000))
        .collect();
    produce(&bootstrap, "imu", &records).expect("produce");

    let written = read_to_end(&bootstrap, "imu").expect("read");
    assert_eq!(written.len(), keys.len(), "every record read back once");
    let mut per_partition = [0usize; 3];
    for record in &written {
        let key = record.key.as_deref().expect("keyed");
        assert_eq!(
            default_partition(key, 3),
            record.partition,
            "key {:?}",
            String::from_utf8_lossy(key)
        );
        per_partition[record.partition as usize] += 1;
    }
    // Not a degenerate spread (which would make the comparison above say little).
    assert!(per_partition.iter().all(|n| *n > 50), "{per_partition:?}");
}

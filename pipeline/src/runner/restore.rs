//! Filling a new task's stores from their changelog partitions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use switchyard_kafka::{clients, is_partition_eof};
use tracing::warn;

use super::config::RunnerError;

/// A changelog record: store key, and value (`None`: deleted).
pub(crate) type ChangelogEntry = (String, Option<Vec<u8>>);

/// The consumer settings a restore reads with: committed data only when the processor runs
/// with transactions, so aborted store writes are never restored.
pub(crate) fn restore_settings(bootstrap: &str, topic: &str, read_committed: bool) -> ClientConfig {
    let mut settings = clients::consumer_config(bootstrap);
    settings
        .set("group.id", format!("{topic}-restore"))
        .set("enable.partition.eof", "true")
        .set(
            "isolation.level",
            if read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        );
    settings
}

/// Read one changelog partition from its start to its current end; `stop` set ends it
/// early (the runner is shutting down and no longer wants the records).
pub(crate) fn read_partition(
    settings: &ClientConfig,
    topic: &str,
    partition: i32,
    stop: &AtomicBool,
) -> Result<Vec<ChangelogEntry>, RunnerError> {
    let consumer: BaseConsumer = settings.create()?;
    let (low, high) =
        switchyard_kafka::watermarks(&consumer, topic, partition, Duration::from_secs(30))?;
    let mut out = Vec::new();
    if high <= low {
        return Ok(out);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        if stop.load(Ordering::Relaxed) {
            return Err(RunnerError::ShutdownRequested);
        }
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let key = m
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default();
                out.push((key, m.payload().map(<[u8]>::to_vec)));
                if m.offset() + 1 >= high {
                    return Ok(out);
                }
            }
            Some(Err(e)) if is_partition_eof(&e) => return Ok(out),
            Some(Err(e)) => warn!(error = %e, %topic, partition, "reading changelog"),
            None => {}
        }
    }
    Err(RunnerError::Kafka(KafkaError::Global(
        RDKafkaErrorCode::OperationTimedOut,
    )))
}

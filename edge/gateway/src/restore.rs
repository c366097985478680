//! Reading `device-sessions` back at start: the sessions this instance held before it
//! stopped, so downlink reaches its modems before they speak again.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use switchyard_registry::RecordDecoder;
use switchyard_schemas::records::DeviceSession;
use tracing::warn;

use crate::sessions::Sessions;
use crate::SESSIONS_TOPIC;

/// Read `device-sessions` from its start to its end as of now into `sessions`; returns how
/// many sessions it took. Unreadable records are skipped and counted in `skipped`.
pub async fn restore_sessions(
    bootstrap: &str,
    mut decoder: RecordDecoder,
    sessions: &mut Sessions,
    timeout: Duration,
) -> anyhow::Result<(usize, u64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "switchyard-gateway-restore")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()
        .context("creating the session reader")?;
    let partitions = switchyard_kafka::partitions(&consumer, SESSIONS_TOPIC, timeout)
        .context("reading device-sessions' partitions")?;
    if partitions.is_empty() {
        bail!("topic {SESSIONS_TOPIC} does not exist (run `switchyard topics apply`)");
    }
    let mut ends = std::collections::HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(SESSIONS_TOPIC, p, timeout)?;
        if high > low {
            ends.insert(p, high);
            tpl.add_partition_offset(SESSIONS_TOPIC, p, Offset::Beginning)?;
        }
    }
    if ends.is_empty() {
        return Ok((0, 0));
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    let (mut taken, mut skipped) = (0usize, 0u64);
    while !ends.is_empty() {
        if Instant::now() > deadline {
            bail!(
                "device-sessions not read to its end within {timeout:?}; partitions left: {ends:?}"
            );
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.context("reading device-sessions")?;
        let (partition, offset) = (message.partition(), message.offset());
        match decoder.decode::<DeviceSession>(message.payload()).await {
            Ok(session) => taken += usize::from(sessions.restore(&session)),
            Err(e) => {
                skipped += 1;
                warn!(partition, offset, error = %e, "unreadable session record skipped");
            }
        }
        if ends.get(&partition).is_some_and(|end| offset + 1 >= *end) {
            ends.remove(&partition);
        }
    }
    Ok((taken, skipped))
}

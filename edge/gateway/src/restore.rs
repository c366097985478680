//! Reading `device-sessions` back at start: the sessions this instance held before it
//! stopped (so downlink reaches its modems before they speak again), who holds the others,
//! and how far each keyed modem's numbers went. `follow` keeps reading it while running.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use switchyard_kafka::clients;
use switchyard_protocol::keys::ModemKeys;
use switchyard_registry_client::RecordDecoder;
use switchyard_schemas::records::DeviceSession;
use tracing::{info, warn};

use crate::replay::{ReplayWindows, RestoringFloors};
use crate::sessions::{record_floor, Sessions};
use crate::SESSIONS_TOPIC;

/// What reading `device-sessions` back found.
#[derive(Debug, Default)]
pub struct Restored {
    /// Sessions this instance took back.
    pub taken: usize,
    /// Unreadable records skipped.
    pub skipped: u64,
    /// Where each partition ended: following goes on from here.
    pub ends: HashMap<i32, i64>,
}

/// How often a restore in progress says how far it got (log and `/health`).
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Read `device-sessions` from its start to its end as of now into `sessions` (this
/// instance's, and who holds the others') and the replay windows of the keyed modems (each
/// refuses up to its records' floor, [`record_floor`], as [`RestoringFloors`] combines
/// them). However long it takes (no timer aborts it;
/// `timeout` bounds each metadata request), saying how far it got in the log and in
/// `health`'s reason; it yields at every record, so a shutdown raced against it ends it.
pub async fn restore_sessions(
    bootstrap: &str,
    decoder: &mut RecordDecoder,
    sessions: &mut Sessions,
    (keys, windows): (&ModemKeys, &mut ReplayWindows),
    health: &switchyard_telemetry::Health,
    timeout: Duration,
) -> anyhow::Result<Restored> {
    let consumer: BaseConsumer = clients::consumer_config(bootstrap)
        .set("group.id", "switchyard-gateway-restore")
        .set("fetch.wait.max.ms", "50")
        .create()
        .context("creating the session reader")?;
    let partitions = switchyard_kafka::partitions(&consumer, SESSIONS_TOPIC, timeout)
        .context("reading device-sessions' partitions")?;
    if partitions.is_empty() {
        bail!("topic {SESSIONS_TOPIC} does not exist (run `switchyard topics apply`)");
    }
    let mut restored = Restored::default();
    let mut behind = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    let mut offsets_to_read = 0;
    for p in partitions {
        let (low, high) = switchyard_kafka::watermarks(&consumer, SESSIONS_TOPIC, p, timeout)?;
        restored.ends.insert(p, high);
        if high > low {
            behind.insert(p, high);
            offsets_to_read += high - low;
            tpl.add_partition_offset(SESSIONS_TOPIC, p, Offset::Beginning)?;
        }
    }
    if behind.is_empty() {
        return Ok(restored);
    }
    consumer.assign(&tpl)?;
    let mut floors = RestoringFloors::new(windows);
    let started = Instant::now();
    let mut next_report = started + PROGRESS_EVERY;
    let mut read: i64 = 0;
    let progress = |read: i64| {
        format!(
            "restoring device-sessions: {read} records read of at most {offsets_to_read} ({} s)",
            started.elapsed().as_secs()
        )
    };
    health.set_not_ready(progress(0));
    while !behind.is_empty() {
        tokio::task::yield_now().await;
        if Instant::now() >= next_report {
            next_report += PROGRESS_EVERY;
            info!(read, of = offsets_to_read, "{}", progress(read));
            health.set_not_ready(progress(read));
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        read += 1;
        let message = message.context("reading device-sessions")?;
        let (partition, offset) = (message.partition(), message.offset());
        match message.payload() {
            // A tombstone: the session expired ([`crate::expiry`]); whoever held it, nobody
            // does now.
            None => {
                if let Some(modem_id) = modem_key(&message) {
                    sessions.restore_tombstone(modem_id);
                }
            }
            Some(payload) => match decoder.decode::<DeviceSession>(Some(payload)).await {
                Ok(session) => {
                    sessions.restore(&session);
                    if let Some(at) = keyed_position(keys, &session) {
                        floors.apply(at, &session.gateway, record_floor(&session));
                    }
                }
                Err(e) => {
                    restored.skipped += 1;
                    warn!(partition, offset, error = %e, "unreadable session record skipped");
                }
            },
        }
        if behind.get(&partition).is_some_and(|end| offset + 1 >= *end) {
            behind.remove(&partition);
        }
    }
    // What is left is what this instance held last: `restore` dropped a session whenever
    // another instance's record of the modem came after it.
    restored.taken = sessions.len();
    Ok(restored)
}

/// The modem a `device-sessions` record is about (its key), for a tombstone, which has
/// no value to name it.
pub(crate) fn modem_key<M: Message>(message: &M) -> Option<&str> {
    message.key().and_then(|k| std::str::from_utf8(k).ok())
}

/// Where `record`'s modem lies among the keys, if it is a keyed modem with a number to refuse.
pub(crate) fn keyed_position(keys: &ModemKeys, record: &DeviceSession) -> Option<usize> {
    if record_floor(record) == 0 {
        return None;
    }
    keys.position(record.modem_id.parse().ok()?)
}

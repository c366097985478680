//! Reading `device-sessions`: back at start, the sessions this instance held before it
//! stopped (so downlink reaches its modems before they speak again) and who holds the
//! others; then followed while running, so a modem that moves to another instance is left
//! to it ([`crate::elsewhere`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use switchyard_kafka::{clients, is_partition_eof, TracingContext};
use switchyard_protocol::keys::ModemKeys;
use switchyard_registry_client::RecordDecoder;
use switchyard_schemas::records::DeviceSession;
use tracing::{info, warn};

use crate::elsewhere::Elsewhere;
use crate::replay::ReplayWindows;
use crate::service::rate_limited;
use crate::service::Gateway;
use crate::sessions::{record_floor, Claim, Sessions};
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
/// instance's), `elsewhere` (the others') and the replay windows of the keyed modems (each
/// refuses up to its latest record's floor, whoever wrote it: [`record_floor`]; a modem's
/// records are in one partition, read in order). However
/// long it takes (no timer aborts it;
/// `timeout` bounds each metadata request), saying how far it got in the log and in
/// `health`'s reason; it yields at every record, so a shutdown raced against it ends it.
pub async fn restore_sessions(
    bootstrap: &str,
    decoder: &mut RecordDecoder,
    sessions: &mut Sessions,
    elsewhere: &mut Elsewhere,
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
        match decoder.decode::<DeviceSession>(message.payload()).await {
            Ok(session) => {
                sessions.restore(&session);
                elsewhere.apply(&session);
                if let Some(at) = keyed_position(keys, &session) {
                    windows.restore(at, record_floor(&session));
                }
            }
            Err(e) => {
                restored.skipped += 1;
                warn!(partition, offset, error = %e, "unreadable session record skipped");
            }
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

impl Gateway {
    /// Follow `device-sessions` from `ends`: another instance's record of a modem this one
    /// holds, written after this one last heard it, means the modem moved there.
    pub(crate) async fn follow_sessions(
        self: Arc<Self>,
        mut decoder: RecordDecoder,
        ends: HashMap<i32, i64>,
    ) {
        let consumer: StreamConsumer<TracingContext> = match clients::consumer_config(
            &self.config.endpoints.bootstrap_servers,
        )
        .set("group.id", "switchyard-gateway-sessions")
        // Session records come at most once per heartbeat per modem; noticing a move
        // within a second is enough, and each shorter wait costs the broker a read
        // (make bench: idle).
        .set("fetch.wait.max.ms", "1000")
        // The instance reads its own session writes back too: keep librdkafka's prefetch
        // small (1 MiB, not 64) so memory follows the modems, not the last burst.
        .set("queued.max.messages.kbytes", "1024")
        .create_with_context(TracingContext)
        {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot follow device-sessions; modems that move to another gateway keep being sent to here");
                return;
            }
        };
        let mut tpl = TopicPartitionList::new();
        for (p, end) in &ends {
            if tpl
                .add_partition_offset(SESSIONS_TOPIC, *p, Offset::Offset(*end))
                .is_err()
            {
                return;
            }
        }
        if let Err(e) = consumer.assign(&tpl) {
            warn!(error = %e, "cannot assign device-sessions");
            return;
        }
        loop {
            let message = match consumer.recv().await {
                Ok(m) => m,
                Err(e) if is_partition_eof(&e) => continue,
                Err(e) => {
                    warn!(error = %e, "following device-sessions; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let session = match decoder.decode::<DeviceSession>(message.payload()).await {
                Ok(s) => s,
                Err(e) => {
                    self.metrics
                        .rejects
                        .with_label_values(&["bad_session_record"])
                        .inc();
                    warn!(offset = message.offset(), error = %e, "unreadable session record skipped");
                    continue;
                }
            };
            let claim = self
                .sessions
                .lock()
                .map(|mut s| {
                    let claim = s.yield_to(&session);
                    self.metrics.known_modems.set(s.len() as i64);
                    claim
                })
                .unwrap_or(Claim::NotHeld);
            if let Ok(mut e) = self.elsewhere.lock() {
                e.apply(&session);
                self.metrics.modems_elsewhere.set(e.len() as i64);
            }
            // What another instance accepted, or may have, is not fresh here either.
            if let (true, Some(at), Ok(mut windows)) = (
                session.gateway != self.config.instance_id,
                keyed_position(&self.keys, &session),
                self.windows.lock(),
            ) {
                windows.raise_to(at, record_floor(&session));
            }
            match claim {
                Claim::Yielded => {
                    self.metrics.modems_moved_away.inc();
                    info!(modem = %session.modem_id, to = %session.gateway, "modem moved to another gateway; its downlink goes from there");
                }
                Claim::Refuted(answer) => {
                    let c = &self.metrics.stale_claims_refuted;
                    c.inc();
                    if rate_limited(c.get()) {
                        warn!(modem = %session.modem_id, by = %session.gateway, claimed = ?session.sequence, held = ?answer.sequence, refuted = c.get(), "another gateway claimed a modem with a number not newer than this one accepted (a replayed packet?); answered with this session");
                    }
                    self.metrics.session_writes.inc();
                    self.publish(SESSIONS_TOPIC, &answer.modem_id, &answer, Instant::now());
                }
                Claim::NotHeld | Claim::Kept => {}
            }
        }
    }
}

/// Where `record`'s modem lies among the keys, if it is a keyed modem with a number to refuse.
fn keyed_position(keys: &ModemKeys, record: &DeviceSession) -> Option<usize> {
    if record_floor(record) == 0 {
        return None;
    }
    keys.position(record.modem_id.parse().ok()?)
}

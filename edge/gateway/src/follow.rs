//! Following `device-sessions` while running: another instance's record of a modem this one
//! holds, written after this one last heard it, means the modem moved there
//! ([`crate::elsewhere`]), and a tombstone that nobody holds it ([`crate::expiry`]); every
//! record raises the replay windows and lets the log decide the packets waiting for it
//! ([`crate::arbiter`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use switchyard_kafka::{clients, is_partition_eof, TracingContext};
use switchyard_registry_client::RecordDecoder;
use switchyard_schemas::records::DeviceSession;
use tracing::{info, warn};

use crate::restore::{keyed_position, modem_key};
use crate::service::{rate_limited, Gateway};
use crate::sessions::{record_floor, record_reservation, Claim, LogOrder};
use crate::SESSIONS_TOPIC;

/// A packet waiting for the log longer than this is withheld: its own session record was
/// not read back (dropped, or this follower is stalled), so nothing proves it came first.
pub(crate) const UNCONFIRMED_AFTER: Duration = Duration::from_secs(30);

impl Gateway {
    /// Follow `device-sessions` from `ends`.
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
        let mut expiry = tokio::time::interval(Duration::from_secs(1));
        loop {
            let received = tokio::select! {
                received = consumer.recv() => received,
                _ = expiry.tick() => {
                    self.expire_waiting();
                    continue;
                }
            };
            let message = match received {
                Ok(m) => m,
                Err(e) if is_partition_eof(&e) => continue,
                Err(e) => {
                    warn!(error = %e, "following device-sessions; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if message.payload().is_none() {
                if let Some(modem_id) = modem_key(&message) {
                    self.tombstoned(modem_id);
                }
                continue;
            }
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
            let log = self.decide(&session);
            let claim = self
                .modems
                .lock()
                .map(|mut m| {
                    let s = &mut m.sessions;
                    let claim = s.yield_to(&session, log);
                    self.metrics.known_modems.set(s.len() as i64);
                    self.metrics
                        .modems_elsewhere
                        .set(s.elsewhere().len() as i64);
                    claim
                })
                .unwrap_or(Claim::NotHeld);
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

    /// A session expired where it was held ([`crate::expiry`]): nobody holds it now. This
    /// instance may hold it again already (the modem spoke since): then its record is
    /// written again with the next packet.
    fn tombstoned(&self, modem_id: &str) {
        if let Ok(mut modems) = self.modems.lock() {
            modems.sessions.tombstoned(modem_id);
            self.metrics
                .modems_elsewhere
                .set(modems.sessions.elsewhere().len() as i64);
        }
    }

    /// One record, in log order: what another instance accepted, or may have, is not fresh
    /// here either; and the packets waiting for the log are decided. Returns where the
    /// record stands against this instance's waiting packets of the modem.
    fn decide(&self, record: &DeviceSession) -> LogOrder {
        let own = record.gateway == self.config.instance_id;
        let Ok(mut modems) = self.modems.lock() else {
            return LogOrder::default();
        };
        if own {
            // Read back, so on the broker: as good as its acknowledgement (which may come
            // later), and what a packet published from here must see.
            if let Some(reserved) = record_reservation(record) {
                modems.sessions.acknowledged(&record.modem_id, reserved);
            }
        } else if let Some(at) = keyed_position(&self.keys, record) {
            modems.freshness.windows.raise_to(at, record_floor(record));
        }
        let decided = modems.freshness.arbiter.on_record(record, own);
        self.metrics
            .waiting_for_the_log
            .set(modems.freshness.arbiter.len() as i64);
        if decided.lost > 0 {
            modems.sessions.lost(&record.modem_id);
            self.metrics.known_modems.set(modems.sessions.len() as i64);
        }
        drop(modems);
        if decided.lost > 0 {
            let c = self
                .metrics
                .withheld
                .with_label_values(&["reserved_elsewhere_first"]);
            c.inc_by(decided.lost);
            if rate_limited(c.get()) {
                warn!(modem = %record.modem_id, by = %record.gateway, withheld = c.get(), "packets accepted here whose number another gateway had reserved first (a replay): not published");
            }
        }
        for publish in decided.won {
            publish();
        }
        decided.log
    }

    /// Withhold what waited for the log too long.
    pub(crate) fn expire_waiting(&self) {
        let expired = self
            .modems
            .lock()
            .map(|mut m| {
                let arbiter = &mut m.freshness.arbiter;
                let expired = arbiter.expire(Instant::now(), UNCONFIRMED_AFTER);
                self.metrics.waiting_for_the_log.set(arbiter.len() as i64);
                expired
            })
            .unwrap_or(0);
        if expired > 0 {
            self.metrics
                .withheld
                .with_label_values(&["unconfirmed"])
                .inc_by(expired);
            warn!(
                expired,
                "packets whose session record was not read back within 30 s: not published"
            );
        }
    }
}

//! Sessions of modems not heard for `--session-expiry-secs` end, so the table and
//! `device-sessions` hold the modems that are around, not every modem ever heard. A
//! modem without a key (the legacy v1 id, `--insecure`) has its record deleted (a
//! tombstone, which compaction then removes with the records before it); a keyed modem's
//! last record stays, since it carries the number a replay must be above, and the keys
//! file bounds those anyway. Either way the downlink route is gone: a NAT mapping lasts
//! minutes, and a switch for the modem now ends `no_known_address` instead of going to an
//! address that no longer leads to it. The modem that speaks again gets a new session.

use std::sync::Arc;
use std::time::Duration;

use switchyard_schemas::records::now_us;
use tracing::info;

use crate::send::ToDownlink;
use crate::service::Gateway;
use crate::SESSIONS_TOPIC;

/// How often the sessions are looked over: an eighth of the expiry, between a second and a
/// quarter of an hour (a sweep of a million sessions holds the table for a few ms).
pub(crate) fn sweep_interval(expiry: Duration) -> Duration {
    (expiry / 8).clamp(Duration::from_secs(1), Duration::from_secs(15 * 60))
}

impl Gateway {
    /// End expired sessions now and every [`sweep_interval`] after (the first sweep, right
    /// after start, ends those read back that expired while the gateway was down).
    pub(crate) async fn expire_sessions(self: Arc<Self>, expiry: Duration) {
        let mut sweep = tokio::time::interval(sweep_interval(expiry));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let expiry_us = i64::try_from(expiry.as_micros()).unwrap_or(i64::MAX);
        loop {
            sweep.tick().await;
            self.expire_heard_before(now_us().saturating_sub(expiry_us));
        }
    }

    fn expire_heard_before(&self, heard_before_us: i64) {
        let Ok(mut modems) = self.modems.lock() else {
            return;
        };
        let sessions = &mut modems.sessions;
        let expired = sessions.expire(heard_before_us);
        if expired.is_empty() {
            return;
        }
        self.metrics.known_modems.set(sessions.len() as i64);
        // Deleted while the table is held: a packet of the modem after this sweep makes a
        // new session whose record is handed to the producer after the tombstone, so it is
        // behind it in the log and survives compaction.
        let mut deleted = 0;
        for e in expired.iter().filter(|e| !e.keyed) {
            self.publish_tombstone(SESSIONS_TOPIC, &e.modem.to_string());
            deleted += 1;
        }
        drop(modems);
        let kept = expired.len() - deleted;
        self.tell_downlink(ToDownlink::Forget(
            expired.iter().map(|e| e.modem).collect(),
        ));
        let counter = |record| self.metrics.sessions_expired.with_label_values(&[record]);
        counter("deleted").inc_by(deleted as u64);
        counter("kept").inc_by(kept as u64);
        info!(
            deleted,
            kept_for_replay_floor = kept,
            "sessions of modems not heard for the expiry ended"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_come_at_an_eighth_of_the_expiry_within_bounds() {
        assert_eq!(
            sweep_interval(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
        assert_eq!(
            sweep_interval(Duration::from_secs(80)),
            Duration::from_secs(10)
        );
        assert_eq!(
            sweep_interval(Duration::from_secs(30 * 24 * 3600)),
            Duration::from_secs(900)
        );
    }
}

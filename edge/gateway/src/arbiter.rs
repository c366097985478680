//! The log decides who accepted a packet first. A packet whose number only its own session
//! record reserves (a modem's first packet here, one that outran its reservation) could have
//! been accepted by another instance too: a replay of it there, or there of it here. So it
//! is published only once this instance has read its own record back from
//! `device-sessions`, and only if no other instance's record before it in the log reserved
//! the number. A modem's records are in one partition, so the log orders the claims and
//! exactly one wins; the loser publishes nothing and drops the session it had opened
//! ([`crate::sessions::Sessions::lost`]).
//!
//! Held under the replay windows' lock ([`crate::replay::Freshness`]): a record raises the
//! windows and contests the waiting packets in one step, so no record falls between a
//! packet's acceptance and its wait.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use switchyard_schemas::records::DeviceSession;

use crate::sessions::{record_floor, record_sequence, LogOrder};

/// What to do with a packet once the log decided it was accepted here first.
pub type Publish = Box<dyn FnOnce() + Send>;

struct Waiting {
    sequence: u32,
    since: Instant,
    publish: Publish,
}

#[derive(Default)]
struct Waits {
    packets: Vec<Waiting>,
    /// The highest number another instance's record reserved for the modem since these
    /// packets were accepted (and so before their own record).
    contested: u32,
}

/// Packets waiting for the log's decision, by modem.
#[derive(Default)]
pub struct Arbiter {
    by_modem: HashMap<String, Waits>,
    waiting: usize,
}

/// What reading one record, or the passing of time, decided.
#[derive(Default)]
pub struct Decided {
    /// Where another instance's record stands against the packets waiting here.
    pub log: LogOrder,
    /// Accepted here first: publish them.
    pub won: Vec<Publish>,
    /// Reserved by another instance first (a replay): never published.
    pub lost: u64,
}

impl Arbiter {
    /// Hold `publish` until this instance's record of `modem_id` carrying `sequence` is read
    /// back. Called under the lock the packet's acceptance took, so every record read after
    /// the acceptance is weighed against it.
    pub fn wait(&mut self, modem_id: &str, sequence: u32, now: Instant, publish: Publish) {
        let waits = self.by_modem.entry(modem_id.to_string()).or_default();
        waits.packets.push(Waiting {
            sequence,
            since: now,
            publish,
        });
        self.waiting += 1;
    }

    /// A record read from `device-sessions`, in log order, written by `own` (this instance)
    /// or another.
    pub fn on_record(&mut self, record: &DeviceSession, own: bool) -> Decided {
        let mut decided = Decided::default();
        let Some(waits) = self.by_modem.get_mut(&record.modem_id) else {
            return decided;
        };
        if !own {
            let theirs = record_sequence(record);
            decided.log = LogOrder {
                theirs_first: waits.packets.iter().any(|w| w.sequence <= theirs),
                ours_unconfirmed: true,
            };
            waits.contested = waits.contested.max(record_floor(record));
            return decided;
        }
        // This instance's record: every record before it in the partition has been read.
        let written = record_sequence(record);
        let contested = waits.contested;
        let (decide, keep): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(&mut waits.packets)
            .into_iter()
            .partition(|w| w.sequence <= written);
        waits.packets = keep;
        for w in decide {
            self.waiting -= 1;
            if w.sequence > contested {
                decided.won.push(w.publish);
            } else {
                decided.lost += 1;
            }
        }
        if waits.packets.is_empty() {
            self.by_modem.remove(&record.modem_id);
        }
        decided
    }

    /// Packets that waited longer than `limit` (their record was never read back: dropped,
    /// or the follower is stalled): lost, since nothing proves they were first.
    pub fn expire(&mut self, now: Instant, limit: Duration) -> u64 {
        let mut expired = 0;
        self.by_modem.retain(|_, waits| {
            let before = waits.packets.len();
            waits
                .packets
                .retain(|w| now.saturating_duration_since(w.since) < limit);
            expired += (before - waits.packets.len()) as u64;
            !waits.packets.is_empty()
        });
        self.waiting -= expired as usize;
        expired
    }

    /// Everything still waiting, withheld (shutdown): returns how many.
    pub fn withhold_all(&mut self) -> u64 {
        let all = self.waiting as u64;
        self.by_modem.clear();
        self.waiting = 0;
        all
    }

    /// Packets waiting.
    pub fn len(&self) -> usize {
        self.waiting
    }

    pub fn is_empty(&self) -> bool {
        self.waiting == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn record(gateway: &str, sequence: i64, reserved: i64) -> DeviceSession {
        DeviceSession {
            sequence: Some(sequence),
            sequence_reserved: Some(reserved),
            ..crate::sessions::test_record("7", gateway)
        }
    }

    fn counting(published: &Arc<AtomicUsize>) -> Publish {
        let published = Arc::clone(published);
        Box::new(move || {
            published.fetch_add(1, Ordering::Relaxed);
        })
    }

    fn publish_won(decided: Decided) -> u64 {
        let lost = decided.lost;
        decided.won.into_iter().for_each(|p| p());
        lost
    }

    #[test]
    fn the_first_claim_in_the_log_wins() {
        let published = Arc::new(AtomicUsize::new(0));
        let now = Instant::now();
        // Here first: another instance's record comes after this one's.
        let mut here = Arbiter::default();
        here.wait("7", 5, now, counting(&published));
        assert_eq!(
            publish_won(here.on_record(&record("gw-a", 5, 1029), true)),
            0
        );
        assert_eq!(published.load(Ordering::Relaxed), 1);
        assert_eq!(
            publish_won(here.on_record(&record("gw-b", 5, 1029), false)),
            0
        );
        assert!(here.is_empty());
        // There first: its reservation covers the number, so this one lost.
        let mut there = Arbiter::default();
        there.wait("7", 5, now, counting(&published));
        let theirs = there.on_record(&record("gw-a", 5, 1029), false);
        assert!(theirs.log.theirs_first, "the modem is theirs on a tie");
        assert_eq!(publish_won(theirs), 0);
        assert_eq!(
            publish_won(there.on_record(&record("gw-b", 5, 1029), true)),
            1
        );
        assert_eq!(
            published.load(Ordering::Relaxed),
            1,
            "nothing more published"
        );
        assert!(there.is_empty());
    }

    #[test]
    fn a_lower_reservation_from_another_instance_does_not_contest() {
        let published = Arc::new(AtomicUsize::new(0));
        let mut b = Arbiter::default();
        b.wait("7", 2000, Instant::now(), counting(&published));
        // Another instance's older reservation, below the number: a real move, not a replay.
        assert_eq!(
            publish_won(b.on_record(&record("gw-a", 900, 1924), false)),
            0
        );
        assert_eq!(
            publish_won(b.on_record(&record("gw-b", 2000, 3024), true)),
            0
        );
        assert_eq!(published.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_later_packet_waits_for_its_own_record_and_stale_waits_expire() {
        let published = Arc::new(AtomicUsize::new(0));
        let now = Instant::now();
        let mut a = Arbiter::default();
        a.wait("7", 5, now, counting(&published));
        a.wait("7", 6, now, counting(&published));
        // The record for 5 decides 5 only.
        assert_eq!(publish_won(a.on_record(&record("gw-a", 5, 1029), true)), 0);
        assert_eq!((published.load(Ordering::Relaxed), a.len()), (1, 1));
        assert_eq!(
            a.expire(now + Duration::from_secs(1), Duration::from_secs(60)),
            0
        );
        assert_eq!(
            a.expire(now + Duration::from_secs(61), Duration::from_secs(60)),
            1
        );
        assert!(a.is_empty());
        assert_eq!(
            published.load(Ordering::Relaxed),
            1,
            "an expired wait is not published"
        );
    }
}

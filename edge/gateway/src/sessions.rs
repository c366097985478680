//! Device sessions: what this gateway knows of each modem it hears, which is where that
//! modem's downlink goes. Every accepted packet is observed here; a session record for the
//! `device-sessions` topic comes out on first sight, when the address, protocol or
//! authentication changes, and otherwise at most once per heartbeat, so the topic's write
//! volume grows with the number of modems, not with their reading rate. A restarted gateway
//! reads the topic back and takes the sessions it held.

use std::net::SocketAddr;
use std::sync::Arc;

use switchyard_protocol::keys::ModemKeys;

use switchyard_schemas::records::{DeviceSession, SessionProtocol};

use crate::elsewhere::Elsewhere;
use crate::session_table::SessionTable;

/// One modem's session, as the logic sees it (the modem id is the table's key; the table
/// stores it packed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Session {
    pub address: SocketAddr,
    pub protocol: SessionProtocol,
    pub authenticated: bool,
    pub first_seen: i64,
    pub last_seen: i64,
    /// `last_seen` of the last record written: the heartbeat runs from here.
    pub written: i64,
    pub address_changes: i64,
    /// Arrival minus sensor time of the readings, smoothed (µs); None before a reading.
    pub clock_offset_us: Option<i64>,
    /// Highest authenticated envelope sequence number accepted (0: none), and the one the
    /// last record written carried.
    pub sequence: u32,
    pub sequence_written: u32,
    /// The address moved since the last record (an unauthenticated move waits for
    /// [`UNAUTHENTICATED_MOVE_INTERVAL_US`]).
    pub address_unwritten: bool,
    /// Numbers up to this one are reserved by the last record handed to the producer
    /// (0: none), and by the last one the broker acknowledged ([`RESERVE_BLOCK`]).
    pub reserved: u32,
    pub reserved_acked: u32,
}

impl Session {
    /// After an accepted packet: reserve the next [`RESERVE_BLOCK`] numbers once half of the
    /// last reservation is used. Returns whether the packet's number is beyond what the
    /// broker has acknowledged (then a record must carry the reservation, and the packet
    /// wait for it).
    fn reserve_for(&mut self, authenticated: bool) -> Reservation {
        if !authenticated || self.sequence == 0 {
            return Reservation::default();
        }
        let renewed = self.sequence.saturating_add(RESERVE_BLOCK / 2) > self.reserved;
        if renewed {
            self.reserved = self.sequence.saturating_add(RESERVE_BLOCK);
        }
        Reservation {
            renewed,
            uncovered: self.sequence > self.reserved_acked,
        }
    }

    /// A record of it is being written now: the heartbeat runs from here, and nothing is
    /// left unwritten.
    fn mark_written(&mut self) {
        self.written = self.last_seen;
        self.sequence_written = self.sequence;
        self.address_unwritten = false;
    }
}

/// One accepted packet, as far as its modem's session is concerned.
#[derive(Debug, Clone, Copy)]
pub struct Heard {
    /// Its source: the modem's downlink address from now on.
    pub address: SocketAddr,
    pub protocol: SessionProtocol,
    /// It carried a valid tag.
    pub authenticated: bool,
    /// When it arrived (µs).
    pub at_us: i64,
    /// A reading's sensor time (µs), for the clock offset.
    pub sensor_time_us: Option<i64>,
    /// The envelope sequence number the replay window accepted (authenticated only).
    pub sequence: Option<u32>,
}

/// Weight of a new sample in the smoothed clock offset (1/8: a few readings move it, one
/// delayed datagram barely does).
const CLOCK_SMOOTHING: i64 = 8;

/// An unauthenticated move is written at most this often (µs): a v1 device whose address
/// flaps, or anyone spoofing its packets, cannot make a record of every packet. The session
/// here follows each move at once; only the record waits.
const UNAUTHENTICATED_MOVE_INTERVAL_US: i64 = 1_000_000;

/// Sequence numbers a session record reserves ahead of the modem's highest: a crashed
/// gateway's successor refuses up to the last reservation, since any of those numbers may
/// have been accepted. A new reservation is written once half of one is used, so the
/// broker has acknowledged it long before a number needs it; a packet whose number is not
/// yet covered by an acknowledged reservation is published only after its record is.
pub const RESERVE_BLOCK: u32 = 1024;

/// What one packet's number did to its session's reservation.
#[derive(Debug, Default)]
struct Reservation {
    /// A new reservation was made: a record must carry it.
    renewed: bool,
    /// The number is beyond what the broker has acknowledged.
    uncovered: bool,
}

/// What accepting one packet did to its modem's session.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// The session record to write, if one is due.
    pub record: Option<DeviceSession>,
    /// The packet's number is covered only by the reservation in `record`: publish what the
    /// packet carries once `record` is read back from the log, and only if no other
    /// instance's record came first ([`crate::arbiter`]), so that nothing of a packet is on
    /// the broker unless a successor, or another instance, would refuse its replay.
    pub uncovered: bool,
}

/// Where another instance's record stands in the log against this instance's waiting
/// packets of the modem ([`crate::arbiter::Decided`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LogOrder {
    /// It came before this instance's record of a number a packet here waits with.
    pub theirs_first: bool,
    /// A packet of the modem waits here for its own record.
    pub ours_unconfirmed: bool,
}

/// What another instance's record about a modem did to this instance's session of it.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// This instance does not hold the modem (or the record is its own).
    NotHeld,
    /// The modem moved to the other instance: its session here ended.
    Yielded,
    /// The record is older than the session here (unauthenticated): nothing changes.
    Kept,
    /// The other instance's claim is not newer than what this one accepted (a replay there):
    /// the session stays, and this record of it is to be written as the answer.
    Refuted(DeviceSession),
}

/// A session that expired ([`Sessions::expire`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    pub modem: u64,
    /// The modem has a key: its record stays, for its replay floor; otherwise it is deleted.
    pub keyed: bool,
}

/// Every session this gateway instance holds.
#[derive(Debug)]
pub struct Sessions {
    instance: String,
    heartbeat_us: i64,
    /// By modem id: the protocol's u64, 8 bytes in the map instead of a string's 24 and its
    /// allocation (modem ids are formatted from u64s; a string that is not one has no session).
    by_modem: SessionTable,
    /// Who holds the modems this instance does not: the same log's other half.
    elsewhere: Elsewhere,
}

fn key(modem_id: &str) -> Option<u64> {
    modem_id.parse().ok()
}

impl Sessions {
    /// Sessions held by gateway `instance`, re-written at most every `heartbeat_us` while
    /// nothing changes.
    pub fn new(instance: &str, heartbeat_us: i64) -> Self {
        Sessions {
            instance: instance.to_string(),
            heartbeat_us,
            by_modem: SessionTable::default(),
            elsewhere: Elsewhere::new(instance),
        }
    }

    /// With a slot for each of `keys`' modems, held in one array instead of a map (see
    /// [`SessionTable`]). Before any session is taken.
    pub fn with_key_slots(self, keys: Arc<ModemKeys>) -> Self {
        Sessions {
            by_modem: SessionTable::for_keys(keys),
            ..self
        }
    }

    /// [`Self::observe_packet`]'s record, for tests of when records are written.
    #[cfg(test)]
    pub fn observe(&mut self, modem_id: &str, heard: Heard) -> Option<DeviceSession> {
        self.observe_packet(modem_id, heard).record
    }

    /// A packet from `modem_id` was accepted. Says which session record to write, if one is
    /// due; the clock offset and the sequence number alone never make one due, they ride on
    /// the next, unless the number needs a new reservation ([`RESERVE_BLOCK`]).
    pub fn observe_packet(&mut self, modem_id: &str, heard: Heard) -> Observed {
        let Heard {
            address,
            protocol,
            authenticated,
            at_us: now_us,
            sensor_time_us,
            sequence,
        } = heard;
        let sample = sensor_time_us.map(|t| now_us.saturating_sub(t));
        let sequence = sequence.unwrap_or(0);
        let Some(id) = key(modem_id) else {
            return Observed::default();
        };
        // One search of the keys for the read and the write back.
        let slot = self.by_modem.locate(id);
        let Some(mut session) = self.by_modem.get_at(slot) else {
            let mut session = Session {
                address,
                protocol,
                authenticated,
                first_seen: now_us,
                last_seen: now_us,
                written: now_us,
                address_changes: 0,
                clock_offset_us: sample,
                sequence,
                sequence_written: sequence,
                address_unwritten: false,
                reserved: 0,
                reserved_acked: 0,
            };
            let uncovered = session.reserve_for(authenticated).uncovered;
            self.by_modem.insert_at(slot, session);
            return Observed {
                record: Some(self.record(modem_id, &session)),
                uncovered,
            };
        };
        let changed = Self::observe_known(&mut session, heard, sample, self.heartbeat_us);
        let Reservation { renewed, uncovered } = session.reserve_for(authenticated);
        let due = changed || renewed || uncovered;
        if due {
            session.mark_written();
        }
        self.by_modem.insert_at(slot, session);
        if !due {
            return Observed::default();
        }
        Observed {
            record: Some(self.record(modem_id, &session)),
            uncovered,
        }
    }

    /// The log decided against this instance's claim on `modem_id`: another instance's
    /// record reserved the number first, so the modem is theirs.
    pub fn lost(&mut self, modem_id: &str) {
        if let Some(id) = key(modem_id) {
            self.by_modem.remove(id);
        }
    }

    /// The broker acknowledged a record of `modem_id`'s session reserving up to `reserved`.
    pub fn acknowledged(&mut self, modem_id: &str, reserved: u32) {
        let Some(id) = key(modem_id) else {
            return;
        };
        let slot = self.by_modem.locate(id);
        if let Some(mut session) = self.by_modem.get_at(slot) {
            if reserved > session.reserved_acked {
                session.reserved_acked = reserved;
                self.by_modem.insert_at(slot, session);
            }
        }
    }

    /// `observe` for a modem already held: updates `session`, says whether a record is due.
    fn observe_known(
        session: &mut Session,
        heard: Heard,
        sample: Option<i64>,
        heartbeat_us: i64,
    ) -> bool {
        let Heard {
            address,
            protocol,
            authenticated,
            at_us: now_us,
            ..
        } = heard;
        let sequence = heard.sequence.unwrap_or(0);
        if let Some(sample) = sample {
            session.clock_offset_us = Some(match session.clock_offset_us {
                Some(smoothed) => smoothed + (sample - smoothed) / CLOCK_SMOOTHING,
                None => sample,
            });
        }
        let moved = session.address != address;
        session.last_seen = session.last_seen.max(now_us);
        if moved {
            session.address = address;
            session.address_changes += 1;
            session.address_unwritten = true;
        }
        let move_due = session.address_unwritten
            && (authenticated
                || session.last_seen - session.written >= UNAUTHENTICATED_MOVE_INTERVAL_US);
        let changed =
            move_due || session.protocol != protocol || session.authenticated != authenticated;
        session.protocol = protocol;
        session.authenticated = authenticated;
        session.sequence = session.sequence.max(sequence);
        changed || session.last_seen - session.written >= heartbeat_us
    }

    /// A record another instance wrote while this one runs, about a modem this one may hold.
    ///
    /// Authenticated on both sides, sequence numbers decide, since only the device can make
    /// a newer one: a record carrying a number above the highest accepted here means the
    /// modem moved there, and its session here ends ([`Claim::Yielded`]). One that is not
    /// newer is a replay of a packet this instance had (or a late record): the session stays,
    /// and the record to write is returned ([`Claim::Refuted`]), so the other instance learns
    /// the higher number, raises its window and steps aside. On a tie the log decides, as it
    /// decides which copy of the packet is published ([`crate::arbiter`]): this instance
    /// yields if their record came first (`log.theirs_first`: this one was still waiting for
    /// its own record of the number when theirs was read). While this instance's own claim
    /// is unconfirmed it answers nothing.
    ///
    /// Otherwise (v1, `--insecure`) time decides: the other instance heard the modem no
    /// earlier than this one took it. "Took" (first heard), not "last heard": each gateway
    /// stamps a packet when it gets to it, so the modem's last packet here can carry a later
    /// stamp than its first one there though it was sent before. A record older than the
    /// take is one written before the modem came here, read late.
    pub fn yield_to(&mut self, record: &DeviceSession, log: LogOrder) -> Claim {
        self.elsewhere.apply(record);
        if record.gateway == self.instance {
            return Claim::NotHeld;
        }
        let Some(id) = key(&record.modem_id) else {
            return Claim::NotHeld;
        };
        let Some(mut mine) = self.by_modem.get(id) else {
            return Claim::NotHeld;
        };
        let theirs = record_sequence(record);
        let numbered =
            record.authenticated && mine.authenticated && theirs > 0 && mine.sequence > 0;
        let moved = if numbered {
            theirs > mine.sequence || (theirs == mine.sequence && log.theirs_first)
        } else {
            mine.first_seen <= record.last_seen
        };
        if moved {
            self.by_modem.remove(id);
            return Claim::Yielded;
        }
        // Not numbered, or this instance's own claim is still unconfirmed (the arbiter will
        // decide it, and a lost claim ends the session): nothing to answer.
        if !numbered || log.ours_unconfirmed {
            return Claim::Kept;
        }
        mine.mark_written();
        self.by_modem.insert(id, mine);
        Claim::Refuted(self.record(&record.modem_id, &mine))
    }

    /// Take a session read back from the topic, if this instance held it and it is newer
    /// than what is known. Returns whether it was taken.
    pub fn restore(&mut self, record: &DeviceSession) -> bool {
        self.elsewhere.apply(record);
        let Some(id) = key(&record.modem_id) else {
            return false;
        };
        if record.gateway != self.instance {
            // Another instance heard the modem later: its NAT mapping points there now.
            self.by_modem.remove(id);
            return false;
        }
        let Ok(address) = record.address.parse() else {
            return false;
        };
        if self
            .by_modem
            .get(id)
            .is_some_and(|s| s.last_seen > record.last_seen)
        {
            return false;
        }
        self.by_modem.insert(
            id,
            Session {
                address,
                protocol: record.protocol,
                authenticated: record.authenticated,
                first_seen: record.first_seen,
                last_seen: record.last_seen,
                written: record.last_seen,
                address_changes: record.address_changes,
                clock_offset_us: record.clock_offset_ms.map(|ms| ms.saturating_mul(1000)),
                // After a crash every reserved number may have been accepted: the floor is
                // the highest this instance can vouch for (so a clean stop later never
                // writes a lower exact number than the crash left).
                sequence: record_floor(record),
                sequence_written: record_floor(record),
                address_unwritten: false,
                reserved: record_floor(record),
                reserved_acked: record_floor(record),
            },
        );
        true
    }

    /// What a cleanly stopping gateway writes last: a record with the exact highest number
    /// (no reservation) of every session whose number moved since its last record or whose
    /// last record reserved more, marked written. Its successor then refuses exactly what
    /// this one accepted, and the modems need no resync.
    pub fn clean_stop_records(&mut self) -> Vec<DeviceSession> {
        let open: Vec<(u64, Session)> = self
            .by_modem
            .iter()
            .filter(|(_, s)| s.sequence != s.sequence_written || s.reserved > s.sequence)
            .collect();
        open.into_iter()
            .map(|(modem_id, mut s)| {
                s.sequence_written = s.sequence;
                s.reserved = s.sequence;
                s.reserved_acked = s.sequence;
                self.by_modem.insert(modem_id, s);
                self.record(&modem_id.to_string(), &s)
            })
            .collect()
    }

    /// Ends every session whose modem was last heard before `heard_before_us`: its route is
    /// gone (a NAT mapping lasts minutes, not this long). Says which ended, and whether each
    /// was a keyed modem's, whose last record must stay on the log for its replay floor.
    pub fn expire(&mut self, heard_before_us: i64) -> Vec<Expired> {
        let expired: Vec<Expired> = self
            .by_modem
            .iter()
            .filter(|(_, s)| s.last_seen < heard_before_us)
            .map(|(modem, _)| Expired {
                modem,
                keyed: self.by_modem.is_keyed(modem),
            })
            .collect();
        for e in &expired {
            self.by_modem.remove(e.modem);
        }
        expired
    }

    /// A tombstone of `modem_id`'s session read back at start: the session expired, and
    /// whatever this instance held of it before ended.
    pub fn restore_tombstone(&mut self, modem_id: &str) {
        self.elsewhere.forget(modem_id);
        if let Some(id) = key(modem_id) {
            self.by_modem.remove(id);
        }
    }

    /// A tombstone of `modem_id`'s session was read back while running. If this instance holds the modem,
    /// the tombstone is another instance's expiry of an older session (or this one's, read
    /// back after the modem spoke again): the session's record is written again with its
    /// next packet, so the log does not lose it.
    pub fn tombstoned(&mut self, modem_id: &str) {
        self.elsewhere.forget(modem_id);
        let Some(id) = key(modem_id) else {
            return;
        };
        let slot = self.by_modem.locate(id);
        if let Some(mut session) = self.by_modem.get_at(slot) {
            session.written = 0;
            self.by_modem.insert_at(slot, session);
        }
    }

    /// Who holds the modems this instance does not hold.
    pub fn elsewhere(&self) -> &Elsewhere {
        &self.elsewhere
    }

    /// Where `modem_id`'s downlink goes.
    pub fn address(&self, modem_id: &str) -> Option<SocketAddr> {
        self.by_modem.get(key(modem_id)?).map(|s| s.address)
    }

    pub fn len(&self) -> usize {
        self.by_modem.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_modem.len() == 0
    }

    fn record(&self, modem_id: &str, s: &Session) -> DeviceSession {
        DeviceSession {
            modem_id: modem_id.to_string(),
            gateway: self.instance.clone(),
            address: s.address.to_string(),
            protocol: s.protocol,
            authenticated: s.authenticated,
            first_seen: s.first_seen,
            last_seen: s.last_seen,
            address_changes: s.address_changes,
            clock_offset_ms: s.clock_offset_us.map(|us| us.div_euclid(1000)),
            sequence: (s.sequence > 0).then_some(i64::from(s.sequence)),
            sequence_reserved: (s.reserved > s.sequence).then_some(i64::from(s.reserved)),
        }
    }
}

/// The number a gateway reading `record` must refuse up to (with every one before it): its
/// reservation, or its exact highest number when it reserves nothing; 0 for none.
pub fn record_floor(record: &DeviceSession) -> u32 {
    record_reservation(record)
        .unwrap_or(0)
        .max(record_sequence(record))
}

/// A record's reservation, if it carries one (in range).
pub fn record_reservation(record: &DeviceSession) -> Option<u32> {
    record.sequence_reserved.and_then(|s| u32::try_from(s).ok())
}

/// A record's sequence number, 0 when it has none (or one out of range).
pub fn record_sequence(record: &DeviceSession) -> u32 {
    record
        .sequence
        .and_then(|s| u32::try_from(s).ok())
        .unwrap_or(0)
}

/// A record of `modem` held by `gateway`: authenticated, no numbers yet. For tests of
/// what reads records.
#[cfg(test)]
pub(crate) fn test_record(modem: &str, gateway: &str) -> DeviceSession {
    DeviceSession {
        modem_id: modem.into(),
        gateway: gateway.into(),
        address: "127.0.0.1:5000".into(),
        protocol: SessionProtocol::Envelope,
        authenticated: true,
        first_seen: 1,
        last_seen: 2,
        address_changes: 0,
        clock_offset_ms: None,
        sequence: None,
        sequence_reserved: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn addr(port: u16) -> SocketAddr {
        ([198, 51, 100, 7], port).into()
    }

    fn heard(
        address: SocketAddr,
        protocol: SessionProtocol,
        authenticated: bool,
        at_us: i64,
        sensor_time_us: Option<i64>,
        sequence: Option<u32>,
    ) -> Heard {
        Heard {
            address,
            protocol,
            authenticated,
            at_us,
            sensor_time_us,
            sequence,
        }
    }

    #[test]
    fn writes_on_first_sight_on_a_move_and_at_most_once_per_heartbeat() {
        let mut s = Sessions::new("gw-a", 30 * S);
        let first = s
            .observe(
                "7",
                heard(addr(4000), SessionProtocol::V1, false, 100 * S, None, None),
            )
            .expect("first sight is written");
        assert_eq!(
            (
                first.gateway.as_str(),
                first.address.as_str(),
                first.first_seen
            ),
            ("gw-a", "198.51.100.7:4000", 100 * S)
        );
        // A reading every 100 ms for a minute: two heartbeats, not 600 records.
        let written: Vec<DeviceSession> = (1..=600)
            .filter_map(|i| {
                s.observe(
                    "7",
                    heard(
                        addr(4000),
                        SessionProtocol::V1,
                        false,
                        100 * S + i * S / 10,
                        Some(100 * S + i * S / 10 - S / 20),
                        None,
                    ),
                )
            })
            .collect();
        assert_eq!(written.len(), 2, "{written:?}");
        assert_eq!(written[0].last_seen, 130 * S);
        // NAT rebinding: written at once, counted.
        let moved = s
            .observe(
                "7",
                heard(addr(4001), SessionProtocol::V1, false, 161 * S, None, None),
            )
            .expect("a move is written at once");
        assert_eq!((moved.address_changes, moved.first_seen), (1, 100 * S));
        assert_eq!(s.address("7"), Some(addr(4001)));
        assert_eq!(s.len(), 1);
    }

    /// Issue 25 (9): a v1 device whose address flaps (two NAT paths, or anyone spoofing
    /// its unauthenticated packets) wrote a session record on every packet. Now an
    /// unauthenticated move is written at most once per second, the last address included;
    /// an authenticated move, which cannot be spoofed, is still written at once.
    #[test]
    fn a_flapping_unauthenticated_address_writes_at_most_one_record_a_second() {
        let mut s = Sessions::new("gw-a", 30 * S);
        let v1 = |port, t| heard(addr(port), SessionProtocol::V1, false, t, None, None);
        s.observe("7", v1(4000, 100 * S)).expect("first sight");
        // Every 10 ms for 10 s, alternately from two ports.
        let written: Vec<DeviceSession> = (1..=1000)
            .filter_map(|i| s.observe("7", v1(4000 + (i % 2) as u16, 100 * S + i * S / 100)))
            .collect();
        assert!(
            (1..=10).contains(&written.len()),
            "{} records for 10 s of flapping",
            written.len()
        );
        // It settles on one port: that address is written within two seconds (the last write
        // is kept in whole seconds).
        let settled: Vec<DeviceSession> = (1..=300)
            .filter_map(|i| s.observe("7", v1(4001, 110 * S + i * S / 100)))
            .collect();
        assert_eq!(settled.len(), 1, "{settled:?}");
        assert_eq!(settled[0].address, "198.51.100.7:4001");

        let mut a = Sessions::new("gw-a", 30 * S);
        let signed = |port, t| heard(addr(port), SessionProtocol::Envelope, true, t, None, None);
        a.observe("8", signed(5000, 100 * S)).expect("first sight");
        assert!(a.observe("8", signed(5001, 100 * S + 10_000)).is_some());
        assert!(a.observe("8", signed(5000, 100 * S + 20_000)).is_some());
    }

    #[test]
    fn the_clock_offset_is_smoothed_and_rides_on_the_next_record() {
        let mut s = Sessions::new("gw-a", 30 * S);
        // A device whose clock is 2 s behind: readings arrive 2 s after their sensor time.
        let first = s
            .observe(
                "9",
                heard(
                    addr(1),
                    SessionProtocol::V1,
                    false,
                    10 * S,
                    Some(8 * S),
                    None,
                ),
            )
            .expect("first sight");
        assert_eq!(first.clock_offset_ms, Some(2_000));
        // One reading delayed by 10 s moves the smoothed offset by an eighth of the jump.
        assert!(
            s.observe(
                "9",
                heard(
                    addr(1),
                    SessionProtocol::V1,
                    false,
                    21 * S,
                    Some(11 * S),
                    None
                )
            )
            .is_none(),
            "an offset alone writes nothing"
        );
        let later = s
            .observe(
                "9",
                heard(addr(1), SessionProtocol::V1, false, 41 * S, None, None),
            )
            .expect("heartbeat");
        assert_eq!(later.clock_offset_ms, Some(3_000));
    }

    #[test]
    fn a_restart_takes_back_only_its_own_sessions_and_the_newest() {
        let mut before = Sessions::new("gw-a", 30 * S);
        let mine = before
            .observe(
                "1",
                heard(
                    addr(5000),
                    SessionProtocol::Envelope,
                    true,
                    10 * S,
                    None,
                    None,
                ),
            )
            .expect("written");
        let mut other = Sessions::new("gw-b", 30 * S);
        let theirs = other
            .observe(
                "2",
                heard(
                    addr(6000),
                    SessionProtocol::Envelope,
                    true,
                    10 * S,
                    None,
                    None,
                ),
            )
            .expect("written");
        let moved_away = other
            .observe(
                "1",
                heard(
                    addr(6001),
                    SessionProtocol::Envelope,
                    true,
                    20 * S,
                    None,
                    None,
                ),
            )
            .expect("written");

        let mut after = Sessions::new("gw-a", 30 * S);
        assert!(after.restore(&mine));
        assert!(!after.restore(&theirs));
        assert_eq!(after.address("1"), Some(addr(5000)));
        assert_eq!(after.address("2"), None);
        // The modem later spoke to gw-b: gw-a no longer holds it.
        assert!(!after.restore(&moved_away));
        assert_eq!(after.address("1"), None);
        assert!(after.is_empty());
    }

    #[test]
    fn a_running_instance_yields_a_modem_only_to_a_later_record_of_another() {
        let mut a = Sessions::new("gw-a", 30 * S);
        a.observe(
            "1",
            heard(
                addr(5000),
                SessionProtocol::Envelope,
                true,
                20 * S,
                None,
                None,
            ),
        );
        let mut b = Sessions::new("gw-b", 30 * S);
        let older = b
            .observe(
                "1",
                heard(
                    addr(6000),
                    SessionProtocol::Envelope,
                    true,
                    10 * S,
                    None,
                    None,
                ),
            )
            .expect("written");
        let later = b
            .observe(
                "1",
                heard(
                    addr(6001),
                    SessionProtocol::Envelope,
                    true,
                    25 * S,
                    None,
                    None,
                ),
            )
            .expect("written");
        let own = a
            .observe(
                "1",
                heard(
                    addr(5001),
                    SessionProtocol::Envelope,
                    true,
                    21 * S,
                    None,
                    None,
                ),
            )
            .expect("a move here is written");
        assert_eq!(
            a.yield_to(&own, LogOrder::default()),
            Claim::NotHeld,
            "its own records change nothing"
        );
        assert_eq!(
            a.yield_to(&older, LogOrder::default()),
            Claim::Kept,
            "gw-b heard it before gw-a took it"
        );
        assert_eq!(a.address("1"), Some(addr(5001)));
        assert_eq!(
            a.yield_to(&later, LogOrder::default()),
            Claim::Yielded,
            "the modem moved to gw-b"
        );
        assert_eq!(a.address("1"), None);
    }

    /// The race two_gateways_share_one_kafka... lost under load: the modem's last packet
    /// to gw-a (an ACK) was stamped a moment after its first packet to gw-b, because each
    /// gateway stamps a packet when it gets to it. gw-b heard the modem after gw-a took it,
    /// so the modem moved, whatever gw-a's last packet says.
    #[test]
    fn a_modem_heard_elsewhere_after_this_instance_took_it_has_moved_even_if_heard_here_since() {
        let at = |port, t| heard(addr(port), SessionProtocol::Envelope, true, t, None, None);
        let mut a = Sessions::new("gw-a", 30 * S);
        a.observe("1", at(5000, 10 * S));
        let mut b = Sessions::new("gw-b", 30 * S);
        let first_at_b = b.observe("1", at(6000, 20 * S)).expect("first sight");
        a.observe("1", at(5000, 20 * S + 3_000));
        assert_eq!(
            a.yield_to(&first_at_b, LogOrder::default()),
            Claim::Yielded,
            "the modem moved to gw-b"
        );
        assert_eq!(a.address("1"), None);
    }

    const THEIRS_FIRST: LogOrder = LogOrder {
        theirs_first: true,
        ours_unconfirmed: true,
    };

    /// Issue 25 (2): a replay to another instance must not take the modem from its holder.
    #[test]
    fn a_claim_not_newer_than_the_holders_number_is_refuted_and_the_claimant_steps_aside() {
        let at = |port, t, seq| {
            heard(
                addr(port),
                SessionProtocol::Envelope,
                true,
                t,
                None,
                Some(seq),
            )
        };
        let mut a = Sessions::new("gw-a", 30 * S);
        a.observe("1", at(5000, 10 * S, 1)).expect("first sight");
        a.acknowledged("1", 1 + RESERVE_BLOCK);
        for seq in 2..=4 {
            assert!(a
                .observe("1", at(5000, 10 * S + i64::from(seq), seq))
                .is_none());
        }
        // Packet 3, replayed to gw-b: gw-b takes it (its window knew only number 1).
        let mut b = Sessions::new("gw-b", 30 * S);
        let claim = b
            .observe("1", at(6666, 20 * S, 3))
            .expect("first sight at gw-b");
        let Claim::Refuted(answer) = a.yield_to(&claim, LogOrder::default()) else {
            panic!("gw-a must refute a claim of number 3 after accepting 4");
        };
        assert_eq!(
            (answer.gateway.as_str(), answer.sequence),
            ("gw-a", Some(4))
        );
        assert_eq!(a.address("1"), Some(addr(5000)), "gw-a keeps the modem");
        assert_eq!(
            b.yield_to(&answer, LogOrder::default()),
            Claim::Yielded,
            "gw-b steps aside"
        );
        assert!(b.is_empty());
        // A tie (number 4 replayed): the instance that took the modem first keeps it.
        let tie = Sessions::new("gw-b", 30 * S)
            .observe("1", at(6666, 21 * S, 4))
            .expect("first sight");
        assert!(matches!(
            a.yield_to(&tie, LogOrder::default()),
            Claim::Refuted(_)
        ));
        // The same tie, but their record of 4 came first in the log: gw-a yields, as its
        // copy of packet 4 is withheld.
        let mut c = Sessions::new("gw-a", 30 * S);
        c.observe("1", at(5000, 10 * S, 4)).expect("first sight");
        assert_eq!(c.yield_to(&tie, THEIRS_FIRST), Claim::Yielded);
        // An older record while this instance's own claim is unconfirmed: no answer (the
        // arbiter decides), where a confirmed holder would refute it.
        let unconfirmed = LogOrder {
            theirs_first: false,
            ours_unconfirmed: true,
        };
        assert_eq!(a.yield_to(&claim, unconfirmed), Claim::Kept);
        c.lost("1");
        assert!(c.is_empty(), "a lost claim ends the session");
        // The device itself moves: number 5 at gw-b, and gw-a yields.
        let moved = Sessions::new("gw-b", 30 * S)
            .observe("1", at(6000, 22 * S, 5))
            .expect("first sight");
        assert_eq!(a.yield_to(&moved, LogOrder::default()), Claim::Yielded);
    }

    #[test]
    fn sequence_numbers_ride_on_records_and_a_clean_stop_writes_the_exact_last() {
        let mut s = Sessions::new("gw-a", 30 * S);
        let at = |t, seq| heard(addr(1), SessionProtocol::Envelope, true, t, None, Some(seq));
        let first = s.observe_packet("5", at(S, 1));
        let record = first.record.expect("first sight");
        assert_eq!(
            (record.sequence, record.sequence_reserved, first.uncovered),
            (Some(1), Some(1 + i64::from(RESERVE_BLOCK)), true),
            "the first record reserves a block, and the packet waits for it"
        );
        // Until the broker acknowledges it, each packet needs a record to wait for.
        let waiting = s.observe_packet("5", at(2 * S, 2));
        assert!(waiting.uncovered && waiting.record.is_some());
        s.acknowledged("5", 1 + RESERVE_BLOCK);
        assert_eq!(
            s.observe_packet("5", at(3 * S, 3)),
            Observed {
                record: None,
                uncovered: false
            },
            "covered: no record, published at once"
        );
        let last = s.clean_stop_records();
        assert_eq!(last.len(), 1);
        assert_eq!(
            (
                last[0].modem_id.as_str(),
                last[0].sequence,
                last[0].sequence_reserved
            ),
            ("5", Some(3), None),
            "exact: the successor refuses 3 and what came before, nothing more"
        );
        assert!(s.clean_stop_records().is_empty(), "written once");
        let mut after = Sessions::new("gw-a", 30 * S);
        assert!(after.restore(&last[0]));
        assert_eq!(record_floor(&last[0]), 3);
        // Restored from an exact record: the next number needs a new reservation.
        assert!(after.observe_packet("5", at(4 * S, 4)).uncovered);
    }

    /// Found in review: restored from a crash's record (3, reserving 1027), a session that
    /// heard nothing more wrote (3, exact) at its clean stop, lowering every successor's
    /// floor below numbers the crashed instance may have accepted.
    #[test]
    fn a_clean_stop_after_a_crash_never_lowers_the_floor() {
        let at = |seq| heard(addr(1), SessionProtocol::Envelope, true, S, None, Some(seq));
        let crashed = Sessions::new("gw-a", 30 * S)
            .observe("5", at(3))
            .expect("first sight");
        assert_eq!(record_floor(&crashed), 3 + RESERVE_BLOCK);
        let mut after = Sessions::new("gw-a", 30 * S);
        assert!(after.restore(&crashed));
        let written: Vec<u32> = after
            .clean_stop_records()
            .iter()
            .map(record_floor)
            .collect();
        assert!(
            written.iter().all(|floor| *floor >= 3 + RESERVE_BLOCK),
            "{written:?}"
        );
    }

    #[test]
    fn a_new_reservation_is_written_when_half_of_one_is_used() {
        let mut s = Sessions::new("gw-a", 3600 * S);
        let at = |seq: u32| {
            heard(
                addr(1),
                SessionProtocol::Envelope,
                true,
                S + i64::from(seq),
                None,
                Some(seq),
            )
        };
        let mut reservations = Vec::new();
        for seq in 1..=2 * RESERVE_BLOCK {
            let observed = s.observe_packet("5", at(seq));
            if let Some(record) = observed.record {
                let reserved = record.sequence_reserved.expect("reserves") as u32;
                assert!(reserved >= seq + RESERVE_BLOCK / 2, "ahead of the number");
                s.acknowledged("5", reserved);
                reservations.push((seq, reserved, observed.uncovered));
            }
        }
        let half = RESERVE_BLOCK / 2;
        assert_eq!(
            reservations,
            vec![
                (1, 1 + RESERVE_BLOCK, true),
                (2 + half, 2 + half + RESERVE_BLOCK, false),
                (3 + 2 * half, 3 + 2 * half + RESERVE_BLOCK, false),
                (4 + 3 * half, 4 + 3 * half + RESERVE_BLOCK, false),
            ],
            "one record per half block; only the first packet waited"
        );
        // A record whose writer crashed: its successor refuses up to the reservation.
        let crashed = s.observe_packet("5", at(2 * RESERVE_BLOCK + 1));
        assert_eq!(crashed.record, None);
        let last_written = reservations.last().expect("written").1;
        let mut record = Sessions::new("gw-a", 30 * S)
            .observe("5", at(1))
            .expect("a record");
        record.sequence = Some(4 + 3 * i64::from(half));
        record.sequence_reserved = Some(i64::from(last_written));
        assert_eq!(record_floor(&record), last_written);
        assert!(last_written > 2 * RESERVE_BLOCK + 1);
    }

    #[test]
    fn a_modem_id_that_is_not_a_u64_has_no_session() {
        let mut s = Sessions::new("gw-a", 30 * S);
        let at = heard(addr(4000), SessionProtocol::V1, false, 100 * S, None, None);
        assert_eq!(s.observe("not-a-modem", at), None);
        let mut record = s
            .observe("18446744073709551615", at)
            .expect("u64::MAX is one");
        assert_eq!(record.modem_id, "18446744073709551615");
        record.modem_id = "x".into();
        assert!(!s.restore(&record));
        assert_eq!((s.len(), s.address("x")), (1, None));
    }

    #[test]
    fn sessions_not_heard_for_the_expiry_end_and_say_whether_their_modem_is_keyed() {
        let keys = switchyard_protocol::keys::parse_keys("7 00\n").expect("keys");
        let mut s = Sessions::new("gw-a", 30 * S).with_key_slots(Arc::new(keys));
        let envelope = SessionProtocol::Envelope;
        s.observe("7", heard(addr(1), envelope, true, 100 * S, None, Some(1)));
        s.observe(
            "8",
            heard(addr(2), SessionProtocol::V1, false, 100 * S, None, None),
        );
        s.observe("9", heard(addr(3), envelope, false, 150 * S, None, None));
        assert_eq!(s.expire(100 * S), vec![], "heard at the limit: kept");
        let mut expired = s.expire(120 * S);
        expired.sort_by_key(|e| e.modem);
        assert_eq!(
            expired,
            vec![
                Expired {
                    modem: 7,
                    keyed: true
                },
                Expired {
                    modem: 8,
                    keyed: false
                }
            ]
        );
        assert_eq!((s.len(), s.address("7"), s.address("8")), (1, None, None));
        assert_eq!(s.address("9"), Some(addr(3)));
        // Heard again: a new session, written at once.
        let again = s.observe(
            "8",
            heard(addr(4), SessionProtocol::V1, false, 200 * S, None, None),
        );
        assert_eq!(again.map(|r| r.first_seen), Some(200 * S));
    }

    #[test]
    fn a_tombstone_of_a_session_held_here_makes_its_record_due_again() {
        let mut s = Sessions::new("gw-a", 30 * S);
        let v1 = SessionProtocol::V1;
        s.observe("8", heard(addr(2), v1, false, 100 * S, None, None));
        assert!(s
            .observe("8", heard(addr(2), v1, false, 101 * S, None, None))
            .is_none());
        s.tombstoned("8");
        let rewritten = s.observe("8", heard(addr(2), v1, false, 102 * S, None, None));
        assert_eq!(rewritten.map(|r| r.first_seen), Some(100 * S));
        s.restore_tombstone("8");
        assert_eq!(s.len(), 0);
    }
}

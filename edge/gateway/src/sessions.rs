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
mod tests;

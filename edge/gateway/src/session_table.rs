//! Where the sessions live: modem id -> [`Session`], each stored in 56 bytes instead of the
//! 104 of the struct as the logic sees it. A gateway holds every modem it serves, so this
//! table is most of its memory.
//!
//! With keys (the default), every keyed modem has a slot in one array, at its position
//! among the keys: no map entry, no map doubling, 56 bytes a keyed modem whether or not it
//! has been heard (56 MB at a million). Modems without a key (the legacy v1 id,
//! `--insecure`) are in a map: 56 bytes plus its 8-byte key and a control byte a slot, in a
//! map that doubles.
//!
//! What makes an entry small: an IPv4 address in 6 bytes, with the rare IPv6 one in a side
//! map; the time of the last write in whole seconds (u32, until 2106), which can only make a
//! heartbeat up to a second late; counts in u32; no `Option` tags.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;

use switchyard_protocol::keys::ModemKeys;
use switchyard_schemas::records::SessionProtocol;

use crate::sessions::Session;

const AUTHENTICATED: u8 = 1;
const IPV6: u8 = 2;
const ADDRESS_UNWRITTEN: u8 = 4;
/// The slot holds a session (a keyed modem's slot exists before it is heard).
const HELD: u8 = 8;
/// `clock_offset_us` when there has been no reading.
const NO_OFFSET: i64 = i64::MIN;

#[derive(Debug, Clone, Copy)]
struct Packed {
    first_seen: i64,
    last_seen: i64,
    clock_offset_us: i64,
    /// The IPv4 address; 0 when the address is IPv6 (then it is in `SessionTable::v6`).
    ipv4: u32,
    /// When the session was last written, in seconds since the epoch, rounded up.
    written_s: u32,
    address_changes: u32,
    sequence: u32,
    sequence_written: u32,
    reserved: u32,
    reserved_acked: u32,
    port: u16,
    protocol: SessionProtocol,
    flags: u8,
}

impl Packed {
    /// A keyed modem's slot before it is heard.
    const EMPTY: Packed = Packed {
        first_seen: 0,
        last_seen: 0,
        clock_offset_us: NO_OFFSET,
        ipv4: 0,
        written_s: 0,
        address_changes: 0,
        sequence: 0,
        sequence_written: 0,
        reserved: 0,
        reserved_acked: 0,
        port: 0,
        protocol: SessionProtocol::V1,
        flags: 0,
    };
}

/// A modem's place in the table: its position among the keys, or none (in the map).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    id: u64,
    keyed: Option<usize>,
}

#[derive(Debug, Default)]
pub(crate) struct SessionTable {
    keys: Arc<ModemKeys>,
    /// A slot per keyed modem, at its position among the keys.
    keyed: Vec<Packed>,
    /// How many of `keyed` hold a session.
    keyed_held: usize,
    /// Modems without a key.
    unkeyed: HashMap<u64, Packed>,
    v6: HashMap<u64, SocketAddrV6>,
}

impl SessionTable {
    /// A table with a slot for each of `keys`' modems.
    pub fn for_keys(keys: Arc<ModemKeys>) -> Self {
        SessionTable {
            keyed: vec![Packed::EMPTY; keys.len()],
            keys,
            ..SessionTable::default()
        }
    }

    /// Where `id`'s session is kept: found once (a search of the keys), then read and
    /// written through as often as the caller needs.
    pub fn locate(&self, id: u64) -> Slot {
        Slot {
            id,
            keyed: self.keys.position(id),
        }
    }

    pub fn get(&self, id: u64) -> Option<Session> {
        self.get_at(self.locate(id))
    }

    pub fn get_at(&self, slot: Slot) -> Option<Session> {
        let packed = match slot.keyed {
            Some(at) => self.keyed.get(at).filter(|p| p.flags & HELD != 0)?,
            None => self.unkeyed.get(&slot.id)?,
        };
        self.unpack(slot.id, packed)
    }

    /// Every session held, unpacked.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Session)> + '_ {
        let keyed = self
            .keyed
            .iter()
            .enumerate()
            .filter(|(_, p)| p.flags & HELD != 0)
            .filter_map(|(at, p)| Some((self.keys.id_at(at)?, p)));
        let unkeyed = self.unkeyed.iter().map(|(id, p)| (*id, p));
        keyed
            .chain(unkeyed)
            .filter_map(|(id, p)| Some((id, self.unpack(id, p)?)))
    }

    fn unpack(&self, id: u64, p: &Packed) -> Option<Session> {
        let address = if p.flags & IPV6 != 0 {
            SocketAddr::V6(*self.v6.get(&id)?)
        } else {
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(p.ipv4), p.port))
        };
        Some(Session {
            address,
            protocol: p.protocol,
            authenticated: p.flags & AUTHENTICATED != 0,
            first_seen: p.first_seen,
            last_seen: p.last_seen,
            written: i64::from(p.written_s) * 1_000_000,
            address_changes: i64::from(p.address_changes),
            clock_offset_us: (p.clock_offset_us != NO_OFFSET).then_some(p.clock_offset_us),
            sequence: p.sequence,
            sequence_written: p.sequence_written,
            address_unwritten: p.flags & ADDRESS_UNWRITTEN != 0,
            reserved: p.reserved,
            reserved_acked: p.reserved_acked,
        })
    }

    /// Stores `s`; its last write is rounded up to a whole second (never earlier, so a
    /// heartbeat is never due early; a whole second stays as it is, so nothing creeps).
    pub fn insert(&mut self, id: u64, s: Session) {
        self.insert_at(self.locate(id), s);
    }

    /// [`Self::insert`] at a slot [`Self::locate`] found.
    pub fn insert_at(&mut self, slot: Slot, s: Session) {
        let id = slot.id;
        let mut flags = HELD | if s.authenticated { AUTHENTICATED } else { 0 };
        if s.address_unwritten {
            flags |= ADDRESS_UNWRITTEN;
        }
        let (ipv4, port) = match s.address {
            SocketAddr::V4(a) => {
                // Every packet stores its session: skip the lookup while no modem is on IPv6.
                if !self.v6.is_empty() {
                    self.v6.remove(&id);
                }
                (u32::from(*a.ip()), a.port())
            }
            SocketAddr::V6(a) => {
                self.v6.insert(id, a);
                flags |= IPV6;
                (0, a.port())
            }
        };
        let packed = Packed {
            first_seen: s.first_seen,
            last_seen: s.last_seen,
            clock_offset_us: s
                .clock_offset_us
                .map_or(NO_OFFSET, |o| o.max(NO_OFFSET + 1)),
            ipv4,
            written_s: u32::try_from(u64::try_from(s.written).unwrap_or(0).div_ceil(1_000_000))
                .unwrap_or(u32::MAX),
            address_changes: u32::try_from(s.address_changes.max(0)).unwrap_or(u32::MAX),
            sequence: s.sequence,
            sequence_written: s.sequence_written,
            reserved: s.reserved,
            reserved_acked: s.reserved_acked,
            port,
            protocol: s.protocol,
            flags,
        };
        match slot.keyed.and_then(|at| self.keyed.get_mut(at)) {
            Some(slot) => {
                if slot.flags & HELD == 0 {
                    self.keyed_held += 1;
                }
                *slot = packed;
            }
            None => {
                self.unkeyed.insert(id, packed);
            }
        }
    }

    pub fn remove(&mut self, id: u64) {
        match self.keys.position(id).and_then(|at| self.keyed.get_mut(at)) {
            Some(slot) => {
                if slot.flags & HELD != 0 {
                    self.keyed_held -= 1;
                }
                *slot = Packed::EMPTY;
            }
            None => {
                self.unkeyed.remove(&id);
            }
        }
        self.v6.remove(&id);
    }

    /// Whether `id` is a keyed modem (has a slot among the keys).
    pub fn is_keyed(&self, id: u64) -> bool {
        self.keys.position(id).is_some()
    }

    pub fn len(&self) -> usize {
        self.keyed_held + self.unkeyed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(address: SocketAddr) -> Session {
        Session {
            address,
            protocol: SessionProtocol::Envelope,
            authenticated: true,
            first_seen: 1_700_000_000_000_000,
            last_seen: 1_700_000_090_000_000,
            written: 1_700_000_060_000_000,
            address_changes: 3,
            clock_offset_us: Some(-2_500),
            sequence: 41,
            sequence_written: 40,
            address_unwritten: true,
            reserved: 1064,
            reserved_acked: 552,
        }
    }

    #[test]
    fn a_session_is_56_bytes() {
        assert_eq!(std::mem::size_of::<Packed>(), 56);
    }

    /// The two layouts: every modem in the map; 7 and 8 in keyed slots (9 has no key).
    fn layouts() -> [SessionTable; 2] {
        let keys = switchyard_protocol::keys::parse_keys("7 00\n8 01\n100 02\n").expect("keys");
        [
            SessionTable::default(),
            SessionTable::for_keys(Arc::new(keys)),
        ]
    }

    #[test]
    fn sessions_come_back_as_stored_ipv4_and_ipv6() {
        for mut table in layouts() {
            stored_sessions_come_back(&mut table);
        }
    }

    fn stored_sessions_come_back(table: &mut SessionTable) {
        let v4 = session(([198, 51, 100, 7], 4000).into());
        let v6 = Session {
            clock_offset_us: None,
            authenticated: false,
            protocol: SessionProtocol::V1,
            ..session(SocketAddr::V6(SocketAddrV6::new(
                "2001:db8::7".parse().expect("an IPv6 address"),
                4001,
                0,
                3,
            )))
        };
        table.insert(7, v4);
        table.insert(8, v6);
        assert_eq!(table.get(7), Some(v4));
        assert_eq!(table.get(8), Some(v6));
        // Moving from IPv6 to IPv4 leaves nothing behind in the side map.
        table.insert(8, v4);
        assert_eq!((table.get(8), table.v6.len()), (Some(v4), 0));
        table.insert(9, v6);
        table.remove(9);
        assert_eq!((table.get(9), table.v6.len(), table.len()), (None, 0, 2));
        // A keyed modem removed is gone, and counted out once however often it is removed.
        table.remove(7);
        table.remove(7);
        assert_eq!((table.get(7), table.len()), (None, 1));
        assert_eq!(
            table.get(100),
            None,
            "a keyed modem never heard has no session"
        );
        table.insert(100, v4);
        table.insert(9, v4);
        let mut held: Vec<u64> = table.iter().map(|(id, _)| id).collect();
        held.sort_unstable();
        assert_eq!((held, table.len()), (vec![8, 9, 100], 3));
    }

    #[test]
    fn keyed_modems_take_no_map_entry() {
        let [_, mut table] = layouts();
        table.insert(7, session(([198, 51, 100, 7], 4000).into()));
        table.insert(9, session(([198, 51, 100, 9], 4000).into()));
        assert_eq!((table.keyed_held, table.unkeyed.len()), (1, 1));
    }

    #[test]
    fn the_last_write_rounds_up_to_a_second_once() {
        let [_, mut table] = layouts();
        let s = Session {
            written: 1_700_000_060_000_400,
            ..session(([198, 51, 100, 7], 4000).into())
        };
        table.insert(7, s);
        let back = table.get(7).expect("stored");
        assert_eq!(back.written, 1_700_000_061_000_000);
        // Stored again as read (as every packet does), it stays where it is.
        table.insert(7, back);
        assert_eq!(table.get(7), Some(back));
    }
}

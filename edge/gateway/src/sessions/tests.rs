//! The session table's rules, one by one.

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

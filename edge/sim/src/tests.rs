use proptest::prelude::*;
use switchyard_protocol::{verify, AckStatus, Carrier, Envelope, Frame, Packet};

use super::*;

const KEY: &[u8] = b"modem-42-key";

fn sim(key: Option<&[u8]>, v1: bool) -> Applet {
    Applet::new(SimConfig {
        iccid: "8901260000000000042".into(),
        modem_id: 42,
        key: key.map(<[u8]>::to_vec),
        v1,
        carrier: Carrier::AtAndT,
    })
}

fn sw(r: &[u8]) -> [u8; 2] {
    [r[r.len() - 2], r[r.len() - 1]]
}

/// FETCH the pending command, answer it, and return it.
fn fetch_and_respond(applet: &mut Applet) -> Vec<u8> {
    let r = applet.transmit(&[0x80, 0x12, 0x00, 0x00, 0x00]);
    assert_eq!(sw(&r), sw::OK, "{r:02x?}");
    let cmd = r[..r.len() - 2].to_vec();
    let tr = terminal_response_for(&cmd).expect("a proactive command");
    let r = applet.transmit(&tr);
    assert!(matches!(sw(&r), [0x90, 0x00] | [0x91, _]), "{r:02x?}");
    cmd
}

fn push(applet: &mut Applet, packet: &[u8]) -> Vec<u8> {
    let mut apdu = vec![0x00, 0xF4, 0x00, 0x00, packet.len() as u8];
    apdu.extend_from_slice(packet);
    applet.transmit(&apdu)
}

/// Power-on's two commands: OPEN CHANNEL, then the SEND DATA reporting the carrier.
fn open_channel(applet: &mut Applet) {
    let cmd = fetch_and_respond(applet);
    assert_eq!(cmd[0], 0xD0);
    assert_eq!(&cmd[4..7], &[1, 0x40, 0x01], "OPEN CHANNEL comes first");
    assert!(applet.channel_open());
    let report = send_data_payload(&fetch_and_respond(applet)).expect("SEND DATA");
    let frame = Frame::decode(&report).expect("a packet");
    assert_eq!(
        frame.packet,
        Packet::CarrierSwitchAck {
            status: AckStatus::Ack,
            carrier: applet.carrier()
        },
        "then the carrier, reported"
    );
    assert_eq!(frame.envelope.and_then(|e| e.request_id), None);
}

#[test]
fn power_on_asks_for_a_channel_and_files_read_back() {
    let mut applet = sim(None, false);
    let r = applet.transmit(&[0x00, 0xA4, 0x00, 0x04, 0x02, 0x2F, 0xE2]);
    assert_eq!(sw(&r)[0], 0x91, "a proactive command is announced");
    let r = applet.transmit(&[0x00, 0xB0, 0x00, 0x00, 0x0A]);
    assert_eq!(
        &r[..10],
        &hex::decode("981062000000000040f2").expect("hex")[..],
        "ICCID in swapped BCD"
    );
    open_channel(&mut applet);
    applet.transmit(&[0x00, 0xA4, 0x00, 0x04, 0x02, 0x6F, 0x07]);
    let r = applet.transmit(&[0x00, 0xB0, 0x00, 0x00, 0x09]);
    assert_eq!(sw(&r), sw::OK);
    assert_eq!(
        &r[..9],
        &hex::decode("083901140000000010").expect("hex")[..],
        "IMSI 310410000000001 per TS 31.102"
    );
    assert_eq!(
        sw(&applet.transmit(&[0x00, 0xA4, 0x00, 0x04, 0x02, 0x12, 0x34])),
        sw::FILE_NOT_FOUND
    );
}

#[test]
fn a_perform_switches_the_carrier_and_the_ack_is_sent_through_a_proactive_command() {
    let mut applet = sim(None, true);
    open_channel(&mut applet);
    let r = push(
        &mut applet,
        &Packet::CarrierSwitchPerform(Carrier::Verizon)
            .encode()
            .expect("encode"),
    );
    assert_eq!(sw(&r)[0], 0x91);
    assert_eq!(applet.carrier(), Carrier::Verizon);
    assert_eq!(applet.imsi(), "311480000000001");
    let cmd = fetch_and_respond(&mut applet);
    let payload = send_data_payload(&cmd).expect("SEND DATA");
    assert_eq!(
        Packet::decode(&payload).expect("v1 ACK"),
        Packet::CarrierSwitchAck {
            status: AckStatus::Ack,
            carrier: Carrier::Verizon
        }
    );
}

#[test]
fn an_unknown_carrier_is_nacked_and_the_carrier_stays() {
    let mut applet = sim(None, true);
    open_channel(&mut applet);
    push(&mut applet, &[0x10, 0x30]);
    assert_eq!(applet.carrier(), Carrier::AtAndT);
    let payload = send_data_payload(&fetch_and_respond(&mut applet)).expect("SEND DATA");
    assert_eq!(
        Packet::decode(&payload).expect("ack"),
        Packet::CarrierSwitchAck {
            status: AckStatus::Nack,
            carrier: Carrier::AtAndT
        }
    );
}

#[test]
fn enveloped_switches_are_checked_and_answered_with_the_request_id_signed() {
    let mut applet = sim(Some(KEY), false);
    open_channel(&mut applet);
    let perform = Frame {
        envelope: Some(Envelope {
            modem_id: 42,
            sequence: 1,
            request_id: Some(0xabc),
            auth_tag: None,
        }),
        packet: Packet::CarrierSwitchPerform(Carrier::TMobile),
    };
    // Forged (wrong key) and for another modem: refused, nothing changes.
    assert_eq!(
        sw(&push(
            &mut applet,
            &perform.encode_signed(b"wrong").expect("sign")
        )),
        sw::SECURITY
    );
    let mut other = perform.clone();
    if let Some(e) = other.envelope.as_mut() {
        e.modem_id = 43;
    }
    assert_eq!(
        sw(&push(&mut applet, &other.encode_signed(KEY).expect("sign"))),
        sw::SECURITY
    );
    assert_eq!(applet.carrier(), Carrier::AtAndT);

    push(&mut applet, &perform.encode_signed(KEY).expect("sign"));
    assert_eq!(applet.carrier(), Carrier::TMobile);
    let payload = send_data_payload(&fetch_and_respond(&mut applet)).expect("SEND DATA");
    let ack = verify(&payload, KEY).expect("signed by the SIM");
    let env = ack.envelope.expect("enveloped");
    assert_eq!((env.modem_id, env.request_id), (42, Some(0xabc)));
    assert_eq!(
        ack.packet,
        Packet::CarrierSwitchAck {
            status: AckStatus::Ack,
            carrier: Carrier::TMobile
        }
    );
}

#[test]
fn uplink_packets_go_out_enveloped_and_signed_with_increasing_sequence() {
    let mut applet = sim(Some(KEY), false);
    open_channel(&mut applet);
    // The original system's "iot-data imu 42" packet.
    let reading =
        Packet::decode(&hex::decode("000000000157e7503000000000040000002a").expect("hex"))
            .expect("seed vector");
    let mut sequences = Vec::new();
    for _ in 0..3 {
        push(&mut applet, &reading.encode().expect("encode"));
        let payload = send_data_payload(&fetch_and_respond(&mut applet)).expect("SEND DATA");
        let frame = verify(&payload, KEY).expect("signed");
        assert_eq!(
            frame.packet, reading,
            "the reading itself is carried unchanged"
        );
        sequences.push(frame.envelope.map(|e| e.sequence));
    }
    // Sequence 1 was the carrier report at power-on.
    assert_eq!(sequences, vec![Some(2), Some(3), Some(4)]);
}

/// Modem 42's keyed SIM, its counters in `memory_dir`, powered on and its channel open.
fn keyed_sim_powered_on(memory_dir: &std::path::Path) -> Applet {
    let mut applet = Applet::with_memory(
        SimConfig {
            iccid: "8901260000000000042".into(),
            modem_id: 42,
            key: Some(KEY.to_vec()),
            v1: false,
            carrier: Carrier::AtAndT,
        },
        Box::new(memory::CounterFile::in_dir(memory_dir, 42).expect("memory")),
    )
    .expect("powered on");
    open_channel(&mut applet);
    applet
}

/// Every signed packet of a SIM powered on `times` times over one memory, in order.
fn sequences_over_power_cycles(memory_dir: &std::path::Path, times: usize) -> Vec<u32> {
    let reading = Packet::IotStatus(switchyard_protocol::IotStatus::Nominal);
    let mut sequences = Vec::new();
    for _ in 0..times {
        let mut applet = keyed_sim_powered_on(memory_dir);
        sequences.push(applet.uplink_sequence());
        for _ in 0..2 {
            push(&mut applet, &reading.encode().expect("encode"));
            let payload = send_data_payload(&fetch_and_respond(&mut applet)).expect("SEND DATA");
            let frame = verify(&payload, KEY).expect("signed");
            sequences.extend(frame.envelope.map(|e| e.sequence));
        }
    }
    sequences
}

/// Issue 25 (1): the SIM started at 1 on every power-on, so the gateway's restored replay
/// window refused a rebooted device until its counter passed the last run's.
#[test]
fn a_sim_powered_on_again_sends_above_every_number_it_sent_before() {
    let dir = std::env::temp_dir().join(format!("sim-reboot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let sequences = sequences_over_power_cycles(&dir, 3);
    assert!(
        sequences.windows(2).all(|w| w[0] < w[1]),
        "never repeated, never back: {sequences:?}"
    );
    // One write per block: each power-on skips the rest of the block it reserved.
    let block = memory::UPLINK_BLOCK;
    assert_eq!(
        sequences,
        vec![
            1,
            2,
            3,
            block + 1,
            block + 2,
            block + 3,
            2 * block + 1,
            2 * block + 2,
            2 * block + 3
        ]
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A memory that cannot be written: the SIM sends nothing rather than a number it cannot
/// promise not to repeat.
#[test]
fn a_sim_whose_memory_fails_refuses_to_sign() {
    #[derive(Debug)]
    struct Broken;
    impl memory::CounterMemory for Broken {
        fn read(&mut self) -> Result<memory::Counters, memory::MemoryError> {
            Ok(memory::Counters::default())
        }
        fn write(&mut self, _: &memory::Counters) -> Result<(), memory::MemoryError> {
            Err(memory::MemoryError::Exhausted)
        }
    }
    let config = SimConfig {
        iccid: "8901260000000000042".into(),
        modem_id: 42,
        key: Some(KEY.to_vec()),
        v1: false,
        carrier: Carrier::AtAndT,
    };
    let mut applet = Applet::with_memory(config, Box::new(Broken)).expect("powered on");
    fetch_and_respond(&mut applet); // OPEN CHANNEL; no carrier report could be queued
    let r = applet.transmit(&[0x80, 0x12, 0x00, 0x00, 0x00]);
    assert_eq!(sw(&r), sw::NOT_ALLOWED, "nothing to send: {r:02x?}");
    let status = Packet::IotStatus(switchyard_protocol::IotStatus::Nominal);
    assert_eq!(
        sw(&push(&mut applet, &status.encode().expect("encode"))),
        sw::MEMORY_FAILURE
    );
}

/// Issue 25 (4): the SIM checked only the modem id and the tag of a Perform, so a captured
/// one could be replayed to switch the SIM back. A Perform not newer than the last one the
/// SIM executed is now refused and answered with a Perform Refused (the number it executed
/// last, the carrier it stays on), across power cycles too.
#[test]
fn a_perform_not_newer_than_the_last_one_executed_is_nacked_and_changes_nothing() {
    let dir = std::env::temp_dir().join(format!("sim-downlink-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let power_on = || keyed_sim_powered_on(&dir);
    let perform = |sequence: u32, request_id: u64, carrier: Carrier| {
        Frame {
            envelope: Some(Envelope {
                modem_id: 42,
                sequence,
                request_id: Some(request_id),
                auth_tag: None,
            }),
            packet: Packet::CarrierSwitchPerform(carrier),
        }
        .encode_signed(KEY)
        .expect("sign")
    };
    let answer = |applet: &mut Applet| {
        let payload = send_data_payload(&fetch_and_respond(applet)).expect("SEND DATA");
        let frame = verify(&payload, KEY).expect("signed");
        (frame.packet, frame.envelope.and_then(|e| e.request_id))
    };
    let mut applet = power_on();
    let to_tmobile = perform(100, 1, Carrier::TMobile);
    push(&mut applet, &to_tmobile);
    answer(&mut applet);
    push(&mut applet, &perform(101, 2, Carrier::Verizon));
    answer(&mut applet);
    assert_eq!(applet.carrier(), Carrier::Verizon);
    // The captured T-Mobile Perform, replayed: refused, answered with the reason (the last
    // number executed and the carrier it stays on), the carrier stays.
    push(&mut applet, &to_tmobile);
    assert_eq!(
        answer(&mut applet),
        (
            Packet::PerformRefused {
                carrier: Carrier::Verizon,
                executed: 101
            },
            Some(1)
        )
    );
    assert_eq!(applet.carrier(), Carrier::Verizon);
    // After a power cycle too (the simulated SIM powers on with its configured profile);
    // a newer Perform still works.
    drop(applet);
    let mut applet = power_on();
    push(&mut applet, &perform(101, 2, Carrier::TMobile));
    assert_eq!(
        answer(&mut applet).0,
        Packet::PerformRefused {
            carrier: Carrier::AtAndT,
            executed: 101
        }
    );
    push(&mut applet, &perform(102, 3, Carrier::TMobile));
    assert_eq!(
        answer(&mut applet).0,
        Packet::CarrierSwitchAck {
            status: AckStatus::Ack,
            carrier: Carrier::TMobile
        }
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn fetch_and_terminal_response_follow_the_protocol() {
    let mut applet = sim(None, true);
    assert_eq!(
        sw(&applet.transmit(&[0x80, 0x14, 0x00, 0x00, 0x03, 0x81, 0x01, 0x00])),
        sw::NOT_ALLOWED,
        "no command fetched"
    );
    let r = applet.transmit(&[0x80, 0x12, 0x00, 0x00, 0x05]);
    assert_eq!(sw(&r)[0], 0x6C, "Le too small: told the right length");
    open_channel(&mut applet);
    assert_eq!(
        sw(&applet.transmit(&[0x80, 0x12, 0x00, 0x00, 0x00])),
        sw::NOT_ALLOWED,
        "nothing pending"
    );
}

proptest! {
    #[test]
    fn random_apdus_never_panic(apdu in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut applet = sim(Some(KEY), false);
        let r = applet.transmit(&apdu);
        prop_assert!(r.len() >= 2);
    }

    #[test]
    fn random_pushes_never_panic(packet in proptest::collection::vec(any::<u8>(), 0..250)) {
        let mut applet = sim(Some(KEY), false);
        let r = push(&mut applet, &packet);
        prop_assert!(r.len() >= 2);
    }
}

/// The exchange docs/sim.md shows for the ETSI downlink path, byte for byte.
#[test]
fn downlink_over_event_download_and_receive_data_switches_the_carrier() {
    let mut applet = sim(None, true);
    open_channel(&mut applet);
    let perform = Packet::CarrierSwitchPerform(Carrier::Verizon)
        .encode()
        .expect("encode");

    // The terminal announces 2 bytes on channel 1.
    let envelope = data_available_envelope(perform.len());
    assert_eq!(
        hex::encode_upper(&envelope),
        "80C2000010D60E99010982028281B8028100B70102"
    );
    let r = applet.transmit(&envelope);
    assert_eq!(r, [0x91, 0x0E], "RECEIVE DATA pending");
    assert_eq!(applet.carrier(), Carrier::AtAndT, "nothing received yet");

    let r = applet.transmit(&[0x80, 0x12, 0x00, 0x00, 0x0E]);
    let command = &r[..r.len() - 2];
    assert_eq!(hex::encode_upper(&r), "D00C810303420082028121B701029000");
    assert_eq!(receive_data_length(command), Some(2));
    assert_eq!(send_data_payload(command), None);

    let response = receive_data_response(command, &perform).expect("response");
    assert_eq!(
        hex::encode_upper(&response),
        "8014000013810303420082028281830100B6021020B70100"
    );
    let r = applet.transmit(&response);
    assert_eq!(sw(&r)[0], 0x91, "the ACK's SEND DATA is pending");
    assert_eq!(applet.carrier(), Carrier::Verizon);
    let payload = send_data_payload(&fetch_and_respond(&mut applet)).expect("SEND DATA");
    assert_eq!(
        Packet::decode(&payload).expect("v1 ACK"),
        Packet::CarrierSwitchAck {
            status: AckStatus::Ack,
            carrier: Carrier::Verizon
        }
    );
}

#[test]
fn event_downloads_are_checked() {
    let mut applet = sim(None, true);
    // Before OPEN CHANNEL completes there is no channel to receive on.
    assert_eq!(
        sw(&applet.transmit(&data_available_envelope(2))),
        sw::NOT_ALLOWED
    );
    open_channel(&mut applet);
    // Zero bytes available, or another event: acknowledged, nothing to fetch.
    assert_eq!(applet.transmit(&data_available_envelope(0)), sw::OK);
    let other_event = [0x80, 0xC2, 0x00, 0x00, 0x05, 0xD6, 0x03, 0x99, 0x01, 0x0A];
    assert_eq!(applet.transmit(&other_event), sw::OK);
    // Not an event download, or broken TLV lengths.
    assert_eq!(
        sw(&applet.transmit(&[0x80, 0xC2, 0x00, 0x00, 0x03, 0xD1, 0x01, 0x00])),
        sw::BAD_DATA
    );
    assert_eq!(
        sw(&applet.transmit(&[0x80, 0xC2, 0x00, 0x00, 0x03, 0xD6, 0x05, 0x99])),
        sw::BAD_DATA
    );
    // Bytes that are not a packet are refused after RECEIVE DATA, carrier unchanged.
    let r = applet.transmit(&data_available_envelope(3));
    assert_eq!(sw(&r)[0], 0x91);
    let r = applet.transmit(&[0x80, 0x12, 0x00, 0x00, 0x00]);
    let command = r[..r.len() - 2].to_vec();
    let response = receive_data_response(&command, &[0x77, 0x00, 0x01]).expect("response");
    assert_eq!(sw(&applet.transmit(&response)), sw::BAD_DATA);
    assert_eq!(applet.carrier(), Carrier::AtAndT);
}

/// The original client's FETCH; its answer must always be the whole command with `90 00`.
fn original_fetch(applet: &mut Applet) -> Vec<u8> {
    let r = applet.transmit(&original::FETCH);
    assert_eq!(sw(&r), sw::OK, "{r:02x?}");
    r[..r.len() - 2].to_vec()
}

#[test]
fn the_original_clients_dialogue_switches_and_answers_the_ack_as_send_data() {
    let mut applet = sim(None, true);
    // Power-on as the original client does it: SELECT, status unread, then poll.
    applet.transmit(&[0x00, 0xA4, 0x00, 0x04, 0x02, 0x3F, 0x00]);
    let first = original_fetch(&mut applet);
    assert_eq!(&first[4..7], &[1, 0x40, 0x01], "OPEN CHANNEL, whole");
    assert!(first.len() > 0x15, "longer than Le, yet not cut");
    assert_eq!(original::read(&first), original::Command::Other);
    // Then the carrier, reported as an ACK without a request.
    let report = original_fetch(&mut applet);
    assert_eq!(
        hex::encode(&report),
        "d029810302430182028121 3c00 b602 1100".replace(' ', "")
    );
    assert_eq!(
        original::read(&report),
        original::Command::SendData(&[0x11, 0x00])
    );

    // Nothing to send: RECEIVE DATA, byte for byte, and again on the next poll.
    let idle = original_fetch(&mut applet);
    assert_eq!(hex::encode(&idle), "d00e8103034200820281218500b701ff");
    assert_eq!(original::read(&idle), original::Command::ReceiveData);
    assert_eq!(
        original::read(&original_fetch(&mut applet)),
        original::Command::ReceiveData
    );

    // The client pushes the Perform; the answer is 90 00, not 91 xx.
    let perform = Packet::CarrierSwitchPerform(Carrier::Verizon)
        .encode()
        .expect("encode");
    let r = applet.transmit(&original::push_apdu(&perform).expect("short"));
    assert_eq!(r, sw::OK.to_vec());
    assert_eq!(applet.carrier(), Carrier::Verizon);

    let send = original_fetch(&mut applet);
    assert_eq!(
        hex::encode(&send),
        "d029810305430182028121 3c00 b602 1102".replace(' ', "")
    );
    let original::Command::SendData(packet) = original::read(&send) else {
        panic!("SEND DATA expected: {send:02x?}");
    };
    // Exactly the packet: the original decoder refuses trailing bytes.
    assert_eq!(
        Packet::decode(packet).expect("a v1 ACK"),
        Packet::CarrierSwitchAck {
            status: AckStatus::Ack,
            carrier: Carrier::Verizon
        }
    );
    assert_eq!(
        original::read(&original_fetch(&mut applet)),
        original::Command::ReceiveData,
        "the ACK went once; the SIM is ready again"
    );
}

#[test]
fn an_original_client_never_sees_91_even_with_a_command_pending() {
    let mut applet = sim(None, true);
    original_fetch(&mut applet);
    let status = Packet::IotStatus(switchyard_protocol::IotStatus::Nominal)
        .encode()
        .expect("encode");
    let r = applet.transmit(&original::push_apdu(&status).expect("short"));
    assert_eq!(r, sw::OK.to_vec(), "a SEND DATA is pending, yet 90 00");
    let r = applet.transmit(&[0x00, 0xA4, 0x00, 0x04, 0x02, 0x6F, 0x07]);
    assert_eq!(sw(&r), sw::OK);
    // A reset ends the original dialogue: the ETSI terminal hears 91 xx again.
    applet.reset();
    let r = applet.transmit(&[0x00, 0xA4, 0x00, 0x04, 0x02, 0x3F, 0x00]);
    assert_eq!(sw(&r)[0], 0x91);
}

/// Issue 25: a SIM whose counter is behind the gateway's window (its memory lost or
/// replaced) was refused for good. A signed resync moves it above the gateway's highest,
/// reserved in memory so a power cycle keeps it there; an unsigned one, one for another
/// modem or under another key is refused, and an old one moves nothing back.
#[test]
fn a_signed_resync_moves_the_counter_forward_only() {
    let dir = std::env::temp_dir().join(format!("sim-resync-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let resync = |modem: u64, above: u32, key: Option<&[u8]>| {
        let frame = Frame {
            envelope: Some(Envelope {
                modem_id: modem,
                sequence: 9,
                request_id: None,
                auth_tag: None,
            }),
            packet: Packet::SequenceResync { above },
        };
        match key {
            Some(key) => frame.encode_signed(key),
            None => frame.encode(),
        }
        .expect("encodes")
    };
    let next_number = |applet: &mut Applet| {
        let status = Packet::IotStatus(switchyard_protocol::IotStatus::Nominal);
        push(applet, &status.encode().expect("encode"));
        let payload = send_data_payload(&fetch_and_respond(applet)).expect("SEND DATA");
        verify(&payload, KEY)
            .expect("signed")
            .envelope
            .map(|e| e.sequence)
    };
    let mut applet = keyed_sim_powered_on(&dir);
    assert_eq!(next_number(&mut applet), Some(2));
    for refused in [
        resync(42, 5000, None),
        resync(43, 5000, Some(KEY)),
        resync(42, 5000, Some(b"another key")),
    ] {
        assert_eq!(sw(&push(&mut applet, &refused)), sw::SECURITY);
    }
    assert_eq!(
        sw(&push(
            &mut applet,
            &Packet::SequenceResync { above: 5000 }
                .encode()
                .expect("encodes")
        )),
        sw::BAD_DATA,
        "a bare resync is not a packet for the SIM"
    );
    assert_eq!(next_number(&mut applet), Some(3), "nothing moved");
    assert_eq!(sw(&push(&mut applet, &resync(42, 5000, Some(KEY)))), sw::OK);
    assert_eq!(next_number(&mut applet), Some(5001));
    assert_eq!(sw(&push(&mut applet, &resync(42, 4000, Some(KEY)))), sw::OK);
    assert_eq!(
        next_number(&mut applet),
        Some(5002),
        "an old resync moves nothing back"
    );
    drop(applet);
    let mut again = keyed_sim_powered_on(&dir);
    assert!(
        next_number(&mut again) > Some(5002),
        "the moved counter survives a power cycle"
    );
    let _ = std::fs::remove_dir_all(dir);
}

//! The software SIM in v1 mode, in vpcd's reader behind a real pcscd, driven over PC/SC with
//! exactly the original modem client's dialogue: `00 F3 00 00 15` polls whose answers come
//! whole with `90 00` whatever Le says, no TERMINAL RESPONSE ever, commands told apart by
//! their first two bytes, the downlink packet pushed with `00 F4` after a RECEIVE DATA, and
//! the ACK read from byte 15 of a SEND DATA to its end (at power-on, the SIM's carrier report).

use std::process::Command;
use std::time::Duration;

use switchyard_modem::{decode_imsi, PcscCard, SimLink};
use switchyard_protocol::{AckStatus, Carrier, Packet};
use switchyard_testkit::{ensure_pcscd, wait_for, workspace_binary, Service, VPCD};

const POLL: [u8; 5] = [0x00, 0xF3, 0x00, 0x00, 0x15];

/// One poll: the whole command, which must come with `90 00`.
fn poll(card: &mut PcscCard) -> Vec<u8> {
    let r = card.transmit(&POLL).expect("transmit");
    assert_eq!(&r[r.len() - 2..], &[0x90, 0x00], "poll answered {r:02X?}");
    r[..r.len() - 2].to_vec()
}

#[test]
fn the_original_clients_dialogue_over_pcsc_switches_the_sim_and_reads_the_ack_back() {
    let logs = std::env::temp_dir().join(format!("original-dialogue-{}", std::process::id()));
    std::fs::create_dir_all(&logs).expect("log dir");
    let _pcscd = ensure_pcscd(&logs).expect("pcscd");
    let mut sim = Command::new(workspace_binary("switchyard-sim").expect("built"));
    sim.args(["--vpcd", VPCD, "--v1", "--carrier", "at&t"]);
    let sim = Service::spawn("switchyard-sim", sim, &logs).expect("sim");
    wait_for(
        "the software SIM in vpcd's reader",
        Duration::from_secs(30),
        || PcscCard::connect("Virtual PCD 00 00").is_ok(),
    )
    .unwrap_or_else(|e| panic!("{e}\n--- sim:\n{}", sim.log_text()));
    let mut card = PcscCard::connect("Virtual PCD 00 00").expect("card");

    // Power-on: SELECT MF, status unread. The first poll hands over OPEN CHANNEL, whole
    // although it is longer than Le, and the client moves on without answering it.
    card.transmit(&[0x00, 0xA4, 0x00, 0x04, 0x02, 0x3F, 0x00])
        .expect("select");
    let open = poll(&mut card);
    assert!(open.len() > 0x15, "cut to Le: {open:02X?}");
    assert_eq!(&open[..2], &[0xD0, open.len() as u8 - 2]);
    assert_eq!(&open[5..7], &[0x40, 0x01], "OPEN CHANNEL");

    // Then the SIM reports its carrier, an ACK without a request, as v1 receivers take it.
    let report = poll(&mut card);
    assert_eq!(&report[..2], &[0xD0, 0x29]);
    assert_eq!(
        Packet::decode(&report[15..]).expect("one v1 packet"),
        Packet::CarrierSwitchAck {
            status: AckStatus::Ack,
            carrier: Carrier::AtAndT
        }
    );

    // Nothing to send: RECEIVE DATA on every poll.
    for _ in 0..3 {
        assert_eq!(&poll(&mut card)[..2], &[0xD0, 0x0E]);
    }

    let perform = Packet::CarrierSwitchPerform(Carrier::TMobile)
        .encode()
        .expect("encode");
    let mut push = vec![0x00, 0xF4, 0x00, 0x00, perform.len() as u8];
    push.extend_from_slice(&perform);
    let r = card.transmit(&push).expect("push");
    assert_eq!(r, [0x90, 0x00], "the push is answered 90 00");

    let send = poll(&mut card);
    assert_eq!(&send[..2], &[0xD0, 0x29], "SEND DATA: {send:02X?}");
    // The original decoder takes bytes 15.. as the packet and refuses trailing bytes.
    assert_eq!(
        Packet::decode(&send[15..]).expect("exactly one v1 packet"),
        Packet::CarrierSwitchAck {
            status: AckStatus::Ack,
            carrier: Carrier::TMobile
        }
    );
    assert_eq!(
        &poll(&mut card)[..2],
        &[0xD0, 0x0E],
        "the ACK is sent once; the SIM is ready for the next packet"
    );

    card.transmit(&[0x00, 0xA4, 0x00, 0x04, 0x02, 0x6F, 0x07])
        .expect("select EF IMSI");
    let r = card
        .transmit(&[0x00, 0xB0, 0x00, 0x00, 0x09])
        .expect("read");
    assert_eq!(
        decode_imsi(&r[..r.len() - 2]),
        switchyard_sim::profile(Carrier::TMobile).imsi
    );
}

//! The whole edge on real parts: pcscd with vsmartcard's vpcd reader, the software SIM as
//! its card, the modem simulator reaching the SIM through the `pcsc` crate, the gateway (with
//! authentication on), an Apache Kafka broker and the registry. A switch requested on Kafka reaches
//! the SIM over PC/SC; the SIM's ACK comes back with the new carrier and its IMSI changes.

use std::process::Command;
use std::time::Duration;
use switchyard_schemas::records::now_us;

use switchyard_modem::{decode_imsi, PcscCard, SimLink};
use switchyard_schemas::records::{
    AckStatus, Carrier, CarrierSwitchAck, CarrierSwitchRequest, IotStatusReport, SensorReading,
};
use switchyard_testkit::{ensure_pcscd, wait_for, workspace_binary, Service, Stack, VPCD};

const MODEM: u64 = 777;
const KEY: &str = "00112233445566778899aabbccddeeff";

#[test]
fn a_switch_requested_on_kafka_reaches_the_sim_over_pcsc_and_its_ack_comes_back() {
    let stack = Stack::start().expect("stack");
    let _pcscd = ensure_pcscd(stack.broker.data_dir()).expect("pcscd");

    let mut sim = Command::new(workspace_binary("switchyard-sim").expect("built"));
    sim.args([
        "--vpcd",
        VPCD,
        "--modem-id",
        &MODEM.to_string(),
        "--key",
        KEY,
        "--carrier",
        "at&t",
    ]);
    let _sim = Service::spawn("switchyard-sim", sim, stack.broker.data_dir()).expect("sim");

    let keys = stack.broker.data_dir().join("modem-keys");
    std::fs::write(&keys, format!("{MODEM} {KEY}\n")).expect("keys");
    let gateway = stack
        .start_gateway(&[("SWITCHYARD_MODEM_KEYS", keys.display().to_string())])
        .expect("gateway");
    let udp = gateway.udp;

    // The card is in the reader once PC/SC can connect to it.
    wait_for(
        "the software SIM in vpcd's reader",
        Duration::from_secs(30),
        || PcscCard::connect("Virtual PCD 00 00").is_ok(),
    )
    .expect("card present");
    let mut modem = Command::new(workspace_binary("switchyard-modem").expect("built"));
    modem.args([
        "--sim",
        "pcsc",
        "--gateway",
        &udp.to_string(),
        "--rates",
        "2,0,0",
        "--status-secs",
        "1",
    ]);
    let modem = Service::spawn("switchyard-modem", modem, stack.broker.data_dir()).expect("modem");

    let heard = |topic: &str| -> bool {
        stack
            .read_to_end::<IotStatusReport>(topic)
            .map(|rs| rs.iter().any(|r| r.value.modem_id == MODEM.to_string()))
            .unwrap_or(false)
    };
    if let Err(e) = wait_for(
        "the modem's signed status to pass the gateway",
        Duration::from_secs(60),
        || heard("iot-status"),
    ) {
        panic!("{e}\n--- modem:\n{}", modem.log_text());
    }
    let readings = stack
        .consume_at_least::<SensorReading>("imu", 1, Duration::from_secs(30))
        .expect("imu");
    assert!(
        readings
            .iter()
            .any(|r| r.value.modem_id == MODEM.to_string()),
        "readings arrive through the SIM"
    );

    let now = now_us();
    let request = CarrierSwitchRequest {
        request_id: "00000000000000e5".into(),
        modem_id: MODEM.to_string(),
        carrier: Carrier::Verizon,
        requested_at: now,
        deadline: now + 60_000_000,
        requested_by: Some("test".into()),
    };
    stack
        .produce(
            "downstream-request",
            &[(MODEM.to_string(), request, now / 1000)],
        )
        .expect("request");
    let mut answered = None;
    wait_for(
        "the SIM's ACK on carrier-switch-ack",
        Duration::from_secs(60),
        || {
            answered = stack
                .consume_at_least::<CarrierSwitchAck>(
                    "carrier-switch-ack",
                    usize::MAX,
                    Duration::from_secs(1),
                )
                .ok()
                .and_then(|acks| {
                    acks.into_iter()
                        .find(|a| a.value.request_id.as_deref() == Some("00000000000000e5"))
                })
                .map(|a| a.value);
            answered.is_some()
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n--- modem:\n{}", modem.log_text()));
    let ack = answered.expect("ack");
    assert_eq!(
        (ack.status, ack.carrier, ack.modem_id.as_str()),
        (AckStatus::Ack, Carrier::Verizon, "777")
    );

    // The SIM itself now holds Verizon's profile: read EF IMSI over PC/SC.
    let mut card = PcscCard::connect("Virtual PCD 00 00").expect("card");
    card.transmit(&[0x00, 0xA4, 0x00, 0x04, 0x02, 0x6F, 0x07])
        .expect("select");
    let r = card
        .transmit(&[0x00, 0xB0, 0x00, 0x00, 0x09])
        .expect("read");
    assert_eq!(decode_imsi(&r[..r.len() - 2]), "311480000000001");
}

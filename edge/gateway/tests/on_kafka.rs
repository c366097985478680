//! The gateway on a real broker and registry, with real UDP sockets.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;
use switchyard_schemas::records::now_us;

use switchyard_protocol::{
    verify, AckStatus, Carrier, Envelope, Frame, IotData, IotStatus, Packet,
};
use switchyard_schemas::records::{
    self, CarrierSwitchAck, CarrierSwitchRequest, DeliveryEvent, DownlinkDelivery, GatewayReject,
    IotStatusReport, SensorReading,
};
use switchyard_testkit::{Service, Stack};

const SEED_VECTORS: &str = include_str!("../../protocol/tests/vectors/seed-vectors.json");
const WAIT: Duration = Duration::from_secs(90);

fn start_gateway(stack: &Stack, env: &[(&str, String)]) -> (Service, SocketAddr) {
    let mut all = vec![("SWITCHYARD_RETRY_INITIAL_MS", "300".to_string())];
    all.extend(env.iter().map(|(k, v)| (*k, v.clone())));
    let gateway = stack.start_gateway(&all).expect("gateway healthy");
    (gateway.service, gateway.udp)
}

fn client() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("client socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    socket
}

fn request(modem: &str, request_id: &str, carrier: records::Carrier) -> CarrierSwitchRequest {
    let now = now_us();
    CarrierSwitchRequest {
        request_id: request_id.into(),
        modem_id: modem.into(),
        carrier,
        requested_at: now,
        deadline: now + 60_000_000,
        requested_by: Some("test".into()),
    }
}

fn envelope(modem: u64, sequence: u32, request_id: Option<u64>, packet: Packet) -> Frame {
    Frame {
        envelope: Some(Envelope {
            modem_id: modem,
            sequence,
            request_id,
            auth_tag: None,
        }),
        packet,
    }
}

/// The device announces itself (an enveloped status packet) and the gateway has taken it:
/// from then on the gateway knows where the modem is.
fn say_hello(stack: &Stack, device: &UdpSocket, udp: SocketAddr, modem: u64) {
    let hello = envelope(modem, 1, None, Packet::IotStatus(IotStatus::Nominal));
    device
        .send_to(&hello.encode().expect("encode"), udp)
        .expect("send");
    let _ = stack
        .consume_at_least::<IotStatusReport>("iot-status", 1, WAIT)
        .expect("the gateway saw the modem");
}

/// A switch request for `modem` on `downstream-request`, as the API writes it.
fn request_switch(stack: &Stack, modem: u64, request_id: &str, carrier: records::Carrier) {
    let req = request(&modem.to_string(), request_id, carrier);
    stack
        .produce(
            "downstream-request",
            &[(modem.to_string(), req, now_us() / 1000)],
        )
        .expect("request");
}

#[test]
fn the_original_systems_packets_reach_their_topics_and_bad_datagrams_are_kept_as_rejects() {
    let stack = Stack::start().expect("stack");
    let (_gateway, udp) = start_gateway(&stack, &[]);
    let device = client();
    let vectors: Vec<serde_json::Value> = serde_json::from_str(SEED_VECTORS).expect("vectors");
    for v in &vectors {
        device
            .send_to(
                &hex::decode(v["hex"].as_str().expect("hex")).expect("hex"),
                udp,
            )
            .expect("send");
    }
    device.send_to(&[0x40, 0x00], udp).expect("send");
    device.send_to(&[], udp).expect("send");

    let imu = stack
        .consume_at_least::<SensorReading>("imu", 1, WAIT)
        .expect("imu");
    assert_eq!(imu.len(), 1);
    let r = &imu[0].value;
    assert_eq!(
        (r.modem_id.as_str(), r.device_id, r.value, r.timestamp),
        ("0", 1, Some(42), 1_685_620_800_000_000)
    );
    assert_eq!(
        imu[0].raw.key.as_deref(),
        Some(&b"0"[..]),
        "v1 packets belong to the legacy modem"
    );
    assert_eq!(
        stack
            .consume_at_least::<SensorReading>("gyro", 1, WAIT)
            .expect("gyro")
            .len(),
        1
    );
    assert_eq!(
        stack
            .consume_at_least::<SensorReading>("temp", 2, WAIT)
            .expect("temp")
            .len(),
        2
    );
    let unknown = stack
        .consume_at_least::<SensorReading>("unknown", 1, WAIT)
        .expect("unknown");
    assert_eq!(
        (unknown.len(), unknown[0].value.device_id),
        (1, 0xDEAD_BEEF)
    );
    let statuses = stack
        .consume_at_least::<IotStatusReport>("iot-status", 3, WAIT)
        .expect("status");
    assert_eq!(statuses.len(), 3);
    let acks = stack
        .consume_at_least::<CarrierSwitchAck>("carrier-switch-ack", 8, WAIT)
        .expect("acks");
    assert_eq!(acks.len(), 8);
    assert!(
        acks.iter().all(|a| a.value.request_id.is_none()),
        "v1 ACKs cannot name a request"
    );

    // The four Perform vectors are downlink packets sent uplink; plus two malformed datagrams.
    let rejects = stack
        .consume_at_least::<GatewayReject>("gateway-rejects", 6, WAIT)
        .expect("rejects");
    let reasons: Vec<&str> = rejects.iter().map(|r| r.value.reason.as_str()).collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| **r == "downlink_packet_on_uplink")
            .count(),
        4,
        "{reasons:?}"
    );
    let unknown_flow = rejects
        .iter()
        .find(|r| r.value.reason == "unknown_flow")
        .expect("unknown flow");
    assert_eq!(unknown_flow.value.raw, vec![0x40, 0x00], "kept whole");
    assert_eq!(
        unknown_flow.value.source,
        device.local_addr().expect("addr").to_string()
    );
    assert!(reasons.contains(&"empty"));
}

#[test]
fn a_switch_reaches_the_device_is_retried_and_its_ack_closes_it() {
    let stack = Stack::start().expect("stack");
    let (_gateway, udp) = start_gateway(&stack, &[]);
    let device = client();
    let modem = 356_938_035_643_809u64;
    say_hello(&stack, &device, udp, modem);

    request_switch(&stack, modem, "00000000000000a7", records::Carrier::Verizon);
    let mut buf = [0u8; 512];
    let mut received = Vec::new();
    for _ in 0..2 {
        let (n, from) = device
            .recv_from(&mut buf)
            .expect("a Perform packet arrives");
        assert_eq!(from, udp, "sent from the one gateway socket");
        received.push(Frame::decode(&buf[..n]).expect("decodes"));
    }
    for frame in &received {
        assert_eq!(frame.packet, Packet::CarrierSwitchPerform(Carrier::Verizon));
        let env = frame.envelope.as_ref().expect("enveloped");
        assert_eq!((env.modem_id, env.request_id), (modem, Some(0xa7)));
    }
    assert_ne!(
        received[0].envelope.as_ref().map(|e| e.sequence),
        received[1].envelope.as_ref().map(|e| e.sequence)
    );

    let ack = envelope(
        modem,
        2,
        Some(0xa7),
        Packet::CarrierSwitchAck {
            status: AckStatus::Ack,
            carrier: Carrier::Verizon,
        },
    );
    device
        .send_to(&ack.encode().expect("encode"), udp)
        .expect("send");
    let acks = stack
        .consume_at_least::<CarrierSwitchAck>("carrier-switch-ack", 1, WAIT)
        .expect("ack");
    assert_eq!(
        acks[0].value.request_id.as_deref(),
        Some("00000000000000a7")
    );
    let events = stack
        .consume_at_least::<DownlinkDelivery>("downlink-delivery", 3, WAIT)
        .expect("deliveries");
    let kinds: Vec<DeliveryEvent> = events.iter().map(|e| e.value.event).collect();
    assert_eq!(kinds[0], DeliveryEvent::Sent);
    assert!(kinds.contains(&DeliveryEvent::Retried), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&DeliveryEvent::Acked), "{kinds:?}");
    assert_eq!(
        events[0].value.address.as_deref(),
        Some(device.local_addr().expect("addr").to_string().as_str())
    );
}

#[test]
fn with_keys_spoofed_and_replayed_packets_are_rejected_and_do_not_move_the_address() {
    let stack = Stack::start().expect("stack");
    let key = hex::decode("000102030405060708090a0b0c0d0e0f").expect("hex");
    let keys = stack.broker.data_dir().join("modem-keys");
    std::fs::write(&keys, "42 000102030405060708090a0b0c0d0e0f\n").expect("keys file");
    let (_gateway, udp) = start_gateway(
        &stack,
        &[("SWITCHYARD_MODEM_KEYS", keys.display().to_string())],
    );
    let genuine = client();
    let spoofer = client();
    spoofer
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");

    let hello = envelope(42, 1, None, Packet::IotStatus(IotStatus::Idle))
        .encode_signed(&key)
        .expect("sign");
    genuine.send_to(&hello, udp).expect("send");
    let _ = stack
        .consume_at_least::<IotStatusReport>("iot-status", 1, WAIT)
        .expect("accepted");
    // Another address claims modem 42 with the wrong key, then replays the genuine packet.
    let forged = envelope(42, 2, None, Packet::IotStatus(IotStatus::OffNominal))
        .encode_signed(b"not the key")
        .expect("sign");
    spoofer.send_to(&forged, udp).expect("send");
    spoofer.send_to(&hello, udp).expect("send");
    let rejects = stack
        .consume_at_least::<GatewayReject>("gateway-rejects", 2, WAIT)
        .expect("rejects");
    let reasons: Vec<&str> = rejects.iter().map(|r| r.value.reason.as_str()).collect();
    assert!(
        reasons.contains(&"bad_tag") && reasons.contains(&"replayed_sequence"),
        "{reasons:?}"
    );
    assert!(rejects
        .iter()
        .all(|r| r.value.modem_id.as_deref() == Some("42")));
    assert_eq!(
        stack
            .consume_at_least::<IotStatusReport>("iot-status", 2, Duration::from_secs(3))
            .expect("status")
            .len(),
        1,
        "nothing from the spoofer was published"
    );

    // The downlink still goes to the genuine address, signed. The request is written with a
    // newer, compatible version of the schema (an extra optional field): the gateway resolves it.
    let catalog = switchyard_schemas::Catalog::embedded().expect("catalog");
    let mut evolved: serde_json::Value =
        serde_json::from_str(catalog.value_schema("downstream-request").expect("schema"))
            .expect("json");
    evolved["fields"]
        .as_array_mut()
        .expect("fields")
        .push(serde_json::json!({"name": "priority", "type": ["null", "int"], "default": null}));
    let evolved = evolved.to_string();
    let (status, body) = switchyard_testkit::http_json(
        stack.registry.addr,
        "POST",
        "/subjects/downstream-request-value/versions",
        &serde_json::json!({ "schema": evolved }).to_string(),
    )
    .expect("register");
    assert_eq!(status, 200, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).expect("json")["id"]
        .as_i64()
        .expect("id") as i32;
    #[derive(serde::Serialize)]
    struct RequestV2 {
        request_id: String,
        modem_id: String,
        carrier: records::Carrier,
        requested_at: i64,
        deadline: i64,
        requested_by: Option<String>,
        priority: Option<i32>,
    }
    let r = request("42", "00000000000000c3", records::Carrier::TMobile);
    let v2 = RequestV2 {
        request_id: r.request_id,
        modem_id: r.modem_id,
        carrier: r.carrier,
        requested_at: r.requested_at,
        deadline: r.deadline,
        requested_by: r.requested_by,
        priority: Some(1),
    };
    let payload = switchyard_schemas::wire::SchemaCodec::parse(&evolved)
        .expect("codec")
        .encode(id, &v2)
        .expect("encode");
    switchyard_testkit::kafka::produce(
        &stack.broker.bootstrap(),
        "downstream-request",
        &[("42".to_string(), payload, now_us() / 1000)],
    )
    .expect("request");
    let mut buf = [0u8; 512];
    let (n, _) = genuine
        .recv_from(&mut buf)
        .expect("the genuine device gets the Perform");
    let frame = verify(&buf[..n], &key).expect("signed with the modem's key");
    assert_eq!(frame.packet, Packet::CarrierSwitchPerform(Carrier::TMobile));
    // The spoofer's address was never learned: a resync for the replay, no Perform.
    no_perform_reaches(&spoofer, "spoofer");
}

/// One temperature reading whose value numbers it.
/// Everything `socket` receives within 2 s, decoded: a replayer or spoofer may be answered
/// with a sequence resync (signed, harmless), never a Perform.
fn no_perform_reaches(socket: &UdpSocket, who: &str) {
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut buf = [0u8; 512];
    while let Ok((n, _)) = socket.recv_from(&mut buf) {
        let frame = Frame::decode(&buf[..n]).expect("the gateway sends frames");
        assert!(
            matches!(frame.packet, Packet::SequenceResync { .. }),
            "the {who} got {:?}",
            frame.packet
        );
    }
}

fn numbered_reading(n: i32) -> Vec<u8> {
    let at = chrono::DateTime::from_timestamp_micros(1_700_000_000_000_000 + i64::from(n))
        .expect("timestamp");
    envelope(
        7,
        n as u32,
        None,
        Packet::IotData(switchyard_protocol::IotData::with_value(3, at, n)),
    )
    .encode()
    .expect("encode")
}

#[test]
fn while_the_broker_is_down_packets_wait_in_the_bounded_buffer_and_overflow_is_counted() {
    const BUFFER: i32 = 40;
    let mut stack = Stack::start().expect("stack");
    let switchyard_testkit::Gateway {
        service: mut gateway,
        udp,
        metrics,
    } = stack
        .start_gateway(&[("SWITCHYARD_GATEWAY_BUFFER", BUFFER.to_string())])
        .expect("gateway healthy");
    let device = client();
    let metric = |name: &str| {
        switchyard_testkit::metric_sum(
            &switchyard_testkit::http_get_text(metrics, "/metrics").unwrap_or_default(),
            name,
        )
    };

    for n in 0..10 {
        device.send_to(&numbered_reading(n), udp).expect("send");
    }
    assert_eq!(
        stack
            .consume_at_least::<SensorReading>("temp", 10, WAIT)
            .expect("temp")
            .len(),
        10
    );

    // Broker down: 100 more packets, more than the buffer holds.
    stack.broker.stop();
    for n in 10..110 {
        device.send_to(&numbered_reading(n), udp).expect("send");
        std::thread::sleep(Duration::from_millis(2));
    }
    switchyard_testkit::wait_for("100 packets counted", WAIT, || {
        metric("switchyard_gateway_packets_total") >= 110.0
    })
    .expect("the gateway kept receiving");
    let dropped = metric("switchyard_gateway_backpressure_total");
    let buffered = metric("switchyard_gateway_buffered_records{producer=\"readings\"}");
    assert!(
        dropped >= f64::from(100 - BUFFER),
        "the buffer is bounded: {dropped} dropped"
    );
    assert!(
        buffered > 0.0 && buffered <= f64::from(BUFFER),
        "{buffered}"
    );
    assert!(gateway.is_running(), "the gateway survives the outage");
    assert_eq!(
        switchyard_testkit::http_get_status(metrics, "/health").ok(),
        Some(200)
    );

    // Broker back: everything that was buffered arrives, by itself, and nothing else is lost.
    stack.broker.start_again().expect("broker back");
    let expected = 110 - dropped as usize;
    switchyard_testkit::wait_for("the buffered readings", WAIT, || {
        stack
            .consume_at_least::<SensorReading>("temp", expected, Duration::from_secs(5))
            .map(|rs| rs.len() >= expected)
            .unwrap_or(false)
    })
    .expect("buffered records delivered");
    // Read past the expected count: no record more than the accepted ones.
    let mut values: Vec<i32> = stack
        .consume_at_least::<SensorReading>("temp", expected + 10, Duration::from_secs(5))
        .expect("temp")
        .iter()
        .filter_map(|r| r.value.value)
        .collect();
    assert_eq!(values.len(), expected, "no reading lost or duplicated");
    values.sort_unstable();
    values.dedup();
    assert_eq!(values.len(), expected, "each accepted reading exactly once");
    assert!(
        (0..10).all(|n| values.contains(&n)),
        "the readings from before the outage are intact"
    );
    assert_eq!(metric("switchyard_gateway_produce_failures_total"), 0.0);
    switchyard_testkit::wait_for("the buffer to drain", WAIT, || {
        metric("switchyard_gateway_buffered_records") == 0.0
    })
    .expect("drained");

    // And the gateway keeps working after the outage.
    device.send_to(&numbered_reading(1000), udp).expect("send");
    switchyard_testkit::wait_for("a reading after the outage", WAIT, || {
        stack
            .consume_at_least::<SensorReading>("temp", expected + 1, Duration::from_secs(5))
            .map(|rs| rs.iter().any(|r| r.value.value == Some(1000)))
            .unwrap_or(false)
    })
    .expect("post-outage reading");
}

#[test]
fn datagrams_the_kernel_drops_from_a_full_socket_are_counted() {
    // A small receive buffer and a frozen gateway: a burst overflows the socket in the kernel.
    const SENT: i32 = 2000;
    let stack = Stack::start().expect("stack");
    let switchyard_testkit::Gateway {
        service: gateway,
        udp,
        metrics,
    } = stack
        .start_gateway(&[("SWITCHYARD_GATEWAY_UDP_BUFFER", "4096".to_string())])
        .expect("gateway healthy");
    let metric = |name: &str| {
        switchyard_testkit::metric_sum(
            &switchyard_testkit::http_get_text(metrics, "/metrics").unwrap_or_default(),
            name,
        )
    };
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &gateway.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {sig}");
    };
    let device = client();
    signal("-STOP");
    for n in 0..SENT {
        device.send_to(&numbered_reading(n), udp).expect("send");
    }
    signal("-CONT");
    // On loopback a datagram is either received by the gateway or dropped by the kernel at
    // the socket: the two counts must add up to what was sent, and the drops must show.
    let mut seen = (0.0, 0.0);
    switchyard_testkit::wait_for("every datagram accounted for", WAIT, || {
        seen = (
            metric("switchyard_gateway_packets_total") + metric("switchyard_gateway_rejects_total"),
            metric("switchyard_gateway_udp_kernel_drops"),
        );
        seen.0 + seen.1 == f64::from(SENT)
    })
    .unwrap_or_else(|e| panic!("{e}: received {}, kernel drops {}", seen.0, seen.1));
    assert!(seen.1 > 0.0, "the burst overflowed the socket: {seen:?}");
}

#[test]
fn an_ack_the_broker_has_not_acknowledged_does_not_end_the_switch() {
    let mut stack = Stack::start().expect("stack");
    let (_gateway, udp) = start_gateway(&stack, &[]);
    let device = client();
    let modem = 356_938_035_643_810u64;
    say_hello(&stack, &device, udp, modem);
    request_switch(&stack, modem, "00000000000000b8", records::Carrier::TMobile);
    let mut buf = [0u8; 512];
    device.recv_from(&mut buf).expect("the first Perform");

    // The broker goes away; the SIM's ACK reaches the gateway but its record cannot be
    // acknowledged, so the switch stays pending and the Perform is sent again.
    stack.broker.stop();
    // Drop any retransmission that came while the broker stopped: what arrives from here on
    // was sent after the ACK.
    device.set_nonblocking(true).expect("nonblocking");
    while device.recv_from(&mut buf).is_ok() {}
    device.set_nonblocking(false).expect("blocking");
    let ack = envelope(
        modem,
        2,
        Some(0xb8),
        Packet::CarrierSwitchAck {
            status: AckStatus::Ack,
            carrier: Carrier::TMobile,
        },
    );
    device
        .send_to(&ack.encode().expect("encode"), udp)
        .expect("send");
    let (n, _) = device
        .recv_from(&mut buf)
        .expect("the Perform is re-sent while the ACK is not on the broker");
    let again = Frame::decode(&buf[..n]).expect("decodes");
    assert_eq!(again.packet, Packet::CarrierSwitchPerform(Carrier::TMobile));

    // Broker back: the buffered ACK lands and only then does the switch end as acked.
    stack.broker.start_again().expect("broker back");
    let mut kinds = Vec::new();
    switchyard_testkit::wait_for("the switch to end acked", WAIT, || {
        kinds = stack
            .read_to_end::<DownlinkDelivery>("downlink-delivery")
            .map(|events| events.iter().map(|e| e.value.event).collect())
            .unwrap_or_default();
        kinds.contains(&DeliveryEvent::Acked)
    })
    .unwrap_or_else(|e| panic!("{e}: {kinds:?}"));
    assert_eq!(kinds.first(), Some(&DeliveryEvent::Sent), "{kinds:?}");
    assert!(kinds.contains(&DeliveryEvent::Retried), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == DeliveryEvent::Acked).count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        stack
            .read_to_end::<CarrierSwitchAck>("carrier-switch-ack")
            .expect("acks")
            .len(),
        1,
        "the ACK record is on the broker once"
    );
}

#[test]
fn a_switch_pending_when_the_gateway_dies_is_sent_again_after_its_restart() {
    let stack = Stack::start().expect("stack");
    let gateway = stack
        .start_gateway(&[("SWITCHYARD_RETRY_INITIAL_MS", "300".to_string())])
        .expect("gateway");
    let udp = gateway.udp;
    let device = client();
    let modem = 356_938_035_643_811u64;
    say_hello(&stack, &device, udp, modem);

    // First a request that ends at once (no such modem: undeliverable at its deadline), then
    // the one that stays pending because the device never answers.
    let mut gone = request("999", "00000000000000c0", records::Carrier::Verizon);
    gone.deadline = now_us() + 500_000;
    let pending = request(
        &modem.to_string(),
        "00000000000000c1",
        records::Carrier::Verizon,
    );
    stack
        .produce(
            "downstream-request",
            &[
                ("999".to_string(), gone, now_us() / 1000),
                (modem.to_string(), pending, now_us() / 1000),
            ],
        )
        .expect("requests");
    let mut buf = [0u8; 512];
    let (n, _) = device.recv_from(&mut buf).expect("the first Perform");
    assert_eq!(
        Frame::decode(&buf[..n])
            .expect("decodes")
            .envelope
            .and_then(|e| e.request_id),
        Some(0xc1)
    );
    // The fault lands where it matters: the group has committed past the finished request
    // but not past the pending one (the old gateway committed every request it took in).
    let bootstrap = stack.broker.bootstrap();
    switchyard_testkit::wait_for("the finished request committed", WAIT, || {
        switchyard_testkit::kafka::committed_total(
            &bootstrap,
            // The instance's own group (default instance id `gateway`).
            "switchyard-gateway-gateway",
            &["downstream-request"],
        )
        .is_ok_and(|c| c == 1)
    })
    .expect("committed up to the pending request, not past it");

    drop(gateway);
    device.set_nonblocking(true).expect("nonblocking");
    while device.recv_from(&mut buf).is_ok() {}
    device.set_nonblocking(false).expect("blocking");
    let _restarted = stack
        .start_gateway(&[
            ("SWITCHYARD_RETRY_INITIAL_MS", "300".to_string()),
            ("SWITCHYARD_GATEWAY_LISTEN", udp.to_string()),
        ])
        .expect("gateway again");
    // The restarted gateway reads the pending request again and sends it; the device has
    // not spoken since (its address comes from its session).
    let (n, from) = device
        .recv_from(&mut buf)
        .expect("the pending switch is sent again after the restart");
    let frame = Frame::decode(&buf[..n]).expect("decodes");
    assert_eq!(frame.packet, Packet::CarrierSwitchPerform(Carrier::Verizon));
    assert_eq!(frame.envelope.and_then(|e| e.request_id), Some(0xc1));
    let ack = envelope(
        modem,
        2,
        Some(0xc1),
        Packet::CarrierSwitchAck {
            status: AckStatus::Ack,
            carrier: Carrier::Verizon,
        },
    );
    device
        .send_to(&ack.encode().expect("encode"), from)
        .expect("send");
    let mut kinds = Vec::new();
    switchyard_testkit::wait_for("the switch to end acked", WAIT, || {
        kinds = stack
            .read_to_end::<DownlinkDelivery>("downlink-delivery")
            .map(|events| {
                events
                    .iter()
                    .filter(|e| e.value.request_id == "00000000000000c1")
                    .map(|e| e.value.event)
                    .collect()
            })
            .unwrap_or_default();
        kinds.contains(&DeliveryEvent::Acked)
    })
    .unwrap_or_else(|e| panic!("{e}: {kinds:?}"));
}

/// Issue 25 (7): the gateway commits `downstream-request` only up to its oldest pending
/// request, so a restart reads again the requests after it. One of them had already been
/// acked; the old gateway sent it again, and a SIM that had switched was switched again.
#[test]
fn a_switch_acked_before_a_sigkill_is_not_performed_again_after_the_restart() {
    acked_before_a_sigkill(AckReached::TheRequestsEnd);
}

/// The same, killed between the SIM's answer reaching `carrier-switch-ack` and the
/// request's `ACKED` reaching `downlink-delivery` (the gateway writes them in that order):
/// the answer alone must end the request. The gateway that read only `downlink-delivery`
/// performed the switch again.
#[test]
fn a_switch_whose_ack_is_on_the_broker_is_not_performed_again_after_a_sigkill_before_it_ended() {
    acked_before_a_sigkill(AckReached::OnlyTheAckTopic);
}

/// An answer on `carrier-switch-ack` naming a request of another modem (a faulty or
/// compromised device) ends nothing: the running gateway ignores it, and so must a
/// restarted one reading it back, or that request would never be sent.
#[test]
fn an_answer_from_another_modem_naming_a_request_does_not_end_it_at_a_restart() {
    acked_before_a_sigkill(AckReached::OnlyAnotherModemsAnswer);
}

/// How far the answer to the switch got before the kill.
#[derive(PartialEq)]
enum AckReached {
    /// Through the gateway: `carrier-switch-ack`, then `ACKED` on `downlink-delivery`.
    TheRequestsEnd,
    /// Written to `carrier-switch-ack` as the gateway does, the gateway killed before
    /// `ACKED`.
    OnlyTheAckTopic,
    /// The gateway killed, and an answer naming the request from another modem on
    /// `carrier-switch-ack`: the request did not end.
    OnlyAnotherModemsAnswer,
}

fn acked_before_a_sigkill(reached: AckReached) {
    let stack = Stack::start().expect("stack");
    let env = |udp: Option<SocketAddr>| {
        let mut env = vec![("SWITCHYARD_RETRY_INITIAL_MS", "300".to_string())];
        env.extend(udp.map(|u| ("SWITCHYARD_GATEWAY_LISTEN", u.to_string())));
        env
    };
    let gateway = stack.start_gateway(&env(None)).expect("gateway");
    let udp = gateway.udp;
    // Two modems whose requests share a partition (librdkafka's default partitioner:
    // CRC-32 of the key modulo the partition count), the silent one's request first.
    let partitions =
        switchyard_testkit::kafka::partition_count(&stack.broker.bootstrap(), "downstream-request")
            .expect("partitions") as u32;
    let partition = |m: u64| crc32fast::hash(m.to_string().as_bytes()) % partitions;
    let silent_modem = 356_938_035_643_901u64;
    let answering_modem = (silent_modem + 1..)
        .find(|m| partition(*m) == partition(silent_modem))
        .expect("a modem in the same partition");
    let (silent, answering) = (client(), client());
    say_hello(&stack, &silent, udp, silent_modem);
    say_hello(&stack, &answering, udp, answering_modem);
    request_switch(
        &stack,
        silent_modem,
        "00000000000000d1",
        records::Carrier::Verizon,
    );
    request_switch(
        &stack,
        answering_modem,
        "00000000000000d2",
        records::Carrier::TMobile,
    );
    let requests =
        switchyard_testkit::kafka::read_to_end(&stack.broker.bootstrap(), "downstream-request")
            .expect("requests");
    assert!(
        requests.len() == 2 && requests[0].partition == requests[1].partition,
        "both requests in one partition: {:?}",
        requests
            .iter()
            .map(|r| (r.partition, r.offset))
            .collect::<Vec<_>>()
    );

    let mut buf = [0u8; 512];
    let (n, from) = answering.recv_from(&mut buf).expect("request d2's Perform");
    let frame = Frame::decode(&buf[..n]).expect("decodes");
    assert_eq!(frame.envelope.and_then(|e| e.request_id), Some(0xd2));
    let d2_acked = || {
        stack
            .read_to_end::<DownlinkDelivery>("downlink-delivery")
            .is_ok_and(|events| {
                events.iter().any(|e| {
                    e.value.request_id == "00000000000000d2"
                        && e.value.event == DeliveryEvent::Acked
                })
            })
    };
    match reached {
        AckReached::TheRequestsEnd => {
            let ack = Packet::CarrierSwitchAck {
                status: AckStatus::Ack,
                carrier: Carrier::TMobile,
            };
            answering
                .send_to(
                    &envelope(answering_modem, 2, Some(0xd2), ack)
                        .encode()
                        .expect("encode"),
                    from,
                )
                .expect("ack");
            switchyard_testkit::wait_for("request d2 to end acked", WAIT, d2_acked).expect("acked");
            drop(gateway); // SIGKILL
        }
        AckReached::OnlyTheAckTopic | AckReached::OnlyAnotherModemsAnswer => {
            drop(gateway); // SIGKILL
            let answered_by = match reached {
                AckReached::OnlyTheAckTopic => answering_modem,
                _ => silent_modem,
            };
            let ack = CarrierSwitchAck {
                modem_id: answered_by.to_string(),
                request_id: Some("00000000000000d2".into()),
                status: records::AckStatus::Ack,
                carrier: records::Carrier::TMobile,
                received_at: now_us(),
                sequence: Some(2),
                reason: None,
            };
            stack
                .produce(
                    "carrier-switch-ack",
                    &[(answered_by.to_string(), ack, now_us() / 1000)],
                )
                .expect("the answer on carrier-switch-ack");
            // The fault lands where it matters: the request never ended in the log.
            assert!(!d2_acked(), "d2 has no ACKED on downlink-delivery");
        }
    }
    for device in [&silent, &answering] {
        device.set_nonblocking(true).expect("nonblocking");
        while device.recv_from(&mut buf).is_ok() {}
    }
    let restarted = stack.start_gateway(&env(Some(udp))).expect("gateway again");
    // The fault landed behind the ack: the pending request before it is read and sent again.
    silent
        .set_nonblocking(false)
        .and_then(|()| silent.set_read_timeout(Some(WAIT)))
        .expect("blocking");
    let (n, _) = silent.recv_from(&mut buf).expect("request d1 sent again");
    let frame = Frame::decode(&buf[..n]).expect("decodes");
    assert_eq!(frame.envelope.and_then(|e| e.request_id), Some(0xd1));
    if reached == AckReached::OnlyAnotherModemsAnswer {
        answering
            .set_nonblocking(false)
            .and_then(|()| answering.set_read_timeout(Some(WAIT)))
            .expect("blocking");
        let (n, _) = answering
            .recv_from(&mut buf)
            .expect("d2 sent again: another modem's answer did not end it");
        let frame = Frame::decode(&buf[..n]).expect("decodes");
        assert_eq!(frame.envelope.and_then(|e| e.request_id), Some(0xd2));
        return;
    }
    // d2, read again after d1, is passed over: counted, never sent.
    let passed_over = || {
        switchyard_testkit::http_get_text(restarted.metrics, "/metrics")
            .map(|m| {
                switchyard_testkit::metric_sum(&m, "switchyard_gateway_requests_ended_before_total")
            })
            .unwrap_or(-1.0)
    };
    switchyard_testkit::wait_for("request d2 to be passed over", WAIT, || {
        if let Ok((n, _)) = answering.recv_from(&mut buf) {
            panic!(
                "the acked switch was performed again: {:?}",
                Frame::decode(&buf[..n])
            );
        }
        passed_over() == 1.0
    })
    .expect("passed over");
    // Past a few of the retransmission periods (300 ms), still nothing.
    switchyard_testkit::wait_for("the silent modem's retries", WAIT, || {
        silent.recv_from(&mut buf).is_ok_and(|(n, _)| {
            Frame::decode(&buf[..n])
                .is_ok_and(|f| f.envelope.and_then(|e| e.request_id) == Some(0xd1))
        })
    })
    .expect("d1 re-sent");
    assert!(
        answering.recv_from(&mut buf).is_err(),
        "the acked switch was performed again"
    );
}

/// Issue 25 (8): a record the broker refuses (here: larger than the topic allows) was
/// counted by topic only and lost. It goes to `gateway-dlq` whole, with the broker's
/// error, counted by reason, and the gateway goes on.
#[test]
fn a_record_the_broker_refuses_is_dead_lettered_with_the_brokers_error() {
    let stack = Stack::start().expect("stack");
    switchyard_testkit::kafka::set_topic_config(
        &stack.broker.bootstrap(),
        "imu",
        "max.message.bytes",
        "250",
    )
    .expect("topic config");
    let gateway = stack.start_gateway(&[]).expect("gateway");
    let device = client();
    let reading = |bytes: usize| IotData {
        device_id: 1,
        timestamp: chrono::DateTime::from_timestamp_micros(now_us()).expect("now"),
        data: vec![7; bytes],
    };
    let too_large = Packet::IotData(reading(250)).encode().expect("encode");
    device.send_to(&too_large, gateway.udp).expect("send");

    let bootstrap = stack.broker.bootstrap();
    let mut letters = Vec::new();
    switchyard_testkit::wait_for("the refused reading in gateway-dlq", WAIT, || {
        letters =
            switchyard_testkit::kafka::read_to_end(&bootstrap, "gateway-dlq").unwrap_or_default();
        !letters.is_empty()
    })
    .expect("dead-lettered");
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    let header = |name: &str| letter.headers.get(name).cloned().unwrap_or_default();
    assert_eq!(header(switchyard_kafka::dead_letter::TOPIC), "imu");
    assert_eq!(header(switchyard_kafka::dead_letter::REASON), "refused");
    assert!(
        header(switchyard_kafka::dead_letter::ERROR).contains("too large"),
        "the broker's error: {:?}",
        letter.headers
    );
    assert_eq!(letter.key.as_deref(), Some(&b"0"[..]), "the original key");
    assert!(
        letter.payload.as_ref().is_some_and(|p| p.len() > 250),
        "the original record, whole"
    );
    let metrics = switchyard_testkit::http_get_text(gateway.metrics, "/metrics").expect("metrics");
    assert!(
        metrics.lines().any(
            |l| l.starts_with("switchyard_gateway_produce_failures_total{")
                && l.contains("topic=\"imu\"")
                && l.contains("reason=\"MessageSizeTooLarge\"")
                && l.ends_with(" 1")
        ),
        "counted by topic and reason: {}",
        metrics
            .lines()
            .filter(|l| l.contains("produce_failures"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The gateway goes on: a reading that fits is published.
    let fits = Packet::IotData(reading(4)).encode().expect("encode");
    device.send_to(&fits, gateway.udp).expect("send");
    assert_eq!(
        stack
            .consume_at_least::<SensorReading>("imu", 1, WAIT)
            .expect("imu")
            .len(),
        1
    );
}

/// Issue 25 (2): a signed packet captured on its way to the gateway holding the modem and
/// replayed to another instance was accepted there (that instance's window knew only the
/// holder's last record), its session record made the holder step aside, and the modem's
/// downlink went to the replayer. Then the holder refuted such a claim, but only after the
/// replayed packet's reading was published once. Now every record reserves numbers ahead of
/// the modem's highest, and another instance refuses up to the reservation: the replay is
/// refused outright, produces nothing, and the switch reaches the device, not the replayer.
#[test]
fn a_packet_replayed_to_another_authenticated_gateway_does_not_move_the_modems_downlink() {
    let stack = Stack::start().expect("stack");
    let key = hex::decode("000102030405060708090a0b0c0d0e0f").expect("hex");
    let keys = stack.broker.data_dir().join("modem-keys");
    std::fs::write(&keys, "42 000102030405060708090a0b0c0d0e0f\n").expect("keys file");
    let start = |id: &str| {
        stack
            .start_gateway(&[
                ("SWITCHYARD_MODEM_KEYS", keys.display().to_string()),
                ("SWITCHYARD_RETRY_INITIAL_MS", "300".to_string()),
                ("SWITCHYARD_GATEWAY_ID", id.to_string()),
            ])
            .expect("gateway healthy")
    };
    let (holder, other) = (start("gw-a"), start("gw-b"));
    let metric = |g: &switchyard_testkit::Gateway, name: &str| {
        switchyard_testkit::http_get_text(g.metrics, "/metrics")
            .map(|m| switchyard_testkit::metric_sum(&m, name))
            .unwrap_or(-1.0)
    };
    let signed = |sequence: u32| {
        envelope(42, sequence, None, Packet::IotStatus(IotStatus::Nominal))
            .encode_signed(&key)
            .expect("sign")
    };
    let (device, replayer) = (client(), client());
    // The device talks to gw-a: its first packet is written (sequence 1), the next ones
    // only move the number until the heartbeat.
    for sequence in 1..=4 {
        device.send_to(&signed(sequence), holder.udp).expect("send");
    }
    switchyard_testkit::wait_for("gw-a to hold the modem and gw-b to know it", WAIT, || {
        metric(&holder, "switchyard_gateway_packets_total") == 4.0
            && metric(&other, "switchyard_gateway_modems_elsewhere") == 1.0
            && stack
                .read_to_end::<IotStatusReport>("iot-status")
                .is_ok_and(|s| s.len() == 4)
    })
    .expect("held by gw-a, its 4 statuses published");

    // Packets 3 and 4, captured, replayed to gw-b: refused there, nothing published.
    for sequence in [3, 4] {
        replayer
            .send_to(&signed(sequence), other.udp)
            .expect("replay");
    }
    switchyard_testkit::wait_for("gw-b to refuse both replays", WAIT, || {
        metric(&other, "switchyard_gateway_rejects_total") == 2.0
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: gw-b accepted {} packets, refused {}",
            metric(&other, "switchyard_gateway_packets_total"),
            metric(&other, "switchyard_gateway_rejects_total")
        )
    });
    assert_eq!(
        [
            metric(&other, "switchyard_gateway_packets_total"),
            metric(&other, "switchyard_gateway_known_modems"),
            metric(&holder, "switchyard_gateway_modems_moved_away_total"),
            metric(&holder, "switchyard_gateway_known_modems"),
        ],
        [0.0, 0.0, 0.0, 1.0],
        "gw-b accepted nothing, gw-a still holds the modem"
    );
    // Read to the end: a replay that got through would be a fifth status.
    assert_eq!(
        stack
            .read_to_end::<IotStatusReport>("iot-status")
            .expect("statuses")
            .len(),
        4
    );

    // A switch reaches the device, from gw-a; the replayer gets nothing.
    request_switch(&stack, 42, "00000000000000e1", records::Carrier::Verizon);
    let mut buf = [0u8; 512];
    let (n, from) = device
        .recv_from(&mut buf)
        .expect("the Perform reaches the device");
    assert_eq!(from, holder.udp, "sent by gw-a");
    let frame = Frame::decode(&buf[..n]).expect("decodes");
    assert_eq!(frame.envelope.and_then(|e| e.request_id), Some(0xe1));
    no_perform_reaches(&replayer, "replayer");
}

/// Issue 25 (6): start-up aborted when `device-sessions` was not read within 60 s, and
/// said only "starting" meanwhile. A long restore now says how far it got in `/health`
/// (503, "restoring device-sessions: …"), no timer aborts it, and SIGTERM ends it.
#[test]
fn a_long_restore_says_so_in_health_and_sigterm_ends_it() {
    let stack = Stack::start().expect("stack");
    // Sessions another instance wrote: 150,000 modems.
    let t = now_us();
    let sessions: Vec<(String, records::DeviceSession, i64)> = (0..150_000u64)
        .map(|m| {
            let session = records::DeviceSession {
                modem_id: m.to_string(),
                gateway: "gw-elsewhere".into(),
                address: "198.51.100.7:4000".into(),
                protocol: records::SessionProtocol::Envelope,
                authenticated: true,
                first_seen: t,
                last_seen: t,
                address_changes: 0,
                clock_offset_ms: None,
                sequence: Some(1),
                sequence_reserved: None,
            };
            (m.to_string(), session, t / 1000)
        })
        .collect();
    stack
        .produce("device-sessions", &sessions)
        .expect("sessions");

    let metrics: SocketAddr = (
        [127, 0, 0, 1],
        switchyard_testkit::free_port().expect("port"),
    )
        .into();
    let mut gateway = stack
        .spawn(
            "switchyard-gateway",
            "gateway",
            &[
                ("SWITCHYARD_INSECURE", "true".to_string()),
                ("SWITCHYARD_GATEWAY_LISTEN", "127.0.0.1:0".to_string()),
                ("SWITCHYARD_METRICS_LISTEN", metrics.to_string()),
            ],
        )
        .expect("gateway");
    let mut said = String::new();
    gateway
        .wait_until(WAIT, || {
            said = switchyard_testkit::http_get_text(metrics, "/health").unwrap_or_default();
            said.starts_with("restoring device-sessions")
        })
        .unwrap_or_else(|e| panic!("{e}: /health said {said:?}"));
    let status = gateway
        .terminate(Duration::from_secs(10))
        .expect("SIGTERM ends the restore");
    assert!(status.success(), "{status}");
}

/// Scale-out: two gateways on one Kafka, a modem on each. Each switch leaves from the
/// gateway holding its modem; when a modem moves to the other gateway (a new NAT mapping
/// at the balancer), its next switch leaves from there, and the gateway it left neither
/// sends to it nor reports the request undeliverable at the deadline.
#[test]
fn two_gateways_share_one_kafka_and_each_switch_leaves_from_the_gateway_holding_the_modem() {
    let stack = Stack::start().expect("stack");
    let start = |id: &str| {
        stack
            .start_gateway(&[
                ("SWITCHYARD_RETRY_INITIAL_MS", "300".to_string()),
                ("SWITCHYARD_GATEWAY_ID", id.to_string()),
            ])
            .expect("gateway healthy")
    };
    let (a, b) = (start("gw-a"), start("gw-b"));
    let metric = |g: &switchyard_testkit::Gateway, name: &str| {
        switchyard_testkit::http_get_text(g.metrics, "/metrics")
            .map(|m| switchyard_testkit::metric_sum(&m, name))
            .unwrap_or(-1.0)
    };
    let (dev1, dev2) = (client(), client());
    let (m1, m2) = (101u64, 202u64);
    let send = |dev: &UdpSocket, to: SocketAddr, frame: Frame| {
        dev.send_to(&frame.encode().expect("encode"), to)
            .expect("send");
    };
    let status = Packet::IotStatus(IotStatus::Nominal);
    send(&dev1, a.udp, envelope(m1, 1, None, status.clone()));
    send(&dev2, b.udp, envelope(m2, 1, None, status.clone()));
    switchyard_testkit::wait_for(
        "each gateway to hold one modem and know the other's",
        WAIT,
        || {
            [&a, &b].iter().all(|g| {
                metric(g, "switchyard_gateway_known_modems") == 1.0
                    && metric(g, "switchyard_gateway_modems_elsewhere") == 1.0
            })
        },
    )
    .expect("sessions shared");

    // A Perform arrives from the gateway the device talks to; the device answers it there.
    let answer = |dev: &UdpSocket, modem: u64, expected_from: SocketAddr, sequence: u32| {
        let mut buf = [0u8; 512];
        let (n, from) = dev.recv_from(&mut buf).expect("a Perform arrives");
        assert_eq!(
            from, expected_from,
            "sent by the gateway holding modem {modem}"
        );
        let frame = Frame::decode(&buf[..n]).expect("decodes");
        let Packet::CarrierSwitchPerform(carrier) = frame.packet else {
            panic!("not a Perform: {frame:?}");
        };
        let request_id = frame.envelope.and_then(|e| e.request_id);
        let ack = Packet::CarrierSwitchAck {
            status: AckStatus::Ack,
            carrier,
        };
        send(dev, from, envelope(modem, sequence, request_id, ack));
        request_id
    };
    request_switch(&stack, m1, "0000000000000001", records::Carrier::Verizon);
    request_switch(&stack, m2, "0000000000000002", records::Carrier::TMobile);
    assert_eq!(answer(&dev1, m1, a.udp, 2), Some(1));
    assert_eq!(answer(&dev2, m2, b.udp, 2), Some(2));

    // Modem 1 moves to gateway b.
    send(&dev1, b.udp, envelope(m1, 3, None, status));
    switchyard_testkit::wait_for("gateway a to learn that modem 1 moved", WAIT, || {
        metric(&a, "switchyard_gateway_modems_moved_away_total") == 1.0
            && metric(&a, "switchyard_gateway_known_modems") == 0.0
    })
    .expect("moved");
    // A request with a short deadline, so gateway a reaches it while the test waits.
    let mut moved = request(
        &m1.to_string(),
        "0000000000000003",
        records::Carrier::AtAndT,
    );
    moved.deadline = moved.requested_at + 4_000_000;
    stack
        .produce(
            "downstream-request",
            &[(m1.to_string(), moved, now_us() / 1000)],
        )
        .expect("request");
    // Request 3 comes from gateway b only; a re-send of request 1 by gateway a from before
    // its ACK landed is passed over.
    let mut buf = [0u8; 512];
    loop {
        let (n, from) = dev1.recv_from(&mut buf).expect("request 3's Perform");
        let frame = Frame::decode(&buf[..n]).expect("decodes");
        let request_id = frame.envelope.and_then(|e| e.request_id);
        if request_id == Some(1) {
            continue;
        }
        assert_eq!(
            (request_id, from),
            (Some(3), b.udp),
            "after the move, only gateway b sends to modem 1"
        );
        let ack = Packet::CarrierSwitchAck {
            status: AckStatus::Ack,
            carrier: Carrier::AtAndT,
        };
        send(&dev1, b.udp, envelope(m1, 4, Some(3), ack));
        break;
    }
    switchyard_testkit::wait_for("gateway a to leave request 3 to gateway b", WAIT, || {
        metric(&a, "switchyard_gateway_requests_left_to_holder_total") == 1.0
    })
    .expect("left to the holder");

    // Every request acked once, from the gateway holding the modem; nothing undeliverable.
    let events = stack
        .read_to_end::<DownlinkDelivery>("downlink-delivery")
        .expect("deliveries");
    let acked = |id: &str| {
        events
            .iter()
            .filter(|e| e.value.request_id == id && e.value.event == DeliveryEvent::Acked)
            .count()
    };
    for id in ["0000000000000001", "0000000000000002", "0000000000000003"] {
        assert_eq!(
            acked(id),
            1,
            "{id}: {events:?}",
            events = events.iter().map(|e| &e.value).collect::<Vec<_>>()
        );
    }
    assert!(
        events
            .iter()
            .all(|e| e.value.event != DeliveryEvent::Undeliverable),
        "the gateway that did not hold a modem reported its request undeliverable"
    );
}

/// Anti-replay across a clean stop: a signed packet captured before the gateway stopped is
/// refused by the gateway that starts after it, because the stopping gateway writes each
/// session's exact highest number; the device's next packet passes, no resync needed.
#[test]
fn a_packet_captured_before_a_clean_stop_is_refused_after_it() {
    captured_across_a_restart(Stop::Term);
}

/// Issue 25 (3): after a SIGKILL the session records knew only the numbers of their last
/// heartbeat, so packets accepted since could be replayed to the next gateway once each
/// (readings duplicated, the route movable). Now a record reserves numbers ahead and a
/// packet's contents reach the broker only once a reservation covering it has: the next
/// gateway refuses up to the reservation, and resynchronises the device above it.
#[test]
fn a_packet_captured_before_a_sigkill_is_refused_after_it_and_the_device_resynchronised() {
    captured_across_a_restart(Stop::Kill);
}

#[derive(Clone, Copy, PartialEq)]
enum Stop {
    Term,
    Kill,
}

fn captured_across_a_restart(stop: Stop) {
    let stack = Stack::start().expect("stack");
    let key = hex::decode("000102030405060708090a0b0c0d0e0f").expect("hex");
    let keys = stack.broker.data_dir().join("modem-keys");
    std::fs::write(&keys, "42 000102030405060708090a0b0c0d0e0f\n").expect("keys file");
    let keys_env = ("SWITCHYARD_MODEM_KEYS", keys.display().to_string());
    let (mut gateway, udp) = start_gateway(&stack, std::slice::from_ref(&keys_env));
    let device = client();
    let signed = |sequence: u32| {
        envelope(42, sequence, None, Packet::IotStatus(IotStatus::Nominal))
            .encode_signed(&key)
            .expect("sign")
    };
    // Three packets; the first writes the session (sequence 1) and reserves numbers ahead;
    // once that is on the broker (its status is published after it), the next two only
    // move the sequence number.
    device.send_to(&signed(1), udp).expect("send");
    stack
        .consume_at_least::<IotStatusReport>("iot-status", 1, WAIT)
        .expect("accepted");
    for sequence in 2..=3 {
        device.send_to(&signed(sequence), udp).expect("send");
    }
    switchyard_testkit::wait_for("3 statuses", WAIT, || {
        stack
            .read_to_end::<IotStatusReport>("iot-status")
            .is_ok_and(|s| s.len() >= 3)
    })
    .expect("accepted");
    let captured = signed(3);
    match stop {
        Stop::Term => {
            gateway
                .terminate(Duration::from_secs(20))
                .expect("the gateway stops on SIGTERM");
        }
        Stop::Kill => gateway.kill(),
    }
    let sessions = stack
        .read_to_end::<records::DeviceSession>("device-sessions")
        .expect("sessions");
    let last = sessions
        .last()
        .map(|s| (s.value.sequence, s.value.sequence_reserved));
    let floor = match stop {
        // The stopping gateway wrote the exact highest number.
        Stop::Term => {
            assert_eq!(last, Some((Some(3), None)), "{sessions:?}");
            3
        }
        // The fault landed where it matters: the log does not know 2 and 3, only the
        // reservation made with 1.
        Stop::Kill => {
            let Some((Some(1), Some(reserved))) = last else {
                panic!("the first-sight record and its reservation: {sessions:?}");
            };
            assert!(reserved >= 3);
            u32::try_from(reserved).expect("a u32")
        }
    };

    let listen = ("SWITCHYARD_GATEWAY_LISTEN", udp.to_string());
    // The same UDP port (`udp`): the device does not know the gateway restarted.
    let (gateway, _) = start_gateway(&stack, &[keys_env, listen]);
    device.send_to(&captured, udp).expect("replay");
    device.send_to(&signed(4), udp).expect("send");
    let next = match stop {
        Stop::Term => 4,
        Stop::Kill => {
            // 4 is refused too (it may have been accepted before the kill); the answer
            // moves the device above the reservation.
            device.set_read_timeout(Some(WAIT)).expect("timeout");
            let mut buf = [0u8; 512];
            let (n, _) = device.recv_from(&mut buf).expect("a resync");
            let frame = verify(&buf[..n], &key).expect("signed with the modem's key");
            assert_eq!(frame.packet, Packet::SequenceResync { above: floor });
            device.send_to(&signed(floor + 1), udp).expect("send");
            floor + 1
        }
    };
    let refused = match stop {
        Stop::Term => vec!["replayed_sequence"],
        Stop::Kill => vec!["replayed_sequence", "replayed_sequence"],
    };
    switchyard_testkit::wait_for(
        &format!("sequence {next} on iot-status and the refusals on gateway-rejects"),
        WAIT,
        || {
            stack
                .read_to_end::<IotStatusReport>("iot-status")
                .is_ok_and(|s| s.len() >= 4)
                && stack
                    .read_to_end::<GatewayReject>("gateway-rejects")
                    .is_ok_and(|r| r.len() >= refused.len())
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}: statuses {:?}, rejects {:?}\n{}",
            stack.read_to_end::<IotStatusReport>("iot-status"),
            stack.read_to_end::<GatewayReject>("gateway-rejects"),
            gateway.log_text()
        )
    });
    // Read to the end: a replay that got through would be a fifth record.
    let statuses = stack
        .read_to_end::<IotStatusReport>("iot-status")
        .expect("statuses");
    assert_eq!(
        statuses
            .iter()
            .map(|s| s.value.sequence)
            .collect::<Vec<_>>(),
        vec![Some(1), Some(2), Some(3), Some(i64::from(next))],
        "3 before the restart, then the next only"
    );
    let rejects = stack
        .read_to_end::<GatewayReject>("gateway-rejects")
        .expect("rejects");
    assert_eq!(
        rejects
            .iter()
            .map(|r| r.value.reason.as_str())
            .collect::<Vec<_>>(),
        refused
    );
}

/// Issue 25 (2): the same signed packet reaching two authenticated gateways at once (a
/// replay to the second of a packet on its way to the first, or the other way round) was
/// accepted and published by both: neither had read the other's session record yet. Now a
/// packet whose number only its own record reserves is published once that record is read
/// back, and only if no other instance's record came first in the log: exactly one wins.
#[test]
fn the_same_packet_at_two_authenticated_gateways_at_once_is_published_once() {
    const MODEMS: u64 = 20;
    let stack = Stack::start().expect("stack");
    let key = hex::decode("000102030405060708090a0b0c0d0e0f").expect("hex");
    let keys = stack.broker.data_dir().join("modem-keys");
    let lines: String = (1..=MODEMS)
        .map(|m| format!("{m} 000102030405060708090a0b0c0d0e0f\n"))
        .collect();
    std::fs::write(&keys, lines).expect("keys file");
    let start = |id: &str| {
        stack
            .start_gateway(&[
                ("SWITCHYARD_MODEM_KEYS", keys.display().to_string()),
                ("SWITCHYARD_GATEWAY_ID", id.to_string()),
            ])
            .expect("gateway healthy")
    };
    let gateways = [start("gw-a"), start("gw-b")];
    let metric = |g: &switchyard_testkit::Gateway, name: &str| {
        switchyard_testkit::http_get_text(g.metrics, "/metrics")
            .map(|m| switchyard_testkit::metric_sum(&m, name))
            .unwrap_or(-1.0)
    };
    let total = |name: &str| gateways.iter().map(|g| metric(g, name)).sum::<f64>();
    let (device, replayer) = (client(), client());
    for modem in 1..=MODEMS {
        let packet = envelope(modem, 1, None, Packet::IotStatus(IotStatus::Nominal))
            .encode_signed(&key)
            .expect("sign");
        device.send_to(&packet, gateways[0].udp).expect("send");
        replayer.send_to(&packet, gateways[1].udp).expect("replay");
    }
    let received =
        || total("switchyard_gateway_packets_total") + total("switchyard_gateway_rejects_total");
    switchyard_testkit::wait_for("both gateways to take every copy and decide", WAIT, || {
        received() == 2.0 * MODEMS as f64
            && total("switchyard_gateway_packets_waiting_for_the_log") == 0.0
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: received {}, waiting {}",
            received(),
            total("switchyard_gateway_packets_waiting_for_the_log")
        )
    });
    // The winners' statuses go out as the log decides: wait for them, then read to the end
    // (a copy published by both would be a second status for its modem).
    switchyard_testkit::wait_for("a status per modem", WAIT, || {
        stack
            .read_to_end::<IotStatusReport>("iot-status")
            .is_ok_and(|s| s.len() >= MODEMS as usize)
    })
    .expect("statuses");
    let statuses = stack
        .read_to_end::<IotStatusReport>("iot-status")
        .expect("statuses");
    let mut modems: Vec<String> = statuses.iter().map(|s| s.value.modem_id.clone()).collect();
    modems.sort();
    modems.dedup();
    assert_eq!(
        (statuses.len(), modems.len()),
        (MODEMS as usize, MODEMS as usize),
        "one status per modem"
    );
    // Each second copy was refused (its window already raised) or withheld (the log decided).
    assert_eq!(
        total("switchyard_gateway_rejects_total")
            + total("switchyard_gateway_packets_withheld_total"),
        MODEMS as f64
    );
    // And each modem is held by exactly one of them: the one whose copy was published.
    switchyard_testkit::wait_for("one holder per modem", WAIT, || {
        total("switchyard_gateway_known_modems") == MODEMS as f64
    })
    .unwrap_or_else(|e| panic!("{e}: {}", total("switchyard_gateway_known_modems")));
}

/// Issue 25 (6): sessions never expired, so `device-sessions` and the table grew with every
/// modem ever heard. Now a session not heard for the expiry ends: a modem without a key (here
/// the legacy v1 device) is deleted from the topic (a tombstone, its last record), a keyed
/// modem's record stays for its replay floor; neither has a downlink route any more, and a
/// restart neither takes them back nor forgets the floor.
#[test]
fn sessions_of_silent_modems_expire_and_a_keyed_modems_floor_outlives_its_route() {
    let stack = Stack::start().expect("stack");
    let key = hex::decode("000102030405060708090a0b0c0d0e0f").expect("hex");
    let keys = stack.broker.data_dir().join("modem-keys");
    std::fs::write(&keys, "42 000102030405060708090a0b0c0d0e0f\n").expect("keys file");
    let env = [
        ("SWITCHYARD_MODEM_KEYS", keys.display().to_string()),
        ("SWITCHYARD_LEGACY_MODEM_ID", "5".to_string()),
        ("SWITCHYARD_SESSION_EXPIRY_SECS", "3".to_string()),
    ];
    let switchyard_testkit::Gateway {
        service: mut gateway,
        udp,
        metrics,
    } = stack.start_gateway(&env).expect("gateway healthy");
    let (legacy, keyed) = (client(), client());
    let captured = envelope(42, 1, None, Packet::IotStatus(IotStatus::Nominal))
        .encode_signed(&key)
        .expect("sign");
    keyed.send_to(&captured, udp).expect("send");
    let v1 = Frame {
        envelope: None,
        packet: Packet::IotStatus(IotStatus::Nominal),
    };
    legacy
        .send_to(&v1.encode().expect("encode"), udp)
        .expect("send");
    let expired = |record: &str| {
        switchyard_testkit::metric_sum(
            &switchyard_testkit::http_get_text(metrics, "/metrics").unwrap_or_default(),
            &format!("switchyard_gateway_sessions_expired_total{{record=\"{record}\"}}"),
        )
    };
    switchyard_testkit::wait_for("both sessions expired", WAIT, || {
        expired("deleted") >= 1.0 && expired("kept") >= 1.0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log_text()));
    let latest = || {
        let mut latest = std::collections::HashMap::new();
        for r in
            switchyard_testkit::kafka::read_to_end(&stack.broker.bootstrap(), "device-sessions")
                .expect("sessions")
        {
            let modem = String::from_utf8(r.key.clone().expect("keyed")).expect("utf-8");
            latest.insert(modem, r.payload.is_some());
        }
        latest
    };
    switchyard_testkit::wait_for("the legacy modem's tombstone", WAIT, || {
        latest().get("5") == Some(&false)
    })
    .unwrap_or_else(|e| panic!("{e}: latest record has a value: {:?}", latest()));
    assert_eq!(
        latest().get("42"),
        Some(&true),
        "the keyed modem's record stays"
    );
    assert_eq!(
        (expired("deleted"), expired("kept")),
        (1.0, 1.0),
        "each expired once"
    );

    // No route: a switch for the keyed modem is not sent to its old address; it ends
    // `no_known_address` at its deadline.
    let ended_unsent = |request_id: &str| {
        let mut req = request("42", request_id, records::Carrier::Verizon);
        req.deadline = now_us() + 2_000_000;
        stack
            .produce(
                "downstream-request",
                &[("42".to_string(), req, now_us() / 1000)],
            )
            .expect("request");
        switchyard_testkit::wait_for("the switch given up", WAIT, || {
            stack
                .read_to_end::<DownlinkDelivery>("downlink-delivery")
                .is_ok_and(|d| {
                    d.iter().any(|e| {
                        e.value.reason.as_deref() == Some("no_known_address")
                            && e.value.request_id == request_id
                    })
                })
        })
        .expect("no_known_address");
        no_perform_reaches(&keyed, "expired modem");
    };
    ended_unsent("00000000000000e1");

    // After a crash and a restart: still no route, and the captured packet still refused.
    gateway.kill();
    let (gateway, _) = start_gateway(
        &stack,
        &[
            env[0].clone(),
            env[1].clone(),
            env[2].clone(),
            ("SWITCHYARD_GATEWAY_LISTEN", udp.to_string()),
        ],
    );
    ended_unsent("00000000000000e2");
    keyed.send_to(&captured, udp).expect("replay");
    switchyard_testkit::wait_for("the replay refused", WAIT, || {
        stack
            .read_to_end::<GatewayReject>("gateway-rejects")
            .is_ok_and(|r| r.iter().any(|r| r.value.reason == "replayed_sequence"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log_text()));
    let statuses = stack
        .read_to_end::<IotStatusReport>("iot-status")
        .expect("statuses");
    assert_eq!(
        statuses.len(),
        2,
        "one per modem, the replay not among them"
    );
}

/// Issue 25 (4): a SIM that refused a Perform as not fresh could only answer a plain NACK,
/// so the request ended "the SIM refused the switch" with nothing to say why, and the
/// gateway went on numbering from where it was. Now the SIM's Perform Refused ends the
/// request NACKed with the reason, and the next Perform to the modem is numbered above the
/// last one the SIM executed.
#[test]
fn a_perform_the_sim_refuses_as_stale_ends_nacked_with_the_reason_and_the_next_is_numbered_above() {
    let stack = Stack::start().expect("stack");
    let key = hex::decode("000102030405060708090a0b0c0d0e0f").expect("hex");
    let keys = stack.broker.data_dir().join("modem-keys");
    std::fs::write(&keys, "42 000102030405060708090a0b0c0d0e0f\n").expect("keys file");
    let (gateway, udp) = start_gateway(
        &stack,
        &[("SWITCHYARD_MODEM_KEYS", keys.display().to_string())],
    );
    let device = client();
    let signed = |sequence: u32, request_id: Option<u64>, packet: Packet| {
        envelope(42, sequence, request_id, packet)
            .encode_signed(&key)
            .expect("sign")
    };
    device
        .send_to(&signed(1, None, Packet::IotStatus(IotStatus::Nominal)), udp)
        .expect("send");
    stack
        .consume_at_least::<IotStatusReport>("iot-status", 1, WAIT)
        .expect("the gateway saw the modem");
    let perform = |request: &str| {
        request_switch(&stack, 42, request, records::Carrier::Verizon);
        let mut buf = [0u8; 512];
        let (n, _) = device.recv_from(&mut buf).expect("a Perform");
        let frame = verify(&buf[..n], &key).expect("signed with the modem's key");
        assert_eq!(frame.packet, Packet::CarrierSwitchPerform(Carrier::Verizon));
        frame.envelope.expect("enveloped")
    };
    let first = perform("00000000000000d1");
    // The SIM executed a Perform numbered far above (another cloud's clock ran ahead).
    let executed = first.sequence + 100_000;
    let refused = Packet::PerformRefused {
        carrier: Carrier::AtAndT,
        executed,
    };
    device
        .send_to(&signed(2, first.request_id, refused), udp)
        .expect("send");
    let acks = stack
        .consume_at_least::<CarrierSwitchAck>("carrier-switch-ack", 1, WAIT)
        .expect("acks");
    let [ack] = acks.as_slice() else {
        panic!("one answer: {acks:?}\n{}", gateway.log_text());
    };
    assert_eq!(
        (
            ack.value.request_id.as_deref(),
            ack.value.status,
            ack.value.carrier
        ),
        (
            Some("00000000000000d1"),
            records::AckStatus::Nack,
            records::Carrier::AtAndT
        )
    );
    assert!(
        ack.value
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("stale_perform") && r.contains(&executed.to_string())),
        "{:?}",
        ack.value.reason
    );
    // The request ended at the gateway: answered, not re-sent.
    switchyard_testkit::wait_for("the delivery acked", WAIT, || {
        stack
            .read_to_end::<DownlinkDelivery>("downlink-delivery")
            .is_ok_and(|d| {
                d.iter().any(|e| {
                    e.value.request_id == "00000000000000d1"
                        && e.value.event == DeliveryEvent::Acked
                })
            })
    })
    .expect("acked");
    let second = perform("00000000000000d2");
    assert!(
        second.sequence > executed,
        "the next Perform is numbered {} , above {executed}",
        second.sequence
    );
}

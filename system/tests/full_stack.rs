//! The whole local stack on real processes: Apache Kafka, the registry, the gateway (with modem
//! keys), grafana-projector, carrier-state, anomaly-detector, the switch API, pcscd with the
//! software SIM in vpcd's reader, and the modem simulator reaching it over PC/SC.
//!
//! 1. Uplink: the modem's readings are on `imu` with their values and sensor timestamps, and
//!    on `imu-grafana` without the timestamp, with record time = sensor time, read back with
//!    Confluent's Python client (AvroDeserializer through the registry).
//! 2. Downlink: a switch requested through the API reaches the SIM over PC/SC, its ACK comes
//!    back, and `carrier-state` and the API show the new carrier.
//! 3. A packet of the original Python system's encoder (the seed vectors) sent over UDP is
//!    accepted as a v1 packet.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};
use switchyard_schemas::records::now_us;

use serde_json::Value;
use switchyard_schemas::records::{
    AckStatus, Carrier, CarrierState, CarrierSwitchAck, SensorReading,
};
use switchyard_testkit::{ensure_pcscd, wait_for, workspace_binary, Service, Stack, VPCD};

const MODEM: &str = "777";
const KEY: &str = "00112233445566778899aabbccddeeff";
const TOKEN: &str = "system-test-token-0123456789";
const WAIT: Duration = Duration::from_secs(90);
const SEED_VECTORS: &str = include_str!("../../edge/protocol/tests/vectors/seed-vectors.json");

fn api_call(api: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    common::api_call(api, TOKEN, method, path, body)
}

/// Records of a topic as Confluent's Python client decodes them.
fn python_read(stack: &Stack, topic: &str, at_least: usize) -> Vec<Value> {
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/read_topic.py"
        ))
        .args([
            &stack.broker.bootstrap(),
            &stack.registry.url(),
            topic,
            &at_least.to_string(),
        ])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "Python client read fewer than {at_least} from {topic}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

#[test]
fn the_three_data_flows_on_the_whole_local_stack() {
    let stack = Stack::start().expect("stack");
    let dir = stack.broker.data_dir().to_path_buf();
    let _pcscd = ensure_pcscd(&dir).expect("pcscd");
    let mut sim = Command::new(workspace_binary("switchyard-sim").expect("built"));
    sim.args([
        "--vpcd",
        VPCD,
        "--modem-id",
        MODEM,
        "--key",
        KEY,
        "--carrier",
        "at&t",
    ]);
    let _sim = Service::spawn("switchyard-sim", sim, &dir).expect("sim");

    let keys = dir.join("modem-keys");
    std::fs::write(&keys, format!("{MODEM} {KEY}\n")).expect("keys");
    let gateway = stack
        .start_gateway(&[
            ("SWITCHYARD_MODEM_KEYS", keys.display().to_string()),
            ("SWITCHYARD_RETRY_INITIAL_MS", "300".into()),
        ])
        .expect("gateway");
    let udp = gateway.udp;
    let mut processors = Vec::new();
    for p in ["grafana-projector", "carrier-state", "anomaly-detector"] {
        processors.push(stack.start_processor(p, p, &[]).expect(p).0);
    }
    let (_api_service, api) = stack.start_api(TOKEN, &[]).expect("API ready");

    let mut modem = Command::new(workspace_binary("switchyard-modem").expect("built"));
    modem.args([
        "--sim",
        "pcsc",
        "--gateway",
        &udp.to_string(),
        "--rates",
        "5,0,0",
        "--status-secs",
        "1",
    ]);
    let started = Instant::now();
    let modem = Service::spawn("switchyard-modem", modem, &dir).expect("modem");

    // 1. Uplink: readings on imu, with values in the imu range and sensor timestamps from now.
    let mut readings = Vec::new();
    wait_for("10 imu readings from the modem", WAIT, || {
        readings = stack
            .consume_at_least::<SensorReading>("imu", 10, Duration::from_secs(2))
            .unwrap_or_default();
        readings.len() >= 10
    })
    .unwrap_or_else(|e| panic!("{e}\n--- modem:\n{}", modem.log_text()));
    let since = now_us() - started.elapsed().as_micros() as i64 - 5_000_000;
    for r in &readings {
        let v = &r.value;
        assert_eq!((v.modem_id.as_str(), v.device_id), (MODEM, 1));
        let value = v.value.expect("an i32 reading");
        assert!((-1000..=1000).contains(&value), "{value}");
        assert!(
            v.timestamp >= since && v.timestamp <= now_us(),
            "{}",
            v.timestamp
        );
        assert!(v.received_at >= v.timestamp, "received after it was sensed");
    }
    // ... and on imu-grafana, read by Confluent's client: no timestamp field, record time =
    // sensor time.
    let by_time: HashMap<i64, i32> = readings
        .iter()
        .filter_map(|r| Some((r.value.timestamp / 1000, r.value.value?)))
        .collect();
    let projected = python_read(&stack, "imu-grafana", 10);
    let mut matched = 0;
    for p in &projected {
        let value = &p["value"];
        assert!(
            value.get("timestamp").is_none(),
            "no timestamp field: {value}"
        );
        assert_eq!(value["modem_id"], MODEM);
        let ms = p["timestamp_ms"].as_i64().expect("record time");
        if let Some(v) = by_time.get(&ms) {
            assert_eq!(value["value"].as_i64(), Some(i64::from(*v)), "{p}");
            matched += 1;
        }
    }
    assert!(
        matched >= 5,
        "record time is the sensor time: {matched} of {} matched",
        projected.len()
    );

    // 2. Downlink through the API, over PC/SC to the SIM and back.
    wait_for("the modem in the API", WAIT, || {
        api_call(api, "GET", &format!("/modems/{MODEM}"), None).0 == 200
    })
    .expect("modem known");
    let (status, accepted) = api_call(
        api,
        "POST",
        &format!("/modems/{MODEM}/carrier"),
        Some(r#"{"carrier":"verizon"}"#),
    );
    assert_eq!(status, 202, "{accepted}");
    let request_id = accepted["request_id"].as_str().expect("id").to_string();
    let mut finished = Value::Null;
    wait_for("the switch to finish", WAIT, || {
        finished = api_call(api, "GET", &format!("/requests/{request_id}"), None).1;
        !matches!(
            finished["state"].as_str(),
            Some("requested" | "sent") | None
        )
    })
    .unwrap_or_else(|e| panic!("{e}\n--- modem:\n{}", modem.log_text()));
    assert_eq!(finished["state"], "acked", "{finished}");
    assert_eq!(
        api_call(api, "GET", &format!("/modems/{MODEM}"), None).1["carrier"],
        "verizon"
    );
    let acks = stack
        .read_to_end::<CarrierSwitchAck>("carrier-switch-ack")
        .expect("acks");
    let ack = acks
        .iter()
        .find(|a| a.value.request_id.as_deref() == Some(request_id.as_str()))
        .expect("the SIM's ACK for this request");
    assert_eq!(
        (ack.value.status, ack.value.carrier),
        (AckStatus::Ack, Carrier::Verizon)
    );
    let state = stack
        .read_to_end::<CarrierState>("carrier-state")
        .expect("carrier-state")
        .into_iter()
        .rfind(|r| r.raw.key.as_deref() == Some(MODEM.as_bytes()))
        .expect("the modem's row");
    assert_eq!(state.value.carrier, Some(Carrier::Verizon));

    // 3. The original system's packets over UDP: accepted as v1 (legacy modem "0").
    let vectors: Vec<Value> = serde_json::from_str(SEED_VECTORS).expect("vectors");
    let iot_data = vectors
        .iter()
        .find(|v| v["hex"].as_str().is_some_and(|h| h.starts_with("00")))
        .expect("an IoT Data vector");
    let bytes = hex::decode(iot_data["hex"].as_str().expect("hex")).expect("hex");
    let device = UdpSocket::bind("127.0.0.1:0").expect("socket");
    device.send_to(&bytes, udp).expect("send");
    wait_for("the original system's reading", WAIT, || {
        ["imu", "gyro", "temp", "unknown"].iter().any(|topic| {
            stack
                .read_to_end::<SensorReading>(topic)
                .map(|rs| rs.iter().any(|r| r.value.modem_id == "0"))
                .unwrap_or(false)
        })
    })
    .expect("v1 packet accepted");
    drop(processors);
}

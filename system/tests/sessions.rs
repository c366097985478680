//! Device sessions on real processes (Apache Kafka, registry, gateway, carrier-state, switch API).
//! First the test is an original v1 device on a UDP socket: it sends only IoT Data (as the
//! original devices do), yet it is listed by the API, and a switch requested while the
//! gateway is down (SIGKILL) reaches it after the restart without it speaking again, because
//! the new gateway read its session back.
//! Then `switchyard-modem` is the original device, its v1 SIM spoken to with the original
//! client's dialogue: it is listed, switched and acked, and its SIM holds the new carrier.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use chrono::{DurationRound, TimeDelta, Utc};
use serde_json::Value;
use switchyard_protocol::{AckStatus, Carrier, IotData, Packet};
use switchyard_testkit::{http_get_text, metric_sum, wait_for, Stack};

const LEGACY: &str = "4242";
const TOKEN: &str = "sessions-test-token-0123456789";
const WAIT: Duration = Duration::from_secs(60);

fn api(api: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    common::api_call(api, TOKEN, method, path, body)
}

fn gateway_metric(metrics: SocketAddr, name: &str) -> f64 {
    http_get_text(metrics, "/metrics")
        .map(|m| metric_sum(&m, name))
        .unwrap_or(-1.0)
}

#[test]
fn a_v1_device_sending_only_readings_is_listed_and_switched_when_requested_while_the_gateway_is_down(
) {
    let stack = Stack::start().expect("stack");
    let gateway_env = |listen: Option<SocketAddr>| {
        let mut env = vec![
            ("SWITCHYARD_LEGACY_MODEM_ID", LEGACY.to_string()),
            ("SWITCHYARD_RETRY_INITIAL_MS", "300".to_string()),
        ];
        if let Some(listen) = listen {
            env.push(("SWITCHYARD_GATEWAY_LISTEN", listen.to_string()));
        }
        env
    };
    let gateway = stack.start_gateway(&gateway_env(None)).expect("gateway");
    let udp = gateway.udp;
    let (_carrier_state, _) = stack
        .start_processor("carrier-state", "carrier-state", &[])
        .expect("carrier-state");
    let (_api, api_addr) = stack.start_api(TOKEN, &[]).expect("API ready");

    // The device: readings only, no status packet.
    let device = UdpSocket::bind("127.0.0.1:0").expect("device socket");
    device
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    for value in 0..3 {
        let reading = Packet::IotData(IotData::with_value(1, sensor_now(), value));
        device
            .send_to(&reading.encode().expect("encode"), udp)
            .expect("send");
    }
    wait_for("the v1 device in GET /modems", WAIT, || {
        let (status, modems) = api(api_addr, "GET", "/modems", None);
        status == 200
            && modems.as_array().is_some_and(|all| {
                all.iter().any(|m| {
                    m["modem_id"] == LEGACY
                        && !m["last_seen"].is_null()
                        // Readings stamped just before sending: a small clock offset.
                        && m["clock_offset_ms"].as_i64().is_some_and(|o| (0..5_000).contains(&o))
                })
            })
    })
    .expect("a device heard only through its readings is listed");
    assert_eq!(
        gateway_metric(gateway.metrics, "switchyard_gateway_known_modems"),
        1.0
    );

    // The gateway dies; the operator asks for a switch while it is down; it comes back on
    // the same UDP port. The device stays silent from here on.
    let mut gateway = gateway;
    gateway.service.kill();
    let (status, accepted) = api(
        api_addr,
        "POST",
        &format!("/modems/{LEGACY}/carrier"),
        Some(r#"{"carrier":"verizon"}"#),
    );
    assert_eq!(status, 202, "{accepted}");
    let request_id = accepted["request_id"].as_str().expect("id").to_string();
    wait_for("the request listed while the gateway is down", WAIT, || {
        api(api_addr, "GET", &format!("/requests/{request_id}"), None).1["state"] == "requested"
    })
    .expect("requested");
    let gateway = stack
        .start_gateway(&gateway_env(Some(udp)))
        .expect("gateway again");
    assert_eq!(
        gateway_metric(gateway.metrics, "switchyard_gateway_sessions_restored"),
        1.0,
        "the restarted gateway read the device's session back"
    );

    // The Perform arrives as a bare v1 packet; the device answers as the original did.
    let mut buf = [0u8; 512];
    let mut perform = None;
    wait_for("the Perform at the silent device", WAIT, || {
        if let Ok((n, from)) = device.recv_from(&mut buf) {
            perform = Some((Packet::decode(&buf[..n]).expect("a v1 packet"), from));
        }
        perform.is_some()
    })
    .unwrap_or_else(|e| {
        panic!(
            "downlink reaches a device that has not spoken since the restart: {e}\n--- gateway:\n{}",
            gateway.service.log_text()
        )
    });
    let (packet, from) = perform.expect("received");
    assert_eq!(packet, Packet::CarrierSwitchPerform(Carrier::Verizon));
    let ack = Packet::CarrierSwitchAck {
        status: AckStatus::Ack,
        carrier: Carrier::Verizon,
    };
    device
        .send_to(&ack.encode().expect("encode"), from)
        .expect("send ack");

    let mut finished = Value::Null;
    wait_for("the switch to be acked", WAIT, || {
        finished = api(api_addr, "GET", &format!("/requests/{request_id}"), None).1;
        finished["state"] == "acked"
    })
    .unwrap_or_else(|e| panic!("{e}: {finished}"));
    assert_eq!(
        api(api_addr, "GET", &format!("/modems/{LEGACY}"), None).1["carrier"],
        "verizon"
    );
}

#[test]
fn an_original_device_is_listed_switched_and_acked_through_its_sims_original_dialogue() {
    let stack = Stack::start().expect("stack");
    let gateway = stack
        .start_gateway(&[
            ("SWITCHYARD_LEGACY_MODEM_ID", LEGACY.to_string()),
            ("SWITCHYARD_RETRY_INITIAL_MS", "1500".to_string()),
        ])
        .expect("gateway");
    let (_carrier_state, _) = stack
        .start_processor("carrier-state", "carrier-state", &[])
        .expect("carrier-state");
    let (_api, api_addr) = stack.start_api(TOKEN, &[]).expect("API ready");
    let modem = stack
        .spawn(
            "switchyard-modem",
            "original-modem",
            &[
                ("SWITCHYARD_GATEWAY", gateway.udp.to_string()),
                ("SWITCHYARD_SIM_V1", "true".to_string()),
                ("SWITCHYARD_SIM_DIALOGUE", "original".to_string()),
                ("SWITCHYARD_RATES", "2,0,0".to_string()),
            ],
        )
        .expect("modem");

    // Listed, and its carrier known before anyone switched it: the SIM reported it at
    // power-on, as an ACK without a request.
    wait_for(
        "the original device in GET /modems, with its carrier",
        WAIT,
        || {
            let (status, modem) = api(api_addr, "GET", &format!("/modems/{LEGACY}"), None);
            status == 200 && !modem["last_seen"].is_null() && modem["carrier"] == "at&t"
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n--- modem:\n{}", modem.log_text()));
    let (status, accepted) = api(
        api_addr,
        "POST",
        &format!("/modems/{LEGACY}/carrier"),
        Some(r#"{"carrier":"t-mobile"}"#),
    );
    assert_eq!(status, 202, "{accepted}");
    let request_id = accepted["request_id"].as_str().expect("id").to_string();
    let mut finished = Value::Null;
    wait_for("the switch to be acked", WAIT, || {
        finished = api(api_addr, "GET", &format!("/requests/{request_id}"), None).1;
        finished["state"] == "acked"
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {finished}\n--- modem:\n{}\n--- gateway:\n{}",
            modem.log_text(),
            gateway.service.log_text()
        )
    });
    assert_eq!(
        api(api_addr, "GET", &format!("/modems/{LEGACY}"), None).1["carrier"],
        "t-mobile"
    );
    let packets = |kind: &str| {
        gateway_metric(
            gateway.metrics,
            &format!("switchyard_gateway_packets_total{{type=\"{kind}\"}}"),
        )
    };
    assert!(packets("iot_data") > 0.0 && packets("carrier_switch_ack") > 0.0);
    assert_eq!(
        packets("iot_status"),
        0.0,
        "the original device sends no status packet"
    );
}

/// Now, in the whole microseconds the wire format carries.
/// `switchyard-modem` for one keyed modem sending to `udp`, its SIM's memory in
/// `scratch/sims`; the caller adds rates and duration.
fn keyed_modem(
    udp: SocketAddr,
    modem: u64,
    keys: &std::path::Path,
    scratch: &std::path::Path,
) -> std::process::Command {
    let mut command = std::process::Command::new(
        switchyard_testkit::workspace_binary("switchyard-modem").expect("binary"),
    );
    command
        .args([
            "--gateway",
            &udp.to_string(),
            "--modem-id",
            &modem.to_string(),
        ])
        .args(["--keys", &keys.display().to_string()])
        .args(["--sim-memory", &scratch.join("sims").display().to_string()]);
    command
}

/// One power cycle of a keyed modem: 2 s of status reports and temperature readings (22
/// signed packets). Returns its log.
fn power_cycle(
    udp: SocketAddr,
    modem: u64,
    keys: &std::path::Path,
    scratch: &std::path::Path,
) -> String {
    let status = keyed_modem(udp, modem, keys, scratch)
        .args([
            "--rates",
            "0,0,10",
            "--status-secs",
            "1",
            "--duration-secs",
            "2",
        ])
        .output()
        .expect("modem runs");
    let log = String::from_utf8_lossy(&status.stderr).into_owned()
        + &String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success() && !log.contains("ERROR"),
        "the modem simulator ended with {}: {log}",
        status.status
    );
    log
}

/// Issue 25 (1): a keyed modem restarted with the same command line, key and SIM memory is
/// heard again at once by the gateway that saw its last run, and by one SIGKILLed and
/// started again after at most the packets sent before its resync arrives (that gateway
/// refuses every number its predecessor reserved, since any may have been accepted). Its
/// SIM used to start at sequence 1 on every power-on: the gateway's replay window then
/// refused every packet of the second run as `replayed_sequence`.
#[test]
fn a_keyed_modem_that_reboots_is_heard_again_by_a_running_and_a_restarted_gateway() {
    const MODEM: u64 = 7001;
    let stack = Stack::start().expect("stack");
    let dir = tempfile::tempdir().expect("scratch");
    let keys = dir.path().join("modem-keys");
    std::fs::write(&keys, format!("{MODEM} 000102030405060708090a0b0c0d0e0f\n")).expect("keys");
    let gateway_env = |listen: Option<SocketAddr>| {
        let mut env = vec![("SWITCHYARD_MODEM_KEYS", keys.display().to_string())];
        env.extend(listen.map(|l| ("SWITCHYARD_GATEWAY_LISTEN", l.to_string())));
        env
    };
    let accepted = |g: SocketAddr| gateway_metric(g, "switchyard_gateway_packets_total");
    let refused = |g: SocketAddr| gateway_metric(g, "switchyard_gateway_rejects_total");
    let resyncs = |g: SocketAddr| gateway_metric(g, "switchyard_gateway_sequence_resyncs_total");
    let heard_again = |g: &switchyard_testkit::Gateway, run: &str, after_a_crash: bool| {
        let before = accepted(g.metrics);
        let modem_log = power_cycle(g.udp, MODEM, &keys, dir.path());
        wait_for(
            &format!("the {run} run's packets to be accepted"),
            WAIT,
            || accepted(g.metrics) >= before + 10.0,
        )
        .unwrap_or_else(|e| {
            panic!(
                "{e}: accepted {} (before {before}), refused {}\n--- modem:\n{modem_log}\n--- gateway:\n{}",
                accepted(g.metrics),
                refused(g.metrics),
                g.service.log_text()
            )
        });
        let (refused, resyncs) = (refused(g.metrics), resyncs(g.metrics));
        if after_a_crash {
            assert!(
                refused <= 7.0 && resyncs >= refused.min(1.0),
                "the {run} run: refused {refused}, resyncs {resyncs}"
            );
        } else {
            assert_eq!(refused, 0.0, "nothing refused in the {run} run");
        }
    };

    let gateway = stack.start_gateway(&gateway_env(None)).expect("gateway");
    heard_again(&gateway, "first", false);
    heard_again(&gateway, "second", false);
    let udp = gateway.udp;
    drop(gateway); // SIGKILL
    let gateway = stack
        .start_gateway(&gateway_env(Some(udp)))
        .expect("gateway again");
    heard_again(&gateway, "third", true);
}

/// Issue 25: a device whose counter is genuinely behind (its SIM's memory lost, as here, or
/// the SIM replaced) was refused for good: every packet `replayed_sequence`, never a way
/// back. The gateway now answers a signed packet it refuses as not fresh with a signed
/// resync, and the SIM moves its counter above the gateway's highest. Without the resync
/// every packet of the last run is refused (its numbers are more than 64 behind).
#[test]
fn a_modem_whose_sim_lost_its_counter_is_resynchronised_and_heard_again() {
    const MODEM: u64 = 7003;
    let stack = Stack::start().expect("stack");
    let dir = tempfile::tempdir().expect("scratch");
    let keys = dir.path().join("modem-keys");
    std::fs::write(&keys, format!("{MODEM} 000102030405060708090a0b0c0d0e0f\n")).expect("keys");
    let gateway = stack
        .start_gateway(&[("SWITCHYARD_MODEM_KEYS", keys.display().to_string())])
        .expect("gateway");
    let metric = |name: &str| gateway_metric(gateway.metrics, name);
    let accepted = || metric("switchyard_gateway_packets_total");
    // Two power cycles: the second starts above the first's reserved block (1,024), so the
    // gateway's highest number is past 1,024.
    for _ in 0..2 {
        power_cycle(gateway.udp, MODEM, &keys, dir.path());
    }
    wait_for("both runs to be accepted", WAIT, || accepted() >= 44.0)
        .unwrap_or_else(|e| panic!("{e}: accepted {}", accepted()));
    assert_eq!(metric("switchyard_gateway_rejects_total"), 0.0);
    // The SIM's memory is lost: it counts from 1 again.
    let sims = dir.path().join("sims");
    std::fs::remove_dir_all(&sims).expect("the SIM memory is there to lose");
    let before = accepted();
    let modem_log = power_cycle(gateway.udp, MODEM, &keys, dir.path());
    wait_for("the run after the loss to be heard", WAIT, || {
        accepted() >= before + 15.0
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: accepted {} (before {before}), refused {}, resyncs {}\n--- modem:\n{modem_log}\n--- gateway:\n{}",
            accepted(),
            metric("switchyard_gateway_rejects_total"),
            metric("switchyard_gateway_sequence_resyncs_total"),
            gateway.service.log_text()
        )
    });
    let text = http_get_text(gateway.metrics, "/metrics").expect("metrics");
    let refused = metric_sum(
        &text,
        "switchyard_gateway_rejects_total{reason=\"replayed_sequence\"}",
    );
    let resyncs = metric_sum(
        &text,
        "switchyard_gateway_sequence_resyncs_total{outcome=\"sent\"}",
    );
    // Its first packets are refused (those sent before the answer arrives, at 10 a
    // second), the first one answered, and the rest pass: each refusal is counted.
    assert!(
        (1.0..=7.0).contains(&refused) && resyncs >= 1.0 && resyncs <= refused,
        "refused {refused}, resyncs sent {resyncs}\n--- modem:\n{modem_log}"
    );
    assert!(
        modem_log.contains("counter moved above"),
        "the SIM says it moved its counter: {modem_log}"
    );
}

/// Issue 25 (4): the SIM now refuses a Perform whose number is not above the last one it
/// executed, so the gateway's downlink numbers must keep rising across its restarts. They
/// restarted at 1 in every process: after a SIGKILL and a restart, the next switch was
/// refused by the SIM as a replay (NACK).
#[test]
fn a_keyed_sim_accepts_switches_from_a_gateway_restarted_after_a_sigkill() {
    use switchyard_schemas::records::{self, now_us, CarrierSwitchAck, CarrierSwitchRequest};
    const MODEM: u64 = 7002;
    let stack = Stack::start().expect("stack");
    let dir = tempfile::tempdir().expect("scratch");
    let keys = dir.path().join("modem-keys");
    std::fs::write(&keys, format!("{MODEM} 000102030405060708090a0b0c0d0e0f\n")).expect("keys");
    let gateway_env = |listen: Option<SocketAddr>| {
        let mut env = vec![
            ("SWITCHYARD_MODEM_KEYS", keys.display().to_string()),
            ("SWITCHYARD_RETRY_INITIAL_MS", "300".to_string()),
        ];
        env.extend(listen.map(|l| ("SWITCHYARD_GATEWAY_LISTEN", l.to_string())));
        env
    };
    let gateway = stack.start_gateway(&gateway_env(None)).expect("gateway");
    let udp = gateway.udp;
    let mut modem = keyed_modem(udp, MODEM, &keys, dir.path());
    modem.args(["--rates", "0,0,1", "--status-secs", "1"]);
    let _modem = switchyard_testkit::Service::spawn("modem", modem, dir.path()).expect("modem");
    wait_for("the gateway to hold the modem", WAIT, || {
        gateway_metric(gateway.metrics, "switchyard_gateway_known_modems") == 1.0
    })
    .expect("held");
    let switch = |request_id: &str, carrier: records::Carrier| {
        let t = now_us();
        let request = CarrierSwitchRequest {
            request_id: request_id.to_string(),
            modem_id: MODEM.to_string(),
            carrier,
            requested_at: t,
            deadline: t + 60_000_000,
            requested_by: Some("test".into()),
        };
        stack
            .produce(
                "downstream-request",
                &[(MODEM.to_string(), request, t / 1000)],
            )
            .expect("request");
        let mut answer = None;
        wait_for(&format!("the SIM's answer to {request_id}"), WAIT, || {
            answer = stack
                .read_to_end::<CarrierSwitchAck>("carrier-switch-ack")
                .ok()
                .and_then(|acks| {
                    acks.into_iter()
                        .map(|a| a.value)
                        .find(|a| a.request_id.as_deref() == Some(request_id))
                });
            answer.is_some()
        })
        .expect("answered");
        answer.map(|a| (a.status, a.carrier))
    };
    assert_eq!(
        switch("00000000000000a1", records::Carrier::Verizon),
        Some((records::AckStatus::Ack, records::Carrier::Verizon))
    );
    drop(gateway); // SIGKILL
    let gateway = stack
        .start_gateway(&gateway_env(Some(udp)))
        .expect("gateway again");
    assert_eq!(
        switch("00000000000000a2", records::Carrier::TMobile),
        Some((records::AckStatus::Ack, records::Carrier::TMobile)),
        "the restarted gateway's Perform was refused by the SIM; gateway log:\n{}",
        gateway.service.log_text()
    );
}

fn sensor_now() -> chrono::DateTime<Utc> {
    Utc::now()
        .duration_trunc(TimeDelta::microseconds(1))
        .expect("now fits")
}

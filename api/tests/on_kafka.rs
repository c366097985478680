//! The switch API on the real pipeline: Apache Kafka, the registry, carrier-state, the gateway and a
//! simulated modem with its SIM; switches made through the API, the CLI and bad requests.

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard_protocol::{Envelope, Frame, IotStatus, Packet};
use switchyard_schemas::records::{
    now_us, Anomaly, AnomalyKind, Carrier, CarrierSwitchRequest, GrafanaReading,
};
use switchyard_testkit::{workspace_binary, Service, Stack};

const TOKEN: &str = "test-token-0123456789abcdef";
const MODEM: &str = "4242";
const WAIT: Duration = Duration::from_secs(90);

/// A blocking HTTP client over reqwest.
struct Client {
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
}

struct Answer {
    status: u16,
    location: Option<String>,
    body: Value,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        Client {
            runtime: tokio::runtime::Runtime::new().expect("runtime"),
            http: reqwest::Client::new(),
            base: format!("http://{addr}"),
        }
    }

    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Answer {
        self.runtime.block_on(async {
            let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let mut request = self.http.request(method, format!("{}{path}", self.base));
            if let Some(t) = token {
                request = request.bearer_auth(t);
            }
            if let Some(b) = body {
                request = request
                    .header("content-type", "application/json")
                    .body(b.to_string());
            }
            let response = request.send().await.expect("the API answers");
            let status = response.status().as_u16();
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let text = response.text().await.unwrap_or_default();
            Answer {
                status,
                location,
                body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
            }
        })
    }

    fn get(&self, path: &str) -> Answer {
        self.call("GET", path, Some(TOKEN), None)
    }

    fn switch(&self, modem: &str, body: &str) -> Answer {
        self.call(
            "POST",
            &format!("/modems/{modem}/carrier"),
            Some(TOKEN),
            Some(body),
        )
    }

    /// Follow /events in the background; every event's text lands in the returned list.
    fn follow_events(&self) -> Arc<Mutex<Vec<String>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let request = self
            .http
            .get(format!("{}/events", self.base))
            .bearer_auth(TOKEN);
        self.runtime.spawn(async move {
            let Ok(mut response) = request.send().await else {
                return;
            };
            while let Ok(Some(chunk)) = response.chunk().await {
                if let Ok(mut s) = sink.lock() {
                    s.push(String::from_utf8_lossy(&chunk).into_owned());
                }
            }
        });
        seen
    }

    /// Poll a request until it leaves requested/sent.
    fn wait_until_finished(&self, request_id: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let a = self.get(&format!("/requests/{request_id}"));
            assert_eq!(a.status, 200, "{}", a.body);
            let state = a.body["state"].as_str().unwrap_or_default().to_string();
            if state != "requested" && state != "sent" {
                return a.body;
            }
            assert!(
                Instant::now() < deadline,
                "request {request_id} still {state}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Readings projected for Grafana (written here as the projector writes them: record time =
/// sensor time), one anomaly, and other modems' readings (one, then a burst) that must stay
/// off this modem's chart; then the readings endpoint and the page's chart, whose data must hold exactly the
/// sensor times sent, with the anomaly and the switches made above on the same time axis.
fn charts_show_the_projected_readings_at_their_sensor_times(
    stack: &Stack,
    client: &Client,
    addr: SocketAddr,
) {
    let now_ms = now_us() / 1000;
    // Sensor times across the last 40 s, which hold the switches made above, and not
    // whole seconds, so arrival time cannot pass for sensor time.
    let times: Vec<i64> = (0..40).map(|i| now_ms - 40_000 + i * 1_000 + 137).collect();
    let reading = |modem: &str, value: i32| GrafanaReading {
        modem_id: modem.into(),
        device_id: 1,
        value,
    };
    let mut records: Vec<(String, GrafanaReading, i64)> = times
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (
                MODEM.to_string(),
                reading(MODEM, (i as i32 % 7) * 10 - 30),
                *t,
            )
        })
        .collect();
    records.push(("7777".into(), reading("7777", 999), now_ms - 5_000));
    stack
        .produce("imu-grafana", &records)
        .expect("projected readings");
    // Then a burst of other modems' readings, inside the window: 90,000 over 300 modems,
    // some 30,000 per partition after this modem's. The chart starts from the window's
    // first offset by time; reading back a fixed number of records before each partition's
    // end (20,000, as the page did on tansu) would miss this modem's readings.
    let burst: Vec<(String, GrafanaReading, i64)> = (0..90_000)
        .map(|i| {
            let modem = format!("burst-{}", i % 300);
            (modem.clone(), reading(&modem, 999), now_ms - 3_000)
        })
        .collect();
    stack.produce("imu-grafana", &burst).expect("a burst");
    let spike_at = times[20];
    stack
        .produce(
            "anomalies",
            &[(
                MODEM.to_string(),
                Anomaly {
                    modem_id: MODEM.into(),
                    device_id: 1,
                    sensor: "imu".into(),
                    kind: AnomalyKind::Spike,
                    value: Some(30),
                    expected_low: None,
                    expected_high: None,
                    score: Some(9.0),
                    sensor_time: spike_at * 1000,
                    detected_at: now_ms * 1000,
                    detail: "test spike".into(),
                },
                now_ms,
            )],
        )
        .expect("anomaly");

    let path = format!("/modems/{MODEM}/readings");
    let mut answer = Value::Null;
    switchyard_testkit::wait_for("the readings in the API", WAIT, || {
        answer = client.get(&path).body;
        answer["series"][0]["points"].as_array().map(Vec::len) == Some(times.len())
            && answer["anomalies"].as_array().map(Vec::len) == Some(1)
    })
    .unwrap_or_else(|e| panic!("{e}: {answer}"));
    let series = answer["series"].as_array().expect("series");
    assert_eq!(series.len(), 1, "only imu was sent: {answer}");
    assert_eq!(
        (series[0]["sensor"].as_str(), series[0]["topic"].as_str()),
        (Some("imu"), Some("imu-grafana"))
    );
    let got: Vec<i64> = series[0]["points"]
        .as_array()
        .expect("points")
        .iter()
        .filter_map(|p| p["t"].as_i64())
        .collect();
    assert_eq!(got, times, "points at exactly the sensor times, in order");
    assert!(
        series[0]["points"]
            .as_array()
            .expect("points")
            .iter()
            .all(|p| p["value"] != 999),
        "another modem's reading on this chart: {answer}"
    );
    assert_eq!(answer["anomalies"][0]["t"], spike_at);
    assert_eq!(client.call("GET", &path, None, None).status, 401);
    assert_eq!(
        client
            .call("GET", &format!("{path}/events"), None, None)
            .status,
        401
    );
    assert_eq!(client.get("/modems/no-such-modem/readings").status, 404);

    let screenshot = stack.broker.data_dir().join("chart-page.png");
    let times_csv = times
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let page = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/browser/chart_page.py"
        ))
        .args([
            &format!("http://{addr}"),
            TOKEN,
            MODEM,
            &times_csv,
            &spike_at.to_string(),
        ])
        .arg(&screenshot)
        .output()
        .expect("python3 runs");
    assert!(
        page.status.success(),
        "{}{}",
        String::from_utf8_lossy(&page.stdout),
        String::from_utf8_lossy(&page.stderr)
    );
}

fn start_api(stack: &Stack) -> (Service, SocketAddr) {
    stack
        .start_api(
            TOKEN,
            &[
                ("SWITCHYARD_API_DEADLINE_SECS", "8".to_string()),
                ("SWITCHYARD_API_PRODUCE_TIMEOUT_MS", "2000".to_string()),
            ],
        )
        .expect("API ready")
}

fn cli(api: SocketAddr, args: &[&str]) -> (i32, String) {
    let out = Command::new(workspace_binary("switchyard").expect("switchyard binary"))
        .env("SWITCHYARD_API_URL", format!("http://{api}"))
        .env("SWITCHYARD_API_TOKEN", TOKEN)
        .args(args)
        .output()
        .expect("switchyard runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn operators_switch_carriers_through_the_api_and_bad_requests_change_nothing() {
    let mut stack = Stack::start().expect("stack");
    let (_carrier_state, _) = stack
        .start_processor(
            "carrier-state",
            "carrier-state",
            &[("SWITCHYARD_DEADLINE_CHECK_MS", "200".into())],
        )
        .expect("carrier-state healthy");
    let gateway = stack
        .start_gateway(&[("SWITCHYARD_RETRY_INITIAL_MS", "300".into())])
        .expect("gateway healthy");
    let udp = gateway.udp;
    let _modem = stack
        .spawn(
            "switchyard-modem",
            "modem",
            &[
                ("SWITCHYARD_GATEWAY", udp.to_string()),
                ("SWITCHYARD_MODEM_ID", MODEM.into()),
                ("SWITCHYARD_RATES", "0,0,0".into()),
                ("SWITCHYARD_STATUS_SECS", "1".into()),
            ],
        )
        .expect("modem");
    let (_api, addr) = start_api(&stack);
    let client = Client::new(addr);
    switchyard_testkit::wait_for("the modem in the API", WAIT, || {
        let a = client.get(&format!("/modems/{MODEM}"));
        a.status == 200 && a.body["last_status"] == "nominal"
    })
    .expect("modem visible");

    // Auth: health is open, everything else needs the token.
    assert_eq!(client.call("GET", "/health", None, None).status, 200);
    for token in [None, Some("wrong-token-0123456789")] {
        let a = client.call("GET", "/modems", token, None);
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (401, Some("unauthorized"))
        );
        let a = client.call(
            "POST",
            &format!("/modems/{MODEM}/carrier"),
            token,
            Some(r#"{"carrier":"verizon"}"#),
        );
        assert_eq!(a.status, 401);
        assert_eq!(client.call("GET", "/openapi.json", token, None).status, 401);
        assert_eq!(
            client
                .call("GET", &format!("/modems/{MODEM}/requests"), token, None)
                .status,
            401
        );
    }

    // Bad input: a clear JSON error each, nothing produced.
    let a = client.switch(MODEM, r#"{"carrier":"sprint"}"#);
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (400, Some("unknown_carrier"))
    );
    assert!(a.body["message"]
        .as_str()
        .unwrap_or_default()
        .contains("verizon"));
    let a = client.switch(MODEM, r#"{"carrier":"#);
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (400, Some("malformed_body"))
    );
    let a = client.switch(MODEM, &format!(r#"{{"carrier":"{}"}}"#, "x".repeat(10_000)));
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (413, Some("body_too_large"))
    );
    let a = client.switch("no-such-modem", r#"{"carrier":"verizon"}"#);
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (404, Some("unknown_modem"))
    );
    let a = client.get("/requests/00000000000000ff");
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (404, Some("unknown_request"))
    );
    assert!(
        stack
            .consume_at_least::<CarrierSwitchRequest>(
                "downstream-request",
                1,
                Duration::from_secs(2)
            )
            .expect("read")
            .is_empty(),
        "refused requests produce nothing"
    );

    // AT&T → Verizon: accepted, visible at once, acknowledged by the SIM; live events follow.
    let events = client.follow_events();
    let a = client.switch(MODEM, r#"{"carrier":"verizon"}"#);
    assert_eq!(a.status, 202, "{}", a.body);
    let request_id = a.body["request_id"]
        .as_str()
        .expect("request id")
        .to_string();
    assert_eq!(a.location, Some(format!("/requests/{request_id}")));
    let right_after = client.get(&format!("/requests/{request_id}"));
    assert_eq!(right_after.status, 200, "read your write");
    let finished = client.wait_until_finished(&request_id);
    assert_eq!(finished["state"], "acked", "{finished}");
    assert_eq!(finished["result_carrier"], "verizon");
    assert_eq!(
        client.get(&format!("/modems/{MODEM}")).body["carrier"],
        "verizon"
    );
    // The modem's switch history: this request, newest first, requested -> (sent ->) acked.
    // `sent` is missing when carrier-state folded the ACK before the gateway's `SENT` event
    // (they travel on different topics).
    let history = client.get(&format!("/modems/{MODEM}/requests"));
    assert_eq!(history.status, 200, "{}", history.body);
    let newest = &history.body[0];
    assert_eq!(
        newest["request_id"],
        request_id.as_str(),
        "{}",
        history.body
    );
    let steps: Vec<&str> = newest["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|c| c["state"].as_str())
        .collect();
    assert!(
        steps == ["requested", "sent", "acked"] || steps == ["requested", "acked"],
        "{newest}"
    );
    assert_eq!(client.get("/modems/no-such-modem/requests").status, 404);
    let requests = stack
        .consume_at_least::<CarrierSwitchRequest>("downstream-request", 1, WAIT)
        .expect("requests");
    assert_eq!(
        (
            requests[0].raw.key.as_deref(),
            requests[0].value.carrier,
            requests[0].value.request_id.as_str()
        ),
        (
            Some(MODEM.as_bytes()),
            Carrier::Verizon,
            request_id.as_str()
        ),
        "keyed by modem id"
    );
    switchyard_testkit::wait_for("an SSE event showing the ack", WAIT, || {
        events
            .lock()
            .map(|e| e.concat().contains("\"acked\""))
            .unwrap_or(false)
    })
    .expect("live updates");
    assert!(events
        .lock()
        .expect("events")
        .concat()
        .starts_with("event: snapshot"));

    // And back to AT&T with the CLI, waiting for the answer.
    let (code, out) = cli(addr, &["switch", MODEM, "at&t", "--wait"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("acked"), "{out}");
    let (code, out) = cli(addr, &["modems"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(MODEM) && out.contains("at&t"), "{out}");
    let (code, out) = cli(addr, &["switch", MODEM, "sprint"]);
    assert_eq!(code, 2, "bad input: {out}");

    // The page, in headless Chromium: click a switch to T-Mobile and see it acknowledged.
    let screenshot = stack.broker.data_dir().join("switch-page.png");
    let page = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/browser/switch_page.py"
        ))
        .args([&format!("http://{addr}"), TOKEN, MODEM, "t-mobile"])
        .arg(&screenshot)
        .output()
        .expect("python3 runs (make test installs chromium, chromium-driver, selenium)");
    assert!(
        page.status.success(),
        "{}{}",
        String::from_utf8_lossy(&page.stdout),
        String::from_utf8_lossy(&page.stderr)
    );
    assert!(screenshot.exists());
    assert_eq!(
        client.get(&format!("/modems/{MODEM}")).body["carrier"],
        "t-mobile",
        "the API agrees with the page"
    );

    charts_show_the_projected_readings_at_their_sensor_times(&stack, &client, addr);

    // A modem that went away: the switch ends as timed out, and a second one is refused
    // while the first is pending.
    let gone = UdpSocket::bind("127.0.0.1:0").expect("socket");
    let hello = Frame {
        envelope: Some(Envelope {
            modem_id: 999,
            sequence: 1,
            request_id: None,
            auth_tag: None,
        }),
        packet: Packet::IotStatus(IotStatus::Nominal),
    }
    .encode()
    .expect("encode");
    gone.send_to(&hello, udp).expect("send");
    drop(gone);
    switchyard_testkit::wait_for("modem 999 in the API", WAIT, || {
        client.get("/modems/999").status == 200
    })
    .expect("seen");
    let a = client.switch("999", r#"{"carrier":"t-mobile"}"#);
    assert_eq!(a.status, 202, "{}", a.body);
    let unreachable = a.body["request_id"].as_str().expect("id").to_string();
    let a = client.switch("999", r#"{"carrier":"verizon"}"#);
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (409, Some("request_pending"))
    );
    let finished = client.wait_until_finished(&unreachable);
    let timed_out = finished["state"] == "timed_out"
        || (finished["state"] == "undeliverable" && finished["reason"] == "deadline");
    assert!(timed_out, "{finished}");

    // The OpenAPI document matches the handlers.
    let doc = client.get("/openapi.json");
    assert_eq!(doc.status, 200);
    for path in [
        "/modems",
        "/modems/{id}",
        "/modems/{id}/carrier",
        "/requests/{id}",
        "/events",
        "/health",
    ] {
        assert!(doc.body["paths"].get(path).is_some(), "{path} undocumented");
    }
    assert!(
        doc.body["paths"]["/modems/{id}/carrier"]["post"]["responses"]
            .get("409")
            .is_some()
    );

    // Broker down: 503, and nothing half-written once it is back.
    stack.broker.stop();
    let a = client.switch(MODEM, r#"{"carrier":"disconnect"}"#);
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (503, Some("broker_unavailable")),
        "{}",
        a.body
    );
    stack.broker.start_again().expect("broker back");
    let all = stack
        .consume_at_least::<CarrierSwitchRequest>(
            "downstream-request",
            100,
            Duration::from_secs(10),
        )
        .expect("requests");
    assert_eq!(
        all.len(),
        4,
        "verizon, at&t (CLI), t-mobile (page), t-mobile (999); no disconnect"
    );
    assert!(all.iter().all(|r| r.value.carrier != Carrier::Disconnect));
    assert_eq!(
        json!(client.get(&format!("/modems/{MODEM}")).body["carrier"]),
        "t-mobile"
    );
}

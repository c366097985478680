//! `make up` and `make down` for real: `scripts/stack.sh` (what `make up` runs once deps are
//! installed and binaries built) starts every service in a scratch folder on free ports;
//! the simulated modems show up in the switch API; `down` leaves no process and no port.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use serde_json::Value;
use switchyard_protocol::{Envelope, Frame, IotStatus, Packet};
use switchyard_schemas::Catalog;
use switchyard_testkit::{
    http_get_text, kafka, metric_sum, wait_for, workspace_binary, ScriptedStack,
};

/// Alive and not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                != Some("Z")
        })
        .unwrap_or(false)
}

fn listening(port: u16) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

#[test]
fn make_up_runs_everything_and_make_down_leaves_nothing_behind() {
    let bin = workspace_binary("switchyard")
        .expect("built")
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let stack = ScriptedStack::new(&bin).expect("scratch stack");

    let up = stack.sh("up").expect("stack.sh runs");
    let out =
        String::from_utf8_lossy(&up.stdout).into_owned() + &String::from_utf8_lossy(&up.stderr);
    assert!(up.status.success(), "stack.sh up failed:\n{out}");
    assert!(out.contains("Switchyard is up"), "{out}");
    // A fresh `make up` printed the shell's own errors (`scripts/stack.sh: line 91: ...
    // exits/kafka: No such file or directory`) for every service that had never exited:
    // a first user reads them as failures. Only the script's own lines belong there.
    let stderr = String::from_utf8_lossy(&up.stderr);
    assert!(
        !stderr.contains("stack.sh: line"),
        "shell errors from stack.sh up:\n{stderr}"
    );
    let pids = stack.pids();
    let names: Vec<&str> = pids.iter().map(|(n, _)| n.as_str()).collect();
    for service in [
        "kafka",
        "registry",
        "gateway",
        "reading-counter",
        "grafana-projector",
        "carrier-state",
        "anomaly-detector",
        "api",
        "prometheus",
        "modems",
    ] {
        assert!(
            names.contains(&service),
            "{service} not started: {names:?}\n{out}"
        );
    }
    assert!(pids.iter().all(|(_, p)| alive(*p)), "{pids:?}");

    // Every topic with the catalog's partitions.
    let bootstrap = format!(
        "127.0.0.1:{}",
        stack.port("SWITCHYARD_BROKER_PORT").expect("port")
    );
    for topic in Catalog::embedded().expect("catalog").topics {
        assert_eq!(
            kafka::partition_count(&bootstrap, &topic.name).expect("topic exists"),
            topic.partitions as usize,
            "{}",
            topic.name
        );
    }

    // The pipeline works: the three simulated modems appear in the switch API.
    let token = std::fs::read_to_string(stack.run_dir().join("api-token")).expect("token");
    let api: SocketAddr = (
        [127, 0, 0, 1],
        stack.port("SWITCHYARD_API_PORT").expect("port"),
    )
        .into();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    wait_for("three modems in the API", Duration::from_secs(90), || {
        runtime.block_on(async {
            let Ok(response) = reqwest::Client::new()
                .get(format!("http://{api}/modems"))
                .bearer_auth(token.trim())
                .send()
                .await
            else {
                return false;
            };
            response
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v.as_array().map(Vec::len))
                == Some(3)
        })
    })
    .expect("modems visible through the API");

    // Secure by default: an unsigned envelope claiming a simulated modem is refused; a v1
    // packet (no identity, no tag) is accepted as the declared legacy modem.
    let gateway_udp: SocketAddr = (
        [127, 0, 0, 1],
        stack.port("SWITCHYARD_GATEWAY_PORT").expect("port"),
    )
        .into();
    let gateway_metrics: SocketAddr = (
        [127, 0, 0, 1],
        stack.port("SWITCHYARD_METRICS_BASE").expect("port") + 4,
    )
        .into();
    let spoofed = Frame {
        envelope: Some(Envelope {
            modem_id: 356_938_035_643_809,
            sequence: 1,
            request_id: None,
            auth_tag: None,
        }),
        packet: Packet::IotStatus(IotStatus::OffNominal),
    };
    let v1 = Packet::IotStatus(IotStatus::Nominal);
    let device = UdpSocket::bind("127.0.0.1:0").expect("device socket");
    device
        .send_to(&spoofed.encode().expect("encode"), gateway_udp)
        .expect("send");
    device
        .send_to(&v1.encode().expect("encode"), gateway_udp)
        .expect("send");
    let metric = |name: &str| {
        http_get_text(gateway_metrics, "/metrics")
            .map(|m| metric_sum(&m, name))
            .unwrap_or(0.0)
    };
    wait_for(
        "the spoofed packet refused",
        Duration::from_secs(30),
        || metric("switchyard_gateway_rejects_total{reason=\"missing_tag\"}") == 1.0,
    )
    .expect("authentication is on under make up");
    wait_for("the legacy modem listed", Duration::from_secs(60), || {
        runtime.block_on(async {
            reqwest::Client::new()
                .get(format!("http://{api}/modems/0"))
                .bearer_auth(token.trim())
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
    })
    .expect("a v1 device is accepted as the legacy modem");

    // Prometheus scrapes every service (gateway, four processors, API, registry, broker) and
    // loaded the rules.
    let prometheus: SocketAddr = (
        [127, 0, 0, 1],
        stack.port("SWITCHYARD_PROMETHEUS_PORT").expect("port"),
    )
        .into();
    let query = |path: &str| {
        runtime.block_on(async {
            reqwest::get(format!("http://{prometheus}{path}"))
                .await
                .ok()?
                .json::<Value>()
                .await
                .ok()
        })
    };
    let mut up = Value::Null;
    wait_for(
        "Prometheus to scrape eight targets, all up",
        Duration::from_secs(60),
        || {
            up = query("/api/v1/query?query=up").unwrap_or(Value::Null);
            let results = up["data"]["result"].as_array().cloned().unwrap_or_default();
            results.len() == 8 && results.iter().all(|r| r["value"][1] == "1")
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {up}"));
    let rules = query("/api/v1/rules").unwrap_or(Value::Null);
    let loaded: usize = rules["data"]["groups"]
        .as_array()
        .map(|groups| {
            groups
                .iter()
                .filter_map(|g| g["rules"].as_array().map(Vec::len))
                .sum()
        })
        .unwrap_or(0);
    assert_eq!(loaded, 12, "the alert rules are loaded: {rules}");

    // A service that dies is started again, and `status` says how it died.
    let gateway_pid = |stack: &ScriptedStack| {
        stack
            .pids()
            .into_iter()
            .find(|(n, _)| n == "gateway")
            .map(|(_, p)| p)
    };
    let killed = gateway_pid(&stack).expect("gateway pid");
    let status = std::process::Command::new("kill")
        .args(["-KILL", &killed.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    wait_for(
        "the gateway to be started again",
        Duration::from_secs(30),
        || {
            gateway_pid(&stack).is_some_and(|p| p != killed && alive(p))
                && http_get_text(gateway_metrics, "/health").is_ok()
        },
    )
    .expect("the supervisor restarted the gateway");
    let status = stack.sh("status").expect("stack.sh status");
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    let gateway_line = status
        .lines()
        .find(|l| l.starts_with("gateway "))
        .unwrap_or_default();
    assert!(
        gateway_line.contains("killed by SIGKILL") && gateway_line.contains("(1)"),
        "status says how the gateway last died:\n{status}"
    );
    let pids = stack.pids();

    // Down: nothing left.
    let down = stack.sh("down").expect("stack.sh runs");
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    wait_for("every process to be gone", Duration::from_secs(20), || {
        pids.iter().all(|(_, p)| !alive(*p))
    })
    .unwrap_or_else(|e| {
        let left: Vec<_> = pids.iter().filter(|(_, p)| alive(*p)).collect();
        panic!("{e}: {left:?}")
    });
    let base: u16 = stack.port("SWITCHYARD_METRICS_BASE").expect("port");
    let tcp_ports = [
        stack.port("SWITCHYARD_BROKER_PORT").expect("port"),
        stack.port("SWITCHYARD_CONTROLLER_PORT").expect("port"),
        stack.port("SWITCHYARD_REGISTRY_PORT").expect("port"),
        stack.port("SWITCHYARD_API_PORT").expect("port"),
        stack.port("SWITCHYARD_PROMETHEUS_PORT").expect("port"),
    ]
    .into_iter()
    .chain(base..base + 7);
    for port in tcp_ports {
        assert!(!listening(port), "port {port} still listening after down");
    }
    UdpSocket::bind((
        "127.0.0.1",
        stack.port("SWITCHYARD_GATEWAY_PORT").expect("port"),
    ))
    .expect("the gateway's UDP port is free again");
    assert!(stack.pids().is_empty(), "pid files removed");
}

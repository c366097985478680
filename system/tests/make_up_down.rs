//! `make up` and `make down` for real: `scripts/stack.sh` (what `make up` runs once deps are
//! installed and binaries built) starts every service in a scratch folder on free ports;
//! the simulated modems show up in the switch API; `down` leaves no process and no port.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use switchyard_testkit::{free_port, wait_for, workspace_binary};

fn stack_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/stack.sh")
}

/// Six consecutive free ports for the metrics endpoints.
fn free_metrics_base() -> u16 {
    for _ in 0..200 {
        let base = free_port().expect("port");
        if base > 65_000 {
            continue;
        }
        let all_free =
            (base..base + 6).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no six consecutive free ports");
}

struct Stack {
    env: Vec<(&'static str, String)>,
    run: tempfile::TempDir,
}

impl Stack {
    fn sh(&self, verb: &str) -> Output {
        Command::new("bash")
            .arg(stack_sh())
            .arg(verb)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("stack.sh runs")
    }

    fn port(&self, name: &str) -> u16 {
        self.env
            .iter()
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse().ok())
            .expect("port")
    }

    fn pids(&self) -> Vec<(String, u32)> {
        std::fs::read_dir(self.run.path().join("pids"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| {
                        let name = e
                            .file_name()
                            .to_string_lossy()
                            .trim_end_matches(".pid")
                            .to_string();
                        let pid = std::fs::read_to_string(e.path())
                            .ok()?
                            .trim()
                            .parse()
                            .ok()?;
                        Some((name, pid))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.sh("down");
    }
}

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
    let run = tempfile::tempdir().expect("run dir");
    let stack = Stack {
        env: vec![
            ("SWITCHYARD_RUN_DIR", run.path().display().to_string()),
            ("SWITCHYARD_BIN", bin.display().to_string()),
            (
                "SWITCHYARD_BROKER_PORT",
                free_port().expect("port").to_string(),
            ),
            (
                "SWITCHYARD_REGISTRY_PORT",
                free_port().expect("port").to_string(),
            ),
            (
                "SWITCHYARD_GATEWAY_PORT",
                free_port().expect("port").to_string(),
            ),
            (
                "SWITCHYARD_API_PORT",
                free_port().expect("port").to_string(),
            ),
            ("SWITCHYARD_METRICS_BASE", free_metrics_base().to_string()),
        ],
        run,
    };

    let up = stack.sh("up");
    let out =
        String::from_utf8_lossy(&up.stdout).into_owned() + &String::from_utf8_lossy(&up.stderr);
    assert!(up.status.success(), "stack.sh up failed:\n{out}");
    assert!(out.contains("Switchyard is up"), "{out}");
    let pids = stack.pids();
    let names: Vec<&str> = pids.iter().map(|(n, _)| n.as_str()).collect();
    for service in [
        "tansu",
        "registry",
        "gateway",
        "reading-counter",
        "grafana-projector",
        "carrier-state",
        "anomaly-detector",
        "api",
        "modems",
    ] {
        assert!(
            names.contains(&service),
            "{service} not started: {names:?}\n{out}"
        );
    }
    assert!(pids.iter().all(|(_, p)| alive(*p)), "{pids:?}");

    // The pipeline works: the three simulated modems appear in the switch API.
    let token = std::fs::read_to_string(stack.run.path().join("api-token")).expect("token");
    let api: SocketAddr = ([127, 0, 0, 1], stack.port("SWITCHYARD_API_PORT")).into();
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

    // Down: nothing left.
    let down = stack.sh("down");
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
    let base: u16 = stack.port("SWITCHYARD_METRICS_BASE");
    let tcp_ports = [
        stack.port("SWITCHYARD_BROKER_PORT"),
        stack.port("SWITCHYARD_REGISTRY_PORT"),
        stack.port("SWITCHYARD_API_PORT"),
    ]
    .into_iter()
    .chain(base..base + 6);
    for port in tcp_ports {
        assert!(!listening(port), "port {port} still listening after down");
    }
    UdpSocket::bind(("127.0.0.1", stack.port("SWITCHYARD_GATEWAY_PORT")))
        .expect("the gateway's UDP port is free again");
    assert!(stack.pids().is_empty(), "pid files removed");
}

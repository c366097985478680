//! Issue 25 (5): the gateway authenticates by default. Without modem keys it refuses to
//! start, saying how to give them or to opt out; no broker is needed to see it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn without_keys_or_insecure_the_gateway_refuses_to_start_and_says_why() {
    let binary = switchyard_testkit::workspace_binary("switchyard-gateway").expect("binary");
    let mut child = Command::new(binary)
        .env_remove("SWITCHYARD_MODEM_KEYS")
        .env_remove("SWITCHYARD_INSECURE")
        // Nothing listens here: the refusal must come before any connection.
        .env("SWITCHYARD_BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .env("SWITCHYARD_REGISTRY_URL", "http://127.0.0.1:1")
        .env("SWITCHYARD_GATEWAY_LISTEN", "127.0.0.1:0")
        .env("SWITCHYARD_METRICS_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    // A gateway that starts waits for its registry for ever: give it 20 s to refuse.
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = child.try_wait().expect("wait").is_some();
    if !refused {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("output");
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        refused && !out.status.success(),
        "it started without keys: {said}"
    );
    assert!(
        said.contains("no modem keys") && said.contains("--insecure"),
        "the refusal says what is missing and how to opt out: {said}"
    );
}

/// Told `--insecure`, it runs, and says so where operators look: its log and its metrics.
#[test]
fn with_insecure_the_gateway_runs_and_says_so_in_its_log_and_metrics() {
    let dir = tempfile::tempdir().expect("scratch");
    let metrics: std::net::SocketAddr = (
        [127, 0, 0, 1],
        switchyard_testkit::free_port().expect("port"),
    )
        .into();
    let mut command =
        Command::new(switchyard_testkit::workspace_binary("switchyard-gateway").expect("binary"));
    command
        .arg("--insecure")
        .env_remove("SWITCHYARD_MODEM_KEYS")
        .env_remove("SWITCHYARD_INSECURE")
        // No registry: the gateway waits for it, with its metrics already served.
        .env("SWITCHYARD_BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .env("SWITCHYARD_REGISTRY_URL", "http://127.0.0.1:1")
        .env("SWITCHYARD_GATEWAY_LISTEN", "127.0.0.1:0")
        .env("SWITCHYARD_METRICS_LISTEN", metrics.to_string());
    let gateway =
        switchyard_testkit::Service::spawn("gateway", command, dir.path()).expect("spawn");
    let mut shown = String::new();
    switchyard_testkit::wait_for("the insecure gauge", Duration::from_secs(30), || {
        shown = switchyard_testkit::http_get_text(metrics, "/metrics").unwrap_or_default();
        shown.lines().any(|l| l == "switchyard_gateway_insecure 1")
    })
    .unwrap_or_else(|e| panic!("{e}: {shown}"));
    assert!(
        gateway
            .log_text()
            .contains("running without modem keys (--insecure)"),
        "{}",
        gateway.log_text()
    );
}

//! What the gateway refuses at start, and says why: no modem keys unless `--insecure`
//! (issue 25 item 5: authentication by default), a legacy id that cannot work. No broker
//! is needed to see it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Run the gateway with `env` (nothing to connect to: a refusal must come before any
/// connection) and return whether it refused to start within 20 s, and what it said.
fn refusal(env: &[(&str, &str)]) -> (bool, String) {
    let binary = switchyard_testkit::workspace_binary("switchyard-gateway").expect("binary");
    let mut command = Command::new(binary);
    command
        .env_remove("SWITCHYARD_MODEM_KEYS")
        .env_remove("SWITCHYARD_INSECURE")
        .env_remove("SWITCHYARD_LEGACY_MODEM_ID")
        .env("SWITCHYARD_BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .env("SWITCHYARD_REGISTRY_URL", "http://127.0.0.1:1")
        .env("SWITCHYARD_GATEWAY_LISTEN", "127.0.0.1:0")
        .env("SWITCHYARD_METRICS_LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("runs");
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
    (refused && !out.status.success(), said)
}

#[test]
fn without_keys_or_insecure_the_gateway_refuses_to_start_and_says_why() {
    let (refused, said) = refusal(&[]);
    assert!(refused, "it started without keys: {said}");
    assert!(
        said.contains("no modem keys") && said.contains("--insecure"),
        "the refusal says what is missing and how to opt out: {said}"
    );
}

/// Issue 25 (9): sessions take numeric modem ids only, so a non-numeric legacy id was
/// silently never listed; and a legacy id that is also a keyed modem let unsigned v1
/// packets speak for it.
#[test]
fn a_legacy_id_that_is_not_a_modem_id_or_is_a_keyed_modem_is_refused_at_start() {
    let (refused, said) = refusal(&[
        ("SWITCHYARD_INSECURE", "true"),
        ("SWITCHYARD_LEGACY_MODEM_ID", "lab-device"),
    ]);
    assert!(refused, "it started with a non-numeric legacy id: {said}");
    assert!(
        said.contains("--legacy-modem-id") && said.contains("lab-device"),
        "{said}"
    );

    let dir = tempfile::tempdir().expect("scratch");
    let keys = dir.path().join("modem-keys");
    std::fs::write(&keys, "4242 000102030405060708090a0b0c0d0e0f\n").expect("keys");
    let keys = keys.display().to_string();
    let (refused, said) = refusal(&[
        ("SWITCHYARD_MODEM_KEYS", &keys),
        ("SWITCHYARD_LEGACY_MODEM_ID", "4242"),
    ]);
    assert!(refused, "it started with a keyed legacy id: {said}");
    assert!(
        said.contains("4242") && said.contains("has a key"),
        "{said}"
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

//! `SWITCHYARD_LOG_FORMAT=json`: one JSON object per line, for log shippers; text otherwise.

use std::process::Command;

use serde_json::Value;
use switchyard_testkit::workspace_binary;

/// The modem simulator's stderr for a one-second run (it logs at start, needs no broker).
fn modem_log(format: Option<&str>) -> String {
    let mut command = Command::new(workspace_binary("switchyard-modem").expect("built"));
    command
        .args([
            "--gateway",
            "127.0.0.1:9",
            "--fleet",
            "1",
            "--duration-secs",
            "1",
        ])
        .env("RUST_LOG", "info")
        .env_remove("SWITCHYARD_LOG_FORMAT");
    if let Some(f) = format {
        command.env("SWITCHYARD_LOG_FORMAT", f);
    }
    let out = command.output().expect("switchyard-modem runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stderr).expect("utf-8 log")
}

#[test]
fn json_log_format_writes_one_object_per_line_and_text_stays_the_default() {
    let json = modem_log(Some("json"));
    let lines: Vec<&str> = json.lines().collect();
    assert!(!lines.is_empty(), "no log lines");
    for line in &lines {
        let event: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object: {line:?}: {e}"));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(event[field].is_string(), "{field} missing in {line}");
        }
    }
    assert!(
        lines.iter().any(|l| l.contains("\"fleet\":1")),
        "fields are kept as JSON values: {json}"
    );

    let text = modem_log(None);
    let first = text.lines().next().expect("a log line");
    assert!(
        serde_json::from_str::<Value>(first).is_err() && first.contains("INFO"),
        "{first}"
    );
}

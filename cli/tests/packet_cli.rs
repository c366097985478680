//! `switchyard packet decode|encode` as a user runs them.

use std::process::{Command, Output};

use serde_json::Value;

const SEED_VECTORS: &str = include_str!("../../edge/protocol/tests/vectors/seed-vectors.json");

fn switchyard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .expect("run switchyard")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn every_seed_vector_decodes_and_reencodes_through_the_cli() {
    let vectors: Vec<Value> = serde_json::from_str(SEED_VECTORS).expect("vectors");
    for v in &vectors {
        let hex = v["hex"].as_str().expect("hex");
        let out = switchyard(&["packet", "decode", hex]);
        assert!(
            out.status.success(),
            "{hex}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = stdout(&out);
        assert_eq!(text.lines().count(), 1, "one JSON object on one line");
        let decoded: Value = serde_json::from_str(&text).expect("JSON");
        for (field, expected) in v["fields"].as_object().expect("fields") {
            if field != "timestamp" {
                assert_eq!(&decoded[field.as_str()], expected, "{hex}: {field}");
            }
        }
        if let Some(ts) = decoded["timestamp"].as_str() {
            assert!(
                ts.ends_with('Z') && ts.len() == "2023-06-01T12:00:00.000000Z".len(),
                "RFC 3339 UTC with µs: {ts}"
            );
        }
        let out = switchyard(&["packet", "encode", &text]);
        assert!(
            out.status.success(),
            "{hex}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout(&out), hex);
    }
}

#[test]
fn bad_input_exits_2_with_one_line() {
    for args in [
        vec!["packet", "decode", "zz"],
        vec!["packet", "decode", ""],
        vec!["packet", "decode", "000000000157e750"],
        vec!["packet", "decode", "3000"],
        vec!["packet", "encode", "{not json"],
        vec![
            "packet",
            "encode",
            r#"{"flow":"iot","topic":"status","status":"BUSY"}"#,
        ],
        vec![
            "packet",
            "encode",
            r#"{"flow":"carrier_switch","topic":"perform","carrier":"sprint"}"#,
        ],
    ] {
        let out = switchyard(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn signed_envelopes_verify_only_with_their_key() {
    let json = r#"{"flow":"envelope","modem_id":"356938035643809","sequence":7,"request_id":"00000000000000ff","packet":{"flow":"carrier_switch","topic":"ack","status":"ACK","carrier":"verizon"}}"#;
    let out = switchyard(&["packet", "encode", json, "--key", "0011223344556677"]);
    assert!(out.status.success());
    let hex = stdout(&out);
    let ok = switchyard(&["packet", "decode", &hex, "--key", "0011223344556677"]);
    assert!(ok.status.success());
    let decoded: Value = serde_json::from_str(&stdout(&ok)).expect("JSON");
    assert_eq!(decoded["modem_id"], "356938035643809");
    assert_eq!(decoded["request_id"], "00000000000000ff");
    assert_eq!(decoded["packet"]["carrier"], "verizon");
    let bad = switchyard(&["packet", "decode", &hex, "--key", "00"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("authentication tag does not match"));
}

#[test]
fn docs_topics_md_is_the_generated_catalog() {
    let out = switchyard(&["topics", "doc"]);
    assert!(out.status.success());
    let generated = String::from_utf8_lossy(&out.stdout);
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/topics.md"))
            .unwrap_or_default();
    assert!(
        generated == committed,
        "docs/topics.md is out of date: run `switchyard topics doc > docs/topics.md`"
    );
}

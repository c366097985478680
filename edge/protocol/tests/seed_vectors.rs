//! Every packet produced by the original system's encoder decodes to its fields and
//! re-encodes to the same bytes.

use std::path::Path;

use serde_json::Value;
use switchyard_protocol::json::{frame_to_json, packet_from_json, parse_timestamp};
use switchyard_protocol::{Frame, Packet};

const VECTORS: &str = include_str!("vectors/seed-vectors.json");

fn vectors() -> Vec<Value> {
    match serde_json::from_str(VECTORS) {
        Ok(Value::Array(v)) => v,
        other => panic!("seed-vectors.json is not a JSON array: {other:?}"),
    }
}

#[test]
fn in_repo_copy_matches_shared_vectors_when_present() {
    // The repo carries a verbatim copy so a clone tests on its own; where the shared
    // folder sits beside the clone (CI), the copy must not have drifted.
    let shared =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/protocol/seed-vectors.json");
    if let Ok(text) = std::fs::read_to_string(&shared) {
        assert_eq!(
            text,
            VECTORS,
            "tests/vectors/seed-vectors.json differs from {}",
            shared.display()
        );
    }
}

#[test]
fn every_seed_vector_decodes_to_its_fields() {
    let vectors = vectors();
    assert_eq!(vectors.len(), 20, "expected the 20 seed vectors");
    for v in &vectors {
        let name = v["name"].as_str().expect("name");
        let bytes = hex::decode(v["hex"].as_str().expect("hex")).expect("hex decodes");
        let frame = Frame::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            frame.envelope.is_none(),
            "{name}: v1 packets carry no envelope"
        );
        let decoded = frame_to_json(&frame);
        for (field, expected) in v["fields"].as_object().expect("fields") {
            let got = &decoded[field.as_str()];
            if field == "timestamp" {
                let want = parse_timestamp(expected.as_str().expect("timestamp string"))
                    .expect("vector timestamp");
                let got = parse_timestamp(got.as_str().expect("decoded timestamp"))
                    .expect("decoded timestamp");
                assert_eq!(got, want, "{name}: timestamp");
            } else {
                assert_eq!(got, expected, "{name}: field {field}");
            }
        }
    }
}

#[test]
fn every_seed_vector_reencodes_to_the_same_bytes() {
    for v in vectors() {
        let name = v["name"].as_str().expect("name");
        let hex_in = v["hex"].as_str().expect("hex");
        let bytes = hex::decode(hex_in).expect("hex decodes");
        let packet = Packet::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            hex::encode(packet.encode().expect("encodes")),
            hex_in,
            "{name}: re-encode"
        );
        // And from the vector's own fields, as the original encoder was given them.
        let from_fields = packet_from_json(&v["fields"]).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(from_fields, packet, "{name}: fields describe the packet");
        assert_eq!(
            hex::encode(from_fields.encode().expect("encodes")),
            hex_in,
            "{name}: encode from fields"
        );
    }
}

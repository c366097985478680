//! The envelope extension's published test vectors (docs/protocol.md): each decodes to its
//! fields, verifies with its key, and encodes from its fields to the same bytes.
//! The tags were cross-checked with Python's hmac module when the vectors were made.

use serde_json::Value;
use switchyard_protocol::json::{frame_from_json, frame_to_json};
use switchyard_protocol::{verify, AuthError, Frame};

const VECTORS: &str = include_str!("vectors/envelope-vectors.json");

#[test]
fn envelope_vectors_decode_verify_and_reencode() {
    let vectors: Vec<Value> = serde_json::from_str(VECTORS).expect("vectors");
    assert_eq!(vectors.len(), 10);
    for v in &vectors {
        let name = v["name"].as_str().expect("name");
        let hex_in = v["hex"].as_str().expect("hex");
        let bytes = hex::decode(hex_in).expect("hex");
        let frame = Frame::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(frame_to_json(&frame), v["fields"], "{name}");
        let from_fields = frame_from_json(&v["fields"]).expect("fields parse");
        assert_eq!(
            hex::encode(from_fields.encode().expect("encodes")),
            hex_in,
            "{name}"
        );
        match v["key"].as_str() {
            Some(key) => {
                let key = hex::decode(key).expect("key hex");
                assert!(
                    verify(&bytes, &key).is_ok(),
                    "{name}: verifies with its key"
                );
                assert_eq!(
                    verify(&bytes, b"another key"),
                    Err(AuthError::BadTag),
                    "{name}"
                );
                assert_eq!(
                    hex::encode(from_fields.encode_signed(&key).expect("signs")),
                    hex_in,
                    "{name}"
                );
            }
            None => assert_eq!(verify(&bytes, b"any"), Err(AuthError::MissingTag), "{name}"),
        }
    }
}

#[test]
fn the_inner_packet_of_an_envelope_is_the_v1_packet_byte_for_byte() {
    // v1 "iot-data imu 42" from the seed vectors sits unchanged inside the first envelope.
    let vectors: Vec<Value> = serde_json::from_str(VECTORS).expect("vectors");
    let hex_env = vectors[0]["hex"].as_str().expect("hex");
    assert!(
        hex_env.ends_with("12000000000157e7503000000000040000002a"),
        "length 0x12 then the v1 bytes"
    );
}

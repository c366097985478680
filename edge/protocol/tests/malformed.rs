//! Malformed input returns a typed error naming the problem, and never panics.

use proptest::prelude::*;
use switchyard_protocol::{DecodeError, Frame, TimestampError};

fn decode_hex(h: &str) -> Result<Frame, DecodeError> {
    Frame::decode(&hex::decode(h).expect("test hex"))
}

#[test]
fn empty_datagram() {
    assert_eq!(Frame::decode(&[]), Err(DecodeError::Empty));
}

#[test]
fn truncated_iot_data() {
    let err = decode_hex("000000000157e750").expect_err("truncated");
    assert!(
        matches!(
            err,
            DecodeError::Truncated {
                packet: "IoT Data",
                expected: 14,
                actual: 8
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.reason_code(), "truncated");
}

#[test]
fn wrong_length_byte() {
    // Declares 5 data bytes, carries 4.
    let err = decode_hex("000000000157e7503000000000050000002a").expect_err("length");
    assert_eq!(
        err,
        DecodeError::LengthMismatch {
            declared: 5,
            actual: 4
        }
    );
    // Declares 3, carries 4.
    let err = decode_hex("000000000157e7503000000000030000002a").expect_err("length");
    assert_eq!(
        err,
        DecodeError::LengthMismatch {
            declared: 3,
            actual: 4
        }
    );
}

#[test]
fn unknown_flow_and_topic() {
    assert_eq!(decode_hex("4000"), Err(DecodeError::UnknownFlow(4)));
    assert_eq!(
        decode_hex("3200000001"),
        Err(DecodeError::UnknownTopic { flow: 3, topic: 2 })
    );
    assert_eq!(
        decode_hex("0200"),
        Err(DecodeError::UnknownTopic { flow: 0, topic: 2 })
    );
    assert_eq!(
        decode_hex("1f00"),
        Err(DecodeError::UnknownTopic {
            flow: 1,
            topic: 0xf
        })
    );
}

#[test]
fn unknown_status_carrier_and_ack_status() {
    assert_eq!(decode_hex("0130"), Err(DecodeError::UnknownStatus(3)));
    assert_eq!(decode_hex("1030"), Err(DecodeError::UnknownCarrier(3)));
    assert_eq!(decode_hex("1103"), Err(DecodeError::UnknownCarrier(3)));
    assert_eq!(decode_hex("1120"), Err(DecodeError::UnknownAckStatus(2)));
}

#[test]
fn reserved_bits_and_wrong_sizes_of_short_packets() {
    assert_eq!(
        decode_hex("0101"),
        Err(DecodeError::ReservedBits {
            packet: "IoT Status",
            value: 1
        })
    );
    assert_eq!(
        decode_hex("1002"),
        Err(DecodeError::ReservedBits {
            packet: "Carrier Switch Perform",
            value: 2
        })
    );
    assert!(matches!(
        decode_hex("01"),
        Err(DecodeError::Truncated { .. })
    ));
    assert!(matches!(
        decode_hex("110000"),
        Err(DecodeError::TrailingBytes { .. })
    ));
    assert!(matches!(
        decode_hex("30000010"),
        Err(DecodeError::Truncated {
            packet: "Sequence Resync",
            ..
        })
    ));
    assert!(matches!(
        decode_hex("300000100400"),
        Err(DecodeError::TrailingBytes { .. })
    ));
}

#[test]
fn invalid_timestamps() {
    // Month 13 (month-1 = 12): 0x57e7 then month nibble c.
    let err = decode_hex("000000000157e7c03000000000040000002a").expect_err("month 13");
    assert_eq!(
        err,
        DecodeError::Timestamp(TimestampError::OutOfRange {
            component: "month",
            value: 13
        })
    );
    // Year 4095 is temporenc's "missing" marker.
    let err = decode_hex("00000000015fff503000000000040000002a").expect_err("missing year");
    assert_eq!(err, DecodeError::Timestamp(TimestampError::Missing("year")));
    assert_eq!(err.reason_code(), "invalid_timestamp");
}

#[test]
fn envelope_errors_name_the_problem() {
    assert_eq!(
        decode_hex("2100"),
        Err(DecodeError::UnknownEnvelopeVersion(1))
    );
    assert_eq!(
        decode_hex(
            "2004000000000000002a0000000102 0110"
                .replace(' ', "")
                .as_str()
        ),
        Err(DecodeError::UnknownEnvelopeFlags(4))
    );
    assert_eq!(
        decode_hex("2000000000000000002a0000000100"),
        Err(DecodeError::EmptyEnvelope)
    );
    assert_eq!(
        decode_hex("2000000000000000002a00000001022000"),
        Err(DecodeError::NestedEnvelope)
    );
    let inner = decode_hex("2000000000000000002a00000001020130").expect_err("bad inner");
    assert_eq!(
        inner,
        DecodeError::Inner(Box::new(DecodeError::UnknownStatus(3)))
    );
    assert_eq!(inner.reason_code(), "unknown_status");
    assert!(matches!(
        decode_hex("2002000000000000002a000000010201100000"),
        Err(DecodeError::Truncated {
            packet: "envelope",
            ..
        })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    /// Random bytes never panic, and whatever decodes re-encodes to exactly the same bytes.
    #[test]
    fn random_bytes_never_panic_and_accepted_bytes_are_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(frame) = Frame::decode(&bytes) {
            prop_assert_eq!(frame.encode().expect("a decoded frame encodes"), bytes);
        }
    }

    /// Random bytes behind each valid header byte reach the deeper decoding paths.
    #[test]
    fn random_payloads_behind_known_headers(header in prop::sample::select(vec![0x00u8, 0x01, 0x10, 0x11, 0x20, 0x30]), rest in proptest::collection::vec(any::<u8>(), 0..48)) {
        let mut bytes = vec![header];
        bytes.extend(rest);
        if let Ok(frame) = Frame::decode(&bytes) {
            prop_assert_eq!(frame.encode().expect("a decoded frame encodes"), bytes);
        }
    }
}

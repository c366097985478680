//! Valid values survive encode → decode, and signed envelopes verify only with their key.

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use switchyard_protocol::{
    verify, AckStatus, AuthError, Carrier, Envelope, Frame, IotData, IotStatus, Packet,
};

fn any_timestamp() -> impl Strategy<Value = DateTime<Utc>> {
    // Years 0..=4094 are encodable; stay within chrono's easy range and whole microseconds.
    (-62_000_000_000i64..=65_000_000_000i64, 0u32..1_000_000).prop_map(|(secs, micros)| {
        DateTime::<Utc>::from_timestamp(secs, micros * 1_000).unwrap_or_default()
    })
}

fn any_packet() -> impl Strategy<Value = Packet> {
    let carrier = prop::sample::select(Carrier::ALL.to_vec());
    prop_oneof![
        (
            any::<u32>(),
            any_timestamp(),
            proptest::collection::vec(any::<u8>(), 0..=255)
        )
            .prop_map(|(device_id, timestamp, data)| Packet::IotData(IotData {
                device_id,
                timestamp,
                data
            })),
        prop::sample::select(IotStatus::ALL.to_vec()).prop_map(Packet::IotStatus),
        carrier.clone().prop_map(Packet::CarrierSwitchPerform),
        (
            prop::sample::select(AckStatus::ALL.to_vec()),
            carrier.clone()
        )
            .prop_map(|(status, carrier)| Packet::CarrierSwitchAck { status, carrier }),
        any::<u32>().prop_map(|above| Packet::SequenceResync { above }),
        (carrier, any::<u32>())
            .prop_map(|(carrier, executed)| Packet::PerformRefused { carrier, executed }),
    ]
}

proptest! {
    #[test]
    fn packets_roundtrip(packet in any_packet()) {
        let bytes = packet.encode().expect("encodes");
        prop_assert_eq!(Packet::decode(&bytes).expect("decodes"), packet);
    }

    #[test]
    fn envelopes_roundtrip_and_verify(packet in any_packet().prop_filter("fits an envelope", |p| p.encoded_len() <= 255),
                                      modem_id in any::<u64>(), sequence in any::<u32>(),
                                      request_id in any::<Option<u64>>(), key in proptest::collection::vec(any::<u8>(), 1..64)) {
        let frame = Frame { envelope: Some(Envelope { modem_id, sequence, request_id, auth_tag: None }), packet };
        let plain = frame.encode().expect("encodes");
        prop_assert_eq!(&Frame::decode(&plain).expect("decodes"), &frame);
        prop_assert_eq!(verify(&plain, &key), Err(AuthError::MissingTag));

        let signed = frame.encode_signed(&key).expect("signs");
        let verified = verify(&signed, &key).expect("verifies with its key");
        prop_assert_eq!(&verified.packet, &frame.packet);
        let mut other_key = key.clone();
        other_key[0] ^= 1;
        prop_assert_eq!(verify(&signed, &other_key), Err(AuthError::BadTag));
        // Any flipped bit in the signed part is detected.
        let mut tampered = signed.clone();
        let at = signed.len() / 2;
        tampered[at] ^= 0x01;
        prop_assert!(verify(&tampered, &key).is_err());
    }
}

#[test]
fn a_v1_packet_cannot_be_verified() {
    assert_eq!(verify(&[0x01, 0x00], b"key"), Err(AuthError::NotAnEnvelope));
}

#[test]
fn an_envelope_header_can_be_read_even_when_its_inner_packet_is_invalid() {
    use switchyard_protocol::peek_envelope;
    // Perform with carrier code 3 (invalid) inside an envelope with request id 0xab.
    let bytes = hex::decode(concat!(
        "2001",
        "000000000000002a",
        "00000007",
        "00000000000000ab",
        "02",
        "1030"
    ))
    .expect("hex");
    assert!(Frame::decode(&bytes).is_err());
    assert_eq!(peek_envelope(&bytes), Some((42, 7, Some(0xab))));
    assert_eq!(peek_envelope(&[0x10, 0x20]), None);
}

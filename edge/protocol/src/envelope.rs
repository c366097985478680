//! The envelope extension (flow 2): modem identity, sequence number, request id and an
//! optional authentication tag around an unchanged v1 packet.
//!
//! ```text
//! offset size  field
//! 0      1     0x20: flow 2 (envelope), topic 0 (envelope version 0)
//! 1      1     flags: bit 0 REQUEST_ID present, bit 1 AUTH tag present; others must be 0
//! 2      8     modem id, u64 big-endian
//! 10     4     sequence number, u32 big-endian (per modem, increasing)
//! 14     8     request id, u64 big-endian              (only with REQUEST_ID)
//! ..     1     inner length N, 1..=255
//! ..     N     inner packet: a v1 packet, byte for byte
//! ..     16    HMAC-SHA256(modem key, every byte before the tag), first 16 bytes (only with AUTH)
//! ```
//!
//! A v1 device never sends flow 2, so every v1 packet keeps its meaning.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{AuthError, DecodeError, EncodeError};
use crate::packet::{Packet, FLOW_ENVELOPE};

/// Envelope version carried in the topic nibble of byte 0.
pub const ENVELOPE_VERSION: u8 = 0;
/// Length of the truncated HMAC-SHA256 authentication tag.
pub const AUTH_TAG_LEN: usize = 16;

const FLAG_REQUEST_ID: u8 = 0b0000_0001;
const FLAG_AUTH: u8 = 0b0000_0010;
const KNOWN_FLAGS: u8 = FLAG_REQUEST_ID | FLAG_AUTH;
/// header + flags + modem id + sequence
const FIXED_LEN: usize = 1 + 1 + 8 + 4;

type HmacSha256 = Hmac<Sha256>;

/// Who sent a packet, in what order, in answer to which request, and whether it is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub modem_id: u64,
    pub sequence: u32,
    /// Ties a Carrier Switch Perform to its ACK.
    pub request_id: Option<u64>,
    /// The tag as received; `None` when the envelope is not authenticated.
    pub auth_tag: Option<[u8; AUTH_TAG_LEN]>,
}

/// One datagram: a bare v1 packet, or a v1 packet inside an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub envelope: Option<Envelope>,
    pub packet: Packet,
}

impl From<Packet> for Frame {
    fn from(packet: Packet) -> Self {
        Frame {
            envelope: None,
            packet,
        }
    }
}

impl Frame {
    /// Decode a datagram: a v1 packet or an envelope.
    pub fn decode(bytes: &[u8]) -> Result<Frame, DecodeError> {
        let header = *bytes.first().ok_or(DecodeError::Empty)?;
        if header >> 4 != FLOW_ENVELOPE {
            return Packet::decode(bytes).map(Frame::from);
        }
        let version = header & 0x0F;
        if version != ENVELOPE_VERSION {
            return Err(DecodeError::UnknownEnvelopeVersion(version));
        }
        let truncated = |expected| DecodeError::Truncated {
            packet: "envelope",
            expected,
            actual: bytes.len(),
        };
        if bytes.len() < FIXED_LEN {
            return Err(truncated(FIXED_LEN + 1));
        }
        let flags = bytes[1];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(DecodeError::UnknownEnvelopeFlags(flags));
        }
        let modem_id = u64::from_be_bytes(array(&bytes[2..10]));
        let sequence = u32::from_be_bytes(array(&bytes[10..14]));
        let mut at = FIXED_LEN;
        let request_id = if flags & FLAG_REQUEST_ID != 0 {
            let id = bytes.get(at..at + 8).ok_or_else(|| truncated(at + 9))?;
            at += 8;
            Some(u64::from_be_bytes(array(id)))
        } else {
            None
        };
        let inner_len = usize::from(*bytes.get(at).ok_or_else(|| truncated(at + 1))?);
        at += 1;
        if inner_len == 0 {
            return Err(DecodeError::EmptyEnvelope);
        }
        let tag_len = if flags & FLAG_AUTH != 0 {
            AUTH_TAG_LEN
        } else {
            0
        };
        let expected = at + inner_len + tag_len;
        if bytes.len() < expected {
            return Err(truncated(expected));
        }
        if bytes.len() > expected {
            return Err(DecodeError::TrailingBytes {
                packet: "envelope",
                expected,
                actual: bytes.len(),
            });
        }
        let inner = &bytes[at..at + inner_len];
        let packet = Packet::decode(inner).map_err(|e| match e {
            DecodeError::NestedEnvelope => DecodeError::NestedEnvelope,
            other => DecodeError::Inner(Box::new(other)),
        })?;
        let auth_tag = (tag_len > 0).then(|| array(&bytes[expected - AUTH_TAG_LEN..]));
        Ok(Frame {
            envelope: Some(Envelope {
                modem_id,
                sequence,
                request_id,
                auth_tag,
            }),
            packet,
        })
    }

    /// Encode the frame as it stands (an envelope's tag is written as stored).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let Some(env) = &self.envelope else {
            return self.packet.encode();
        };
        let mut out = self.encode_unsigned(env, env.auth_tag.is_some())?;
        if let Some(tag) = &env.auth_tag {
            out.extend_from_slice(tag);
        }
        Ok(out)
    }

    /// Encode an envelope and sign it with `key`, whatever tag it held before.
    /// A bare v1 packet cannot be signed: wrap it in an envelope first.
    pub fn encode_signed(&self, key: &[u8]) -> Result<Vec<u8>, EncodeError> {
        let Some(env) = &self.envelope else {
            return self.packet.encode();
        };
        let mut out = self.encode_unsigned(env, true)?;
        let tag = compute_tag(key, &out);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    fn encode_unsigned(&self, env: &Envelope, auth: bool) -> Result<Vec<u8>, EncodeError> {
        let inner_len = self.packet.encoded_len();
        let inner_len_byte =
            u8::try_from(inner_len).map_err(|_| EncodeError::InnerTooLong(inner_len))?;
        let mut flags = 0;
        if env.request_id.is_some() {
            flags |= FLAG_REQUEST_ID;
        }
        if auth {
            flags |= FLAG_AUTH;
        }
        let mut out = Vec::with_capacity(FIXED_LEN + 9 + inner_len + AUTH_TAG_LEN);
        out.push(FLOW_ENVELOPE << 4 | ENVELOPE_VERSION);
        out.push(flags);
        out.extend_from_slice(&env.modem_id.to_be_bytes());
        out.extend_from_slice(&env.sequence.to_be_bytes());
        if let Some(id) = env.request_id {
            out.extend_from_slice(&id.to_be_bytes());
        }
        out.push(inner_len_byte);
        self.packet.encode_into(&mut out)?;
        Ok(out)
    }
}

/// Read an envelope's fixed header (modem id, sequence, request id) without judging its
/// inner packet, so a receiver can answer even a packet it must refuse (e.g. a NACK for a
/// Perform naming an unknown carrier). `None` if the bytes are not an envelope header.
pub fn peek_envelope(bytes: &[u8]) -> Option<(u64, u32, Option<u64>)> {
    if bytes.len() < FIXED_LEN
        || bytes[0] != (FLOW_ENVELOPE << 4 | ENVELOPE_VERSION)
        || bytes[1] & !KNOWN_FLAGS != 0
    {
        return None;
    }
    let modem_id = u64::from_be_bytes(array(&bytes[2..10]));
    let sequence = u32::from_be_bytes(array(&bytes[10..14]));
    let request_id = if bytes[1] & FLAG_REQUEST_ID != 0 {
        Some(u64::from_be_bytes(array(
            bytes.get(FIXED_LEN..FIXED_LEN + 8)?,
        )))
    } else {
        None
    };
    Some((modem_id, sequence, request_id))
}

/// Check a datagram's authentication tag against the modem's key, in constant time.
pub fn verify(datagram: &[u8], key: &[u8]) -> Result<Frame, AuthError> {
    let frame = Frame::decode(datagram)?;
    let env = frame.envelope.as_ref().ok_or(AuthError::NotAnEnvelope)?;
    let tag = env.auth_tag.as_ref().ok_or(AuthError::MissingTag)?;
    let signed = &datagram[..datagram.len() - AUTH_TAG_LEN];
    let mut mac = HmacSha256::new_from_slice(key).map_err(|_| AuthError::BadTag)?;
    mac.update(signed);
    mac.verify_truncated_left(tag)
        .map_err(|_| AuthError::BadTag)?;
    Ok(frame)
}

fn compute_tag(key: &[u8], signed: &[u8]) -> [u8; AUTH_TAG_LEN] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(signed);
    array(&mac.finalize().into_bytes()[..AUTH_TAG_LEN])
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

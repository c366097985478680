//! The Switchyard device wire protocol.
//!
//! * [`Packet`]: the four v1 packets, byte-compatible with the original Python system.
//! * [`Frame`] / [`Envelope`]: the additive extension (flow 2) carrying modem identity,
//!   sequence number, request id and an optional HMAC tag around an unchanged v1 packet.
//! * [`json`]: the JSON form used by the operator CLI.
//!
//! Decoding never panics: every malformed input is a [`DecodeError`] naming the problem.
//! The layouts are documented in `docs/protocol.md`.

mod envelope;
mod error;
pub mod json;
pub mod keys;
mod packet;
mod timestamp;

pub use envelope::{peek_envelope, verify, Envelope, Frame, AUTH_TAG_LEN, ENVELOPE_VERSION};
pub use error::{AuthError, DecodeError, EncodeError};
pub use packet::{AckStatus, Carrier, IotData, IotStatus, Packet};
pub use timestamp::{decode_timestamp, encode_timestamp, TimestampError, TIMESTAMP_LEN};

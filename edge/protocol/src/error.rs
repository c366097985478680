use thiserror::Error;

use crate::timestamp::TimestampError;

/// Why a datagram is not a valid packet. Every variant names the problem; decoding never panics.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("empty datagram")]
    Empty,
    #[error("unknown flow {0:#x} (byte 0 high nibble)")]
    UnknownFlow(u8),
    #[error("unknown topic {topic:#x} for flow {flow:#x}")]
    UnknownTopic { flow: u8, topic: u8 },
    #[error("{packet} truncated: needs {expected} bytes, got {actual}")]
    Truncated {
        packet: &'static str,
        expected: usize,
        actual: usize,
    },
    #[error("{packet} has {actual} bytes, expected exactly {expected}")]
    TrailingBytes {
        packet: &'static str,
        expected: usize,
        actual: usize,
    },
    #[error("data length byte says {declared} bytes but {actual} follow")]
    LengthMismatch { declared: u8, actual: usize },
    #[error("unknown IoT status code {0:#x}")]
    UnknownStatus(u8),
    #[error("unknown carrier switch ACK status {0:#x}")]
    UnknownAckStatus(u8),
    #[error("unknown carrier id {0:#x}")]
    UnknownCarrier(u8),
    #[error("{packet}: reserved low nibble is {value:#x}, must be 0")]
    ReservedBits { packet: &'static str, value: u8 },
    #[error("invalid timestamp: {0}")]
    Timestamp(#[from] TimestampError),
    #[error("unknown envelope version {0}")]
    UnknownEnvelopeVersion(u8),
    #[error("unknown envelope flags {0:#04x}")]
    UnknownEnvelopeFlags(u8),
    #[error("envelope carries no inner packet")]
    EmptyEnvelope,
    #[error("an envelope cannot carry another envelope")]
    NestedEnvelope,
    #[error("inner packet: {0}")]
    Inner(Box<DecodeError>),
}

impl DecodeError {
    /// A stable, machine-friendly name for the problem: used as a metric label and as the
    /// `reason` of rejected datagrams.
    pub fn reason_code(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::UnknownFlow(_) => "unknown_flow",
            DecodeError::UnknownTopic { .. } => "unknown_topic",
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::TrailingBytes { .. } => "trailing_bytes",
            DecodeError::LengthMismatch { .. } => "length_mismatch",
            DecodeError::UnknownStatus(_) => "unknown_status",
            DecodeError::UnknownAckStatus(_) => "unknown_ack_status",
            DecodeError::UnknownCarrier(_) => "unknown_carrier",
            DecodeError::ReservedBits { .. } => "reserved_bits",
            DecodeError::Timestamp(_) => "invalid_timestamp",
            DecodeError::UnknownEnvelopeVersion(_) => "unknown_envelope_version",
            DecodeError::UnknownEnvelopeFlags(_) => "unknown_envelope_flags",
            DecodeError::EmptyEnvelope => "empty_envelope",
            DecodeError::NestedEnvelope => "nested_envelope",
            DecodeError::Inner(inner) => inner.reason_code(),
        }
    }
}

/// Why a packet value cannot be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    #[error("IoT data is {0} bytes; at most 255 fit the length byte")]
    DataTooLong(usize),
    #[error("invalid timestamp: {0}")]
    Timestamp(#[from] TimestampError),
    #[error("the inner packet is {0} bytes; at most 255 fit an envelope")]
    InnerTooLong(usize),
}

/// Why an authenticated envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    #[error("datagram is not an envelope, so it carries no authentication tag")]
    NotAnEnvelope,
    #[error("envelope carries no authentication tag")]
    MissingTag,
    #[error("authentication tag does not match")]
    BadTag,
    #[error("{0}")]
    Decode(#[from] DecodeError),
}

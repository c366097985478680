//! The four v1 packet types, byte for byte as the original system sends them, and the one
//! packet of the envelope extension's session flow (never sent to a v1 device).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::error::{DecodeError, EncodeError};
use crate::timestamp::{decode_timestamp, encode_timestamp, TIMESTAMP_LEN};

pub(crate) const FLOW_IOT: u8 = 0x0;
pub(crate) const FLOW_CARRIER_SWITCH: u8 = 0x1;
pub(crate) const FLOW_ENVELOPE: u8 = 0x2;
/// The envelope extension's session control: only inside a signed envelope.
pub(crate) const FLOW_SESSION: u8 = 0x3;

const TOPIC_DATA: u8 = 0x0;
const TOPIC_STATUS: u8 = 0x1;
const TOPIC_PERFORM: u8 = 0x0;
const TOPIC_ACK: u8 = 0x1;
const TOPIC_RESYNC: u8 = 0x0;
const TOPIC_PERFORM_REFUSED: u8 = 0x1;

/// Bytes before the data in an IoT Data packet: header, device id, timestamp, length.
const IOT_DATA_HEADER_LEN: usize = 1 + 4 + TIMESTAMP_LEN + 1;

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident, $err:ident, { $($variant:ident = $code:literal => $text:literal $(| $alias:literal)*),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in wire-code order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The 4-bit wire code.
            pub fn code(self) -> u8 {
                match self { $($name::$variant => $code),+ }
            }

            /// The value for a 4-bit wire code.
            pub fn from_code(code: u8) -> Result<Self, DecodeError> {
                match code {
                    $($code => Ok($name::$variant),)+
                    other => Err(DecodeError::$err(other)),
                }
            }

            /// The canonical name (as used in JSON and Avro).
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let lower = s.trim().to_ascii_lowercase();
                $(if lower == $text.to_ascii_lowercase() $(|| lower == $alias)* { return Ok($name::$variant); })+
                Err(format!(
                    "unknown {} {s:?} (expected one of: {})",
                    stringify!($name),
                    [$($text),+].join(", ")
                ))
            }
        }
    };
}

wire_enum!(
    /// A carrier profile on the multi-carrier SIM.
    Carrier, UnknownCarrier, {
        AtAndT = 0x0 => "at&t" | "att" | "atnt",
        TMobile = 0x1 => "t-mobile" | "tmobile",
        Verizon = 0x2 => "verizon",
        Disconnect = 0xF => "disconnect" | "invalid",
    }
);

wire_enum!(
    /// A device's self-reported state.
    IotStatus, UnknownStatus, {
        Nominal = 0x0 => "NOMINAL",
        Idle = 0x1 => "IDLE",
        OffNominal = 0x2 => "OFF_NOMINAL" | "off-nominal",
    }
);

wire_enum!(
    /// Whether the SIM performed a requested carrier switch.
    AckStatus, UnknownAckStatus, {
        Ack = 0x0 => "ACK",
        Nack = 0x1 => "NACK",
    }
);

/// One sensor reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IotData {
    /// Names the sensor (1 imu, 2 gyro, 3 temp in the seed catalog).
    pub device_id: u32,
    /// When the sensor collected the reading (UTC, whole microseconds).
    pub timestamp: DateTime<Utc>,
    /// The payload: original devices send one big-endian i32.
    pub data: Vec<u8>,
}

impl IotData {
    /// A reading carrying one i32, as original devices send.
    pub fn with_value(device_id: u32, timestamp: DateTime<Utc>, value: i32) -> Self {
        IotData {
            device_id,
            timestamp,
            data: value.to_be_bytes().to_vec(),
        }
    }

    /// The payload as a big-endian i32, when it is exactly 4 bytes.
    pub fn value(&self) -> Option<i32> {
        <[u8; 4]>::try_from(self.data.as_slice())
            .ok()
            .map(i32::from_be_bytes)
    }
}

/// A v1 packet: what the original system sends and understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Uplink sensor reading (flow 0, topic 0).
    IotData(IotData),
    /// Uplink device status (flow 0, topic 1).
    IotStatus(IotStatus),
    /// Downlink request to switch the SIM to a carrier (flow 1, topic 0).
    CarrierSwitchPerform(Carrier),
    /// Uplink answer to a switch: whether it happened and the carrier now in use (flow 1, topic 1).
    CarrierSwitchAck { status: AckStatus, carrier: Carrier },
    /// Downlink, envelope extension only (flow 3, topic 0; 5 bytes: header, u32 big-endian):
    /// the gateway refused an uplink number as not fresh, and the SIM's counter must move
    /// above `above` (the highest number the gateway holds for the modem). Valid only in an
    /// envelope signed with the modem's key; moving a counter forward is all it can do.
    SequenceResync { above: u32 },
    /// Uplink, envelope extension only (flow 3, topic 1; 6 bytes: header, carrier id in the
    /// high nibble of byte 1 (low nibble 0), u32 big-endian): the SIM refused a signed
    /// Perform whose downlink number was not above `executed`, the last one it executed (a
    /// replay, or a cloud whose counter went back); `carrier` is the one it stays on. In a
    /// signed envelope carrying the refused Perform's request id, so the request ends
    /// NACKed with this reason, and the gateway's next Perform is numbered above `executed`.
    PerformRefused { carrier: Carrier, executed: u32 },
}

impl Packet {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Packet::IotData(_) => "iot_data",
            Packet::IotStatus(_) => "iot_status",
            Packet::CarrierSwitchPerform(_) => "carrier_switch_perform",
            Packet::CarrierSwitchAck { .. } => "carrier_switch_ack",
            Packet::SequenceResync { .. } => "sequence_resync",
            Packet::PerformRefused { .. } => "perform_refused",
        }
    }

    /// Decode one v1 packet; the slice must hold exactly the packet.
    pub fn decode(bytes: &[u8]) -> Result<Packet, DecodeError> {
        let (&header, _) = bytes.split_first().ok_or(DecodeError::Empty)?;
        let (flow, topic) = (header >> 4, header & 0x0F);
        match (flow, topic) {
            (FLOW_IOT, TOPIC_DATA) => decode_iot_data(bytes).map(Packet::IotData),
            (FLOW_IOT, TOPIC_STATUS) => {
                let byte = single_byte("IoT Status", bytes)?;
                Ok(Packet::IotStatus(IotStatus::from_code(byte >> 4)?))
            }
            (FLOW_CARRIER_SWITCH, TOPIC_PERFORM) => {
                let byte = single_byte("Carrier Switch Perform", bytes)?;
                Ok(Packet::CarrierSwitchPerform(Carrier::from_code(byte >> 4)?))
            }
            (FLOW_CARRIER_SWITCH, TOPIC_ACK) => {
                exact_len("Carrier Switch ACK", bytes, 2)?;
                let byte = bytes[1];
                Ok(Packet::CarrierSwitchAck {
                    status: AckStatus::from_code(byte >> 4)?,
                    carrier: Carrier::from_code(byte & 0x0F)?,
                })
            }
            (FLOW_SESSION, TOPIC_RESYNC) => {
                exact_len("Sequence Resync", bytes, 5)?;
                let mut above = [0; 4];
                above.copy_from_slice(&bytes[1..5]);
                Ok(Packet::SequenceResync {
                    above: u32::from_be_bytes(above),
                })
            }
            (FLOW_SESSION, TOPIC_PERFORM_REFUSED) => {
                exact_len("Perform Refused", bytes, 6)?;
                let byte = bytes[1];
                if byte & 0x0F != 0 {
                    return Err(DecodeError::ReservedBits {
                        packet: "Perform Refused",
                        value: byte & 0x0F,
                    });
                }
                let mut executed = [0; 4];
                executed.copy_from_slice(&bytes[2..6]);
                Ok(Packet::PerformRefused {
                    carrier: Carrier::from_code(byte >> 4)?,
                    executed: u32::from_be_bytes(executed),
                })
            }
            (FLOW_IOT | FLOW_CARRIER_SWITCH | FLOW_SESSION, topic) => {
                Err(DecodeError::UnknownTopic { flow, topic })
            }
            (FLOW_ENVELOPE, _) => Err(DecodeError::NestedEnvelope),
            (flow, _) => Err(DecodeError::UnknownFlow(flow)),
        }
    }

    /// Encode to the exact bytes the original system sends.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Append the encoded packet to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match self {
            Packet::IotData(d) => {
                let len = u8::try_from(d.data.len())
                    .map_err(|_| EncodeError::DataTooLong(d.data.len()))?;
                let ts = encode_timestamp(&d.timestamp)?;
                out.push(FLOW_IOT << 4 | TOPIC_DATA);
                out.extend_from_slice(&d.device_id.to_be_bytes());
                out.extend_from_slice(&ts);
                out.push(len);
                out.extend_from_slice(&d.data);
            }
            Packet::IotStatus(s) => {
                out.extend_from_slice(&[FLOW_IOT << 4 | TOPIC_STATUS, s.code() << 4])
            }
            Packet::CarrierSwitchPerform(c) => {
                out.extend_from_slice(&[FLOW_CARRIER_SWITCH << 4 | TOPIC_PERFORM, c.code() << 4])
            }
            Packet::CarrierSwitchAck { status, carrier } => out.extend_from_slice(&[
                FLOW_CARRIER_SWITCH << 4 | TOPIC_ACK,
                status.code() << 4 | carrier.code(),
            ]),
            Packet::SequenceResync { above } => {
                out.push(FLOW_SESSION << 4 | TOPIC_RESYNC);
                out.extend_from_slice(&above.to_be_bytes());
            }
            Packet::PerformRefused { carrier, executed } => {
                out.extend_from_slice(&[
                    FLOW_SESSION << 4 | TOPIC_PERFORM_REFUSED,
                    carrier.code() << 4,
                ]);
                out.extend_from_slice(&executed.to_be_bytes());
            }
        }
        Ok(())
    }

    /// Size of the encoded packet in bytes.
    pub fn encoded_len(&self) -> usize {
        match self {
            Packet::IotData(d) => IOT_DATA_HEADER_LEN + d.data.len(),
            Packet::SequenceResync { .. } => 5,
            Packet::PerformRefused { .. } => 6,
            _ => 2,
        }
    }
}

fn exact_len(packet: &'static str, bytes: &[u8], expected: usize) -> Result<(), DecodeError> {
    match bytes.len() {
        n if n < expected => Err(DecodeError::Truncated {
            packet,
            expected,
            actual: n,
        }),
        n if n > expected => Err(DecodeError::TrailingBytes {
            packet,
            expected,
            actual: n,
        }),
        _ => Ok(()),
    }
}

/// The payload byte of a two-byte packet whose low nibble is reserved.
fn single_byte(packet: &'static str, bytes: &[u8]) -> Result<u8, DecodeError> {
    exact_len(packet, bytes, 2)?;
    let byte = bytes[1];
    if byte & 0x0F != 0 {
        return Err(DecodeError::ReservedBits {
            packet,
            value: byte & 0x0F,
        });
    }
    Ok(byte)
}

fn decode_iot_data(bytes: &[u8]) -> Result<IotData, DecodeError> {
    if bytes.len() < IOT_DATA_HEADER_LEN {
        return Err(DecodeError::Truncated {
            packet: "IoT Data",
            expected: IOT_DATA_HEADER_LEN,
            actual: bytes.len(),
        });
    }
    let mut device_id = [0u8; 4];
    device_id.copy_from_slice(&bytes[1..5]);
    let mut ts = [0u8; TIMESTAMP_LEN];
    ts.copy_from_slice(&bytes[5..5 + TIMESTAMP_LEN]);
    let declared = bytes[IOT_DATA_HEADER_LEN - 1];
    let data = &bytes[IOT_DATA_HEADER_LEN..];
    if data.len() != usize::from(declared) {
        return Err(DecodeError::LengthMismatch {
            declared,
            actual: data.len(),
        });
    }
    Ok(IotData {
        device_id: u32::from_be_bytes(device_id),
        timestamp: decode_timestamp(ts)?,
        data: data.to_vec(),
    })
}

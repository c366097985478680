//! The JSON form of a frame, as `switchyard packet decode` prints it and `packet encode` reads it.
//!
//! ```json
//! {"flow":"iot","topic":"data","device_id":1,"timestamp":"2023-06-01T12:00:00.000000Z","data":"0000002a","value":42}
//! {"flow":"iot","topic":"status","status":"NOMINAL"}
//! {"flow":"carrier_switch","topic":"perform","carrier_id":2,"carrier":"verizon"}
//! {"flow":"carrier_switch","topic":"ack","status":"ACK","carrier_id":2,"carrier":"verizon"}
//! {"flow":"envelope","modem_id":"42","sequence":7,"request_id":"00000000000000ff","auth_tag":"…","packet":{…}}
//! ```
//! Timestamps are RFC 3339 UTC with microseconds; a timestamp without an offset is read as UTC.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use thiserror::Error;

use crate::envelope::{Envelope, Frame, AUTH_TAG_LEN};
use crate::packet::{AckStatus, Carrier, IotData, IotStatus, Packet};

/// Why a JSON value does not describe a packet.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct JsonError(String);

fn err<T>(msg: impl Into<String>) -> Result<T, JsonError> {
    Err(JsonError(msg.into()))
}

/// Format an instant as RFC 3339 UTC with microseconds.
pub fn format_timestamp(ts: &DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Parse RFC 3339 (any offset) or a naive ISO 8601 date-time taken as UTC.
pub fn parse_timestamp(s: &str) -> Result<DateTime<Utc>, JsonError> {
    if let Ok(ts) = DateTime::parse_from_rfc3339(s) {
        return Ok(ts.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .map(|naive| naive.and_utc())
        .or_else(|_| {
            err(format!(
                "timestamp {s:?} is not RFC 3339 (e.g. 2023-06-01T12:00:00.000000Z)"
            ))
        })
}

/// The JSON form of a frame.
pub fn frame_to_json(frame: &Frame) -> Value {
    let packet = packet_to_json(&frame.packet);
    let Some(env) = &frame.envelope else {
        return packet;
    };
    let mut obj = Map::new();
    obj.insert("flow".into(), json!("envelope"));
    obj.insert("modem_id".into(), json!(env.modem_id.to_string()));
    obj.insert("sequence".into(), json!(env.sequence));
    if let Some(id) = env.request_id {
        obj.insert("request_id".into(), json!(format_request_id(id)));
    }
    if let Some(tag) = &env.auth_tag {
        obj.insert("auth_tag".into(), json!(hex::encode(tag)));
    }
    obj.insert("packet".into(), packet);
    Value::Object(obj)
}

/// A request id as text: 16 lowercase hex digits.
pub fn format_request_id(id: u64) -> String {
    format!("{id:016x}")
}

/// Parse a request id written as 16 hex digits.
pub fn parse_request_id(s: &str) -> Result<u64, JsonError> {
    if s.len() != 16 {
        return err(format!("request_id {s:?} must be 16 hex digits"));
    }
    u64::from_str_radix(s, 16).or_else(|_| err(format!("request_id {s:?} must be 16 hex digits")))
}

/// The JSON form of a v1 packet.
pub fn packet_to_json(packet: &Packet) -> Value {
    match packet {
        Packet::IotData(d) => {
            let mut v = json!({
                "flow": "iot",
                "topic": "data",
                "device_id": d.device_id,
                "timestamp": format_timestamp(&d.timestamp),
                "data": hex::encode(&d.data),
            });
            if let (Some(value), Some(obj)) = (d.value(), v.as_object_mut()) {
                obj.insert("value".into(), json!(value));
            }
            v
        }
        Packet::IotStatus(s) => json!({"flow": "iot", "topic": "status", "status": s.as_str()}),
        Packet::CarrierSwitchPerform(c) => json!({
            "flow": "carrier_switch", "topic": "perform", "carrier_id": c.code(), "carrier": c.as_str(),
        }),
        Packet::CarrierSwitchAck { status, carrier } => json!({
            "flow": "carrier_switch", "topic": "ack", "status": status.as_str(),
            "carrier_id": carrier.code(), "carrier": carrier.as_str(),
        }),
        Packet::SequenceResync { above } => json!({
            "flow": "session", "topic": "resync", "above": above,
        }),
        Packet::PerformRefused { carrier, executed } => json!({
            "flow": "session", "topic": "perform_refused", "carrier_id": carrier.code(),
            "carrier": carrier.as_str(), "executed": executed,
        }),
    }
}

/// Read a frame from its JSON form.
pub fn frame_from_json(v: &Value) -> Result<Frame, JsonError> {
    let obj = v
        .as_object()
        .ok_or_else(|| JsonError("packet JSON must be an object".into()))?;
    if str_field(obj, "flow")? != "envelope" {
        return packet_from_json(v).map(Frame::from);
    }
    let modem_id = match obj.get("modem_id") {
        Some(Value::String(s)) => s
            .parse::<u64>()
            .or_else(|_| err(format!("modem_id {s:?} is not an unsigned 64-bit number")))?,
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| JsonError(format!("modem_id {n} is not an unsigned 64-bit number")))?,
        _ => return err("envelope needs \"modem_id\" (decimal string)"),
    };
    let sequence = u32::try_from(u64_field(obj, "sequence")?)
        .or_else(|_| err("sequence must fit in 32 bits"))?;
    let request_id = match obj.get("request_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(parse_request_id(s)?),
        Some(_) => return err("request_id must be 16 hex digits"),
    };
    let auth_tag = match obj.get("auth_tag") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let bytes = hex::decode(s).or_else(|_| err("auth_tag must be hex"))?;
            Some(
                <[u8; AUTH_TAG_LEN]>::try_from(bytes.as_slice())
                    .or_else(|_| err(format!("auth_tag must be {AUTH_TAG_LEN} bytes")))?,
            )
        }
        Some(_) => return err("auth_tag must be a hex string"),
    };
    let inner = obj
        .get("packet")
        .ok_or_else(|| JsonError("envelope needs \"packet\"".into()))?;
    Ok(Frame {
        envelope: Some(Envelope {
            modem_id,
            sequence,
            request_id,
            auth_tag,
        }),
        packet: packet_from_json(inner)?,
    })
}

/// Read a v1 packet from its JSON form.
pub fn packet_from_json(v: &Value) -> Result<Packet, JsonError> {
    let obj = v
        .as_object()
        .ok_or_else(|| JsonError("packet JSON must be an object".into()))?;
    let flow = str_field(obj, "flow")?;
    let topic = str_field(obj, "topic")?;
    match (flow, topic) {
        ("iot", "data") => {
            let device_id = u32::try_from(u64_field(obj, "device_id")?)
                .or_else(|_| err("device_id must fit in 32 bits"))?;
            let timestamp = parse_timestamp(str_field(obj, "timestamp")?)?;
            let from_hex = match obj.get("data") {
                Some(Value::String(s)) => Some(hex::decode(s).or_else(|_| err("data must be hex"))?),
                None | Some(Value::Null) => None,
                Some(_) => return err("data must be a hex string"),
            };
            let from_value = match obj.get("value") {
                Some(Value::Number(n)) => {
                    let value = n.as_i64().and_then(|v| i32::try_from(v).ok());
                    Some(value.ok_or_else(|| JsonError(format!("value {n} is not a signed 32-bit integer")))?.to_be_bytes().to_vec())
                }
                None | Some(Value::Null) => None,
                Some(_) => return err("value must be an integer"),
            };
            let data = match (from_hex, from_value) {
                (Some(a), Some(b)) if a != b => return err("data and value disagree"),
                (Some(a), _) => a,
                (None, Some(b)) => b,
                (None, None) => return err("IoT data needs \"value\" (i32) or \"data\" (hex)"),
            };
            Ok(Packet::IotData(IotData {
                device_id,
                timestamp,
                data,
            }))
        }
        ("iot", "status") => Ok(Packet::IotStatus(
            str_field(obj, "status")?.parse::<IotStatus>().map_err(JsonError)?,
        )),
        ("carrier_switch", "perform") => Ok(Packet::CarrierSwitchPerform(carrier_field(obj)?)),
        ("carrier_switch", "ack") => Ok(Packet::CarrierSwitchAck {
            status: str_field(obj, "status")?.parse::<AckStatus>().map_err(JsonError)?,
            carrier: carrier_field(obj)?,
        }),
        ("session", "resync") => Ok(Packet::SequenceResync {
            above: u32::try_from(u64_field(obj, "above")?)
                .map_err(|_| JsonError("above must fit in 32 bits".into()))?,
        }),
        ("session", "perform_refused") => Ok(Packet::PerformRefused {
            carrier: carrier_field(obj)?,
            executed: u32::try_from(u64_field(obj, "executed")?)
                .map_err(|_| JsonError("executed must fit in 32 bits".into()))?,
        }),
        (flow, topic) => err(format!(
            "unknown packet flow {flow:?} topic {topic:?} (iot/data, iot/status, carrier_switch/perform, carrier_switch/ack, session/resync, session/perform_refused, or flow envelope)"
        )),
    }
}

fn str_field<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a str, JsonError> {
    match obj.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => err(format!("\"{name}\" must be a string")),
        None => err(format!("missing \"{name}\"")),
    }
}

fn u64_field(obj: &Map<String, Value>, name: &str) -> Result<u64, JsonError> {
    match obj.get(name) {
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| {
            JsonError(format!(
                "\"{name}\" must be a non-negative integer, got {n}"
            ))
        }),
        Some(_) => err(format!("\"{name}\" must be a non-negative integer")),
        None => err(format!("missing \"{name}\"")),
    }
}

fn carrier_field(obj: &Map<String, Value>) -> Result<Carrier, JsonError> {
    let by_id = match obj.get("carrier_id") {
        Some(Value::Number(n)) => {
            let code = n
                .as_u64()
                .and_then(|c| u8::try_from(c).ok())
                .ok_or_else(|| JsonError(format!("carrier_id {n} is not a carrier")))?;
            Some(Carrier::from_code(code).map_err(|e| JsonError(e.to_string()))?)
        }
        None | Some(Value::Null) => None,
        Some(_) => return err("carrier_id must be an integer"),
    };
    let by_name = match obj.get("carrier") {
        Some(Value::String(s)) => Some(s.parse::<Carrier>().map_err(JsonError)?),
        None | Some(Value::Null) => None,
        Some(_) => return err("carrier must be a string"),
    };
    match (by_id, by_name) {
        (Some(a), Some(b)) if a != b => {
            err(format!("carrier_id {} and carrier {b} disagree", a.code()))
        }
        (Some(c), _) | (None, Some(c)) => Ok(c),
        (None, None) => err("needs \"carrier_id\" or \"carrier\""),
    }
}

//! `switchyard packet decode HEX` / `switchyard packet encode JSON`.

use clap::Subcommand;
use switchyard_protocol::json::{frame_from_json, frame_to_json};
use switchyard_protocol::{verify, Frame};

use crate::Failure;

#[derive(Subcommand)]
pub enum PacketCommand {
    /// Print a packet's fields as one JSON object.
    Decode {
        /// The datagram in hex (spaces and a 0x prefix are allowed).
        hex: String,
        /// Verify the envelope's authentication tag with this key (hex).
        #[arg(long, env = "SWITCHYARD_PACKET_KEY")]
        key: Option<String>,
    },
    /// Print the hex bytes of a packet given as JSON (the form `decode` prints).
    Encode {
        /// The packet as JSON, e.g. '{"flow":"iot","topic":"status","status":"IDLE"}'.
        json: String,
        /// Sign the envelope with this key (hex); the packet must be an envelope.
        #[arg(long, env = "SWITCHYARD_PACKET_KEY")]
        key: Option<String>,
    },
}

pub fn run(command: PacketCommand) -> Result<(), Failure> {
    match command {
        PacketCommand::Decode { hex, key } => {
            let bytes = parse_hex(&hex)?;
            let frame = match key {
                Some(key) => verify(&bytes, &parse_key(&key)?)
                    .map_err(|e| Failure::BadInput(e.to_string()))?,
                None => Frame::decode(&bytes).map_err(|e| Failure::BadInput(e.to_string()))?,
            };
            crate::emit(frame_to_json(&frame));
        }
        PacketCommand::Encode { json, key } => {
            let value: serde_json::Value = serde_json::from_str(&json)
                .map_err(|e| Failure::BadInput(format!("not JSON: {e}")))?;
            let frame = frame_from_json(&value).map_err(|e| Failure::BadInput(e.to_string()))?;
            let bytes = match key {
                Some(key) => {
                    if frame.envelope.is_none() {
                        return Err(Failure::BadInput(
                            "only an envelope can be signed; give {\"flow\":\"envelope\",…}".into(),
                        ));
                    }
                    frame.encode_signed(&parse_key(&key)?)
                }
                None => frame.encode(),
            }
            .map_err(|e| Failure::BadInput(e.to_string()))?;
            crate::emit(hex::encode(bytes));
        }
    }
    Ok(())
}

fn parse_hex(text: &str) -> Result<Vec<u8>, Failure> {
    let cleaned: String = text.split_whitespace().collect();
    let cleaned = cleaned.strip_prefix("0x").unwrap_or(&cleaned);
    hex::decode(cleaned).map_err(|e| Failure::BadInput(format!("not hex: {e}")))
}

fn parse_key(text: &str) -> Result<Vec<u8>, Failure> {
    let key = parse_hex(text)?;
    if key.is_empty() {
        return Err(Failure::BadInput("the key is empty".into()));
    }
    Ok(key)
}

//! What an uplink datagram becomes: a record for a topic, or a reasoned rejection.

use switchyard_protocol::json::format_request_id;
use switchyard_protocol::{AckStatus, Carrier, Frame, IotStatus, Packet};
use switchyard_schemas::records::{self, CarrierSwitchAck, IotStatusReport, SensorReading};
use switchyard_schemas::Catalog;

pub const STATUS_TOPIC: &str = switchyard_schemas::topics::IOT_STATUS;
pub const ACK_TOPIC: &str = switchyard_schemas::topics::CARRIER_SWITCH_ACK;

/// A record to publish, keyed by modem id.
#[derive(Debug, Clone, PartialEq)]
pub enum Uplink {
    Reading {
        topic: String,
        reading: SensorReading,
    },
    Status(IotStatusReport),
    Ack(CarrierSwitchAck),
    /// The SIM refused a Perform as not fresh: a NACK with the reason, and the downlink
    /// numbers to the modem must go above `executed`.
    PerformRefused {
        ack: CarrierSwitchAck,
        executed: u32,
    },
}

pub fn carrier(c: Carrier) -> records::Carrier {
    match c {
        Carrier::AtAndT => records::Carrier::AtAndT,
        Carrier::TMobile => records::Carrier::TMobile,
        Carrier::Verizon => records::Carrier::Verizon,
        Carrier::Disconnect => records::Carrier::Disconnect,
    }
}

pub fn wire_carrier(c: records::Carrier) -> Carrier {
    match c {
        records::Carrier::AtAndT => Carrier::AtAndT,
        records::Carrier::TMobile => Carrier::TMobile,
        records::Carrier::Verizon => Carrier::Verizon,
        records::Carrier::Disconnect => Carrier::Disconnect,
    }
}

/// Map a decoded frame from `modem_id` to its record. `Err` is a reject reason code.
pub fn to_record(
    frame: &Frame,
    modem_id: &str,
    received_at_us: i64,
    catalog: &Catalog,
) -> Result<Uplink, &'static str> {
    let sequence = frame.envelope.as_ref().map(|e| i64::from(e.sequence));
    Ok(match &frame.packet {
        Packet::IotData(d) => {
            let sensor = catalog.sensor_for_device(d.device_id).to_string();
            Uplink::Reading {
                topic: sensor.clone(),
                reading: SensorReading {
                    modem_id: modem_id.to_string(),
                    device_id: i64::from(d.device_id),
                    sensor,
                    timestamp: d.timestamp.timestamp_micros(),
                    value: d.value(),
                    data: d.data.clone(),
                    received_at: received_at_us,
                    sequence,
                },
            }
        }
        Packet::IotStatus(s) => Uplink::Status(IotStatusReport {
            modem_id: modem_id.to_string(),
            status: match s {
                IotStatus::Nominal => records::IotStatus::Nominal,
                IotStatus::Idle => records::IotStatus::Idle,
                IotStatus::OffNominal => records::IotStatus::OffNominal,
            },
            received_at: received_at_us,
            sequence,
        }),
        Packet::CarrierSwitchAck { status, carrier: c } => Uplink::Ack(CarrierSwitchAck {
            modem_id: modem_id.to_string(),
            request_id: request_id(frame),
            status: match status {
                AckStatus::Ack => records::AckStatus::Ack,
                AckStatus::Nack => records::AckStatus::Nack,
            },
            carrier: carrier(*c),
            received_at: received_at_us,
            sequence,
            reason: None,
        }),
        Packet::PerformRefused {
            carrier: c,
            executed,
        } => {
            if frame.envelope.is_none() {
                // Only an enveloped modem has downlink numbers to refuse.
                return Err("perform_refused_without_envelope");
            }
            Uplink::PerformRefused {
                ack: CarrierSwitchAck {
                    modem_id: modem_id.to_string(),
                    request_id: request_id(frame),
                    status: records::AckStatus::Nack,
                    carrier: carrier(*c),
                    received_at: received_at_us,
                    sequence,
                    reason: Some(format!(
                        "stale_perform: the SIM refused the Perform, its number not above {executed}, the last one it executed (a replayed Perform, or the cloud's downlink numbers went back); the next Perform is numbered above it"
                    )),
                },
                executed: *executed,
            }
        }
        Packet::CarrierSwitchPerform(_) | Packet::SequenceResync { .. } => {
            return Err("downlink_packet_on_uplink")
        }
    })
}

fn request_id(frame: &Frame) -> Option<String> {
    frame
        .envelope
        .as_ref()
        .and_then(|e| e.request_id)
        .map(format_request_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_protocol::Envelope;

    const SEED_IMU: &str = "000000000157e7503000000000040000002a";

    #[test]
    fn a_v1_reading_goes_to_its_sensor_topic_with_the_sensor_time() {
        let catalog = Catalog::embedded().expect("catalog");
        let frame = Frame::decode(&hex::decode(SEED_IMU).expect("hex")).expect("seed vector");
        let Ok(Uplink::Reading { topic, reading }) = to_record(&frame, "0", 7, &catalog) else {
            panic!("a reading");
        };
        assert_eq!(topic, "imu");
        assert_eq!(reading.value, Some(42));
        assert_eq!(reading.timestamp, 1_685_620_800_000_000);
        assert_eq!((reading.received_at, reading.sequence), (7, None));
    }

    #[test]
    fn an_enveloped_ack_carries_its_request_id_and_sequence() {
        let catalog = Catalog::embedded().expect("catalog");
        let frame = Frame {
            envelope: Some(Envelope {
                modem_id: 5,
                sequence: 9,
                request_id: Some(0xff),
                auth_tag: None,
            }),
            packet: Packet::CarrierSwitchAck {
                status: AckStatus::Nack,
                carrier: Carrier::TMobile,
            },
        };
        let Ok(Uplink::Ack(ack)) = to_record(&frame, "5", 1, &catalog) else {
            panic!("an ack");
        };
        assert_eq!(ack.request_id.as_deref(), Some("00000000000000ff"));
        assert_eq!(
            (ack.status, ack.carrier, ack.sequence),
            (records::AckStatus::Nack, records::Carrier::TMobile, Some(9))
        );
    }

    #[test]
    fn a_perform_from_a_device_is_refused() {
        let catalog = Catalog::embedded().expect("catalog");
        let frame = Frame::from(Packet::CarrierSwitchPerform(Carrier::Verizon));
        assert_eq!(
            to_record(&frame, "0", 1, &catalog),
            Err("downlink_packet_on_uplink")
        );
    }
}

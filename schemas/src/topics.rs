//! The names of the catalog topics that code refers to by name, in one place: the gateway,
//! carrier-state and the switch API use these rather than string literals of their own, and
//! a test checks each one against `topics.toml`.

pub const IOT_STATUS: &str = "iot-status";
pub const CARRIER_SWITCH_ACK: &str = "carrier-switch-ack";
pub const DOWNSTREAM_REQUEST: &str = "downstream-request";
pub const DOWNLINK_DELIVERY: &str = "downlink-delivery";
pub const DEVICE_SESSIONS: &str = "device-sessions";
pub const GATEWAY_REJECTS: &str = "gateway-rejects";
pub const GATEWAY_DLQ: &str = "gateway-dlq";
pub const CARRIER_STATE: &str = "carrier-state";
pub const ANOMALIES: &str = "anomalies";

/// Every name above.
pub const ALL: [&str; 9] = [
    IOT_STATUS,
    CARRIER_SWITCH_ACK,
    DOWNSTREAM_REQUEST,
    DOWNLINK_DELIVERY,
    DEVICE_SESSIONS,
    GATEWAY_REJECTS,
    GATEWAY_DLQ,
    CARRIER_STATE,
    ANOMALIES,
];

#[cfg(test)]
mod tests {
    use crate::Catalog;

    #[test]
    fn every_named_topic_is_in_the_catalog() {
        let catalog = Catalog::embedded().expect("catalog");
        for name in super::ALL {
            assert!(
                catalog.topic(name).is_some(),
                "{name} is not in topics.toml"
            );
        }
    }
}

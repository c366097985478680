//! The client factory: every Kafka client a service builds starts from one of these
//! settings, so the project's choices (acknowledgements, idempotence, fetch wait, manual
//! commits) live in one place. Callers add what is theirs (a group id, a timeout) on top.

use rdkafka::config::ClientConfig;

use crate::FETCH_WAIT_MS;

/// A consumer: offsets committed by the caller, never automatically; no end-of-partition
/// events; fetches answered within [`FETCH_WAIT_MS`].
pub fn consumer_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", FETCH_WAIT_MS.to_string());
    config
}

/// A producer whose records are on every in-sync replica when acknowledged, written once
/// and in order per partition through retries (idempotent).
pub fn producer_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true");
    config
}

/// An admin client or a metadata probe.
pub fn admin_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_say_what_the_project_relies_on() {
        let c = consumer_config("b:9092");
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("fetch.wait.max.ms"), Some("20"));
        let p = producer_config("b:9092");
        assert_eq!(p.get("acks"), Some("all"));
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(
            admin_config("b:9092").get("bootstrap.servers"),
            Some("b:9092")
        );
    }
}

//! The client factory: every Kafka client a service builds starts from one of these
//! settings, so the project's choices (acknowledgements, idempotence, manual commits) and
//! the cluster's security settings ([`crate::security`]) live in one place. Callers add what
//! is theirs (a group id, a timeout) on top.

use rdkafka::config::ClientConfig;

/// Names librdkafka's debug contexts (its `debug` setting, e.g. `eos,broker`) for every
/// client of the process: diagnostics, logged under the `librdkafka` target at debug level
/// (`RUST_LOG=librdkafka=debug`).
pub const DEBUG_VAR: &str = "SWITCHYARD_KAFKA_DEBUG";

/// The address of the cluster and how to prove ourselves to it.
fn base(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    crate::security::apply(&mut config);
    if let Some(contexts) = std::env::var(DEBUG_VAR).ok().filter(|c| !c.is_empty()) {
        config.set("debug", contexts);
    }
    config
}

/// A consumer: offsets committed by the caller, never automatically; no end-of-partition
/// events; librdkafka's default fetch wait ([`crate::FETCH_WAIT_MS`]); a partition whose
/// prefetch queue was full is fetched again [`FETCH_QUEUE_BACKOFF_MS`] later.
pub fn consumer_config(bootstrap: &str) -> ClientConfig {
    let mut config = base(bootstrap);
    config
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS.to_string());
    config
}

/// librdkafka's `fetch.queue.backoff.ms`: once a partition's prefetch queue is over its
/// threshold (`queued.min.messages`, `queued.max.messages.kbytes`), its next fetch waits this
/// long. At librdkafka's 1,000 ms a consumer that takes records faster than that wait
/// refills its queue ran dry and sat idle for up to a second at a time, and every pause at
/// the runner's bounds (which drops what was prefetched) ended in such a wait: in `make
/// bench`'s processor rounds grafana-projector stood still for 0.5-1 s every few hundred
/// thousand records and ran at 71-114k records/s; at 10 ms it never stood still, 159-257k.
/// Checking a full queue every 10 ms costs nothing measurable.
pub const FETCH_QUEUE_BACKOFF_MS: u64 = 10;

/// A producer whose records are on every in-sync replica when acknowledged, written once
/// and in order per partition through retries (idempotent).
pub fn producer_config(bootstrap: &str) -> ClientConfig {
    let mut config = base(bootstrap);
    config.set("acks", "all").set("enable.idempotence", "true");
    config
}

/// A producer for records that each stand alone, so that neither their order nor a rare
/// duplicate matters (a sensor reading carries its own time): acknowledged by every in-sync
/// replica, but not idempotent. A retry after an error may land a batch behind a later one,
/// or twice. One request in flight per connection, so a slow broker gets fewer, fuller
/// requests (each costs it far more than each record in it).
///
/// Why not always [`producer_config`]: librdkafka 2.12.1's idempotent producer counts
/// in-flight *messages* against its cap of five requests per partition, so a partition has
/// one request in flight, and while it waits at the broker the partition's next batch is
/// ready but held, and the producer's broker thread polls without sleeping until the answer
/// comes (`rd_kafka_toppar_producer_serve`; librdkafka pull request #4989). On a slow broker
/// that spin is most of a producing process's CPU. Without idempotence a held batch leaves
/// the thread asleep.
pub fn unordered_producer_config(bootstrap: &str) -> ClientConfig {
    let mut config = base(bootstrap);
    config
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("max.in.flight.requests.per.connection", "1");
    config
}

/// An admin client or a metadata probe.
pub fn admin_config(bootstrap: &str) -> ClientConfig {
    base(bootstrap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_say_what_the_project_relies_on() {
        let c = consumer_config("b:9092");
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("enable.partition.eof"), Some("false"));
        let p = producer_config("b:9092");
        assert_eq!(p.get("acks"), Some("all"));
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        let u = unordered_producer_config("b:9092");
        assert_eq!(u.get("acks"), Some("all"));
        assert_eq!(u.get("enable.idempotence"), Some("false"));
        assert_eq!(
            admin_config("b:9092").get("bootstrap.servers"),
            Some("b:9092")
        );
    }
}

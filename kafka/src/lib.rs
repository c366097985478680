//! Kafka client plumbing shared by Switchyard's services.

pub mod clients;
pub mod dead_letter;
pub mod security;

use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use tracing::error;

/// Where the broker and the schema registry are: the two flags every Switchyard binary that
/// talks to Kafka takes (`#[command(flatten)]`), each with its `SWITCHYARD_*` variable. A
/// cluster's TLS and SASL settings come from the environment ([`security`]).
#[derive(Debug, Clone, clap::Args)]
pub struct Endpoints {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "SWITCHYARD_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    pub bootstrap_servers: String,
    /// Schema registry URL.
    #[arg(
        long,
        env = "SWITCHYARD_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081",
        global = true
    )]
    pub registry_url: String,
}

impl Endpoints {
    pub fn new(bootstrap_servers: &str, registry_url: &str) -> Self {
        Endpoints {
            bootstrap_servers: bootstrap_servers.to_string(),
            registry_url: registry_url.to_string(),
        }
    }
}

/// A client context that reports librdkafka's errors through `tracing`, except the
/// end-of-partition notices a consumer asks for with `enable.partition.eof` (which
/// librdkafka also raises as "global errors"): those are events, not failures.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingContext;

impl ClientContext for TracingContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if is_partition_eof(&error) {
            return;
        }
        error!(target: "librdkafka", %error, reason, "kafka client error");
    }
}

impl ConsumerContext for TracingContext {}

/// Whether an error only says a partition was read to its end.
pub fn is_partition_eof(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
    )
}

/// librdkafka's `fetch.wait.max.ms`, which the project keeps: Apache Kafka answers a fetch
/// as soon as it has a record for it (`fetch.min.bytes` 1), so the wait bounds only how
/// long an idle consumer's fetch is held, not how late a record arrives.
pub const FETCH_WAIT_MS: u64 = 500;

/// A partition's low and high watermarks, retried as [`retry_passing`] says.
pub fn watermarks<C: ConsumerContext>(
    consumer: &impl rdkafka::consumer::Consumer<C>,
    topic: &str,
    partition: i32,
    timeout: std::time::Duration,
) -> rdkafka::error::KafkaResult<(i64, i64)> {
    retry_passing(timeout, |left| {
        consumer.fetch_watermarks(topic, partition, left)
    })
}

/// The sum of the high watermarks of every partition of `topic`: how many records it has
/// taken (each partition's end offset, so records deleted since count too).
pub fn end_offset_total<C: ConsumerContext>(
    consumer: &impl rdkafka::consumer::Consumer<C>,
    topic: &str,
    timeout: std::time::Duration,
) -> rdkafka::error::KafkaResult<i64> {
    let mut total = 0;
    for p in partitions(consumer, topic, timeout)? {
        total += watermarks(consumer, topic, p, timeout)?.1;
    }
    Ok(total)
}

/// Call `request` (given the time left) until it succeeds, fails for good, or `timeout`
/// passes. Errors that pass by themselves are retried: no leader yet (right after a topic
/// is created, or while a failed leader is replaced), a request that went to a broker whose
/// connection just died, a topic (or a partition) not yet in a broker's or the client's
/// metadata, a coordinator moving, a request timing out; the last is returned at the end.
pub fn retry_passing<T>(
    timeout: std::time::Duration,
    mut request: impl FnMut(std::time::Duration) -> rdkafka::error::KafkaResult<T>,
) -> rdkafka::error::KafkaResult<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match request(left) {
            Err(e) if passes(&e) && std::time::Instant::now() + RETRY_PAUSE < deadline => {
                std::thread::sleep(RETRY_PAUSE);
            }
            result => return result,
        }
    }
}

const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Whether a metadata or offsets error is one that passes by itself.
fn passes(error: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        error.rdkafka_error_code(),
        Some(
            NotLeaderForPartition
                | LeaderNotAvailable
                | DestroyBroker
                | BrokerTransportFailure
                | UnknownTopicOrPartition
                | UnknownTopic
                | UnknownPartition
                | NotCoordinator
                | OperationTimedOut
                | RequestTimedOut
        )
    )
}

/// The replication factor to create a topic with: -1, the cluster's own
/// `default.replication.factor` (1 on one node, 3 on `make test`'s cluster), so that a store's
/// changelog or the schemas topic is as durable on a real cluster as its other topics.
pub const BROKER_DEFAULT_REPLICATION: i32 = -1;

/// The partition ids of `topic`, from the broker's metadata; empty when it has no such topic.
pub fn partitions<C: ConsumerContext>(
    consumer: &impl rdkafka::consumer::Consumer<C>,
    topic: &str,
    timeout: std::time::Duration,
) -> rdkafka::error::KafkaResult<Vec<i32>> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_that_pass_are_retried_until_the_answer_and_others_are_not() {
        let mut calls = 0;
        let answer = retry_passing(std::time::Duration::from_secs(5), |_| {
            calls += 1;
            if calls < 3 {
                Err(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::NotLeaderForPartition,
                ))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(answer.ok(), Some(3));
        let mut calls = 0;
        let refused: rdkafka::error::KafkaResult<()> =
            retry_passing(std::time::Duration::from_secs(5), |_| {
                calls += 1;
                Err(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::TopicAuthorizationFailed,
                ))
            });
        assert!(refused.is_err());
        assert_eq!(calls, 1, "a lasting error is not retried");
    }

    /// CI at ca5af6e: reading-counter died at start with "Meta data fetch error:
    /// UnknownPartition (Local: Unknown partition)" reading the watermarks of a changelog
    /// it had just created: librdkafka's metadata knew the topic, not yet its partitions.
    #[test]
    fn a_topic_or_partition_not_yet_in_the_clients_metadata_passes() {
        for code in [
            RDKafkaErrorCode::UnknownPartition,
            RDKafkaErrorCode::UnknownTopic,
        ] {
            let mut calls = 0;
            let answer = retry_passing(std::time::Duration::from_secs(5), |_| {
                calls += 1;
                if calls < 2 {
                    Err(KafkaError::MetadataFetch(code))
                } else {
                    Ok(())
                }
            });
            assert!(answer.is_ok(), "{code:?} is retried");
        }
    }

    #[test]
    fn end_of_partition_is_not_an_error() {
        assert!(is_partition_eof(&KafkaError::PartitionEOF(2)));
        assert!(is_partition_eof(&KafkaError::Global(
            RDKafkaErrorCode::PartitionEOF
        )));
        assert!(!is_partition_eof(&KafkaError::Global(
            RDKafkaErrorCode::BrokerTransportFailure
        )));
    }
}

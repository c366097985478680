//! Kafka client plumbing shared by Switchyard's services.

pub mod clients;
pub mod dead_letter;

use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use tracing::error;

/// Where the broker and the schema registry are: the two flags every Switchyard binary that
/// talks to Kafka takes (`#[command(flatten)]`), each with its `SWITCHYARD_*` variable.
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

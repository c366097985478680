//! The runner's settings and errors.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};
use rdkafka::error::KafkaError;
use switchyard_kafka::Endpoints;

use crate::engine::{Stopped, TopologyError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Guarantee {
    /// Offsets are committed once every record derived from them is acknowledged; after a
    /// crash, at most the uncommitted records (`--max-uncommitted`) are processed again.
    AtLeastOnce,
    /// Outputs and offsets in Kafka transactions (tested on Apache Kafka: a crash inside an
    /// open transaction, fencing of a zombie instance).
    ExactlyOnce,
}

/// `--max-uncommitted`'s default. Each pause at the bound drops what the consumer had
/// prefetched, fetched again on resuming: at 10,000 a pass-through taking 300k records/s
/// reached it every 30 ms and ran at 71% of the raw loop's rate (`make bench`, pipeline);
/// at 100,000, 104%. A crash makes at most this many records processed again; while the
/// flow is slower than the commit interval lets through, the bound is never reached.
pub const DEFAULT_MAX_UNCOMMITTED: u64 = 100_000;

/// Runner settings; processors `#[command(flatten)]` this into their CLI.
#[derive(Debug, Clone, Args)]
pub struct RunnerConfig {
    #[command(flatten)]
    pub endpoints: Endpoints,
    /// Serve /metrics and /health here.
    #[arg(long, env = "SWITCHYARD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Commit acknowledged offsets this often, in milliseconds.
    #[arg(long, env = "SWITCHYARD_COMMIT_INTERVAL_MS", default_value_t = 200)]
    pub commit_interval_ms: u64,
    /// Most input records processed but not yet committed; at the bound, consumption pauses
    /// until commits catch up. It bounds both memory and what a crash makes processed again.
    #[arg(long, env = "SWITCHYARD_MAX_UNCOMMITTED", default_value_t = DEFAULT_MAX_UNCOMMITTED)]
    pub max_uncommitted: u64,
    /// Most bytes of output records waiting for the broker; at the bound, consumption pauses.
    #[arg(long, env = "SWITCHYARD_MAX_IN_FLIGHT_BYTES", default_value_t = 32 << 20)]
    pub max_in_flight_bytes: usize,
    /// /health says not ready when a record has waited this long for the broker, in ms.
    #[arg(long, env = "SWITCHYARD_STALL_TIMEOUT_MS", default_value_t = 30_000)]
    pub stall_timeout_ms: u64,
    /// On SIGTERM (and on a revocation), wait at most this long for records in flight, then
    /// commit what was acknowledged and leave, in ms.
    #[arg(long, env = "SWITCHYARD_SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000)]
    pub shutdown_timeout_ms: u64,
    /// at-least-once (any broker) or exactly-once (brokers with transactions, as Apache
    /// Kafka has).
    #[arg(
        long,
        env = "SWITCHYARD_PROCESSING_GUARANTEE",
        value_enum,
        default_value = "at-least-once"
    )]
    pub processing_guarantee: Guarantee,
    /// Distinguishes instances (transactional id suffix, `switchyard.writer` header on every
    /// record produced); defaults to the host name and pid.
    #[arg(long, env = "SWITCHYARD_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Longest time a fetch waits at the broker for data (librdkafka's fetch.wait.max.ms).
    /// Kafka answers as soon as a record is there, so this sets only how often an idle
    /// consumer fetches.
    #[arg(long, env = "SWITCHYARD_FETCH_WAIT_MS", default_value_t = switchyard_kafka::FETCH_WAIT_MS)]
    pub fetch_wait_ms: u64,
    /// How long the producer waits to fill a batch (librdkafka's linger.ms): every output
    /// waits up to this long before it is sent. Default: the processor's own (0 for
    /// carrier-state and grafana-projector, on paths someone waits on), else 5, which lets
    /// a busy processor send fewer, larger requests.
    #[arg(long, env = "SWITCHYARD_LINGER_MS")]
    pub linger_ms: Option<u64>,
    /// Longest time between two polls of the group's consumer (librdkafka's
    /// max.poll.interval.ms, at least the group session's 10 s): a processor call, registry
    /// wait or restore that takes longer loses the instance its partitions, and their
    /// tasks are dropped without a commit.
    #[arg(
        long,
        env = "SWITCHYARD_MAX_POLL_INTERVAL_MS",
        default_value_t = 300_000
    )]
    pub max_poll_interval_ms: u64,
}

impl RunnerConfig {
    pub fn new(bootstrap_servers: &str, registry_url: &str) -> Self {
        RunnerConfig {
            endpoints: Endpoints::new(bootstrap_servers, registry_url),
            metrics_listen: None,
            commit_interval_ms: 200,
            max_uncommitted: DEFAULT_MAX_UNCOMMITTED,
            max_in_flight_bytes: 32 << 20,
            stall_timeout_ms: 30_000,
            shutdown_timeout_ms: 10_000,
            processing_guarantee: Guarantee::AtLeastOnce,
            instance_id: None,
            fetch_wait_ms: switchyard_kafka::FETCH_WAIT_MS,
            linger_ms: None,
            max_poll_interval_ms: 300_000,
        }
    }

    /// This instance's name: `instance_id`, or the host name and pid.
    pub(crate) fn instance(&self) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
            format!("{host}-{}", std::process::id())
        })
    }

    pub(crate) fn commit_interval(&self) -> Duration {
        Duration::from_millis(self.commit_interval_ms.max(1))
    }

    pub(crate) fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    pub(crate) fn stall_timeout(&self) -> Duration {
        Duration::from_millis(self.stall_timeout_ms.max(1))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("catalog: {0}")]
    Catalog(String),
    #[error("topic {0} does not exist on the broker: run `switchyard topics apply`")]
    MissingTopic(String),
    #[error("inputs {topics} are read together (one task per partition) but have different partition counts ({counts}): give them the same count in schemas/topics.toml")]
    NotCoPartitioned { topics: String, counts: String },
    #[error("schema registry: {0}")]
    Registry(String),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("metrics endpoint: {0}")]
    Metrics(String),
    #[error(transparent)]
    Stopped(#[from] Stopped),
    /// Shutdown was asked for while the runner waited (for the registry, or a restore):
    /// the loop ends as it does on shutdown, not as a failure.
    #[error("shutdown requested")]
    ShutdownRequested,
    #[error("committer: {0}")]
    Committer(String),
    #[error("transaction failed: {0}")]
    Transaction(KafkaError),
    #[error("{topic} refused a record for good ({error}); the processor cannot go on without it")]
    Refused { topic: String, error: String },
}

//! Before the first record: topics checked, changelogs created, the consumer built.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use switchyard_kafka::clients;
use tracing::{error, info};

use super::config::{Guarantee, RunnerConfig, RunnerError};
use super::group::GroupContext;
use super::shared::Shared;
use crate::engine::Engine;
use crate::{ErrorPolicy, Processor};

/// Session timeout asked of the group coordinator: a crashed instance's partitions move to
/// the others after 10 s, not librdkafka's 45.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Every input, output and dead-letter topic must exist, and inputs read together must have
/// one partition count (one task per partition number). Returns that count.
pub(crate) async fn check_topics<P: Processor>(
    config: &RunnerConfig,
    engine: &Engine<P>,
) -> Result<i32, RunnerError> {
    let probe: BaseConsumer =
        clients::admin_config(&config.endpoints.bootstrap_servers).create()?;
    let metadata =
        tokio::task::spawn_blocking(move || probe.fetch_metadata(None, Duration::from_secs(30)))
            .await
            .map_err(|e| RunnerError::Catalog(e.to_string()))??;
    let topology = engine.topology();
    let dlq = topology.dead_letter_topic();
    let uses_dlq = topology.on_undecodable == ErrorPolicy::DeadLetter
        || topology.on_error == ErrorPolicy::DeadLetter;
    let mut wanted: Vec<(String, bool)> = topology
        .input_topics()
        .into_iter()
        .map(|t| (t, true))
        .chain(topology.output_topics().into_iter().map(|t| (t, false)))
        .collect();
    if uses_dlq {
        wanted.push((dlq, false));
    }
    let mut input_counts: Vec<(String, usize)> = Vec::new();
    for (topic, is_input) in wanted {
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .ok_or_else(|| RunnerError::MissingTopic(topic.clone()))?;
        if is_input {
            input_counts.push((topic, found.partitions().len()));
        }
    }
    let first = input_counts.first().map_or(1, |(_, n)| *n);
    if input_counts.iter().any(|(_, n)| *n != first) {
        let (topics, counts): (Vec<String>, Vec<String>) = input_counts
            .into_iter()
            .map(|(t, n)| (t, n.to_string()))
            .unzip();
        return Err(RunnerError::NotCoPartitioned {
            topics: topics.join(", "),
            counts: counts.join(", "),
        });
    }
    Ok(i32::try_from(first).unwrap_or(i32::MAX).max(1))
}

/// Create the stores' compacted changelog topics (as many partitions as the inputs).
pub(crate) async fn create_changelogs<P: Processor>(
    config: &RunnerConfig,
    engine: &Engine<P>,
    partitions: i32,
) -> Result<(), RunnerError> {
    let stores = engine.topology().store_names().to_vec();
    if stores.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> =
        clients::admin_config(&config.endpoints.bootstrap_servers).create()?;
    let names: Vec<String> = stores
        .iter()
        .map(|s| engine.topology().changelog_topic(s))
        .collect();
    let new_topics: Vec<NewTopic> = names
        .iter()
        .map(|n| {
            NewTopic::new(
                n,
                partitions,
                TopicReplication::Fixed(switchyard_kafka::BROKER_DEFAULT_REPLICATION),
            )
            .set("cleanup.policy", "compact")
        })
        .collect();
    let results = admin
        .create_topics(
            &new_topics,
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for result in results {
        match result {
            Ok(topic) => info!(%topic, partitions, "created changelog topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                error!(%topic, "cannot create changelog");
                return Err(RunnerError::Kafka(KafkaError::AdminOp(code)));
            }
        }
    }
    Ok(())
}

/// The group's consumer: the processor's name as group id, manual commits.
pub(crate) fn group_consumer(
    config: &RunnerConfig,
    name: &str,
    shared: Arc<Shared>,
) -> Result<StreamConsumer<GroupContext>, RunnerError> {
    Ok(
        clients::consumer_config(&config.endpoints.bootstrap_servers)
            .set("group.id", name)
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", "5000")
            .set("fetch.wait.max.ms", config.fetch_wait_ms.to_string())
            .set(
                "session.timeout.ms",
                SESSION_TIMEOUT.as_millis().to_string(),
            )
            .set("heartbeat.interval.ms", "3000")
            .set(
                "max.poll.interval.ms",
                config.max_poll_interval_ms.to_string(),
            )
            .set(
                "isolation.level",
                if config.processing_guarantee == Guarantee::ExactlyOnce {
                    "read_committed"
                } else {
                    "read_uncommitted"
                },
            )
            .create_with_context(GroupContext { shared })?,
    )
}

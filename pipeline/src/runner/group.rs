//! The consumer's side of the group: rebalances and lag.
//!
//! A revocation is handled inside librdkafka's rebalance callback, before the partitions
//! go: wait (bounded) until every record the revoked tasks produced is acknowledged, commit
//! their offsets synchronously, then queue the event so the runner drops the tasks before it
//! does anything else. The callback runs inside the runner's own poll, and every branch of
//! the loop applies the event before it acts, so no record and no punctuation of a revoked
//! task is produced after it (`tests/ownership.rs`), on an instance paused at its in-flight
//! bounds too: it pauses its partitions at the consumer and goes on polling. When the wait
//! runs out (at least once), every record still in flight is purged so that none lands
//! after the next owner's, and the tasks assigned again go back to their last commit.
//! Partitions the group gave away while the instance was not polling (lost, not revoked)
//! are neither waited for nor committed: their records are purged (at least once) or their
//! transaction aborted (exactly once), and every task goes before anything else runs.

use std::collections::BTreeSet;
use std::sync::Arc;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::producer::{Producer, PurgeConfig};
use rdkafka::statistics::Statistics;
use rdkafka::TopicPartitionList;
use switchyard_kafka::is_partition_eof;
use tracing::{error, info, warn};

use super::commit;
use super::config::Guarantee;
use super::shared::{GroupEvent, Shared};

pub(crate) struct GroupContext {
    pub shared: Arc<Shared>,
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !is_partition_eof(&error) {
            error!(target: "librdkafka", %error, reason, "kafka consumer error");
        }
    }

    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.shared
                        .metrics
                        .consumer_lag
                        .with_label_values(&[topic.as_str(), &partition.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let parts = partitions_of(tpl);
        let tasks: BTreeSet<i32> = parts.iter().map(|(_, p)| *p).collect();
        let shared = &self.shared;
        if consumer.assignment_lost() {
            // Others own them already: nothing may be committed for them, and nothing
            // still queued for them may land after the new owners' records.
            warn!(
                revoked = ?parts,
                why = "the group gave them away while this instance was not polling (max.poll.interval.ms) or out of touch",
                "partitions lost"
            );
            if shared.guarantee == Guarantee::AtLeastOnce {
                purge_in_flight(shared);
            }
            shared.metrics.revocations.inc();
            shared.push_event(GroupEvent::Lost);
            shared.push_event(GroupEvent::Revoked(parts));
            return;
        }
        let timeout = shared.revoke_timeout();
        let all_in = shared.wait_until(timeout, |ledger| {
            ledger.awaiting_broker(|p| tasks.contains(&p)) == 0
        });
        let purged = !all_in && shared.guarantee == Guarantee::AtLeastOnce;
        if !all_in {
            let open = shared.ledger().awaiting_broker(|p| tasks.contains(&p));
            warn!(
                open,
                ?timeout,
                "revoked tasks still have records in flight; their inputs will be processed again by the next owner"
            );
        }
        if purged {
            // Sent later, they would land after the next owner's records (a late table or
            // changelog write would win compaction). librdkafka purges by producer, not by
            // partition: the kept tasks go back to their last commit too. Under exactly
            // once the transaction's commit below settles them, or its abort fences them.
            purge_in_flight(shared);
        }
        if let Err(e) = commit::commit_now(consumer, shared, |p| tasks.contains(&p)) {
            error!(error = %e, "commit on revocation failed");
            shared.raise(e);
        }
        info!(revoked = ?parts, "partitions revoked");
        if !parts.is_empty() {
            shared.metrics.revocations.inc();
        }
        shared.push_event(GroupEvent::Revoked(parts));
        if purged {
            shared.push_event(GroupEvent::InFlightPurged);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts = partitions_of(tpl);
                info!(assigned = ?parts, "partitions assigned");
                self.shared.push_event(GroupEvent::Assigned(parts));
            }
            Rebalance::Error(e) => warn!(error = %e, "rebalance failed"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// Purge every record the producer has queued or in flight (their deliveries report the
/// purge; their entries are forgotten with the tasks).
pub(super) fn purge_in_flight(shared: &Shared) {
    if let Some(producer) = shared.producer.get().and_then(|w| w.upgrade()) {
        producer.purge(PurgeConfig::default().queue().inflight());
    }
}

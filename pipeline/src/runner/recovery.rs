//! Exactly once's recovery, and refusals under both guarantees: a record the broker refused
//! for good dead-letters its input (or stops the processor); under exactly once the
//! transaction it doomed is aborted and the tasks go back to the last commit, as Kafka
//! Streams does with a corrupted task.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;

use super::config::{Guarantee, RunnerError};
use super::delivery;
use super::group::GroupContext;
use super::ledger::{Blame, SourceRecord};
use super::service::Runner;
use crate::engine::{Effects, FailureKind, Incoming};
use crate::{ErrorPolicy, Processor};

/// Exactly once: rewinds without a successful commit in between before the runner stops.
const MAX_REWINDS_IN_A_ROW: u32 = 5;

impl<P: Processor> Runner<P> {
    /// Dead-letter the inputs of records the broker refused for good (or stop, when the
    /// policy says so or when the refused record was a changelog or dead-letter record).
    /// Exactly once, a refusal dooms the transaction (librdkafka makes it abortable), so
    /// nothing is sent here: the input is marked poisoned (refused alone: dead-lettered
    /// when met again) or suspect (refused in a batch: processed again in a transaction of
    /// its own, to see whether it or a batch-mate was refused), and `true` is returned for
    /// the caller to [`Runner::rewind`].
    pub(super) async fn settle_refusals(&mut self) -> Result<bool, RunnerError> {
        let mut rewind = false;
        if !self.shared.take_refusal_note() {
            return Ok(false);
        }
        let refusals = self.shared.ledger().take_refused();
        for refused in refusals {
            // Exactly once only: its transaction was doomed by another refusal, met here too.
            if refused.blame == Blame::Transaction {
                rewind = true;
                continue;
            }
            let topology = self.engine.topology();
            let internal = refused.topic == topology.dead_letter_topic()
                || topology
                    .store_names()
                    .iter()
                    .any(|s| topology.changelog_topic(s) == refused.topic);
            warn!(topic = %refused.topic, error = %refused.error, "a record was refused for good");
            if internal || topology.on_error == ErrorPolicy::Stop {
                return Err(RunnerError::Refused {
                    topic: refused.topic,
                    error: refused.error,
                });
            }
            let reason = format!("{} refused the output: {}", refused.topic, refused.error);
            // The input the refused record came from; a punctuation's record stands for itself.
            let source = refused.source;
            if self.config.processing_guarantee == Guarantee::ExactlyOnce {
                let Some(input) = source.filter(|s| s.offset >= 0) else {
                    // Going back would fire the punctuation again: not handled yet.
                    return Err(RunnerError::Refused {
                        topic: refused.topic,
                        error: format!(
                            "{} (a punctuation's record, under exactly-once)",
                            refused.error
                        ),
                    });
                };
                let key = (input.topic.to_string(), input.partition, input.offset);
                // Refused alone (by the producer, or by the broker in a transaction of its
                // own): its own fault. Refused in a batch: it, or a record sent with it.
                if refused.blame == Blame::Record || self.isolated.as_ref() == Some(&key) {
                    self.poisoned.insert(key, reason);
                } else {
                    self.suspects.insert(key, reason);
                }
                rewind = true;
                continue;
            }
            let source = source.unwrap_or_else(|| {
                SourceRecord::new(
                    refused.topic.as_str().into(),
                    refused.token.partition,
                    -1,
                    None,
                    refused.key.as_deref(),
                    refused.payload.as_deref(),
                    Vec::new(),
                )
            });
            let incoming = Incoming {
                topic: &source.topic,
                partition: source.partition,
                offset: source.offset,
                timestamp_ms: source.timestamp_ms,
                key: source.key(),
                headers: source.headers.clone(),
                payload: source.payload(),
            };
            let dead = self
                .engine
                .dead_letter(&incoming, FailureKind::Refused, &reason);
            self.count_dead_letter(FailureKind::Refused, &reason);
            self.begin_transaction()?;
            let writer = self.writer(source.partition);
            delivery::send(
                &self.producer,
                &self.shared,
                refused.token,
                &dead,
                writer.as_deref(),
            )
            .await;
            // The refused record is settled: the dead letter stands in for it.
            self.shared.ledger().refusal_settled(refused.token);
        }
        Ok(rewind)
    }

    /// Poisoned inputs the group has committed past will not come again.
    pub(super) fn forget_committed_poison(&mut self) {
        if self.poisoned.is_empty() {
            return;
        }
        let ledger = self.shared.ledger();
        self.poisoned.retain(|(topic, partition, offset), _| {
            ledger
                .offsets(topic, *partition)
                .is_none_or(|o| *offset >= o.confirmed)
        });
    }

    /// Exactly once: abort the open transaction and take every task back to its last
    /// commit, as Kafka Streams does with a corrupted task: stores restored from their
    /// changelogs (read committed), inputs read again from the group's committed offsets.
    /// Poisoned inputs are then dead-lettered instead of processed, so the refusal that
    /// doomed the transaction is not met again and nothing else is lost.
    pub(super) async fn rewind(
        &mut self,
        why: &str,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), RunnerError> {
        self.generation += 1;
        self.rewinds_in_a_row += 1;
        if self.rewinds_in_a_row > MAX_REWINDS_IN_A_ROW {
            return Err(RunnerError::Committer(format!(
                "{MAX_REWINDS_IN_A_ROW} rewinds without a commit in between; the last because {why}"
            )));
        }
        // Refusals heard while the failed commit flushed are classified before they go.
        self.settle_refusals().await?;
        warn!(
            why,
            poisoned = self.poisoned.len(),
            suspects = self.suspects.len(),
            "exactly once: aborting the transaction and going back to the last commit"
        );
        self.shared.metrics.rewinds.inc();
        tokio::select! {
            biased;
            _ = shutdown.as_mut() => return Err(RunnerError::ShutdownRequested),
            aborted = self.committer.abort() => aborted?,
        }
        let tasks = self.drop_every_task();
        let consumer = Arc::clone(&self.consumer);
        let seek = tokio::task::spawn_blocking(move || seek_to_committed(&consumer));
        tokio::select! {
            biased;
            _ = shutdown.as_mut() => return Err(RunnerError::ShutdownRequested),
            sought = seek => sought.map_err(|e| RunnerError::Committer(e.to_string()))??,
        }
        self.restore_tasks(&tasks, shutdown).await
    }

    /// At least once: a revocation's wait ran out with records in flight, and the group
    /// callback purged them all ([`super::group`]), the kept tasks' with the revoked ones'.
    /// The rebalance revoked every partition (the eager protocol), and the assignment that
    /// follows starts each partition at its committed offset: dropping every task here
    /// makes the ones assigned again restored from their changelogs, so what they processed
    /// since their last commit is processed again, as after a crash of this instance.
    pub(super) fn recover_purged(&mut self) {
        warn!("records in flight were purged at a revocation: the tasks assigned again go back to their last commit");
        self.shared.metrics.rewinds.inc();
        self.drop_every_task();
    }

    /// Whether the group has taken this instance's partitions away without a revocation it
    /// could answer (see [`Runner::lose_every_task`], done here when it has).
    pub(super) async fn lost(
        &mut self,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<bool, RunnerError> {
        if !self.consumer.assignment_lost() {
            return Ok(false);
        }
        self.lose_every_task(shutdown).await?;
        Ok(true)
    }

    /// The group gave this instance's partitions to others while it was not polling (a
    /// processor call, a registry wait or a restore that outlasted `max.poll.interval.ms`)
    /// or out of touch with the coordinator. The new owners start from the last commit, so
    /// nothing produced since may land (at least once: purged; exactly once: the open
    /// transaction aborted) and every task goes now, before any record or timer is handled.
    /// The next poll rejoins the group; tasks assigned again are restored from their
    /// changelogs.
    pub(super) async fn lose_every_task(
        &mut self,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), RunnerError> {
        if self.engine.task_count() == 0 {
            return Ok(());
        }
        warn!("membership lost: every task dropped without a commit; what it produced since is discarded");
        match self.config.processing_guarantee {
            Guarantee::AtLeastOnce => super::group::purge_in_flight(&self.shared),
            Guarantee::ExactlyOnce => tokio::select! {
                biased;
                _ = shutdown.as_mut() => return Err(RunnerError::ShutdownRequested),
                aborted = self.committer.abort() => aborted?,
            },
        }
        self.shared.metrics.rewinds.inc();
        self.effects = Effects::default();
        self.drop_every_task();
        Ok(())
    }

    /// Forget every task's entries and drop the tasks, stores and timers; returns which.
    fn drop_every_task(&mut self) -> Vec<i32> {
        self.shared.ledger().forget_all();
        let tasks = self.engine.assigned();
        for &partition in &tasks {
            self.engine.revoke(partition);
        }
        tasks
    }
}

/// Seek every assigned partition to the group's committed offset (the beginning where none
/// is, as `auto.offset.reset=earliest`); blocking.
fn seek_to_committed(consumer: &StreamConsumer<GroupContext>) -> Result<(), RunnerError> {
    let committed = consumer.committed(Duration::from_secs(10))?;
    let mut to = TopicPartitionList::new();
    for e in committed.elements() {
        let offset = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        to.add_partition_offset(e.topic(), e.partition(), offset)?;
    }
    let sought = consumer.seek_partitions(to, Duration::from_secs(10))?;
    for e in sought.elements() {
        e.error()?;
    }
    Ok(())
}

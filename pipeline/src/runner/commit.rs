//! Committing: acknowledged offsets to the group (at least once), or a transaction holding
//! the outputs and the offsets of what was processed (exactly once).

use std::time::Duration;

use std::sync::{mpsc, Arc};

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, warn};

use super::config::{Guarantee, RunnerError};
use super::delivery::OutputProducer;
use super::group::GroupContext;
use super::shared::Shared;

/// How long a transactional call may take.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

fn list_of(offsets: &[(String, i32, i64)]) -> Result<TopicPartitionList, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    Ok(tpl)
}

/// Commit now, blocking, what the guarantee allows for the tasks `wanted` selects. At least
/// once: the acknowledged offsets not yet confirmed (also those a background commit has
/// asked for: this one must land before it returns). Exactly once: the open transaction, with the processed
/// offsets of every task.
pub(crate) fn commit_now<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    shared: &Shared,
    wanted: impl Fn(i32) -> bool,
) -> Result<(), RunnerError> {
    match shared.guarantee {
        Guarantee::AtLeastOnce => {
            let offsets = shared.ledger().take_unconfirmed(wanted);
            commit_offsets(consumer, shared, &offsets)
        }
        Guarantee::ExactlyOnce => transaction_now(consumer, shared),
    }
}

fn transaction_now<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    shared: &Shared,
) -> Result<(), RunnerError> {
    match shared.producer.get().and_then(|w| w.upgrade()) {
        Some(producer) => commit_transaction(consumer, shared, &producer),
        None => Ok(()),
    }
}

/// Commit offsets synchronously and record the outcome.
fn commit_offsets<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    shared: &Shared,
    offsets: &[(String, i32, i64)],
) -> Result<(), RunnerError> {
    if offsets.is_empty() {
        return Ok(());
    }
    let result = consumer.commit(&list_of(offsets)?, CommitMode::Sync);
    confirm(shared, offsets, result.as_ref().map(|_| ()));
    // A runner stopped at the uncommitted bound may go on now.
    shared.acknowledged.notify_one();
    Ok(())
}

/// Commits acknowledged offsets on a thread of its own, so the runner never waits for the
/// group coordinator (at least once); under exactly once the runner commits its
/// transaction itself. Requests coalesce: the thread commits whatever is committable when
/// it gets to it, so a burst of requests costs one commit, not one each.
pub(crate) struct Committer {
    wake: Option<mpsc::SyncSender<()>>,
}

impl Committer {
    pub fn spawn(consumer: Arc<StreamConsumer<GroupContext>>, shared: Arc<Shared>) -> Committer {
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        let spawned = std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || {
                for () in woken {
                    let offsets = shared.ledger().take_committable(|_| true);
                    if let Err(e) = commit_offsets(&*consumer, &shared, &offsets) {
                        warn!(error = %e, "offset commit not sent; asked for again at the next commit");
                    }
                }
            });
        Committer {
            wake: spawned.ok().map(|_| wake),
        }
    }

    /// Commit what may be committed: in the background (at least once), or the transaction
    /// now (exactly once).
    pub fn commit(
        &self,
        consumer: &StreamConsumer<GroupContext>,
        shared: &Shared,
    ) -> Result<(), RunnerError> {
        match shared.guarantee {
            Guarantee::ExactlyOnce => transaction_now(consumer, shared),
            Guarantee::AtLeastOnce => match &self.wake {
                // Full: a commit is already due and will take these offsets too.
                Some(wake) => match wake.try_send(()) {
                    Ok(()) | Err(mpsc::TrySendError::Full(())) => Ok(()),
                    Err(mpsc::TrySendError::Disconnected(())) => {
                        commit_now(consumer, shared, |_| true)
                    }
                },
                None => commit_now(consumer, shared, |_| true),
            },
        }
    }
}

/// Record the outcome of a commit in the ledger and the metrics.
pub(crate) fn confirm(
    shared: &Shared,
    offsets: &[(String, i32, i64)],
    result: Result<(), &KafkaError>,
) {
    let mut ledger = shared.ledger();
    match result {
        Ok(()) => {
            shared.metrics.commits.inc();
            for (topic, partition, offset) in offsets {
                ledger.confirmed(topic, *partition, *offset);
            }
        }
        Err(e) => {
            shared.metrics.commit_failures.inc();
            warn!(error = %e, "offset commit failed; it is asked for again at the next commit");
            for (topic, partition, _) in offsets {
                ledger.commit_failed(topic, *partition);
            }
        }
    }
}

/// Open a transaction unless one is open. A failure is an error: never a silent fallback to
/// producing outside a transaction.
pub(crate) fn begin_transaction(
    producer: &OutputProducer,
    shared: &Shared,
) -> Result<(), RunnerError> {
    let mut open = shared.transaction();
    if !*open {
        producer
            .begin_transaction()
            .map_err(RunnerError::Transaction)?;
        *open = true;
    }
    Ok(())
}

/// Commit the open transaction with the offsets of everything processed (opening one when
/// inputs were processed without output since the last commit). On failure the
/// transaction is aborted and the error returned: the processor must stop, since its
/// in-memory state includes records whose outputs were just aborted.
pub(crate) fn commit_transaction<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    shared: &Shared,
    producer: &OutputProducer,
) -> Result<(), RunnerError> {
    let mut open = shared.transaction();
    let offsets = shared.ledger().positions(|_| true);
    if !*open {
        if offsets.is_empty() {
            return Ok(());
        }
        // Inputs that produced nothing (a skipped reading) opened no transaction, but their
        // offsets must be committed all the same: in a transaction of their own.
        producer
            .begin_transaction()
            .map_err(RunnerError::Transaction)?;
    }
    *open = false;
    let result = (|| {
        if !offsets.is_empty() {
            let group = consumer
                .group_metadata()
                .ok_or(KafkaError::NoMessageReceived)?;
            producer.send_offsets_to_transaction(
                &list_of(&offsets)?,
                &group,
                TRANSACTION_TIMEOUT,
            )?;
        }
        producer.commit_transaction(TRANSACTION_TIMEOUT)
    })();
    match result {
        Ok(()) => {
            debug!(offsets = offsets.len(), "transaction committed");
            confirm(shared, &offsets, Ok(()));
            Ok(())
        }
        Err(e) => {
            shared.metrics.commit_failures.inc();
            if let Err(abort) = producer.abort_transaction(TRANSACTION_TIMEOUT) {
                warn!(error = %abort, "aborting the failed transaction failed too");
            }
            Err(RunnerError::Transaction(e))
        }
    }
}

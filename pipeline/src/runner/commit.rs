//! Committing: acknowledged offsets to the group (at least once), or a transaction holding
//! the outputs and the offsets of what was processed (exactly once).

use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, warn};

use super::config::{Guarantee, RunnerError};
use super::delivery::OutputProducer;
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

/// Commit what the guarantee allows for the tasks `wanted` selects. At least once: the
/// acknowledged offsets (confirmed by the commit callback).
/// Exactly once: the open transaction, with the processed offsets of every task.
pub(crate) fn commit<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    shared: &Shared,
    wanted: impl Fn(i32) -> bool,
    mode: CommitMode,
) -> Result<(), RunnerError> {
    match shared.guarantee {
        Guarantee::AtLeastOnce => {
            let offsets = shared.ledger().take_committable(wanted);
            if offsets.is_empty() {
                return Ok(());
            }
            // The outcome, sync or async, reaches the ledger through the commit callback.
            if let Err(e) = consumer.commit(&list_of(&offsets)?, mode) {
                warn!(error = %e, "offset commit not sent; it is asked for again at the next commit");
                let mut ledger = shared.ledger();
                for (topic, partition, _) in &offsets {
                    ledger.commit_failed(topic, *partition);
                }
            }
            Ok(())
        }
        Guarantee::ExactlyOnce => {
            let Some(producer) = shared.producer.get().and_then(|w| w.upgrade()) else {
                return Ok(());
            };
            commit_transaction(consumer, shared, &producer)
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
    let mut open = shared
        .in_transaction
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if !*open {
        producer
            .begin_transaction()
            .map_err(RunnerError::Transaction)?;
        *open = true;
    }
    Ok(())
}

/// Commit the open transaction with the offsets of everything processed. On failure the
/// transaction is aborted and the error returned: the processor must stop, since its
/// in-memory state includes records whose outputs were just aborted.
pub(crate) fn commit_transaction<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    shared: &Shared,
    producer: &OutputProducer,
) -> Result<(), RunnerError> {
    let mut open = shared
        .in_transaction
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if !*open {
        return Ok(());
    }
    *open = false;
    let offsets = shared.ledger().positions(|_| true);
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

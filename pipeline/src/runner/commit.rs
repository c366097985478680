//! Committing: acknowledged offsets to the group (at least once), or a transaction holding
//! the outputs and the offsets of what was processed (exactly once).

use std::time::{Duration, Instant};

use std::sync::{mpsc, Arc};

use tokio::sync::oneshot;

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
    let list = list_of(offsets)?;
    let (result, _) = with_the_broker(shared, || consumer.commit(&list, CommitMode::Sync));
    confirm(shared, offsets, result.as_ref().map(|_| ()));
    // A runner stopped at the uncommitted bound may go on now.
    shared.acknowledged.notify_one();
    Ok(())
}

/// Run `commit` (a call that waits for the broker) with `switchyard_commit_in_progress` at 1,
/// and record how long it took in `switchyard_commit_seconds`; returns its result and time.
fn with_the_broker<T>(shared: &Shared, commit: impl FnOnce() -> T) -> (T, Duration) {
    shared.metrics.commit_in_progress.set(1);
    let started = Instant::now();
    let result = commit();
    let took = started.elapsed();
    shared.metrics.commit_seconds.observe(took.as_secs_f64());
    shared.metrics.commit_in_progress.set(0);
    (result, took)
}

/// What the committing thread is asked to do.
enum Request {
    /// At least once: commit whatever is committable when the thread gets to it.
    Offsets,
    /// Exactly once: commit the open transaction and answer how it went.
    Transaction(oneshot::Sender<Result<(), RunnerError>>),
    /// Exactly once: abort the open transaction, if any, and answer how it went.
    Abort(oneshot::Sender<Result<(), RunnerError>>),
}

type Answer = oneshot::Receiver<Result<(), RunnerError>>;

/// Commits on a thread of its own, so the runner's loop (and the async runtime under it)
/// never waits for the broker. At least once, requests coalesce: the thread commits
/// whatever is committable when it gets to it, so a burst of requests costs one commit.
/// Exactly once, the runner awaits each transaction's answer before it produces again (a
/// record produced meanwhile would land in the transaction being committed), and that wait
/// races the shutdown: with the broker away a commit can take the transaction timeout.
pub(crate) struct Committer {
    requests: mpsc::SyncSender<Request>,
    /// Exactly once: the answer to a commit asked for and not yet heard (kept when a wait
    /// for it is given up, so the next wait, or [`Committer::under_way`], takes it over).
    pending: Option<Answer>,
}

impl Committer {
    pub fn spawn(
        consumer: Arc<StreamConsumer<GroupContext>>,
        shared: Arc<Shared>,
    ) -> Result<Committer, RunnerError> {
        let (requests, received) = mpsc::sync_channel::<Request>(1);
        std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || {
                for request in received {
                    match request {
                        Request::Offsets => {
                            let offsets = shared.ledger().take_committable(|_| true);
                            if let Err(e) = commit_offsets(&*consumer, &shared, &offsets) {
                                warn!(error = %e, "offset commit not sent; asked for again at the next commit");
                            }
                        }
                        Request::Transaction(answer) => {
                            let _ = answer.send(transaction_now(&*consumer, &shared));
                        }
                        Request::Abort(answer) => {
                            let _ = answer.send(abort_transaction(&shared));
                        }
                    }
                }
            })
            .map_err(|e| RunnerError::Committer(e.to_string()))?;
        Ok(Committer {
            requests,
            pending: None,
        })
    }

    /// Commit what may be committed: in the background (at least once), or the transaction,
    /// waiting for its outcome without blocking the runtime (exactly once).
    pub async fn commit(&mut self, guarantee: Guarantee) -> Result<(), RunnerError> {
        match guarantee {
            Guarantee::ExactlyOnce => self.transaction().await,
            // Full: a commit is already due and will take these offsets too.
            Guarantee::AtLeastOnce => match self.requests.try_send(Request::Offsets) {
                Ok(()) | Err(mpsc::TrySendError::Full(_)) => Ok(()),
                Err(mpsc::TrySendError::Disconnected(_)) => Err(committer_gone()),
            },
        }
    }

    /// Commit the open transaction (or, if a commit is still under way, wait for that one)
    /// and return its outcome. Cancel-safe: dropped while waiting, the commit goes on and
    /// its answer is kept for the next call.
    pub async fn transaction(&mut self) -> Result<(), RunnerError> {
        self.ask(Request::Transaction).await
    }

    /// Ask the thread for `request` unless a request is under way, and wait for the answer.
    async fn ask(
        &mut self,
        request: fn(oneshot::Sender<Result<(), RunnerError>>) -> Request,
    ) -> Result<(), RunnerError> {
        if self.pending.is_none() {
            let (answer, answered) = oneshot::channel();
            // Never full: at most one such request is outstanding, and this is it.
            self.requests
                .try_send(request(answer))
                .map_err(|_| committer_gone())?;
            self.pending = Some(answered);
        }
        self.under_way().await
    }

    /// Exactly once: abort the open transaction, after any commit under way. Cancel-safe
    /// like [`Committer::transaction`].
    pub async fn abort(&mut self) -> Result<(), RunnerError> {
        self.under_way().await?;
        self.ask(Request::Abort).await
    }

    /// Exactly once: wait for a commit or abort that was under way when the loop ended (a
    /// no-op when none was).
    pub async fn under_way(&mut self) -> Result<(), RunnerError> {
        let Some(answered) = self.pending.as_mut() else {
            return Ok(());
        };
        let outcome = answered.await;
        self.pending = None;
        outcome.unwrap_or_else(|_| Err(committer_gone()))
    }
}

fn committer_gone() -> RunnerError {
    RunnerError::Committer("the committing thread has ended".into())
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

/// Abort the open transaction, if one is open: what it produced is never read committed.
fn abort_transaction(shared: &Shared) -> Result<(), RunnerError> {
    let mut open = shared.transaction();
    if !*open {
        return Ok(());
    }
    *open = false;
    // Nothing processed since the last commit may be committed now (a revocation or the
    // shutdown would otherwise commit the offsets of inputs whose outputs were aborted).
    shared.ledger().forget_all();
    match shared.producer.get().and_then(|w| w.upgrade()) {
        Some(producer) => producer
            .abort_transaction(TRANSACTION_TIMEOUT)
            .map_err(RunnerError::Transaction),
        None => Ok(()),
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

/// Wait (up to `limit`) until the producer holds no record and no delivery report: then the
/// flush that rust-rdkafka's `commit_transaction` starts with returns at once. Left to
/// itself, that flush finds records in flight and polls the producer's queue for up to
/// 100 ms, while the `ThreadedProducer`'s own thread takes the delivery reports from that
/// queue, so the poll sleeps its 100 ms out: about every second commit waited 100 ms more
/// than the broker took. Acknowledgements wake this wait as they come (the ledger's
/// condition variable); the last, short spin covers a report whose callback has run but
/// whose message librdkafka has not yet let go.
fn wait_for_deliveries(shared: &Shared, producer: &OutputProducer, limit: Duration) {
    let deadline = Instant::now() + limit;
    shared.wait_until(limit, |ledger| ledger.records_in_flight() == 0);
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(100));
    }
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
    let mut offsets_sent = Duration::ZERO;
    let started = Instant::now();
    let (result, took) = with_the_broker(shared, || {
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
        offsets_sent = started.elapsed();
        wait_for_deliveries(shared, producer, TRANSACTION_TIMEOUT);
        producer.commit_transaction(TRANSACTION_TIMEOUT)
    });
    match result {
        Ok(()) => {
            debug!(
                offsets = offsets.len(),
                offsets_sent_ms = offsets_sent.as_secs_f64() * 1e3,
                committed_ms = took.as_secs_f64() * 1e3,
                "transaction committed"
            );
            confirm(shared, &offsets, Ok(()));
            Ok(())
        }
        Err(e) => {
            shared.metrics.commit_failures.inc();
            // As in `abort_transaction`: the aborted inputs must never be committed.
            shared.ledger().forget_all();
            if let Err(abort) = producer.abort_transaction(TRANSACTION_TIMEOUT) {
                warn!(error = %abort, "aborting the failed transaction failed too");
            }
            Err(RunnerError::Transaction(e))
        }
    }
}

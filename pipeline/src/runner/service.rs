//! The runner's loop: consume, process, hand outputs to the producer at once, commit what
//! the broker acknowledged, fire timers, follow the group, and stop within a bounded time.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use switchyard_kafka::is_partition_eof;
use switchyard_telemetry::Health;
use tracing::{info, warn};

use super::commit;
use super::config::{Guarantee, RunnerConfig, RunnerError};
use super::delivery::{OutputProducer, WriterLabels};
use super::group::GroupContext;
use super::schemas::WriterSchemas;
use super::shared::{GroupEvent, Shared};
use crate::engine::{Effects, Engine};
use crate::Processor;

/// How often wall-clock timers, health and gauges are looked at.
const TICK: Duration = Duration::from_millis(100);

/// An input record: topic, partition, offset.
pub(crate) type InputKey = (String, i32, i64);

pub(crate) struct Runner<P: Processor> {
    pub engine: Engine<P>,
    pub consumer: Arc<StreamConsumer<GroupContext>>,
    pub producer: Arc<OutputProducer>,
    pub shared: Arc<Shared>,
    pub config: RunnerConfig,
    /// The `switchyard.writer` header of each task.
    pub writer_labels: WriterLabels,
    pub writers: WriterSchemas,
    pub health: Health,
    /// What the record or timer being handled produced (reused, so no allocation per record).
    pub effects: Effects,
    /// An assignment (perhaps empty) has arrived since start-up.
    pub joined: bool,
    /// Consumption is paused at the in-flight bounds.
    pub paused: bool,
    /// At least once: the next crossing of half the uncommitted bound asks for a commit.
    pub early_commit_armed: bool,
    pub committer: commit::Committer,
    /// Exactly once: inputs whose outputs were refused alone, by (topic, partition,
    /// offset), with the reason; met again after a rewind, they are dead-lettered
    /// instead of processed.
    pub poisoned: HashMap<InputKey, String>,
    /// Exactly once: inputs whose outputs were in a batch the broker refused; met again,
    /// each is processed in a transaction of its own.
    pub suspects: HashMap<InputKey, String>,
    /// The suspect being processed in a transaction of its own.
    pub isolated: Option<InputKey>,
    /// Exactly once: rewinds since the last successful commit.
    pub rewinds_in_a_row: u32,
    /// Exactly once: rewinds so far (a record read before one is stale after it).
    pub generation: u64,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

impl<P: Processor> Runner<P> {
    /// The loop, until `shutdown` completes (then `Ok`) or something fails for good.
    pub async fn run(
        &mut self,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), RunnerError> {
        match self.run_loop(shutdown).await {
            Err(RunnerError::ShutdownRequested) => {
                info!("shutdown requested while waiting");
                Ok(())
            }
            other => other,
        }
    }

    pub(super) async fn run_loop(
        &mut self,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), RunnerError> {
        let mut wall_tick = tokio::time::interval(TICK);
        wall_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut commit_tick = tokio::time::interval(self.config.commit_interval());
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let consumer = Arc::clone(&self.consumer);
        let shared = Arc::clone(&self.shared);
        loop {
            shared.loop_turns.fetch_add(1, Ordering::Relaxed);
            self.attend(shutdown).await?;
            tokio::select! {
                biased;
                _ = shutdown.as_mut() => {
                    info!("shutdown requested");
                    return Ok(());
                }
                _ = shared.refusal.notified() => {}
                // Every branch applies group changes before it acts: a revocation may have
                // run inside the last poll of `recv`, which then returned nothing, and a
                // task revoked there must not commit or punctuate again.
                _ = shared.acknowledged.notified(), if self.paused => {
                    self.attend(shutdown).await?;
                    self.commit(shutdown).await?;
                }
                _ = commit_tick.tick() => {
                    self.attend(shutdown).await?;
                    self.commit(shutdown).await?;
                }
                _ = wall_tick.tick() => {
                    self.attend(shutdown).await?;
                    // Paused, timers wait: what they would send would only add to the
                    // in-flight records that paused it. They fire once when it resumes, as
                    // Kafka Streams skips missed wall-clock punctuations.
                    if !self.paused {
                        self.punctuate_wall_clock().await?;
                    }
                    self.report();
                }
                // Polled while paused too (its partitions paused at the consumer), so a
                // rebalance is served at once and the membership stays alive.
                message = consumer.recv() => {
                    // The poll may have run a rebalance callback: apply it first.
                    self.attend(shutdown).await?;
                    match message {
                        Ok(m) => self.handle(&m, shutdown).await?,
                        Err(e) if is_partition_eof(&e) => {}
                        Err(e) => {
                            warn!(error = %e, "consumer error; continuing");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
            self.pause_at_bounds(shutdown).await?;
        }
    }

    /// Commit (see [`commit::Committer`]), racing the shutdown: with the broker away a
    /// transaction's commit can take its whole timeout, and SIGTERM must not wait for it.
    /// Nothing is processed while a transaction's commit is awaited, so one that waits
    /// longer than the stall timeout makes the instance not ready, saying so.
    pub(super) async fn commit(
        &mut self,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), RunnerError> {
        let guarantee = self.config.processing_guarantee;
        let asked = Instant::now();
        let committed = loop {
            tokio::select! {
                biased;
                _ = shutdown.as_mut() => break Err(RunnerError::ShutdownRequested),
                // Cancel-safe: taken up again, it waits for the same commit's answer.
                committed = self.committer.commit(guarantee) => break committed,
                _ = tokio::time::sleep(self.config.stall_timeout()) => {
                    let why = format!(
                        "the transaction's commit has waited {} s for the broker; nothing is processed meanwhile",
                        asked.elapsed().as_secs()
                    );
                    if self.health.is_ready() {
                        warn!(why, "not ready");
                    }
                    self.health.set_not_ready(why);
                    self.shared.metrics.ready.set(0);
                }
            }
        };
        match committed {
            // Aborted, not fatal (a fenced producer is): go back to the last commit.
            Err(RunnerError::Transaction(KafkaError::Transaction(e))) if e.txn_requires_abort() => {
                self.rewind(&format!("the transaction's commit failed: {e}"), shutdown)
                    .await
            }
            Ok(()) => {
                if guarantee == Guarantee::ExactlyOnce {
                    self.rewinds_in_a_row = 0;
                    self.forget_committed_poison();
                }
                Ok(())
            }
            other => other,
        }
    }

    /// Apply group changes, deal with refused records and errors raised in callbacks.
    pub(super) async fn attend(
        &mut self,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), RunnerError> {
        if let Some(error) = self.shared.take_fatal() {
            return Err(error);
        }
        // Lost before the poll that will say so: the tasks go first.
        self.lost(shutdown).await?;
        for event in self.shared.take_events() {
            match event {
                GroupEvent::Lost => self.lose_every_task(shutdown).await?,
                GroupEvent::Revoked(parts) => self.drop_tasks(&parts),
                GroupEvent::InFlightPurged => self.recover_purged(),
                GroupEvent::Assigned(parts) => {
                    self.joined = true;
                    let tasks: BTreeSet<i32> = parts.iter().map(|(_, p)| *p).collect();
                    let new: Vec<i32> = tasks
                        .into_iter()
                        .filter(|p| !self.engine.owns(*p))
                        .collect();
                    self.restore_tasks(&new, shutdown).await?;
                    if self.paused {
                        // A new assignment is fetched from; a paused runner takes nothing.
                        self.fetch_assigned(false);
                    }
                }
            }
        }
        self.shared
            .metrics
            .assigned_partitions
            .set(self.engine.task_count() as i64);
        if self.settle_refusals().await? {
            self.rewind("an output was refused", shutdown).await?;
        }
        Ok(())
    }

    /// Stop taking records while the uncommitted records or the bytes in flight are at
    /// their bounds; take them again when acknowledgements and commits bring them under.
    /// The assigned partitions are paused at the consumer, which goes on being polled: a
    /// rebalance is served at once (an instance that stopped polling held the whole group
    /// up until `max.poll.interval.ms` evicted it). Pausing drops what librdkafka had
    /// prefetched for them, fetched again from where the runner is on resuming.
    pub(super) async fn pause_at_bounds(
        &mut self,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), RunnerError> {
        let (uncommitted, mut over) = self.at_bounds();
        if over && !self.paused {
            self.commit(shutdown).await?;
            // Exactly once, the transaction's commit has settled them: unless it failed,
            // nothing is left to wait for, and pausing would only drop what was prefetched.
            over = self.at_bounds().1;
        } else if self.config.processing_guarantee == Guarantee::AtLeastOnce {
            // Half way to the bound, ask for a commit (in the background, at least once):
            // it lands while processing goes on, so a steady flow faster than the commit
            // interval is not stopped at the bound every time to wait for one. Once per
            // crossing: armed again when commits bring the count back under half.
            let half = (self.config.max_uncommitted / 2) as i64;
            if uncommitted < half {
                self.early_commit_armed = true;
            } else if self.early_commit_armed {
                self.early_commit_armed = false;
                self.commit(shutdown).await?;
            }
        }
        if over != self.paused {
            if over {
                self.shared.metrics.pauses.inc();
            }
            self.paused = over;
            self.fetch_assigned(!over);
        }
        Ok(())
    }

    /// The records processed and not committed, and whether they or the bytes in flight
    /// are at their bounds.
    fn at_bounds(&self) -> (i64, bool) {
        let ledger = self.shared.ledger();
        let uncommitted = ledger.uncommitted();
        let over = uncommitted >= self.config.max_uncommitted as i64
            || ledger.bytes_in_flight() >= self.config.max_in_flight_bytes;
        (uncommitted, over)
    }

    /// Resume (`true`) or pause fetching every assigned partition.
    pub(super) fn fetch_assigned(&self, fetch: bool) {
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        let done = match fetch {
            true => self.consumer.resume(&assignment),
            false => self.consumer.pause(&assignment),
        };
        if let Err(e) = done {
            warn!(error = %e, fetch, "pausing or resuming the assigned partitions");
        }
    }

    /// Gauges, and readiness: joined, restored, no record waiting on the broker longer than
    /// the stall timeout, and no commit waiting that long for the group's confirmation
    /// (failing, or unanswered: everything acknowledged, yet nothing committed).
    pub(super) fn report(&self) {
        let ledger = self.shared.ledger();
        let metrics = &self.shared.metrics;
        metrics
            .records_in_flight
            .set(ledger.records_in_flight() as i64);
        metrics.uncommitted_records.set(ledger.uncommitted());
        let stall = self.config.stall_timeout();
        let waited = |since: Option<Instant>| since.map(|t| t.elapsed()).filter(|w| *w > stall);
        let stalled = match (
            waited(ledger.oldest_open()),
            waited(ledger.unconfirmed_since()),
        ) {
            (Some(w), _) => Some(format!(
                "a record has waited {} s for the broker's acknowledgement",
                w.as_secs()
            )),
            (None, Some(w)) => Some(format!(
                "offsets of {} processed records not committed: the group has not confirmed a commit for {} s",
                ledger.uncommitted(),
                w.as_secs()
            )),
            (None, None) => None,
        };
        drop(ledger);
        let ready = self.joined && stalled.is_none();
        let was_ready = self.health.is_ready();
        match &stalled {
            Some(why) => {
                if was_ready {
                    warn!(why, "not ready");
                }
                self.health.set_not_ready(why.clone());
            }
            None => {
                if ready && !was_ready {
                    info!("ready");
                }
                self.health.set_ready(ready);
            }
        }
        self.shared.metrics.ready.set(i64::from(ready));
    }
}

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
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use switchyard_kafka::is_partition_eof;
use switchyard_telemetry::Health;
use tracing::{debug, info, warn};

use super::commit;
use super::config::{Guarantee, RunnerConfig, RunnerError};
use super::delivery::{self, OutputProducer};
use super::group::GroupContext;
use super::ledger::{Blame, SourceRecord, Token};
use super::restore;
use super::schemas::WriterSchemas;
use super::shared::{GroupEvent, Shared};
use crate::codec;
use crate::engine::{Effects, Engine, FailureKind, Incoming, Restored};
use crate::{ErrorPolicy, Processor};

/// Owning no partition this long, rejoin the group (then twice as long, up to the maximum).
const JOIN_WATCHDOG: Duration = Duration::from_secs(25);
const JOIN_WATCHDOG_MAX: Duration = Duration::from_secs(600);
/// Exactly once: rewinds without a successful commit in between before the runner stops.
const MAX_REWINDS_IN_A_ROW: u32 = 5;
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

    async fn run_loop(
        &mut self,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), RunnerError> {
        let mut wall_tick = tokio::time::interval(TICK);
        wall_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut commit_tick = tokio::time::interval(self.config.commit_interval());
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let consumer = Arc::clone(&self.consumer);
        let shared = Arc::clone(&self.shared);
        let mut unassigned_since = Instant::now();
        let mut watchdog = JOIN_WATCHDOG;
        loop {
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
                    if self.engine.task_count() > 0 {
                        unassigned_since = Instant::now();
                        watchdog = JOIN_WATCHDOG;
                    } else if unassigned_since.elapsed() > watchdog {
                        self.rejoin(watchdog)?;
                        unassigned_since = Instant::now();
                        watchdog = (watchdog * 2).min(JOIN_WATCHDOG_MAX);
                    }
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
    async fn commit(
        &mut self,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), RunnerError> {
        let guarantee = self.config.processing_guarantee;
        let committed = tokio::select! {
            biased;
            _ = shutdown.as_mut() => Err(RunnerError::ShutdownRequested),
            committed = self.committer.commit(guarantee) => committed,
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
    async fn attend(
        &mut self,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), RunnerError> {
        if let Some(error) = self.shared.take_fatal() {
            return Err(error);
        }
        for event in self.shared.take_events() {
            match event {
                GroupEvent::Revoked(parts) => self.drop_tasks(&parts),
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

    /// Drop the tasks whose partitions went (the revocation callback already waited for
    /// their records and committed their offsets).
    fn drop_tasks(&mut self, parts: &[(String, i32)]) {
        let still: BTreeSet<i32> = self
            .consumer
            .assignment()
            .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default();
        let mut ledger = self.shared.ledger();
        for partition in parts.iter().map(|(_, p)| *p).collect::<BTreeSet<i32>>() {
            if !still.contains(&partition) {
                self.engine.revoke(partition);
                ledger.forget(partition);
                debug!(partition, "task dropped");
            }
        }
    }

    /// Create tasks and fill their stores from the changelogs; not ready meanwhile.
    async fn restore_tasks(
        &mut self,
        partitions: &[i32],
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), RunnerError> {
        if partitions.is_empty() {
            return Ok(());
        }
        self.health.set_ready(false);
        self.shared.metrics.ready.set(0);
        let read_committed = self.config.processing_guarantee == Guarantee::ExactlyOnce;
        for &partition in partitions {
            self.engine.assign(partition);
            for store in self.engine.topology().store_names().to_vec() {
                let topic = self.engine.topology().changelog_topic(&store);
                let started = Instant::now();
                let settings = restore::restore_settings(
                    &self.config.endpoints.bootstrap_servers,
                    &topic,
                    read_committed,
                );
                self.health.set_not_ready(format!(
                    "restoring store {store} of partition {partition} from {topic}"
                ));
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let reading = tokio::task::spawn_blocking({
                    let stop = Arc::clone(&stop);
                    move || restore::read_partition(&settings, &topic, partition, &stop)
                });
                let records = tokio::select! {
                    records = reading => records.map_err(|e| RunnerError::Catalog(e.to_string()))??,
                    _ = shutdown.as_mut() => {
                        stop.store(true, Ordering::Relaxed);
                        return Err(RunnerError::ShutdownRequested);
                    }
                };
                let count = records.len();
                let older = self
                    .engine
                    .unknown_store_writers(records.iter().filter_map(|(_, v)| v.as_deref()));
                for id in older {
                    self.writers
                        .ensure(&mut self.engine, id, &self.health, shutdown)
                        .await?;
                }
                let (mut converted, mut unreadable) = (0u64, 0u64);
                for (key, value) in records {
                    match self.engine.restore(partition, &store, key.clone(), value) {
                        Restored::AsWritten => {}
                        Restored::Converted => converted += 1,
                        Restored::Unreadable(reason) => {
                            unreadable += 1;
                            warn!(%store, partition, %key, %reason, "changelog value kept unconverted: reading it will fail");
                        }
                    }
                }
                let seconds = started.elapsed().as_secs_f64();
                let metrics = &self.shared.metrics;
                metrics
                    .restore_seconds
                    .with_label_values(&[store.as_str()])
                    .set(seconds);
                metrics
                    .restored_records
                    .with_label_values(&[store.as_str()])
                    .inc_by(count as u64);
                metrics
                    .store_values_unreadable
                    .with_label_values(&[store.as_str()])
                    .inc_by(unreadable);
                info!(%store, partition, records = count, converted, unreadable, seconds, "store restored");
            }
        }
        self.report();
        Ok(())
    }

    /// Dead-letter the inputs of records the broker refused for good (or stop, when the
    /// policy says so or when the refused record was a changelog or dead-letter record).
    /// Exactly once, a refusal dooms the transaction (librdkafka makes it abortable), so
    /// nothing is sent here: the input is marked poisoned (refused alone: dead-lettered
    /// when met again) or suspect (refused in a batch: processed again in a transaction of
    /// its own, to see whether it or a batch-mate was refused), and `true` is returned for
    /// the caller to [`Runner::rewind`].
    async fn settle_refusals(&mut self) -> Result<bool, RunnerError> {
        let mut rewind = false;
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
                let key = (input.topic, input.partition, input.offset);
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
            let source = source.unwrap_or_else(|| SourceRecord {
                topic: refused.topic.clone(),
                partition: refused.token.partition,
                offset: -1,
                timestamp_ms: None,
                key: refused.key.clone(),
                payload: refused.payload.clone(),
                headers: Vec::new(),
            });
            let incoming = Incoming {
                topic: &source.topic,
                partition: source.partition,
                offset: source.offset,
                timestamp_ms: source.timestamp_ms,
                key: source.key.as_deref(),
                headers: source.headers.clone(),
                payload: source.payload.as_deref(),
            };
            let dead = self
                .engine
                .dead_letter(&incoming, FailureKind::Refused, &reason);
            self.count_dead_letter(FailureKind::Refused, &reason);
            self.begin_transaction()?;
            delivery::send(&self.producer, &self.shared, refused.token, &dead).await;
            // The refused record is settled: the dead letter stands in for it.
            self.shared.ledger().close(refused.token);
        }
        Ok(rewind)
    }

    /// Poisoned inputs the group has committed past will not come again.
    fn forget_committed_poison(&mut self) {
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
    async fn rewind(
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
        self.shared.ledger().forget_all();
        let tasks = self.engine.assigned();
        for &partition in &tasks {
            self.engine.revoke(partition);
        }
        let consumer = Arc::clone(&self.consumer);
        let seek = tokio::task::spawn_blocking(move || seek_to_committed(&consumer));
        tokio::select! {
            biased;
            _ = shutdown.as_mut() => return Err(RunnerError::ShutdownRequested),
            sought = seek => sought.map_err(|e| RunnerError::Committer(e.to_string()))??,
        }
        self.restore_tasks(&tasks, shutdown).await
    }

    fn count_dead_letter(&self, kind: FailureKind, error: &str) {
        self.shared
            .metrics
            .dead_letters
            .with_label_values(&[kind.as_str()])
            .inc();
        warn!(reason = kind.as_str(), %error, "record dead-lettered");
    }

    fn begin_transaction(&self) -> Result<(), RunnerError> {
        if self.config.processing_guarantee == Guarantee::ExactlyOnce {
            commit::begin_transaction(&self.producer, &self.shared)?;
        }
        Ok(())
    }

    async fn handle(
        &mut self,
        m: &BorrowedMessage<'_>,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), RunnerError> {
        if let Some(Ok((id, _))) = m.payload().map(codec::split_frame) {
            self.writers
                .ensure(&mut self.engine, id, &self.health, shutdown)
                .await?;
        }
        let headers: Vec<(String, Option<Vec<u8>>)> = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        let incoming = Incoming {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            key: m.key(),
            headers,
            payload: m.payload(),
        };
        if !self.engine.owns(m.partition()) {
            self.restore_tasks(&[m.partition()], shutdown).await?;
        }
        // Exactly once, after a rewind: a poisoned input is dead-lettered unprocessed, a
        // suspect one is processed in a transaction of its own.
        let key = (!self.poisoned.is_empty() || !self.suspects.is_empty())
            .then(|| (m.topic().to_string(), m.partition(), m.offset()));
        // Kept until committed past: a later rewind may bring it round again.
        let poisoned = key.as_ref().and_then(|k| self.poisoned.get(k).cloned());
        let suspect = key.filter(|k| poisoned.is_none() && self.suspects.contains_key(k));
        if let Some(key) = &suspect {
            let generation = self.generation;
            self.commit(shutdown).await?;
            if self.generation != generation {
                // That commit failed and every task went back: this record comes again.
                return Ok(());
            }
            self.suspects.remove(key);
            self.isolated = Some(key.clone());
        }
        let started = Instant::now();
        let handled = match poisoned {
            Some(reason) => {
                let dead = self
                    .engine
                    .dead_letter(&incoming, FailureKind::Refused, &reason);
                self.effects.dead_letters.push((dead, FailureKind::Refused));
                Ok(())
            }
            None => self.engine.handle(&incoming, now_ms(), &mut self.effects),
        };
        let metrics = &self.shared.metrics;
        metrics
            .processing_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.count_in(m.topic());
        // A record that stops the processor is not opened in the ledger: everything before
        // it is committed on the way out, it and what follows are not.
        handled?;
        let topic = self.shared.ledger().topic_index(m.topic());
        let input = topic.map(|t| (t, m.offset()));
        self.emit(m.partition(), input, || SourceRecord {
            topic: incoming.topic.to_string(),
            partition: incoming.partition,
            offset: incoming.offset,
            timestamp_ms: incoming.timestamp_ms,
            key: incoming.key.map(<[u8]>::to_vec),
            payload: incoming.payload.map(<[u8]>::to_vec),
            headers: incoming.headers.clone(),
        })
        .await?;
        if suspect.is_some() {
            // Refused now, it is the culprit (see `settle_refusals`).
            let committed = self.commit(shutdown).await;
            self.isolated = None;
            committed?;
        }
        Ok(())
    }

    /// Hand what the last callback produced to the producer, on one ledger entry.
    async fn emit(
        &mut self,
        partition: i32,
        input: Option<(usize, i64)>,
        source: impl FnOnce() -> SourceRecord,
    ) -> Result<(), RunnerError> {
        let metrics = &self.shared.metrics;
        for event in self.effects.counts.drain(..) {
            metrics.events.with_label_values(&[event]).inc();
        }
        for failure in self.effects.timer_failures.drain(..) {
            metrics.timer_failures.inc();
            warn!(%failure, "timer failed");
        }
        let produces = !self.effects.is_empty();
        if input.is_none() && !produces {
            return Ok(());
        }
        let source = (produces && input.is_some()).then(source);
        let token = self.shared.ledger().open(partition, input, source);
        if produces {
            self.begin_transaction()?;
            self.send_effects(token).await;
        }
        self.shared.ledger().close(token);
        Ok(())
    }

    async fn send_effects(&mut self, token: Token) {
        let mut effects = std::mem::take(&mut self.effects);
        for out in effects.outputs.drain(..).chain(effects.changelog.drain(..)) {
            delivery::send(&self.producer, &self.shared, token, &out).await;
        }
        for (out, kind) in effects.dead_letters.drain(..) {
            let error = out
                .headers
                .iter()
                .find(|(k, _)| k == crate::engine::headers::ERROR)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            self.count_dead_letter(kind, &error);
            delivery::send(&self.producer, &self.shared, token, &out).await;
        }
        // Keep the vectors' capacity for the next record.
        self.effects = effects;
    }

    /// Fire due wall-clock timers, task by task, each task's outputs on its own entry.
    async fn punctuate_wall_clock(&mut self) -> Result<(), RunnerError> {
        let now = now_ms();
        for timer in self.engine.due_wall_clock(now) {
            for partition in self.engine.assigned() {
                self.engine
                    .punctuate(partition, &timer, now, &mut self.effects)?;
                self.emit(partition, None, || no_source(partition)).await?;
            }
        }
        Ok(())
    }

    /// Stop taking records while the uncommitted records or the bytes in flight are at
    /// their bounds; take them again when acknowledgements and commits bring them under.
    /// The assigned partitions are paused at the consumer, which goes on being polled: a
    /// rebalance is served at once (an instance that stopped polling held the whole group
    /// up until `max.poll.interval.ms` evicted it). Pausing drops what librdkafka had
    /// prefetched for them, fetched again from where the runner is on resuming.
    async fn pause_at_bounds(
        &mut self,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), RunnerError> {
        let (uncommitted, over) = {
            let ledger = self.shared.ledger();
            let uncommitted = ledger.uncommitted();
            let over = uncommitted >= self.config.max_uncommitted as i64
                || ledger.bytes_in_flight() >= self.config.max_in_flight_bytes;
            (uncommitted, over)
        };
        if over && !self.paused {
            self.shared.metrics.pauses.inc();
            self.commit(shutdown).await?;
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
            self.paused = over;
            self.fetch_assigned(!over);
        }
        Ok(())
    }

    /// Resume (`true`) or pause fetching every assigned partition.
    fn fetch_assigned(&self, fetch: bool) {
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
    fn report(&self) {
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

    /// Leave and rejoin the group. tansu 0.6.0, the broker before Apache Kafka, could leave a
    /// member that joined while a crashed member was still in the group with an empty
    /// assignment indefinitely; joining again recovered. An instance that is idle because
    /// there are more instances than partitions also rejoins, ever more rarely (the delay
    /// doubles up to ten minutes), which costs one rebalance each time.
    fn rejoin(&mut self, after: Duration) -> Result<(), RunnerError> {
        warn!(
            ?after,
            "no partitions assigned; rejoining the group (a crashed member may still hold them)"
        );
        self.shared.metrics.rejoins.inc();
        self.consumer.unsubscribe();
        let topics = self.engine.topology().input_topics();
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.consumer.subscribe(&refs)?;
        Ok(())
    }

    /// After the loop: wait (bounded) for records in flight, commit what was acknowledged
    /// (exactly once: the transaction), leave the group. Never blocks longer than the
    /// shutdown timeout (plus the commit's own bound), even with the broker away.
    pub async fn finish(mut self) -> Result<(), RunnerError> {
        self.health.set_ready(false);
        self.shared.metrics.ready.set(0);
        let timeout = self.config.shutdown_timeout();
        let deadline = Instant::now() + timeout;
        // A revocation while leaving must not wait again.
        self.shared.revoke_timeout_ms.store(0, Ordering::Relaxed);
        // A transaction commit under way when the loop ended (the broker slow or away) owns
        // the transaction: nothing may be produced or committed before it ends.
        let mut outcome = match tokio::time::timeout_at(deadline.into(), self.committer.under_way())
            .await
        {
            Ok(result) => result,
            Err(_) => {
                warn!(
                        ?timeout,
                        "a transaction commit still waited for the broker at the shutdown timeout; the broker completes it if the commit reached it and aborts it otherwise; inputs not committed will be processed again"
                    );
                // Nothing of it may be committed by the revocation on the way out.
                self.shared.ledger().forget_all();
                return self.close(Ok(())).await;
            }
        };
        let mut abandoned = false;
        while outcome.is_ok() {
            match self.settle_refusals().await {
                Ok(false) => {}
                // Exactly once, a refused record doomed the transaction: abort it; its
                // inputs are processed again by whoever owns them next.
                Ok(true) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if let Ok(aborted) = tokio::time::timeout(left, self.committer.abort()).await {
                        outcome = aborted;
                    }
                    self.shared.ledger().forget_all();
                    abandoned = true;
                    break;
                }
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
            let in_flight = self.shared.ledger().records_in_flight();
            if in_flight == 0 {
                break;
            }
            if Instant::now() >= deadline {
                warn!(
                    in_flight,
                    ?timeout,
                    "records still unacknowledged at shutdown; their inputs will be processed again"
                );
                break;
            }
            tokio::select! {
                _ = self.shared.acknowledged.notified() => {}
                _ = self.shared.refusal.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        if outcome.is_ok() && !abandoned {
            outcome = self.last_commit(timeout.max(Duration::from_secs(1))).await;
        }
        let open = self.shared.ledger().open_entries(|_| true);
        if open > 0 {
            warn!(
                open,
                "inputs left uncommitted; they will be processed again"
            );
        }
        self.close(outcome).await
    }

    /// The last commit, bounded by `limit`, then leave the group.
    async fn last_commit(&mut self, limit: Duration) -> Result<(), RunnerError> {
        let consumer = Arc::clone(&self.consumer);
        let committed = match self.config.processing_guarantee {
            Guarantee::ExactlyOnce => {
                let committed = tokio::time::timeout(limit, self.committer.transaction())
                    .await
                    .ok();
                let leaving = Arc::clone(&consumer);
                bounded(limit, move || leaving.unsubscribe()).await;
                committed
            }
            Guarantee::AtLeastOnce => {
                // Made here, on a bounded thread, and not by the committing thread: it must
                // include what that thread was asked for (`commit_now` waits for it).
                let shared = Arc::clone(&self.shared);
                bounded(limit, move || {
                    let result = commit::commit_now(&*consumer, &shared, |_| true);
                    consumer.unsubscribe();
                    result
                })
                .await
            }
        };
        committed.unwrap_or_else(|| {
            warn!("the final commit did not finish in time (broker away?)");
            Ok(())
        })
    }

    /// Close the clients: librdkafka's consumer close can wait long for an absent broker,
    /// so it is left to a thread of its own, bounded like the rest.
    async fn close(self, outcome: Result<(), RunnerError>) -> Result<(), RunnerError> {
        let Runner {
            consumer,
            producer,
            committer,
            ..
        } = self;
        // Its thread ends with its queue (after a commit under way, if any).
        drop(committer);
        let _ = bounded(Duration::from_secs(2), move || {
            drop(consumer);
            drop(producer);
        })
        .await;
        outcome
    }
}

/// Run a blocking job on a thread of its own; `None` if it did not finish within `limit`
/// (the thread is left to finish or die with the process).
async fn bounded<T: Send + 'static>(
    limit: Duration,
    job: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("runner-finish".into())
        .spawn(move || {
            let _ = tx.send(job());
        });
    if spawned.is_err() {
        return None;
    }
    tokio::time::timeout(limit, rx).await.ok()?.ok()
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

/// Punctuations have no input record; their entries never ask for one.
fn no_source(partition: i32) -> SourceRecord {
    SourceRecord {
        topic: String::new(),
        partition,
        offset: -1,
        timestamp_ms: None,
        key: None,
        payload: None,
        headers: Vec::new(),
    }
}

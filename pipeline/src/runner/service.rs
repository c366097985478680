//! The runner's loop: consume, process, hand outputs to the producer at once, commit what
//! the broker acknowledged, fire timers, follow the group, and stop within a bounded time.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use switchyard_kafka::is_partition_eof;
use switchyard_telemetry::Health;
use tracing::{debug, info, warn};

use super::commit;
use super::config::{Guarantee, RunnerConfig, RunnerError};
use super::delivery::{self, OutputProducer};
use super::group::GroupContext;
use super::ledger::{SourceRecord, Token};
use super::restore;
use super::schemas::WriterSchemas;
use super::shared::{GroupEvent, Shared};
use crate::codec;
use crate::engine::{Effects, Engine, FailureKind, Incoming, Restored};
use crate::{ErrorPolicy, Processor};

/// Owning no partition this long, rejoin the group (then twice as long, up to the maximum).
const JOIN_WATCHDOG: Duration = Duration::from_secs(25);
const JOIN_WATCHDOG_MAX: Duration = Duration::from_secs(600);
/// How often wall-clock timers, health and gauges are looked at.
const TICK: Duration = Duration::from_millis(100);

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
    pub committer: commit::Committer,
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
                    self.committer.commit(&consumer, &shared)?;
                }
                _ = commit_tick.tick() => {
                    self.attend(shutdown).await?;
                    self.committer.commit(&consumer, &shared)?;
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
                    self.punctuate_wall_clock().await?;
                    self.report();
                }
                message = consumer.recv(), if !self.paused => {
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
            self.pause_at_bounds()?;
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
                }
            }
        }
        self.shared
            .metrics
            .assigned_partitions
            .set(self.engine.task_count() as i64);
        self.settle_refusals().await
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
    async fn settle_refusals(&mut self) -> Result<(), RunnerError> {
        let refusals = self.shared.ledger().take_refused();
        for refused in refusals {
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
            let source = self.shared.ledger().source(refused.token);
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
        Ok(())
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
        let started = Instant::now();
        let handled = self.engine.handle(&incoming, now_ms(), &mut self.effects);
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
        .await
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
    /// The consumer is not paused (that would drop what librdkafka has prefetched, to be
    /// fetched again): the runner only stops polling it for a while, and commits meanwhile.
    fn pause_at_bounds(&mut self) -> Result<(), RunnerError> {
        let over = {
            let ledger = self.shared.ledger();
            ledger.uncommitted() >= self.config.max_uncommitted as i64
                || ledger.bytes_in_flight() >= self.config.max_in_flight_bytes
        };
        if over && !self.paused {
            self.shared.metrics.pauses.inc();
            self.committer.commit(&self.consumer, &self.shared)?;
        }
        self.paused = over;
        Ok(())
    }

    /// Gauges, and readiness: joined, restored, and no record waiting on the broker longer
    /// than the stall timeout.
    fn report(&self) {
        let ledger = self.shared.ledger();
        let metrics = &self.shared.metrics;
        metrics
            .records_in_flight
            .set(ledger.records_in_flight() as i64);
        metrics.uncommitted_records.set(ledger.uncommitted());
        let stalled = ledger
            .oldest_open()
            .is_some_and(|t| t.elapsed() > self.config.stall_timeout());
        drop(ledger);
        let ready = self.joined && !stalled;
        if self.health.is_ready() != ready {
            if stalled {
                warn!(timeout = ?self.config.stall_timeout(), "no acknowledgement from the broker: not ready");
            } else if ready {
                info!("ready");
            }
        }
        self.health.set_ready(ready);
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

    /// After the loop: wait (bounded) for records in flight, commit what was acknowledged,
    /// leave the group. Never blocks longer than the shutdown timeout (plus the commit's own
    /// bound), even with the broker away.
    pub async fn finish(mut self) -> Result<(), RunnerError> {
        self.health.set_ready(false);
        self.shared.metrics.ready.set(0);
        let timeout = self.config.shutdown_timeout();
        let deadline = Instant::now() + timeout;
        // A revocation while leaving must not wait again.
        self.shared.revoke_timeout_ms.store(0, Ordering::Relaxed);
        let mut outcome = Ok(());
        loop {
            if let Err(e) = self.settle_refusals().await {
                outcome = Err(e);
                break;
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
        let consumer = Arc::clone(&self.consumer);
        let shared = Arc::clone(&self.shared);
        // No more background commits: the last one is made here.
        drop(self.committer);
        let committed = bounded(timeout.max(Duration::from_secs(1)), move || {
            let result = commit::commit_now(&*consumer, &shared, |_| true);
            consumer.unsubscribe();
            result
        })
        .await;
        match committed {
            Some(result) => outcome = outcome.and(result),
            None => warn!("the final commit did not finish in time (broker away?)"),
        }
        let open = self.shared.ledger().open_entries(|_| true);
        if open > 0 {
            warn!(
                open,
                "inputs left uncommitted; they will be processed again"
            );
        }
        // librdkafka's consumer close can wait long for an absent broker: leave it to a
        // thread of its own, bounded like the rest.
        let consumer = self.consumer;
        let producer = self.producer;
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

//! Processing: a record or a due timer through the engine, and what it produced handed to
//! the producer at once, on one ledger entry.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use rdkafka::message::{BorrowedMessage, Headers, Message};
use tracing::warn;

use super::commit;
use super::config::{Guarantee, RunnerError};
use super::delivery;
use super::ledger::{SourceRecord, Token};
use super::service::{now_ms, Runner};
use crate::codec;
use crate::engine::{FailureKind, Incoming};
use crate::Processor;

impl<P: Processor> Runner<P> {
    pub(super) fn count_dead_letter(&self, kind: FailureKind, error: &str) {
        self.shared
            .metrics
            .dead_letters
            .with_label_values(&[kind.as_str()])
            .inc();
        warn!(reason = kind.as_str(), %error, "record dead-lettered");
    }

    pub(super) fn begin_transaction(&self) -> Result<(), RunnerError> {
        if self.config.processing_guarantee == Guarantee::ExactlyOnce {
            commit::begin_transaction(&self.producer, &self.shared)?;
        }
        Ok(())
    }

    pub(super) async fn handle(
        &mut self,
        m: &BorrowedMessage<'_>,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), RunnerError> {
        if let Some(Ok((id, _))) = m.payload().map(codec::split_frame) {
            self.writers
                .ensure(&mut self.engine, id, &self.health, shutdown)
                .await?;
            // The wait for the registry may have outlasted the group's patience.
            if self.lost(shutdown).await? {
                return Ok(());
            }
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
        // A call that outlasted `max.poll.interval.ms`: the partition is someone else's
        // now, and what the call produced goes with the task.
        if self.lost(shutdown).await? {
            return Ok(());
        }
        // A record that stops the processor is not opened in the ledger: everything before
        // it is committed on the way out, it and what follows are not.
        handled?;
        let topic = self.shared.ledger().input_topic(m.topic());
        let input = topic.as_ref().map(|(index, _)| (*index, m.offset()));
        self.emit(m.partition(), input, || {
            SourceRecord::new(
                topic.map_or_else(|| incoming.topic.into(), |(_, name)| name),
                incoming.partition,
                incoming.offset,
                incoming.timestamp_ms,
                incoming.key,
                incoming.payload,
                incoming.headers.clone(),
            )
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
    pub(super) async fn emit(
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
            self.send_effects(partition, token).await;
        }
        self.shared.ledger().close(token);
        Ok(())
    }

    /// The `switchyard.writer` header's value for the task of `partition`.
    pub(super) fn writer(&mut self, partition: i32) -> Option<Arc<[u8]>> {
        let incarnation = self.engine.incarnation(partition)?;
        Some(self.writer_labels.of(partition, incarnation))
    }

    pub(super) async fn send_effects(&mut self, partition: i32, token: Token) {
        let mut effects = std::mem::take(&mut self.effects);
        let writer = self.writer(partition);
        let writer = writer.as_deref();
        for out in effects.outputs.drain(..).chain(effects.changelog.drain(..)) {
            delivery::send(&self.producer, &self.shared, token, &out, writer).await;
        }
        for (out, kind) in effects.dead_letters.drain(..) {
            let error = out
                .headers
                .iter()
                .find(|(k, _)| k == crate::engine::headers::ERROR)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            self.count_dead_letter(kind, &error);
            delivery::send(&self.producer, &self.shared, token, &out, writer).await;
        }
        // Keep the vectors' capacity for the next record.
        self.effects = effects;
    }

    /// Fire due wall-clock timers, task by task, each task's outputs on its own entry.
    pub(super) async fn punctuate_wall_clock(&mut self) -> Result<(), RunnerError> {
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
}

/// Punctuations have no input record; their entries never ask for one.
fn no_source(partition: i32) -> SourceRecord {
    SourceRecord::new("".into(), partition, -1, None, None, None, Vec::new())
}

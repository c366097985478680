//! What a processor is: its topology (inputs, outputs, stores, timers, error policies) and
//! the callbacks the runner makes.

use std::sync::Arc;
use std::time::Duration;

use apache_avro::types::Value;
use serde::de::DeserializeOwned;
use switchyard_schemas::records::{StoreValue, TopicRecord};
use switchyard_schemas::wire::SchemaCodec;

use crate::context::Context;

/// What to do with a record that cannot be decoded, or whose processing fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// Send the record, as it was, to the processor's dead-letter topic with headers saying
    /// why; count it; continue.
    DeadLetter,
    /// Stop the processor (after committing what came before the record).
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKind {
    /// Fires as wall-clock time passes.
    WallClock,
    /// Fires as stream time (the largest record timestamp seen by a task) passes.
    StreamTime,
}

/// A timer a topology declares; [`Processor::punctuate`] is called for each task when it fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerSpec {
    pub name: String,
    pub kind: TimerKind,
    pub interval: Duration,
}

impl TimerSpec {
    /// The interval in milliseconds (at least 1).
    pub fn interval_ms(&self) -> i64 {
        i64::try_from(self.interval.as_millis())
            .unwrap_or(i64::MAX)
            .max(1)
    }
}

/// A timer firing: which one, and the time (ms since the epoch) it fires for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    pub name: String,
    pub kind: TimerKind,
    pub time_ms: i64,
}

#[derive(Debug, Clone)]
pub(crate) struct TopicSpec {
    pub topic: String,
    pub schema_file: &'static str,
    pub type_name: &'static str,
    /// Checks that the declared type can be read from values of a schema.
    pub check: fn(&apache_avro::Schema) -> Result<(), String>,
}

/// Re-encodes a JSON value as a frame (schema id, codec) of the store's schema.
pub(crate) type FromJson =
    Arc<dyn Fn(&[u8], i32, &SchemaCodec) -> Result<Vec<u8>, String> + Send + Sync>;

/// A declared store: its name and the Avro schema of its values.
#[derive(Clone)]
pub struct StoreSpec {
    pub name: String,
    /// The values' Avro schema ([`StoreValue::avro_schema`]).
    pub schema: &'static str,
    pub type_name: &'static str,
    /// Re-encodes a value an older version wrote as JSON (before changelogs were Avro).
    pub(crate) from_json: FromJson,
}

impl std::fmt::Debug for StoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSpec")
            .field("name", &self.name)
            .field("type_name", &self.type_name)
            .finish()
    }
}

/// A processor's shape: what it reads, writes and keeps. The runner creates the consumer
/// group (group id = name), the dead-letter topic `<name>-dlq` and the changelog topics
/// `<name>-<store>-changelog` from it, and checks it against the topic catalog.
#[derive(Debug, Clone)]
pub struct Topology {
    pub(crate) name: String,
    pub(crate) inputs: Vec<TopicSpec>,
    pub(crate) outputs: Vec<TopicSpec>,
    pub(crate) stores: Vec<StoreSpec>,
    pub(crate) timers: Vec<TimerSpec>,
    pub(crate) on_undecodable: ErrorPolicy,
    pub(crate) on_error: ErrorPolicy,
    pub(crate) outputs_stand_alone: bool,
    pub(crate) linger: Option<std::time::Duration>,
}

impl Topology {
    pub fn new(name: impl Into<String>) -> Self {
        Topology {
            name: name.into(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            stores: Vec::new(),
            timers: Vec::new(),
            on_undecodable: ErrorPolicy::DeadLetter,
            on_error: ErrorPolicy::DeadLetter,
            outputs_stand_alone: false,
            linger: None,
        }
    }

    fn spec<T: TopicRecord>(topic: String) -> TopicSpec {
        TopicSpec {
            topic,
            schema_file: T::SCHEMA_FILE,
            type_name: std::any::type_name::<T>(),
            check: crate::codec::check_readable::<T>,
        }
    }

    /// Read `topic`, whose values are `T`.
    pub fn input<T: TopicRecord>(mut self, topic: impl Into<String>) -> Self {
        self.inputs.push(Self::spec::<T>(topic.into()));
        self
    }

    /// Read several topics whose values are all `T`.
    pub fn inputs<T: TopicRecord>(
        mut self,
        topics: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        for t in topics {
            self.inputs.push(Self::spec::<T>(t.into()));
        }
        self
    }

    /// Write `T` values to `topic`.
    pub fn output<T: TopicRecord>(mut self, topic: impl Into<String>) -> Self {
        self.outputs.push(Self::spec::<T>(topic.into()));
        self
    }

    /// Write `T` values to several topics.
    pub fn outputs<T: TopicRecord>(
        mut self,
        topics: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        for t in topics {
            self.outputs.push(Self::spec::<T>(t.into()));
        }
        self
    }

    /// A key-value store of `V` values, restored from `<name>-<store>-changelog` before
    /// processing. The changelog's values are Avro with `V`'s schema, registered as
    /// `<name>-<store>-changelog-value`.
    pub fn store<V: StoreValue>(self, name: impl Into<String>) -> Self {
        self.store_upgrading_json::<V>(name, |json| {
            serde_json::from_slice(json).map_err(|e| format!("not JSON of it: {e}"))
        })
    }

    /// [`Self::store`], for a store whose changelog an older version wrote as JSON of
    /// another shape: `upgrade` turns such a value into a `V` when the store is restored.
    pub fn store_upgrading_json<V: StoreValue>(
        mut self,
        name: impl Into<String>,
        upgrade: impl Fn(&[u8]) -> Result<V, String> + Send + Sync + 'static,
    ) -> Self {
        self.stores.push(StoreSpec {
            name: name.into(),
            schema: V::avro_schema(),
            type_name: std::any::type_name::<V>(),
            from_json: Arc::new(move |json, id, codec| codec.encode(id, &upgrade(json)?)),
        });
        self
    }

    /// A timer; `punctuate` is called with its name for every task each `interval`.
    pub fn timer(mut self, name: impl Into<String>, kind: TimerKind, interval: Duration) -> Self {
        self.timers.push(TimerSpec {
            name: name.into(),
            kind,
            interval,
        });
        self
    }

    /// What to do with input that cannot be decoded (default: dead-letter).
    pub fn on_undecodable(mut self, policy: ErrorPolicy) -> Self {
        self.on_undecodable = policy;
        self
    }

    /// What to do when `process` fails (default: dead-letter).
    pub fn on_error(mut self, policy: ErrorPolicy) -> Self {
        self.on_error = policy;
        self
    }

    /// How long the producer waits to fill a batch with this processor's outputs, unless
    /// `--linger-ms` says otherwise (the runner's default is 5 ms). Zero suits a processor
    /// on a path someone waits on: carrier-state (the switch an operator waits for),
    /// grafana-projector (the live view): at 5,000 readings/s 0 ms took the projector's
    /// p99 from 12 to 7 ms for a few % more broker CPU (`make bench`: latency). Not under
    /// exactly once, whose outputs are read at each commit anyway.
    pub fn linger(mut self, linger: std::time::Duration) -> Self {
        self.linger = Some(linger);
        self
    }

    pub(crate) fn linger_ms(&self) -> Option<u64> {
        self.linger
            .map(|l| u64::try_from(l.as_millis()).unwrap_or(u64::MAX))
    }

    /// Each output record stands alone: neither the order of the outputs to one key nor a
    /// rare duplicate after a producer retry matters (grafana-projector's readings carry
    /// their own time). The runner then produces without librdkafka's idempotence, which on
    /// a slow broker spares a busy wait (`switchyard_kafka::clients::unordered_producer_config`).
    /// Not honoured with a store (its changelog must keep order) or under exactly-once.
    pub fn outputs_stand_alone(mut self) -> Self {
        self.outputs_stand_alone = true;
        self
    }

    /// Whether outputs may be produced unordered: declared, and no changelog to keep in order.
    pub(crate) fn unordered_outputs(&self) -> bool {
        self.outputs_stand_alone && self.stores.is_empty()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn input_topics(&self) -> Vec<String> {
        self.inputs.iter().map(|s| s.topic.clone()).collect()
    }

    pub fn output_topics(&self) -> Vec<String> {
        self.outputs.iter().map(|s| s.topic.clone()).collect()
    }

    pub fn store_names(&self) -> Vec<String> {
        self.stores.iter().map(|s| s.name.clone()).collect()
    }

    pub fn stores(&self) -> &[StoreSpec] {
        &self.stores
    }

    /// The declared timers of one kind.
    pub fn timers_of(&self, kind: TimerKind) -> Vec<TimerSpec> {
        self.timers
            .iter()
            .filter(|t| t.kind == kind)
            .cloned()
            .collect()
    }

    pub fn dead_letter_topic(&self) -> String {
        format!("{}-dlq", self.name)
    }

    pub fn changelog_topic(&self, store: &str) -> String {
        format!("{}-{store}-changelog", self.name)
    }
}

/// Why processing one record (or one timer) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessError {
    /// The value is not what the topic's schema and the declared type say.
    #[error("undecodable: {0}")]
    Undecodable(String),
    /// The processor could not handle the record.
    #[error("{0}")]
    Failed(String),
    /// The record is well-formed but unusable here (e.g. a reading whose sensor time is
    /// implausible): always dead-lettered with this reason, whatever `on_error` says, since
    /// it is the data that is wrong, not the processor.
    #[error("invalid: {0}")]
    Invalid(String),
}

impl ProcessError {
    pub fn failed(reason: impl std::fmt::Display) -> Self {
        ProcessError::Failed(reason.to_string())
    }

    pub fn invalid(reason: impl std::fmt::Display) -> Self {
        ProcessError::Invalid(reason.to_string())
    }
}

/// One input record. Its value is decoded when asked for, straight into the requested type
/// when the record was written with the topic's catalog schema, through schema resolution
/// otherwise.
#[derive(Debug)]
pub struct Record<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// Record timestamp, ms since the epoch.
    pub timestamp_ms: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub headers: &'a [(String, Option<Vec<u8>>)],
    pub(crate) body: Body<'a>,
}

#[derive(Debug)]
pub(crate) enum Body<'a> {
    /// Written with the reader's own schema: deserialize directly.
    Direct {
        codec: &'a SchemaCodec,
        bytes: &'a [u8],
    },
    /// Written with another schema: already resolved to the reader's.
    Resolved(Value),
    /// No value: the key's deletion from a compacted topic.
    Tombstone,
}

impl Record<'_> {
    /// The value as its type. A tombstone has none: asked for one, it is undecodable (and
    /// handled as the topology's `on_undecodable` says), so check [`Self::is_tombstone`]
    /// first on an input where tombstones mean something.
    pub fn value<T: DeserializeOwned>(&self) -> Result<T, ProcessError> {
        match &self.body {
            Body::Direct { codec, bytes } => codec.decode::<T>(bytes),
            Body::Resolved(value) => apache_avro::from_value::<T>(value).map_err(|e| e.to_string()),
            Body::Tombstone => Err("the record has no value (tombstone)".to_string()),
        }
        .map_err(ProcessError::Undecodable)
    }

    /// Whether the record is a tombstone: its key deleted from a compacted topic.
    pub fn is_tombstone(&self) -> bool {
        matches!(self.body, Body::Tombstone)
    }

    /// The key as UTF-8 (keys are strings throughout Switchyard).
    pub fn key_str(&self) -> Option<&str> {
        self.key.and_then(|k| std::str::from_utf8(k).ok())
    }
}

/// A stream processor. Implement this and hand it to [`crate::run`]; test it with
/// [`crate::TestDriver`].
pub trait Processor: Send + 'static {
    /// What the processor reads, writes and keeps.
    fn topology(&self) -> Topology;

    /// Handle one input record: read stores, write stores, send outputs. Outputs and store
    /// writes take effect only if this returns `Ok`.
    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError>;

    /// A declared timer fired for the task (partition) `ctx` is bound to.
    fn punctuate(&mut self, _timer: &Timer, _ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_unordered_only_when_declared_and_no_changelog_needs_order() {
        let plain = Topology::new("p");
        assert!(!plain.unordered_outputs());
        let stand_alone = Topology::new("p").outputs_stand_alone();
        assert!(stand_alone.unordered_outputs());
        let with_store = Topology::new("p")
            .store::<i64>("counts")
            .outputs_stand_alone();
        assert!(!with_store.unordered_outputs());
    }
}

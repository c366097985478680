//! What a processor can do while handling a record or a timer: send outputs, use stores,
//! read the task's clocks.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use switchyard_schemas::records::TopicRecord;

use crate::store::KeyValueStore;
use switchyard_schemas::wire::SchemaCodec;

use crate::ProcessError;

/// A record to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub topic: String,
    /// Explicit partition (changelogs: the task's partition); `None` lets the key decide.
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub timestamp_ms: Option<i64>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Per output topic: the registered schema id and the schema to encode with.
#[derive(Debug, Clone, Default)]
pub(crate) struct Encoders {
    pub(crate) by_topic: HashMap<String, (i32, Arc<SchemaCodec>, &'static str)>,
}

/// Handed to [`crate::Processor::process`] and [`crate::Processor::punctuate`].
pub struct Context<'a> {
    pub(crate) processor: &'a str,
    pub(crate) partition: i32,
    pub(crate) stream_time_ms: i64,
    pub(crate) wall_clock_ms: i64,
    pub(crate) stores: &'a mut BTreeMap<String, KeyValueStore>,
    pub(crate) outputs: &'a mut Vec<Output>,
    pub(crate) encoders: &'a Encoders,
    pub(crate) counts: &'a mut Vec<&'static str>,
}

impl Context<'_> {
    /// Send `value` to a declared output topic, keyed by `key`. `timestamp_ms` sets the record
    /// timestamp (ms since the epoch); `None` lets the producer stamp it.
    pub fn send<T: TopicRecord>(
        &mut self,
        topic: &str,
        key: &str,
        value: &T,
        timestamp_ms: Option<i64>,
    ) -> Result<(), ProcessError> {
        let (id, codec, file) = self.encoders.by_topic.get(topic).ok_or_else(|| {
            ProcessError::failed(format!(
                "{} sends to {topic}, which its topology does not declare as an output",
                self.processor
            ))
        })?;
        if *file != T::SCHEMA_FILE {
            return Err(ProcessError::failed(format!(
                "{} sends a {} ({}) to {topic}, which carries {file}",
                self.processor,
                std::any::type_name::<T>(),
                T::SCHEMA_FILE
            )));
        }
        let payload = codec
            .encode(*id, value)
            .map_err(|e| ProcessError::failed(format!("encoding for {topic}: {e}")))?;
        self.outputs.push(Output {
            topic: topic.to_string(),
            partition: None,
            key: Some(key.as_bytes().to_vec()),
            payload: Some(payload),
            timestamp_ms,
            headers: Vec::new(),
        });
        Ok(())
    }

    /// A declared store of this task.
    pub fn store(&mut self, name: &str) -> Result<&mut KeyValueStore, ProcessError> {
        let processor = self.processor;
        self.stores
            .get_mut(name)
            .ok_or_else(|| ProcessError::failed(format!("{processor} has no store named {name}")))
    }

    /// Count an event worth watching that is not an error (e.g. a reading skipped on
    /// purpose); exported as `switchyard_processor_events_total{event}`.
    pub fn count(&mut self, event: &'static str) {
        self.counts.push(event);
    }

    /// The task's partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The largest record timestamp this task has seen (ms since the epoch).
    pub fn stream_time_ms(&self) -> i64 {
        self.stream_time_ms
    }

    /// Wall-clock time (ms since the epoch; the test driver's clock under test).
    pub fn wall_clock_ms(&self) -> i64 {
        self.wall_clock_ms
    }
}

//! Run a processor with no broker and no registry, like Kafka Streams' TopologyTestDriver:
//! pipe typed records in, read typed records out, inspect stores, move the clocks.
//!
//! The driver goes through the same engine as the Kafka runner (Confluent framing, schema
//! resolution, staging, error policies, timers); only the transport differs.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use switchyard_schemas::records::TopicRecord;
use switchyard_schemas::wire::{split_frame, SchemaCodec};
use switchyard_schemas::Catalog;

use crate::context::Output;
use crate::engine::{Effects, Engine, FailureKind, Incoming, Stopped, TopologyError};
use crate::store::KeyValueStore;
use crate::Processor;

/// A record read back from an output topic.
#[derive(Debug, Clone, PartialEq)]
pub struct TestRecord<T> {
    pub key: Option<String>,
    pub value: T,
    pub timestamp_ms: Option<i64>,
    pub partition: Option<i32>,
}

/// A record the processor dead-lettered.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub kind: FailureKind,
    pub headers: HashMap<String, String>,
}

pub struct TestDriver<P: Processor> {
    engine: Engine<P>,
    catalog: Catalog,
    /// Local stand-in for the registry: one id per schema file.
    ids: HashMap<&'static str, i32>,
    schemas: HashMap<i32, Arc<SchemaCodec>>,
    partitions: i32,
    offsets: HashMap<(String, i32), i64>,
    wall_clock_ms: i64,
    outputs: HashMap<String, VecDeque<Output>>,
    dead_letters: VecDeque<(Output, FailureKind)>,
    changelog: Vec<Output>,
    timer_failures: Vec<String>,
    counts: HashMap<&'static str, u64>,
}

impl<P: Processor> TestDriver<P> {
    /// A driver over the built-in catalog with one partition per topic.
    pub fn new(processor: P) -> Result<Self, TopologyError> {
        let catalog = Catalog::embedded().map_err(|e| TopologyError::Catalog(e.to_string()))?;
        Self::with_catalog(processor, catalog, 1)
    }

    /// A driver over `catalog`, spreading keys over `partitions` tasks.
    pub fn with_catalog(
        processor: P,
        catalog: Catalog,
        partitions: i32,
    ) -> Result<Self, TopologyError> {
        let mut engine = Engine::new(processor, &catalog)?;
        let mut ids = HashMap::new();
        let mut schemas = HashMap::new();
        let topics: Vec<String> = engine
            .topology()
            .input_topics()
            .into_iter()
            .chain(engine.topology().output_topics())
            .collect();
        for topic in topics {
            let (Some(file), Some(schema)) =
                (catalog.schema_file(&topic), engine.schema_of(&topic))
            else {
                continue;
            };
            let file: &'static str = switchyard_schemas::SCHEMA_FILES
                .iter()
                .find(|(f, _)| *f == file)
                .map(|(f, _)| *f)
                .unwrap_or("custom");
            let next = ids.len() as i32 + 1;
            let id = *ids.entry(file).or_insert(next);
            schemas.insert(id, schema.clone());
            engine.add_writer(id, schema);
            engine.set_output_id(&topic, id);
        }
        // Stores get ids after the topics', as a registry would give them.
        let first_store_id = ids.len() as i32 + 1;
        for (id, store) in (first_store_id..).zip(engine.topology().store_names()) {
            let Some(schema) = engine.store_schema(&store) else {
                continue;
            };
            schemas.insert(id, schema.clone());
            engine.add_writer(id, schema);
            engine.set_store_id(&store, id);
        }
        for p in 0..partitions.max(1) {
            let stores = engine.empty_stores();
            engine.assign(p, stores);
        }
        let wall_clock_ms = 1_700_000_000_000;
        engine.start_wall_clock(wall_clock_ms);
        Ok(TestDriver {
            engine,
            catalog,
            ids,
            schemas,
            partitions: partitions.max(1),
            offsets: HashMap::new(),
            wall_clock_ms,
            outputs: HashMap::new(),
            dead_letters: VecDeque::new(),
            changelog: Vec::new(),
            timer_failures: Vec::new(),
            counts: HashMap::new(),
        })
    }

    /// The task a key lands in: the partition librdkafka's default partitioner
    /// (`consistent_random`: CRC-32 of the key modulo the partition count) gives it, which is
    /// what every Switchyard producer uses, so a test sees the same grouping as production.
    pub fn partition_for(&self, key: &str) -> i32 {
        default_partition(key.as_bytes(), self.partitions)
    }

    /// Pipe a typed value into an input topic.
    pub fn pipe<T: TopicRecord>(
        &mut self,
        topic: &str,
        key: &str,
        value: &T,
        timestamp_ms: i64,
    ) -> Result<(), Stopped> {
        let file = self.catalog.schema_file(topic).unwrap_or_default();
        let id = self.ids.get(file).copied().unwrap_or(0);
        let schema = self.schemas.get(&id).cloned();
        let payload = match schema {
            Some(codec) => codec
                .encode(id, value)
                .unwrap_or_else(|e| panic!("test value does not fit {topic}: {e}")),
            None => panic!("{topic} is not an input or output of this processor"),
        };
        self.pipe_raw(topic, Some(key.as_bytes()), Some(&payload), timestamp_ms)
    }

    /// Pipe raw bytes (e.g. a poison record) into an input topic.
    pub fn pipe_raw(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        timestamp_ms: i64,
    ) -> Result<(), Stopped> {
        let partition = key.map_or(0, |k| self.partition_for(&String::from_utf8_lossy(k)));
        let offset = self
            .offsets
            .entry((topic.to_string(), partition))
            .or_insert(0);
        let incoming = Incoming {
            topic,
            partition,
            offset: *offset,
            timestamp_ms: Some(timestamp_ms),
            key,
            headers: Vec::new(),
            payload,
        };
        *offset += 1;
        let mut effects = Effects::default();
        let result = self
            .engine
            .handle(&incoming, self.wall_clock_ms, &mut effects);
        self.absorb(effects);
        result
    }

    /// Move wall-clock time forward, firing wall-clock timers that come due.
    pub fn advance_wall_clock(&mut self, by: Duration) -> Result<(), Stopped> {
        self.wall_clock_ms += i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        let mut effects = Effects::default();
        let result = self
            .engine
            .punctuate_wall_clock(self.wall_clock_ms, &mut effects);
        self.absorb(effects);
        result
    }

    pub fn wall_clock_ms(&self) -> i64 {
        self.wall_clock_ms
    }

    fn absorb(&mut self, effects: Effects) {
        for out in effects.outputs {
            self.outputs
                .entry(out.topic.clone())
                .or_default()
                .push_back(out);
        }
        self.dead_letters.extend(effects.dead_letters);
        self.changelog.extend(effects.changelog);
        self.timer_failures.extend(effects.timer_failures);
        for event in effects.counts {
            *self.counts.entry(event).or_default() += 1;
        }
    }

    /// How often the processor counted `event` with `ctx.count`.
    pub fn count(&self, event: &str) -> u64 {
        self.counts.get(event).copied().unwrap_or(0)
    }

    /// Take every record sent to `topic` so far, decoded as `T`.
    pub fn read_output<T: DeserializeOwned>(&mut self, topic: &str) -> Vec<TestRecord<T>> {
        let records = self.outputs.remove(topic).unwrap_or_default();
        records
            .into_iter()
            .map(|out| {
                let payload = out.payload.unwrap_or_default();
                let value = split_frame(&payload)
                    .and_then(|(id, body)| {
                        let codec = self
                            .schemas
                            .get(&id)
                            .ok_or_else(|| format!("unknown schema id {id}"))?;
                        codec.decode::<T>(body)
                    })
                    .unwrap_or_else(|e| panic!("output on {topic} does not decode: {e}"));
                TestRecord {
                    key: out.key.map(|k| String::from_utf8_lossy(&k).into_owned()),
                    value,
                    timestamp_ms: out.timestamp_ms,
                    partition: out.partition,
                }
            })
            .collect()
    }

    /// Take every dead-lettered record so far.
    pub fn dead_letters(&mut self) -> Vec<DeadLetter> {
        self.dead_letters
            .drain(..)
            .map(|(out, kind)| DeadLetter {
                key: out.key,
                payload: out.payload,
                kind,
                headers: out
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                    .collect(),
            })
            .collect()
    }

    /// Failures of timers so far (they have no record to dead-letter).
    pub fn timer_failures(&mut self) -> Vec<String> {
        std::mem::take(&mut self.timer_failures)
    }

    /// A task's store, to inspect.
    pub fn store(&self, partition: i32, name: &str) -> Option<&KeyValueStore> {
        self.engine.store(partition, name)
    }

    /// Replace the processor with a fresh one whose stores are restored from everything the
    /// old one wrote to its changelogs, as a restarted instance would be.
    pub fn restart(self, processor: P) -> Result<Self, TopologyError> {
        let changelog = self.changelog;
        let mut fresh = Self::with_catalog(processor, self.catalog, self.partitions)?;
        fresh.wall_clock_ms = self.wall_clock_ms;
        fresh.engine.start_wall_clock(self.wall_clock_ms);
        fresh.offsets = self.offsets;
        for p in 0..fresh.partitions {
            let mut stores = fresh.engine.empty_stores();
            for out in changelog.iter().filter(|out| out.partition == Some(p)) {
                let store = fresh
                    .engine
                    .topology()
                    .store_names()
                    .iter()
                    .find(|s| fresh.engine.topology().changelog_topic(s) == out.topic)
                    .cloned();
                if let (Some(store), Some(key)) = (store, &out.key) {
                    fresh.engine.restore(
                        &mut stores,
                        &store,
                        String::from_utf8_lossy(key).into_owned(),
                        out.payload.clone(),
                    );
                }
            }
            // Started again, as a restarted instance starts its tasks: once restored.
            fresh.engine.revoke(p);
            fresh.engine.assign(p, stores);
        }
        fresh.changelog = changelog;
        Ok(fresh)
    }
}

/// The partition librdkafka's default partitioner (`consistent_random`) gives a non-empty key:
/// CRC-32 of the key modulo the partition count.
pub fn default_partition(key: &[u8], partitions: i32) -> i32 {
    let partitions = u32::try_from(partitions.max(1)).unwrap_or(1);
    (crc32fast::hash(key) % partitions) as i32
}

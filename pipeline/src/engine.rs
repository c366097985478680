//! The synchronous core shared by the Kafka runner and the test driver: decode a record,
//! call the processor, stage its outputs and store writes, apply the error policies, and
//! fire timers. The runner and the driver only move bytes in and out.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use switchyard_schemas::wire::{split_frame, ResolvingReader, SchemaCodec};
use switchyard_schemas::Catalog;

use crate::context::{Context, Encoders, Output};
use crate::processor::{Body, ErrorPolicy, Processor, Record, TimerKind, Topology};
use crate::store::{KeyValueStore, StoreCodec};
use crate::{ProcessError, Timer};

/// Header names on dead-lettered records (defined with the other Kafka conventions, so that
/// the CLI's `dlq` commands read what the runner writes).
pub use switchyard_kafka::dead_letter as headers;

/// The header the runner puts on every record it produces: `<instance>#<n>`, the instance
/// ([`crate::RunnerConfig::instance_id`]) and the number of the task on it that wrote the
/// record ([`Engine::incarnation`]). In a partition's log each writer's records run
/// together: one that shows up again after another writer's is a task that kept writing
/// after its partition moved on.
pub const WRITER_HEADER: &str = "switchyard.writer";

/// Why a record or timer failed, as counted in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Undecodable,
    Failed,
    /// The broker (or the producer) refused one of the record's outputs for good.
    Refused,
    /// The processor found the record unusable ([`ProcessError::Invalid`]).
    Invalid,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Undecodable => "undecodable",
            FailureKind::Failed => "failed",
            FailureKind::Refused => "refused",
            FailureKind::Invalid => "invalid",
        }
    }
}

/// An input record as bytes.
#[derive(Debug, Clone)]
pub struct Incoming<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub payload: Option<&'a [u8]>,
}

/// What handling records and timers produced, to be sent before offsets are committed.
#[derive(Debug, Default)]
pub struct Effects {
    pub outputs: Vec<Output>,
    pub changelog: Vec<Output>,
    pub dead_letters: Vec<(Output, FailureKind)>,
    /// Failures not tied to a record (timers), logged and counted.
    pub timer_failures: Vec<String>,
    /// Events the processor counted with `ctx.count` (kept only when its callback succeeded).
    pub counts: Vec<&'static str>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty() && self.changelog.is_empty() && self.dead_letters.is_empty()
    }
}

/// What restoring one changelog record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// Kept as written (the store's current schema, or a deletion).
    AsWritten,
    /// Written with an older schema (or as JSON) and converted to the current one.
    Converted,
    /// Could not be converted; kept as written, and reading its key fails.
    Unreadable(String),
}

/// The processor must stop: a record or timer failed under [`ErrorPolicy::Stop`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{processor} stopped at {topic}[{partition}]@{offset}: {reason}")]
pub struct Stopped {
    pub processor: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("{processor}: topic {topic} is not in the catalog (schemas/topics.toml)")]
    UnknownTopic { processor: String, topic: String },
    #[error("{processor}: declares {topic} as {type_name} ({declared}), but the catalog says {topic} carries {actual}")]
    WrongSchema {
        processor: String,
        topic: String,
        type_name: String,
        declared: String,
        actual: String,
    },
    #[error("{processor}: {topic}: {reason}")]
    Unreadable {
        processor: String,
        topic: String,
        reason: String,
    },
    #[error("{processor}: the catalog has no dead-letter topic {topic}: add it to schemas/topics.toml (role dead-letter, value_format raw)")]
    NoDeadLetterTopic { processor: String, topic: String },
    #[error("catalog: {0}")]
    Catalog(String),
    #[error("{0}")]
    Schema(String),
}

/// A task's stores, restored before the task starts.
pub struct TaskStores(BTreeMap<String, KeyValueStore>);

struct Task {
    /// Which of this engine's tasks it is (1 for the first created, counting every
    /// partition): a partition that goes and comes back gets a new number.
    incarnation: u64,
    stores: BTreeMap<String, KeyValueStore>,
    stream_time_ms: i64,
    next_stream_fire: HashMap<String, i64>,
}

pub struct Engine<P: Processor> {
    processor: P,
    pub(crate) topology: Topology,
    readers: HashMap<String, Arc<SchemaCodec>>,
    writers: HashMap<i32, Arc<SchemaCodec>>,
    /// Readers for records written with another schema than their topic's, built once.
    resolving: HashMap<(i32, String), ResolvingReader>,
    pub(crate) encoders: Encoders,
    /// Per store: its value type, schema and registered id (shared by every task's copy).
    store_codecs: BTreeMap<String, Arc<StoreCodec>>,
    tasks: BTreeMap<i32, Task>,
    tasks_created: u64,
    next_wall_fire: HashMap<String, i64>,
}

impl<P: Processor> Engine<P> {
    /// Check the processor's topology against the catalog. Output schema ids are filled in
    /// by the caller ([`Engine::set_output_id`]) once registered.
    pub fn new(processor: P, catalog: &Catalog) -> Result<Self, TopologyError> {
        let topology = processor.topology();
        let mut readers = HashMap::new();
        let mut encoders = Encoders::default();
        let mut parsed: HashMap<&str, Arc<SchemaCodec>> = HashMap::new();
        for (spec, is_input) in topology
            .inputs
            .iter()
            .map(|s| (s, true))
            .chain(topology.outputs.iter().map(|s| (s, false)))
        {
            let unknown = || TopologyError::UnknownTopic {
                processor: topology.name.clone(),
                topic: spec.topic.clone(),
            };
            let actual = catalog.schema_file(&spec.topic).ok_or_else(unknown)?;
            if actual != spec.schema_file {
                return Err(TopologyError::WrongSchema {
                    processor: topology.name.clone(),
                    topic: spec.topic.clone(),
                    type_name: spec.type_name.to_string(),
                    declared: spec.schema_file.to_string(),
                    actual: actual.to_string(),
                });
            }
            let text = catalog.value_schema(&spec.topic).ok_or_else(unknown)?;
            // One codec per schema: topics sharing a schema share its codec, so a writer
            // id registered for one of them reads the others' records directly too.
            let schema = match parsed.get(text) {
                Some(schema) => Arc::clone(schema),
                None => {
                    let schema = SchemaCodec::parse(text).map_err(TopologyError::Schema)?;
                    parsed.insert(text, Arc::clone(&schema));
                    schema
                }
            };
            if is_input {
                (spec.check)(schema.schema()).map_err(|reason| TopologyError::Unreadable {
                    processor: topology.name.clone(),
                    topic: spec.topic.clone(),
                    reason,
                })?;
                readers.insert(spec.topic.clone(), schema);
            } else {
                encoders
                    .by_topic
                    .insert(spec.topic.clone(), (0, schema, spec.schema_file));
            }
        }
        let dlq = topology.dead_letter_topic();
        let wants_dlq = topology.on_undecodable == ErrorPolicy::DeadLetter
            || topology.on_error == ErrorPolicy::DeadLetter;
        if wants_dlq && catalog.topic(&dlq).is_none() {
            return Err(TopologyError::NoDeadLetterTopic {
                processor: topology.name.clone(),
                topic: dlq,
            });
        }
        let mut store_codecs = BTreeMap::new();
        for spec in &topology.stores {
            let codec = SchemaCodec::parse(spec.schema).map_err(|e| {
                TopologyError::Schema(format!(
                    "{}: store {} ({}): its schema does not parse: {e}",
                    topology.name, spec.name, spec.type_name
                ))
            })?;
            store_codecs.insert(
                spec.name.clone(),
                Arc::new(StoreCodec {
                    name: spec.name.clone(),
                    type_name: spec.type_name,
                    id: 0,
                    codec,
                }),
            );
        }
        Ok(Engine {
            processor,
            topology,
            readers,
            writers: HashMap::new(),
            resolving: HashMap::new(),
            encoders,
            store_codecs,
            tasks: BTreeMap::new(),
            tasks_created: 0,
            next_wall_fire: HashMap::new(),
        })
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The catalog schema text of an input or output topic (for registration).
    pub fn schema_of(&self, topic: &str) -> Option<Arc<SchemaCodec>> {
        self.readers
            .get(topic)
            .cloned()
            .or_else(|| self.encoders.by_topic.get(topic).map(|(_, s, _)| s.clone()))
    }

    pub fn set_output_id(&mut self, topic: &str, id: i32) {
        if let Some(entry) = self.encoders.by_topic.get_mut(topic) {
            entry.0 = id;
        }
    }

    /// A store's value schema (for registration under its changelog's subject).
    pub fn store_schema(&self, store: &str) -> Option<Arc<SchemaCodec>> {
        self.store_codecs.get(store).map(|c| c.codec.clone())
    }

    /// The id a store's values are written with; set before any task is assigned.
    pub fn set_store_id(&mut self, store: &str, id: i32) {
        if let Some(codec) = self.store_codecs.get_mut(store) {
            Arc::make_mut(codec).id = id;
        }
    }

    /// The schema ids of changelog values that are neither the store's own schema nor a
    /// known writer schema: the runner fetches them before restoring.
    pub fn unknown_store_writers<'v>(
        &self,
        values: impl IntoIterator<Item = &'v [u8]>,
    ) -> Vec<i32> {
        let mut ids: Vec<i32> = values
            .into_iter()
            .filter_map(|v| split_frame(v).ok().map(|(id, _)| id))
            .filter(|id| !self.writers.contains_key(id))
            .filter(|id| !self.store_codecs.values().any(|c| c.id == *id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    pub fn knows_writer(&self, id: i32) -> bool {
        self.writers.contains_key(&id)
    }

    /// The writer schema of id `id`. One identical to an input topic's (the same schema
    /// fetched by another id, or parsed again) is taken as that topic's codec, so its
    /// records are read directly rather than through schema resolution.
    pub fn add_writer(&mut self, id: i32, schema: Arc<SchemaCodec>) {
        let same = self
            .readers
            .values()
            .find(|reader| Arc::ptr_eq(reader, &schema) || reader.same_schema(&schema))
            .cloned();
        self.writers.insert(id, same.unwrap_or(schema));
    }

    pub fn assigned(&self) -> Vec<i32> {
        self.tasks.keys().copied().collect()
    }

    /// Whether a task exists for `partition`.
    pub fn owns(&self, partition: i32) -> bool {
        self.tasks.contains_key(&partition)
    }

    /// The task's number among every task this engine created (see [`Engine::assign`]).
    pub fn incarnation(&self, partition: i32) -> Option<u64> {
        self.tasks.get(&partition).map(|t| t.incarnation)
    }

    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// Empty stores for a task, to restore from the changelogs before the task starts
    /// ([`Engine::restore`], then [`Engine::assign`]).
    pub fn empty_stores(&self) -> TaskStores {
        TaskStores(
            self.topology
                .stores
                .iter()
                .filter_map(|s| {
                    let codec = self.store_codecs.get(&s.name)?.clone();
                    Some((s.name.clone(), KeyValueStore::new(codec)))
                })
                .collect(),
        )
    }

    /// Start the task of a partition with its restored stores: the one place tasks are
    /// created. A partition that already has a task keeps it.
    pub fn assign(&mut self, partition: i32, stores: TaskStores) {
        if self.tasks.contains_key(&partition) {
            return;
        }
        let stores = stores.0;
        self.tasks_created += 1;
        self.tasks.insert(
            partition,
            Task {
                incarnation: self.tasks_created,
                stores,
                stream_time_ms: i64::MIN,
                next_stream_fire: HashMap::new(),
            },
        );
    }

    /// Drop a task and its stores (the changelog keeps them for the next owner).
    pub fn revoke(&mut self, partition: i32) {
        self.tasks.remove(&partition);
    }

    /// Apply one changelog record to a store of a task not started yet. A value written
    /// with an older schema of the store (or as JSON, before changelogs were Avro) is
    /// converted to the current one first; one that cannot be is kept as it is, so nothing
    /// is lost: reading that key then fails, and the record that reads it is dead-lettered
    /// with the reason.
    pub fn restore(
        &mut self,
        stores: &mut TaskStores,
        store: &str,
        key: String,
        value: Option<Vec<u8>>,
    ) -> Restored {
        let Some(codec) = self.store_codecs.get(store).cloned() else {
            return Restored::Unreadable(format!("no store {store}"));
        };
        let (value, outcome) = match value {
            None => (None, Restored::AsWritten),
            Some(bytes) => match self.current_form(&codec, &bytes) {
                Ok(Some(converted)) => (Some(converted), Restored::Converted),
                Ok(None) => (Some(bytes), Restored::AsWritten),
                Err(reason) => (Some(bytes), Restored::Unreadable(reason)),
            },
        };
        if let Some(s) = stores.0.get_mut(store) {
            s.restore(key, value);
        }
        outcome
    }

    /// `None` when `bytes` is already a frame of the store's schema; else the converted frame.
    fn current_form(
        &mut self,
        codec: &StoreCodec,
        bytes: &[u8],
    ) -> Result<Option<Vec<u8>>, String> {
        if bytes.first() != Some(&0) {
            let spec = self
                .topology
                .stores
                .iter()
                .find(|s| s.name == codec.name)
                .ok_or("store vanished")?;
            return (spec.from_json)(bytes, codec.id, &codec.codec).map(Some);
        }
        let (id, body) = split_frame(bytes)?;
        if id == codec.id {
            return Ok(None);
        }
        let writer = self
            .writers
            .get(&id)
            .ok_or_else(|| format!("schema id {id} is unknown to the registry"))?
            .clone();
        let key = (id, format!("store {}", codec.name));
        if !self.resolving.contains_key(&key) {
            self.resolving
                .insert(key.clone(), ResolvingReader::new(&writer, &codec.codec)?);
        }
        let value = self
            .resolving
            .get(&key)
            .ok_or("resolver vanished")?
            .read_value(body)?;
        codec.codec.encode_value(codec.id, value).map(Some)
    }

    pub fn store(&self, partition: i32, name: &str) -> Option<&KeyValueStore> {
        self.tasks.get(&partition)?.stores.get(name)
    }

    /// Handle one input record; its effects are appended to `effects`.
    pub fn handle(
        &mut self,
        incoming: &Incoming<'_>,
        wall_clock_ms: i64,
        effects: &mut Effects,
    ) -> Result<(), Stopped> {
        if !self.owns(incoming.partition) {
            return Err(Stopped {
                processor: self.topology.name.clone(),
                topic: incoming.topic.to_string(),
                partition: incoming.partition,
                offset: incoming.offset,
                reason: "no task for this partition: records are handled only by a task started with its restored stores".into(),
            });
        }
        let outcome = self.process_one(incoming, wall_clock_ms, effects);
        if let Err((kind, reason)) = outcome {
            let policy = match kind {
                FailureKind::Undecodable => self.topology.on_undecodable,
                FailureKind::Failed | FailureKind::Refused => self.topology.on_error,
                FailureKind::Invalid => ErrorPolicy::DeadLetter,
            };
            match policy {
                ErrorPolicy::Stop => {
                    return Err(Stopped {
                        processor: self.topology.name.clone(),
                        topic: incoming.topic.to_string(),
                        partition: incoming.partition,
                        offset: incoming.offset,
                        reason,
                    })
                }
                ErrorPolicy::DeadLetter => effects
                    .dead_letters
                    .push((self.dead_letter(incoming, kind, &reason), kind)),
            }
        }
        self.fire_stream_timers(incoming.partition, wall_clock_ms, effects)
    }

    /// Decode and process one record: Ok, or the failure to apply a policy to.
    fn process_one(
        &mut self,
        incoming: &Incoming<'_>,
        wall_clock_ms: i64,
        effects: &mut Effects,
    ) -> Result<(), (FailureKind, String)> {
        let Engine {
            processor,
            topology,
            readers,
            writers,
            resolving,
            encoders,
            tasks,
            ..
        } = self;
        let body = decode(readers, writers, resolving, incoming)
            .map_err(|e| (FailureKind::Undecodable, e))?;
        let record = Record {
            topic: incoming.topic,
            partition: incoming.partition,
            offset: incoming.offset,
            timestamp_ms: incoming.timestamp_ms,
            key: incoming.key,
            headers: &incoming.headers,
            body,
        };
        let Some(task) = tasks.get_mut(&incoming.partition) else {
            return Ok(());
        };
        if let Some(ts) = incoming.timestamp_ms {
            task.stream_time_ms = task.stream_time_ms.max(ts);
        }
        run_staged(
            topology,
            encoders,
            incoming.partition,
            task,
            wall_clock_ms,
            effects,
            |ctx| processor.process(&record, ctx),
        )
        .map_err(|e| match e {
            ProcessError::Undecodable(reason) => (FailureKind::Undecodable, reason),
            ProcessError::Failed(reason) => (FailureKind::Failed, reason),
            ProcessError::Invalid(reason) => (FailureKind::Invalid, reason),
        })
    }

    /// The dead-letter record for an input: the record as it was, with headers saying why.
    pub(crate) fn dead_letter(
        &self,
        incoming: &Incoming<'_>,
        kind: FailureKind,
        reason: &str,
    ) -> Output {
        let mut h: Vec<(String, Vec<u8>)> = incoming
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()))
            .collect();
        h.extend([
            (
                headers::TOPIC.to_string(),
                incoming.topic.as_bytes().to_vec(),
            ),
            (
                headers::PARTITION.to_string(),
                incoming.partition.to_string().into_bytes(),
            ),
            (
                headers::OFFSET.to_string(),
                incoming.offset.to_string().into_bytes(),
            ),
            (
                headers::PROCESSOR.to_string(),
                self.topology.name.as_bytes().to_vec(),
            ),
            (
                headers::REASON.to_string(),
                kind.as_str().as_bytes().to_vec(),
            ),
            (
                headers::EXCEPTION.to_string(),
                format!("switchyard.{}", kind.as_str()).into_bytes(),
            ),
            (headers::ERROR.to_string(), reason.as_bytes().to_vec()),
        ]);
        if let Some(ts) = incoming.timestamp_ms {
            h.push((headers::TIMESTAMP.to_string(), ts.to_string().into_bytes()));
        }
        Output {
            topic: self.topology.dead_letter_topic(),
            partition: None,
            key: incoming.key.map(<[u8]>::to_vec),
            payload: incoming.payload.map(<[u8]>::to_vec),
            timestamp_ms: incoming.timestamp_ms,
            headers: h,
        }
    }

    fn fire_stream_timers(
        &mut self,
        partition: i32,
        wall_clock_ms: i64,
        effects: &mut Effects,
    ) -> Result<(), Stopped> {
        let timers = self.topology.timers_of(TimerKind::StreamTime);
        for spec in timers {
            let interval = spec.interval_ms();
            let Some(task) = self.tasks.get_mut(&partition) else {
                return Ok(());
            };
            let now = task.stream_time_ms;
            if now == i64::MIN {
                continue;
            }
            let next = *task
                .next_stream_fire
                .entry(spec.name.clone())
                .or_insert((now / interval + 1) * interval);
            if now >= next {
                task.next_stream_fire
                    .insert(spec.name.clone(), (now / interval + 1) * interval);
                let timer = Timer {
                    name: spec.name.clone(),
                    kind: TimerKind::StreamTime,
                    time_ms: now,
                };
                self.punctuate(partition, &timer, wall_clock_ms, effects)?;
            }
        }
        Ok(())
    }

    /// Anchor the wall-clock timers: each first fires one interval after `now_ms`.
    pub fn start_wall_clock(&mut self, now_ms: i64) {
        for spec in self
            .topology
            .timers
            .iter()
            .filter(|t| t.kind == TimerKind::WallClock)
        {
            let interval = spec.interval_ms();
            self.next_wall_fire
                .insert(spec.name.clone(), now_ms + interval);
        }
    }

    /// The wall-clock timers due at `wall_clock_ms`; each is scheduled again one interval on.
    pub fn due_wall_clock(&mut self, wall_clock_ms: i64) -> Vec<Timer> {
        let mut due = Vec::new();
        for spec in self.topology.timers_of(TimerKind::WallClock) {
            let interval = spec.interval_ms();
            let next = *self
                .next_wall_fire
                .entry(spec.name.clone())
                .or_insert(wall_clock_ms + interval);
            if wall_clock_ms < next {
                continue;
            }
            self.next_wall_fire
                .insert(spec.name.clone(), wall_clock_ms + interval);
            due.push(Timer {
                name: spec.name,
                kind: TimerKind::WallClock,
                time_ms: wall_clock_ms,
            });
        }
        due
    }

    /// Fire the wall-clock timers that are due at `wall_clock_ms`, for every task.
    pub fn punctuate_wall_clock(
        &mut self,
        wall_clock_ms: i64,
        effects: &mut Effects,
    ) -> Result<(), Stopped> {
        for timer in self.due_wall_clock(wall_clock_ms) {
            for partition in self.assigned() {
                self.punctuate(partition, &timer, wall_clock_ms, effects)?;
            }
        }
        Ok(())
    }

    /// Fire one timer for one task.
    pub fn punctuate(
        &mut self,
        partition: i32,
        timer: &Timer,
        wall_clock_ms: i64,
        effects: &mut Effects,
    ) -> Result<(), Stopped> {
        let Engine {
            processor,
            topology,
            encoders,
            tasks,
            ..
        } = self;
        let Some(task) = tasks.get_mut(&partition) else {
            return Ok(());
        };
        match run_staged(
            topology,
            encoders,
            partition,
            task,
            wall_clock_ms,
            effects,
            |ctx| processor.punctuate(timer, ctx),
        ) {
            Ok(()) => Ok(()),
            Err(e) => {
                if topology.on_error == ErrorPolicy::Stop {
                    return Err(Stopped {
                        processor: topology.name.clone(),
                        topic: format!("timer {}", timer.name),
                        partition,
                        offset: -1,
                        reason: e.to_string(),
                    });
                }
                effects.timer_failures.push(format!(
                    "timer {} on partition {partition}: {e}",
                    timer.name
                ));
                Ok(())
            }
        }
    }
}

/// Run one processor callback for a task with its outputs, store writes and counts staged:
/// they join `effects` if it succeeds and are dropped if it fails.
fn run_staged(
    topology: &Topology,
    encoders: &Encoders,
    partition: i32,
    task: &mut Task,
    wall_clock_ms: i64,
    effects: &mut Effects,
    call: impl FnOnce(&mut Context<'_>) -> Result<(), ProcessError>,
) -> Result<(), ProcessError> {
    let mut staged = Vec::new();
    let mut counted = Vec::new();
    let mut ctx = Context {
        processor: &topology.name,
        partition,
        stream_time_ms: task.stream_time_ms,
        wall_clock_ms,
        stores: &mut task.stores,
        outputs: &mut staged,
        encoders,
        counts: &mut counted,
    };
    match call(&mut ctx) {
        Ok(()) => {
            effects.outputs.append(&mut staged);
            effects.counts.append(&mut counted);
            commit_stores(topology, partition, &mut task.stores, effects);
            Ok(())
        }
        Err(e) => {
            task.stores.values_mut().for_each(KeyValueStore::discard);
            Err(e)
        }
    }
}

/// The body of a framed record, ready for the processor: direct when it was written with its
/// topic's catalog schema, resolved to that schema otherwise; none for a tombstone.
fn decode<'a>(
    readers: &'a HashMap<String, Arc<SchemaCodec>>,
    writers: &HashMap<i32, Arc<SchemaCodec>>,
    resolving: &mut HashMap<(i32, String), ResolvingReader>,
    incoming: &Incoming<'a>,
) -> Result<Body<'a>, String> {
    let Some(payload) = incoming.payload else {
        return Ok(Body::Tombstone);
    };
    let (id, body) = split_frame(payload)?;
    let writer = writers
        .get(&id)
        .ok_or_else(|| format!("schema id {id} is not registered"))?;
    let reader = readers
        .get(incoming.topic)
        .ok_or_else(|| format!("{} is not an input topic", incoming.topic))?;
    if Arc::ptr_eq(writer, reader) {
        return Ok(Body::Direct {
            codec: reader,
            bytes: body,
        });
    }
    let key = (id, incoming.topic.to_string());
    if !resolving.contains_key(&key) {
        resolving.insert(key.clone(), ResolvingReader::new(writer, reader)?);
    }
    let resolver = resolving.get(&key).ok_or("resolver vanished")?;
    resolver.read_value(body).map(Body::Resolved)
}

fn commit_stores(
    topology: &Topology,
    partition: i32,
    stores: &mut BTreeMap<String, KeyValueStore>,
    effects: &mut Effects,
) {
    for (name, store) in stores.iter_mut() {
        for (key, value) in store.commit() {
            effects.changelog.push(Output {
                topic: topology.changelog_topic(name),
                partition: Some(partition),
                key: Some(key.into_bytes()),
                payload: value,
                timestamp_ms: None,
                headers: Vec::new(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Context, ProcessError, Record};
    use switchyard_schemas::records::SensorReading;

    struct Sensors;

    impl Processor for Sensors {
        fn topology(&self) -> Topology {
            // A name whose dead-letter topic is in the catalog.
            Topology::new("grafana-projector").inputs::<SensorReading>(["imu", "gyro"])
        }

        fn process(&mut self, _: &Record<'_>, _: &mut Context<'_>) -> Result<(), ProcessError> {
            Ok(())
        }
    }

    /// The catalog's sensor topics share one schema, so the registry gives them one id. The
    /// runner registers each input topic and tells the engine each topic's schema under
    /// that id: records of every one of those topics must still be read directly, not
    /// through schema resolution (several times the cost per record). So must records
    /// whose writer schema, fetched from the registry by another id, is the same schema.
    #[test]
    fn topics_sharing_a_schema_read_their_records_without_resolution() {
        let catalog = Catalog::embedded().expect("catalog");
        let mut engine = Engine::new(Sensors, &catalog).expect("engine");
        let (id, fetched_id) = (7, 8);
        for topic in ["imu", "gyro"] {
            let schema = engine.schema_of(topic).expect("input schema");
            engine.add_writer(id, schema);
        }
        let text = catalog.value_schema("imu").expect("imu schema text");
        engine.add_writer(fetched_id, SchemaCodec::parse(text).expect("parses"));
        let reading = SensorReading {
            modem_id: "356938035643809".into(),
            device_id: 1,
            sensor: "imu".into(),
            timestamp: 1,
            value: Some(5),
            data: vec![0, 0, 0, 5],
            received_at: 1,
            sequence: None,
        };
        let codec = engine.schema_of("imu").expect("imu schema");
        for (topic, id) in [("imu", id), ("gyro", id), ("imu", fetched_id)] {
            let payload = codec.encode(id, &reading).expect("encode");
            let incoming = Incoming {
                topic,
                partition: 0,
                offset: 0,
                timestamp_ms: None,
                key: None,
                headers: Vec::new(),
                payload: Some(&payload),
            };
            let body = decode(
                &engine.readers,
                &engine.writers,
                &mut engine.resolving,
                &incoming,
            )
            .expect("decodes");
            assert!(
                matches!(body, Body::Direct { .. }),
                "a record of {topic} written with its catalog schema (id {id}) was resolved"
            );
        }
    }
}

//! A Kafka-Streams-style processor framework for Switchyard.
//!
//! A processor implements [`Processor`]: it declares a [`Topology`] (input and output topics
//! with their record types, stores, timers, error policies) and handles one [`Record`] at a
//! time through a [`Context`]. [`run`] runs it on Kafka: consumer group, Confluent-framed
//! Avro through the schema registry, at-least-once commits, dead letters, changelogged
//! stores, metrics. [`TestDriver`] runs it in memory for unit tests.
//!
//! See `docs/pipeline.md` for the guide and `processors/example` for the processor to copy.

pub mod codec;
mod context;
mod driver;
pub mod engine;
pub mod entry;
mod metrics;
mod processor;
mod runner;
mod store;

pub use context::{Context, Output};
pub use driver::{default_partition, DeadLetter, TestDriver, TestRecord};
pub use engine::{FailureKind, Stopped, TopologyError, WRITER_HEADER};
pub use entry::NoFlags;
pub use metrics::Metrics;
pub use processor::{
    ErrorPolicy, ProcessError, Processor, Record, Timer, TimerKind, TimerSpec, Topology,
};
pub use runner::{run, run_until, Guarantee, RunnerConfig, RunnerError, DEFAULT_MAX_UNCOMMITTED};
pub use store::KeyValueStore;

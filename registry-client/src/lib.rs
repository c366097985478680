//! The client of a Confluent-compatible schema registry (Confluent's own, or the project's
//! `switchyard-registry`) that the pipeline, the gateway, the API and the CLI share: one
//! retry policy, one id cache, one error type, and none of the server's code.
//!
//! * [`client`]: register, latest, schema by id (cached: an id never changes its schema),
//!   subjects; `*_retrying` variants wait while the registry is unreachable and return
//!   its answers (e.g. an incompatible schema) at once.
//! * [`decoder`]: framed Avro records into Rust types, resolving other writer schemas.

pub mod client;
pub mod decoder;

pub use client::{ClientError, RegisteredSchema, RegistryClient};
pub use decoder::RecordDecoder;

/// Content type of the registry's API, as Confluent sends and accepts it.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

//! A schema registry that speaks Confluent Schema Registry's REST API, for machines where
//! no Confluent server can run.
//!
//! * [`api`]: the REST routes, with Confluent's status codes and `error_code`s.
//! * [`store`]: schemas kept in a compacted `_schemas` Kafka topic, so ids survive restarts
//!   and every instance reading the topic agrees.
//! * [`compat`]: compatibility levels (BACKWARD by default) on apache-avro's resolution rules.
//! * [`client`]: the few calls Switchyard's own tools make.
//! * [`decoder`]: framed Avro records into Rust types, resolving older or newer writer schemas.

pub mod api;
pub mod client;
pub mod compat;
pub mod decoder;
pub mod error;
pub mod state;
pub mod store;

pub use api::router;
pub use client::{ClientError, RegistryClient};
pub use compat::Level;
pub use decoder::RecordDecoder;
pub use error::ApiError;
pub use store::{SchemaStore, StoreConfig, StoreError};

/// Content type of every response, as Confluent sends it.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

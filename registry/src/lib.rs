//! A schema registry that speaks Confluent Schema Registry's REST API, for machines where
//! no Confluent server can run.
//!
//! * [`api`]: the REST routes, with Confluent's status codes and `error_code`s.
//! * [`store`]: schemas kept in a compacted `_schemas` Kafka topic, so ids survive restarts
//!   and every instance reading the topic agrees.
//! * [`compat`]: compatibility levels (BACKWARD by default) on apache-avro's resolution rules,
//!   with reader aliases on named types applied first ([`aliases`]), as Java Avro does.
//!
//! Clients use the `switchyard-registry-client` crate, which holds none of this.

pub mod aliases;
pub mod api;
pub mod compat;
pub mod error;
pub mod metrics;
pub mod state;
pub mod store;

pub use api::router;
pub use compat::Level;
pub use error::ApiError;
pub use store::{SchemaStore, StoreConfig, StoreError};

/// Content type of every response, as Confluent sends it.
pub use switchyard_registry_client::CONTENT_TYPE;

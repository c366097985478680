//! The registry's part: register the catalog schemas at start-up, fetch writer schemas by id.

use std::collections::HashSet;

use switchyard_registry_client::RegistryClient;
use switchyard_schemas::wire::SchemaCodec;
use switchyard_schemas::{value_subject, Catalog};
use tracing::warn;

use super::config::RunnerError;
use crate::engine::Engine;
use crate::processor::StoreSpec;
use crate::Processor;

/// Register (or find) the catalog schema of `topic`; retries while the registry is down.
pub(crate) async fn register(
    registry: &RegistryClient,
    topic: &str,
    catalog: &Catalog,
) -> Result<i32, RunnerError> {
    let text = catalog
        .value_schema(topic)
        .ok_or_else(|| RunnerError::Catalog(format!("{topic} has no schema")))?;
    registry
        .register_retrying(&value_subject(topic), text)
        .await
        .map_err(|e| {
            RunnerError::Registry(format!("registering {} failed: {e}", value_subject(topic)))
        })
}

/// Register (or find) a store's value schema under its changelog topic's subject. A store
/// type changed incompatibly is refused here, by the registry, before anything is restored.
pub(crate) async fn register_store(
    registry: &RegistryClient,
    changelog: &str,
    spec: &StoreSpec,
) -> Result<i32, RunnerError> {
    let subject = value_subject(changelog);
    registry
        .register_retrying(&subject, spec.schema)
        .await
        .map_err(|e| {
            RunnerError::Registry(format!(
                "registering {subject} (store {}, {}) failed: {e}",
                spec.name, spec.type_name
            ))
        })
}

/// Writer schemas met in input records, fetched once per id.
pub(crate) struct WriterSchemas {
    registry: RegistryClient,
    /// Ids the registry does not know: their records are dead-lettered as undecodable.
    unknown: HashSet<i32>,
}

impl WriterSchemas {
    pub fn new(registry: RegistryClient) -> Self {
        WriterSchemas {
            registry,
            unknown: HashSet::new(),
        }
    }

    /// Make sure the engine knows the writer schema `id` (or that the registry does not).
    pub async fn ensure<P: Processor>(&mut self, engine: &mut Engine<P>, id: i32) {
        if engine.knows_writer(id) || self.unknown.contains(&id) {
            return;
        }
        match self.registry.schema_by_id_retrying(id).await {
            Ok(text) => match SchemaCodec::parse(&text) {
                Ok(codec) => engine.add_writer(id, codec),
                Err(e) => {
                    warn!(id, error = %e, "registry returned a schema that does not parse");
                    self.unknown.insert(id);
                }
            },
            Err(e) => {
                warn!(id, error = %e, "schema id unknown to the registry");
                self.unknown.insert(id);
            }
        }
    }
}

//! The registry's part: register the catalog schemas at start-up, fetch writer schemas by id.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;

use switchyard_registry_client::RegistryClient;
use switchyard_schemas::wire::SchemaCodec;
use switchyard_schemas::{value_subject, Catalog};
use switchyard_telemetry::Health;
use tracing::{info, warn};

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
    /// While the registry is unreachable the client retries with backoff; each time, this
    /// says so in `health`, and it gives up only when `shutdown` completes.
    pub async fn ensure<P: Processor>(
        &mut self,
        engine: &mut Engine<P>,
        id: i32,
        health: &Health,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), RunnerError> {
        if engine.knows_writer(id) || self.unknown.contains(&id) {
            return Ok(());
        }
        let mut unreachable = false;
        let url = self.registry.url().to_string();
        let answer = tokio::select! {
            answer = self.registry.schema_by_id_retrying(id, |e| {
                unreachable = true;
                health.set_not_ready(format!(
                    "schema registry unreachable at {url} ({e}): waiting for writer schema {id}"
                ));
            }) => answer,
            _ = shutdown.as_mut() => return Err(RunnerError::ShutdownRequested),
        };
        if unreachable {
            info!(id, "schema registry reachable again");
        }
        match answer {
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
        Ok(())
    }
}

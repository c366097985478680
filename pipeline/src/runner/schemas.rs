//! The registry's part: register the catalog schemas at start-up, fetch writer schemas by id.

use std::collections::HashSet;
use std::time::Duration;

use schema_registry_converter::async_impl::schema_registry::{
    get_schema_by_id, post_schema, SrSettings,
};
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
use switchyard_schemas::wire::SchemaCodec;
use switchyard_schemas::{value_subject, Catalog};
use tracing::warn;

use super::config::RunnerError;
use crate::engine::Engine;
use crate::Processor;

/// Register (or find) the catalog schema of `topic`; retries while the registry is down.
pub(crate) async fn register(
    sr: &SrSettings,
    topic: &str,
    catalog: &Catalog,
) -> Result<i32, RunnerError> {
    let text = catalog
        .value_schema(topic)
        .ok_or_else(|| RunnerError::Catalog(format!("{topic} has no schema")))?;
    let mut delay = Duration::from_millis(250);
    loop {
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, text.to_string());
        match post_schema(sr, value_subject(topic), supplied).await {
            Ok(registered) => {
                return i32::try_from(registered.id)
                    .map_err(|_| RunnerError::Registry("schema id out of range".into()))
            }
            Err(e)
                if e.retriable
                    || e.error.contains("connect")
                    || e.cause.as_deref().is_some_and(|c| c.contains("connect")) =>
            {
                warn!(subject = %value_subject(topic), error = %e.error, cause = ?e.cause, retry_in = ?delay, "schema registry unreachable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => {
                return Err(RunnerError::Registry(format!(
                    "registering {} failed: {} {}",
                    value_subject(topic),
                    e.error,
                    e.cause.unwrap_or_default()
                )))
            }
        }
    }
}

/// Writer schemas met in input records, fetched once per id.
pub(crate) struct WriterSchemas {
    sr: SrSettings,
    /// Ids the registry does not know: their records are dead-lettered as undecodable.
    unknown: HashSet<i32>,
}

impl WriterSchemas {
    pub fn new(sr: SrSettings) -> Self {
        WriterSchemas {
            sr,
            unknown: HashSet::new(),
        }
    }

    /// Make sure the engine knows the writer schema `id` (or that the registry does not).
    pub async fn ensure<P: Processor>(&mut self, engine: &mut Engine<P>, id: i32) {
        if engine.knows_writer(id) || self.unknown.contains(&id) {
            return;
        }
        let Ok(id_u32) = u32::try_from(id) else {
            self.unknown.insert(id);
            return;
        };
        let mut delay = Duration::from_millis(250);
        loop {
            match get_schema_by_id(id_u32, &self.sr).await {
                Ok(registered) => match SchemaCodec::parse(&registered.schema) {
                    Ok(codec) => {
                        engine.add_writer(id, codec);
                        return;
                    }
                    Err(e) => {
                        warn!(id, error = %e, "registry returned a schema that does not parse");
                        self.unknown.insert(id);
                        return;
                    }
                },
                Err(e) if e.retriable => {
                    warn!(id, error = %e.error, retry_in = ?delay, "schema registry unreachable; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) => {
                    warn!(id, error = %e.error, "schema id unknown to the registry");
                    self.unknown.insert(id);
                    return;
                }
            }
        }
    }
}

//! Run a processor on Kafka.
//!
//! * Consumer group = the processor's name; start more instances to share partitions.
//! * Start-up ([`startup`], [`schemas`]): the catalog schema of every input and output topic
//!   is registered (or found), topics must exist and inputs be co-partitioned, changelog
//!   topics are created.
//! * The loop ([`service`]): consume, process, commit, fire timers, follow the group,
//!   readiness.
//! * A task per input partition, owned by the engine; its stores are restored from the
//!   changelog partitions ([`restore`]) before its first record ([`assignment`]).
//! * Produce as you go ([`process`], [`delivery`]): outputs, changelog and dead-letter
//!   records go to the producer the moment they are made; consumption goes on meanwhile,
//!   paused only at the bounds on uncommitted records and bytes in flight.
//! * At least once ([`ledger`], [`commit`]): an input's offset is committed only once every
//!   record derived from it, and from everything before it in its task, is acknowledged.
//! * Rebalances ([`group`]): a revoked task's records are acknowledged and its offsets
//!   committed before the revocation completes; then its task, stores and timers go.
//!   Partitions lost (given away while the loop did not poll) take every task with them,
//!   uncommitted, before anything else runs ([`recovery`]).
//! * Readiness: set by the loop as it turns; a loop that stops turning is reported by a
//!   task beside it ([`watchdog`]).
//! * Exactly once (`--processing-guarantee exactly-once`): outputs and offsets in one Kafka
//!   transaction per commit interval (tested on Apache Kafka); a refusal or a failed
//!   commit aborts and goes back to the last commit ([`recovery`]).
//! * SIGINT/SIGTERM ([`shutdown`]): stop consuming, wait (bounded) for records in flight,
//!   commit, leave.

mod assignment;
mod commit;
mod config;
mod delivery;
mod group;
mod ledger;
mod process;
mod recovery;
mod restore;
mod schemas;
mod service;
mod shared;
mod shutdown;
mod startup;
mod watchdog;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::producer::Producer;
use switchyard_registry_client::RegistryClient;
use switchyard_schemas::Catalog;
use switchyard_telemetry::{shutdown_signal, Health};
use tracing::info;

pub use config::{Guarantee, RunnerConfig, RunnerError, DEFAULT_MAX_UNCOMMITTED};

use crate::engine::{Effects, Engine};
use crate::metrics::Metrics;
use crate::Processor;
use delivery::WriterLabels;
use ledger::Ledger;
use service::Runner;
use shared::Shared;

/// Run `processor` with the built-in catalog until SIGINT or SIGTERM.
pub async fn run<P: Processor>(processor: P, config: RunnerConfig) -> Result<(), RunnerError> {
    let catalog = Catalog::embedded().map_err(|e| RunnerError::Catalog(e.to_string()))?;
    run_until(processor, catalog, config, shutdown_signal()).await
}

/// Run `processor` with `catalog` until `shutdown` completes.
pub async fn run_until<P: Processor>(
    processor: P,
    catalog: Catalog,
    config: RunnerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunnerError> {
    let mut engine = Engine::new(processor, &catalog)?;
    let name = engine.topology().name().to_string();
    let metrics = Metrics::new(&name).map_err(|e| RunnerError::Metrics(e.to_string()))?;
    let health = Health::default();
    if let Some(addr) = config.metrics_listen {
        let bound = switchyard_telemetry::serve(addr, metrics.registry.clone(), health.clone())
            .await
            .map_err(|e| RunnerError::Metrics(format!("cannot listen on {addr}: {e}")))?;
        info!(%bound, "metrics and health");
    }
    tokio::pin!(shutdown);

    // Schemas: the catalog's, registered (idempotent) so outputs carry their ids.
    let registry = RegistryClient::new(&config.endpoints.registry_url);
    let inputs = engine.topology().input_topics();
    let outputs = engine.topology().output_topics();
    for (topic, is_input) in inputs
        .iter()
        .map(|t| (t, true))
        .chain(outputs.iter().map(|t| (t, false)))
    {
        let Some(schema) = engine.schema_of(topic) else {
            continue;
        };
        let id = tokio::select! {
            id = schemas::register(&registry, topic, &catalog) => id?,
            _ = &mut shutdown => return Ok(()),
        };
        engine.add_writer(id, schema);
        if !is_input {
            engine.set_output_id(topic, id);
        }
    }
    for spec in engine.topology().stores().to_vec() {
        let changelog = engine.topology().changelog_topic(&spec.name);
        let id = tokio::select! {
            id = schemas::register_store(&registry, &changelog, &spec) => id?,
            _ = &mut shutdown => return Ok(()),
        };
        engine.set_store_id(&spec.name, id);
    }
    let partitions = startup::check_topics(&config, &engine).await?;
    startup::create_changelogs(&config, &engine, partitions).await?;

    let shared = Arc::new(Shared::new(
        Ledger::new(inputs.clone()),
        metrics,
        config.processing_guarantee,
        config.shutdown_timeout(),
    ));
    let producer = delivery::output_producer(
        &config,
        delivery::transactional_id(&config, &name),
        engine.topology(),
        Arc::clone(&shared),
    )?;
    if config.processing_guarantee == Guarantee::ExactlyOnce {
        let p = Arc::clone(&producer);
        let initialised =
            tokio::task::spawn_blocking(move || p.init_transactions(Duration::from_secs(30)));
        tokio::select! {
            done = initialised => done
                .map_err(|e| RunnerError::Catalog(e.to_string()))?
                .map_err(RunnerError::Transaction)?,
            // With the broker away this can take its whole timeout: SIGTERM must not wait.
            _ = &mut shutdown => return Ok(()),
        }
    }
    let consumer = Arc::new(startup::group_consumer(
        &config,
        &name,
        Arc::clone(&shared),
    )?);
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    consumer.subscribe(&refs)?;
    engine.start_wall_clock(service::now_ms());
    info!(processor = %name, ?inputs, guarantee = ?config.processing_guarantee, "running");

    let committer = commit::Committer::spawn(Arc::clone(&consumer), Arc::clone(&shared))?;
    let mut runner = Runner {
        committer,
        engine,
        consumer,
        producer,
        shared,
        writer_labels: WriterLabels::new(config.instance()),
        config,
        writers: schemas::WriterSchemas::new(registry),
        health,
        effects: Effects::default(),
        joined: false,
        paused: false,
        early_commit_armed: true,
        poisoned: Default::default(),
        suspects: Default::default(),
        isolated: None,
        rewinds_in_a_row: 0,
        generation: 0,
    };
    let watch = tokio::spawn(watchdog::watch_loop(
        Arc::clone(&runner.shared),
        runner.health.clone(),
        runner.config.stall_timeout(),
    ));
    let result = runner.run(&mut shutdown).await;
    watch.abort();
    let finished = runner.finish().await;
    result.and(finished)?;
    info!(processor = %name, "stopped cleanly");
    Ok(())
}

//! `switchyard topics list` and `switchyard topics apply`.

use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Subcommand;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use switchyard_kafka::clients;
use switchyard_registry_client::RegistryClient;
use switchyard_schemas::Catalog;

use crate::{Endpoints, Failure};

#[derive(Subcommand)]
pub enum TopicsCommand {
    /// Print the catalog: each topic, its schema, partitions, policy and owners.
    List,
    /// Print the catalog as Markdown (what docs/topics.md holds).
    Doc,
    /// Print the Grafana dashboard generated from the catalog (what
    /// grafana/dashboards/switchyard.json holds).
    Grafana,
    /// Create every catalog topic and register every value schema; safe to run again.
    Apply {
        /// Replication factor for new topics; -1 (the default) takes the broker's
        /// `default.replication.factor` (1 on `make up`'s single broker, 3 on a cluster).
        #[arg(long, env = "SWITCHYARD_REPLICATION_FACTOR", default_value_t = switchyard_kafka::BROKER_DEFAULT_REPLICATION, allow_negative_numbers = true)]
        replication_factor: i32,
        /// How long to keep retrying while the broker or registry is not reachable, in seconds.
        #[arg(long, default_value_t = 60)]
        wait_secs: u64,
    },
}

pub async fn run(endpoints: &Endpoints, command: TopicsCommand) -> Result<(), Failure> {
    let catalog = Catalog::embedded().context("the built-in catalog is invalid")?;
    match command {
        TopicsCommand::List => {
            crate::emit(format!(
                "{:<24} {:<28} {:>4} {:<8} {:<20} consumers",
                "topic", "value", "part", "cleanup", "producers"
            ));
            for t in &catalog.topics {
                let value = t.value_schema.clone().unwrap_or_else(|| "raw bytes".into());
                crate::emit(format!(
                    "{:<24} {:<28} {:>4} {:<8} {:<20} {}",
                    t.name,
                    value,
                    t.partitions,
                    t.cleanup_policy.as_str(),
                    t.producers.join(","),
                    t.consumers.join(",")
                ));
            }
            Ok(())
        }
        TopicsCommand::Doc => {
            crate::emit(crate::topics_doc::render(&catalog).trim_end());
            Ok(())
        }
        TopicsCommand::Grafana => {
            crate::emit(crate::grafana::render(&catalog));
            Ok(())
        }
        TopicsCommand::Apply {
            replication_factor,
            wait_secs,
        } => {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_secs);
            retry_until(deadline, "creating topics", || {
                create_topics(endpoints, &catalog, replication_factor)
            })
            .await?;
            retry_until(deadline, "registering schemas", || {
                register_schemas(endpoints, &catalog)
            })
            .await?;
            Ok(())
        }
    }
}

/// Retry a step while it fails for reasons that may pass (a service still starting).
async fn retry_until<F, Fut>(
    deadline: tokio::time::Instant,
    what: &str,
    mut step: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), StepError>>,
{
    loop {
        match step().await {
            Ok(()) => return Ok(()),
            Err(StepError::Final(e)) => return Err(e.context(format!("{what} failed"))),
            Err(StepError::Retry(e)) if tokio::time::Instant::now() < deadline => {
                eprintln!("{what}: {e:#}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(StepError::Retry(e)) => return Err(e.context(format!("{what} gave up"))),
        }
    }
}

enum StepError {
    Retry(anyhow::Error),
    Final(anyhow::Error),
}

async fn create_topics(
    endpoints: &Endpoints,
    catalog: &Catalog,
    replication: i32,
) -> Result<(), StepError> {
    let admin: AdminClient<DefaultClientContext> =
        clients::admin_config(&endpoints.bootstrap_servers)
            .create()
            .map_err(|e| StepError::Final(e.into()))?;
    let configs: Vec<Vec<(&str, String)>> =
        catalog.topics.iter().map(|t| t.broker_config()).collect();
    let new_topics: Vec<NewTopic> = catalog
        .topics
        .iter()
        .zip(&configs)
        .map(|(t, config)| {
            config.iter().fold(
                NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(replication)),
                |nt, (k, v)| nt.set(k, v),
            )
        })
        .collect();
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|e| StepError::Retry(anyhow!("broker {}: {e}", endpoints.bootstrap_servers)))?;
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(name) => crate::emit(format!("topic {name}: created")),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                crate::emit(format!("topic {name}: exists"))
            }
            Err((name, code)) => failures.push(format!("{name}: {code}")),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(StepError::Final(anyhow!(
            "could not create {}",
            failures.join(", ")
        )))
    }
}

async fn register_schemas(endpoints: &Endpoints, catalog: &Catalog) -> Result<(), StepError> {
    let registry = RegistryClient::new(&endpoints.registry_url);
    for (subject, schema) in catalog.subjects() {
        match registry.register(&subject, schema).await {
            Ok(id) => crate::emit(format!("subject {subject}: schema id {id}")),
            Err(e) if e.error_code().is_some() => {
                return Err(StepError::Final(anyhow!("subject {subject}: {e}")));
            }
            Err(e) => return Err(StepError::Retry(e.into())),
        }
    }
    Ok(())
}

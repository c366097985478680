//! `switchyard-registry`: a Confluent-compatible schema registry backed by a Kafka topic.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use switchyard_registry::metrics::ApiMetrics;
use switchyard_registry::{router, Level, SchemaStore, StoreConfig};
use switchyard_telemetry::shutdown_signal;
use tracing::{error, info};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Confluent-compatible schema registry storing schemas in a Kafka topic"
)]
struct Args {
    /// Address to serve the REST API on.
    #[arg(
        long,
        env = "SWITCHYARD_REGISTRY_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    listen: SocketAddr,
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "SWITCHYARD_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    bootstrap_servers: String,
    /// Compacted topic holding the schemas.
    #[arg(long, env = "SWITCHYARD_REGISTRY_TOPIC", default_value = "_schemas")]
    topic: String,
    /// Compatibility level for subjects with none configured.
    #[arg(long, env = "SWITCHYARD_REGISTRY_COMPATIBILITY", default_value = "BACKWARD", value_parser = parse_level)]
    default_compatibility: Level,
    /// Limit for one broker round trip, in milliseconds.
    #[arg(long, env = "SWITCHYARD_REGISTRY_TIMEOUT_MS", default_value_t = 10_000)]
    timeout_ms: u64,
    /// How long the broker may hold a fetch of the schemas topic while it is idle, in
    /// milliseconds (a new record ends the wait at once).
    #[arg(long, env = "SWITCHYARD_REGISTRY_FETCH_WAIT_MS", default_value_t = switchyard_kafka::FETCH_WAIT_MS)]
    fetch_wait_ms: u64,
}

fn parse_level(s: &str) -> Result<Level, String> {
    s.parse()
        .map_err(|_| format!("unknown compatibility level {s:?}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    switchyard_telemetry::init_tracing("info,librdkafka=warn,rdkafka=warn");
    let args = Args::parse();
    let config = StoreConfig {
        bootstrap_servers: args.bootstrap_servers.clone(),
        topic: args.topic.clone(),
        default_level: args.default_compatibility,
        timeout: Duration::from_millis(args.timeout_ms),
        fetch_wait: Duration::from_millis(args.fetch_wait_ms),
    };

    // A broker that is not up yet is waited for, with one clear line per attempt.
    let mut delay = Duration::from_millis(500);
    let store = loop {
        tokio::select! {
            opened = SchemaStore::open(config.clone()) => match opened {
                Ok(store) => break store,
                Err(e) => {
                    error!(error = %e, retry_in = ?delay, "schema store not ready");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            },
            _ = shutdown_signal() => return Ok(()),
        }
    };

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    info!(listen = %args.listen, bootstrap = %args.bootstrap_servers, topic = %args.topic, "schema registry serving");
    let metrics = ApiMetrics::new().context("registering the registry's metrics")?;
    axum::serve(listener, router(store, metrics))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving the registry API")?;
    Ok(())
}

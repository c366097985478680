//! The operators' switch API: where every modem stands, and carrier switches.
//!
//! * The view comes from the compacted `carrier-state` topic, read from the beginning at start
//!   (the service is ready once it has caught up) and then followed, so every instance agrees
//!   and a restart loses nothing. Requests accepted here show at once, before the table has
//!   them ([`view::Table`]).
//! * A switch is one record on `downstream-request`, keyed by modem id, produced with
//!   acks=all before the API answers 202. A modem with a request in flight refuses another
//!   (409): requests are not queued, so an operator never triggers a stale switch later.
//! * Every endpoint but `/health` (and the static page at `/`, which holds no data) needs
//!   `Authorization: Bearer TOKEN`.

pub mod readings;
pub mod routes;
pub mod view;

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{bail, Context};
use axum::serve::ListenerExt;
use clap::Args;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use switchyard_kafka::{clients, is_partition_eof, Endpoints, TracingContext};
use switchyard_registry_client::{RecordDecoder, RegistryClient};
use switchyard_schemas::records::CarrierState;
use switchyard_schemas::wire::SchemaCodec;
use switchyard_schemas::{value_subject, Catalog};
use switchyard_telemetry::Health;
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::view::{ModemView, Table};

pub const STATE_TOPIC: &str = switchyard_schemas::topics::CARRIER_STATE;
pub const REQUEST_TOPIC: &str = switchyard_schemas::topics::DOWNSTREAM_REQUEST;

#[derive(Debug, Clone, Args)]
pub struct ApiConfig {
    /// Where the API listens.
    #[arg(long, env = "SWITCHYARD_API_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub endpoints: Endpoints,
    /// The bearer token clients must send.
    #[arg(long, env = "SWITCHYARD_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the token (first line), instead of --token.
    #[arg(long, env = "SWITCHYARD_API_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// How long a switch may take before it counts as timed out.
    #[arg(long, env = "SWITCHYARD_API_DEADLINE_SECS", default_value_t = 60)]
    pub deadline_secs: u64,
    /// How long to wait for the broker to take a request before answering 503.
    #[arg(
        long,
        env = "SWITCHYARD_API_PRODUCE_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub produce_timeout_ms: u64,
    /// Linked from the page when set, e.g. http://localhost:3000.
    #[arg(long, env = "SWITCHYARD_GRAFANA_URL")]
    pub grafana_url: Option<String>,
    /// Serve Prometheus /metrics (and /health) here.
    #[arg(
        long,
        env = "SWITCHYARD_METRICS_LISTEN",
        default_value = "127.0.0.1:9105"
    )]
    pub metrics_listen: SocketAddr,
    #[command(flatten)]
    pub readings: readings::ReadingsConfig,
}

impl ApiConfig {
    /// The configured token; refuses to start without one, or with a blank one.
    pub fn resolve_token(&self) -> anyhow::Result<String> {
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => t.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the token file {}", path.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
            (None, None) => {
                bail!("no API token: set SWITCHYARD_API_TOKEN or SWITCHYARD_API_TOKEN_FILE")
            }
        };
        let token = token.trim().to_string();
        if token.len() < 16 {
            bail!("the API token must be at least 16 characters");
        }
        Ok(token)
    }
}

#[derive(Clone)]
pub struct ApiMetrics {
    pub registry: Registry,
    /// Switch requests by outcome: accepted, or the reason refused.
    pub switches: IntCounterVec,
    pub unauthorized: prometheus::IntCounter,
    pub modems: IntGauge,
    pub undecodable: prometheus::IntCounter,
}

impl ApiMetrics {
    fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("switchyard_api".into()), None)?;
        let switches = IntCounterVec::new(
            Opts::new(
                "switch_requests_total",
                "Switch requests, by outcome (accepted or why refused).",
            ),
            &["outcome"],
        )?;
        let unauthorized = prometheus::IntCounter::new(
            "unauthorized_total",
            "Requests refused for a missing or wrong token.",
        )?;
        let modems = IntGauge::new("known_modems", "Modems in the carrier-state view.")?;
        let undecodable = prometheus::IntCounter::new(
            "undecodable_state_records_total",
            "carrier-state records that could not be read (skipped).",
        )?;
        registry.register(Box::new(switches.clone()))?;
        registry.register(Box::new(unauthorized.clone()))?;
        registry.register(Box::new(modems.clone()))?;
        registry.register(Box::new(undecodable.clone()))?;
        Ok(ApiMetrics {
            registry,
            switches,
            unauthorized,
            modems,
            undecodable,
        })
    }
}

/// What every handler shares.
pub struct AppState {
    pub token: String,
    pub table: RwLock<Table>,
    /// Modems with a switch being produced right now, so two concurrent posts for one modem
    /// cannot both pass the "nothing pending" check.
    pub switching: Mutex<HashSet<String>>,
    pub changes: broadcast::Sender<ModemView>,
    pub producer: FutureProducer,
    pub request_codec: (i32, Arc<SchemaCodec>),
    pub deadline: Duration,
    pub produce_timeout: Duration,
    pub grafana_url: Option<String>,
    pub metrics: ApiMetrics,
    pub ready: Health,
    /// Recent readings for the page's charts.
    pub readings: Arc<readings::Hub>,
}

/// Register `topic`'s catalog schema, waiting for the registry if it is not up yet.
async fn register(
    registry: &RegistryClient,
    catalog: &Catalog,
    topic: &str,
) -> anyhow::Result<(i32, Arc<SchemaCodec>)> {
    let text = catalog
        .value_schema(topic)
        .with_context(|| format!("{topic} has no schema in the catalog"))?;
    let id = registry
        .register_retrying(&value_subject(topic), text)
        .await
        .with_context(|| format!("registering the schema of {topic}"))?;
    Ok((id, SchemaCodec::parse(text).map_err(anyhow::Error::msg)?))
}

/// Run the API until `shutdown` completes.
pub async fn run(config: ApiConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let token = config.resolve_token()?;
    let catalog = Catalog::embedded().context("the built-in catalog is invalid")?;
    let metrics = ApiMetrics::new()?;
    let ready = Health::default();
    let metrics_bound = switchyard_telemetry::serve(
        config.metrics_listen,
        metrics.registry.clone(),
        ready.clone(),
    )
    .await
    .with_context(|| format!("metrics endpoint on {}", config.metrics_listen))?;
    tokio::pin!(shutdown);

    let registry = RegistryClient::new(&config.endpoints.registry_url);
    let (state_id, state_codec, request_codec) = tokio::select! {
        r = async {
            let state = register(&registry, &catalog, STATE_TOPIC).await?;
            let request = register(&registry, &catalog, REQUEST_TOPIC).await?;
            anyhow::Ok((state.0, state.1, request))
        } => r?,
        _ = &mut shutdown => return Ok(()),
    };

    let producer: FutureProducer = clients::producer_config(&config.endpoints.bootstrap_servers)
        .set("message.timeout.ms", config.produce_timeout_ms.to_string())
        // One record per operator action: nothing to batch, and the switch waits on it.
        .set("linger.ms", "0")
        .create()
        .context("creating the producer")?;
    let (changes, _) = broadcast::channel(1024);
    let readings = Arc::new(readings::Hub::new(&config.readings, &metrics.registry)?);
    let state = Arc::new(AppState {
        token,
        table: RwLock::new(Table::default()),
        switching: Mutex::new(HashSet::new()),
        changes,
        producer,
        request_codec,
        deadline: Duration::from_secs(config.deadline_secs.max(1)),
        produce_timeout: Duration::from_millis(config.produce_timeout_ms),
        grafana_url: config.grafana_url.clone(),
        metrics,
        ready: ready.clone(),
        readings: Arc::clone(&readings),
    });

    let follower = tokio::spawn(follow(
        Arc::clone(&state),
        config.endpoints.bootstrap_servers.clone(),
        RecordDecoder::new(registry.clone(), state_id, state_codec),
    ));
    let readings_follower = tokio::spawn(readings::follow::follow(
        readings,
        config.endpoints.bootstrap_servers.clone(),
        registry.clone(),
        catalog.clone(),
        config.readings.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    info!(listen = %listener.local_addr()?, metrics = %metrics_bound, "switch API running");
    // The event stream writes one small event at a time: with Nagle's algorithm an event
    // waits for the ACK of the one before, which the client delays (up to 40 ms on Linux),
    // as soon as events come faster than that.
    let listener = listener.tap_io(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            warn!(error = %e, "TCP_NODELAY not set on a connection");
        }
    });
    let app = routes::router(Arc::clone(&state));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    let result = tokio::select! {
        r = &mut server => r,
        _ = &mut shutdown => {
            info!("shutting down");
            let _ = stop.send(());
            server.await
        }
    };
    follower.abort();
    readings_follower.abort();
    result
        .context("the server task failed")?
        .context("serving the API")
}

/// High watermark of every partition of `topic`.
fn end_offsets(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<(i32, i64)>> {
    let probe: BaseConsumer = clients::admin_config(bootstrap).create()?;
    let partitions = switchyard_kafka::partitions(&probe, topic, Duration::from_secs(10))?;
    if partitions.is_empty() {
        bail!("topic {topic} does not exist (run `switchyard topics apply`)");
    }
    partitions
        .into_iter()
        .map(|p| {
            Ok((
                p,
                switchyard_kafka::watermarks(&probe, topic, p, Duration::from_secs(10))?.1,
            ))
        })
        .collect()
}

/// Read `carrier-state` from the beginning, then follow it. Ready once caught up with the
/// end offsets seen at start. A broker that is down is retried; unreadable records are
/// counted and skipped.
async fn follow(state: Arc<AppState>, bootstrap: String, mut decoder: RecordDecoder) {
    let mut delay = Duration::from_millis(250);
    let ends = loop {
        let b = bootstrap.clone();
        match tokio::task::spawn_blocking(move || end_offsets(&b, STATE_TOPIC)).await {
            Ok(Ok(ends)) => break ends,
            Ok(Err(e)) => warn!(error = %e, retry_in = ?delay, "cannot read carrier-state yet"),
            Err(e) => warn!(error = %e, "probe task failed"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    };
    // Operators watch switches live: Kafka answers the fetch as soon as a record lands.
    let consumer: StreamConsumer<TracingContext> = match clients::consumer_config(&bootstrap)
        .set("group.id", "switchyard-api-view")
        .create_with_context(TracingContext)
    {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot create the carrier-state consumer");
            return;
        }
    };
    let mut assignment = TopicPartitionList::new();
    for (p, _) in &ends {
        let _ = assignment.add_partition_offset(STATE_TOPIC, *p, Offset::Beginning);
    }
    if let Err(e) = consumer.assign(&assignment) {
        warn!(error = %e, "cannot assign carrier-state");
        return;
    }
    // Partitions still to catch up: (partition, end offset at start).
    let mut behind: Vec<(i32, i64)> = ends.into_iter().filter(|(_, end)| *end > 0).collect();
    if behind.is_empty() {
        state.ready.set_ready(true);
        info!("carrier-state is empty; ready");
    }
    loop {
        let message = match consumer.recv().await {
            Ok(m) => m,
            Err(e) if is_partition_eof(&e) => continue,
            Err(e) => {
                warn!(error = %e, "reading carrier-state; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let key = message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        let value = match message.payload() {
            None => Ok(None),
            Some(p) => decoder.decode::<CarrierState>(Some(p)).await.map(Some),
        };
        match value {
            Ok(value) => {
                let view = state.table.write().ok().and_then(|mut t| {
                    let view = t.apply(&key, value);
                    state.metrics.modems.set(t.len() as i64);
                    view
                });
                if let Some(view) = view {
                    let _ = state.changes.send(view);
                }
            }
            Err(e) => {
                state.metrics.undecodable.inc();
                warn!(error = %e, partition = message.partition(), offset = message.offset(), "unreadable carrier-state record skipped");
            }
        }
        if !behind.is_empty() {
            let (p, o) = (message.partition(), message.offset());
            behind.retain(|(bp, end)| !(*bp == p && o + 1 >= *end));
            if behind.is_empty() {
                state.ready.set_ready(true);
                let n = state.table.read().map(|t| t.len()).unwrap_or(0);
                info!(modems = n, "caught up with carrier-state; ready");
            }
        }
    }
}

//! Run a processor on Kafka.
//!
//! * Consumer group = the processor's name; start more instances to share partitions.
//! * Start-up: the catalog schema of every input and output topic is registered (or found)
//!   in the registry, input and output topics must exist, changelog topics are created.
//! * A task per input partition; its stores are restored from the changelog partitions
//!   before its first record is processed.
//! * At least once: records are processed in batches; every output, changelog and dead-letter
//!   record of a batch is acknowledged by the broker (acks=all, idempotent producer), failed
//!   sends are retried, and only then are the batch's offsets committed.
//! * Exactly once (`--processing-guarantee exactly-once`): each batch is a Kafka transaction
//!   with its offsets; needs a broker with transactions (Apache Kafka; tansu has none).
//! * SIGINT/SIGTERM: finish the batch, commit, leave the group.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use schema_registry_converter::async_impl::schema_registry::{
    get_schema_by_id, post_schema, SrSettings,
};
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
use switchyard_kafka::{is_partition_eof, Endpoints};
use switchyard_schemas::wire::SchemaCodec;
use switchyard_schemas::{value_subject, Catalog};
use switchyard_telemetry::{shutdown_signal, Health};
use tracing::{debug, error, info, warn};

use crate::codec;
use crate::context::Output;
use crate::engine::{Effects, Engine, Incoming, Stopped, TopologyError};
use crate::metrics::Metrics;
use crate::Processor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Guarantee {
    AtLeastOnce,
    ExactlyOnce,
}

/// Session timeout asked of the group coordinator.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Owning no partition this long, rejoin the group (then twice as long, up to the maximum).
const JOIN_WATCHDOG: Duration = Duration::from_secs(25);
const JOIN_WATCHDOG_MAX: Duration = Duration::from_secs(600);

/// Runner settings; processors `#[command(flatten)]` this into their CLI.
#[derive(Debug, Clone, Args)]
pub struct RunnerConfig {
    #[command(flatten)]
    pub endpoints: Endpoints,
    /// Serve /metrics and /health here.
    #[arg(long, env = "SWITCHYARD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Commit at least this often while records flow, in milliseconds.
    #[arg(long, env = "SWITCHYARD_COMMIT_INTERVAL_MS", default_value_t = 200)]
    pub commit_interval_ms: u64,
    /// Commit after this many records even if the interval has not passed.
    #[arg(long, env = "SWITCHYARD_MAX_BATCH", default_value_t = 5000)]
    pub max_batch: usize,
    /// at-least-once (any broker) or exactly-once (brokers with transactions).
    #[arg(
        long,
        env = "SWITCHYARD_PROCESSING_GUARANTEE",
        value_enum,
        default_value = "at-least-once"
    )]
    pub processing_guarantee: Guarantee,
    /// Distinguishes instances (transactional id suffix); defaults to the host name and pid.
    #[arg(long, env = "SWITCHYARD_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Longest time a fetch waits at the broker for data (librdkafka's fetch.wait.max.ms).
    /// Low keeps end-to-end latency low on brokers that hold fetches (tansu does).
    #[arg(long, env = "SWITCHYARD_FETCH_WAIT_MS", default_value_t = switchyard_kafka::FETCH_WAIT_MS)]
    pub fetch_wait_ms: u64,
}

impl RunnerConfig {
    pub fn new(bootstrap_servers: &str, registry_url: &str) -> Self {
        RunnerConfig {
            endpoints: Endpoints::new(bootstrap_servers, registry_url),
            metrics_listen: None,
            commit_interval_ms: 200,
            max_batch: 5000,
            processing_guarantee: Guarantee::AtLeastOnce,
            instance_id: None,
            fetch_wait_ms: switchyard_kafka::FETCH_WAIT_MS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("catalog: {0}")]
    Catalog(String),
    #[error("topic {0} does not exist on the broker: run `switchyard topics apply`")]
    MissingTopic(String),
    #[error("schema registry: {0}")]
    Registry(String),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("metrics endpoint: {0}")]
    Metrics(String),
    #[error(transparent)]
    Stopped(#[from] Stopped),
    #[error("transaction failed: {0}")]
    Transaction(KafkaError),
}

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
    let sr = SrSettings::new(config.endpoints.registry_url.clone());
    let topics: Vec<(String, bool)> = engine
        .topology()
        .input_topics()
        .into_iter()
        .map(|t| (t, true))
        .chain(
            engine
                .topology()
                .output_topics()
                .into_iter()
                .map(|t| (t, false)),
        )
        .collect();
    for (topic, is_input) in &topics {
        let Some(schema) = engine.schema_of(topic) else {
            continue;
        };
        let id = tokio::select! {
            id = register(&sr, topic, &catalog) => id?,
            _ = &mut shutdown => return Ok(()),
        };
        engine.add_writer(id, schema);
        if !is_input {
            engine.set_output_id(topic, id);
        }
    }

    let partitions = check_topics(&config, &engine, &topics).await?;
    create_changelogs(&config, &engine, partitions).await?;

    let events = Arc::new(Mutex::new(Vec::new()));
    let context = RunnerContext {
        events: Arc::clone(&events),
        metrics: metrics.clone(),
        owned: Mutex::new(BTreeSet::new()),
    };
    let consumer: StreamConsumer<RunnerContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.endpoints.bootstrap_servers)
        .set("group.id", &name)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000")
        .set("fetch.wait.max.ms", config.fetch_wait_ms.to_string())
        // A crashed instance's partitions move to the others after 10 s, not librdkafka's 45.
        .set(
            "session.timeout.ms",
            SESSION_TIMEOUT.as_millis().to_string(),
        )
        .set("heartbeat.interval.ms", "3000")
        .set(
            "isolation.level",
            if config.processing_guarantee == Guarantee::ExactlyOnce {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create_with_context(context)?;
    let mut producer_config = ClientConfig::new();
    producer_config
        .set("bootstrap.servers", &config.endpoints.bootstrap_servers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000");
    if config.processing_guarantee == Guarantee::ExactlyOnce {
        let instance = config
            .instance_id
            .clone()
            .unwrap_or_else(default_instance_id);
        producer_config.set("transactional.id", format!("{name}-{instance}"));
    }
    let producer: FutureProducer = producer_config.create()?;
    if config.processing_guarantee == Guarantee::ExactlyOnce {
        producer
            .init_transactions(Duration::from_secs(30))
            .map_err(RunnerError::Transaction)?;
    }
    let input_topics = engine.topology().input_topics();
    let input_refs: Vec<&str> = input_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&input_refs)?;
    engine.start_wall_clock(now_ms());
    health.set_ready(true);
    info!(processor = %name, inputs = ?input_topics, guarantee = ?config.processing_guarantee, "running");

    let mut runner = Runner {
        engine,
        consumer: Arc::new(consumer),
        producer,
        sr,
        config,
        metrics,
        events,
        owned: HashSet::new(),
        batch: Batch::default(),
        unknown_ids: HashSet::new(),
    };
    let result = runner.run_loop(&mut shutdown).await;
    // Whatever happened, commit what was completed before leaving.
    let flushed = runner.flush().await;
    runner.consumer.unsubscribe();
    health.set_ready(false);
    result.and(flushed)?;
    info!(processor = %name, "stopped cleanly");
    Ok(())
}

async fn register(sr: &SrSettings, topic: &str, catalog: &Catalog) -> Result<i32, RunnerError> {
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

/// Every input, output and dead-letter topic must exist; returns the largest input partition count.
async fn check_topics<P: Processor>(
    config: &RunnerConfig,
    engine: &Engine<P>,
    topics: &[(String, bool)],
) -> Result<i32, RunnerError> {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.endpoints.bootstrap_servers)
        .create()?;
    let mut wanted: Vec<(String, bool)> = topics.to_vec();
    wanted.push((engine.topology().dead_letter_topic(), false));
    let metadata =
        tokio::task::spawn_blocking(move || probe.fetch_metadata(None, Duration::from_secs(30)))
            .await
            .map_err(|e| RunnerError::Catalog(e.to_string()))??;
    let mut max_partitions = 1;
    for (topic, is_input) in wanted {
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none());
        let Some(found) = found else {
            if topic == engine.topology().dead_letter_topic() && !uses_dlq(engine) {
                continue;
            }
            return Err(RunnerError::MissingTopic(topic));
        };
        if is_input {
            max_partitions = max_partitions.max(found.partitions().len() as i32);
        }
    }
    Ok(max_partitions)
}

fn uses_dlq<P: Processor>(engine: &Engine<P>) -> bool {
    use crate::ErrorPolicy::DeadLetter;
    engine.topology().on_undecodable == DeadLetter || engine.topology().on_error == DeadLetter
}

async fn create_changelogs<P: Processor>(
    config: &RunnerConfig,
    engine: &Engine<P>,
    partitions: i32,
) -> Result<(), RunnerError> {
    let stores = engine.topology().store_names().to_vec();
    if stores.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.endpoints.bootstrap_servers)
        .create()?;
    let names: Vec<String> = stores
        .iter()
        .map(|s| engine.topology().changelog_topic(s))
        .collect();
    let new_topics: Vec<NewTopic> = names
        .iter()
        .map(|n| {
            NewTopic::new(n, partitions, TopicReplication::Fixed(1))
                .set("cleanup.policy", "compact")
        })
        .collect();
    let results = admin
        .create_topics(
            &new_topics,
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for result in results {
        match result {
            Ok(topic) => info!(%topic, partitions, "created changelog topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(RunnerError::Kafka(KafkaError::AdminOp(code)))
                    .inspect_err(|_| error!(%topic, "cannot create changelog"))
            }
        }
    }
    Ok(())
}

enum RebalanceEvent {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

struct RunnerContext {
    events: Arc<Mutex<Vec<RebalanceEvent>>>,
    metrics: Metrics,
    /// Partitions owned right now, kept by the rebalance callbacks themselves so the
    /// metric is right even while no record arrives.
    owned: Mutex<BTreeSet<(String, i32)>>,
}

impl RunnerContext {
    fn update_owned(&self, change: impl FnOnce(&mut BTreeSet<(String, i32)>)) {
        if let Ok(mut owned) = self.owned.lock() {
            change(&mut owned);
            let tasks: BTreeSet<i32> = owned.iter().map(|(_, p)| *p).collect();
            self.metrics.assigned_partitions.set(tasks.len() as i64);
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ClientContext for RunnerContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !is_partition_eof(&error) {
            error!(target: "librdkafka", %error, reason, "kafka client error");
        }
    }

    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[topic.as_str(), &partition.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for RunnerContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts = partitions_of(tpl);
            self.update_owned(|owned| {
                parts.iter().for_each(|p| {
                    owned.remove(p);
                })
            });
            if let Ok(mut events) = self.events.lock() {
                events.push(RebalanceEvent::Revoked(parts));
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts = partitions_of(tpl);
                self.update_owned(|owned| owned.extend(parts.iter().cloned()));
                if let Ok(mut events) = self.events.lock() {
                    events.push(RebalanceEvent::Assigned(parts));
                }
            }
            Rebalance::Error(e) => warn!(error = %e, "rebalance failed"),
            Rebalance::Revoke(_) => {}
        }
    }
}

#[derive(Default)]
struct Batch {
    effects: Effects,
    /// Next offset to commit, per topic and partition.
    offsets: HashMap<String, HashMap<i32, i64>>,
    records: usize,
    started: Option<Instant>,
    in_transaction: bool,
}

struct Runner<P: Processor> {
    engine: Engine<P>,
    consumer: Arc<StreamConsumer<RunnerContext>>,
    producer: FutureProducer,
    sr: SrSettings,
    config: RunnerConfig,
    metrics: Metrics,
    events: Arc<Mutex<Vec<RebalanceEvent>>>,
    owned: HashSet<(String, i32)>,
    batch: Batch,
    unknown_ids: HashSet<i32>,
}

impl<P: Processor> Runner<P> {
    async fn run_loop(
        &mut self,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), RunnerError> {
        let mut wall_tick = tokio::time::interval(Duration::from_millis(100));
        wall_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let commit_interval = Duration::from_millis(self.config.commit_interval_ms.max(1));
        let consumer = Arc::clone(&self.consumer);
        // Join watchdog: owning nothing for this long means a crashed member may hold the group.
        let mut unassigned_since = Instant::now();
        let mut watchdog = JOIN_WATCHDOG;
        loop {
            let deadline = self
                .batch
                .started
                .map(|s| tokio::time::Instant::from_std(s + commit_interval));
            tokio::select! {
                biased;
                _ = shutdown.as_mut() => {
                    info!("shutdown requested: finishing the batch");
                    return Ok(());
                }
                _ = async { if let Some(d) = deadline { tokio::time::sleep_until(d).await } }, if deadline.is_some() => {
                    self.flush().await?;
                }
                _ = wall_tick.tick() => {
                    if self.metrics.assigned_partitions.get() > 0 {
                        unassigned_since = Instant::now();
                        watchdog = JOIN_WATCHDOG;
                    } else if unassigned_since.elapsed() > watchdog {
                        self.rejoin(watchdog)?;
                        unassigned_since = Instant::now();
                        watchdog = (watchdog * 2).min(JOIN_WATCHDOG_MAX);
                    }
                    self.begin();
                    let result = self.engine.punctuate_wall_clock(now_ms(), &mut self.batch.effects);
                    self.after_effects();
                    if let Err(stopped) = result {
                        self.flush().await?;
                        return Err(stopped.into());
                    }
                }
                message = consumer.recv() => {
                    self.apply_rebalance_events().await?;
                    match message {
                        Ok(m) => self.handle(&m).await?,
                        Err(e) if is_partition_eof(&e) => {}
                        Err(e) => {
                            warn!(error = %e, "consumer error; continuing");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
        }
    }

    /// Leave and rejoin the group. tansu 0.6.0 can leave a member that joined while a crashed
    /// member was still in the group with an empty assignment indefinitely; joining again,
    /// after the crashed member's session timeout, recovers. An instance that is idle because
    /// there are more instances than partitions also rejoins, ever more rarely (the delay
    /// doubles up to ten minutes), which costs one rebalance each time.
    fn rejoin(&mut self, after: Duration) -> Result<(), RunnerError> {
        warn!(
            ?after,
            "no partitions assigned; rejoining the group (a crashed member may still hold them)"
        );
        self.metrics.rejoins.inc();
        self.consumer.unsubscribe();
        let topics = self.engine.topology().input_topics();
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.consumer.subscribe(&refs)?;
        Ok(())
    }

    fn begin(&mut self) {
        if self.batch.started.is_none() {
            self.batch.started = Some(Instant::now());
        }
        if self.config.processing_guarantee == Guarantee::ExactlyOnce && !self.batch.in_transaction
        {
            if let Err(e) = self.producer.begin_transaction() {
                error!(error = %e, "cannot begin a transaction");
            } else {
                self.batch.in_transaction = true;
            }
        }
    }

    fn after_effects(&mut self) {
        for event in self.batch.effects.counts.drain(..) {
            self.metrics.events.with_label_values(&[event]).inc();
        }
        for failure in self.batch.effects.timer_failures.drain(..) {
            self.metrics.timer_failures.inc();
            warn!(%failure, "timer failed");
        }
        if self.batch.records == 0 && self.batch.effects.is_empty() {
            self.batch.started = None;
        }
    }

    async fn handle(&mut self, m: &BorrowedMessage<'_>) -> Result<(), RunnerError> {
        self.begin();
        if let Some(payload) = m.payload() {
            if let Ok((id, _)) = codec::split_frame(payload) {
                self.ensure_writer(id).await;
            }
        }
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        let incoming = Incoming {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            key: m.key(),
            headers,
            payload: m.payload(),
        };
        if !self.engine.assigned().contains(&m.partition()) {
            self.restore_task(m.partition()).await?;
        }
        let started = Instant::now();
        let handled = self
            .engine
            .handle(&incoming, now_ms(), &mut self.batch.effects);
        self.metrics
            .processing_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.count_in(m.topic());
        if let Err(stopped) = handled {
            // Commit everything before the record that stopped us.
            self.flush().await?;
            return Err(stopped.into());
        }
        // Look up by &str first: no allocation per record.
        match self.batch.offsets.get_mut(m.topic()) {
            Some(partitions) => {
                partitions.insert(m.partition(), m.offset() + 1);
            }
            None => {
                self.batch.offsets.insert(
                    m.topic().to_string(),
                    HashMap::from([(m.partition(), m.offset() + 1)]),
                );
            }
        }
        self.batch.records += 1;
        self.after_effects();
        if self.batch.records >= self.config.max_batch {
            self.flush().await?;
        }
        Ok(())
    }

    /// Fetch (once) the writer schema of a schema id; ids the registry does not know are
    /// left unknown, so their records are dead-lettered as undecodable.
    async fn ensure_writer(&mut self, id: i32) {
        if self.engine.knows_writer(id) || self.unknown_ids.contains(&id) {
            return;
        }
        let Ok(id_u32) = u32::try_from(id) else {
            self.unknown_ids.insert(id);
            return;
        };
        let mut delay = Duration::from_millis(250);
        loop {
            match get_schema_by_id(id_u32, &self.sr).await {
                Ok(registered) => match SchemaCodec::parse(&registered.schema) {
                    Ok(codec) => {
                        self.engine.add_writer(id, codec);
                        return;
                    }
                    Err(e) => {
                        warn!(id, error = %e, "registry returned a schema that does not parse");
                        self.unknown_ids.insert(id);
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
                    self.unknown_ids.insert(id);
                    return;
                }
            }
        }
    }

    async fn apply_rebalance_events(&mut self) -> Result<(), RunnerError> {
        let events: Vec<RebalanceEvent> = match self.events.lock() {
            Ok(mut e) => e.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for event in events {
            match event {
                RebalanceEvent::Revoked(parts) => {
                    for p in &parts {
                        self.owned.remove(p);
                        if let Some(partitions) = self.batch.offsets.get_mut(&p.0) {
                            partitions.remove(&p.1);
                        }
                    }
                    let still: BTreeSet<i32> = self.owned.iter().map(|(_, p)| *p).collect();
                    for partition in self.engine.assigned() {
                        if !still.contains(&partition) {
                            self.engine.revoke(partition);
                            debug!(partition, "task revoked");
                        }
                    }
                    info!(revoked = ?parts, "partitions revoked");
                }
                RebalanceEvent::Assigned(parts) => {
                    info!(assigned = ?parts, "partitions assigned");
                    let tasks: BTreeSet<i32> = parts.iter().map(|(_, p)| *p).collect();
                    self.owned.extend(parts);
                    for partition in tasks {
                        if !self.engine.assigned().contains(&partition) {
                            self.restore_task(partition).await?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Create a task and fill its stores from their changelog partitions.
    async fn restore_task(&mut self, partition: i32) -> Result<(), RunnerError> {
        self.engine.assign(partition);
        for store in self.engine.topology().store_names().to_vec() {
            let topic = self.engine.topology().changelog_topic(&store);
            let started = Instant::now();
            let bootstrap = self.config.endpoints.bootstrap_servers.clone();
            let topic_for_read = topic.clone();
            let records = tokio::task::spawn_blocking(move || {
                read_partition(&bootstrap, &topic_for_read, partition)
            })
            .await
            .map_err(|e| RunnerError::Catalog(e.to_string()))??;
            let count = records.len();
            for (key, value) in records {
                self.engine.restore(partition, &store, key, value);
            }
            let seconds = started.elapsed().as_secs_f64();
            self.metrics
                .restore_seconds
                .with_label_values(&[store.as_str()])
                .set(seconds);
            self.metrics
                .restored_records
                .with_label_values(&[store.as_str()])
                .inc_by(count as u64);
            info!(%store, partition, records = count, seconds, "store restored");
        }
        Ok(())
    }

    /// Send everything the batch produced, wait until the broker has it all, then commit.
    async fn flush(&mut self) -> Result<(), RunnerError> {
        let batch = std::mem::take(&mut self.batch);
        if batch.records == 0 && batch.effects.is_empty() && !batch.in_transaction {
            return Ok(());
        }
        let Effects {
            outputs,
            changelog,
            dead_letters,
            ..
        } = batch.effects;
        let mut pending: Vec<Output> = outputs;
        pending.extend(changelog);
        for (out, kind) in dead_letters {
            self.metrics
                .dead_letters
                .with_label_values(&[kind.as_str()])
                .inc();
            warn!(
                topic = %out.topic,
                reason = kind.as_str(),
                error = %out.headers.iter().find(|(k, _)| k == crate::engine::headers::ERROR).map(|(_, v)| String::from_utf8_lossy(v).into_owned()).unwrap_or_default(),
                "record dead-lettered"
            );
            pending.push(out);
        }
        self.deliver(pending).await;

        let mut offsets = TopicPartitionList::new();
        for (topic, partitions) in &batch.offsets {
            for (partition, next) in partitions {
                if self.owned.is_empty() || self.owned.contains(&(topic.clone(), *partition)) {
                    offsets.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
                }
            }
        }
        if batch.in_transaction {
            let group = self
                .consumer
                .group_metadata()
                .ok_or(RunnerError::Transaction(KafkaError::NoMessageReceived))?;
            if offsets.count() > 0 {
                self.producer
                    .send_offsets_to_transaction(&offsets, &group, Duration::from_secs(30))
                    .map_err(RunnerError::Transaction)?;
            }
            if let Err(e) = self.producer.commit_transaction(Duration::from_secs(30)) {
                let _ = self.producer.abort_transaction(Duration::from_secs(30));
                return Err(RunnerError::Transaction(e));
            }
            self.metrics.commits.inc();
            return Ok(());
        }
        if offsets.count() > 0 {
            match self.consumer.commit(&offsets, CommitMode::Sync) {
                Ok(()) => self.metrics.commits.inc(),
                Err(e) => {
                    self.metrics.commit_failures.inc();
                    warn!(error = %e, "offset commit failed; those records will be processed again");
                }
            }
        }
        Ok(())
    }

    /// Produce every record and wait for the broker's acknowledgement of each, re-sending
    /// any whose delivery failed. Nothing is dropped: this returns only when all are in.
    async fn deliver(&self, mut pending: Vec<Output>) {
        let mut delay = Duration::from_millis(100);
        while !pending.is_empty() {
            let mut in_flight = Vec::with_capacity(pending.len());
            for out in pending.drain(..) {
                let future = loop {
                    match self.producer.send_result(record_of(&out)) {
                        Ok(future) => break future,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err((e, _)) => {
                            warn!(error = %e, topic = %out.topic, "cannot enqueue; retrying");
                            self.metrics.producer_retries.inc();
                            tokio::time::sleep(delay).await;
                        }
                    }
                };
                in_flight.push((out, future));
            }
            for (out, future) in in_flight {
                match future.await {
                    Ok(Ok(_)) => self.metrics.count_out(&out.topic),
                    Ok(Err((e, _))) => {
                        self.metrics.producer_retries.inc();
                        warn!(error = %e, topic = %out.topic, "delivery failed; will re-send");
                        pending.push(out);
                    }
                    Err(_) => pending.push(out),
                }
            }
            if !pending.is_empty() {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn record_of(out: &Output) -> FutureRecord<'_, [u8], [u8]> {
    let mut record = FutureRecord::<[u8], [u8]>::to(&out.topic);
    if let Some(k) = &out.key {
        record = record.key(k.as_slice());
    }
    if let Some(p) = &out.payload {
        record = record.payload(p.as_slice());
    }
    if let Some(p) = out.partition {
        record = record.partition(p);
    }
    if let Some(ts) = out.timestamp_ms {
        record = record.timestamp(ts);
    }
    if !out.headers.is_empty() {
        let headers = out.headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v.as_slice()),
            })
        });
        record = record.headers(headers);
    }
    record
}

/// A changelog record: store key, and value (`None`: deleted).
type ChangelogEntry = (String, Option<Vec<u8>>);

/// Read one partition of a topic from its start to its current end.
fn read_partition(
    bootstrap: &str,
    topic: &str,
    partition: i32,
) -> Result<Vec<ChangelogEntry>, RunnerError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}-restore"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()?;
    let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(30))?;
    let mut out = Vec::new();
    if high <= low {
        return Ok(out);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let key = m
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default();
                out.push((key, m.payload().map(<[u8]>::to_vec)));
                if m.offset() + 1 >= high {
                    return Ok(out);
                }
            }
            Some(Err(e)) if is_partition_eof(&e) => return Ok(out),
            Some(Err(e)) => warn!(error = %e, %topic, partition, "reading changelog"),
            None => {}
        }
    }
    Err(RunnerError::Kafka(KafkaError::Global(
        RDKafkaErrorCode::OperationTimedOut,
    )))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

fn default_instance_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    format!("{host}-{}", std::process::id())
}

//! The gateway: UDP <-> Kafka and nothing else, on one socket for both directions (the
//! original system learned that a second socket breaks under carrier-grade NAT).
//!
//! * Uplink: each datagram is decoded; IoT Data becomes a `SensorReading` on the sensor topic
//!   the device-id catalog names, IoT Status goes to `iot-status`, an ACK to
//!   `carrier-switch-ack` with the request id it answers. Anything else (malformed,
//!   unauthenticated, replayed, a downlink packet sent uplink) is published whole to
//!   `gateway-rejects` with its reason, counted, and logged at a rate-limited level.
//! * Identity: an envelope names its modem; a v1 packet is attributed to the configured
//!   legacy modem id. The latest source address of each modem is its downlink address; with
//!   keys configured, only a packet with a valid tag and a fresh sequence number moves it.
//! * Sessions ([`sessions`]): each modem heard, v1 included, gets a record on the compacted
//!   `device-sessions` topic (this instance, address, protocol, first and last seen) on first
//!   sight, on a move and as a bounded heartbeat; carrier-state lists modems from it, and a
//!   restarted gateway reads its own sessions back, so downlink reaches modems at once.
//! * Downlink: `downstream-request` becomes a Carrier Switch Perform (in an envelope with
//!   the request id, signed when the modem has a key; a bare v1 packet for the legacy
//!   modem), sent to the modem's address and re-sent with backoff until its ACK arrives or
//!   its deadline passes; each step is published to `downlink-delivery`.
//! * A broker that is down: records wait in the producer's bounded queue and go out when it
//!   returns; a full queue drops the record and counts it (`switchyard_gateway_backpressure_total`).

pub mod downlink;
pub mod metrics;
pub mod replay;
pub mod request_offsets;
pub mod restore;
pub mod sessions;
pub mod socket_drops;
pub mod uplink;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard_schemas::records::now_us;

use anyhow::Context;
use clap::Args;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use switchyard_kafka::{is_partition_eof, Endpoints, TracingContext};
use switchyard_protocol::json::parse_request_id;
use switchyard_protocol::{verify, AuthError, Envelope, Frame, Packet};
use switchyard_registry::{RecordDecoder, RegistryClient};
use switchyard_schemas::records::{
    CarrierSwitchRequest, DeliveryEvent, DownlinkDelivery, GatewayReject, SessionProtocol,
};
use switchyard_schemas::wire::SchemaCodec;
use switchyard_schemas::{value_subject, Catalog, Role};
use switchyard_telemetry::Health;
use tokio::net::UdpSocket;
use tracing::{info, warn};

use crate::downlink::{Action, Downlink};
use crate::metrics::GatewayMetrics;
use crate::replay::ReplayWindow;
use crate::request_offsets::RequestOffsets;
use crate::sessions::Sessions;
use crate::uplink::{to_record, wire_carrier, Uplink, ACK_TOPIC, STATUS_TOPIC};

pub const REQUEST_TOPIC: &str = "downstream-request";
pub const DELIVERY_TOPIC: &str = "downlink-delivery";
pub const REJECT_TOPIC: &str = "gateway-rejects";
pub const SESSIONS_TOPIC: &str = "device-sessions";

#[derive(Debug, Clone, Args)]
pub struct GatewayConfig {
    /// UDP address devices send to (and receive from: one socket).
    #[arg(
        long,
        env = "SWITCHYARD_GATEWAY_LISTEN",
        default_value = "0.0.0.0:6001"
    )]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub endpoints: Endpoints,
    /// Serve /metrics and /health here.
    #[arg(
        long,
        env = "SWITCHYARD_METRICS_LISTEN",
        default_value = "127.0.0.1:9104"
    )]
    pub metrics_listen: SocketAddr,
    /// Modem id that v1 packets (which carry no identity) are attributed to.
    #[arg(long, env = "SWITCHYARD_LEGACY_MODEM_ID", default_value = "0")]
    pub legacy_modem_id: String,
    /// Refuse v1 packets (once every device speaks the envelope).
    #[arg(long, env = "SWITCHYARD_REJECT_V1")]
    pub reject_v1: bool,
    /// Modem keys, one `MODEM_ID HEX_KEY` per line. With keys, envelopes must carry a
    /// valid tag and a fresh sequence number.
    #[arg(long, env = "SWITCHYARD_MODEM_KEYS")]
    pub modem_keys: Option<PathBuf>,
    /// First retransmission after this many milliseconds (then doubling).
    #[arg(long, env = "SWITCHYARD_RETRY_INITIAL_MS", default_value_t = 1000)]
    pub retry_initial_ms: u64,
    /// Longest wait between retransmissions.
    #[arg(long, env = "SWITCHYARD_RETRY_MAX_MS", default_value_t = 8000)]
    pub retry_max_ms: u64,
    /// Records the producer may hold while the broker is unreachable.
    #[arg(long, env = "SWITCHYARD_GATEWAY_BUFFER", default_value_t = 100_000)]
    pub buffer_records: u32,
    /// UDP receive buffer to ask the kernel for (bytes); bursts beyond it are dropped by
    /// the kernel before the gateway sees them. Linux caps it at net.core.rmem_max.
    #[arg(
        long,
        env = "SWITCHYARD_GATEWAY_UDP_BUFFER",
        default_value_t = 4 * 1024 * 1024
    )]
    pub udp_buffer_bytes: usize,
    /// How long the producer waits to fill a batch (librdkafka `linger.ms`). Each produce
    /// request costs the broker far more than each record in it, so a longer wait trades
    /// latency for broker CPU.
    #[arg(long, env = "SWITCHYARD_GATEWAY_LINGER_MS", default_value_t = 5)]
    pub linger_ms: u64,
    /// This instance's name in `device-sessions`: the sessions it holds are those it reads
    /// back after a restart. Give each of N gateways its own, and keep it across restarts.
    #[arg(long, env = "SWITCHYARD_GATEWAY_ID", default_value = "gateway")]
    pub instance_id: String,
    /// A modem's session is re-written at most this often while nothing about it changes
    /// (its `last seen` has this resolution), whatever its packet rate.
    #[arg(long, env = "SWITCHYARD_SESSION_HEARTBEAT_SECS", default_value_t = 30)]
    pub session_heartbeat_secs: u64,
}

/// The gateway's one UDP socket, with a receive buffer sized for bursts.
pub fn bind_udp(listen: SocketAddr, recv_buffer: usize) -> anyhow::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )
    .context("creating the UDP socket")?;
    if let Err(e) = socket.set_recv_buffer_size(recv_buffer) {
        warn!(error = %e, bytes = recv_buffer, "cannot size the UDP receive buffer; using the default");
    }
    socket.set_nonblocking(true)?;
    socket
        .bind(&listen.into())
        .with_context(|| format!("binding UDP {listen}"))?;
    let granted = socket.recv_buffer_size().unwrap_or_default();
    if granted < recv_buffer {
        info!(
            asked = recv_buffer,
            granted, "UDP receive buffer smaller than asked (net.core.rmem_max)"
        );
    }
    Ok(UdpSocket::from_std(socket.into())?)
}

struct Gateway {
    config: GatewayConfig,
    catalog: Catalog,
    socket: UdpSocket,
    producer: FutureProducer,
    codecs: HashMap<String, (i32, Arc<SchemaCodec>)>,
    keys: HashMap<u64, Vec<u8>>,
    sessions: Mutex<Sessions>,
    windows: Mutex<HashMap<u64, ReplayWindow>>,
    downlink: Mutex<Downlink>,
    downlink_sequence: Mutex<HashMap<u64, u32>>,
    /// What of `downstream-request` may be committed: nothing past a pending request.
    request_offsets: Mutex<RequestOffsets>,
    /// Wakes the downlink loop when a request arrives, so it is sent at once.
    new_request: tokio::sync::Notify,
    registry: RegistryClient,
    metrics: GatewayMetrics,
}

/// Run the gateway until `shutdown` completes.
pub async fn run(config: GatewayConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let catalog = Catalog::embedded().context("the built-in catalog is invalid")?;
    let keys = match &config.modem_keys {
        Some(path) => switchyard_protocol::keys::parse_keys(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))?,
        None => HashMap::new(),
    };
    let metrics = GatewayMetrics::new()?;
    let health = Health::default();
    let bound = switchyard_telemetry::serve(
        config.metrics_listen,
        metrics.registry.clone(),
        health.clone(),
    )
    .await
    .with_context(|| format!("metrics endpoint on {}", config.metrics_listen))?;
    tokio::pin!(shutdown);

    // Every topic the gateway writes or reads, with its registered schema.
    let mut topics: Vec<String> = catalog
        .topics_with_role(Role::Sensor)
        .map(|t| t.name.clone())
        .collect();
    topics.extend(
        [
            STATUS_TOPIC,
            ACK_TOPIC,
            DELIVERY_TOPIC,
            REJECT_TOPIC,
            REQUEST_TOPIC,
            SESSIONS_TOPIC,
        ]
        .map(String::from),
    );
    let registry = RegistryClient::new(&config.endpoints.registry_url);
    let mut codecs = HashMap::new();
    for topic in topics {
        let text = catalog
            .value_schema(&topic)
            .with_context(|| format!("{topic} has no schema"))?;
        let subject = value_subject(&topic);
        let id = tokio::select! {
            registered = registry.register_retrying(&subject, text) => {
                registered.with_context(|| format!("registering {topic}"))?
            }
            _ = &mut shutdown => return Ok(()),
        };
        codecs.insert(
            topic,
            (id, SchemaCodec::parse(text).map_err(anyhow::Error::msg)?),
        );
    }

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &config.endpoints.bootstrap_servers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", config.linger_ms.to_string())
        .set(
            "queue.buffering.max.messages",
            config.buffer_records.to_string(),
        )
        .set("message.timeout.ms", "300000")
        .create()
        .context("creating the producer")?;
    let consumer: StreamConsumer<TracingContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.endpoints.bootstrap_servers)
        .set("group.id", "switchyard-gateway")
        // Static membership: a restarted instance takes its own place in the group at once
        // instead of waiting for the broker to expire the process it replaces.
        .set("group.instance.id", &config.instance_id)
        // Offsets are stored by hand, only up to the oldest request still pending
        // (request_offsets), and committed in the background every 5 s.
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        // With no committed offset, start from the beginning: a request made before the
        // gateway's first start is not skipped (a stale one fails its deadline at once).
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        // Downlink is interactive: do not let the broker sit on a fetch.
        .set(
            "fetch.wait.max.ms",
            switchyard_kafka::FETCH_WAIT_MS.to_string(),
        )
        .create_with_context(TracingContext)
        .context("creating the consumer")?;
    consumer
        .subscribe(&[REQUEST_TOPIC])
        .context("subscribing to downstream-request")?;

    let mut sessions = Sessions::new(
        &config.instance_id,
        i64::try_from(config.session_heartbeat_secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX),
    );
    let (session_id, session_codec) = codecs
        .get(SESSIONS_TOPIC)
        .cloned()
        .context("no schema for device-sessions")?;
    let restored = tokio::select! {
        restored = restore::restore_sessions(
            &config.endpoints.bootstrap_servers,
            RecordDecoder::new(registry.clone(), session_id, session_codec),
            &mut sessions,
            Duration::from_secs(60),
        ) => restored?,
        _ = &mut shutdown => return Ok(()),
    };
    let (taken, skipped) = restored;
    metrics.sessions_restored.set(taken as i64);
    metrics.known_modems.set(sessions.len() as i64);
    if skipped > 0 {
        metrics
            .rejects
            .with_label_values(&["bad_session_record"])
            .inc_by(skipped);
    }
    info!(instance = %config.instance_id, restored = taken, skipped, "sessions read back");

    let socket = bind_udp(config.listen, config.udp_buffer_bytes)?;
    let listen = socket.local_addr()?;
    let gateway = Arc::new(Gateway {
        downlink: Mutex::new(Downlink::new(
            i64::try_from(config.retry_initial_ms.saturating_mul(1000)).unwrap_or(i64::MAX),
            i64::try_from(config.retry_max_ms.saturating_mul(1000)).unwrap_or(i64::MAX),
        )),
        config,
        catalog,
        socket,
        producer,
        codecs,
        keys,
        sessions: Mutex::new(sessions),
        windows: Mutex::new(HashMap::new()),
        downlink_sequence: Mutex::new(HashMap::new()),
        request_offsets: Mutex::new(RequestOffsets::default()),
        new_request: tokio::sync::Notify::new(),
        registry,
        metrics,
    });
    health.set_ready(true);
    info!(udp = %listen, metrics = %bound, authenticated = !gateway.keys.is_empty(), "gateway running");

    let uplink = tokio::spawn(Arc::clone(&gateway).receive());
    let consumer = Arc::new(consumer);
    let requests = tokio::spawn(Arc::clone(&gateway).take_requests(Arc::clone(&consumer)));
    let retransmit = tokio::spawn(Arc::clone(&gateway).retransmit(consumer));
    let drops = match socket_drops::socket_inode(&gateway.socket) {
        Some(inode) => tokio::spawn(socket_drops::watch(
            inode,
            gateway.metrics.kernel_drops.clone(),
        )),
        None => tokio::spawn(async {}),
    };
    shutdown.await;
    info!("shutting down");
    uplink.abort();
    requests.abort();
    retransmit.abort();
    drops.abort();
    let producer = gateway.producer.clone();
    tokio::task::spawn_blocking(move || {
        rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10))
    })
    .await
    .ok();
    Ok(())
}

/// Logs the 1st, 2nd, 4th, 8th… occurrence of a recurring problem.
fn rate_limited(count: u64) -> bool {
    count.is_power_of_two()
}

impl Gateway {
    async fn receive(self: Arc<Self>) {
        let mut buf = vec![0u8; 65_536];
        loop {
            match self.socket.recv_from(&mut buf).await {
                Ok((n, source)) => self.uplink(&buf[..n], source),
                Err(e) => {
                    warn!(error = %e, "UDP receive failed; continuing");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    /// One datagram from a device.
    fn uplink(self: &Arc<Self>, datagram: &[u8], source: SocketAddr) {
        let arrived = std::time::Instant::now();
        let received_at = now_us();
        let frame = match Frame::decode(datagram) {
            Ok(frame) => frame,
            Err(e) => {
                return self.reject(
                    datagram,
                    source,
                    e.reason_code(),
                    &e.to_string(),
                    None,
                    arrived,
                )
            }
        };
        let modem_id = match &frame.envelope {
            Some(envelope) => {
                if let Err((reason, detail)) = self.authenticate(datagram, envelope) {
                    return self.reject(
                        datagram,
                        source,
                        reason,
                        &detail,
                        Some(envelope.modem_id.to_string()),
                        arrived,
                    );
                }
                envelope.modem_id.to_string()
            }
            None if self.config.reject_v1 => {
                return self.reject(
                    datagram,
                    source,
                    "v1_not_accepted",
                    "v1 packets are refused (--reject-v1)",
                    None,
                    arrived,
                )
            }
            None => self.config.legacy_modem_id.clone(),
        };
        let record = match to_record(&frame, &modem_id, received_at, &self.catalog) {
            Ok(record) => record,
            Err(reason) => {
                return self.reject(
                    datagram,
                    source,
                    reason,
                    "a device sent a downlink packet",
                    Some(modem_id),
                    arrived,
                )
            }
        };
        self.metrics
            .packets
            .with_label_values(&[frame.packet.kind()])
            .inc();
        let protocol = match frame.envelope {
            Some(_) => SessionProtocol::Envelope,
            None => SessionProtocol::V1,
        };
        let authenticated = frame.envelope.is_some() && !self.keys.is_empty();
        let session = self.sessions.lock().ok().and_then(|mut sessions| {
            let record = sessions.observe(&modem_id, source, protocol, authenticated, received_at);
            self.metrics.known_modems.set(sessions.len() as i64);
            record
        });
        if let Some(session) = session {
            self.metrics.session_writes.inc();
            self.publish(SESSIONS_TOPIC, &modem_id, &session, arrived);
        }
        match record {
            Uplink::Reading { topic, reading } => {
                self.publish(&topic, &modem_id, &reading, arrived)
            }
            Uplink::Status(status) => self.publish(STATUS_TOPIC, &modem_id, &status, arrived),
            Uplink::Ack(ack) => {
                let request_id = ack
                    .request_id
                    .as_deref()
                    .and_then(|id| parse_request_id(id).ok());
                // The pending downlink ends only once the ACK is on the broker: if its record
                // were lost, carrier-state would time out a switch the SIM made. Until then
                // the Perform may be re-sent, and the SIM answers it again.
                let gateway = Arc::clone(self);
                let modem = modem_id.clone();
                self.publish_then(ACK_TOPIC, &modem_id, &ack, arrived, move || {
                    let answered = gateway
                        .downlink
                        .lock()
                        .ok()
                        .and_then(|mut d| d.answered(request_id, &modem));
                    if let Some(p) = answered {
                        gateway.delivery(
                            p.request_id,
                            &modem,
                            DeliveryEvent::Acked,
                            p.attempts,
                            Some(source),
                            None,
                        );
                    }
                });
            }
        }
    }

    /// With keys configured: a known modem, a valid tag, a fresh sequence number.
    fn authenticate(
        &self,
        datagram: &[u8],
        envelope: &Envelope,
    ) -> Result<(), (&'static str, String)> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let key = self.keys.get(&envelope.modem_id).ok_or((
            "unknown_modem",
            format!("no key for modem {}", envelope.modem_id),
        ))?;
        verify(datagram, key).map_err(|e| {
            let reason = match e {
                AuthError::MissingTag => "missing_tag",
                _ => "bad_tag",
            };
            (reason, e.to_string())
        })?;
        let fresh = self
            .windows
            .lock()
            .map(|mut w| {
                w.entry(envelope.modem_id)
                    .or_default()
                    .accept(envelope.sequence)
            })
            .unwrap_or(false);
        if !fresh {
            return Err((
                "replayed_sequence",
                format!("sequence {} was seen or is too old", envelope.sequence),
            ));
        }
        Ok(())
    }

    fn reject(
        &self,
        datagram: &[u8],
        source: SocketAddr,
        reason: &'static str,
        detail: &str,
        modem_id: Option<String>,
        arrived: std::time::Instant,
    ) {
        let counter = self.metrics.rejects.with_label_values(&[reason]);
        counter.inc();
        if rate_limited(counter.get()) {
            warn!(%source, reason, detail, occurrences = counter.get(), "datagram rejected");
        }
        let record = GatewayReject {
            received_at: now_us(),
            source: source.to_string(),
            reason: reason.to_string(),
            detail: detail.to_string(),
            modem_id,
            raw: datagram.to_vec(),
        };
        self.publish(REJECT_TOPIC, &source.to_string(), &record, arrived);
    }

    /// Hand a record to the producer; its delivery is awaited in the background, and the
    /// time from `started` (the datagram's arrival) to the broker's ack is observed.
    fn publish<T: Serialize>(
        &self,
        topic: &str,
        key: &str,
        value: &T,
        started: std::time::Instant,
    ) {
        self.publish_then(topic, key, value, started, || {});
    }

    /// [`Self::publish`], running `acknowledged` once the broker has acknowledged the record
    /// (never, if it does not). A record that cannot be handed over is counted in
    /// `switchyard_gateway_dropped_total{topic,reason}` (the queue-full case also in
    /// `backpressure_total`), one the broker never acknowledges in `produce_failures_total`.
    fn publish_then<T: Serialize>(
        &self,
        topic: &str,
        key: &str,
        value: &T,
        started: std::time::Instant,
        acknowledged: impl FnOnce() + Send + 'static,
    ) {
        let dropped = |reason: &str, detail: &dyn std::fmt::Display| {
            let c = self.metrics.dropped.with_label_values(&[topic, reason]);
            c.inc();
            if rate_limited(c.get()) {
                warn!(%topic, reason, %detail, dropped = c.get(), "record dropped");
            }
        };
        let Some((id, codec)) = self.codecs.get(topic) else {
            return dropped("no_schema", &"no registered schema for the topic");
        };
        let payload = match codec.encode(*id, value) {
            Ok(p) => p,
            Err(e) => return dropped("encode", &e),
        };
        let record = FutureRecord::to(topic).key(key).payload(&payload);
        match self.producer.send_result(record) {
            Ok(delivery) => {
                let metrics = self.metrics.clone();
                let topic = topic.to_string();
                tokio::spawn(async move {
                    match delivery.await {
                        Ok(Ok(_)) => {
                            metrics
                                .produce_seconds
                                .observe(started.elapsed().as_secs_f64());
                            acknowledged();
                        }
                        _ => {
                            let c = metrics.produce_failures.with_label_values(&[&topic]);
                            c.inc();
                            if rate_limited(c.get()) {
                                warn!(%topic, failures = c.get(), "record not delivered to the broker");
                            }
                        }
                    }
                });
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                self.metrics.backpressure.inc();
                dropped("queue_full", &"producer buffer full (broker down?)");
            }
            Err((e, _)) => dropped("produce_error", &e),
        }
    }

    fn delivery(
        &self,
        request_id: u64,
        modem_id: &str,
        event: DeliveryEvent,
        attempt: i32,
        address: Option<SocketAddr>,
        reason: Option<&str>,
    ) {
        let record = DownlinkDelivery {
            request_id: format!("{request_id:016x}"),
            modem_id: modem_id.to_string(),
            event,
            attempt,
            address: address.map(|a| a.to_string()),
            reason: reason.map(str::to_string),
            at: now_us(),
        };
        self.publish(DELIVERY_TOPIC, modem_id, &record, std::time::Instant::now());
    }

    async fn take_requests(self: Arc<Self>, consumer: Arc<StreamConsumer<TracingContext>>) {
        let Some((id, codec)) = self.codecs.get(REQUEST_TOPIC).cloned() else {
            warn!("no schema for downstream-request; downlink is off");
            return;
        };
        // Requests written with a newer (compatible) schema are resolved to ours.
        let mut decoder = RecordDecoder::new(self.registry.clone(), id, codec);
        loop {
            let message = match consumer.recv().await {
                Ok(m) => m,
                Err(e) if is_partition_eof(&e) => continue,
                Err(e) => {
                    warn!(error = %e, "reading downstream-request; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let request = decoder
                .decode::<CarrierSwitchRequest>(message.payload())
                .await;
            match request.and_then(|r| {
                parse_request_id(&r.request_id)
                    .map(|rid| (r, rid))
                    .map_err(|e| e.to_string())
            }) {
                Ok((request, request_id)) => {
                    // Added and recorded under one lock of the downlink, so the offset is
                    // never committed between the two.
                    let added = self.downlink.lock().map(|mut d| {
                        let added = d.add(
                            request_id,
                            &request.modem_id,
                            wire_carrier(request.carrier),
                            request.deadline,
                            now_us(),
                        );
                        if let Ok(mut offsets) = self.request_offsets.lock() {
                            if added {
                                offsets.pending(request_id, message.partition(), message.offset());
                            } else {
                                offsets.read(message.partition(), message.offset());
                            }
                        }
                        added
                    });
                    if added.unwrap_or(false) {
                        self.new_request.notify_one();
                        info!(request = %request.request_id, modem = %request.modem_id, carrier = ?request.carrier, "switch request taken");
                    }
                }
                Err(e) => {
                    self.metrics
                        .rejects
                        .with_label_values(&["bad_request_record"])
                        .inc();
                    warn!(error = %e, offset = message.offset(), "unreadable switch request skipped");
                    if let Ok(mut offsets) = self.request_offsets.lock() {
                        offsets.read(message.partition(), message.offset());
                    }
                }
            }
        }
    }

    async fn retransmit(self: Arc<Self>, consumer: Arc<StreamConsumer<TracingContext>>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut stored = Vec::new();
        loop {
            self.store_request_offsets(&consumer, &mut stored);
            // Every 100 ms for retries and deadlines, and at once for a new request.
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.new_request.notified() => {}
            }
            self.metrics
                .buffered
                .set(i64::from(rdkafka::producer::Producer::in_flight_count(
                    &self.producer,
                )));
            let actions = match (self.downlink.lock(), self.sessions.lock()) {
                (Ok(mut downlink), Ok(sessions)) => {
                    downlink.due(now_us(), |m| sessions.address(m).is_some())
                }
                _ => Vec::new(),
            };
            for action in actions {
                match action {
                    Action::Send {
                        request_id,
                        modem_id,
                        carrier,
                        attempt,
                    } => {
                        let address = self.sessions.lock().ok().and_then(|s| s.address(&modem_id));
                        let Some(address) = address else {
                            continue;
                        };
                        let packet = match self.perform_packet(&modem_id, request_id, carrier) {
                            Ok(p) => p,
                            Err(e) => {
                                warn!(modem = %modem_id, error = %e, "cannot build a Perform packet");
                                continue;
                            }
                        };
                        if let Err(e) = self.socket.send_to(&packet, address).await {
                            warn!(%address, error = %e, "UDP send failed");
                        }
                        let event = if attempt == 1 {
                            DeliveryEvent::Sent
                        } else {
                            DeliveryEvent::Retried
                        };
                        if attempt > 1 {
                            self.metrics.downlink_retries.inc();
                        } else {
                            self.metrics.downlink_sent.inc();
                        }
                        self.delivery(request_id, &modem_id, event, attempt, Some(address), None);
                    }
                    Action::GiveUp {
                        request_id,
                        modem_id,
                        attempts,
                        reason,
                    } => {
                        self.metrics
                            .undeliverable
                            .with_label_values(&[reason])
                            .inc();
                        warn!(request = format!("{request_id:016x}"), modem = %modem_id, reason, "switch request undeliverable");
                        self.delivery(
                            request_id,
                            &modem_id,
                            DeliveryEvent::Undeliverable,
                            attempts,
                            None,
                            Some(reason),
                        );
                    }
                }
            }
        }
    }

    /// Store for the next background commit, per partition, the offset of the oldest request
    /// still pending (or the one after the last read), when it moved since `stored`.
    fn store_request_offsets(
        &self,
        consumer: &StreamConsumer<TracingContext>,
        stored: &mut Vec<(i32, i64)>,
    ) {
        let positions = match (self.downlink.lock(), self.request_offsets.lock()) {
            (Ok(downlink), Ok(mut offsets)) => {
                offsets.retain(|id| downlink.contains(id));
                offsets.positions()
            }
            _ => return,
        };
        if positions == *stored {
            return;
        }
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (partition, offset) in &positions {
            if tpl
                .add_partition_offset(REQUEST_TOPIC, *partition, rdkafka::Offset::Offset(*offset))
                .is_err()
            {
                return;
            }
        }
        match consumer.store_offsets(&tpl) {
            Ok(()) => *stored = positions,
            // A partition no longer assigned (rebalance): tried again at the next tick.
            Err(e) => warn!(error = %e, "storing downstream-request offsets"),
        }
    }

    /// The Perform packet for a modem: bare v1 for the legacy modem, else an envelope with
    /// the request id, signed when the modem has a key.
    fn perform_packet(
        &self,
        modem_id: &str,
        request_id: u64,
        carrier: switchyard_protocol::Carrier,
    ) -> anyhow::Result<Vec<u8>> {
        let packet = Packet::CarrierSwitchPerform(carrier);
        if modem_id == self.config.legacy_modem_id {
            return Ok(packet.encode()?);
        }
        let modem: u64 = modem_id
            .parse()
            .with_context(|| format!("modem id {modem_id:?} is not a number"))?;
        let sequence = self
            .downlink_sequence
            .lock()
            .map(|mut s| {
                let n = s.entry(modem).or_insert(0);
                *n = n.wrapping_add(1);
                *n
            })
            .unwrap_or(0);
        let frame = Frame {
            envelope: Some(Envelope {
                modem_id: modem,
                sequence,
                request_id: Some(request_id),
                auth_tag: None,
            }),
            packet,
        };
        Ok(match self.keys.get(&modem) {
            Some(key) => frame.encode_signed(key)?,
            None => frame.encode()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_logging_thins_out() {
        let logged: Vec<u64> = (1..=20).filter(|n| rate_limited(*n)).collect();
        assert_eq!(logged, vec![1, 2, 4, 8, 16]);
    }
}

//! The gateway as a service: start-up (schemas, clients, sessions read back, socket), the
//! state its tasks share, and shutdown. The tasks are in `receive` (uplink), `send`
//! (downlink, which owns its state and is told the rest), `follow` and `expiry` (sessions)
//! and `publish` (records to Kafka).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use switchyard_kafka::{clients, TracingContext};
use switchyard_protocol::keys::ModemKeys;
use switchyard_registry_client::{RecordDecoder, RegistryClient};
use switchyard_schemas::wire::SchemaCodec;
use switchyard_schemas::{value_subject, Catalog, Role};
use switchyard_telemetry::Health;
use tracing::{info, warn};

use crate::config::{bind_udp, GatewayConfig};
use crate::metrics::GatewayMetrics;
use crate::producer::{ProducerSettings, Producers};
use crate::replay::{Freshness, ReplayWindows};
use crate::restore;
use crate::send::{DownlinkTask, ToDownlink, DOWNLINK_QUEUE};
use crate::sessions::Sessions;
use crate::socket_drops;
use crate::uplink::{ACK_TOPIC, STATUS_TOPIC};
use crate::{DELIVERY_TOPIC, REJECT_TOPIC, REQUEST_TOPIC, SESSIONS_TOPIC};

/// What the gateway's tasks share: read-only settings and clients, the modems' state
/// behind one lock, and the downlink task's inbox. The modems' state is under a lock, not
/// owned by a task, because the uplink thread needs an answer for every datagram before it
/// goes on (is the number fresh? is a session record due?), and a message round trip per
/// datagram would cost more than the datagram's whole handling; the lock is held only for
/// lookups and updates, never across a wait.
pub(crate) struct Gateway {
    pub(crate) config: GatewayConfig,
    pub(crate) catalog: Catalog,
    pub(crate) socket: std::net::UdpSocket,
    pub(crate) producers: Producers,
    pub(crate) codecs: HashMap<String, (i32, Arc<SchemaCodec>)>,
    pub(crate) keys: Arc<ModemKeys>,
    /// Every modem's state: who holds it and where it is, and how fresh its numbers must
    /// be ([`Modems`]).
    pub(crate) modems: Mutex<Modems>,
    /// The downlink task ([`crate::send`]), which owns the pending requests, the downlink
    /// numbers and the request offsets.
    pub(crate) to_downlink: tokio::sync::mpsc::Sender<ToDownlink>,
    pub(crate) registry: RegistryClient,
    pub(crate) metrics: GatewayMetrics,
}

/// Every modem's state, under the gateway's one lock: a packet's acceptance reads and
/// writes both halves at once (its number against the window, then its session), and so
/// does a record read from the log.
pub(crate) struct Modems {
    /// Who holds each modem: this instance's sessions (the address book, written by the
    /// uplink thread, `follow` and `expiry`) and which other instance holds the rest.
    pub(crate) sessions: Sessions,
    /// The replay windows, by the modem's position among the keys, and the packets waiting
    /// for the log's decision.
    pub(crate) freshness: Freshness,
}

/// How often the uplink thread, waiting for a datagram, looks whether it should stop.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// Run the gateway until `shutdown` completes.
pub async fn run(config: GatewayConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let catalog = Catalog::embedded().context("the built-in catalog is invalid")?;
    let keys = match &config.modem_keys {
        Some(path) => switchyard_protocol::keys::parse_keys(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))?,
        None => ModemKeys::default(),
    };
    // Without keys only when told (--insecure and --modem-keys exclude each other).
    if keys.is_empty() && !config.insecure {
        anyhow::bail!(match &config.modem_keys {
            None => "no modem keys: give --modem-keys FILE (SWITCHYARD_MODEM_KEYS; `switchyard keys generate` makes one), \
                     or --insecure (SWITCHYARD_INSECURE=true) to trust every envelope as it comes",
            Some(_) => "the modem keys file has no keys; give the modems' keys, or --insecure to trust every envelope",
        });
    }
    config.check_legacy_modem_id(&keys)?;
    let metrics = GatewayMetrics::new()?;
    if keys.is_empty() {
        metrics.insecure.set(1);
        warn!("running without modem keys (--insecure): any device that reaches the socket can speak for any modem and move its downlink");
    }
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

    let (refused, refused_records) = tokio::sync::mpsc::channel(crate::producer::REFUSED_QUEUE);
    let producers = Producers::create(
        &ProducerSettings {
            bootstrap: &config.endpoints.bootstrap_servers,
            buffer_records: config.buffer_records,
            linger_ms: config.linger_ms,
        },
        &metrics,
        &refused,
    )
    .context("creating the producers")?;
    // A group of its own per instance: every gateway reads every request, and the one
    // holding the modem's session sends it (scale-out, `elsewhere`).
    let request_group = format!("switchyard-gateway-{}", config.instance_id);
    let consumer: StreamConsumer<TracingContext> =
        clients::consumer_config(&config.endpoints.bootstrap_servers)
            .set("group.id", &request_group)
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
            .create_with_context(TracingContext)
            .context("creating the consumer")?;
    consumer
        .subscribe(&[REQUEST_TOPIC])
        .context("subscribing to downstream-request")?;

    let keys = Arc::new(keys);
    let mut sessions = Sessions::new(
        &config.instance_id,
        i64::try_from(config.session_heartbeat_secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX),
    )
    .with_key_slots(Arc::clone(&keys));
    let (session_id, session_codec) = codecs
        .get(SESSIONS_TOPIC)
        .cloned()
        .context("no schema for device-sessions")?;
    let mut windows = ReplayWindows::new(keys.len());
    let mut session_decoder = RecordDecoder::new(registry.clone(), session_id, session_codec);
    let restored = tokio::select! {
        restored = restore::restore_sessions(
            &config.endpoints.bootstrap_servers,
            &mut session_decoder,
            &mut sessions,
            (&keys, &mut windows),
            &health,
            Duration::from_secs(60),
        ) => restored?,
        _ = &mut shutdown => return Ok(()),
    };
    let restore::Restored {
        taken,
        skipped,
        ends,
    } = restored;
    metrics
        .modems_elsewhere
        .set(sessions.elsewhere().len() as i64);
    metrics.sessions_restored.set(taken as i64);
    metrics.known_modems.set(sessions.len() as i64);
    if skipped > 0 {
        metrics
            .rejects
            .with_label_values(&["bad_session_record"])
            .inc_by(skipped);
    }
    info!(instance = %config.instance_id, restored = taken, skipped, "sessions read back");

    let decoder = |topic: &str| {
        let (id, codec) = codecs
            .get(topic)
            .cloned()
            .with_context(|| format!("no schema for {topic}"))?;
        anyhow::Ok(RecordDecoder::new(registry.clone(), id, codec))
    };
    let mut end_decoders = crate::ended::EndDecoders {
        delivery: decoder(DELIVERY_TOPIC)?,
        ack: decoder(ACK_TOPIC)?,
    };
    health.set_not_ready("reading which switch requests ended before the restart");
    let ended = tokio::select! {
        ended = crate::ended::ended_requests(
            &config.endpoints.bootstrap_servers,
            &request_group,
            &mut end_decoders,
            Duration::from_secs(60),
        ) => ended.context("reading which requests ended before the restart")?,
        _ = &mut shutdown => return Ok(()),
    };
    if ended.unreadable > 0 {
        metrics
            .rejects
            .with_label_values(&["bad_request_end_record"])
            .inc_by(ended.unreadable);
    }
    if !ended.requests.is_empty() {
        info!(
            ended = ended.requests.len(),
            "switch requests that ended before the restart will be passed over"
        );
    }

    let socket = bind_udp(config.listen, config.udp_buffer_bytes)?;
    socket.set_read_timeout(Some(STOP_CHECK))?;
    let listen = socket.local_addr()?;
    let (to_downlink, told_downlink) = tokio::sync::mpsc::channel(DOWNLINK_QUEUE);
    let gateway = Arc::new(Gateway {
        to_downlink,
        config,
        catalog,
        socket,
        producers,
        codecs,
        keys,
        modems: Mutex::new(Modems {
            sessions,
            freshness: Freshness {
                windows,
                arbiter: Default::default(),
            },
        }),
        registry,
        metrics,
    });
    health.set_ready(true);
    info!(udp = %listen, metrics = %bound, authenticated = !gateway.keys.is_empty(), "gateway running");

    let stop_uplink = Arc::new(AtomicBool::new(false));
    let uplink = {
        let (gateway, stop) = (Arc::clone(&gateway), Arc::clone(&stop_uplink));
        std::thread::Builder::new()
            .name(crate::UPLINK_THREAD.into())
            .spawn(move || gateway.receive(&stop))
            .context("starting the uplink thread")?
    };
    let downlink = tokio::spawn(
        DownlinkTask::new(Arc::clone(&gateway), ended.requests).run(consumer, told_downlink),
    );
    let follow = tokio::spawn(Arc::clone(&gateway).follow_sessions(session_decoder, ends));
    let dead_letters = tokio::spawn(Arc::clone(&gateway).dead_letters(refused_records));
    let buffers = tokio::spawn(Arc::clone(&gateway).gauge_buffers());
    let expiry = match gateway.config.session_expiry_secs {
        0 => tokio::spawn(async {}),
        secs => tokio::spawn(Arc::clone(&gateway).expire_sessions(Duration::from_secs(secs))),
    };
    let drops = match socket_drops::socket_inode(&gateway.socket) {
        Some(inode) => tokio::spawn(socket_drops::watch(
            inode,
            gateway.metrics.kernel_drops.clone(),
        )),
        None => tokio::spawn(async {}),
    };
    shutdown.await;
    info!("shutting down");
    stop_uplink.store(true, Ordering::Relaxed);
    if tokio::task::spawn_blocking(move || uplink.join())
        .await
        .map_or(true, |joined| joined.is_err())
    {
        warn!("the uplink thread panicked");
    }
    // Packets waiting for their session record to come back are published once it does
    // (the follower still runs); what is left after a few seconds is withheld, counted.
    let waiting_until = std::time::Instant::now() + Duration::from_secs(5);
    while gateway
        .modems
        .lock()
        .is_ok_and(|m| !m.freshness.arbiter.is_empty())
        && std::time::Instant::now() < waiting_until
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let withheld = gateway
        .modems
        .lock()
        .map(|mut m| m.freshness.arbiter.withhold_all())
        .unwrap_or(0);
    if withheld > 0 {
        gateway
            .metrics
            .withheld
            .with_label_values(&["shutdown"])
            .inc_by(withheld);
        warn!(
            withheld,
            "packets still waiting for their session record at shutdown: not published"
        );
    }
    // Each session's exact highest number, where its last record says otherwise: so that
    // the next instance refuses every packet this one accepted, and nothing more.
    let last = gateway
        .modems
        .lock()
        .map(|mut m| m.sessions.clean_stop_records())
        .unwrap_or_default();
    let written = last.len();
    for record in last {
        let modem = record.modem_id.clone();
        gateway.publish(SESSIONS_TOPIC, &modem, &record, std::time::Instant::now());
    }
    info!(
        sessions = written,
        "sessions' last sequence numbers written"
    );
    downlink.abort();
    follow.abort();
    dead_letters.abort();
    buffers.abort();
    expiry.abort();
    drops.abort();
    tokio::task::spawn_blocking(move || gateway.producers.flush(Duration::from_secs(10)))
        .await
        .ok();
    Ok(())
}

/// Logs the 1st, 2nd, 4th, 8th… occurrence of a recurring problem.
pub(crate) fn rate_limited(count: u64) -> bool {
    count.is_power_of_two()
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

//! Reads the projected `<sensor>-grafana` topics the way Grafana's Kafka datasource reads
//! them, so the page is also a live check of that contract: each value is decoded with the
//! *latest* schema of `<topic>-value` (the id in the record's header is ignored, as the
//! datasource ignores it), and a point's time is the record timestamp. `anomalies` is read
//! too, for the markers. The topics are followed only while someone looks at a chart (a
//! readings request in the last `--readings-idle-stop-secs`, or an open event stream);
//! each start reads the window again from the first record whose time is in it (the broker's
//! time index: `offsets_for_times`), and points older than the window are not kept.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use switchyard_kafka::{clients, is_partition_eof, TracingContext};
use switchyard_registry_client::{RecordDecoder, RegistryClient};
use switchyard_schemas::records::{now_us, Anomaly, AnomalyKind, GrafanaReading};
use switchyard_schemas::wire::{split_frame, SchemaCodec};
use switchyard_schemas::{value_subject, Catalog, Role, GRAFANA_SUFFIX};
use tracing::{info, warn};

use super::store::{AnomalyMark, Point, ReadingEvent};
use super::{Hub, ReadingsConfig};

/// Decodes projected values with the latest registered schema of their topic.
struct LatestSchemas {
    registry: RegistryClient,
    codecs: HashMap<String, Arc<SchemaCodec>>,
}

impl LatestSchemas {
    async fn fetch(&mut self, topic: &str) -> Result<Arc<SchemaCodec>, String> {
        let latest = self
            .registry
            .latest(&value_subject(topic))
            .await
            .map_err(|e| format!("latest schema of {}: {e}", value_subject(topic)))?;
        let codec = SchemaCodec::parse(&latest.schema)?;
        self.codecs.insert(topic.to_string(), Arc::clone(&codec));
        Ok(codec)
    }

    /// Decode with the cached latest schema; on failure, fetch the latest again (the
    /// subject may have a new version) and try once more.
    async fn decode(&mut self, topic: &str, body: &[u8]) -> Result<GrafanaReading, String> {
        if let Some(codec) = self.codecs.get(topic) {
            if let Ok(reading) = codec.decode(body) {
                return Ok(reading);
            }
        }
        self.fetch(topic).await?.decode(body)
    }
}

/// Where to start in each partition of `topics`: at its first record stamped `since_ms` or
/// later (a projected record's time is its sensor time), or at its end when it has none.
fn start_offsets(
    bootstrap: &str,
    topics: &[String],
    since_ms: i64,
) -> anyhow::Result<TopicPartitionList> {
    let probe: BaseConsumer = clients::admin_config(bootstrap).create()?;
    let mut times = TopicPartitionList::new();
    for topic in topics {
        let partitions = switchyard_kafka::partitions(&probe, topic, Duration::from_secs(10))?;
        if partitions.is_empty() {
            bail!("topic {topic} does not exist (run `switchyard topics apply`)");
        }
        for p in partitions {
            times.add_partition_offset(topic, p, Offset::Offset(since_ms))?;
        }
    }
    // Each offset comes back as the first one at or after the time, or End where none is.
    let found = probe
        .offsets_for_times(times, Duration::from_secs(10))
        .context("looking up the window's first offsets")?;
    for element in found.elements() {
        if let Some(e) = element.error().err() {
            bail!(
                "{}[{}]: no offset for the window's start: {e}",
                element.topic(),
                element.partition()
            );
        }
    }
    Ok(found)
}

/// Follow the projected topics and `anomalies` into `hub` until the task is dropped. A
/// broker that is down is retried; records that cannot be read are counted and skipped.
pub async fn follow(
    hub: Arc<Hub>,
    bootstrap: String,
    registry: RegistryClient,
    catalog: Catalog,
    config: ReadingsConfig,
) {
    let projected: Vec<String> = catalog
        .topics_with_role(Role::Grafana)
        .map(|t| t.name.clone())
        .collect();
    let anomaly_topics: Vec<String> = catalog
        .topics_with_role(Role::Anomaly)
        .map(|t| t.name.clone())
        .collect();
    let all: Vec<String> = projected.iter().chain(&anomaly_topics).cloned().collect();
    let mut anomalies = match anomaly_decoder(&registry, &catalog).await {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %e, "cannot read anomalies; charts will have no markers");
            None
        }
    };

    let mut latest = LatestSchemas {
        registry,
        codecs: HashMap::new(),
    };
    let window_us = window_us(&config);
    let idle_stop = Duration::from_secs(config.idle_stop_secs);
    // Followed only while someone looks (no consumer, no fetches, when nobody watches).
    // Starting reads back the window again.
    loop {
        hub.until_wanted(idle_stop).await;
        let Some(consumer) = open(&bootstrap, &all, &config).await else {
            return;
        };
        info!(topics = ?all, "following the projected topics for the page's charts");
        let mut check = tokio::time::interval(Duration::from_secs(5));
        loop {
            let message = tokio::select! {
                m = consumer.recv() => m,
                _ = check.tick() => {
                    if hub.still_wanted(idle_stop) {
                        continue;
                    }
                    hub.clear();
                    info!("nobody looks at the charts: stopped following the projected topics");
                    break;
                }
            };
            let message = match message {
                Ok(m) => m,
                Err(e) if is_partition_eof(&e) => continue,
                Err(e) => {
                    warn!(error = %e, "reading the projected topics; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let oldest_ms = (now_us() - window_us) / 1000;
            let event = if anomaly_topics.iter().any(|t| t == message.topic()) {
                match anomalies.as_mut() {
                    Some(decoder) => anomaly(decoder, &message).await,
                    None => continue,
                }
            } else {
                reading(&mut latest, &message).await
            };
            match event {
                Ok(event) => hub.add(event, oldest_ms),
                Err(e) => {
                    hub.undecodable.inc();
                    warn!(topic = message.topic(), partition = message.partition(), offset = message.offset(), error = %e, "record skipped by the page's charts");
                }
            }
        }
    }
}

/// The page's window, in microseconds.
fn window_us(config: &ReadingsConfig) -> i64 {
    i64::try_from(config.window_secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX)
}

/// A consumer assigned to `topics`, starting at the window's first record in each partition;
/// retried while the broker or the topics are not there. `None` if it cannot be made.
async fn open(
    bootstrap: &str,
    topics: &[String],
    config: &ReadingsConfig,
) -> Option<StreamConsumer<TracingContext>> {
    let mut delay = Duration::from_millis(250);
    let assignment = loop {
        let since_ms = (now_us() - window_us(config)) / 1000;
        let (b, t) = (bootstrap.to_string(), topics.to_vec());
        match tokio::task::spawn_blocking(move || start_offsets(&b, &t, since_ms)).await {
            Ok(Ok(a)) => break a,
            Ok(Err(e)) => {
                warn!(error = %e, retry_in = ?delay, "cannot read the projected topics yet")
            }
            Err(e) => warn!(error = %e, "probe task failed"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    };
    let consumer: StreamConsumer<TracingContext> = match clients::consumer_config(bootstrap)
        .set("group.id", "switchyard-api-readings")
        // People look at these charts: half a second is live enough, and each shorter
        // wait costs the broker a read of every partition (make bench: idle).
        .set("fetch.wait.max.ms", config.fetch_wait_ms.to_string())
        .create_with_context(TracingContext)
    {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot create the readings consumer");
            return None;
        }
    };
    if let Err(e) = consumer.assign(&assignment) {
        warn!(error = %e, "cannot assign the projected topics");
        return None;
    }
    Some(consumer)
}

async fn anomaly_decoder(
    registry: &RegistryClient,
    catalog: &Catalog,
) -> anyhow::Result<Option<RecordDecoder>> {
    let Some(topic) = catalog.topics_with_role(Role::Anomaly).next() else {
        return Ok(None);
    };
    let text = catalog
        .value_schema(&topic.name)
        .with_context(|| format!("{} has no schema in the catalog", topic.name))?;
    let id = registry
        .register_retrying(&value_subject(&topic.name), text)
        .await?;
    Ok(Some(RecordDecoder::new(
        registry.clone(),
        id,
        SchemaCodec::parse(text).map_err(anyhow::Error::msg)?,
    )))
}

async fn reading(
    latest: &mut LatestSchemas,
    message: &BorrowedMessage<'_>,
) -> Result<ReadingEvent, String> {
    let topic = message.topic();
    let sensor = topic.strip_suffix(GRAFANA_SUFFIX).unwrap_or(topic);
    let t = message
        .timestamp()
        .to_millis()
        .ok_or("the record has no timestamp")?;
    let (_, body) = split_frame(message.payload().ok_or("empty record")?)?;
    let reading = latest.decode(topic, body).await?;
    Ok(ReadingEvent::Reading {
        modem_id: reading.modem_id,
        sensor: sensor.to_string(),
        topic: topic.to_string(),
        point: Point {
            t,
            value: reading.value,
        },
    })
}

async fn anomaly(
    decoder: &mut RecordDecoder,
    message: &BorrowedMessage<'_>,
) -> Result<ReadingEvent, String> {
    let a: Anomaly = decoder.decode(message.payload()).await?;
    let kind = match a.kind {
        AnomalyKind::Spike => "spike",
        AnomalyKind::Stuck => "stuck",
        AnomalyKind::Silent => "silent",
    };
    Ok(ReadingEvent::Anomaly {
        modem_id: a.modem_id,
        mark: AnomalyMark {
            t: a.sensor_time / 1000,
            sensor: a.sensor,
            kind: kind.to_string(),
            value: a.value,
            detail: a.detail,
        },
    })
}

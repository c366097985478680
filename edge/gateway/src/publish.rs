//! Records to Kafka: encoded with their topic's registered schema and handed to the
//! producer, whose delivery reports (`producer`) say what the broker made of them; every
//! record that does not make it is counted. Also the two record kinds the gateway writes
//! about itself: rejects and downlink deliveries.

use std::net::SocketAddr;
use switchyard_schemas::records::now_us;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use serde::Serialize;
use switchyard_schemas::records::{DeliveryEvent, DownlinkDelivery, GatewayReject};
use tracing::warn;

use crate::producer::{InFlight, Refused};
use crate::service::{rate_limited, Gateway};
use crate::{DEAD_LETTER_TOPIC, DELIVERY_TOPIC, REJECT_TOPIC};

impl Gateway {
    pub(crate) fn reject(
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

    /// Hand a record to the producer; when the broker acknowledges it, the time from
    /// `started` (the datagram's arrival) to the ack is observed.
    pub(crate) fn publish<T: Serialize>(
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
    pub(crate) fn publish_then<T: Serialize>(
        &self,
        topic: &str,
        key: &str,
        value: &T,
        started: std::time::Instant,
        acknowledged: impl FnOnce() + Send + Sync + 'static,
    ) {
        let Some((id, codec)) = self.codecs.get(topic) else {
            return self.dropped(topic, "no_schema", &"no registered schema for the topic");
        };
        let payload = match codec.encode(*id, value) {
            Ok(p) => p,
            Err(e) => return self.dropped(topic, "encode", &e),
        };
        self.send(topic, key, Some(&payload), started, Box::new(acknowledged));
    }

    /// Delete `key` from compacted `topic`: a record without a value.
    pub(crate) fn publish_tombstone(&self, topic: &str, key: &str) {
        self.send(topic, key, None, std::time::Instant::now(), Box::new(|| {}));
    }

    fn send(
        &self,
        topic: &str,
        key: &str,
        payload: Option<&[u8]>,
        started: std::time::Instant,
        acknowledged: Box<dyn FnOnce() + Send + Sync>,
    ) {
        let in_flight = Box::new(InFlight {
            started,
            acknowledged,
        });
        let mut record = BaseRecord::with_opaque_to(topic, in_flight).key(key);
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        match self.producers.for_topic(topic).send(record) {
            Ok(()) => {}
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                self.metrics.backpressure.inc();
                self.dropped(topic, "queue_full", &"producer buffer full (broker down?)");
            }
            Err((e, _)) => self.dropped(topic, "produce_error", &e),
        }
    }

    /// Every 100 ms, how many records each producer holds
    /// (`switchyard_gateway_buffered_records{producer}`).
    pub(crate) async fn gauge_buffers(self: std::sync::Arc<Self>) {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
        loop {
            tick.tick().await;
            for (producer, held) in self.producers.in_flight() {
                self.metrics
                    .buffered
                    .with_label_values(&[producer])
                    .set(i64::from(held));
            }
        }
    }

    fn dropped(&self, topic: &str, reason: &str, detail: &dyn std::fmt::Display) {
        let c = self.metrics.dropped.with_label_values(&[topic, reason]);
        c.inc();
        if rate_limited(c.get()) {
            warn!(%topic, reason, %detail, dropped = c.get(), "record dropped");
        }
    }

    /// Write each record the broker did not take to `gateway-dlq`, whole (its key and its
    /// encoded value), with headers naming its topic and the broker's error (the names
    /// processors' dead letters use, [`switchyard_kafka::dead_letter`]).
    pub(crate) async fn dead_letters(
        self: std::sync::Arc<Self>,
        mut refused: tokio::sync::mpsc::Receiver<Refused>,
    ) {
        use switchyard_kafka::dead_letter as header;
        while let Some(r) = refused.recv().await {
            let exception = format!("switchyard.refused_by_broker.{}", r.reason);
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: header::TOPIC,
                    value: Some(r.topic.as_str()),
                })
                .insert(Header {
                    key: header::EXCEPTION,
                    value: Some(exception.as_str()),
                })
                .insert(Header {
                    key: header::ERROR,
                    value: Some(r.error.as_str()),
                })
                .insert(Header {
                    key: header::REASON,
                    value: Some("refused"),
                })
                .insert(Header {
                    key: header::PROCESSOR,
                    value: Some("gateway"),
                });
            let gateway = std::sync::Arc::clone(&self);
            let topic = r.topic.clone();
            let in_flight = Box::new(InFlight {
                started: std::time::Instant::now(),
                acknowledged: Box::new(move || {
                    gateway
                        .metrics
                        .dead_lettered
                        .with_label_values(&[&topic])
                        .inc();
                }),
            });
            let mut record =
                BaseRecord::with_opaque_to(DEAD_LETTER_TOPIC, in_flight).headers(headers);
            if let Some(key) = &r.key {
                record = record.key(key);
            }
            if let Some(payload) = &r.payload {
                record = record.payload(payload);
            }
            if let Err((e, _)) = self.producers.for_topic(DEAD_LETTER_TOPIC).send(record) {
                let c = self
                    .metrics
                    .dropped
                    .with_label_values(&[&r.topic, "dead_letter_failed"]);
                c.inc();
                if rate_limited(c.get()) {
                    warn!(topic = %r.topic, error = %e, "a refused record could not be dead-lettered");
                }
            }
        }
    }

    pub(crate) fn delivery(
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
}

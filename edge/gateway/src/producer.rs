//! The gateway's producers, and what happens when the broker answers a record.
//!
//! Three producers, by what their records need:
//! * readings and rejects: each stands alone (a reading carries its sensor time), so neither
//!   their order nor a rare duplicate after a retry matters; not idempotent, which spares
//!   the producer librdkafka's busy wait on a slow broker (see
//!   [`switchyard_kafka::clients::unordered_producer_config`]), and batched for `linger.ms`;
//! * sessions and status: consumers keep the latest per modem, so writes to one modem stay
//!   in order through retries (idempotent), batched for `linger.ms`;
//! * the carrier-switch path (ACKs and downlink deliveries): in order, and sent at once,
//!   because an operator waits on them and there is one per switch.
//!
//! The delivery report is handled where librdkafka raises it, on each producer's polling
//! thread: the record's latency is observed, a failure counted, and an ACK's follow-up run.
//! (The futures-based producer would allocate a channel per record and make the gateway
//! spawn a task to await it, waking a runtime worker for every record: most of the
//! gateway's CPU per datagram went there.)

use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use switchyard_kafka::{clients, TracingContext};
use tracing::warn;

use crate::metrics::GatewayMetrics;
use crate::service::rate_limited;
use crate::uplink::{ACK_TOPIC, STATUS_TOPIC};
use crate::{DEAD_LETTER_TOPIC, DELIVERY_TOPIC, SESSIONS_TOPIC};

type GatewayProducer = ThreadedProducer<DeliveryContext>;

/// Settings every one of the gateway's producers shares.
pub(crate) struct ProducerSettings<'a> {
    pub bootstrap: &'a str,
    /// librdkafka's `queue.buffering.max.messages`, for each producer.
    pub buffer_records: u32,
    /// `linger.ms` of the readings' and the sessions' producers.
    pub linger_ms: u64,
}

pub(crate) struct Producers {
    readings: GatewayProducer,
    latest_per_modem: GatewayProducer,
    switch_path: GatewayProducer,
}

impl Producers {
    /// The three producers, reporting into `metrics`; what the broker does not take goes
    /// to `refused`.
    pub(crate) fn create(
        settings: &ProducerSettings<'_>,
        metrics: &GatewayMetrics,
        refused: &tokio::sync::mpsc::Sender<Refused>,
    ) -> Result<Self, KafkaError> {
        let create = |mut config: ClientConfig, linger_ms: u64| {
            config
                .set("linger.ms", linger_ms.to_string())
                .set(
                    "queue.buffering.max.messages",
                    settings.buffer_records.to_string(),
                )
                .set("message.timeout.ms", "300000");
            config.create_with_context(DeliveryContext {
                metrics: metrics.clone(),
                refused: refused.clone(),
            })
        };
        let ordered = || clients::producer_config(settings.bootstrap);
        Ok(Producers {
            readings: create(
                clients::unordered_producer_config(settings.bootstrap),
                settings.linger_ms,
            )?,
            latest_per_modem: create(ordered(), settings.linger_ms)?,
            switch_path: create(ordered(), 0)?,
        })
    }

    /// The producer for records to `topic`.
    pub(crate) fn for_topic(&self, topic: &str) -> &GatewayProducer {
        match topic {
            ACK_TOPIC | DELIVERY_TOPIC => &self.switch_path,
            SESSIONS_TOPIC | STATUS_TOPIC => &self.latest_per_modem,
            _ => &self.readings,
        }
    }

    /// Each producer, by the name the `buffered_records` metric gives it.
    fn all(&self) -> [(&'static str, &GatewayProducer); 3] {
        [
            ("switch_path", &self.switch_path),
            ("sessions_status", &self.latest_per_modem),
            ("readings", &self.readings),
        ]
    }

    /// Records (and undelivered reports) each producer holds, by name.
    pub(crate) fn in_flight(&self) -> impl Iterator<Item = (&'static str, i32)> + '_ {
        self.all()
            .into_iter()
            .map(|(name, producer)| (name, producer.in_flight_count()))
    }

    /// Wait up to `timeout` for everything handed over to be answered.
    pub(crate) fn flush(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for (_, producer) in self.all() {
            if let Err(e) = producer.flush(deadline.saturating_duration_since(Instant::now())) {
                warn!(error = %e, unanswered = producer.in_flight_count(), "records not flushed at shutdown");
            }
        }
    }
}

/// A record the broker did not take (refused, or not answered within
/// `message.timeout.ms`), on its way to `gateway-dlq`.
#[derive(Debug)]
pub(crate) struct Refused {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// The broker's error code, as counted in `produce_failures_total{reason}`.
    pub reason: String,
    pub error: String,
}

/// Refused records waiting for the dead-letter task; beyond this they are counted only.
pub(crate) const REFUSED_QUEUE: usize = 10_000;

/// What travels with a record until the broker answers it.
pub(crate) struct InFlight {
    /// The datagram's arrival: its record's latency runs from here to the broker's ack.
    pub started: Instant,
    /// Run once the broker has acknowledged the record (never, if it does not); a closure
    /// that captures nothing, as most are, costs no allocation.
    pub acknowledged: Box<dyn FnOnce() + Send + Sync>,
}

pub(crate) struct DeliveryContext {
    metrics: GatewayMetrics,
    refused: tokio::sync::mpsc::Sender<Refused>,
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        TracingContext.error(error, reason);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<InFlight>;

    fn delivery(&self, result: &DeliveryResult<'_>, record: Box<InFlight>) {
        match result {
            Ok(_) => {
                self.metrics
                    .produce_seconds
                    .observe(record.started.elapsed().as_secs_f64());
                (record.acknowledged)();
            }
            Err((error, message)) => {
                let topic = message.topic();
                let reason = match error {
                    KafkaError::MessageProduction(code) => format!("{code:?}"),
                    _ => "Other".to_string(),
                };
                let c = self
                    .metrics
                    .produce_failures
                    .with_label_values(&[topic, &reason]);
                c.inc();
                if rate_limited(c.get()) {
                    warn!(%topic, %error, failures = c.get(), "record not delivered to the broker; dead-lettered to {DEAD_LETTER_TOPIC}");
                }
                // A dead letter the broker refuses is counted, not dead-lettered again.
                if topic == DEAD_LETTER_TOPIC {
                    return;
                }
                let refused = Refused {
                    topic: topic.to_string(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                    reason,
                    error: error.to_string(),
                };
                if self.refused.try_send(refused).is_err() {
                    self.metrics
                        .dropped
                        .with_label_values(&[topic, "dead_letter_queue_full"])
                        .inc();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_topic_goes_to_the_producer_its_records_need() {
        let metrics = GatewayMetrics::new().expect("metrics");
        let settings = ProducerSettings {
            bootstrap: "127.0.0.1:1",
            buffer_records: 10,
            linger_ms: 5,
        };
        let (refused, _) = tokio::sync::mpsc::channel(1);
        let producers = Producers::create(&settings, &metrics, &refused).expect("producers");
        let goes_to = |topic: &str, producer: &GatewayProducer| {
            std::ptr::eq(producers.for_topic(topic), producer)
        };
        for topic in ["imu", "temp", crate::REJECT_TOPIC] {
            assert!(goes_to(topic, &producers.readings), "{topic}");
        }
        for topic in [SESSIONS_TOPIC, STATUS_TOPIC] {
            assert!(goes_to(topic, &producers.latest_per_modem), "{topic}");
        }
        for topic in [ACK_TOPIC, DELIVERY_TOPIC] {
            assert!(goes_to(topic, &producers.switch_path), "{topic}");
        }
    }
}

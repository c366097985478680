//! The gateway's producers, and what happens when the broker answers a record.
//!
//! Two producers: one for the bulk (readings, status, sessions, rejects) that waits
//! `linger.ms` to fill batches, and one for the carrier-switch path (ACKs and downlink
//! deliveries) that sends at once, because an operator waits on those and there is one per
//! switch: batching them saves nothing.
//!
//! The delivery report is handled where librdkafka raises it, on the producer's polling
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
use switchyard_kafka::TracingContext;
use tracing::warn;

use crate::metrics::GatewayMetrics;
use crate::service::rate_limited;
use crate::uplink::ACK_TOPIC;
use crate::DELIVERY_TOPIC;

type GatewayProducer = ThreadedProducer<DeliveryContext>;

/// The topics of the carrier-switch path, sent without lingering.
const SWITCH_PATH_TOPICS: [&str; 2] = [ACK_TOPIC, DELIVERY_TOPIC];

pub(crate) struct Producers {
    bulk: GatewayProducer,
    switch_path: GatewayProducer,
}

impl Producers {
    /// Both producers from `settings`; the bulk one lingers `linger_ms`, both report into
    /// `metrics`.
    pub(crate) fn create(
        settings: &ClientConfig,
        linger_ms: u64,
        metrics: &GatewayMetrics,
    ) -> Result<Self, KafkaError> {
        let with_linger = |ms: u64| {
            let mut settings = settings.clone();
            settings.set("linger.ms", ms.to_string());
            settings.create_with_context(DeliveryContext {
                metrics: metrics.clone(),
            })
        };
        Ok(Producers {
            bulk: with_linger(linger_ms)?,
            switch_path: with_linger(0)?,
        })
    }

    /// The producer for records to `topic`.
    pub(crate) fn for_topic(&self, topic: &str) -> &GatewayProducer {
        if SWITCH_PATH_TOPICS.contains(&topic) {
            &self.switch_path
        } else {
            &self.bulk
        }
    }

    /// Records handed over and not yet answered by the broker.
    pub(crate) fn in_flight(&self) -> i32 {
        self.bulk.in_flight_count() + self.switch_path.in_flight_count()
    }

    /// Wait up to `timeout` for everything handed over to be answered.
    pub(crate) fn flush(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for producer in [&self.switch_path, &self.bulk] {
            if let Err(e) = producer.flush(deadline.saturating_duration_since(Instant::now())) {
                warn!(error = %e, unanswered = producer.in_flight_count(), "records not flushed at shutdown");
            }
        }
    }
}

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
                let c = self.metrics.produce_failures.with_label_values(&[topic]);
                c.inc();
                if rate_limited(c.get()) {
                    warn!(%topic, %error, failures = c.get(), "record not delivered to the broker");
                }
            }
        }
    }
}

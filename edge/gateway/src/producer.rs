//! The gateway's producer, and what happens when the broker answers a record.
//!
//! The delivery report is handled where librdkafka raises it, on the producer's polling
//! thread: the record's latency is observed, a failure counted, and an ACK's follow-up run.
//! (The futures-based producer would allocate a channel per record and make the gateway
//! spawn a task to await it, waking a runtime worker for every record: most of the
//! gateway's CPU per datagram went there.)

use std::time::Instant;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext, ThreadedProducer};
use switchyard_kafka::TracingContext;
use tracing::warn;

use crate::metrics::GatewayMetrics;
use crate::service::rate_limited;

pub(crate) type GatewayProducer = ThreadedProducer<DeliveryContext>;

/// Create the producer from `settings`, reporting into `metrics`.
pub(crate) fn create(
    settings: &ClientConfig,
    metrics: GatewayMetrics,
) -> Result<GatewayProducer, KafkaError> {
    settings.create_with_context(DeliveryContext { metrics })
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

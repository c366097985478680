//! Handing records to the producer as they are made, and hearing back from the broker.
//!
//! The producer has no local message timeout, so librdkafka retries what can be retried
//! itself (with backoff; in order, so writes to one key keep their order, because it is
//! idempotent unless the topology's outputs stand alone and it has no store) and a delivery
//! report that carries an error is final: the record is *refused*, and the runner
//! dead-letters its input or stops. Acknowledgements go straight into the ledger.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use switchyard_kafka::{clients, is_partition_eof};
use tracing::{error, warn};

use super::config::{Guarantee, RunnerConfig};
use super::ledger::{Blame, Refused, Token};
use super::shared::Shared;
use crate::context::Output;
use crate::engine::WRITER_HEADER;
use crate::processor::Topology;

pub(crate) type OutputProducer = ThreadedProducer<DeliveryContext>;

pub(crate) struct DeliveryContext {
    shared: Arc<Shared>,
    /// librdkafka's cumulative retry count at the last statistics report.
    retries_seen: AtomicU64,
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !is_partition_eof(&error) {
            error!(target: "librdkafka", %error, reason, "kafka producer error");
        }
    }

    fn stats(&self, statistics: Statistics) {
        let total: u64 = statistics.brokers.values().map(|b| b.txretries).sum();
        let before = self.retries_seen.swap(total, Ordering::Relaxed);
        if total > before {
            self.shared.metrics.producer_retries.inc_by(total - before);
        }
    }
}

fn size_of(key: Option<&[u8]>, payload: Option<&[u8]>) -> usize {
    key.map_or(0, <[u8]>::len) + payload.map_or(0, <[u8]>::len)
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let token = Token::from_opaque(opaque);
        match result {
            Ok(m) => {
                self.shared
                    .ledger()
                    .acknowledged(token, size_of(m.key(), m.payload()));
                self.shared.metrics.count_out(m.topic());
            }
            // Purged by an aborted transaction: its entry goes back to the last commit with
            // the rest of the transaction, so this is neither an acknowledgement nor a refusal.
            Err((e, m)) if is_purge(e) => {
                self.shared
                    .ledger()
                    .purged(token, size_of(m.key(), m.payload()));
            }
            Err((e, m)) => {
                self.shared.metrics.produce_failures.inc();
                let refused = Refused {
                    token,
                    topic: m.topic().to_string(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                    error: e.to_string(),
                    blame: blame(e, Blame::Batch),
                    source: None,
                };
                self.shared
                    .ledger()
                    .refused(refused, size_of(m.key(), m.payload()));
                self.shared.note_refusal();
            }
        }
        self.shared.settled();
    }
}

/// librdkafka refuses records while their transaction is abortable (`_STATE`): that is the
/// transaction's fault; any other refusal is `otherwise`'s.
fn blame(error: &KafkaError, otherwise: Blame) -> Blame {
    if error.rdkafka_error_code() == Some(RDKafkaErrorCode::State) {
        Blame::Transaction
    } else {
        otherwise
    }
}

fn is_purge(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
    )
}

/// The runner's batching wait when neither the flag nor the topology sets one.
const DEFAULT_LINGER_MS: u64 = 5;

/// The producer for outputs, changelogs and dead letters: unordered when the topology's
/// outputs stand alone and it has no changelog ([`crate::Topology::outputs_stand_alone`]),
/// lingering as the flag says, else as the topology does ([`crate::Topology::linger`])
/// unless transactions hold the outputs back until each commit anyway: there a batch that
/// waits a few ms costs no one anything, while sending at once cost a lot (`make bench`,
/// streams: grafana-projector's work under exactly once ran at 16k records/s at 0 ms
/// against 94k at 5).
pub(crate) fn output_producer(
    config: &RunnerConfig,
    transactional_id: Option<String>,
    topology: &Topology,
    shared: Arc<Shared>,
) -> Result<Arc<OutputProducer>, KafkaError> {
    let bootstrap = &config.endpoints.bootstrap_servers;
    let topology_linger = topology.linger_ms().filter(|_| transactional_id.is_none());
    let linger_ms = config
        .linger_ms
        .or(topology_linger)
        .unwrap_or(DEFAULT_LINGER_MS);
    let mut settings = if topology.unordered_outputs() && transactional_id.is_none() {
        clients::unordered_producer_config(bootstrap)
    } else {
        clients::producer_config(bootstrap)
    };
    settings
        // No local timeout: librdkafka retries retriable errors for as long as it takes (in
        // order); consumption pauses at the in-flight bounds meanwhile.
        .set("message.timeout.ms", "0")
        .set("linger.ms", linger_ms.to_string())
        .set("statistics.interval.ms", "5000")
        .set("queue.buffering.max.messages", "1000000");
    if let Some(id) = transactional_id {
        settings.set("transactional.id", id);
    }
    let producer = Arc::new(settings.create_with_context(DeliveryContext {
        shared: Arc::clone(&shared),
        retries_seen: AtomicU64::new(0),
    })?);
    let _ = shared.producer.set(Arc::downgrade(&producer));
    Ok(producer)
}

/// The [`WRITER_HEADER`] value of each task, `<instance>#<incarnation>`, made once per task
/// rather than once per record.
pub(crate) struct WriterLabels {
    instance: String,
    by_partition: HashMap<i32, (u64, Arc<[u8]>)>,
}

impl WriterLabels {
    pub(crate) fn new(instance: String) -> Self {
        WriterLabels {
            instance,
            by_partition: HashMap::new(),
        }
    }

    /// The label of the task of `partition` numbered `incarnation` by the engine.
    pub(crate) fn of(&mut self, partition: i32, incarnation: u64) -> Arc<[u8]> {
        match self.by_partition.get(&partition) {
            Some((made_for, label)) if *made_for == incarnation => Arc::clone(label),
            _ => {
                let label: Arc<[u8]> = format!("{}#{incarnation}", self.instance)
                    .into_bytes()
                    .into();
                self.by_partition
                    .insert(partition, (incarnation, Arc::clone(&label)));
                label
            }
        }
    }
}

/// Hand one record to the producer on behalf of an entry, with the task that wrote it in a
/// [`WRITER_HEADER`] header. A record the producer cannot take at all (too large, unknown
/// topic, ...) is recorded as refused, like one the broker refused.
pub(crate) async fn send(
    producer: &OutputProducer,
    shared: &Shared,
    token: Token,
    out: &Output,
    writer: Option<&[u8]>,
) {
    let bytes = size_of(out.key.as_deref(), out.payload.as_deref());
    shared.ledger().sending(token, bytes);
    let mut record = record_of(out, token, writer);
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => {
                warn!(error = %e, topic = %out.topic, "the producer refused a record");
                shared.metrics.produce_failures.inc();
                shared.ledger().refused(
                    Refused {
                        token,
                        topic: out.topic.clone(),
                        key: out.key.clone(),
                        payload: out.payload.clone(),
                        error: e.to_string(),
                        blame: blame(&e, Blame::Record),
                        source: None,
                    },
                    bytes,
                );
                shared.note_refusal();
                return;
            }
        }
    }
}

fn record_of<'a>(
    out: &'a Output,
    token: Token,
    writer: Option<&'a [u8]>,
) -> BaseRecord<'a, [u8], [u8], usize> {
    let mut record = BaseRecord::with_opaque_to(&out.topic, token.to_opaque());
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
    if !out.headers.is_empty() || writer.is_some() {
        let capacity = out.headers.len() + usize::from(writer.is_some());
        let headers =
            out.headers
                .iter()
                .fold(OwnedHeaders::new_with_capacity(capacity), |h, (k, v)| {
                    h.insert(Header {
                        key: k,
                        value: Some(v.as_slice()),
                    })
                });
        let headers = match writer {
            Some(writer) => headers.insert(Header {
                key: WRITER_HEADER,
                value: Some(writer),
            }),
            None => headers,
        };
        record = record.headers(headers);
    }
    record
}

/// The transactional id of an instance, when the guarantee asks for transactions.
pub(crate) fn transactional_id(config: &RunnerConfig, name: &str) -> Option<String> {
    (config.processing_guarantee == Guarantee::ExactlyOnce)
        .then(|| format!("{name}-{}", config.instance()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_keeps_its_writer_label_and_a_new_task_of_the_partition_gets_a_new_one() {
        let mut labels = WriterLabels::new("host-1".into());
        let first = labels.of(3, 1);
        assert_eq!(&*first, b"host-1#1");
        assert!(Arc::ptr_eq(&first, &labels.of(3, 1)), "made once per task");
        assert_eq!(&*labels.of(3, 4), b"host-1#4");
        assert_eq!(&*labels.of(0, 2), b"host-1#2");
        assert_eq!(&*labels.of(3, 4), b"host-1#4");
    }
}

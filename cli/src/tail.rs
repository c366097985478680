//! `switchyard tail TOPIC`: records as JSON lines, values decoded through the registry.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Args, ValueEnum};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Map, Value};
use switchyard_kafka::{clients, TracingContext};
use switchyard_registry_client::RegistryClient;
use switchyard_schemas::wire::{split_frame, SchemaCodec};
use switchyard_schemas::{Catalog, ValueFormat};

use crate::avro_json::to_json;
use crate::{Endpoints, Failure};

#[derive(Clone, Copy, ValueEnum)]
pub enum From {
    Beginning,
    End,
}

#[derive(Args)]
pub struct TailArgs {
    /// Topic to read.
    topic: String,
    /// Where to start.
    #[arg(long, value_enum, default_value = "beginning")]
    from: From,
    /// Stop after this many records.
    #[arg(short = 'n', long)]
    count: Option<usize>,
    /// Stop once every partition has been read to its end.
    #[arg(long)]
    exit_at_end: bool,
}

pub async fn run(endpoints: &Endpoints, args: TailArgs) -> Result<(), Failure> {
    let catalog = Catalog::embedded().context("the built-in catalog is invalid")?;
    let raw = catalog
        .topic(&args.topic)
        .is_some_and(|t| t.value_format == ValueFormat::Raw);
    let consumer: StreamConsumer<TracingContext> =
        clients::consumer_config(&endpoints.bootstrap_servers)
            .set("group.id", "switchyard-tail")
            .set("enable.partition.eof", args.exit_at_end.to_string())
            .create_with_context(TracingContext)
            .context("creating the Kafka consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(&args.topic), Duration::from_secs(10))
        .with_context(|| format!("broker {} unreachable", endpoints.bootstrap_servers))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == args.topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(Failure::BadInput(format!(
            "topic {} does not exist",
            args.topic
        )));
    }
    let start = match args.from {
        From::Beginning => Offset::Beginning,
        From::End => Offset::End,
    };
    let mut assignment = TopicPartitionList::new();
    for p in &partitions {
        assignment
            .add_partition_offset(&args.topic, *p, start)
            .context("assigning partitions")?;
    }
    consumer
        .assign(&assignment)
        .context("assigning partitions")?;

    let mut decoder = WriterDecoder {
        registry: RegistryClient::new(&endpoints.registry_url),
        codecs: HashMap::new(),
    };
    let mut printed = 0usize;
    let mut at_end: HashSet<i32> = HashSet::new();
    while args.count.is_none_or(|n| printed < n) {
        match consumer.recv().await {
            Ok(message) => {
                at_end.remove(&message.partition());
                crate::emit(render(&message, raw, &mut decoder).await);
                printed += 1;
            }
            Err(KafkaError::PartitionEOF(p)) => {
                at_end.insert(p);
                if args.exit_at_end && at_end.len() == partitions.len() {
                    break;
                }
            }
            Err(e) => return Err(Failure::Other(anyhow!("reading {}: {e}", args.topic))),
        }
    }
    Ok(())
}

/// Values decoded with the schema that wrote them (by the id in their header).
struct WriterDecoder {
    registry: RegistryClient,
    codecs: HashMap<i32, Arc<SchemaCodec>>,
}

impl WriterDecoder {
    async fn decode(&mut self, payload: &[u8]) -> Result<Value, String> {
        let (id, body) = split_frame(payload)?;
        let codec = match self.codecs.get(&id) {
            Some(codec) => Arc::clone(codec),
            None => {
                let text = self
                    .registry
                    .schema_by_id(id)
                    .await
                    .map_err(|e| format!("schema {id}: {e}"))?;
                let codec = SchemaCodec::parse(&text)?;
                self.codecs.insert(id, Arc::clone(&codec));
                codec
            }
        };
        Ok(to_json(&codec.read_value(body)?))
    }
}

async fn render(message: &BorrowedMessage<'_>, raw: bool, decoder: &mut WriterDecoder) -> Value {
    let mut out = Map::new();
    out.insert("topic".into(), json!(message.topic()));
    out.insert("partition".into(), json!(message.partition()));
    out.insert("offset".into(), json!(message.offset()));
    if let Some(ms) = message.timestamp().to_millis() {
        let ts = chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        out.insert("timestamp".into(), json!(ts));
    }
    out.insert("key".into(), message.key().map_or(Value::Null, text_or_hex));
    if let Some(headers) = message.headers() {
        let map: Map<String, Value> = headers
            .iter()
            .map(|h| (h.key.to_string(), h.value.map_or(Value::Null, text_or_hex)))
            .collect();
        out.insert("headers".into(), Value::Object(map));
    }
    let value = match message.payload() {
        None => Value::Null,
        Some(bytes) if raw => json!(hex::encode(bytes)),
        Some(bytes) => match decoder.decode(bytes).await {
            Ok(decoded) => decoded,
            Err(e) => {
                out.insert("error".into(), json!(format!("cannot decode value: {e}")));
                json!(hex::encode(bytes))
            }
        },
    };
    out.insert("value".into(), value);
    Value::Object(out)
}

fn text_or_hex(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => json!(s),
        Err(_) => json!(hex::encode(bytes)),
    }
}

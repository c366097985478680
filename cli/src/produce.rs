//! `switchyard produce TOPIC KEY JSON`: encode a JSON value with the topic's catalog schema
//! (registered id, Confluent framing) and produce it.

use std::time::Duration;

use anyhow::Context;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use clap::Args;
use rdkafka::producer::{FutureProducer, FutureRecord};
use switchyard_kafka::clients;
use switchyard_registry_client::RegistryClient;
use switchyard_schemas::{value_subject, Catalog};

use crate::{Endpoints, Failure};

#[derive(Args)]
pub struct ProduceArgs {
    /// Topic (an Avro topic of the catalog).
    topic: String,
    /// Record key (a modem id for most topics).
    key: String,
    /// The value as JSON, fields as in the topic's schema (timestamps in µs since the epoch),
    /// e.g. '{"modem_id":"1","device_id":1,"sensor":"imu","timestamp":1700000000000000,"value":42,"data":"","received_at":1700000000000000,"sequence":null}'.
    json: String,
}

pub async fn run(endpoints: &Endpoints, args: ProduceArgs) -> Result<(), Failure> {
    let catalog = Catalog::embedded().context("the built-in catalog is invalid")?;
    let text = catalog.value_schema(&args.topic).ok_or_else(|| {
        Failure::BadInput(format!(
            "{} is not an Avro topic of the catalog",
            args.topic
        ))
    })?;
    let schema = Schema::parse_str(text).context("catalog schema")?;
    let json: serde_json::Value = serde_json::from_str(&args.json)
        .map_err(|e| Failure::BadInput(format!("not JSON: {e}")))?;
    let value = json_to_avro(&json)
        .resolve(&schema)
        .map_err(|e| Failure::BadInput(format!("the value does not fit {}: {e}", args.topic)))?;
    let body = GenericDatumWriter::builder(&schema)
        .build()
        .and_then(|w| w.write_value_to_vec(value))
        .map_err(|e| Failure::BadInput(format!("cannot encode: {e}")))?;
    let id = RegistryClient::new(&endpoints.registry_url)
        .register(&value_subject(&args.topic), text)
        .await
        .context("registering the topic's schema")?;
    let mut payload = vec![0u8];
    payload.extend_from_slice(&id.to_be_bytes());
    payload.extend_from_slice(&body);
    let producer: FutureProducer = clients::producer_config(&endpoints.bootstrap_servers)
        .set("message.timeout.ms", "10000")
        .create()
        .context("creating the producer")?;
    let delivery = producer
        .send(
            FutureRecord::to(&args.topic)
                .key(&args.key)
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| {
            Failure::Other(anyhow::anyhow!(
                "broker {}: {e}",
                endpoints.bootstrap_servers
            ))
        })?;
    crate::emit(format!(
        "{}[{}]@{}",
        args.topic, delivery.partition, delivery.offset
    ));
    Ok(())
}

/// JSON to an Avro value, left for schema resolution to shape (records, unions, enums,
/// int/long, timestamps).
fn json_to_avro(json: &serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Long(i),
            None => Value::Double(n.as_f64().unwrap_or_default()),
        },
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(items) => Value::Array(items.iter().map(json_to_avro).collect()),
        serde_json::Value::Object(fields) => Value::Map(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), json_to_avro(v)))
                .collect(),
        ),
    }
}

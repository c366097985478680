//! `switchyard topics apply` and `switchyard tail` against a real broker and registry.

use std::process::{Command, Output};
use std::time::Duration;
use switchyard_kafka::clients;

use apache_avro::types::Value as Avro;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schema_registry_converter::async_impl::avro::AvroEncoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::SubjectNameStrategy;
use serde_json::Value;
use switchyard_registry_client::RegistryClient;
use switchyard_schemas::Catalog;
use switchyard_testkit::{Broker, Registry};

fn switchyard(broker: &Broker, registry: &Registry, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .env("SWITCHYARD_BOOTSTRAP_SERVERS", broker.bootstrap())
        .env("SWITCHYARD_REGISTRY_URL", registry.url())
        .output()
        .expect("run switchyard")
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_creates_the_catalog_idempotently_and_tail_decodes_records() {
    let broker = Broker::start().expect("broker");
    let registry = Registry::start(&broker, "registry").expect("registry");
    let catalog = Catalog::embedded().expect("catalog");

    let first = switchyard(&broker, &registry, &["topics", "apply"]);
    let first_out = String::from_utf8_lossy(&first.stdout).to_string();
    assert!(
        first.status.success(),
        "{first_out}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(
        first_out.matches(": created").count(),
        catalog.topics.len(),
        "{first_out}"
    );

    let second = switchyard(&broker, &registry, &["topics", "apply"]);
    let second_out = String::from_utf8_lossy(&second.stdout).to_string();
    assert!(second.status.success(), "{second_out}");
    assert_eq!(
        second_out.matches(": exists").count(),
        catalog.topics.len(),
        "{second_out}"
    );
    let ids = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.starts_with("subject "))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        ids(&first_out),
        ids(&second_out),
        "re-applying keeps every schema id"
    );

    // Every topic exists with its partitions; every Avro topic's subject is registered.
    let consumer: BaseConsumer = clients::admin_config(&broker.bootstrap())
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    for t in &catalog.topics {
        let found = metadata.topics().iter().find(|m| m.name() == t.name);
        let partitions = found.map(|m| m.partitions().len());
        assert_eq!(partitions, Some(t.partitions as usize), "topic {}", t.name);
    }
    let mut subjects = RegistryClient::new(&registry.url())
        .subjects()
        .await
        .expect("subjects");
    subjects.sort();
    let mut expected: Vec<String> = catalog.subjects().into_iter().map(|(s, _)| s).collect();
    expected.sort();
    assert_eq!(subjects, expected);

    // A reading produced through schema_registry_converter comes back from `tail` decoded.
    let encoder = AvroEncoder::new(SrSettings::new(registry.url()));
    let payload = encoder
        .encode(
            vec![
                ("modem_id", Avro::String("42".into())),
                ("device_id", Avro::Long(1)),
                ("sensor", Avro::String("imu".into())),
                ("timestamp", Avro::TimestampMicros(1_685_620_800_123_456)),
                ("value", Avro::Union(1, Box::new(Avro::Int(-7)))),
                ("data", Avro::Bytes(vec![0xff, 0xff, 0xff, 0xf9])),
                ("received_at", Avro::TimestampMicros(1_685_620_801_000_000)),
                ("sequence", Avro::Union(0, Box::new(Avro::Null))),
            ],
            SubjectNameStrategy::TopicNameStrategy("imu".into(), false),
        )
        .await
        .expect("encode through the registry");
    let producer: FutureProducer = clients::producer_config(&broker.bootstrap())
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::to("imu").key("42").payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .expect("produced");
    producer
        .send(
            FutureRecord::to("carrier-state-dlq")
                .key("k")
                .payload(&[0xde, 0xad][..]),
            Duration::from_secs(10),
        )
        .await
        .expect("produced");

    let tail = switchyard(&broker, &registry, &["tail", "imu", "--exit-at-end"]);
    assert!(
        tail.status.success(),
        "{}",
        String::from_utf8_lossy(&tail.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&tail.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["key"], "42");
    assert_eq!(lines[0]["value"]["modem_id"], "42");
    assert_eq!(lines[0]["value"]["value"], -7);
    assert_eq!(
        lines[0]["value"]["timestamp"],
        "2023-06-01T12:00:00.123456Z"
    );
    assert_eq!(lines[0]["value"]["data"], "fffffff9");

    let dlq = switchyard(
        &broker,
        &registry,
        &["tail", "carrier-state-dlq", "--exit-at-end"],
    );
    let line: Value =
        serde_json::from_str(String::from_utf8_lossy(&dlq.stdout).trim()).expect("JSON");
    assert_eq!(line["value"], "dead", "raw topics print bytes as hex");

    let missing = switchyard(
        &broker,
        &registry,
        &["tail", "no-such-topic", "--exit-at-end"],
    );
    assert_eq!(missing.status.code(), Some(2));
}

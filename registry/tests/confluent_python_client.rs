//! Confluent's own Python client (SchemaRegistryClient, AvroSerializer, AvroDeserializer)
//! registers, fetches and round-trips a record through this registry and a real broker.

mod common;

use std::path::Path;
use std::process::Command;

use common::start_registry;
use switchyard_testkit::Broker;

#[test]
fn confluents_python_client_round_trips_a_record() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let probe = Command::new("python3")
        .args(["-c", "import confluent_kafka, fastavro"])
        .output()
        .expect("python3 runs");
    assert!(
        probe.status.success(),
        "Confluent's Python client is not installed: `make deps` installs registry/tests/python/requirements.txt\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let broker = Broker::start().expect("broker");
    let registry = start_registry(&broker, "registry");
    let out = Command::new("python3")
        .arg(here.join("tests/python/confluent_client_roundtrip.py"))
        .env("SWITCHYARD_REGISTRY_URL", &registry.url)
        .env("SWITCHYARD_BOOTSTRAP_SERVERS", broker.bootstrap())
        .env("SWITCHYARD_SCHEMA_DIR", here.join("../schemas/avro"))
        .output()
        .expect("run the Python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "Python client failed:\n{stdout}\n{stderr}\nregistry log:\n{}",
        registry.service.log_text()
    );
    assert!(stdout.contains("checks passed"), "{stdout}");
}

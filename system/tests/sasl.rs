//! A cluster that is not plaintext: a broker whose clients must authenticate with SASL
//! (SCRAM-SHA-256 and PLAIN). The settings come from the environment or a properties file
//! (`switchyard_kafka::security`) and reach every client: the CLI, the schema registry and a
//! processor, each pointed only at the SASL listener. Wrong or unreadable settings fail with
//! the reason, never by connecting without them.

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

use switchyard_schemas::records::{GrafanaReading, SensorReading};
use switchyard_testkit::{free_port, http_get_status, wait_for, workspace_binary, Broker, Service};

const ALICE: (&str, &str) = ("alice", "alice-secret");

fn switchyard(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(workspace_binary("switchyard").expect("built"));
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("switchyard runs")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn every_client_authenticates_with_the_settings_from_the_environment() {
    let broker = Broker::start_with_sasl(&[ALICE]).expect("broker with SASL");
    let sasl = broker.sasl_addr.expect("SASL listener").to_string();
    let scram = [
        ("SWITCHYARD_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
        ("SWITCHYARD_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"),
        ("SWITCHYARD_KAFKA_SASL_USERNAME", ALICE.0),
        ("SWITCHYARD_KAFKA_SASL_PASSWORD", ALICE.1),
    ];

    // The CLI with SCRAM from variables: the broker answers.
    let out = switchyard(&["brokers", "--bootstrap-servers", &sasl], &scram);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("broker 1 127.0.0.1:"), "{}", text(&out));

    // A wrong password, and no settings at all: no answer, and a failure.
    let mut wrong = scram;
    wrong[3].1 = "not-her-password";
    let out = switchyard(&["brokers", "--bootstrap-servers", &sasl], &wrong);
    assert!(
        !out.status.success(),
        "a wrong password must fail: {}",
        text(&out)
    );
    let out = switchyard(&["brokers", "--bootstrap-servers", &sasl], &[]);
    assert!(
        !out.status.success(),
        "no credentials must fail: {}",
        text(&out)
    );

    // A properties file the CLI cannot use: the reason, with the line.
    let dir = broker.data_dir();
    let bad = dir.join("bad.properties");
    std::fs::write(&bad, "security.protocol=SASL_PLAINTEXT\nacks=0\n").expect("write");
    let bad_env = [("SWITCHYARD_KAFKA_PROPERTIES", bad.to_str().expect("path"))];
    let out = switchyard(&["brokers", "--bootstrap-servers", &sasl], &bad_env);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("line 2: acks is not a connection security setting"),
        "{}",
        text(&out)
    );

    // PLAIN from a properties file, for the registry, the CLI and a processor.
    let file = dir.join("kafka.properties");
    std::fs::write(
        &file,
        format!(
            "# the cluster's SASL settings\nsecurity.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\nsasl.username={}\nsasl.password={}\n",
            ALICE.0, ALICE.1
        ),
    )
    .expect("write");
    let file = file.to_str().expect("path").to_string();
    let registry_addr: SocketAddr = ([127, 0, 0, 1], free_port().expect("port")).into();
    let mut command = Command::new(workspace_binary("switchyard-registry").expect("built"));
    command
        .env("RUST_LOG", "info,rdkafka=warn")
        .env("SWITCHYARD_REGISTRY_LISTEN", registry_addr.to_string())
        .env("SWITCHYARD_BOOTSTRAP_SERVERS", &sasl)
        .env("SWITCHYARD_KAFKA_PROPERTIES", &file);
    let mut registry = Service::spawn("registry", command, dir).expect("registry");
    registry
        .wait_until(Duration::from_secs(60), || {
            http_get_status(registry_addr, "/health").ok() == Some(200)
        })
        .expect("the registry reads its topic over SASL");
    let registry_url = format!("http://{registry_addr}");
    let env = [
        ("SWITCHYARD_BOOTSTRAP_SERVERS", sasl.as_str()),
        ("SWITCHYARD_REGISTRY_URL", registry_url.as_str()),
        ("SWITCHYARD_KAFKA_PROPERTIES", file.as_str()),
    ];
    let out = switchyard(&["topics", "apply"], &env);
    assert!(out.status.success(), "{}", text(&out));

    let metrics: SocketAddr = ([127, 0, 0, 1], free_port().expect("port")).into();
    let mut command = Command::new(workspace_binary("grafana-projector").expect("built"));
    command
        .env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn")
        .env("SWITCHYARD_METRICS_LISTEN", metrics.to_string());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut projector = Service::spawn("grafana-projector", command, dir).expect("projector");
    projector
        .wait_until(Duration::from_secs(60), || {
            http_get_status(metrics, "/health").ok() == Some(200)
        })
        .expect("the projector joins its group over SASL");

    // Readings in (through the plaintext listener, as a test client), projections out.
    let t0 = (switchyard_schemas::records::now_us() - 60_000_000) / 1000 * 1000;
    let (id, schema) = schema_of(&registry_addr, "imu");
    let records: Vec<(String, Vec<u8>, i64)> = (0..10)
        .map(|n| {
            let reading = SensorReading {
                modem_id: "42".into(),
                device_id: 1,
                sensor: "imu".into(),
                timestamp: t0 + n * 1000,
                value: Some(n as i32),
                data: (n as i32).to_be_bytes().to_vec(),
                received_at: t0 + n * 1000,
                sequence: None,
            };
            let bytes = switchyard_schemas::wire::encode(id, &schema, &reading).expect("encodes");
            ("42".to_string(), bytes, (t0 + n * 1000) / 1000)
        })
        .collect();
    switchyard_testkit::kafka::produce(&broker.bootstrap(), "imu", &records).expect("produce");
    let bootstrap = broker.bootstrap();
    wait_for("ten projected readings", Duration::from_secs(60), || {
        switchyard_testkit::kafka::read_to_end(&bootstrap, "imu-grafana")
            .is_ok_and(|r| r.len() == 10)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", projector.log_text()));
    let projected =
        switchyard_testkit::kafka::read_to_end(&bootstrap, "imu-grafana").expect("read");
    let (grafana_id, grafana_schema) = schema_of(&registry_addr, "imu-grafana");
    let schemas = std::collections::HashMap::from([(grafana_id, grafana_schema)]);
    let mut values: Vec<i32> = projected
        .iter()
        .map(|r| {
            let value = switchyard_schemas::wire::decode_with(
                &schemas,
                r.payload.as_deref().unwrap_or_default(),
            )
            .expect("decodes");
            switchyard_schemas::wire::from_value::<GrafanaReading>(&value)
                .expect("a projected reading")
                .value
        })
        .collect();
    values.sort_unstable();
    assert_eq!(values, (0..10).collect::<Vec<i32>>());
}

/// The registered value schema of a catalog topic: its id and parsed schema.
fn schema_of(registry: &SocketAddr, topic: &str) -> (i32, std::sync::Arc<apache_avro::Schema>) {
    let body = switchyard_testkit::http_get_text(
        *registry,
        &format!("/subjects/{topic}-value/versions/latest"),
    )
    .expect("registry answers");
    let latest: serde_json::Value = serde_json::from_str(&body).expect("json");
    let id = latest["id"].as_i64().expect("id") as i32;
    let schema =
        apache_avro::Schema::parse_str(latest["schema"].as_str().expect("schema")).expect("parses");
    (id, std::sync::Arc::new(schema))
}

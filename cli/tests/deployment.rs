//! The Docker deployment, checked without Docker (no engine runs on these machines):
//! compose.yml parses; every image can be built from this repository; every binary a
//! service runs exists in the workspace and in the image; every variable a service sets is
//! one its binary reads, and every loopback default is overridden (a container's 127.0.0.1
//! is itself); published and health-checked ports are the ones the service listens on; and
//! Grafana's dashboards name only catalog topics, one panel per sensor.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use switchyard_schemas::{Catalog, GRAFANA_SUFFIX};
use switchyard_testkit::workspace_binary;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

fn compose() -> Yaml {
    let text = std::fs::read_to_string(repo().join("compose.yml")).expect("compose.yml");
    let mut doc: Yaml = serde_yaml::from_str(&text).expect("compose.yml is YAML");
    // Merge keys can nest (a processor merges x-processor, which merges x-switchyard), as
    // Docker Compose allows: resolve until none is left.
    for _ in 0..4 {
        doc.apply_merge().expect("YAML merge keys resolve");
    }
    assert!(!text.is_empty() && !serde_yaml::to_string(&doc).expect("yaml").contains("<<"));
    doc
}

fn services(doc: &Yaml) -> BTreeMap<String, Yaml> {
    doc["services"]
        .as_mapping()
        .expect("services")
        .iter()
        .map(|(k, v)| (k.as_str().expect("service name").to_string(), v.clone()))
        .collect()
}

fn strings(v: &Yaml) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn environment(service: &Yaml) -> BTreeMap<String, String> {
    service["environment"]
        .as_mapping()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| {
                    let value = match v {
                        Yaml::String(s) => s.clone(),
                        Yaml::Number(n) => n.to_string(),
                        Yaml::Bool(b) => b.to_string(),
                        _ => return None,
                    };
                    Some((k.as_str()?.to_string(), value))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Binary targets of the workspace, from `cargo metadata`.
fn workspace_binaries() -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(repo())
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Json = serde_json::from_slice(&out.stdout).expect("metadata json");
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|t| t["name"].as_str().map(str::to_string))
        .collect()
}

/// The processors of the workspace: the crates under `processors/` (their binary is named
/// as the package).
fn workspace_processors() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo().join("processors"))
        .expect("processors/")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .filter_map(|e| {
            let manifest = std::fs::read_to_string(e.path().join("Cargo.toml")).ok()?;
            let line = manifest.lines().find(|l| l.starts_with("name = "))?;
            Some(
                line.trim_start_matches("name = ")
                    .trim_matches('"')
                    .to_string(),
            )
        })
        .collect();
    names.sort();
    names
}

/// What a command reads from the environment: variable → default (if any), from `--help`
/// of the command and each of its subcommand prefixes.
fn env_vars_read(command: &[String]) -> BTreeMap<String, Option<String>> {
    let binary = workspace_binary(&command[0]).expect("binary built (make test builds them)");
    let mut vars = BTreeMap::new();
    for end in 1..=command.len() {
        let out = Command::new(&binary)
            .args(&command[1..end])
            .arg("--help")
            .output()
            .expect("help");
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            let Some(start) = line.find("[env: ") else {
                continue;
            };
            let rest = &line[start + 6..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let default = line.find("[default: ").map(|d| {
                line[d + 10..]
                    .split(']')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            });
            vars.insert(name, default);
        }
    }
    vars
}

fn is_loopback(default: &str) -> bool {
    default.contains("127.0.0.1") || default.contains("localhost")
}

fn switchyard_services(doc: &Yaml) -> BTreeMap<String, Yaml> {
    services(doc)
        .into_iter()
        .filter(|(_, s)| s["image"].as_str() == Some("switchyard:latest"))
        .collect()
}

#[test]
fn compose_images_build_from_this_repository_and_run_workspace_binaries() {
    let doc = compose();
    let all = services(&doc);
    let binaries = workspace_binaries();
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    for (name, service) in &all {
        let image = service["image"].as_str();
        let build = &service["build"];
        assert!(
            image.is_some() || !build.is_null(),
            "{name}: no image and no build"
        );
        if let Some(context) = build["context"].as_str() {
            let context = repo().join(context);
            assert!(
                context.is_dir(),
                "{name}: build context {context:?} missing"
            );
            let file = build["dockerfile"].as_str().unwrap_or("Dockerfile");
            assert!(context.join(file).is_file(), "{name}: {file} missing");
        }
    }
    let ours = switchyard_services(&doc);
    assert!(
        ours.len() >= 7,
        "topics, gateway, four processors, api, modems: {:?}",
        ours.keys()
    );
    for (name, service) in &ours {
        assert!(
            !service["build"].is_null(),
            "{name}: our image must be buildable here"
        );
        let command = strings(&service["command"]);
        let binary = command
            .first()
            .unwrap_or_else(|| panic!("{name}: no command"));
        assert!(
            binaries.contains(binary),
            "{name}: {binary} is not a workspace binary"
        );
    }
    // The image holds every binary of the workspace: built with --workspace --bins, and
    // every executable at the top of target/release copied, so a new processor needs no
    // edit of the Dockerfile.
    assert!(
        dockerfile.contains("cargo build --release --locked --workspace --bins"),
        "{dockerfile}"
    );
    assert!(
        dockerfile
            .contains("find target/release -maxdepth 1 -type f -executable -exec cp {} /out/"),
        "{dockerfile}"
    );
    // Third-party images: the ones the deployment promises.
    let image = |s: &str| all[s]["image"].as_str().unwrap_or_default().to_string();
    assert!(image("kafka").starts_with("apache/kafka:"));
    assert!(image("schema-registry").starts_with("confluentinc/cp-schema-registry:"));
    assert!(image("grafana").starts_with("grafana/grafana:12."));
    let kafka = environment(&all["kafka"]);
    assert!(
        kafka["KAFKA_PROCESS_ROLES"].contains("controller"),
        "KRaft, no ZooKeeper"
    );
}

#[test]
fn every_variable_a_service_sets_is_read_and_no_loopback_default_is_left() {
    let doc = compose();
    for (name, service) in switchyard_services(&doc) {
        let command = strings(&service["command"]);
        let reads = env_vars_read(&command);
        let env = environment(&service);
        for key in env.keys().filter(|k| k.starts_with("SWITCHYARD_")) {
            assert!(
                reads.contains_key(key),
                "{name} sets {key}, which {} does not read",
                command[0]
            );
        }
        for (var, default) in &reads {
            if default.as_deref().is_some_and(is_loopback) {
                assert!(
                    env.contains_key(var),
                    "{name}: {var} defaults to {default:?}, which is the container itself; set it"
                );
            }
        }
        // An empty value would silently mean "unset" to some binaries.
        for (key, value) in &env {
            assert!(!value.is_empty(), "{name}: {key} is empty");
        }
        if let Some(g) = env.get("SWITCHYARD_PROCESSING_GUARANTEE") {
            assert_eq!(
                g, "at-least-once",
                "{name}: the proven mode; exactly-once is not verified on a real broker"
            );
        }
    }
    let processors = workspace_processors();
    assert!(processors.len() >= 4, "{processors:?}");
    let all = services(&doc);
    for p in &processors {
        assert!(
            all.get(p.as_str())
                .is_some_and(|s| strings(&s["command"]).first() == Some(p)),
            "processor {p} has no compose service running it (switchyard new processor adds one)"
        );
        assert_eq!(
            environment(&all[p])
                .get("SWITCHYARD_PROCESSING_GUARANTEE")
                .map(String::as_str),
            Some("at-least-once"),
            "{p}"
        );
    }
    // Secrets come from the operator's environment, never from the file.
    let api = environment(&all["api"]);
    assert!(api["SWITCHYARD_API_TOKEN"].starts_with("${SWITCHYARD_API_TOKEN:?"));
    let grafana = environment(&all["grafana"]);
    assert!(grafana["GF_SECURITY_ADMIN_PASSWORD"].starts_with("${"));
    assert_eq!(
        grafana["GF_AUTH_ANONYMOUS_ENABLED"], "false",
        "login stays on"
    );
    assert!(grafana["GF_PLUGINS_PREINSTALL_SYNC"].contains("hamedkarbasi93-kafka-datasource"));
}

/// Container ports a service listens on, from its environment's `HOST:PORT` values.
fn listen_ports(env: &BTreeMap<String, String>) -> BTreeSet<u16> {
    env.iter()
        .filter(|(k, _)| k.ends_with("LISTEN") || k.ends_with("LISTENERS"))
        .flat_map(|(_, v)| v.split(',').map(str::to_string).collect::<Vec<_>>())
        .filter_map(|v| {
            v.rsplit(':')
                .next()
                .and_then(|p| p.trim_matches('/').parse().ok())
        })
        .collect()
}

#[test]
fn published_and_health_checked_ports_are_the_ones_services_listen_on() {
    let doc = compose();
    let all = services(&doc);
    let expected_host_ports = [
        ("kafka", "9092:9092"),
        ("schema-registry", "8081:8081"),
        ("gateway", "6001:6001/udp"),
        ("api", "8000:8000"),
        ("grafana", "3000:3000"),
        ("prometheus", "9090:9090"),
    ];
    for (service, mapping) in expected_host_ports {
        assert!(
            strings(&all[service]["ports"]).iter().any(|p| p == mapping),
            "{service} publishes {mapping}"
        );
    }
    for (name, service) in &all {
        if name == "grafana" || name == "prometheus" {
            continue; // Their images listen on 3000 and 9090 by default.
        }
        let env = environment(service);
        let listening = listen_ports(&env);
        for mapping in strings(&service["ports"]) {
            let container: u16 = mapping
                .split('/')
                .next()
                .and_then(|m| m.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("{name}: bad port mapping {mapping}"));
            assert!(
                listening.contains(&container),
                "{name} publishes {container} but listens on {listening:?}"
            );
        }
        let check = strings(&service["healthcheck"]["test"]).join(" ");
        if let Some(at) = check.find("localhost:") {
            let port: u16 = check[at + 10..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .expect("health check port");
            assert!(
                listening.contains(&port),
                "{name}'s health check probes {port}, it listens on {listening:?}"
            );
        }
    }
}

#[test]
fn start_order_waits_for_health_and_the_one_shot_topic_service() {
    let doc = compose();
    let all = services(&doc);
    for (name, service) in &all {
        let Some(deps) = service["depends_on"].as_mapping() else {
            continue;
        };
        for (dep, how) in deps {
            let dep = dep.as_str().expect("name");
            let target = all
                .get(dep)
                .unwrap_or_else(|| panic!("{name} depends on unknown {dep}"));
            match how["condition"].as_str() {
                Some("service_healthy") => assert!(
                    !target["healthcheck"].is_null(),
                    "{name} waits for {dep} to be healthy, but it has no health check"
                ),
                Some("service_completed_successfully") => assert_eq!(
                    target["restart"].as_str(),
                    Some("no"),
                    "{name} waits for {dep} to finish; it must be one-shot"
                ),
                other => panic!("{name} -> {dep}: condition {other:?}"),
            }
        }
    }
    assert_eq!(
        strings(&all["topics"]["command"]),
        ["switchyard", "topics", "apply"]
    );
    // The one-shots that make the topics and the keys need no topic.
    for (name, _) in switchyard_services(&doc)
        .iter()
        .filter(|(n, _)| !matches!(n.as_str(), "topics" | "keys"))
    {
        let deps = &all[name]["depends_on"];
        assert!(
            !deps["topics"].is_null() || !deps["gateway"].is_null(),
            "{name} starts after the topics exist"
        );
    }
    for volume in strings(&all["grafana"]["volumes"]) {
        let host = volume.split(':').next().expect("host path");
        assert!(
            repo().join(host).exists(),
            "grafana mounts {host}, which is missing"
        );
    }
}

/// The dashboards whose panels read Kafka (the sensor dashboard); the operations dashboard
/// reads Prometheus.
fn kafka_dashboards() -> Vec<(PathBuf, Json)> {
    dashboards()
        .into_iter()
        .filter(|(_, d)| d["uid"] != "switchyard-operations")
        .collect()
}

fn dashboards() -> Vec<(PathBuf, Json)> {
    std::fs::read_dir(repo().join("grafana/dashboards"))
        .expect("grafana/dashboards")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let json = serde_json::from_str(&std::fs::read_to_string(&p).expect("read"))
                .unwrap_or_else(|e| panic!("{p:?}: {e}"));
            (p, json)
        })
        .collect()
}

fn topics_of(dashboard: &Json) -> Vec<String> {
    dashboard["panels"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["topicName"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn dashboards_name_only_catalog_topics_and_every_sensor_has_its_panel() {
    let catalog = Catalog::embedded().expect("catalog");
    let all = kafka_dashboards();
    assert!(!all.is_empty());
    let mut shown = BTreeSet::new();
    for (path, dashboard) in &all {
        for topic in topics_of(dashboard) {
            assert!(
                catalog.topic(&topic).is_some(),
                "{path:?} names topic {topic:?}, which is not in schemas/topics.toml"
            );
            shown.insert(topic);
        }
        for panel in dashboard["panels"].as_array().expect("panels") {
            assert_eq!(panel["datasource"]["uid"], "switchyard-kafka", "{path:?}");
            for t in panel["targets"].as_array().expect("targets") {
                assert_eq!(t["messageFormat"], "avro");
                assert_eq!(t["avroSchemaSource"], "schemaRegistry");
                assert_eq!(t["timestampMode"], "message", "time = the record's time");
            }
        }
    }
    for d in &catalog.sensors.device {
        let topic = format!("{}{GRAFANA_SUFFIX}", d.nickname);
        assert!(shown.contains(&topic), "no panel for sensor {}", d.nickname);
    }
    for topic in ["anomalies", "carrier-state"] {
        assert!(shown.contains(topic), "no panel for {topic}");
    }

    // The datasource the panels use, pointed at the compose services.
    let text = std::fs::read_to_string(repo().join("grafana/provisioning/datasources/kafka.yaml"))
        .expect("datasource");
    let ds: Yaml = serde_yaml::from_str(&text).expect("yaml");
    let ds = &ds["datasources"][0];
    assert_eq!(ds["uid"].as_str(), Some("switchyard-kafka"));
    assert_eq!(ds["type"].as_str(), Some("hamedkarbasi93-kafka-datasource"));
    let compose = compose();
    let kafka = environment(&services(&compose)["kafka"]);
    let bootstrap = ds["jsonData"]["bootstrapServers"]
        .as_str()
        .expect("bootstrap");
    assert!(
        kafka["KAFKA_ADVERTISED_LISTENERS"].contains(&format!("://{bootstrap}")),
        "Grafana reaches Kafka at an advertised listener"
    );
    assert_eq!(
        ds["jsonData"]["schemaRegistryUrl"].as_str(),
        Some("http://schema-registry:8081")
    );
}

#[test]
fn the_dashboard_is_the_one_generated_from_the_catalog() {
    let out = Command::new(workspace_binary("switchyard").expect("switchyard"))
        .args(["topics", "grafana"])
        .output()
        .expect("runs");
    assert!(out.status.success());
    let generated = String::from_utf8_lossy(&out.stdout);
    let file = std::fs::read_to_string(repo().join("grafana/dashboards/switchyard.json"))
        .expect("dashboard");
    assert_eq!(
        generated.trim_end(),
        file.trim_end(),
        "grafana/dashboards/switchyard.json is out of date: run \
         `switchyard topics grafana > grafana/dashboards/switchyard.json`"
    );
}

#[test]
fn prometheus_scrapes_every_switchyard_service_where_it_listens_and_loads_the_rules() {
    let doc = compose();
    let all = services(&doc);
    let mounts = strings(&all["prometheus"]["volumes"]);
    for (host, container) in [
        (
            "./monitoring/prometheus-compose.yml",
            "/etc/prometheus/prometheus.yml",
        ),
        ("./monitoring/alerts.yml", "/etc/prometheus/alerts.yml"),
    ] {
        assert!(
            mounts
                .iter()
                .any(|m| m.starts_with(&format!("{host}:{container}"))),
            "prometheus mounts {host} at {container}: {mounts:?}"
        );
    }
    let config: Yaml = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("monitoring/prometheus-compose.yml")).expect("config"),
    )
    .expect("YAML");
    assert_eq!(
        strings(&config["rule_files"]),
        ["/etc/prometheus/alerts.yml"]
    );
    let mut scraped = BTreeSet::new();
    for job in config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
    {
        for group in job["static_configs"].as_sequence().expect("static_configs") {
            for target in strings(&group["targets"]) {
                let (service, port) = target.split_once(':').expect("host:port");
                let port: u16 = port.parse().expect("port");
                let env = environment(&all[service]);
                assert!(
                    listen_ports(&env).contains(&port),
                    "{target}: {service} does not listen on {port}"
                );
                scraped.insert(service.to_string());
            }
        }
    }
    let long_running: BTreeSet<String> = switchyard_services(&doc)
        .into_iter()
        .filter(|(name, s)| {
            name != "modems" && s["restart"].as_str() != Some("no") && !s["profiles"].is_sequence()
        })
        .map(|(name, _)| name)
        .collect();
    assert_eq!(scraped, long_running, "every Switchyard service is scraped");
}

#[test]
fn the_operations_dashboard_queries_prometheus_for_metrics_the_services_export() {
    let (_, dashboard) = dashboards()
        .into_iter()
        .find(|(_, d)| d["uid"] == "switchyard-operations")
        .expect("grafana/dashboards/operations.json");
    let datasource: Yaml = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("grafana/provisioning/datasources/prometheus.yaml"))
            .expect("datasource"),
    )
    .expect("yaml");
    let uid = datasource["datasources"][0]["uid"].as_str().expect("uid");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 6);
    for panel in panels {
        assert_eq!(panel["datasource"]["uid"], uid, "{}", panel["title"]);
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for metric in switchyard_testkit::metrics_in(expr) {
                assert!(
                    switchyard_testkit::metric_registered(metric).expect("sources"),
                    "{} queries {metric}, which no service registers",
                    panel["title"]
                );
            }
        }
    }
}

#[test]
fn the_gateway_authenticates_with_keys_the_keys_service_makes_and_the_modems_sign_with() {
    let doc = compose();
    let all = services(&doc);
    let keys = &all["keys"];
    assert_eq!(keys["restart"].as_str(), Some("no"), "a one-shot");
    let command = strings(&keys["command"]);
    let file = command
        .iter()
        .skip_while(|a| *a != "--file")
        .nth(1)
        .expect("switchyard keys generate --file PATH");
    assert_eq!(command[..3], ["switchyard", "keys", "generate"]);
    let volume_of = |service: &Yaml| -> Vec<(String, String)> {
        strings(&service["volumes"])
            .iter()
            .map(|v| {
                let mut parts = v.split(':');
                (
                    parts.next().unwrap_or_default().to_string(),
                    parts.next().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let holds = |service: &Yaml| {
        volume_of(keys).iter().any(|(volume, dir)| {
            file.starts_with(dir.as_str())
                && volume_of(service)
                    .iter()
                    .any(|(v, d)| v == volume && d == dir)
        })
    };
    let gateway = &all["gateway"];
    assert_eq!(
        environment(gateway).get("SWITCHYARD_MODEM_KEYS"),
        Some(file),
        "the gateway authenticates with the generated file"
    );
    assert!(holds(gateway), "the gateway mounts the keys volume");
    assert_eq!(
        gateway["depends_on"]["keys"]["condition"].as_str(),
        Some("service_completed_successfully")
    );
    let modems = &all["modems"];
    let args = strings(&modems["command"]);
    assert!(
        args.windows(2).any(|w| w[0] == "--keys" && w[1] == *file),
        "the simulated modems sign with the same file: {args:?}"
    );
    assert!(holds(modems), "the modems mount the keys volume");
    assert!(
        !environment(gateway).contains_key("SWITCHYARD_REJECT_V1")
            && environment(gateway)
                .get("SWITCHYARD_LEGACY_MODEM_ID")
                .map(String::as_str)
                == Some("0"),
        "an original device works out of the box as legacy modem 0"
    );
}

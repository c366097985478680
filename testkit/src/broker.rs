//! Apache Kafka brokers for tests: one KRaft node ([`Broker`]) or a three-node cluster
//! ([`Broker::start_cluster`]), each node a JVM started by `scripts/kafka.sh` (the one place that
//! configures a broker, as `make up` does) on free loopback ports, its data in a temporary
//! folder. Ready means the node answered a metadata request naming itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use tempfile::TempDir;

use crate::{free_port, Service};

/// `scripts/kafka.sh` of this repository.
pub fn kafka_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka.sh")
}

/// The Apache Kafka version `broker/pom.xml` pins.
pub fn kafka_version() -> String {
    let pom = Path::new(env!("CARGO_MANIFEST_DIR")).join("../broker/pom.xml");
    std::fs::read_to_string(pom)
        .ok()
        .and_then(|text| {
            let start = text.find("<kafka.version>")? + "<kafka.version>".len();
            let end = start + text[start..].find('<')?;
            Some(text[start..end].to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Resolve the broker's jars once per test process (Maven, on first use per machine), so
/// that brokers started at the same moment do not each run Maven.
fn resolve_jars() -> Result<()> {
    static RESOLVED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    RESOLVED
        .get_or_init(|| {
            let out = Command::new("bash")
                .arg(kafka_script())
                .arg("classpath")
                .output()
                .map_err(|e| format!("running scripts/kafka.sh: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "scripts/kafka.sh classpath failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// One node's settings: where it listens and which quorum it belongs to.
#[derive(Debug, Clone)]
struct Node {
    id: u32,
    addr: SocketAddr,
    controller: SocketAddr,
    dir: PathBuf,
    /// A SASL listener (PLAIN and SCRAM-SHA-256) and its `name:password` users.
    sasl: Option<(SocketAddr, String)>,
}

impl Node {
    fn spawn(&self, voters: &str, cluster_id: &str, replication: u32) -> Result<Service> {
        resolve_jars()?;
        let mut command = Command::new("bash");
        command
            .arg(kafka_script())
            .arg("run")
            .arg(self.dir.join("data-root"))
            .env("KAFKA_PORT", self.addr.port().to_string())
            .env("KAFKA_CONTROLLER_PORT", self.controller.port().to_string())
            .env("KAFKA_NODE_ID", self.id.to_string())
            .env("KAFKA_VOTERS", voters)
            .env("KAFKA_CLUSTER_ID", cluster_id)
            .env("KAFKA_REPLICATION", replication.to_string())
            .env("KAFKA_LOG_LEVEL", "WARN");
        if let Some((addr, users)) = &self.sasl {
            command
                .env("KAFKA_SASL_PORT", addr.port().to_string())
                .env("KAFKA_SASL_USERS", users);
        }
        // Test data carries fixed sensor times from 2023, and record time is sensor time:
        // Kafka's first retention pass deleted such inputs under a test that was still
        // reading them (the example's SIGKILL test's restarted instance found its committed
        // offsets out of range). That pass comes `log.initial.task.delay.ms` (30 s) after
        // start, the next ones every `log.retention.check.interval.ms` (5 min): a test
        // lasts minutes, so both are an hour. A KAFKA_EXTRA_PROPERTIES file of the caller's
        // is kept.
        let mut properties = String::from(
            "log.initial.task.delay.ms=3600000\nlog.retention.check.interval.ms=3600000\n",
        );
        if let Some(file) = std::env::var_os("KAFKA_EXTRA_PROPERTIES") {
            properties.push_str(
                &std::fs::read_to_string(&file)
                    .with_context(|| format!("reading KAFKA_EXTRA_PROPERTIES {file:?}"))?,
            );
        }
        std::fs::create_dir_all(&self.dir)?;
        let extra = self.dir.join("test-broker.properties");
        std::fs::write(&extra, properties)
            .with_context(|| format!("writing {}", extra.display()))?;
        command.env("KAFKA_EXTRA_PROPERTIES", &extra);
        Service::spawn(&format!("kafka-{}", self.id), command, &self.dir)
    }
}

/// Whether the broker at `addr` answers a metadata request that lists broker `id`.
fn answers(addr: SocketAddr, id: u32) -> bool {
    let consumer: Result<BaseConsumer, _> =
        switchyard_kafka::clients::admin_config(&addr.to_string())
            .set("socket.connection.setup.timeout.ms", "1000")
            .create();
    let Ok(consumer) = consumer else {
        return false;
    };
    consumer
        .fetch_metadata(None, Duration::from_secs(1))
        .is_ok_and(|m| m.brokers().iter().any(|b| b.id() == id as i32))
}

/// A fresh random cluster id, as `kafka-storage random-uuid` makes: 16 random bytes,
/// base64url without padding, never starting with '-' (the storage tool would take it for
/// an option: one broker start in 64 failed that way).
fn cluster_id() -> Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    loop {
        let mut bytes = [0u8; 16];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
        let bits = u128::from_be_bytes(bytes);
        // 22 base64 digits of 6 bits hold 132 bits: the 128 bits, then 4 zero bits.
        let id: String = (0..22)
            .map(|i| {
                let shift = 122 - 6 * i;
                let digit = if shift >= 0 {
                    (bits >> shift) & 63
                } else {
                    (bits << -shift) & 63
                };
                ALPHABET[digit as usize] as char
            })
            .collect();
        if !id.starts_with('-') {
            return Ok(id);
        }
    }
}

/// Apache Kafka for a test: one KRaft node ([`Broker::start`]) or three
/// ([`Broker::start_cluster`]), each broker and controller in one JVM.
pub struct Broker {
    /// The first node's client address.
    pub addr: SocketAddr,
    /// The SASL listener, for a broker started with [`Broker::start_with_sasl`].
    pub sasl_addr: Option<SocketAddr>,
    nodes: Vec<Node>,
    services: Vec<Option<Service>>,
    voters: String,
    cluster_id: String,
    dir: TempDir,
}

impl Broker {
    /// Nodes in a cluster started by [`Broker::start_cluster`].
    pub const CLUSTER_SIZE: u32 = 3;

    pub fn start() -> Result<Broker> {
        Self::start_nodes(1, None)
    }

    /// A broker that also listens with SASL (PLAIN and SCRAM-SHA-256, no TLS) for `users`
    /// (name, password), on [`Broker::sasl_addr`]; its plaintext listener stays open.
    pub fn start_with_sasl(users: &[(&str, &str)]) -> Result<Broker> {
        let users = users
            .iter()
            .map(|(name, password)| format!("{name}:{password}"))
            .collect::<Vec<_>>()
            .join(",");
        Self::start_nodes(1, Some((([127, 0, 0, 1], free_port()?).into(), users)))
    }

    /// Three nodes, each broker and controller (a three-voter quorum): internal and new
    /// topics replicated three times, `min.insync.replicas=2`.
    pub fn start_cluster() -> Result<Broker> {
        Self::start_nodes(Self::CLUSTER_SIZE, None)
    }

    fn start_nodes(count: u32, sasl: Option<(SocketAddr, String)>) -> Result<Broker> {
        let dir = tempfile::tempdir().context("creating the broker's folder")?;
        let mut nodes = Vec::new();
        for id in 1..=count {
            let node_dir = if count == 1 {
                dir.path().to_path_buf()
            } else {
                dir.path().join(format!("node-{id}"))
            };
            std::fs::create_dir_all(&node_dir)?;
            nodes.push(Node {
                id,
                addr: ([127, 0, 0, 1], free_port()?).into(),
                controller: ([127, 0, 0, 1], free_port()?).into(),
                dir: node_dir,
                sasl: sasl.clone(),
            });
        }
        let voters = nodes.iter().map(Node::voter).collect::<Vec<_>>().join(",");
        let mut broker = Broker {
            addr: nodes[0].addr,
            sasl_addr: sasl.map(|(addr, _)| addr),
            services: nodes.iter().map(|_| None).collect(),
            nodes,
            voters,
            cluster_id: cluster_id()?,
            dir,
        };
        for id in 1..=count {
            broker.spawn(id)?;
        }
        for id in 1..=count {
            broker.wait_ready(id)?;
        }
        Ok(broker)
    }

    fn index(&self, id: u32) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .with_context(|| format!("no node {id}"))
    }

    fn spawn(&mut self, id: u32) -> Result<()> {
        let i = self.index(id)?;
        let replication = self.nodes.len() as u32;
        self.services[i] =
            Some(self.nodes[i].spawn(&self.voters, &self.cluster_id, replication)?);
        Ok(())
    }

    fn wait_ready(&mut self, id: u32) -> Result<()> {
        let i = self.index(id)?;
        let addr = self.nodes[i].addr;
        let Some(service) = self.services[i].as_mut() else {
            bail!("node {id} is not running");
        };
        service.wait_until(Duration::from_secs(120), || answers(addr, id))
    }

    /// The first node's process id (the JVM: the script execs it).
    pub fn pid(&self) -> u32 {
        self.services
            .iter()
            .flatten()
            .next()
            .map_or(0, Service::pid)
    }

    /// Every node's `host:port`, comma-separated, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client address of node `id`.
    pub fn node_addr(&self, id: u32) -> Result<SocketAddr> {
        Ok(self.nodes[self.index(id)?].addr)
    }

    /// The test's scratch folder: the broker's data and log (`kafka-1.log`; a cluster's
    /// under `node-N/`), and where the tests keep the logs of the services they start.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kill every node (SIGKILL) and start them again on the same ports and data.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.start_again()
    }

    /// Kill every node (SIGKILL) and leave them down until [`Broker::start_again`].
    pub fn stop(&mut self) {
        for service in self.services.iter_mut().flatten() {
            service.kill();
        }
    }

    /// Start the stopped nodes again on the same ports and data.
    pub fn start_again(&mut self) -> Result<()> {
        let ids: Vec<u32> = self.nodes.iter().map(|n| n.id).collect();
        for id in &ids {
            self.spawn(*id)?;
        }
        for id in ids {
            self.wait_ready(id)?;
        }
        Ok(())
    }

    /// Kill node `id` alone (SIGKILL).
    pub fn kill_node(&mut self, id: u32) -> Result<()> {
        let i = self.index(id)?;
        if let Some(mut service) = self.services[i].take() {
            service.kill();
        }
        Ok(())
    }

    /// Start a killed node again on its ports and data.
    pub fn start_node_again(&mut self, id: u32) -> Result<()> {
        self.spawn(id)?;
        self.wait_ready(id)
    }

    /// The first node's log.
    pub fn log_text(&self) -> String {
        self.services
            .iter()
            .flatten()
            .next()
            .map(Service::log_text)
            .unwrap_or_default()
    }
}

impl Node {
    fn voter(&self) -> String {
        format!("{}@{}", self.id, self.controller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One id in 64 started with '-' before, which the storage tool took for an option: in a
    /// thousand, one would all but surely have.
    #[test]
    fn cluster_ids_are_base64url_uuids_that_never_start_with_a_dash() {
        for _ in 0..1000 {
            let id = cluster_id().expect("random bytes");
            assert_eq!(id.len(), 22, "{id}");
            assert!(!id.starts_with('-'), "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{id}"
            );
        }
    }
}

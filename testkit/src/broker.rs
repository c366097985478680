//! Apache Kafka brokers for tests: one KRaft node ([`Broker`]) or a three-node cluster
//! ([`Cluster`]), each node a JVM started by `scripts/kafka.sh` (the one place that
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
/// base64url without padding.
fn cluster_id() -> Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    let bits = u128::from_be_bytes(bytes);
    // 22 base64 digits of 6 bits hold 132 bits: the 128 bits, then 4 zero bits.
    Ok((0..22)
        .map(|i| {
            let shift = 122 - 6 * i;
            let digit = if shift >= 0 {
                (bits >> shift) & 63
            } else {
                (bits << -shift) & 63
            };
            ALPHABET[digit as usize] as char
        })
        .collect())
}

/// A single-node Apache Kafka (KRaft, broker and controller in one JVM).
pub struct Broker {
    pub addr: SocketAddr,
    node: Node,
    cluster_id: String,
    service: Service,
    dir: TempDir,
}

impl Broker {
    pub fn start() -> Result<Broker> {
        let dir = tempfile::tempdir().context("creating the broker's folder")?;
        let node = Node {
            id: 1,
            addr: ([127, 0, 0, 1], free_port()?).into(),
            controller: ([127, 0, 0, 1], free_port()?).into(),
            dir: dir.path().to_path_buf(),
        };
        let cluster_id = cluster_id()?;
        let service = node.spawn(&node.voter(), &cluster_id, 1)?;
        let mut broker = Broker {
            addr: node.addr,
            node,
            cluster_id,
            service,
            dir,
        };
        broker.wait_ready()?;
        Ok(broker)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let (addr, id) = (self.addr, self.node.id);
        self.service
            .wait_until(Duration::from_secs(90), || answers(addr, id))
    }

    /// The broker's process id (the JVM: the script execs it).
    pub fn pid(&self) -> u32 {
        self.service.pid()
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// The test's scratch folder: the broker's data and log (`kafka-1.log`), and where the
    /// tests keep the logs of the services they start.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kill the broker (SIGKILL) and start it again on the same ports and data.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.start_again()
    }

    /// Kill the broker (SIGKILL) and leave it down until [`Broker::start_again`].
    pub fn stop(&mut self) {
        self.service.kill();
    }

    /// Start a stopped broker again on the same ports and data.
    pub fn start_again(&mut self) -> Result<()> {
        self.service = self.node.spawn(&self.node.voter(), &self.cluster_id, 1)?;
        self.wait_ready()
    }

    pub fn log_text(&self) -> String {
        self.service.log_text()
    }
}

impl Node {
    fn voter(&self) -> String {
        format!("{}@{}", self.id, self.controller)
    }
}

/// Three Apache Kafka nodes on this machine, each broker and controller (a three-voter
/// quorum): internal topics and new topics replicated three times, `min.insync.replicas=2`.
pub struct Cluster {
    nodes: Vec<Node>,
    services: Vec<Option<Service>>,
    voters: String,
    cluster_id: String,
    dir: TempDir,
}

impl Cluster {
    pub const SIZE: u32 = 3;

    pub fn start() -> Result<Cluster> {
        let dir = tempfile::tempdir().context("creating the cluster's folder")?;
        let mut nodes = Vec::new();
        for id in 1..=Self::SIZE {
            let node_dir = dir.path().join(format!("node-{id}"));
            std::fs::create_dir_all(&node_dir)?;
            nodes.push(Node {
                id,
                addr: ([127, 0, 0, 1], free_port()?).into(),
                controller: ([127, 0, 0, 1], free_port()?).into(),
                dir: node_dir,
            });
        }
        let voters = nodes.iter().map(Node::voter).collect::<Vec<_>>().join(",");
        let cluster_id = cluster_id()?;
        let mut services = Vec::new();
        for node in &nodes {
            services.push(Some(node.spawn(&voters, &cluster_id, Self::SIZE)?));
        }
        let mut cluster = Cluster {
            nodes,
            services,
            voters,
            cluster_id,
            dir,
        };
        for id in 1..=Self::SIZE {
            cluster.wait_ready(id)?;
        }
        Ok(cluster)
    }

    fn index(&self, id: u32) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .with_context(|| format!("no node {id} in the cluster"))
    }

    fn wait_ready(&mut self, id: u32) -> Result<()> {
        let i = self.index(id)?;
        let addr = self.nodes[i].addr;
        let Some(service) = self.services[i].as_mut() else {
            bail!("node {id} is not running");
        };
        service.wait_until(Duration::from_secs(120), || answers(addr, id))
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
    pub fn addr(&self, id: u32) -> Result<SocketAddr> {
        Ok(self.nodes[self.index(id)?].addr)
    }

    /// Kill node `id` (SIGKILL).
    pub fn kill(&mut self, id: u32) -> Result<()> {
        let i = self.index(id)?;
        if let Some(mut service) = self.services[i].take() {
            service.kill();
        }
        Ok(())
    }

    /// Start a killed node again on its ports and data.
    pub fn start_again(&mut self, id: u32) -> Result<()> {
        let i = self.index(id)?;
        self.services[i] = Some(self.nodes[i].spawn(&self.voters, &self.cluster_id, Self::SIZE)?);
        self.wait_ready(id)
    }

    /// The cluster's scratch folder (each node's data and log under `node-N/`).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

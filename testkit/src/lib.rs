//! Real processes for integration tests.
//!
//! [`Broker::start`] runs an Apache Kafka node (KRaft, data in a temporary folder) on free
//! loopback ports, [`Broker::start_cluster`] three of them; [`Service::spawn`] runs any binary and
//! waits until it is ready. Both stop their process when dropped, so a failing test leaves
//! nothing running.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

mod broker;
mod scripted;
pub use broker::{kafka_script, kafka_version, Broker};
pub use scripted::{take_down_scripted_in_background, ScriptedStack};

/// A loopback TCP port free at the time of the call (see [`free_ports`]).
pub fn free_port() -> Result<u16> {
    free_ports(1)
}

/// The first of `n` consecutive loopback TCP ports free at the time of the call, below the
/// kernel's ephemeral range: a port the kernel hands out (as `bind(0)` would) can be taken
/// as the local port of an outgoing connection (a broker client's, say) before the service
/// it was chosen for binds it, which made `make up`'s test fail once with "port taken".
/// Ports are handed out in turn within a process, so its tests never get the same one.
pub fn free_ports(n: u16) -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768);
    const SPAN: u32 = 12_000;
    if ephemeral_low < SPAN + 1_024 {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding a probe socket")?;
        return Ok(listener.local_addr()?.port());
    }
    let low = ephemeral_low - SPAN;
    // Processes start at different places, so two test binaries rarely meet.
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let at = NEXT.fetch_add(u32::from(n), Ordering::Relaxed);
        let first = low + (start + at) % SPAN;
        if first + u32::from(n) > ephemeral_low {
            continue;
        }
        let all_free = (first..first + u32::from(n))
            .all(|p| TcpListener::bind(("127.0.0.1", p as u16)).is_ok());
        if all_free {
            return Ok(first as u16);
        }
    }
    bail!("no {n} consecutive free ports below {ephemeral_low}")
}

/// Wait until something accepts TCP connections on `addr`.
pub fn wait_for_tcp(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {addr} after {timeout:?}")
}

/// Status code of a plain HTTP GET (no TLS, no redirects), or an error if no answer.
pub fn http_get_status(addr: SocketAddr, path: &str) -> Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    let text = String::from_utf8_lossy(&head);
    text.get(9..12)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP answer: {text:?}"))
}

/// A child process stopped (SIGKILL) when dropped.
pub struct Service {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Service {
    /// Spawn `command`, its output going to a log file in `log_dir`.
    pub fn spawn(name: &str, mut command: Command, log_dir: &Path) -> Result<Service> {
        let log = log_dir.join(format!("{name}.log"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Service {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// Wait until `ready` returns true, failing early if the process exits.
    pub fn wait_until(&mut self, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited with {status} before it was ready; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            if ready() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready after {timeout:?}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stop the process now (SIGKILL) and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A binary of this workspace, built next to the running test (`target/<profile>/NAME`).
/// `cargo test --workspace` builds every binary; `make test` builds them first.
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test binary")?;
    // A test runs from target/<profile>/deps/, a binary (the bench) from target/<profile>/.
    let dir = exe.parent().context("the running binary has no folder")?;
    let profile_dir = if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().context("deps folder has no parent")?
    } else {
        dir
    };
    let path = profile_dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is not built: run `cargo build --workspace --bins`",
            path.display()
        );
    }
    Ok(path)
}

/// A `switchyard-registry` process serving on a free port, stored on `broker`.
pub struct Registry {
    pub addr: SocketAddr,
    pub service: Service,
}

impl Registry {
    pub fn start(broker: &Broker, name: &str) -> Result<Registry> {
        Self::start_at(broker, name, ([127, 0, 0, 1], free_port()?).into())
    }

    /// A registry on a given address (e.g. to bring one back where it was).
    pub fn start_at(broker: &Broker, name: &str, addr: SocketAddr) -> Result<Registry> {
        let mut command = Command::new(workspace_binary("switchyard-registry")?);
        command
            .env("RUST_LOG", "info,rdkafka=warn")
            .env("SWITCHYARD_REGISTRY_LISTEN", addr.to_string())
            .env("SWITCHYARD_BOOTSTRAP_SERVERS", broker.bootstrap());
        let mut service = Service::spawn(name, command, broker.data_dir())?;
        service.wait_until(Duration::from_secs(60), || {
            http_get_status(addr, "/health").ok() == Some(200)
        })?;
        Ok(Registry { addr, service })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Service {
    /// Ask the process to stop (SIGTERM) and wait for it to exit.
    pub fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        self.signal("TERM")?;
        self.wait_exit(timeout)
    }

    /// Wait up to `timeout` for the process to exit, after a SIGTERM.
    fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not exit within {timeout:?} of SIGTERM; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Send the named signal (`TERM`, `STOP`, `CONT`) through `kill(1)`.
    fn signal(&self, name: &str) -> Result<()> {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{name} {pid} failed");
        }
        Ok(())
    }

    /// SIGKILL the process at a moment when `condition` holds, checked while the process is
    /// frozen (SIGSTOP), so nothing it does between the check and the kill can undo it; if
    /// the condition does not hold, the process runs on (SIGCONT) and is checked again. For
    /// crash tests whose claim needs the kill inside a window (e.g. outputs ahead of commits).
    pub fn kill_when(&mut self, timeout: Duration, condition: impl FnMut() -> bool) -> Result<()> {
        self.freeze_when(timeout, condition)?;
        self.kill();
        Ok(())
    }

    /// SIGTERM the process at a moment when `condition` holds, checked while it is frozen as
    /// in [`Service::kill_when`], then let it run on to its graceful stop and wait for its
    /// exit: for tests of what a clean stop settles (e.g. inputs processed, not committed).
    pub fn terminate_when(
        &mut self,
        timeout: Duration,
        condition: impl FnMut() -> bool,
    ) -> Result<std::process::ExitStatus> {
        self.freeze_when(timeout, condition)?;
        self.signal("TERM")?;
        self.signal("CONT")?;
        self.wait_exit(timeout)
    }

    /// Leave the process frozen (SIGSTOP) at a moment when `condition` holds.
    fn freeze_when(
        &mut self,
        timeout: Duration,
        mut condition: impl FnMut() -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited with {status} before the signal", self.name);
            }
            self.signal("STOP")?;
            if condition() {
                return Ok(());
            }
            self.signal("CONT")?;
            if Instant::now() > deadline {
                bail!(
                    "the condition did not hold within {timeout:?} for {}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// The body of a plain HTTP GET.
pub fn http_get_text(addr: SocketAddr, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default())
}

/// The value of an unlabelled-or-labelled Prometheus sample whose line starts with `prefix`
/// (e.g. `switchyard_assigned_partitions{`), summed over matching lines.
pub fn metric_sum(metrics: &str, prefix: &str) -> f64 {
    metric_sum_where(metrics, prefix, "")
}

/// [`metric_sum`] over the lines that also contain `label` (e.g. `topic="imu"`), wherever
/// it stands among the sample's labels.
pub fn metric_sum_where(metrics: &str, prefix: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A broker and a registry with every catalog topic created and schema registered
/// (by `switchyard topics apply`, as `make up` does).
pub struct Stack {
    pub registry: Registry,
    pub broker: Broker,
}

impl Stack {
    /// On one Kafka node.
    pub fn start() -> Result<Stack> {
        Self::on(Broker::start()?)
    }

    /// On a three-node Kafka cluster: the catalog's topics replicated three times, with
    /// `min.insync.replicas=2` (the cluster's defaults, which `topics apply` takes).
    pub fn start_cluster() -> Result<Stack> {
        Self::on(Broker::start_cluster()?)
    }

    fn on(broker: Broker) -> Result<Stack> {
        let registry = Registry::start(&broker, "registry")?;
        let out = Command::new(workspace_binary("switchyard")?)
            .args(["topics", "apply"])
            .env("SWITCHYARD_BOOTSTRAP_SERVERS", broker.bootstrap())
            .env("SWITCHYARD_REGISTRY_URL", registry.url())
            .output()
            .context("running switchyard topics apply")?;
        if !out.status.success() {
            bail!(
                "switchyard topics apply failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Stack { registry, broker })
    }

    /// Environment for a Switchyard service pointed at this stack.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SWITCHYARD_BOOTSTRAP_SERVERS", self.broker.bootstrap()),
            ("SWITCHYARD_REGISTRY_URL", self.registry.url()),
        ]
    }

    /// Spawn a workspace binary with this stack's environment plus `env`.
    pub fn spawn(&self, binary: &str, name: &str, env: &[(&str, String)]) -> Result<Service> {
        let mut command = Command::new(workspace_binary(binary)?);
        command.env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn");
        for (k, v) in self
            .env()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .chain(env.iter().map(|(k, v)| (*k, v.clone())))
        {
            command.env(k, v);
        }
        Service::spawn(name, command, self.broker.data_dir())
    }
}

/// Raw Kafka access for tests.
pub mod kafka {
    use std::collections::{BTreeMap, HashMap};
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context, Result};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use rdkafka::{Offset, TopicPartitionList};

    /// One consumed record.
    #[derive(Debug, Clone)]
    pub struct RawRecord {
        pub partition: i32,
        pub offset: i64,
        pub timestamp_ms: Option<i64>,
        pub key: Option<Vec<u8>>,
        pub payload: Option<Vec<u8>>,
        pub headers: HashMap<String, String>,
    }

    /// Produce records (key, payload, timestamp ms) and wait until the broker has them all.
    pub fn produce(bootstrap: &str, topic: &str, records: &[(String, Vec<u8>, i64)]) -> Result<()> {
        let producer: ThreadedProducer<DefaultProducerContext> =
            switchyard_kafka::clients::producer_config(bootstrap)
                .set("linger.ms", "5")
                .create()?;
        for (key, payload, ts) in records {
            let mut record = BaseRecord::to(topic)
                .key(key.as_str())
                .payload(payload.as_slice())
                .timestamp(*ts);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        record = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        }
        producer
            .flush(Duration::from_secs(60))
            .context("flushing test records")?;
        Ok(())
    }

    /// A consumer that reads without committing, and the partitions of `topic`.
    fn reader(bootstrap: &str, topic: &str) -> Result<(BaseConsumer, Vec<i32>)> {
        let consumer: BaseConsumer = switchyard_kafka::clients::consumer_config(bootstrap)
            .set("group.id", "switchyard-test-reader")
            .create()?;
        let partitions = switchyard_kafka::partitions(&consumer, topic, Duration::from_secs(10))?;
        if partitions.is_empty() {
            bail!("topic {topic} does not exist");
        }
        Ok((consumer, partitions))
    }

    /// `topic`'s partitions and the id of each one's leader (-1 while it has none).
    pub fn leaders(bootstrap: &str, topic: &str) -> Result<HashMap<i32, i32>> {
        let consumer: BaseConsumer = switchyard_kafka::clients::admin_config(bootstrap).create()?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        Ok(metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| (p.id(), p.leader())))
            .collect())
    }

    /// How many partitions `topic` has on the broker (an error when it does not exist).
    pub fn partition_count(bootstrap: &str, topic: &str) -> Result<usize> {
        Ok(reader(bootstrap, topic)?.1.len())
    }

    /// Every record of `topic` from its start to its end as of this call, so a test counting
    /// them sees extra records as well as missing ones. Read `read_committed`: each partition
    /// up to its last stable offset (the start of its oldest open transaction, else its high
    /// watermark); records of aborted transactions are never returned.
    pub fn read_to_end(bootstrap: &str, topic: &str) -> Result<Vec<RawRecord>> {
        read_to_end_as(bootstrap, topic, "read_committed")
    }

    /// Every record of `topic` up to each partition's high watermark, as a
    /// `read_uncommitted` consumer sees them: open and aborted transactions' records too.
    pub fn read_uncommitted_to_end(bootstrap: &str, topic: &str) -> Result<Vec<RawRecord>> {
        read_to_end_as(bootstrap, topic, "read_uncommitted")
    }

    fn read_to_end_as(bootstrap: &str, topic: &str, isolation: &str) -> Result<Vec<RawRecord>> {
        let consumer: BaseConsumer = switchyard_kafka::clients::consumer_config(bootstrap)
            .set("group.id", "switchyard-test-reader")
            // Also what the end offsets below are: the last stable offset when committed.
            .set("isolation.level", isolation)
            // A partition whose last offsets are transaction markers (never returned as
            // records) ends with an end-of-partition event instead of a last record.
            .set("enable.partition.eof", "true")
            .create()?;
        let partitions = switchyard_kafka::partitions(&consumer, topic, Duration::from_secs(10))?;
        if partitions.is_empty() {
            bail!("topic {topic} does not exist");
        }
        let mut ends = HashMap::new();
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            let (low, high) =
                switchyard_kafka::watermarks(&consumer, topic, *p, Duration::from_secs(10))?;
            if high > low {
                ends.insert(*p, high);
                tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
            }
        }
        let mut out = Vec::new();
        if ends.is_empty() {
            return Ok(out);
        }
        consumer.assign(&tpl)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ends.is_empty() {
            if Instant::now() > deadline {
                bail!(
                    "{topic}: {} records read before the deadline; partitions not read to their end: {ends:?}",
                    out.len()
                );
            }
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let end = ends.get(&m.partition()).copied();
                    if end.is_some_and(|end| m.offset() < end) {
                        out.push(raw_record(&m));
                    }
                    if end.is_some_and(|end| m.offset() + 1 >= end) {
                        ends.remove(&m.partition());
                    }
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    let position = consumer.position()?;
                    let at = position
                        .find_partition(topic, p)
                        .and_then(|e| e.offset().to_raw());
                    if ends
                        .get(&p)
                        .is_some_and(|end| at.is_some_and(|at| at >= *end))
                    {
                        ends.remove(&p);
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// The sum over `topics`' partitions of the offsets `group` has committed (0 where none).
    pub fn committed_total(bootstrap: &str, group: &str, topics: &[&str]) -> Result<i64> {
        let mut total = 0;
        for topic in topics {
            total += committed_offsets(bootstrap, group, topic)?
                .values()
                .sum::<i64>();
        }
        Ok(total)
    }

    /// The group's committed offset of each partition of `topic` that has one.
    pub fn committed_offsets(
        bootstrap: &str,
        group: &str,
        topic: &str,
    ) -> Result<BTreeMap<i32, i64>> {
        let consumer: BaseConsumer = switchyard_kafka::clients::consumer_config(bootstrap)
            .set("group.id", group)
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in switchyard_kafka::partitions(&consumer, topic, Duration::from_secs(10))? {
            tpl.add_partition(topic, p);
        }
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect())
    }

    fn raw_record(m: &rdkafka::message::BorrowedMessage<'_>) -> RawRecord {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            h.value
                                .map(|v| String::from_utf8_lossy(v).into_owned())
                                .unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        RawRecord {
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    /// Set one of `topic`'s configs (e.g. `max.message.bytes`) on the broker.
    pub fn set_topic_config(bootstrap: &str, topic: &str, key: &str, value: &str) -> Result<()> {
        use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            switchyard_kafka::clients::admin_config(bootstrap).create()?;
        let altered = futures::executor::block_on(admin.alter_configs(
            &[AlterConfig::new(ResourceSpecifier::Topic(topic)).set(key, value)],
            &AdminOptions::new(),
        ))?;
        for result in altered {
            if let Err((resource, code)) = result {
                bail!("setting {key}={value} on {resource:?}: {code}");
            }
        }
        // The controller took it; the broker applies it when it reads the metadata log.
        // Wait until the broker describes the topic with it, so what the test does next
        // meets the new setting.
        crate::wait_for(
            &format!("{topic} described with {key}={value}"),
            Duration::from_secs(30),
            || {
                let described = futures::executor::block_on(
                    admin
                        .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new()),
                );
                described.is_ok_and(|all| {
                    all.iter().flatten().any(|r| {
                        r.get(key)
                            .is_some_and(|e| e.value.as_deref() == Some(value))
                    })
                })
            },
        )
    }

    /// The sum over `topic`'s partitions of their high watermarks.
    pub fn end_total(bootstrap: &str, topic: &str) -> Result<i64> {
        let consumer: BaseConsumer = switchyard_kafka::clients::admin_config(bootstrap).create()?;
        Ok(switchyard_kafka::end_offset_total(
            &consumer,
            topic,
            Duration::from_secs(10),
        )?)
    }

    /// Wait until `topic` holds at least `at_least` records (or `timeout` passes), then
    /// return all of it, read to its end ([`read_to_end`]). An "at least" read: records
    /// that land after it are not seen, so a count of what a processor wrote is exact only
    /// after [`Stack::read_once_committed`](crate::Stack::read_once_committed).
    pub fn consume_at_least(
        bootstrap: &str,
        topic: &str,
        at_least: usize,
        timeout: Duration,
    ) -> Result<Vec<RawRecord>> {
        let deadline = Instant::now() + timeout;
        loop {
            let all = read_to_end(bootstrap, topic)?;
            if all.len() >= at_least || Instant::now() >= deadline {
                return Ok(all);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Whether a `switchyard_*` metric name (as Prometheus sees it, `_bucket` suffix allowed) is
/// registered by a service: its name without the service prefix appears quoted in the
/// gateway's, the pipeline's or the API's sources. For checking dashboards and alert rules
/// against what the services export.
pub fn metric_registered(metric: &str) -> Result<bool> {
    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for entry in std::fs::read_dir(dir)?.filter_map(std::result::Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, out)?;
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
        Ok(())
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["edge/gateway/src", "pipeline/src", "api/src"] {
        rust_files(&repo.join(dir), &mut files)?;
    }
    let name = metric
        .trim_start_matches("switchyard_gateway_")
        .trim_start_matches("switchyard_api_")
        .trim_start_matches("switchyard_")
        .trim_end_matches("_bucket");
    let quoted = format!("\"{name}\"");
    for file in files {
        if std::fs::read_to_string(&file)?.contains(&quoted) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The `switchyard_*` metric names a PromQL expression uses.
pub fn metrics_in(expr: &str) -> Vec<&str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("switchyard_"))
        .collect()
}

/// A plain HTTP request with a JSON body; returns (status, body).
pub fn http_json(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .context("not an HTTP answer")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A decoded record read back from a topic.
#[derive(Debug, Clone)]
pub struct TypedRecord<T> {
    pub raw: kafka::RawRecord,
    pub value: T,
}

impl Stack {
    /// Register a catalog topic's value schema (idempotent); returns its id and schema.
    pub fn schema(&self, topic: &str) -> Result<(i32, std::sync::Arc<apache_avro::Schema>)> {
        let catalog = switchyard_schemas::Catalog::embedded()?;
        let text = catalog
            .value_schema(topic)
            .with_context(|| format!("{topic} is not an Avro topic"))?;
        let body = serde_json::json!({ "schema": text }).to_string();
        let path = format!(
            "/subjects/{}/versions",
            switchyard_schemas::value_subject(topic)
        );
        let (status, answer) = http_json(self.registry.addr, "POST", &path, &body)?;
        if status != 200 {
            bail!("registering {topic}: {status} {answer}");
        }
        let id = serde_json::from_str::<serde_json::Value>(&answer)?["id"]
            .as_i64()
            .context("no id in the registry's answer")?;
        Ok((
            i32::try_from(id)?,
            std::sync::Arc::new(apache_avro::Schema::parse_str(text)?),
        ))
    }

    /// Produce typed values (key, value, record timestamp ms) to a catalog topic.
    pub fn produce<T: serde::Serialize>(
        &self,
        topic: &str,
        records: &[(String, T, i64)],
    ) -> Result<()> {
        let (id, schema) = self.schema(topic)?;
        let encoded = records
            .iter()
            .map(|(k, v, ts)| {
                Ok((
                    k.clone(),
                    switchyard_schemas::wire::encode(id, &schema, v).map_err(anyhow::Error::msg)?,
                    *ts,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        kafka::produce(&self.broker.bootstrap(), topic, &encoded)
    }

    /// Wait until a catalog topic holds at least `at_least` records (or `timeout`), then all
    /// of it to its end, decoded with the catalog schema (see [`kafka::consume_at_least`]).
    pub fn consume_at_least<T: serde::de::DeserializeOwned>(
        &self,
        topic: &str,
        at_least: usize,
        timeout: Duration,
    ) -> Result<Vec<TypedRecord<T>>> {
        let raws = kafka::consume_at_least(&self.broker.bootstrap(), topic, at_least, timeout)?;
        self.decode_all(topic, raws)
    }

    /// Wait until `group` has committed every record now on `inputs` (or `timeout`), then
    /// read `output` to its end: everything the processor wrote for those inputs is there
    /// (it commits only what its outputs' acknowledgements cover), so extras fail a count
    /// as missing records do.
    pub fn read_once_committed<T: serde::de::DeserializeOwned>(
        &self,
        group: &str,
        inputs: &[&str],
        output: &str,
        timeout: Duration,
    ) -> Result<Vec<TypedRecord<T>>> {
        let bootstrap = self.broker.bootstrap();
        let mut end = 0;
        for input in inputs {
            end += kafka::end_total(&bootstrap, input)?;
        }
        wait_for(&format!("{group} to commit {end} inputs"), timeout, || {
            kafka::committed_total(&bootstrap, group, inputs).unwrap_or(0) >= end
        })?;
        self.read_to_end(output)
    }

    /// Every record of a catalog topic up to its end as of this call, decoded with the
    /// catalog schema (see [`kafka::read_to_end`]).
    pub fn read_to_end<T: serde::de::DeserializeOwned>(
        &self,
        topic: &str,
    ) -> Result<Vec<TypedRecord<T>>> {
        let raws = kafka::read_to_end(&self.broker.bootstrap(), topic)?;
        self.decode_all(topic, raws)
    }

    fn decode_all<T: serde::de::DeserializeOwned>(
        &self,
        topic: &str,
        raws: Vec<kafka::RawRecord>,
    ) -> Result<Vec<TypedRecord<T>>> {
        let (id, schema) = self.schema(topic)?;
        let schemas = std::collections::HashMap::from([(id, schema)]);
        raws.into_iter()
            .map(|raw| {
                let value = switchyard_schemas::wire::decode_with(
                    &schemas,
                    raw.payload.as_deref().unwrap_or_default(),
                )
                .and_then(|v| switchyard_schemas::wire::from_value::<T>(&v))
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("{topic}[{}]@{}", raw.partition, raw.offset))?;
                Ok(TypedRecord { raw, value })
            })
            .collect()
    }

    /// Spawn a processor binary with a free metrics port and wait for its /health.
    pub fn start_processor(
        &self,
        binary: &str,
        name: &str,
        env: &[(&str, String)],
    ) -> Result<(Service, SocketAddr)> {
        let metrics: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let mut all: Vec<(&str, String)> = vec![("SWITCHYARD_METRICS_LISTEN", metrics.to_string())];
        all.extend(env.iter().map(|(k, v)| (*k, v.clone())));
        let mut service = self.spawn(binary, name, &all)?;
        service.wait_until(Duration::from_secs(60), || {
            http_get_status(metrics, "/health").ok() == Some(200)
        })?;
        Ok((service, metrics))
    }
}

/// A started gateway: its process, the UDP address devices send to, its metrics address.
pub struct Gateway {
    pub service: Service,
    pub udp: SocketAddr,
    pub metrics: SocketAddr,
}

impl Stack {
    /// `switchyard-gateway` on a free UDP port, healthy; `env` adds to or overrides its
    /// configuration. Without `SWITCHYARD_MODEM_KEYS` in `env` it runs `--insecure`
    /// (envelopes trusted as they come), which the binary refuses unless told.
    pub fn start_gateway(&self, env: &[(&str, String)]) -> Result<Gateway> {
        let udp: SocketAddr = match env.iter().rfind(|(k, _)| *k == "SWITCHYARD_GATEWAY_LISTEN") {
            Some((_, listen)) => listen.parse()?,
            None => ([127, 0, 0, 1], free_port()?).into(),
        };
        let mut all = vec![("SWITCHYARD_GATEWAY_LISTEN", udp.to_string())];
        if !env.iter().any(|(k, _)| *k == "SWITCHYARD_MODEM_KEYS") {
            all.push(("SWITCHYARD_INSECURE", "true".to_string()));
        }
        all.extend(env.iter().map(|(k, v)| (*k, v.clone())));
        let (service, metrics) = self.start_processor("switchyard-gateway", "gateway", &all)?;
        Ok(Gateway {
            service,
            udp,
            metrics,
        })
    }

    /// Every modem the `carrier-state` table has a row for, read to the end of the topic.
    pub fn modems_in_carrier_state(&self) -> std::collections::HashSet<String> {
        self.read_to_end::<switchyard_schemas::records::CarrierState>("carrier-state")
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.value.modem_id)
            .collect()
    }

    /// Wait until the Grafana projection `topic` holds at least `at_least` distinct
    /// (modem, record timestamp ms) pairs, read to its end, and return them; the error
    /// says how many there were.
    pub fn projected(
        &self,
        topic: &str,
        at_least: usize,
        timeout: Duration,
    ) -> Result<std::collections::HashSet<(String, i64)>> {
        let mut projected = std::collections::HashSet::new();
        wait_for(
            &format!("{at_least} readings projected on {topic}"),
            timeout,
            || {
                projected = self
                    .read_to_end::<switchyard_schemas::records::GrafanaReading>(topic)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|r| Some((r.value.modem_id, r.raw.timestamp_ms?)))
                    .collect();
                projected.len() >= at_least
            },
        )
        .with_context(|| format!("{} of {at_least}", projected.len()))?;
        Ok(projected)
    }

    /// `switchyard-modem`: `fleet` simulated modems from `first_modem` (in-process SIMs, no
    /// keys) sending to `gateway` at `rates` readings/s per sensor (imu,gyro,temp) and a
    /// status report every `status_secs`.
    pub fn start_fleet(
        &self,
        gateway: SocketAddr,
        first_modem: u64,
        fleet: u64,
        rates: &str,
        status_secs: u64,
    ) -> Result<Service> {
        let mut modems = Command::new(workspace_binary("switchyard-modem")?);
        modems.args([
            "--gateway",
            &gateway.to_string(),
            "--fleet",
            &fleet.to_string(),
            "--modem-id",
            &first_modem.to_string(),
            "--rates",
            rates,
            "--status-secs",
            &status_secs.to_string(),
        ]);
        Service::spawn("modems", modems, self.broker.data_dir())
    }

    /// `switchyard-api` on a free port with `token`, ready (its own /health answers 200).
    pub fn start_api(&self, token: &str, env: &[(&str, String)]) -> Result<(Service, SocketAddr)> {
        let listen: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let mut all = vec![
            ("SWITCHYARD_API_LISTEN", listen.to_string()),
            ("SWITCHYARD_API_TOKEN", token.to_string()),
        ];
        all.extend(env.iter().map(|(k, v)| (*k, v.clone())));
        let (mut api, _) = self.start_processor("switchyard-api", "api", &all)?;
        api.wait_until(Duration::from_secs(30), || {
            http_get_status(listen, "/health").ok() == Some(200)
        })?;
        Ok((api, listen))
    }
}

/// Poll `done` every 200 ms until it holds, failing after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, done: impl FnMut() -> bool) -> Result<()> {
    wait_for_every(what, timeout, Duration::from_millis(200), done)
}

/// Poll `done` every `every` until it holds, failing after `timeout` (benchmarks poll
/// finely, since the poll interval is part of what they measure).
pub fn wait_for_every(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
    Ok(())
}

/// vsmartcard's vpcd reader slot the software SIM connects to (pcscd listens there).
pub const VPCD: &str = "127.0.0.1:35963";

/// pcscd, started here unless one is already running (it is one per machine). Dropping the
/// returned service stops the pcscd this started.
///
/// Now and then (twice in some eight clean-clone `make test` runs) a fresh pcscd's vpcd reader
/// failed to listen ("Address already in use") although the port was free a moment before
/// and is reserved from the ephemeral range; the cause is not known. So a start whose reader
/// could not listen is retried, twice, and each failure is printed with the sockets on the
/// port at that moment; the third fails the test with all of it.
pub fn ensure_pcscd(log_dir: &Path) -> Result<Option<Service>> {
    let vpcd: SocketAddr = VPCD.parse()?;
    if TcpStream::connect_timeout(&vpcd, Duration::from_millis(200)).is_ok() {
        return Ok(None);
    }
    let mut failures = Vec::new();
    for attempt in 1..=3 {
        // A socket still bound to the port (such as an earlier pcscd's connection in
        // TIME_WAIT, up to a minute) makes the reader fail to listen: wait until it is free.
        wait_for("vpcd's port to be free", Duration::from_secs(70), || {
            port_is_free(vpcd)
        })?;
        let mut command = Command::new("pcscd");
        command.arg("--foreground");
        let mut service = Service::spawn("pcscd", command, log_dir)
            .context("starting pcscd (make test installs pcscd and vsmartcard-vpcd)")?;
        service.wait_until(Duration::from_secs(20), || {
            TcpStream::connect_timeout(&vpcd, Duration::from_millis(200)).is_ok()
        })?;
        if !service.log_text().contains("Address already in use") {
            return Ok(Some(service));
        }
        let failure = format!(
            "attempt {attempt}: pcscd's reader could not listen on {vpcd}; pcscd's log:\n{}\n\
             sockets on the port then:\n{}",
            service.log_text(),
            sockets_on(vpcd.port())
        );
        eprintln!("{failure}");
        failures.push(failure);
        service.kill();
    }
    bail!(
        "pcscd could not listen on vpcd's port {vpcd} in three starts (it should be reserved: \
         scripts/deps.sh --test writes it to /proc/sys/net/ipv4/ip_local_reserved_ports)\n{}",
        failures.join("\n")
    )
}

/// What `ss` lists on TCP `port` (any state, with the owning processes), for a diagnosis.
fn sockets_on(port: u16) -> String {
    Command::new("ss")
        .args(["-tanp", &format!("sport = :{port} or dport = :{port}")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| format!("(ss failed: {e})"))
}

/// Whether a listener could bind `addr` now, as pcscd's vpcd does (without `SO_REUSEADDR`,
/// which std's `TcpListener` would set).
fn port_is_free(addr: SocketAddr) -> bool {
    socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .and_then(|socket| socket.bind(&addr.into()))
    .is_ok()
}

/// A reading of sensor 1 (imu) as the gateway writes it, received when it was sensed.
pub fn imu_reading(
    modem: &str,
    value: i32,
    at_us: i64,
) -> switchyard_schemas::records::SensorReading {
    switchyard_schemas::records::SensorReading {
        modem_id: modem.into(),
        device_id: 1,
        sensor: "imu".into(),
        timestamp: at_us,
        value: Some(value),
        data: value.to_be_bytes().to_vec(),
        received_at: at_us,
        sequence: None,
    }
}

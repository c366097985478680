//! Switchyard beside Kafka Streams, the reference, on the same broker: the same input topic
//! and partitions, the same guarantee and commit interval, the same work, each in a process
//! of its own. Two kinds of work: (a) pass-through, decoding each Confluent-framed Avro
//! record and encoding it again; (b) grafana-projector's, decoding a SensorReading, dropping
//! its timestamp, encoding a GrafanaReading, record time = sensor time. Kafka Streams' side is
//! `bench/streams` (Java, Processor API, Apache Avro), built here with Maven.
//!
//! A run: the input is filled once; each contestant starts afresh with its group deleted, so
//! it reads the whole input; its rate is from its first output to the moment its group has
//! committed every input record, and its CPU per record is the process's CPU over that span.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::BaseConsumer;
use serde_json::json;
use switchyard_kafka::clients;
use switchyard_schemas::records::{now_us, GrafanaReading};
use switchyard_testkit::{kafka, workspace_binary, Service, Stack};

use crate::idle_bench::cpu_seconds;
use crate::pipeline_bench::{watermark_sum, PASS_INPUT, PASS_OUTPUT};
use crate::Report;

const COMMIT_INTERVAL_MS: u64 = 200;
const MODEMS: usize = 500;

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Work {
    PassThrough,
    Projector,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Guarantee {
    AtLeastOnce,
    ExactlyOnce,
}

impl Guarantee {
    fn switchyard(self) -> &'static str {
        match self {
            Guarantee::AtLeastOnce => "at-least-once",
            Guarantee::ExactlyOnce => "exactly-once",
        }
    }
    fn streams(self) -> &'static str {
        match self {
            Guarantee::AtLeastOnce => "at_least_once",
            Guarantee::ExactlyOnce => "exactly_once_v2",
        }
    }
}

impl Work {
    fn input(self) -> &'static str {
        match self {
            Work::PassThrough => PASS_INPUT,
            Work::Projector => "imu",
        }
    }
    fn output(self, streams: bool) -> &'static str {
        match (self, streams) {
            (Work::PassThrough, false) => PASS_OUTPUT,
            (Work::PassThrough, true) => "bench-out-streams",
            (Work::Projector, false) => "imu-grafana",
            (Work::Projector, true) => "imu-grafana-streams",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Work::PassThrough => "pass-through",
            Work::Projector => "grafana-projector's work",
        }
    }
}

/// The Kafka Streams application: built with Maven; returns the java arguments that run it.
pub(crate) fn streams_app() -> anyhow::Result<Vec<String>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("streams");
    let pom = dir.join("pom.xml");
    let classpath = dir.join("target/classpath.txt");
    let status = Command::new("mvn")
        .args(["-q", "-B", "-Dstyle.color=never", "-f"])
        .arg(&pom)
        .args(["package", "dependency:build-classpath"])
        .arg(format!("-Dmdep.outputFile={}", classpath.display()))
        .status()
        .context("running mvn (make deps installs Maven)")?;
    if !status.success() {
        bail!("mvn could not build {}", pom.display());
    }
    let deps = std::fs::read_to_string(&classpath)?;
    let jar = dir.join("target/switchyard-streams-bench.jar");
    Ok(vec![
        "-Xms1g".into(),
        "-Xmx1g".into(),
        format!(
            "-Dlog4j2.configurationFile={}",
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../broker/log4j2.properties")
                .display()
        ),
        "-cp".into(),
        format!("{}:{}", jar.display(), deps.trim()),
        "dev.switchyard.bench.StreamsBench".into(),
    ])
}

pub(crate) fn schema_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../schemas/avro/{name}"))
}

struct Contestant {
    streams: bool,
    work: Work,
    guarantee: Guarantee,
}

impl Contestant {
    /// Its consumer group in run `run`: a new one each run, so that it reads the whole input
    /// (Kafka Streams does not leave its group on close, so a used group cannot be deleted
    /// until its session expires), except grafana-projector's, which is its name: that one
    /// is deleted before the run.
    fn group(&self, run: usize) -> String {
        match (self.streams, self.work) {
            (true, _) => format!("streams-bench-{:?}-{run}", self.work).to_lowercase(),
            (false, Work::PassThrough) => format!("bench-pass-through-{run}"),
            (false, Work::Projector) => "grafana-projector".into(),
        }
    }

    fn start(&self, stack: &Stack, java: &[String], run: usize) -> anyhow::Result<Service> {
        let dir = stack.broker.data_dir();
        if self.streams {
            let mut command = Command::new("java");
            command.args(java).args([
                format!("bootstrap={}", stack.broker.bootstrap()),
                format!("application-id={}", self.group(run)),
                format!("input={}", self.work.input()),
                format!("output={}", self.work.output(true)),
                format!("guarantee={}", self.guarantee.streams()),
                format!("commit-interval-ms={COMMIT_INTERVAL_MS}"),
            ]);
            match self.work {
                Work::PassThrough => {
                    command.args([
                        "mode=pass".to_string(),
                        format!(
                            "input-schema={}",
                            schema_file("grafana-reading.avsc").display()
                        ),
                    ]);
                }
                Work::Projector => {
                    let (id, _) = stack.schema("imu-grafana")?;
                    command.args([
                        "mode=project".to_string(),
                        format!(
                            "input-schema={}",
                            schema_file("sensor-reading.avsc").display()
                        ),
                        format!(
                            "output-schema={}",
                            schema_file("grafana-reading.avsc").display()
                        ),
                        format!("output-schema-id={id}"),
                    ]);
                }
            }
            return Service::spawn(&format!("streams-{run}"), command, dir);
        }
        let binary = match self.work {
            Work::PassThrough => workspace_binary("switchyard-bench")?,
            Work::Projector => workspace_binary("grafana-projector")?,
        };
        let mut command = Command::new(binary);
        if self.work == Work::PassThrough {
            command.args(["serve-pass-through", "--group", &self.group(run)]);
        }
        // SWITCHYARD_BENCH_RUST_LOG: a contestant's log level when investigating (its log is
        // copied to SWITCHYARD_BENCH_LOG_DIR, if set, when the run ends).
        let log_level =
            std::env::var("SWITCHYARD_BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into());
        command
            .env("RUST_LOG", log_level)
            .env("SWITCHYARD_BOOTSTRAP_SERVERS", stack.broker.bootstrap())
            .env("SWITCHYARD_REGISTRY_URL", stack.registry.url())
            .env(
                "SWITCHYARD_PROCESSING_GUARANTEE",
                self.guarantee.switchyard(),
            )
            .env("SWITCHYARD_INSTANCE_ID", format!("bench-{run}"))
            .env(
                "SWITCHYARD_COMMIT_INTERVAL_MS",
                COMMIT_INTERVAL_MS.to_string(),
            );
        Service::spawn(&format!("switchyard-{run}"), command, dir)
    }
}

/// Run one contestant over the whole input: (records/s, CPU µs per record).
fn measure(
    stack: &Stack,
    java: &[String],
    contestant: &Contestant,
    records: i64,
    run: usize,
) -> anyhow::Result<(f64, f64)> {
    let bootstrap = stack.broker.bootstrap();
    let group = contestant.group(run);
    delete_group(&bootstrap, &group)?;
    let probe: BaseConsumer = clients::admin_config(&bootstrap).create()?;
    let output = contestant.work.output(contestant.streams);
    let base = watermark_sum(&probe, output)?;
    let mut process = contestant.start(stack, java, run)?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let (t0, cpu0) = loop {
        if watermark_sum(&probe, output)? > base {
            break (Instant::now(), cpu_seconds(process.pid())?);
        }
        if !process.is_running() || Instant::now() > deadline {
            bail!("{contestant:?} produced nothing; log:\n{}", tail(&process));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let input = contestant.work.input();
    loop {
        if kafka::committed_total(&bootstrap, &group, &[input])? >= records {
            break;
        }
        if !process.is_running() || Instant::now() > deadline {
            bail!(
                "{contestant:?} did not commit its input; log:\n{}",
                tail(&process)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(process.pid())? - cpu0;
    process.terminate(Duration::from_secs(30))?;
    if let Some(dir) = std::env::var_os("SWITCHYARD_BENCH_LOG_DIR") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join(format!("{contestant:?}-{run}.log")),
            process.log_text(),
        )?;
    }
    Ok((records as f64 / seconds, cpu / records as f64 * 1e6))
}

fn tail(process: &Service) -> String {
    let log = process.log_text();
    log.lines()
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n")
}

impl std::fmt::Debug for Contestant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = if self.streams {
            "Kafka Streams"
        } else {
            "Switchyard"
        };
        write!(f, "{who} {} {:?}", self.work.label(), self.guarantee)
    }
}

/// Delete `group` (its committed offsets), waiting while it still has members; a group
/// that does not exist is fine.
fn delete_group(bootstrap: &str, group: &str) -> anyhow::Result<()> {
    use rdkafka::types::RDKafkaErrorCode;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let admin: AdminClient<DefaultClientContext> = clients::admin_config(bootstrap).create()?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let results = admin.delete_groups(&[group], &AdminOptions::new()).await?;
            match results.into_iter().next() {
                Some(Err((_, RDKafkaErrorCode::NonEmptyGroup))) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Some(Err((_, RDKafkaErrorCode::GroupIdNotFound))) | Some(Ok(_)) | None => {
                    return anyhow::Ok(());
                }
                Some(Err((g, e))) => bail!("cannot delete group {g}: {e}"),
            }
        }
    })
}

fn create_topics(bootstrap: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let admin: AdminClient<DefaultClientContext> = clients::admin_config(bootstrap).create()?;
        let topics = [
            PASS_INPUT,
            PASS_OUTPUT,
            "bench-out-streams",
            "imu-grafana-streams",
        ]
        .map(|t| {
            NewTopic::new(
                t,
                3,
                TopicReplication::Fixed(switchyard_kafka::BROKER_DEFAULT_REPLICATION),
            )
        });
        for result in admin.create_topics(&topics, &AdminOptions::new()).await? {
            result.map_err(|(t, e)| anyhow::anyhow!("{t}: {e}"))?;
        }
        anyhow::Ok(())
    })
}

fn or_all<T: Copy>(chosen: &[T], all: &[T]) -> Vec<T> {
    if chosen.is_empty() { all } else { chosen }.to_vec()
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Run the bench; `works` and `guarantees` select the cases (all of them when empty).
pub fn run(
    records: usize,
    rounds: usize,
    works: &[Work],
    guarantees: &[Guarantee],
) -> anyhow::Result<Report> {
    let java = streams_app()?;
    let stack = Stack::start()?;
    let bootstrap = stack.broker.bootstrap();
    create_topics(&bootstrap)?;
    let t0 = now_us() - 3_600_000_000;
    let readings: Vec<_> = (0..records)
        .map(|i| {
            let modem = format!("{}", 100_000 + i % MODEMS);
            let at = t0 + i as i64 * 10;
            let reading = switchyard_testkit::imu_reading(&modem, (i % 2000) as i32, at);
            (modem, reading, at / 1000)
        })
        .collect();
    stack.produce("imu", &readings)?;
    let projected: Vec<_> = readings
        .iter()
        .map(|(modem, r, t)| {
            let g = GrafanaReading {
                modem_id: modem.clone(),
                device_id: r.device_id,
                value: r.value.unwrap_or_default(),
            };
            (modem.clone(), g, *t)
        })
        .collect();
    crate::pipeline_bench::produce_pass_input(&stack, &projected)?;

    let mut rows = String::new();
    let mut json_rows = Vec::new();
    let mut run = 0;
    let works = or_all(works, &[Work::PassThrough, Work::Projector]);
    let guarantees = or_all(
        guarantees,
        &[Guarantee::AtLeastOnce, Guarantee::ExactlyOnce],
    );
    for &work in &works {
        for &guarantee in &guarantees {
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for round in 1..=rounds {
                for streams in [false, true] {
                    run += 1;
                    let contestant = Contestant {
                        streams,
                        work,
                        guarantee,
                    };
                    let (rate, cpu) = measure(&stack, &java, &contestant, records as i64, run)?;
                    eprintln!("round {round}: {contestant:?}: {rate:.0} records/s, {cpu:.1} µs CPU per record");
                    if streams {
                        theirs.push((rate, cpu))
                    } else {
                        ours.push((rate, cpu))
                    }
                }
            }
            let rate_ratio: Vec<f64> = ours.iter().zip(&theirs).map(|(o, t)| o.0 / t.0).collect();
            let cpu_ratio: Vec<f64> = ours.iter().zip(&theirs).map(|(o, t)| o.1 / t.1).collect();
            let faster_every_round = rate_ratio.iter().all(|r| *r >= 1.0);
            let cheaper_every_round = cpu_ratio.iter().all(|r| *r <= 1.0);
            let list = |v: &[(f64, f64)], f: &dyn Fn(&(f64, f64)) -> String| {
                v.iter().map(f).collect::<Vec<_>>().join(", ")
            };
            let rates = |v: &[(f64, f64)]| list(v, &|x| format!("{:.0}", x.0));
            let cpus = |v: &[(f64, f64)]| list(v, &|x| format!("{:.1}", x.1));
            let verdict = if faster_every_round && cheaper_every_round {
                "meets"
            } else {
                "misses"
            };
            rows.push_str(&format!(
                "| {} | {guarantee:?} | {} ({}) | {} ({}) | {} ({}) | {} ({}) | {verdict} |\n",
                work.label(),
                format_args!(
                    "{:.0}",
                    median(&ours.iter().map(|x| x.0).collect::<Vec<_>>())
                ),
                rates(&ours),
                format_args!(
                    "{:.0}",
                    median(&theirs.iter().map(|x| x.0).collect::<Vec<_>>())
                ),
                rates(&theirs),
                format_args!(
                    "{:.1}",
                    median(&ours.iter().map(|x| x.1).collect::<Vec<_>>())
                ),
                cpus(&ours),
                format_args!(
                    "{:.1}",
                    median(&theirs.iter().map(|x| x.1).collect::<Vec<_>>())
                ),
                cpus(&theirs),
            ));
            json_rows.push(json!({
                "work": work.label(), "guarantee": format!("{guarantee:?}"),
                "switchyard_records_per_second": ours.iter().map(|x| x.0).collect::<Vec<_>>(),
                "streams_records_per_second": theirs.iter().map(|x| x.0).collect::<Vec<_>>(),
                "switchyard_cpu_us_per_record": ours.iter().map(|x| x.1).collect::<Vec<_>>(),
                "streams_cpu_us_per_record": theirs.iter().map(|x| x.1).collect::<Vec<_>>(),
                "verdict": verdict,
            }));
        }
    }
    Ok(Report {
        name: "streams",
        markdown: format!(
            "## Switchyard beside Kafka Streams {}\n\n\
             One broker; the input ({records} records over {MODEMS} keys, three partitions) is written once, and each run reads all of it with its group deleted first: Switchyard (a pass-through processor in `switchyard-bench serve-pass-through`, or the grafana-projector binary, release builds) and Kafka Streams (`bench/streams`, Processor API, Apache Avro; 1 GiB heap) alternate, {rounds} rounds each, at the same guarantee and a {COMMIT_INTERVAL_MS} ms commit interval. A rate is from the first output to the moment the group has committed every input; CPU is the process's over that span, per record. Target: Switchyard ≥ Kafka Streams on records/s and ≤ on CPU per record in every round.\n\n\
             | work | guarantee | Switchyard records/s, median (by round) | Kafka Streams records/s | Switchyard CPU µs/record | Kafka Streams CPU µs/record | every round |\n|---|---|---|---|---|---|---|\n{rows}",
            switchyard_testkit::kafka_version(),
        ),
        json: json!({ "records": records, "rounds": rounds, "commit_interval_ms": COMMIT_INTERVAL_MS, "runs": json_rows }),
    })
}

//! Whole-system figures on the release binaries, each from real processes on one broker:
//!
//! * `processor`: grafana-projector (the binary) vs a raw rdkafka consume→produce loop over
//!   the same pre-filled `imu` topic.
//! * `latency`: sensor sample → `imu-grafana` at a fixed offered load from a modem fleet.
//! * `roundtrip`: carrier switch, API request → ACK visible in the API, with 1 and 1,000 modems.
//! * `memory`: gateway RSS with 100k modems in its address book; anomaly-detector RSS with
//!   100k devices in its state.
//! * `scale`: time and RSS of the gateway and the detector as the fleet grows 10 → 10k.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard_kafka::clients;
use switchyard_schemas::records::now_us;

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use switchyard_protocol::{IotData, IotStatus, Packet};
use switchyard_schemas::records::SensorReading;
use switchyard_testkit::{http_get_text, metric_sum, workspace_binary, Service, Stack};

use crate::gateway_bench::{gateway_counts, send_paced, settle};
use crate::keyed_fleet::KeyedFleet;
use crate::pipeline_bench::watermark_sum;
use crate::Report;

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Poll `done` every 20 ms: round trips are timed with it.
fn wait(what: &str, timeout: Duration, done: impl FnMut() -> bool) -> anyhow::Result<()> {
    switchyard_testkit::wait_for_every(what, timeout, Duration::from_millis(20), done)
}

fn readings(count: usize, modems: usize, base_us: i64) -> Vec<(String, SensorReading, i64)> {
    (0..count)
        .map(|i| {
            let modem = format!("{}", 100_000 + i % modems.max(1));
            let at = base_us + i as i64 * 10;
            let value = (i % 2000) as i32 - 1000;
            let reading = switchyard_testkit::imu_reading(&modem, value, at);
            (modem, reading, at / 1000)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// processor

/// From the first output record to the last: (records, seconds).
fn time_output(bootstrap: &str, topic: &str, base: i64, records: i64) -> anyhow::Result<f64> {
    let probe: BaseConsumer = clients::admin_config(bootstrap).create()?;
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let n = watermark_sum(&probe, topic)? - base;
        if n > 0 && first.is_none() {
            first = Some((Instant::now(), n));
        }
        if n >= records {
            let (t0, n0) = first.context("no output")?;
            return Ok((records - n0) as f64 / t0.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            bail!("{topic}: {n} of {records}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The raw baseline: consume `imu` (resuming its group), produce the same bytes to
/// `imu-raw-copy`, commit after acks; stops after `records`.
fn raw_copy(bootstrap: &str, records: usize) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(crate::pipeline_bench::raw_loop(
        bootstrap.to_string(),
        "bench-raw-copy".into(),
        ("imu", "imu-raw-copy"),
        records,
        Default::default(),
        // grafana-projector declares its outputs stand alone and lingers 0: the same settings.
        crate::pipeline_bench::RawProducer::Unordered,
    ))
}

/// grafana-projector against the raw loop, `rounds` times alternating on one broker: each
/// round appends `records` readings to `imu`, the raw loop copies them, then the projector
/// (started afresh, resuming its group; stopped with SIGTERM so it commits) projects them.
pub fn processor(records: usize, rounds: usize) -> anyhow::Result<Report> {
    let stack = Stack::start()?;
    let bootstrap = stack.broker.bootstrap();
    let admin_runtime = tokio::runtime::Runtime::new()?;
    admin_runtime.block_on(async {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            clients::admin_config(&bootstrap).create()?;
        for r in admin
            .create_topics(
                &[NewTopic::new("imu-raw-copy", 3, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await?
        {
            r.map_err(|(t, e)| anyhow::anyhow!("{t}: {e}"))?;
        }
        anyhow::Ok(())
    })?;
    let probe: BaseConsumer = clients::admin_config(&bootstrap).create()?;
    let (mut raw_rates, mut projector_rates, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    let mut cpu_us_per_record = Vec::new();
    // Where the machine's two cores go: the raw loop's (this process's, while only it and the
    // 10 ms watermark probe run) and the broker's during each side's part of the round.
    let (mut raw_cpu_us, mut broker_raw_us, mut broker_projector_us) =
        (Vec::new(), Vec::new(), Vec::new());
    let per_record = |before: f64, after: f64| (after - before) / records as f64 * 1e6;
    let broker_pid = stack.broker.pid();
    let cpu = crate::idle_bench::cpu_seconds;
    for round in 1..=rounds {
        eprintln!("round {round}: producing {records} readings to imu");
        stack.produce("imu", &readings(records, 500, now_us()))?;

        let base = watermark_sum(&probe, "imu-raw-copy")?;
        let raw_bootstrap = bootstrap.clone();
        let (own_before, broker_before) = (cpu(std::process::id())?, cpu(broker_pid)?);
        let raw = std::thread::spawn(move || raw_copy(&raw_bootstrap, records));
        let raw_rate = time_output(&bootstrap, "imu-raw-copy", base, records as i64)?;
        raw.join()
            .map_err(|_| anyhow::anyhow!("raw loop panicked"))??;
        raw_cpu_us.push(per_record(own_before, cpu(std::process::id())?));
        broker_raw_us.push(per_record(broker_before, cpu(broker_pid)?));
        eprintln!("round {round}: raw consume→produce {raw_rate:.0} records/s");

        let base = watermark_sum(&probe, "imu-grafana")?;
        let broker_before = cpu(broker_pid)?;
        let (mut projector, _) =
            stack.start_processor("grafana-projector", "bench-projector", &[])?;
        let projector_rate = time_output(&bootstrap, "imu-grafana", base, records as i64)?;
        broker_projector_us.push(per_record(broker_before, cpu(broker_pid)?));
        rss.push(rss_mib(projector.pid()));
        // All its CPU since it started (start-up included: a few ms), per record.
        cpu_us_per_record.push(per_record(0.0, cpu(projector.pid())?));
        projector.terminate(Duration::from_secs(30))?;
        eprintln!("round {round}: grafana-projector {projector_rate:.0} records/s");
        raw_rates.push(raw_rate);
        projector_rates.push(projector_rate);
    }
    let ratios: Vec<f64> = projector_rates
        .iter()
        .zip(&raw_rates)
        .map(|(p, r)| p / r)
        .collect();
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let ratio = median(&ratios);
    let verdict = if ratio >= 0.90 { "meets" } else { "misses" };
    let list = |v: &[f64], f: &dyn Fn(f64) -> String| {
        v.iter().map(|x| f(*x)).collect::<Vec<_>>().join(", ")
    };
    let rate = |x: f64| format!("{x:.0}");
    let percent = |x: f64| format!("{:.0}%", x * 100.0);
    let one_decimal = |x: f64| format!("{x:.1}");
    let max_rss = rss.iter().copied().fold(0.0, f64::max);
    Ok(Report {
        name: "processor",
        markdown: format!(
            "## Processor: grafana-projector vs raw rdkafka consume→produce\n\n\
             {rounds} rounds on one broker; each appends {records} readings to `imu` (500 modems), then the raw loop copies them as bytes to another topic with the same guarantees as the projector's (acks=all, commit after acks; not idempotent, as the projector declares its outputs stand alone; sent at once, linger 0, as its topology says), then grafana-projector (the release binary, started afresh and resuming its group) decodes each reading, drops the timestamp, re-encodes it with the `-grafana` schema and sets the record time. Each rate is from the first output record to the last.\n\n\
             | | records/s (median) | by round |\n|---|---|---|\n\
             | raw rdkafka consume→produce | {} | {} |\n\
             | grafana-projector (RSS up to {max_rss:.0} MiB) | {} | {} |\n\
             | **projector / raw** | **{}** | {} (target ≥ 90%: {verdict}) |\n\
             | grafana-projector's CPU per record (µs, start-up included) | {:.1} | {} |\n\
             | the raw loop's CPU per record (µs: the bench process while it runs) | {:.1} | {} |\n\
             | the broker's CPU per record while the raw loop runs (µs) | {:.1} | {} |\n\
             | the broker's CPU per record while grafana-projector runs (µs) | {:.1} | {} |\n\n\
             The broker and the side being measured share the two cores.\n",
            rate(median(&raw_rates)),
            list(&raw_rates, &rate),
            rate(median(&projector_rates)),
            list(&projector_rates, &rate),
            percent(ratio),
            list(&ratios, &percent),
            median(&cpu_us_per_record),
            list(&cpu_us_per_record, &one_decimal),
            median(&raw_cpu_us),
            list(&raw_cpu_us, &one_decimal),
            median(&broker_raw_us),
            list(&broker_raw_us, &one_decimal),
            median(&broker_projector_us),
            list(&broker_projector_us, &one_decimal),
        ),
        json: json!({ "records_per_round": records, "rounds": rounds,
                      "raw_records_per_second": raw_rates,
                      "projector_records_per_second": projector_rates,
                      "ratios_by_round": ratios, "ratio": ratio, "target_ratio": 0.90,
                      "projector_rss_mib": rss,
                      "projector_cpu_us_per_record": cpu_us_per_record,
                      "raw_cpu_us_per_record": raw_cpu_us,
                      "broker_cpu_us_per_record_raw": broker_raw_us,
                      "broker_cpu_us_per_record_projector": broker_projector_us }),
    })
}

// ---------------------------------------------------------------------------------------
// latency

/// What turns `imu` into `imu-grafana` in a latency run.
#[derive(Debug, Clone, Copy)]
enum Projector {
    /// The grafana-projector binary, as `make up` runs it.
    Switchyard,
    /// The Kafka Streams application doing the same work (bench/streams), with its own
    /// producer linger or the one given.
    KafkaStreams { linger_ms: Option<u64> },
}

impl Projector {
    fn label(self) -> String {
        match self {
            Projector::Switchyard => "grafana-projector".into(),
            Projector::KafkaStreams { linger_ms: None } => "Kafka Streams (its defaults)".into(),
            Projector::KafkaStreams {
                linger_ms: Some(ms),
            } => format!("Kafka Streams (linger.ms={ms})"),
        }
    }

    fn start(self, stack: &Stack, java: Option<&[String]>) -> anyhow::Result<Service> {
        let Projector::KafkaStreams { linger_ms } = self else {
            let (projector, _) = stack.start_processor(
                "grafana-projector",
                "bench-projector",
                &[("RUST_LOG", "warn".into())],
            )?;
            return Ok(projector);
        };
        let java = java.context("the Kafka Streams application is not built")?;
        let (id, _) = stack.schema("imu-grafana")?;
        let mut command = std::process::Command::new("java");
        command.args(java).args([
            format!("bootstrap={}", stack.broker.bootstrap()),
            "application-id=streams-latency".into(),
            "input=imu".into(),
            "output=imu-grafana".into(),
            "guarantee=at_least_once".into(),
            // The runner's default commit interval.
            "commit-interval-ms=200".into(),
            "mode=project".into(),
            format!(
                "input-schema={}",
                crate::streams_bench::schema_file("sensor-reading.avsc").display()
            ),
            format!(
                "output-schema={}",
                crate::streams_bench::schema_file("grafana-reading.avsc").display()
            ),
            format!("output-schema-id={id}"),
        ]);
        if let Some(ms) = linger_ms {
            command.arg(format!("linger-ms={ms}"));
        }
        Service::spawn("bench-streams-projector", command, stack.broker.data_dir())
    }
}

/// The first seconds of a run are not measured: the JVM's start and JIT, group joins.
const LATENCY_WARM_UP: Duration = Duration::from_secs(15);

/// One latency run's figures: (records, p50, p99, p99.9) in ms for sensor -> `imu`,
/// sensor -> `imu-grafana` and the projector's hop.
struct LatencyRun {
    projector: Projector,
    offered: f64,
    raw: (usize, f64, f64, f64),
    projected: (usize, f64, f64, f64),
    hop: (usize, f64, f64, f64),
    /// Each process's CPU over the measured window, % of one core (the machine has 200).
    cpu: Vec<(&'static str, f64)>,
}

fn latency_run(
    modems: u64,
    rate_per_modem: f64,
    seconds: u64,
    projector_kind: Projector,
    java: Option<&[String]>,
) -> anyhow::Result<LatencyRun> {
    let stack = Stack::start()?;
    let bootstrap = stack.broker.bootstrap();
    // As `make up` runs them: each modem with its key, the gateway checking every packet.
    let keys = KeyedFleet::new(SIMULATOR_FIRST_MODEM, modems, stack.broker.data_dir())?;
    let gateway = stack.start_gateway(&[("RUST_LOG", "warn".into()), keys.keys_env()])?;
    let udp = gateway.udp;
    let projector = projector_kind.start(&stack, java)?;
    let mut fleet = std::process::Command::new(workspace_binary("switchyard-modem")?);
    fleet
        .env("RUST_LOG", "warn")
        .envs(simulator_keys(&stack, &keys))
        .args([
            "--gateway",
            &udp.to_string(),
            "--modem-id",
            &SIMULATOR_FIRST_MODEM.to_string(),
            "--fleet",
            &modems.to_string(),
            "--rates",
            &format!("{rate_per_modem},0,0"),
            "--status-secs",
            "60",
            "--duration-secs",
            &(LATENCY_WARM_UP.as_secs() + seconds + 5).to_string(),
        ]);
    let fleet = Service::spawn("bench-fleet", fleet, stack.broker.data_dir())?;
    let processes = [
        ("kafka", stack.broker.pid()),
        ("gateway", gateway.service.pid()),
        ("projector", projector.pid()),
        ("modem fleet", fleet.pid()),
        ("bench probe", std::process::id()),
    ];

    // Read `imu` and `imu-grafana` as they are written, in one consumer: latency = arrival at
    // this consumer - sensor time (in the reading on `imu`; the record time on
    // `imu-grafana`). The projector's own hop is, per reading, its arrival on `imu-grafana`
    // minus its arrival on `imu` (matched by modem and sensor time), after the warm-up.
    let (imu_id, imu_schema) = stack.schema("imu")?;
    let imu_schemas = std::collections::HashMap::from([(imu_id, imu_schema)]);
    let consumer: BaseConsumer = clients::consumer_config(&bootstrap)
        .set("group.id", "bench-latency")
        .set("fetch.wait.max.ms", probe_fetch_wait_ms().to_string())
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset("imu", p, Offset::End)?;
        tpl.add_partition_offset("imu-grafana", p, Offset::End)?;
    }
    consumer.assign(&tpl)?;
    let warm_until = Instant::now() + LATENCY_WARM_UP;
    let end = warm_until + Duration::from_secs(seconds);
    let mut projected = Vec::new();
    let mut raw = Vec::new();
    let mut arrived_raw: std::collections::HashMap<(Vec<u8>, i64), i64> = Default::default();
    let mut hops = Vec::new();
    let mut cpu_at_warm: Option<Vec<f64>> = None;
    while Instant::now() < end {
        if cpu_at_warm.is_none() && Instant::now() >= warm_until {
            cpu_at_warm = Some(cpu_of(&processes)?);
        }
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let now_ms = now_us() / 1000;
        let key = m.key().unwrap_or_default().to_vec();
        if m.topic() == "imu" {
            let reading = switchyard_schemas::wire::decode_with(
                &imu_schemas,
                m.payload().unwrap_or_default(),
            )
            .and_then(|v| switchyard_schemas::wire::from_value::<SensorReading>(&v));
            if let Ok(reading) = reading {
                let sensor_ms = reading.timestamp / 1000;
                arrived_raw.insert((key, sensor_ms), now_ms);
                if Instant::now() >= warm_until {
                    raw.push((now_ms - sensor_ms) as f64);
                }
            }
        } else if let Some(sensor_ms) = m.timestamp().to_millis() {
            if let Some(at) = arrived_raw.remove(&(key, sensor_ms)) {
                if Instant::now() >= warm_until {
                    hops.push((now_ms - at) as f64);
                }
            }
            if Instant::now() >= warm_until {
                projected.push((now_ms - sensor_ms) as f64);
            }
        }
    }
    let window = Instant::now() - warm_until;
    let cpu = cpu_of(&processes)?
        .iter()
        .zip(cpu_at_warm.unwrap_or_default())
        .zip(processes)
        .map(|((end, start), (name, _))| (name, (end - start) / window.as_secs_f64() * 100.0))
        .collect();
    let row = |samples: &mut Vec<f64>| {
        samples.sort_by(|a, b| a.total_cmp(b));
        (
            samples.len(),
            percentile(samples, 0.5),
            percentile(samples, 0.99),
            percentile(samples, 0.999),
        )
    };
    let run = LatencyRun {
        projector: projector_kind,
        offered: modems as f64 * rate_per_modem,
        raw: row(&mut raw),
        projected: row(&mut projected),
        hop: row(&mut hops),
        cpu,
    };
    eprintln!(
        "latency at {}/s, {}: imu p50 {} p99 {}; imu-grafana p50 {} p99 {}; projector hop p50 {} p99 {} ({} matched)",
        run.offered, projector_kind.label(), run.raw.1, run.raw.2, run.projected.1, run.projected.2, run.hop.1, run.hop.2, run.hop.0
    );
    Ok(run)
}

/// CPU seconds used so far by each process.
fn cpu_of(processes: &[(&str, u32)]) -> anyhow::Result<Vec<f64>> {
    processes
        .iter()
        .map(|(_, pid)| crate::idle_bench::cpu_seconds(*pid))
        .collect()
}

/// Sensor -> `imu` -> `imu-grafana` latency at each offered rate (readings/s per modem), each
/// on a fresh stack, so the table shows where the chain saturates; at 5,000 readings/s also
/// with Kafka Streams doing the projector's work, as it comes and with linger.ms=0.
pub fn latency(modems: u64, rates_per_modem: &[f64], seconds: u64) -> anyhow::Result<Report> {
    let is_target = |offered: f64| (offered - 5000.0).abs() < 1.0;
    let java = rates_per_modem
        .iter()
        .any(|r| is_target(r * modems as f64))
        .then(crate::streams_bench::streams_app)
        .transpose()?;
    let mut runs = Vec::new();
    for rate in rates_per_modem {
        let mut projectors = vec![Projector::Switchyard];
        if is_target(rate * modems as f64) {
            projectors.push(Projector::KafkaStreams { linger_ms: None });
            projectors.push(Projector::KafkaStreams { linger_ms: Some(0) });
        }
        for projector in projectors {
            runs.push(latency_run(
                modems,
                *rate,
                seconds,
                projector,
                java.as_deref(),
            )?);
        }
    }
    let fetch_wait = switchyard_kafka::FETCH_WAIT_MS;
    let probe_wait = probe_fetch_wait_ms();
    let mut table = String::from(
        "| readings/s offered | projector | path | records | p50 ms | p99 ms | p99.9 ms |\n|---|---|---|---|---|---|---|\n",
    );
    let mut json_runs = Vec::new();
    for run in &runs {
        for (path, (n, p50, p99, p999)) in [
            ("sensor → `imu` (gateway)", run.raw),
            ("sensor → `imu-grafana`", run.projected),
            ("projector hop (`imu` → `imu-grafana`)", run.hop),
        ] {
            table.push_str(&format!(
                "| {:.0} | {} | {path} | {n} | {p50:.0} | {p99:.0} | {p999:.0} |\n",
                run.offered,
                run.projector.label()
            ));
        }
        json_runs.push(json!({
            "offered_per_second": run.offered,
            "projector": run.projector.label(),
            "imu": {"records": run.raw.0, "p50_ms": run.raw.1, "p99_ms": run.raw.2, "p999_ms": run.raw.3},
            "imu_grafana": {"records": run.projected.0, "p50_ms": run.projected.1, "p99_ms": run.projected.2, "p999_ms": run.projected.3},
            "hop": {"records": run.hop.0, "p50_ms": run.hop.1, "p99_ms": run.hop.2, "p999_ms": run.hop.3},
            "cpu_percent_of_one_core": run.cpu.iter().map(|(n, c)| (n.to_string(), json!(c))).collect::<serde_json::Map<_, _>>(),
        }));
    }
    let at_target = |want: fn(Projector) -> bool| {
        runs.iter()
            .find(|r| is_target(r.offered) && want(r.projector))
    };
    // The targets: at 5,000 readings/s the projector's hop adds at most 10 ms at
    // p99, and the end-to-end p99 is at most Kafka Streams'.
    let ours = at_target(|p| matches!(p, Projector::Switchyard));
    let mut verdict = match ours {
        Some(run) => {
            let p99 = run.hop.2;
            if p99 <= 10.0 {
                format!("Target: at 5000 readings/s the projector's hop adds ≤ 10 ms at p99: {p99:.0} ms, meets.")
            } else {
                format!(
                    "Target: at 5000 readings/s the projector's hop adds ≤ 10 ms at p99: {p99:.0} ms, misses by {:.0} ms.",
                    p99 - 10.0
                )
            }
        }
        None => "Target (the projector's hop ≤ 10 ms at p99 at 5000 readings/s): not measured in this run.".into(),
    };
    for theirs in [
        at_target(|p| matches!(p, Projector::KafkaStreams { linger_ms: None })),
        at_target(|p| matches!(p, Projector::KafkaStreams { linger_ms: Some(_) })),
    ] {
        if let (Some(ours), Some(theirs)) = (ours, theirs) {
            let (a, b) = (ours.projected.2, theirs.projected.2);
            verdict.push_str(&format!(
                "\nTarget: sensor → `imu-grafana` p99 at 5000 readings/s ≤ {}'s: {a:.0} ms beside {b:.0} ms (hop {:.0} beside {:.0}), {}.",
                theirs.projector.label(),
                ours.hop.2,
                theirs.hop.2,
                if a <= b { "meets" } else { "misses" }
            ));
        }
    }
    let mut cpu_table = String::from("| readings/s offered | projector |");
    for (name, _) in runs.first().map(|r| r.cpu.as_slice()).unwrap_or_default() {
        cpu_table.push_str(&format!(" {name} |"));
    }
    cpu_table.push_str(" all |\n|---|---|");
    for _ in 0..=runs.first().map_or(0, |r| r.cpu.len()) {
        cpu_table.push_str("---|");
    }
    cpu_table.push('\n');
    for run in &runs {
        cpu_table.push_str(&format!(
            "| {:.0} | {} |",
            run.offered,
            run.projector.label()
        ));
        for (_, c) in &run.cpu {
            cpu_table.push_str(&format!(" {c:.0}% |"));
        }
        let all: f64 = run.cpu.iter().map(|(_, c)| c).sum();
        cpu_table.push_str(&format!(" {all:.0}% |\n"));
    }
    let warm = LATENCY_WARM_UP.as_secs();
    Ok(Report {
        name: "latency",
        markdown: format!(
            "## End-to-end latency: sensor sample → `imu` → `imu-grafana`\n\n\
             {modems} simulated modems (in-process SIMs, one UDP socket each, each signing with its own key: the gateway in its default configuration) at each offered rate, through the gateway, `imu`, the projector and `imu-grafana` (three partitions each, the catalog's), measured for {seconds} s after a {warm} s warm-up by one probe consumer of both topics (fetch wait {probe_wait} ms): arrival at the probe minus sensor time (millisecond resolution). The projector's hop is, per reading, its arrival on `imu-grafana` minus its arrival on `imu` (grafana-projector's fetch wait is {fetch_wait} ms, which bounds only an idle fetch: the broker answers as soon as records arrive). At 5,000 readings/s the projector is also Kafka Streams 4.4.0 doing the same work (bench/streams, at least once, 200 ms commits like the runner's), as it comes and with its producer's linger.ms at 0 as grafana-projector's. Each run on a fresh stack.\n\n{table}\n{verdict}\n\n\
             Where the CPU went over the measured window, % of one core (the machine has two: 200% is all of it):\n\n{cpu_table}"
        ),
        json: json!({ "modems": modems, "probe_fetch_wait_ms": probe_wait, "warm_up_s": warm, "runs": json_runs }),
    })
}

// ---------------------------------------------------------------------------------------
// roundtrip

fn api(
    runtime: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    addr: SocketAddr,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    runtime.block_on(async {
        let mut request = client
            .request(method, format!("http://{addr}{path}"))
            .bearer_auth(token);
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    })
}

/// When each request was first seen `acked` on the API's event stream (`GET /events`, what
/// the operators' page follows), until the stream ends.
async fn follow_acks(
    client: reqwest::Client,
    addr: SocketAddr,
    token: &'static str,
    seen: Arc<Mutex<HashMap<String, Instant>>>,
) -> anyhow::Result<()> {
    let mut response = client
        .get(format!("http://{addr}/events"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?;
    let mut buffer = String::new();
    while let Some(chunk) = response.chunk().await? {
        let now = Instant::now();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            for data in event.lines().filter_map(|l| l.strip_prefix("data:")) {
                let Ok(value) = serde_json::from_str::<Value>(data.trim()) else {
                    continue;
                };
                let views = match value {
                    Value::Array(views) => views,
                    view => vec![view],
                };
                let mut seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                for request in views.iter().flat_map(|v| {
                    v["requests"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .chain(v.get("pending"))
                }) {
                    if let (Some(id), Some("acked")) =
                        (request["request_id"].as_str(), request["state"].as_str())
                    {
                        seen.entry(id.to_string()).or_insert(now);
                    }
                }
            }
        }
    }
    Ok(())
}

/// How often the round-trip bench asks `GET /requests/{id}`.
const REQUEST_POLL: Duration = Duration::from_millis(5);

/// Round trips in ms: (seen by `GET /requests/{id}` every [`REQUEST_POLL`], seen on `/events`).
fn roundtrips(fleet: u64, switches: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    const TOKEN: &str = "bench-token-0123456789abcdef";
    let stack = Stack::start()?;
    let quiet = ("RUST_LOG", "warn".to_string());
    let keys = KeyedFleet::new(800_000, fleet, stack.broker.data_dir())?;
    let gateway = stack.start_gateway(&[
        ("SWITCHYARD_RETRY_INITIAL_MS", "500".into()),
        quiet.clone(),
        keys.keys_env(),
    ])?;
    let udp = gateway.udp;
    // As `make up` runs it (its topology sends outputs at once: linger 0).
    let (_state, _) = stack.start_processor(
        "carrier-state",
        "bench-carrier-state",
        std::slice::from_ref(&quiet),
    )?;
    let (_api, listen) = stack.start_api(TOKEN, &[quiet])?;
    let mut modems = std::process::Command::new(workspace_binary("switchyard-modem")?);
    modems
        .env("RUST_LOG", "warn")
        .envs(simulator_keys(&stack, &keys))
        .args([
            "--gateway",
            &udp.to_string(),
            "--fleet",
            &fleet.to_string(),
            "--modem-id",
            "800000",
            "--rates",
            "0,0,0",
            "--status-secs",
            "20",
        ]);
    let _modems = Service::spawn("bench-modems", modems, stack.broker.data_dir())?;
    let runtime = tokio::runtime::Runtime::new()?;
    let client = reqwest::Client::new();
    wait("every modem in the API", Duration::from_secs(180), || {
        api(
            &runtime,
            &client,
            listen,
            TOKEN,
            reqwest::Method::GET,
            "/modems",
            None,
        )
        .ok()
        .and_then(|(_, v)| v.as_array().map(Vec::len))
            == Some(fleet as usize)
    })?;
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let events = runtime.spawn(follow_acks(client.clone(), listen, TOKEN, seen.clone()));
    let carriers = ["verizon", "t-mobile", "at&t"];
    let mut samples = Vec::new();
    let mut on_events = Vec::new();
    for i in 0..switches {
        let modem = 800_000 + (i as u64 * 7919) % fleet;
        let t0 = Instant::now();
        let (status, accepted) = api(
            &runtime,
            &client,
            listen,
            TOKEN,
            reqwest::Method::POST,
            &format!("/modems/{modem}/carrier"),
            Some(json!({ "carrier": carriers[i % 3] })),
        )?;
        if status != 202 {
            bail!("switch refused: {status} {accepted}");
        }
        let id = accepted["request_id"].as_str().context("id")?.to_string();
        let mut state = String::new();
        // Every 5 ms: the poll's own share of the round trip is at most that.
        switchyard_testkit::wait_for_every(
            "the ACK in the API",
            Duration::from_secs(60),
            REQUEST_POLL,
            || {
                state = api(
                    &runtime,
                    &client,
                    listen,
                    TOKEN,
                    reqwest::Method::GET,
                    &format!("/requests/{id}"),
                    None,
                )
                .ok()
                .and_then(|(_, v)| v["state"].as_str().map(str::to_string))
                .unwrap_or_default();
                state != "requested" && state != "sent" && !state.is_empty()
            },
        )?;
        if state != "acked" {
            bail!("switch {id} ended {state}");
        }
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
        let mut at = None;
        wait("the ACK on /events", Duration::from_secs(5), || {
            at = seen.lock().ok().and_then(|s| s.get(&id).copied());
            at.is_some()
        })?;
        if let Some(at) = at {
            on_events.push(at.duration_since(t0).as_secs_f64() * 1000.0);
        }
    }
    events.abort();
    samples.sort_by(|a, b| a.total_cmp(b));
    on_events.sort_by(|a, b| a.total_cmp(b));
    Ok((samples, on_events))
}

pub fn roundtrip(switches: usize) -> anyhow::Result<Report> {
    let mut rows = String::new();
    let mut json_rows = Vec::new();
    let mut worst_p99: f64 = 0.0;
    for fleet in [1u64, 1000] {
        let (polled, pushed) = roundtrips(fleet, switches)?;
        let (p50, p99) = (percentile(&polled, 0.5), percentile(&polled, 0.99));
        let (e50, e99) = (percentile(&pushed, 0.5), percentile(&pushed, 0.99));
        eprintln!("round trip with {fleet} modems: GET p50 {p50:.0} p99 {p99:.0} ms, events p50 {e50:.0} p99 {e99:.0} ms");
        rows.push_str(&format!(
            "| {fleet} | {switches} | {e50:.0} | {e99:.0} | {p50:.0} | {p99:.0} |\n"
        ));
        worst_p99 = worst_p99.max(p99).max(e99);
        json_rows.push(json!({ "modems": fleet, "switches": switches, "events_p50_ms": e50, "events_p99_ms": e99, "get_p50_ms": p50, "get_p99_ms": p99 }));
    }
    Ok(Report {
        name: "roundtrip",
        markdown: format!(
            "## Carrier switch round trip: API request → ACK visible in the API\n\n\
             One switch at a time through `POST /modems/{{id}}/carrier` until the request is `acked`, seen two ways at once: on the API's event stream (`GET /events`, which the operators' page follows) and by `GET /requests/{{id}}` every 5 ms (which adds up to 5 ms of its own; every 20 ms in the runs up to 7b29009). The request goes to `downstream-request`, the gateway sends the Perform over UDP, the modem hands it to its SIM (ENVELOPE, RECEIVE DATA), the ACK comes back to `carrier-switch-ack`, carrier-state (linger 0, as `make up` runs it) folds it into `carrier-state`, the API reads it; every consumer's fetch wait is 20 ms. Modems are in-process SIMs, each signing with its own key (the gateway in its default configuration), reporting status every 20 s.\n\n\
             | modems | switches | events p50 ms | events p99 ms | GET p50 ms | GET p99 ms |\n|---|---|---|---|---|---|\n{rows}\n\
             Target: p99 ≤ 50 ms at 1 and at 1000 modems, seen either way: worst p99 {worst_p99:.0} ms, {}.\n",
            if worst_p99 <= 50.0 { "meets".to_string() } else { format!("misses by {:.0} ms", worst_p99 - 50.0) }
        ),
        json: json!(json_rows),
    })
}

// ---------------------------------------------------------------------------------------
// memory and scale

/// The first modem id of the latency bench's simulated fleet (the simulator's default).
const SIMULATOR_FIRST_MODEM: u64 = 356_938_035_643_809;

/// The simulator's settings for signing with `keys`: its SIMs' counters kept in the bench's
/// scratch folder.
fn simulator_keys(stack: &Stack, keys: &KeyedFleet) -> [(&'static str, String); 2] {
    [
        keys.keys_env(),
        (
            "SWITCHYARD_SIM_MEMORY",
            stack.broker.data_dir().join("sims").display().to_string(),
        ),
    ]
}

/// The modem ids of the memory and scale benches' fleets.
const FIRST_MODEM: u64 = 1_000_000;

/// A fresh gateway logging warnings only, once settled: it, its UDP and metrics addresses,
/// and its idle RSS (MiB). With `fleet`, in its default configuration (the fleet's keys);
/// without, `--insecure` (the baseline that holds no keys).
fn quiet_gateway(
    stack: &Stack,
    fleet: Option<&KeyedFleet>,
) -> anyhow::Result<(switchyard_testkit::Service, SocketAddr, SocketAddr, f64)> {
    let mut env = vec![("RUST_LOG", "warn".to_string())];
    env.extend(fleet.map(KeyedFleet::keys_env));
    let switchyard_testkit::Gateway {
        service,
        udp,
        metrics,
    } = stack.start_gateway(&env)?;
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss_mib(service.pid());
    Ok((service, udp, metrics, idle))
}

/// A fresh gateway with the fleet's keys fed 10 signed readings from each of the fleet's first
/// `modems`: (seconds to all acked, RSS after).
fn gateway_with(stack: &Stack, fleet: &mut KeyedFleet, modems: u64) -> anyhow::Result<(f64, f64)> {
    let (mut gateway, udp, metrics, _) = quiet_gateway(stack, Some(fleet))?;
    let mut packets = Vec::new();
    for value in 0..10 {
        for m in 0..modems as usize {
            let at = chrono::DateTime::from_timestamp_micros(now_us()).unwrap_or_default();
            packets.push(fleet.sign(m, Packet::IotData(IotData::with_value(1, at, value)))?);
        }
    }
    let (first, last) = send_paced(udp, &packets, 20_000)?;
    let (c, done) = settle(|| gateway_counts(metrics).0, last)?;
    let text = http_get_text(metrics, "/metrics").unwrap_or_default();
    let accepted = metric_sum(&text, "switchyard_gateway_packets_total");
    if accepted < packets.len() as f64 * 0.99 || c.received < packets.len() as f64 * 0.99 {
        bail!(
            "the gateway accepted {accepted} of {} (received {})",
            packets.len(),
            c.received
        );
    }
    let known = metric_sum(&text, "switchyard_gateway_known_modems");
    if known < modems as f64 * 0.99 {
        bail!("{known} modems known of {modems}");
    }
    let rss = rss_mib(gateway.pid());
    // Cleanly: the next row's gateway takes these sessions with their exact numbers.
    gateway.terminate(Duration::from_secs(60))?;
    Ok(((done - first).as_secs_f64(), rss))
}

/// A fresh anomaly-detector on a fresh broker (so no earlier state or group member) over
/// `devices` × `per_device` readings: (seconds, RSS before, RSS after).
fn detector_with(devices: usize, per_device: usize) -> anyhow::Result<(f64, f64, f64)> {
    let stack = Stack::start()?;
    let (detector, metrics) = stack.start_processor(
        "anomaly-detector",
        "bench-detector",
        &[("RUST_LOG", "warn".into())],
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_mib(detector.pid());
    let records: Vec<_> = readings(devices * per_device, devices, now_us());
    let processed_before = metric_sum(
        &http_get_text(metrics, "/metrics").unwrap_or_default(),
        "switchyard_records_in_total",
    );
    let t0 = Instant::now();
    stack.produce("imu", &records)?;
    wait(
        "the detector to read every reading",
        Duration::from_secs(900),
        || {
            metric_sum(
                &http_get_text(metrics, "/metrics").unwrap_or_default(),
                "switchyard_records_in_total",
            ) >= processed_before + records.len() as f64
        },
    )?;
    Ok((t0.elapsed().as_secs_f64(), before, rss_mib(detector.pid())))
}

/// Datagrams per second in the memory bench's waves.
const MEMORY_PACE: u64 = 5_000;

/// The gateway's memory with `modems` new modems in two equal waves (one enveloped status
/// packet each): RSS idle, after the first wave and after the second. The first figure per
/// modem, (after − idle) / modems, also holds what the run leaves behind whatever the fleet
/// (librdkafka's buffers at the producer's peak, memory the allocator keeps); the second,
/// (after the second wave − after the first) / (modems / 2), is what one more modem costs.
///
/// Sent at [`MEMORY_PACE`], which the broker keeps up with, so the producer's queue stays
/// short and RSS shows what the modems cost rather than the queue's peak (at 20,000/s the
/// queue grew by tens of MB, and what the allocator kept of it moved the per-modem figure
/// by hundreds of bytes from run to run).
fn gateway_waves(
    stack: &Stack,
    fleet: &mut KeyedFleet,
    modems: u64,
) -> anyhow::Result<(switchyard_testkit::Service, [f64; 3])> {
    let (gateway, udp, metrics, idle) = quiet_gateway(stack, Some(fleet))?;
    let half = modems / 2;
    let mut after = Vec::new();
    for wave in [0..half, half..modems] {
        let packets = wave
            .map(|m| fleet.sign(m as usize, Packet::IotStatus(IotStatus::Nominal)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (_, last) = send_paced(udp, &packets, MEMORY_PACE)?;
        settle(|| gateway_counts(metrics).0, last)?;
        // Let the heartbeat-free gateway go quiet, so both readings see the same state.
        std::thread::sleep(Duration::from_secs(2));
        after.push(rss_mib(gateway.pid()));
    }
    let text = http_get_text(metrics, "/metrics").unwrap_or_default();
    let known = metric_sum(&text, "switchyard_gateway_known_modems");
    let refused = metric_sum(&text, "switchyard_gateway_rejects_total");
    if known < modems as f64 * 0.99 {
        bail!("{known} modems known of {modems} ({refused} datagrams refused)");
    }
    Ok((gateway, [idle, after[0], after[1]]))
}

/// What restarting a gateway over its sessions costs.
struct Restart {
    /// From SIGTERM to exit: the clean stop writes each session's exact number.
    stop_secs: f64,
    /// From start to ready: `device-sessions` read back to its end.
    ready_secs: f64,
    /// Sessions taken back.
    restored: f64,
    rss_mib: f64,
}

/// Stop `gateway` cleanly and start another with the same instance id and keys.
fn restart_over_sessions(
    stack: &Stack,
    fleet: &KeyedFleet,
    mut gateway: switchyard_testkit::Service,
) -> anyhow::Result<Restart> {
    let stopping = Instant::now();
    gateway.terminate(Duration::from_secs(120))?;
    let stop_secs = stopping.elapsed().as_secs_f64();
    let starting = Instant::now();
    let again = stack.start_gateway(&[("RUST_LOG", "warn".into()), fleet.keys_env()])?;
    let ready_secs = starting.elapsed().as_secs_f64();
    let restored = http_get_text(again.metrics, "/metrics")
        .map(|m| metric_sum(&m, "switchyard_gateway_sessions_restored"))
        .unwrap_or(-1.0);
    Ok(Restart {
        stop_secs,
        ready_secs,
        restored,
        rss_mib: rss_mib(again.service.pid()),
    })
}

pub fn memory(modems: u64) -> anyhow::Result<Report> {
    let stack = Stack::start()?;
    let mut fleet = KeyedFleet::new(FIRST_MODEM, modems, stack.broker.data_dir())?;
    // What a gateway holding no keys takes at rest: the keys' cost is the keyed one's more.
    let bare = quiet_gateway(&stack, None)?.3;
    let (gateway, [before, first, after]) = gateway_waves(&stack, &mut fleet, modems)?;
    eprintln!(
        "gateway: {modems} modems, RSS {bare:.0} without keys, {before:.0} with → {first:.0} → {after:.0} MiB"
    );
    let restart = restart_over_sessions(&stack, &fleet, gateway)?;
    eprintln!(
        "gateway restart: stopped in {:.1} s, ready in {:.1} s with {} sessions, RSS {:.0} MiB",
        restart.stop_secs, restart.ready_secs, restart.restored, restart.rss_mib
    );
    let mib = 1024.0 * 1024.0;
    let keys_per_modem = (before - bare) * mib / modems as f64;
    let gateway_per_modem = (after - bare) * mib / modems as f64;
    let gateway_marginal = (after - first) * mib / (modems / 2) as f64 + keys_per_modem;
    let verdict = if gateway_per_modem <= 200.0 && gateway_marginal <= 200.0 {
        "meets"
    } else {
        "misses"
    };
    let (dsecs, dbefore, dafter) = detector_with(modems as usize, 1)?;
    eprintln!("detector: {modems} devices in {dsecs:.1} s, RSS {dbefore:.0} → {dafter:.0} MiB");
    let detector_per_device = (dafter - dbefore) * mib / modems as f64;
    Ok(Report {
        name: "memory",
        markdown: format!(
            "## Memory\n\n\
             | | idle RSS | RSS after | per modem/device |\n|---|---|---|---|\n\
             | gateway with {modems} modems' keys, at rest (each key with its session slot and replay window), against one without keys ({bare:.0} MiB) | {bare:.0} MiB | {before:.0} MiB | {keys_per_modem:.0} bytes |\n\
             | gateway, {modems} modems in the address book (one signed status packet each, {MEMORY_PACE}/s), keys included | {bare:.0} MiB | {after:.0} MiB | {gateway_per_modem:.0} bytes |\n\
             | gateway, the second {half} of them (RSS {first:.1} → {after:.1} MiB), plus their keys and slots | | | {gateway_marginal:.0} bytes |\n\
             | anomaly-detector, {modems} devices in its state (one reading each) | {dbefore:.0} MiB | {dafter:.0} MiB | {detector_per_device:.0} bytes |\n\n\
             Restore at scale: that gateway, stopped cleanly (SIGTERM: {stop:.1} s, writing each \
             session's exact number), and started again with the same id and keys: ready in \
             {ready:.1} s with {restored:.0} sessions read back from `device-sessions`, RSS \
             {restored_rss:.0} MiB.\n\n\
             The gateway runs in its default configuration: a key per modem, every packet \
             authenticated, a replay window per modem. The second gateway row divides everything \
             the run added to a gateway without keys by the fleet, including what stays whatever \
             the fleet's size (librdkafka's buffers at the producer's peak, memory the allocator \
             keeps); the third is what each further modem costs: the RSS growth between the two \
             equal waves, plus its key, session slot and window (taken at start). Target: ≤ 200 bytes per modem, keys and windows \
             included: {verdict}. The detector's state is also in its changelogged store; RSS \
             includes librdkafka's buffers.\n",
            half = modems / 2,
            stop = restart.stop_secs,
            ready = restart.ready_secs,
            restored = restart.restored,
            restored_rss = restart.rss_mib,
        ),
        json: json!({ "modems": modems, "gateway_rss_without_keys_mib": bare,
            "gateway_key_bytes_per_modem": keys_per_modem, "verdict": verdict,
            "gateway_rss_idle_mib": before, "gateway_rss_half_mib": first, "gateway_rss_mib": after,
            "gateway_bytes_per_modem": gateway_per_modem, "gateway_marginal_bytes_per_modem": gateway_marginal,
            "detector_rss_idle_mib": dbefore, "detector_rss_mib": dafter, "detector_bytes_per_device": detector_per_device,
            "gateway_stop_secs": restart.stop_secs, "gateway_restore_ready_secs": restart.ready_secs,
            "gateway_sessions_restored": restart.restored, "gateway_restored_rss_mib": restart.rss_mib }),
    })
}

pub fn scale() -> anyhow::Result<Report> {
    let stack = Stack::start()?;
    let mut rows = String::new();
    let mut out = Vec::new();
    // One keyed fleet for every row: each row's readings are newer than the last row's.
    let mut modems = KeyedFleet::new(FIRST_MODEM, 10_000, stack.broker.data_dir())?;
    for fleet in [10u64, 100, 1_000, 10_000] {
        // The same work per modem (10 readings), so cost per reading should stay flat.
        let (gsecs, grss) = gateway_with(&stack, &mut modems, fleet)?;
        let (dsecs, _, drss) = detector_with(fleet as usize, 10)?;
        let n = fleet as f64 * 10.0;
        eprintln!("scale {fleet}: gateway {gsecs:.2} s {grss:.0} MiB, detector {dsecs:.2} s {drss:.0} MiB");
        rows.push_str(&format!(
            "| {fleet} | {n:.0} | {gsecs:.2} s ({:.0} µs/reading) | {grss:.0} MiB | {dsecs:.2} s ({:.0} µs/reading) | {drss:.0} MiB |\n",
            gsecs * 1e6 / n,
            dsecs * 1e6 / n
        ));
        out.push(json!({ "modems": fleet, "readings": n, "gateway_seconds": gsecs, "gateway_rss_mib": grss,
                         "detector_seconds": dsecs, "detector_rss_mib": drss }));
    }
    Ok(Report {
        name: "scale",
        markdown: format!(
            "## Scale: 10 → 10,000 modems, 10 readings each\n\n\
             A fresh gateway and a fresh anomaly-detector (on a fresh broker) per row, the same work per modem. Gateway (default configuration: each modem's key, every reading signed): readings offered at 20,000/s, time from the first datagram to the last broker ack; a time equal to the sending time means it kept up. Detector: time from starting to produce the readings (from this process) to the detector having read the last one, so about a second of it is fixed cost; RSS after the last reading.\n\n\
             | modems | readings | gateway | gateway RSS | anomaly-detector | detector RSS |\n|---|---|---|---|---|---|\n{rows}"
        ),
        json: json!(out),
    })
}

/// The latency probe's `fetch.wait.max.ms` (`SWITCHYARD_BENCH_PROBE_FETCH_WAIT_MS`, 20 by
/// default). Kafka answers a fetch as soon as a record is there, so the wait bounds only an
/// idle fetch; the setting is kept so a run can be compared with earlier ones.
fn probe_fetch_wait_ms() -> u64 {
    std::env::var("SWITCHYARD_BENCH_PROBE_FETCH_WAIT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

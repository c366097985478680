//! `switchyard-bench`: measurements for `make bench`, each against its baseline in the same
//! run on the same broker, written to `results/bench.md` and `results/bench.json`.

mod burst_bench;
mod gateway_bench;
mod idle_bench;
mod keyed_fleet;
mod pipeline_bench;
mod raw_floor;
mod registry_bench;
mod streams_bench;
mod system_bench;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Switchyard benchmarks")]
struct Cli {
    /// Folder for bench.md and bench.json.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// A pass-through processor on the framework vs a raw rdkafka consume->produce loop.
    Pipeline {
        /// Records per round.
        #[arg(long, default_value_t = 100_000)]
        records: usize,
        /// Rounds of each (alternating); per-round ratios and their median are reported.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// The gateway (UDP -> acknowledged Avro records) vs a raw UDP->rdkafka loop, plus latency.
    Gateway {
        /// Datagrams per throughput round.
        #[arg(long, default_value_t = 100_000)]
        packets: usize,
        /// Rounds of each (alternating); the median is reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Datagrams/s offered in the throughput rounds (above what either side takes).
        #[arg(long, default_value_t = 80_000)]
        offered_rate: u64,
        /// Datagrams/s offered while measuring latency.
        #[arg(long, default_value_t = 5_000)]
        latency_rate: u64,
        /// Seconds of latency measurement.
        #[arg(long, default_value_t = 10)]
        latency_secs: u64,
        /// Datagrams/s offered while measuring the gateway's CPU per datagram.
        #[arg(long, default_value_t = 20_000)]
        cost_rate: u64,
        /// Seconds per CPU-cost round.
        #[arg(long, default_value_t = 5)]
        cost_secs: u64,
    },
    /// grafana-projector (the binary) vs a raw rdkafka consume->produce loop.
    Processor {
        #[arg(long, default_value_t = 100_000)]
        records: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Sensor sample -> imu-grafana latency at a fixed load from a modem fleet.
    Latency {
        #[arg(long, default_value_t = 500)]
        modems: u64,
        /// Readings per second per modem, one run (on a fresh stack) per rate.
        #[arg(long, value_delimiter = ',', default_values_t = [2.0, 10.0])]
        rates: Vec<f64>,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// Carrier switch round trip through the API, with 1 and 1,000 modems.
    Roundtrip {
        /// Switches per fleet size (200, so that p99 is not simply the slowest of a few).
        #[arg(long, default_value_t = 200)]
        switches: usize,
    },
    /// Gateway and anomaly-detector memory with many modems.
    Memory {
        #[arg(long, default_value_t = 100_000)]
        modems: u64,
    },
    /// Time and memory as the fleet grows 10 -> 10,000 modems.
    Scale,
    /// The `make up` gateway taking a burst of readings (kernel drops, all records acked).
    Burst {
        /// Datagrams per second.
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        /// Seconds per round.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Registering new schema versions on the `make up` stack, against reads.
    Registry {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// New versions registered per round.
        #[arg(long, default_value_t = 20)]
        versions: usize,
    },
    /// Switchyard beside Kafka Streams: pass-through and grafana-projector's work, under
    /// at-least-once and exactly-once, on one broker.
    Streams {
        /// Input records (read whole by every run).
        #[arg(long, default_value_t = 200_000)]
        records: usize,
        /// Rounds of each contestant (alternating).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Only this work (repeatable; every work when absent). A partial run is for
        /// investigating: write it elsewhere with `--out`.
        #[arg(long = "work", value_enum)]
        works: Vec<streams_bench::Work>,
        /// Only this guarantee (repeatable; both when absent).
        #[arg(long = "guarantee", value_enum)]
        guarantees: Vec<streams_bench::Guarantee>,
    },
    /// The pass-through processor alone, as a process the streams bench measures.
    #[command(hide = true)]
    ServePassThrough {
        #[command(flatten)]
        runner: switchyard_pipeline::RunnerConfig,
        /// Its consumer group (topology name).
        #[arg(long, default_value = "bench-pass-through")]
        group: String,
    },
    /// What `make up` with only its simulated modems costs the broker, and from which client.
    Idle {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds per round.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Seconds the stack runs before it is measured: the broker's JIT compiles its
        /// request path for about 12 minutes at an idle stack's ~50 requests/s.
        #[arg(long, default_value_t = 720)]
        warm_up_secs: u64,
    },
}

/// Ctrl-C or SIGTERM ends the bench without unwinding, so the `make up` stacks it started
/// (detached by `stack.sh`) would keep running and load the machine under the next
/// measurement: have them taken down, then exit at once.
async fn take_down_on_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    switchyard_testkit::take_down_scripted_in_background();
    eprintln!("interrupted: the bench's `make up` stacks are being taken down in the background");
    std::process::exit(130);
}

fn main() -> anyhow::Result<()> {
    switchyard_telemetry::init_tracing("warn");
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    let runtime = tokio::runtime::Runtime::new()?;
    // A measured processor, not a bench: SIGTERM is its own to handle.
    if let Bench::ServePassThrough { runner, group } = cli.bench {
        return runtime.block_on(pipeline_bench::serve_pass_through(runner, &group));
    }
    runtime.spawn(take_down_on_signal());
    match cli.bench {
        Bench::ServePassThrough { .. } => {}
        Bench::Streams {
            records,
            rounds,
            works,
            guarantees,
        } => {
            let report = streams_bench::run(records, rounds, &works, &guarantees)?;
            report.write(&cli.out)?;
            println!("{}", report.markdown);
        }
        Bench::Pipeline { records, rounds } => {
            let report = runtime.block_on(pipeline_bench::run(records, rounds))?;
            report.write(&cli.out)?;
            println!("{}", report.markdown);
        }
        Bench::Gateway {
            packets,
            rounds,
            offered_rate,
            latency_rate,
            latency_secs,
            cost_rate,
            cost_secs,
        } => {
            let report = gateway_bench::run(
                runtime.handle(),
                gateway_bench::GatewayBench {
                    packets,
                    rounds,
                    offered_rate,
                    latency_rate,
                    latency_secs,
                    cost_rate,
                    cost_secs,
                },
            )?;
            report.write(&cli.out)?;
            println!("{}", report.markdown);
        }
        Bench::Processor { records, rounds } => {
            emit(&cli.out, system_bench::processor(records, rounds)?)?
        }
        Bench::Latency {
            modems,
            rates,
            seconds,
        } => emit(&cli.out, system_bench::latency(modems, &rates, seconds)?)?,
        Bench::Roundtrip { switches } => emit(&cli.out, system_bench::roundtrip(switches)?)?,
        Bench::Memory { modems } => emit(&cli.out, system_bench::memory(modems)?)?,
        Bench::Scale => emit(&cli.out, system_bench::scale()?)?,
        Bench::Burst {
            rate,
            seconds,
            rounds,
        } => emit(&cli.out, burst_bench::run(rate, seconds, rounds)?)?,
        Bench::Registry { rounds, versions } => {
            emit(&cli.out, registry_bench::run(rounds, versions)?)?
        }
        Bench::Idle {
            rounds,
            seconds,
            warm_up_secs,
        } => emit(
            &cli.out,
            idle_bench::run(
                rounds,
                std::time::Duration::from_secs(seconds),
                std::time::Duration::from_secs(warm_up_secs),
            )?,
        )?,
    }
    Ok(())
}

fn emit(out: &std::path::Path, report: Report) -> anyhow::Result<()> {
    report.write(out)?;
    println!("{}", report.markdown);
    Ok(())
}

/// What one bench produced.
pub struct Report {
    pub name: &'static str,
    pub markdown: String,
    pub json: serde_json::Value,
}

impl Report {
    /// Merge this bench's section into bench.md and bench.json (other benches' sections stay).
    fn write(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        let json_path = dir.join("bench.json");
        let mut all: serde_json::Map<String, serde_json::Value> =
            std::fs::read_to_string(&json_path)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
        let commit = commit();
        let mut json = self.json.clone();
        if let Some(object) = json.as_object_mut() {
            object.insert("commit".into(), commit.clone().into());
        }
        all.insert(self.name.to_string(), json);
        all.insert("machine".into(), machine());
        std::fs::write(&json_path, serde_json::to_string_pretty(&all)? + "\n")?;

        let md_path = dir.join("bench.md");
        let mut sections: std::collections::BTreeMap<String, String> =
            std::collections::BTreeMap::new();
        if let Ok(text) = std::fs::read_to_string(&md_path) {
            for part in text.split("\n<!-- bench: ").skip(1) {
                if let Some((name, body)) = part.split_once(" -->\n") {
                    sections.insert(name.to_string(), body.trim_end().to_string());
                }
            }
        }
        // Each section names its own machine and broker: sections measured in earlier runs
        // (on tansu, before Apache Kafka) stay until their bench runs again.
        let measured = format!(
            "\n\nMeasured at commit `{commit}`, {}, on {}.",
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
            machine_line()
        );
        sections.insert(
            self.name.to_string(),
            self.markdown.trim_end().to_string() + &measured,
        );
        let mut md = String::from("# Benchmark results\n\nWritten by `make bench`; each figure is measured against its baseline in the same run, on the same broker. Each section ends with the commit, the date, the machine and the broker it was measured on: sections without a broker named were measured on tansu 0.6.0, the broker before Apache Kafka.\n");
        for (name, body) in sections {
            md.push_str(&format!("\n<!-- bench: {name} -->\n{body}\n"));
        }
        std::fs::write(&md_path, md)?;
        Ok(())
    }
}

/// The commit the benchmarked binaries were built from (`+dirty` with uncommitted changes
/// to anything built into them: changes to `results/`, which the benches themselves write,
/// and to the docs and other Markdown, which nothing is built from, do not count).
fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let hash = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":!results",
        ":!docs",
        ":!*.md",
    ])
    .is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{hash}+dirty")
    } else {
        hash
    }
}

fn machine_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    format!("{cores} cores ({cpu}), {mem_gib:.0} GiB, Apache Kafka {} (one KRaft node, scripts/kafka.sh's settings) on loopback", switchyard_testkit::kafka_version())
}

fn machine() -> serde_json::Value {
    serde_json::json!({ "description": machine_line(), "measured_at": chrono::Utc::now().to_rfc3339() })
}

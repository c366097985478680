//! What `make up` costs with nothing but its simulated modems running: the broker's CPU and
//! the whole stack's, each process's share, and each process's resident memory.

use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::json;
use switchyard_testkit::{workspace_binary, ScriptedStack};

use crate::Report;

/// CPU seconds (user + system) `pid` has used so far.
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    cpu_seconds_of(&format!("/proc/{pid}/stat"))
}

/// CPU seconds used so far by those of `pid`'s threads whose name starts with `prefix`
/// (librdkafka names its broker threads `rdk:broker…`).
pub(crate) fn threads_cpu_seconds(pid: u32, prefix: &str) -> anyhow::Result<f64> {
    let mut total = 0.0;
    let tasks = format!("/proc/{pid}/task");
    for task in std::fs::read_dir(&tasks).with_context(|| format!("listing {tasks}"))? {
        let dir = task?.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if name.starts_with(prefix) {
            // A thread that ended between the listing and this read adds nothing.
            total += cpu_seconds_of(&dir.join("stat").to_string_lossy()).unwrap_or(0.0);
        }
    }
    Ok(total)
}

/// CPU seconds (user + system) in a `/proc/…/stat` file (a process's or a thread's).
fn cpu_seconds_of(path: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name (which may hold spaces) start at the state, field 3;
    // utime and stime are fields 14 and 15.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .context("short /proc stat")?
        .iter()
        .map(|f| f.parse::<f64>().unwrap_or(0.0))
        .sum();
    // Linux reports in USER_HZ, which is 100 on every architecture it supports.
    Ok(ticks / 100.0)
}

/// `scripts/stack.sh up` (what `make up` runs) in a scratch folder, on this build's binaries.
pub(crate) fn make_up() -> anyhow::Result<ScriptedStack> {
    let bin = workspace_binary("switchyard")?
        .parent()
        .context("bin dir")?
        .to_path_buf();
    let stack = ScriptedStack::new(&bin)?;
    let up = stack.sh("up")?;
    if !up.status.success() {
        bail!(
            "stack.sh up failed: {}{}",
            String::from_utf8_lossy(&up.stdout),
            String::from_utf8_lossy(&up.stderr)
        );
    }
    Ok(stack)
}

/// Resident memory of `pid`, in MiB.
pub(crate) fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")?;
    Ok(kib / 1024.0)
}

/// The broker's JIT compiler threads (HotSpot's C1 and C2), whose share the bench reports
/// apart: they compile for minutes after start-up, then fall quiet.
const JIT_THREADS: [&str; 2] = ["C1 CompilerThre", "C2 CompilerThre"];

/// `warm_up`: how long the stack runs before it is measured. The broker's JIT compiles for
/// minutes: at 1 minute HotSpot's C2 thread took 3.2% of a core of the broker's 8.1%, at
/// 7.5 minutes 0.8% of 5.0% (7b29009); counted with `-XX:+PrintCompilation`, C2 compiled
/// about 70 methods a minute at minutes 5-6 (the request path: `KafkaApis.handle`,
/// `DelayedFetch.tryComplete`, `UnifiedLog.append`, hot only slowly at ~50 requests/s), 8
/// at minute 12, then none. So the bench waits 12 minutes by default and still reports the
/// JIT's share apart: a shorter warm-up measures the compiler, not the idle stack a user
/// keeps running.
pub fn run(rounds: usize, window: Duration, warm_up: Duration) -> anyhow::Result<Report> {
    let stack = make_up()?;
    let mut pids = stack.pids();
    pids.sort();
    if !pids.iter().any(|(n, _)| n == "kafka") {
        bail!("no kafka pid in the stack's pids/");
    }
    // Start-up, first commits, group joins, and the broker's JIT compilation: measured at
    // 54a6ca8 with 10 s, the broker's CPU fell round by round from 21% to 8% of a core.
    std::thread::sleep(warm_up);
    let broker_pid = pids
        .iter()
        .find(|(n, _)| n == "kafka")
        .map(|(_, pid)| *pid)
        .unwrap_or(0);
    let jit_seconds = || -> anyhow::Result<f64> {
        JIT_THREADS
            .iter()
            .map(|prefix| threads_cpu_seconds(broker_pid, prefix))
            .sum()
    };
    let mut jit = Vec::new();

    // Each round: every process's CPU over the window, in % of one core.
    let mut by_round: Vec<Vec<f64>> = Vec::new();
    for _ in 0..rounds {
        let before = pids
            .iter()
            .map(|(_, pid)| cpu_seconds(*pid))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let jit_before = jit_seconds()?;
        std::thread::sleep(window);
        jit.push((jit_seconds()? - jit_before) * 100.0 / window.as_secs_f64());
        let mut round = Vec::new();
        for ((_, pid), before) in pids.iter().zip(before) {
            round.push((cpu_seconds(*pid)? - before) * 100.0 / window.as_secs_f64());
        }
        by_round.push(round);
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(|a, b| a.total_cmp(b));
        values[values.len() / 2]
    };
    let broker_index = pids.iter().position(|(n, _)| n == "kafka").unwrap_or(0);
    let broker: Vec<f64> = by_round.iter().map(|r| r[broker_index]).collect();
    let whole: Vec<f64> = by_round.iter().map(|r| r.iter().sum()).collect();
    let percents = |values: &[f64]| {
        values
            .iter()
            .map(|c| format!("{c:.1}%"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (broker_rounds, whole_rounds, jit_rounds) =
        (percents(&broker), percents(&whole), percents(&jit));
    let broker_median = median(&mut broker.clone());
    let jit_median = median(&mut jit.clone());
    let whole_median = median(&mut whole.clone());
    let verdict = |value: f64, target: f64| if value <= target { "meets" } else { "misses" };
    let mut rows = String::new();
    let mut json_rows = Vec::new();
    for (i, (name, pid)) in pids.iter().enumerate() {
        let mut cpu: Vec<f64> = by_round.iter().map(|r| r[i]).collect();
        let cpu = median(&mut cpu);
        let rss = rss_mib(*pid)?;
        rows.push_str(&format!("| {name} | {cpu:.1}% | {rss:.0} |\n"));
        json_rows.push(json!({"process": name, "cpu_percent_median": cpu, "rss_mib": rss}));
    }
    eprintln!("idle: broker {broker_rounds}; whole stack {whole_rounds}");
    Ok(Report {
        name: "idle",
        markdown: format!(
            "## Idle cost: `make up` with only its simulated modems\n\n\
             `scripts/stack.sh up` (what `make up` runs: Apache Kafka, registry, gateway, four processors, API, Prometheus, three simulated modems at 1 reading/s per sensor) in a scratch folder; each process's CPU (user + system from /proc) over {rounds} windows of {window_s} s, after {warm_up} s of start-up.\n\n\
             | | by round | median | target |\n|---|---|---|---|\n\
             | broker, % of one core | {broker_rounds} | **{broker_median:.1}%** | ≤ 5%: {} |\n\
             | of which its JIT compiler threads (C1, C2) | {jit_rounds} | {jit_median:.1}% | |\n\
             | whole stack, % of one core | {whole_rounds} | **{whole_median:.1}%** | ≤ 15%: {} |\n\n\
             | process | CPU (median) | RSS MiB (at the end) |\n|---|---|---|\n{rows}",
            verdict(broker_median, 5.0),
            verdict(whole_median, 15.0),
            window_s = window.as_secs(),
            warm_up = warm_up.as_secs(),
        ),
        json: json!({
            "broker_cpu_percent_by_round": broker,
            "broker_cpu_percent_median": broker_median,
            "broker_jit_cpu_percent_by_round": jit,
            "warm_up_seconds": warm_up.as_secs(),
            "stack_cpu_percent_median": whole_median,
            "processes": json_rows,
        }),
    })
}

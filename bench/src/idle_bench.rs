//! What `make up` costs the broker with nothing but its simulated modems running, and which
//! client the cost comes from. tansu holds each fetch for the consumer's whole fetch wait and
//! reads SQLite for every partition of every fetch, so each consumer costs it CPU even idle.

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

/// `pid`'s CPU over `window`, in % of one core.
fn cpu_percent(pid: u32, window: Duration) -> anyhow::Result<f64> {
    let before = cpu_seconds(pid)?;
    std::thread::sleep(window);
    Ok((cpu_seconds(pid)? - before) * 100.0 / window.as_secs_f64())
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill {sig} {pid} failed");
    }
    Ok(())
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

pub fn run(rounds: usize, window: Duration) -> anyhow::Result<Report> {
    let stack = make_up()?;
    let pids = stack.pids();
    let pid_of = |name: &str| pids.iter().find(|(n, _)| n == name).map(|(_, p)| *p);
    let tansu = pid_of("tansu").context("no tansu pid")?;
    std::thread::sleep(Duration::from_secs(10)); // start-up, first commits, group joins

    let mut whole = Vec::new();
    for _ in 0..rounds {
        whole.push(cpu_percent(tansu, window)?);
    }
    // One client frozen at a time (SIGSTOP: its connections stay open, it sends nothing),
    // for less than a session timeout so that its group does not rebalance meanwhile.
    let frozen_window = Duration::from_secs(6);
    let mut without = Vec::new();
    for name in [
        "gateway",
        "grafana-projector",
        "carrier-state",
        "api",
        "reading-counter",
        "anomaly-detector",
        "modems",
    ] {
        let Some(pid) = pid_of(name) else { continue };
        signal(pid, "-STOP")?;
        let measured = cpu_percent(tansu, frozen_window);
        signal(pid, "-CONT")?;
        without.push((name, measured?));
        std::thread::sleep(Duration::from_secs(4)); // let it catch up
    }
    let mut sorted = whole.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = sorted[sorted.len() / 2];
    let verdict = if median <= 25.0 { "meets" } else { "misses" };
    let by_round = whole
        .iter()
        .map(|c| format!("{c:.0}%"))
        .collect::<Vec<_>>()
        .join(", ");
    let attribution = without
        .iter()
        .map(|(name, cpu)| format!("| {name} | {cpu:.0}% | {:.0} |\n", median - cpu))
        .collect::<String>();
    eprintln!("idle: tansu {by_round}");
    Ok(Report {
        name: "idle",
        markdown: format!(
            "## Idle cost: the broker under `make up` with only its simulated modems\n\n\
             `scripts/stack.sh up` (what `make up` runs: gateway, four processors, API, three simulated modems at 1 reading/s per sensor) in a scratch folder; tansu's CPU (user + system from /proc) over {rounds} windows of {window_s} s.\n\n\
             | | tansu, % of one core |\n|---|---|\n\
             | by round | {by_round} |\n\
             | **median** | **{median:.0}%** (target ≤ 25%: {verdict}) |\n\n\
             Where it comes from: each client frozen alone (SIGSTOP) for {frozen} s; its share is the median minus what tansu uses without it (one short window each, so ±10 points).\n\n\
             | client frozen | tansu without it | share (points) |\n|---|---|---|\n{attribution}",
            window_s = window.as_secs(),
            frozen = frozen_window.as_secs(),
        ),
        json: json!({
            "tansu_cpu_percent_by_round": whole,
            "tansu_cpu_percent_median": median,
            "without": without.iter().map(|(n, c)| json!({"client": n, "tansu_cpu_percent": c})).collect::<Vec<_>>(),
        }),
    })
}

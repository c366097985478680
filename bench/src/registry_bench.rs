//! Registering new schema versions on the `make up` stack (`scripts/stack.sh up`: release
//! binaries, the registry's `_schemas` follower at its configured fetch wait), what every
//! processor start, `topics apply` and an auto-registering serializer pay. A write answers
//! once its record is read back from `_schemas`, so it costs a produce and a fetch. The
//! baseline is a read of the same subject from the same registry (served from memory).

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{bail, Context as _};
use serde_json::json;
use switchyard_testkit::http_json;

use crate::Report;

/// Milliseconds of one request; fails on anything but 200.
fn timed(registry: SocketAddr, method: &str, path: &str, body: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let (status, answer) = http_json(registry, method, path, body)?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if status != 200 {
        bail!("{method} {path}: {status} {answer}");
    }
    Ok(ms)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Version `n` of the bench's schema: `n` optional fields, each version compatible with the
/// one before (BACKWARD, the registry's default).
fn version(n: usize) -> String {
    let fields: Vec<serde_json::Value> =
        std::iter::once(json!({"name": "id", "type": "string"}))
            .chain((1..=n).map(
                |i| json!({"name": format!("f{i}"), "type": ["null", "long"], "default": null}),
            ))
            .collect();
    json!({"type": "record", "name": "BenchRecord", "namespace": "io.switchyard.bench", "fields": fields})
        .to_string()
}

pub fn run(rounds: usize, versions: usize) -> anyhow::Result<Report> {
    let stack = crate::idle_bench::make_up()?;
    let registry: SocketAddr =
        format!("127.0.0.1:{}", stack.port("SWITCHYARD_REGISTRY_PORT")?).parse()?;
    let mut results = Vec::new();
    let mut next = 0;
    for round in 1..=rounds {
        let subject = format!(
            "bench-registry-{}-value",
            chrono::Utc::now().timestamp_millis()
        );
        let path = format!("/subjects/{subject}/versions");
        let (mut writes, mut reads) = (Vec::new(), Vec::new());
        for _ in 0..versions {
            next += 1;
            let body = json!({ "schema": version(next) }).to_string();
            writes.push(timed(registry, "POST", &path, &body).context("registering")?);
            reads.push(timed(registry, "GET", &format!("{path}/latest"), "")?);
        }
        writes.sort_by(f64::total_cmp);
        reads.sort_by(f64::total_cmp);
        let row = json!({
            "versions": versions,
            "write_p50_ms": quantile(&writes, 0.5),
            "write_max_ms": quantile(&writes, 1.0),
            "read_p50_ms": quantile(&reads, 0.5),
            "read_max_ms": quantile(&reads, 1.0),
        });
        eprintln!("round {round}: {row}");
        results.push(row);
    }
    let down = stack.sh("down")?;
    if !down.status.success() {
        eprintln!("stack.sh down: {}", String::from_utf8_lossy(&down.stderr));
    }
    let field = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let rows: String = results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
                i + 1,
                r["versions"],
                field(r, "write_p50_ms"),
                field(r, "write_max_ms"),
                field(r, "read_p50_ms"),
                field(r, "read_max_ms"),
            )
        })
        .collect();
    let worst = results
        .iter()
        .map(|r| field(r, "write_max_ms"))
        .fold(0.0, f64::max);
    let markdown = format!(
        "## Schema registration on `make up`\n\n\
         `scripts/stack.sh up` in a scratch folder; per round, a new subject gets {versions} \
         versions one after another (each adds an optional field: compatible under BACKWARD), \
         each write followed by a read of the subject's latest version as the baseline. A write \
         answers once its record is read back from `_schemas`.\n\n\
         | round | versions | write p50 ms | write max ms | read p50 ms | read max ms |\n\
         |---|---|---|---|---|---|\n{rows}\n\
         Slowest registration over all rounds: **{worst:.0} ms** (target ≤ 200 ms: {}).\n",
        if worst <= 200.0 { "met" } else { "misses" }
    );
    Ok(Report {
        name: "registry",
        markdown,
        json: json!({ "rounds": results, "slowest_write_ms": worst }),
    })
}

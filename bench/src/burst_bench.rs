//! The `make up` gateway taking a burst: readings at a steady rate for some seconds from
//! one loopback sender, against the stack `scripts/stack.sh up` starts (release binaries,
//! authentication on, so the readings are v1 packets of the declared legacy modem). What
//! counts: datagrams the kernel dropped from the gateway's socket, datagrams the gateway
//! took in, and records it acknowledged or counted lost, until all are accounted for.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use switchyard_protocol::{IotData, Packet};
use switchyard_testkit::{http_get_text, metric_sum};

use crate::gateway_bench::{gateway_counts, send_paced, settle};
use crate::Report;

fn kernel_drops(metrics: SocketAddr) -> f64 {
    let text = http_get_text(metrics, "/metrics").unwrap_or_default();
    metric_sum(&text, "switchyard_gateway_udp_kernel_drops")
}

pub fn run(rate: u64, seconds: u64, rounds: usize) -> anyhow::Result<Report> {
    let stack = crate::idle_bench::make_up()?;
    let udp: SocketAddr =
        format!("127.0.0.1:{}", stack.port("SWITCHYARD_GATEWAY_PORT")?).parse()?;
    let metrics: SocketAddr =
        format!("127.0.0.1:{}", stack.port("SWITCHYARD_METRICS_BASE")? + 4).parse()?;
    let base = chrono::Utc::now().timestamp_micros();
    let packets = (0..rate * seconds)
        .map(|i| {
            let at = chrono::DateTime::from_timestamp_micros(base + i as i64).context("time")?;
            Ok(Packet::IotData(IotData::with_value((i % 3) as u32 + 1, at, i as i32)).encode()?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut results = Vec::new();
    for round in 1..=rounds {
        let (before, _) = gateway_counts(metrics);
        let drops_before = kernel_drops(metrics);
        let (first, last) = send_paced(udp, &packets, rate)?;
        let sending = last - first;
        let (after, done) = settle(|| gateway_counts(metrics).0, last)?;
        // The kernel counter is read once a second by the gateway: wait for one more reading.
        std::thread::sleep(Duration::from_millis(1500));
        let dropped = kernel_drops(metrics) - drops_before;
        let received = after.received - before.received;
        let acked = after.acked - before.acked;
        let lost = after.lost - before.lost;
        let drain = done.saturating_duration_since(last);
        eprintln!(
            "round {round}: {} sent in {:.1} s, {dropped:.0} dropped by the kernel, {received:.0} received, {acked:.0} acknowledged, {lost:.0} counted lost, last ack {:.1} s after the last send",
            packets.len(),
            sending.as_secs_f64(),
            drain.as_secs_f64()
        );
        results.push(json!({
            "sent": packets.len(),
            "sending_seconds": sending.as_secs_f64(),
            "dropped_by_kernel": dropped,
            "received": received,
            "acknowledged": acked,
            "counted_lost": lost,
            "drain_seconds": drain.as_secs_f64(),
        }));
    }
    let down = stack.sh("down")?;
    if !down.status.success() {
        eprintln!("stack.sh down: {}", String::from_utf8_lossy(&down.stderr));
    }
    let rows = results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} |\n",
                i + 1,
                r["sent"],
                r["dropped_by_kernel"].as_f64().unwrap_or(-1.0),
                r["received"].as_f64().unwrap_or(-1.0),
                r["acknowledged"].as_f64().unwrap_or(-1.0),
                r["counted_lost"].as_f64().unwrap_or(-1.0),
                r["drain_seconds"].as_f64().unwrap_or(-1.0),
            )
        })
        .collect::<String>();
    // Every datagram taken in and every record acknowledged: nothing dropped, nothing lost.
    let all_zero = results.iter().all(|r| {
        r["dropped_by_kernel"].as_f64() == Some(0.0) && r["counted_lost"].as_f64() == Some(0.0)
    });
    let verdict = if all_zero { "meets" } else { "misses" };
    Ok(Report {
        name: "burst",
        markdown: format!(
            "## The `make up` gateway taking a burst\n\n\
             `scripts/stack.sh up` (what `make up` runs: release binaries, one partition per topic, authentication on, three simulated modems) in a scratch folder; one loopback sender offers {rate} v1 IoT Data datagrams/s (the legacy modem's readings) for {seconds} s per round. Dropped by the kernel: the gateway's `udp_kernel_drops` (the socket's drop count from /proc/net/udp); the last ack is the broker's acknowledgement of the last record.\n\n\
             | round | sent | dropped by the kernel | received | acknowledged | counted lost | last ack after the last send (s) |\n|---|---|---|---|---|---|---|\n{rows}\n\
             Target: in every round zero kernel drops and nothing counted lost (what the broker cannot take at once waits in the producer's buffer, `GATEWAY_BUFFER` in `scripts/stack.sh`): {verdict}.\n"
        ),
        json: json!({ "rate": rate, "seconds": seconds, "rounds": results }),
    })
}

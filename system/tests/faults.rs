//! Faults the system must survive without losing data, on real processes and loopback only.

use std::net::SocketAddr;
use std::time::Duration;
use switchyard_schemas::records::now_us;

use switchyard_schemas::records::{
    Carrier, CarrierSwitchRequest, GrafanaReading, RequestState, SensorReading,
};
use switchyard_testkit::{
    free_port, http_get_status, imu_reading, kafka, metric_sum, wait_for, Registry, Service, Stack,
};

const WAIT: Duration = Duration::from_secs(120);

/// A processor whose registry is down at start says so, retries, stays up (no crash loop,
/// no stack trace), and works once the registry is back.
#[test]
fn a_processor_started_while_the_registry_is_down_waits_for_it() {
    let mut stack = Stack::start().expect("stack");
    let registry_addr = stack.registry.addr;
    stack.registry.service.kill();

    let metrics: SocketAddr = ([127, 0, 0, 1], free_port().expect("port")).into();
    let mut projector = stack
        .spawn(
            "grafana-projector",
            "grafana-projector",
            &[("SWITCHYARD_METRICS_LISTEN", metrics.to_string())],
        )
        .expect("spawn");
    wait_for("the retry to be logged", WAIT, || {
        projector
            .log_text()
            .contains("schema registry unreachable; retrying")
    })
    .expect("a clear message");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        projector.is_running(),
        "no crash:\n{}",
        projector.log_text()
    );
    assert_ne!(
        http_get_status(metrics, "/health").ok(),
        Some(200),
        "not ready"
    );
    let log = projector.log_text();
    assert!(
        !log.contains("panicked") && !log.contains("stack backtrace"),
        "{log}"
    );

    stack.registry = Registry::start_at(&stack.broker, "registry-again", registry_addr)
        .expect("registry back on its address");
    projector
        .wait_until(WAIT, || {
            http_get_status(metrics, "/health").ok() == Some(200)
        })
        .expect("ready once the registry is back");
    let at = now_us();
    stack
        .produce(
            "imu",
            &[("5".to_string(), imu_reading("5", 77, at), at / 1000)],
        )
        .expect("produce");
    let out = stack
        .consume_at_least::<GrafanaReading>("imu-grafana", 1, WAIT)
        .expect("projection");
    assert_eq!(out.first().map(|r| r.value.value), Some(77));
}

/// SIGKILL grafana-projector twice while readings stream in, restart it each time: every
/// reading has its projection (at least once: duplicates within the uncommitted bound, gaps
/// never). Each kill is placed once the group's committed offsets are proven behind the
/// projections already written, so it lands where at-least-once has work to do.
#[test]
fn grafana_projector_killed_mid_stream_loses_no_reading() {
    // Not a divisor of the 1000-reading batches: a batch's last readings stay uncommitted
    // (commits happen only at the bound), so even a projector that has caught up is killed
    // with its commits behind.
    const MAX_UNCOMMITTED: usize = 300;
    let stack = Stack::start().expect("stack");
    let bootstrap = stack.broker.bootstrap();
    let start = || -> (Service, SocketAddr) {
        stack
            .start_processor(
                "grafana-projector",
                "grafana-projector",
                &[
                    ("SWITCHYARD_MAX_UNCOMMITTED", MAX_UNCOMMITTED.to_string()),
                    // Commit only at the bound: committed offsets trail what was projected.
                    ("SWITCHYARD_COMMIT_INTERVAL_MS", "600000".into()),
                ],
            )
            .expect("healthy")
    };
    let (mut projector, mut metrics) = start();
    let base = now_us();
    let total = 3000;
    // Projections ahead of the committed offsets at the last kill: inputs projected twice.
    let mut behind_at_kills = 0;
    for batch in 0..3 {
        let records: Vec<_> = (0..1000)
            .map(|i| {
                let n = batch * 1000 + i;
                let modem = format!("{}", n % 50);
                let at = base + i64::from(n) * 1000;
                (modem.clone(), imu_reading(&modem, n, at), at / 1000)
            })
            .collect();
        stack.produce("imu", &records).expect("produce");
        if batch < 2 {
            // Killed while frozen with projections of its own ahead of the commits (it
            // cannot commit between the check and the kill). The projections counted
            // include the earlier kills' duplicates, which are ahead already.
            projector
                .kill_when(WAIT, || {
                    let projected =
                        kafka::read_to_end(&bootstrap, "imu-grafana").map_or(0, |r| r.len());
                    let committed =
                        kafka::committed_total(&bootstrap, "grafana-projector", &["imu"])
                            .unwrap_or(0) as usize;
                    projected > batch as usize * 1000 + 300
                        && projected.saturating_sub(committed) > behind_at_kills
                })
                .unwrap_or_else(|e| {
                    let text =
                        switchyard_testkit::http_get_text(metrics, "/metrics").unwrap_or_default();
                    panic!("{e}\n{text}\n{}", projector.log_text())
                });
            // What survived the kill: projections beyond the committed offsets are of
            // inputs the next instance projects again. Counted over all kills so far (the
            // projections include the earlier kills' duplicates), each kill must add some.
            let projected = kafka::read_to_end(&bootstrap, "imu-grafana").map_or(0, |r| r.len());
            let committed = kafka::committed_total(&bootstrap, "grafana-projector", &["imu"])
                .expect("committed");
            let ahead = projected - committed as usize;
            eprintln!("kill {batch}: {projected} projected, {committed} committed");
            assert!(
                ahead > behind_at_kills,
                "kill {batch} landed behind the commits: {ahead} projections ahead of them, {behind_at_kills} before it"
            );
            behind_at_kills = ahead;
            (projector, metrics) = start();
        }
    }
    let mut values: Vec<i32> = Vec::new();
    wait_for("every reading projected", WAIT, || {
        values = stack
            .read_to_end::<GrafanaReading>("imu-grafana")
            .map(|rs| rs.iter().map(|r| r.value.value).collect())
            .unwrap_or_default();
        let mut distinct = values.clone();
        distinct.sort_unstable();
        distinct.dedup();
        distinct.len() >= total as usize
    })
    .unwrap_or_else(|e| panic!("{e}: {} records of {total}", values.len()));
    let all = stack
        .read_to_end::<GrafanaReading>("imu-grafana")
        .expect("read to end");
    let mut distinct: Vec<i32> = all.iter().map(|r| r.value.value).collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct, (0..total).collect::<Vec<_>>());
    let duplicates = all.len() - total as usize;
    assert!(
        duplicates >= behind_at_kills && duplicates <= 2 * MAX_UNCOMMITTED,
        "{duplicates} duplicates: at least the {behind_at_kills} projections ahead of the commits at the kills, at most {MAX_UNCOMMITTED} uncommitted for each of two kills"
    );
    drop(projector);
}

/// SIGKILL carrier-state while requests and answers stream in: after a restart it converges
/// to the state of an uninterrupted run (every request ends the same way).
#[test]
fn carrier_state_killed_mid_stream_converges_to_the_same_state() {
    use switchyard_schemas::records::{AckStatus, CarrierState, CarrierSwitchAck};
    let stack = Stack::start().expect("stack");
    let start = |env: &[(&str, String)]| -> (Service, SocketAddr) {
        stack
            .start_processor("carrier-state", "carrier-state", env)
            .expect("healthy")
    };
    // The first instance commits only when half its uncommitted bound (50) is reached:
    // once, after 25 requests, with what was acknowledged then. The 40th never gets there,
    // so the kill lands behind the commits and the restart processes the rest again.
    let (mut processor, first_metrics) = start(&[
        ("SWITCHYARD_COMMIT_INTERVAL_MS", "600000".to_string()),
        ("SWITCHYARD_MAX_UNCOMMITTED", "50".to_string()),
    ]);
    let modems = 40;
    let t = now_us();
    let requests: Vec<_> = (0..modems)
        .map(|m| {
            let request = CarrierSwitchRequest {
                request_id: format!("{:016x}", 0xabc000 + m),
                modem_id: m.to_string(),
                carrier: if m % 2 == 0 {
                    Carrier::Verizon
                } else {
                    Carrier::TMobile
                },
                requested_at: t,
                deadline: t + 600_000_000,
                requested_by: Some("fault-test".into()),
            };
            (m.to_string(), request, t / 1000)
        })
        .collect();
    stack
        .produce("downstream-request", &requests)
        .expect("requests");
    // Kill it once every request is in its table: after the restart only the restored
    // store knows them.
    wait_for("every request in the table", WAIT, || {
        stack
            .read_to_end::<CarrierState>("carrier-state")
            .map(|rs| {
                rs.iter()
                    .filter(|r| {
                        r.value
                            .requests
                            .iter()
                            .any(|q| q.state == RequestState::Requested)
                    })
                    .map(|r| r.value.modem_id.clone())
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
                    == modems as usize
            })
            .unwrap_or(false)
    })
    .expect("requests taken in");
    let processed = metric_sum(
        &switchyard_testkit::http_get_text(first_metrics, "/metrics").unwrap_or_default(),
        "switchyard_records_in_total{",
    );
    processor.kill();
    let bootstrap = stack.broker.bootstrap();
    let committed = kafka::committed_total(&bootstrap, "carrier-state", &["downstream-request"])
        .expect("committed");
    assert!(
        processed >= modems as f64 && (committed as f64) < processed,
        "the kill landed behind the commits: {processed} processed, {committed} committed"
    );
    // Answers arrive while it is down: even modems ACK, odd modems NACK (still on AT&T).
    let acks: Vec<_> = (0..modems)
        .map(|m| {
            let ack = CarrierSwitchAck {
                modem_id: m.to_string(),
                request_id: Some(format!("{:016x}", 0xabc000 + m)),
                status: if m % 2 == 0 {
                    AckStatus::Ack
                } else {
                    AckStatus::Nack
                },
                carrier: if m % 2 == 0 {
                    Carrier::Verizon
                } else {
                    Carrier::AtAndT
                },
                received_at: t + 1_000_000,
                sequence: None,
                reason: None,
            };
            (m.to_string(), ack, t / 1000 + 1000)
        })
        .collect();
    stack.produce("carrier-switch-ack", &acks).expect("acks");
    let (restarted, metrics) = start(&[]);

    let mut latest: std::collections::HashMap<String, CarrierState> = Default::default();
    wait_for(
        "every modem's request to end as in an uninterrupted run",
        WAIT,
        || {
            latest.clear();
            for r in stack
                .read_to_end::<CarrierState>("carrier-state")
                .unwrap_or_default()
            {
                latest.insert(r.value.modem_id.clone(), r.value);
            }
            (0..modems).all(|m| {
                latest.get(&m.to_string()).is_some_and(|s| {
                    let expected = if m % 2 == 0 {
                        (RequestState::Acked, Some(Carrier::Verizon))
                    } else {
                        (RequestState::Nacked, Some(Carrier::AtAndT))
                    };
                    s.requests.len() == 1 && (s.requests[0].state, s.carrier) == expected
                })
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {} modems seen", latest.len()));
    let text = switchyard_testkit::http_get_text(metrics, "/metrics").unwrap_or_default();
    assert_eq!(metric_sum(&text, "switchyard_dead_letters_total"), 0.0);
    assert!(
        metric_sum(&text, "switchyard_restored_records_total") >= modems as f64,
        "the restarted instance restored every modem's state:\n{text}"
    );
    // Exactly the requests it had not committed came again: none it had (the restart
    // starts at the committed offsets), none lost (duplicates = processed - committed).
    let again = switchyard_testkit::metric_sum_where(
        &text,
        "switchyard_records_in_total{",
        "topic=\"downstream-request\"",
    );
    assert_eq!(
        again,
        modems as f64 - committed as f64,
        "requests read again after the kill (committed before it: {committed})"
    );
    drop((processor, restarted));
}

/// 30% of packets lost each way between the modems and the gateway: every switch still ends
/// acked, by retransmission. One attempt gets through both ways with probability
/// 0.7 x 0.7 = 0.49; the retries (200 ms doubling to 800 ms within a 15 s deadline, about
/// 18 attempts) fail a modem with probability 0.51^18 = 5e-6, so one of twelve with
/// probability 6e-5. Without retransmission all twelve would be acked with probability
/// 0.49^12 = 2e-4: `with_30_percent_packet_loss_and_no_retransmission_switches_are_lost`
/// shows it. (The simulator's drops are pseudo-random, seeded by modem id, so runs are
/// not independent trials: the same draws come again, and only timing moves which packet
/// meets which draw; the odds say how likely a seeding is to pass by chance.)
#[test]
fn with_30_percent_packet_loss_every_switch_ends_acked() {
    let ends = switches_under_30_percent_loss(200, 800);
    let acked = ends.iter().filter(|s| **s == RequestState::Acked).count();
    assert_eq!(acked, LOSSY_FLEET as usize, "every switch acked: {ends:?}");
}

/// The control for the test above: the same loss with the first retransmission due after
/// the deadline, so each Perform is sent once. The loss is real and lands where it
/// matters: switches end unacked (at the deadline), while others get through (all twelve
/// acked has probability 0.49^12 = 2e-4, none 0.51^12 = 3e-4).
#[test]
fn with_30_percent_packet_loss_and_no_retransmission_switches_are_lost() {
    let ends = switches_under_30_percent_loss(60_000, 60_000);
    let acked = ends.iter().filter(|s| **s == RequestState::Acked).count();
    eprintln!("without retransmission {acked} of {LOSSY_FLEET} switches acked");
    // 0 < acked < 12: each single attempt got through or not (none acked: 0.51^12 = 3e-4).
    assert!(
        acked > 0 && acked < LOSSY_FLEET as usize,
        "some switches lost without retransmission, not all: {ends:?}"
    );
    assert!(
        ends.iter().all(|s| matches!(
            s,
            RequestState::Acked | RequestState::TimedOut | RequestState::Undeliverable
        )),
        "every unacked switch ran out of time: {ends:?}"
    );
}

const LOSSY_FLEET: u64 = 12;

/// `LOSSY_FLEET` modems heard through a drop of 30% each way, one switch requested for each
/// with a 15 s deadline, the gateway retransmitting after `retry_initial_ms` doubling to
/// `retry_max_ms`: how each request ended, from the `carrier-state` table read to its end.
fn switches_under_30_percent_loss(retry_initial_ms: u64, retry_max_ms: u64) -> Vec<RequestState> {
    let fleet = LOSSY_FLEET;
    use switchyard_schemas::records::CarrierState;
    let stack = Stack::start().expect("stack");
    let (_carrier_state, _) = stack
        .start_processor(
            "carrier-state",
            "carrier-state",
            &[("SWITCHYARD_DEADLINE_CHECK_MS", "200".into())],
        )
        .expect("carrier-state");
    let gateway = stack
        .start_gateway(&[
            ("SWITCHYARD_RETRY_INITIAL_MS", retry_initial_ms.to_string()),
            ("SWITCHYARD_RETRY_MAX_MS", retry_max_ms.to_string()),
        ])
        .expect("gateway");
    let udp = gateway.udp;
    let first_modem = 5000u64;
    let mut modems = std::process::Command::new(
        switchyard_testkit::workspace_binary("switchyard-modem").expect("built"),
    );
    modems.args([
        "--gateway",
        &udp.to_string(),
        "--fleet",
        &fleet.to_string(),
        "--modem-id",
        &first_modem.to_string(),
        "--rates",
        "0,0,0",
        "--status-secs",
        "1",
        "--drop",
        "0.3",
    ]);
    let _modems = Service::spawn("modems", modems, stack.broker.data_dir()).expect("modem fleet");
    // Every modem has been heard (its status got through at least once).
    wait_for("every modem heard", WAIT, || {
        let seen = stack.modems_in_carrier_state();
        (first_modem..first_modem + fleet).all(|m| seen.contains(&m.to_string()))
    })
    .expect("heard");

    let t = now_us();
    let deadline = t + 15_000_000;
    let requests: Vec<_> = (first_modem..first_modem + fleet)
        .map(|m| {
            let request = CarrierSwitchRequest {
                request_id: format!("{:016x}", 0x10_0000 + m),
                modem_id: m.to_string(),
                carrier: Carrier::Verizon,
                requested_at: t,
                deadline,
                requested_by: Some("loss-test".into()),
            };
            (m.to_string(), request, t / 1000)
        })
        .collect();
    stack
        .produce("downstream-request", &requests)
        .expect("requests");

    let mut ends: Vec<(String, RequestState)> = Vec::new();
    wait_for("every request to end", WAIT, || {
        let mut latest: std::collections::HashMap<String, CarrierState> = Default::default();
        for r in stack
            .read_to_end::<CarrierState>("carrier-state")
            .unwrap_or_default()
        {
            latest.insert(r.value.modem_id.clone(), r.value);
        }
        ends = latest
            .values()
            .flat_map(|s| s.requests.iter().map(|r| (s.modem_id.clone(), r.state)))
            .collect();
        ends.len() == fleet as usize
            && ends
                .iter()
                .all(|(_, s)| !matches!(s, RequestState::Requested | RequestState::Sent))
    })
    .unwrap_or_else(|e| panic!("{e}: {ends:?}"));
    assert!(
        now_us() < deadline + 60_000_000,
        "ended by the deadline, not long after"
    );
    ends.into_iter().map(|(_, state)| state).collect()
}

/// The broker restarts while modems stream readings: the gateway buffers and the projector
/// reconnects by themselves; every reading the gateway accepted reaches `imu` unless counted
/// as dropped in its metrics, and every one on `imu` is projected to `imu-grafana`.
#[test]
fn a_broker_restart_under_load_needs_no_manual_step_and_loses_nothing_uncounted() {
    use std::collections::HashSet;
    let mut stack = Stack::start().expect("stack");
    let switchyard_testkit::Gateway {
        service: mut gateway,
        udp,
        metrics: gateway_metrics,
    } = stack.start_gateway(&[]).expect("gateway");
    let (mut projector, _) = stack
        .start_processor("grafana-projector", "grafana-projector", &[])
        .expect("projector");
    let mut modems = stack
        .start_fleet(udp, 7000, 5, "20,0,0", 5)
        .expect("modems");
    wait_for("the stream to flow", WAIT, || {
        stack
            .consume_at_least::<GrafanaReading>("imu-grafana", 200, Duration::from_secs(2))
            .map(|r| r.len() >= 200)
            .unwrap_or(false)
    })
    .expect("flowing");

    stack.broker.stop();
    std::thread::sleep(Duration::from_secs(5));
    stack.broker.start_again().expect("broker back");
    std::thread::sleep(Duration::from_secs(5));
    modems.kill();

    let metric = |name: &str| {
        metric_sum(
            &switchyard_testkit::http_get_text(gateway_metrics, "/metrics").unwrap_or_default(),
            name,
        )
    };
    wait_for("the gateway's buffer to drain", WAIT, || {
        metric("switchyard_gateway_buffered_records") == 0.0
    })
    .expect("drained");
    let accepted = metric("switchyard_gateway_packets_total{type=\"iot_data\"}");
    let counted_lost = metric("switchyard_gateway_backpressure_total")
        + metric("switchyard_gateway_produce_failures_total");
    let expected = (accepted - counted_lost) as usize;
    assert!(
        expected > 200,
        "{accepted} accepted, {counted_lost} counted lost"
    );

    let mut on_imu: HashSet<(String, i64)> = HashSet::new();
    wait_for("every accepted reading on imu", WAIT, || {
        on_imu = stack
            .read_to_end::<SensorReading>("imu")
            .unwrap_or_default()
            .into_iter()
            .map(|r| (r.value.modem_id, r.value.timestamp / 1000))
            .collect();
        on_imu.len() >= expected
    })
    .unwrap_or_else(|e| panic!("{e}: {} of {expected}", on_imu.len()));
    assert_eq!(on_imu.len(), expected, "nothing lost without being counted");

    let projected = stack
        .projected("imu-grafana", on_imu.len(), WAIT)
        .unwrap_or_else(|e| panic!("every reading projected: {e:#}"));
    assert_eq!(
        projected, on_imu,
        "each projection at its reading's sensor time"
    );
    assert!(
        gateway.is_running() && projector.is_running(),
        "no restart needed"
    );
}

/// SIGKILL anomaly-detector between two halves of 20 devices' series, restart it: each
/// device's spike, 5 readings into the second half, is still reported. A detector that had
/// lost its per-device statistics would still be warming up (30 readings) and miss them.
#[test]
fn anomaly_detector_killed_mid_stream_keeps_its_statistics() {
    use std::collections::BTreeSet;
    use switchyard_schemas::records::{Anomaly, AnomalyKind};
    let stack = Stack::start().expect("stack");
    let start = |env: &[(&str, String)]| -> (Service, SocketAddr) {
        stack
            .start_processor("anomaly-detector", "anomaly-detector", env)
            .expect("healthy")
    };
    // The first instance commits only at its uncommitted bound (10,000, above the 2,000
    // readings): the kill lands behind every commit.
    let (mut detector, first_metrics) =
        start(&[("SWITCHYARD_COMMIT_INTERVAL_MS", "600000".to_string())]);
    let t0 = 1_700_000_000_000_000i64;
    let half = |from: i32, to: i32| -> Vec<(String, SensorReading, i64)> {
        (from..to)
            .flat_map(|i| {
                (0..20).map(move |m| {
                    let modem = format!("9{m:02}");
                    let value = if i == 105 { 900 } else { 20 + (i % 5) };
                    let t = t0 + i64::from(i) * 1_000_000;
                    let r = imu_reading(&modem, value, t);
                    (modem, r, t / 1000)
                })
            })
            .collect()
    };
    stack.produce("imu", &half(0, 100)).expect("first half");
    let processed = || {
        metric_sum(
            &switchyard_testkit::http_get_text(first_metrics, "/metrics").unwrap_or_default(),
            "switchyard_records_in_total{",
        )
    };
    wait_for("the first half processed", WAIT, || processed() >= 2000.0).expect("processed");
    // Killed with the first half processed and none of it committed: it all comes again,
    // and only the restored statistics (which already hold it) keep the detector right.
    let processed = processed();
    detector.kill();
    let bootstrap = stack.broker.bootstrap();
    let committed =
        kafka::committed_total(&bootstrap, "anomaly-detector", &["imu"]).expect("committed");
    assert!(
        (committed as f64) < processed,
        "the kill landed behind the commits: {processed} processed, {committed} committed"
    );
    stack.produce("imu", &half(100, 120)).expect("second half");
    let (restarted, metrics) = start(&[]);
    detector = restarted;
    // Every reading processed (and committed) before the alarms are counted, so a late
    // false alarm fails the test as a missing spike does.
    wait_for("every reading processed", WAIT, || {
        kafka::committed_total(&bootstrap, "anomaly-detector", &["imu"]).unwrap_or(0) >= 2400
    })
    .expect("all processed");
    let text = switchyard_testkit::http_get_text(metrics, "/metrics").unwrap_or_default();
    assert!(
        metric_sum(&text, "switchyard_restored_records_total") > 0.0,
        "the restarted instance restored the statistics:\n{text}"
    );
    // Everything processed and not committed came again: exactly that was read again, and
    // what the restored statistics already held was recognised as seen. Not all of it:
    // the statistics written for the last readings before the kill may not have reached
    // the changelog (one run in twenty: 1,982 of 2,000), and those readings count as new.
    let read_again = switchyard_testkit::metric_sum_where(
        &text,
        "switchyard_records_in_total{",
        "topic=\"imu\"",
    );
    assert_eq!(
        read_again,
        2400.0 - committed as f64,
        "the restart read from the committed offsets (committed {committed})"
    );
    let skipped = switchyard_testkit::metric_sum_where(
        &text,
        "switchyard_processor_events_total{",
        "event=\"skipped_not_newer\"",
    );
    assert!(
        skipped > 0.0 && skipped <= processed - committed as f64,
        "readings recognised as delivered again: {skipped}, at most those processed and not committed (processed {processed}, committed {committed})"
    );
    let expected: BTreeSet<String> = (0..20).map(|m| format!("9{m:02}")).collect();
    let mut spiked: BTreeSet<String> = BTreeSet::new();
    wait_for("every device's spike", WAIT, || {
        spiked = stack
            .read_to_end::<Anomaly>("anomalies")
            .unwrap_or_default()
            .into_iter()
            .filter(|a| {
                a.value.kind == AnomalyKind::Spike && a.value.sensor_time == t0 + 105_000_000
            })
            .map(|a| a.value.modem_id)
            .collect();
        spiked == expected
    })
    .unwrap_or_else(|e| panic!("{e}: {} of 20 spikes: {spiked:?}", spiked.len()));
    // No false alarm: the only spikes and stuck runs are the injected spikes, once each.
    let found: Vec<Anomaly> = stack
        .read_to_end::<Anomaly>("anomalies")
        .expect("anomalies")
        .into_iter()
        .map(|a| a.value)
        .filter(|a| matches!(a.kind, AnomalyKind::Spike | AnomalyKind::Stuck))
        .collect();
    let false_alarms: Vec<&Anomaly> = found
        .iter()
        .filter(|a| a.kind != AnomalyKind::Spike || a.sensor_time != t0 + 105_000_000)
        .collect();
    assert!(false_alarms.is_empty(), "false alarms: {false_alarms:#?}");
    assert_eq!(found.len(), 20, "one spike per device, once");
    drop(detector);
}

//! carrier-state's tasks moving between instances mid-stream, on a real broker: three
//! instances share the three partitions while status reports and switch requests flow; one
//! is stopped with SIGTERM and another killed with SIGKILL, each while it holds processed
//! inputs the group has not committed, and a fourth joins. Every record carries the task that wrote it
//! (`switchyard.writer`), so a task that writes after its partition moved on shows; and the
//! table the instances leave must be the one a single instance makes of the same inputs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use carrier_state::{CarrierStateConfig, CarrierStateProcessor, NAME, OUTPUT};
use switchyard_pipeline::{TestDriver, WRITER_HEADER};
use switchyard_schemas::records::{
    now_us, AckStatus, Carrier, CarrierState, CarrierSwitchAck, CarrierSwitchRequest,
    DeliveryEvent, DownlinkDelivery, IotStatus, IotStatusReport, RequestState,
};
use switchyard_testkit::kafka::{committed_offsets, read_to_end};
use switchyard_testkit::{http_get_text, metric_sum, wait_for, Service, Stack};

const MODEMS: usize = 120;
const WAVES: usize = 14;
/// Long enough that no answered request times out, in the run or in the reference.
const MAX_TIMEOUT_SECS: u64 = 60 * 86_400;
const WAIT: Duration = Duration::from_secs(120);

/// The inputs of one wave, and when it was produced.
#[derive(Default)]
struct Wave {
    at_ms: i64,
    statuses: Vec<IotStatusReport>,
    requests: Vec<CarrierSwitchRequest>,
    deliveries: Vec<DownlinkDelivery>,
    acks: Vec<CarrierSwitchAck>,
}

fn modem(m: usize) -> String {
    format!("35693803564{m:04}")
}

fn request_id(m: usize) -> String {
    format!("{:016x}", 0x5eed_0000 + m)
}

/// Wave `w`: a status report from every modem; in wave 1 every modem is asked to switch
/// (a third with a 3 s deadline nobody answers), in wave 3 the downlinks are sent, in
/// wave 5 the SIMs answer: ACK for one third, NACK for another. In wave 9 the third that
/// never answered is asked again, with a deadline that passes after the last hand-over, so
/// the deadline timer writes while tasks move.
fn produce_wave(stack: &Stack, w: usize, t: i64) -> Wave {
    let ts = now_us() / 1000;
    let mut sent = Wave {
        at_ms: ts,
        ..Wave::default()
    };
    let statuses: Vec<_> = (0..MODEMS)
        .map(|m| IotStatusReport {
            modem_id: modem(m),
            status: [IotStatus::Nominal, IotStatus::Idle, IotStatus::OffNominal][(m + w) % 3],
            received_at: t + (w * 1_000_000 + m) as i64,
            sequence: None,
        })
        .collect();
    send(stack, "iot-status", &statuses, |s| &s.modem_id, ts);
    sent.statuses.extend(statuses);
    if w == 1 {
        let now = now_us();
        let requests: Vec<_> = (0..MODEMS)
            .map(|m| CarrierSwitchRequest {
                request_id: request_id(m),
                modem_id: modem(m),
                carrier: [Carrier::Verizon, Carrier::TMobile][m % 2],
                requested_at: now,
                deadline: if m % 3 == 2 {
                    now + 3_000_000
                } else {
                    now + 30 * 86_400_000_000
                },
                requested_by: Some("rebalance-test".into()),
            })
            .collect();
        send(stack, "downstream-request", &requests, |r| &r.modem_id, ts);
        sent.requests.extend(requests);
    }
    if w == 3 {
        let deliveries: Vec<_> = (0..MODEMS)
            .filter(|m| m % 3 != 2)
            .map(|m| DownlinkDelivery {
                request_id: request_id(m),
                modem_id: modem(m),
                event: DeliveryEvent::Sent,
                attempt: 1,
                address: Some("127.0.0.1:40000".into()),
                reason: None,
                at: t + (w * 1_000_000 + m) as i64,
            })
            .collect();
        send(stack, "downlink-delivery", &deliveries, |d| &d.modem_id, ts);
        sent.deliveries.extend(deliveries);
    }
    if w == 5 {
        let acks: Vec<_> = (0..MODEMS)
            .filter(|m| m % 3 != 2)
            .map(|m| {
                let acked = m % 3 == 0;
                let requested = [Carrier::Verizon, Carrier::TMobile][m % 2];
                CarrierSwitchAck {
                    modem_id: modem(m),
                    request_id: Some(request_id(m)),
                    status: if acked {
                        AckStatus::Ack
                    } else {
                        AckStatus::Nack
                    },
                    carrier: if acked { requested } else { Carrier::AtAndT },
                    received_at: t + (w * 1_000_000 + m) as i64,
                    sequence: None,
                    reason: None,
                }
            })
            .collect();
        send(stack, "carrier-switch-ack", &acks, |a| &a.modem_id, ts);
        sent.acks.extend(acks);
    }
    if w == 9 {
        let now = now_us();
        let requests: Vec<_> = (0..MODEMS)
            .filter(|m| m % 3 == 2)
            .map(|m| CarrierSwitchRequest {
                request_id: request_id(MODEMS + m),
                modem_id: modem(m),
                carrier: Carrier::AtAndT,
                requested_at: now,
                deadline: now + 15_000_000,
                requested_by: Some("rebalance-test".into()),
            })
            .collect();
        send(stack, "downstream-request", &requests, |r| &r.modem_id, ts);
        sent.requests.extend(requests);
    }
    sent
}

fn send<T: serde::Serialize + Clone>(
    stack: &Stack,
    topic: &str,
    values: &[T],
    key: impl Fn(&T) -> &String,
    ts: i64,
) {
    let records: Vec<_> = values
        .iter()
        .map(|v| (key(v).clone(), v.clone(), ts))
        .collect();
    stack.produce(topic, &records).expect("produced");
}

/// What is compared of a state: all of it but the wall-clock times an instance stamps
/// (`updated_at`, and a timed-out request's `completed_at`).
fn comparable(mut state: CarrierState) -> CarrierState {
    state.updated_at = 0;
    for r in &mut state.requests {
        if r.state == RequestState::TimedOut {
            r.completed_at = None;
        }
    }
    state
}

/// The table one instance makes of the same inputs, wave by wave at the times they were
/// produced, then the short deadlines past (not the long ones).
fn single_instance_table(waves: &[Wave]) -> BTreeMap<String, CarrierState> {
    let config = CarrierStateConfig {
        max_request_timeout_secs: MAX_TIMEOUT_SECS,
        ..CarrierStateConfig::default()
    };
    let mut d = TestDriver::new(CarrierStateProcessor::new(config)).expect("topology");
    // The driver's clock starts in the past: it is moved to each wave's time, then on to a
    // day from now.
    let advance_to = |d: &mut TestDriver<CarrierStateProcessor>, ms: i64| {
        let by = (ms - d.wall_clock_ms()).max(0) as u64;
        d.advance_wall_clock(Duration::from_millis(by))
            .expect("deadlines");
    };
    for wave in waves {
        advance_to(&mut d, wave.at_ms);
        let ts = wave.at_ms;
        for s in &wave.statuses {
            d.pipe("iot-status", &s.modem_id, s, ts).expect("status");
        }
        for r in &wave.requests {
            d.pipe("downstream-request", &r.modem_id, r, ts)
                .expect("request");
        }
        for e in &wave.deliveries {
            d.pipe("downlink-delivery", &e.modem_id, e, ts)
                .expect("delivery");
        }
        for a in &wave.acks {
            d.pipe("carrier-switch-ack", &a.modem_id, a, ts)
                .expect("ack");
        }
    }
    advance_to(&mut d, now_us() / 1000 + 86_400_000);
    let mut table = BTreeMap::new();
    for r in d.read_output::<CarrierState>(OUTPUT) {
        table.insert(r.value.modem_id.clone(), comparable(r.value));
    }
    table
}

/// The table on the broker: the last value of each key, read to the end.
fn table_on_kafka(stack: &Stack) -> BTreeMap<String, CarrierState> {
    let mut table = BTreeMap::new();
    for r in stack
        .read_to_end::<CarrierState>(OUTPUT)
        .unwrap_or_default()
    {
        table.insert(r.value.modem_id.clone(), comparable(r.value));
    }
    table
}

fn start(stack: &Stack, instance: &str) -> (Service, SocketAddr) {
    stack
        .start_processor(
            "carrier-state",
            &format!("carrier-state-{instance}"),
            &[
                ("SWITCHYARD_INSTANCE_ID", instance.to_string()),
                // Commits only when partitions move or at shutdown: a kill lands behind them.
                ("SWITCHYARD_COMMIT_INTERVAL_MS", "600000".into()),
                ("SWITCHYARD_DEADLINE_CHECK_MS", "200".into()),
                (
                    "SWITCHYARD_MAX_REQUEST_TIMEOUT_SECS",
                    MAX_TIMEOUT_SECS.to_string(),
                ),
            ],
        )
        .expect("healthy")
}

fn assigned(metrics: SocketAddr) -> f64 {
    http_get_text(metrics, "/metrics")
        .map_or(0.0, |t| metric_sum(&t, "switchyard_assigned_partitions"))
}

/// Partitions of the topics whose records `instance` wrote, with the highest status input
/// offset its table rows show processed (a row's `last_seen` names the status report).
fn status_offsets_processed_by(
    stack: &Stack,
    instance: &str,
    status_offsets: &BTreeMap<i64, (i32, i64)>,
) -> BTreeMap<i32, i64> {
    let mut processed: BTreeMap<i32, i64> = BTreeMap::new();
    for r in stack
        .read_to_end::<CarrierState>(OUTPUT)
        .unwrap_or_default()
    {
        let by_instance = r
            .raw
            .headers
            .get(WRITER_HEADER)
            .is_some_and(|w| w.split('#').next() == Some(instance));
        let status = r.value.last_seen.and_then(|t| status_offsets.get(&t));
        if let (true, Some(&(partition, offset))) = (by_instance, status) {
            let highest = processed.entry(partition).or_insert(offset);
            *highest = (*highest).max(offset);
        }
    }
    processed
}

/// Each status report on the input so far, by its `received_at`: (partition, offset).
fn read_status_offsets(stack: &Stack) -> BTreeMap<i64, (i32, i64)> {
    stack
        .read_to_end::<IotStatusReport>("iot-status")
        .expect("statuses")
        .into_iter()
        .map(|r| (r.value.received_at, (r.raw.partition, r.raw.offset)))
        .collect()
}

/// Status inputs an instance processed that the group's offsets have not passed.
fn behind_commits(processed: &BTreeMap<i32, i64>, committed: &BTreeMap<i32, i64>) -> i64 {
    processed
        .iter()
        .map(|(p, highest)| (highest + 1 - committed.get(p).copied().unwrap_or(0)).max(0))
        .sum()
}

#[test]
fn tasks_move_between_instances_without_late_writes_and_the_table_is_a_single_instances() {
    let stack = Stack::start().expect("stack");
    let bootstrap = stack.broker.bootstrap();
    let t = now_us();
    let mut waves = Vec::new();
    let (mut a, a_metrics) = start(&stack, "a");
    let (mut b, b_metrics) = start(&stack, "b");
    let (c, c_metrics) = start(&stack, "c");
    wait_for("each of three instances to own a task", WAIT, || {
        [a_metrics, b_metrics, c_metrics]
            .iter()
            .all(|m| assigned(*m) > 0.0)
    })
    .expect("three instances share the partitions");

    for w in 0..4 {
        waves.push(produce_wave(&stack, w, t));
    }
    // SIGTERM a at a moment (checked while it is frozen) when it has processed status
    // reports the group's offsets have not passed: its graceful stop must commit them, so
    // the next owners start after them.
    let status_offsets = read_status_offsets(&stack);
    let status = a
        .terminate_when(WAIT, || {
            let processed = status_offsets_processed_by(&stack, "a", &status_offsets);
            let committed = committed_offsets(&bootstrap, NAME, "iot-status").unwrap_or_default();
            behind_commits(&processed, &committed) > 0
        })
        .expect("a stopped with processed inputs behind the commits");
    assert!(status.success(), "a exits 0 on SIGTERM: {status}");
    let processed = status_offsets_processed_by(&stack, "a", &status_offsets);
    let committed = committed_offsets(&bootstrap, NAME, "iot-status").expect("committed");
    assert_eq!(
        behind_commits(&processed, &committed),
        0,
        "a's clean stop committed what it processed: processed {processed:?}, committed {committed:?}"
    );
    for w in 4..8 {
        waves.push(produce_wave(&stack, w, t));
    }
    wait_for("b and c to own every task", WAIT, || {
        assigned(b_metrics) + assigned(c_metrics) >= 3.0
    })
    .expect("a's tasks moved");

    // SIGKILL b at a moment (checked while it is frozen) when it has processed status
    // reports the group's offsets have not passed: they are processed again by the next
    // owner, whose store comes from the changelog b was writing.
    let status_offsets = read_status_offsets(&stack);
    b.kill_when(WAIT, || {
        let processed = status_offsets_processed_by(&stack, "b", &status_offsets);
        let committed = committed_offsets(&bootstrap, NAME, "iot-status").unwrap_or_default();
        behind_commits(&processed, &committed) > 0
    })
    .expect("b killed with processed inputs behind the commits");
    let processed = status_offsets_processed_by(&stack, "b", &status_offsets);
    let committed = committed_offsets(&bootstrap, NAME, "iot-status").expect("committed");
    let behind = behind_commits(&processed, &committed);
    eprintln!("b killed: processed {processed:?}, committed {committed:?}");
    assert!(behind > 0, "the kill landed behind the commits");

    waves.push(produce_wave(&stack, 8, t));
    // The first short deadlines have passed before the second requests come (so they end
    // timed out, not superseded, as in the single instance, whose clock follows the waves).
    wait_for("the first unanswered requests to time out", WAIT, || {
        let table = table_on_kafka(&stack);
        (0..MODEMS).filter(|m| m % 3 == 2).all(|m| {
            table
                .get(&modem(m))
                .is_some_and(|s| s.requests.iter().any(|r| r.state == RequestState::TimedOut))
        })
    })
    .expect("timed out");
    for w in 9..11 {
        waves.push(produce_wave(&stack, w, t));
    }
    let (d, d_metrics) = start(&stack, "d");
    wait_for("d to own a task", WAIT, || assigned(d_metrics) > 0.0).expect("d joined");
    for w in 11..WAVES {
        waves.push(produce_wave(&stack, w, t));
    }

    // Every input has its output: the table reaches the single instance's, read to the end.
    let expected = single_instance_table(&waves);
    assert_eq!(expected.len(), MODEMS);
    let reached = wait_for("the table to be a single instance's", WAIT, || {
        table_on_kafka(&stack) == expected
    });
    if reached.is_err() {
        let got = table_on_kafka(&stack);
        let differ: Vec<_> = expected
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(v))
            .take(3)
            .map(|(k, v)| format!("{k}: expected {v:?}, got {:?}", got.get(k)))
            .collect();
        panic!(
            "{} of {MODEMS} modems differ, e.g.\n{}",
            differ.len(),
            differ.join("\n")
        );
    }
    // Every status report has its row: each is newer than the modem's last, so each makes
    // a row naming it (`last_seen`); a table that only ends right could hide lost ones.
    let rows: BTreeSet<(String, i64)> = stack
        .read_to_end::<CarrierState>(OUTPUT)
        .expect("table")
        .into_iter()
        .filter_map(|r| Some((r.value.modem_id, r.value.last_seen?)))
        .collect();
    let without: Vec<_> = waves
        .iter()
        .flat_map(|w| &w.statuses)
        .filter(|s| !rows.contains(&(s.modem_id.clone(), s.received_at)))
        .map(|s| (s.modem_id.clone(), s.received_at))
        .collect();
    assert!(
        without.is_empty(),
        "{} status reports without a row, e.g. {:?}",
        without.len(),
        without.first()
    );
    let restored: f64 = [c_metrics, d_metrics]
        .iter()
        .map(|m| {
            http_get_text(*m, "/metrics")
                .map_or(0.0, |t| metric_sum(&t, "switchyard_restored_records_total"))
        })
        .sum();
    assert!(restored > 0.0, "the new owners restored the stores");

    // No task wrote after its partition moved on: in each partition of the table and of every
    // changelog, each writer's records run together, and every record names its writer.
    let changelogs = ["modems", "early-acks", "early-deliveries", "pending"]
        .map(|store| format!("{NAME}-{store}-changelog"));
    let mut writers = BTreeSet::new();
    for topic in std::iter::once(OUTPUT.to_string()).chain(changelogs) {
        let records = read_to_end(&bootstrap, &topic).expect("read");
        let mut runs: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        for r in &records {
            let writer = r
                .headers
                .get(WRITER_HEADER)
                .unwrap_or_else(|| panic!("{topic}[{}]@{}: no writer", r.partition, r.offset));
            let run = runs.entry(r.partition).or_default();
            if run.last() != Some(writer) {
                assert!(
                    !run.contains(writer),
                    "{topic}[{}]@{}: {writer} wrote again after {} had the partition",
                    r.partition,
                    r.offset,
                    run.last().map_or("", String::as_str)
                );
                run.push(writer.clone());
            }
            writers.insert(writer.split('#').next().unwrap_or_default().to_string());
        }
    }
    assert_eq!(
        writers,
        ["a", "b", "c", "d"].map(String::from).into(),
        "every instance wrote"
    );
    drop((b, c, d));
}

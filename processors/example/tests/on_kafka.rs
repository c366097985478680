//! The framework on a real broker and registry, through the example processor's binary.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use reading_counter::{NAME, OUTPUT};
use switchyard_pipeline::engine::headers;
use switchyard_schemas::records::{ReadingCount, SensorReading};
use switchyard_testkit::kafka::{self, produce};
use switchyard_testkit::{http_get_text, metric_sum, wait_for, Service, Stack};

/// Not a divisor of the 1,500 readings the SIGKILL test sends first: with commits only at
/// the bound, the last of them stay uncommitted, so the kill always lands with commits behind.
const MAX_UNCOMMITTED: usize = 120;
const BASE_US: i64 = 1_700_000_000_000_000;
const SENSORS: [&str; 3] = ["imu", "gyro", "temp"];

/// Readings `from..to`: modem `m<i % modems>`, sensor by turn, sensor time unique per reading.
fn produce_readings(
    stack: &Stack,
    from: usize,
    to: usize,
    modems: usize,
) -> Vec<(String, String, i64)> {
    let mut sent = Vec::new();
    for sensor in SENSORS {
        let mut records = Vec::new();
        for i in (from..to).filter(|i| SENSORS[i % 3] == sensor) {
            let modem = format!("m{}", i % modems);
            let t = BASE_US + i as i64 * 1_000;
            let reading = SensorReading {
                modem_id: modem.clone(),
                device_id: 1,
                sensor: sensor.into(),
                timestamp: t,
                value: Some(i as i32),
                data: (i as i32).to_be_bytes().to_vec(),
                received_at: t,
                sequence: None,
            };
            records.push((modem.clone(), reading, t / 1000));
            sent.push((modem, sensor.to_string(), t));
        }
        stack.produce(sensor, &records).expect("produced");
    }
    sent
}

/// Every output, read to the end of the topic once at least `at_least` arrived, so extra
/// records show as well as missing ones. On a shortfall, the processors' and the broker's
/// logs are shown.
/// Every output, read to the end once each of `sent` has one (duplicates of earlier inputs
/// come before later inputs' outputs in each partition, so they are all there too).
fn outputs_of(
    stack: &Stack,
    sent: &[(String, String, i64)],
    services: &[&Service],
) -> Vec<ReadingCount> {
    let inputs: BTreeSet<&(String, String, i64)> = sent.iter().collect();
    let arrived = wait_for(
        "an output for every input",
        Duration::from_secs(180),
        || {
            stack.read_to_end::<ReadingCount>(OUTPUT).is_ok_and(|r| {
                let covered: BTreeSet<(String, String, i64)> = r
                    .iter()
                    .map(|o| {
                        (
                            o.value.modem_id.clone(),
                            o.value.sensor.clone(),
                            o.value.last_sensor_time,
                        )
                    })
                    .collect();
                inputs.iter().all(|i| covered.contains(*i))
            })
        },
    );
    if arrived.is_err() {
        let logs: Vec<String> = services.iter().map(|s| s.log_text()).collect();
        panic!(
            "not every input of {} has an output\n--- processors:\n{}\n--- broker:\n{}",
            sent.len(),
            logs.join("\n---\n"),
            stack.broker.log_text()
        );
    }
    // Read once every input is committed, so outputs still landing count too.
    let all = stack
        .read_once_committed::<ReadingCount>(NAME, &SENSORS, OUTPUT, Duration::from_secs(180))
        .expect("read outputs");
    all.into_iter().map(|r| r.value).collect()
}

fn outputs(stack: &Stack, sent: &[(String, String, i64)]) -> Vec<ReadingCount> {
    outputs_of(stack, sent, &[])
}

fn start_counter(stack: &Stack, name: &str) -> (Service, SocketAddr) {
    start_counter_committing_every(stack, name, 50)
}
fn start_counter_committing_every(
    stack: &Stack,
    name: &str,
    commit_interval_ms: u64,
) -> (Service, SocketAddr) {
    stack
        .start_processor(
            "reading-counter",
            name,
            &[
                ("SWITCHYARD_MAX_UNCOMMITTED", MAX_UNCOMMITTED.to_string()),
                (
                    "SWITCHYARD_COMMIT_INTERVAL_MS",
                    commit_interval_ms.to_string(),
                ),
            ],
        )
        .expect("reading-counter healthy")
}

/// How many partitions the instance whose metrics are at `metrics` owns.
fn assigned_partitions(metrics: SocketAddr) -> f64 {
    metric_sum(
        &http_get_text(metrics, "/metrics").unwrap_or_default(),
        "switchyard_assigned_partitions",
    )
}

/// Every input has an output, duplicates stay within the uncommitted window, and counts
/// continue from the restored store.
fn check(sent: &[(String, String, i64)], got: &[ReadingCount]) {
    let inputs: BTreeSet<(String, String, i64)> = sent.iter().cloned().collect();
    let outputs: BTreeSet<(String, String, i64)> = got
        .iter()
        .map(|o| (o.modem_id.clone(), o.sensor.clone(), o.last_sensor_time))
        .collect();
    let missing: Vec<_> = inputs.difference(&outputs).take(5).collect();
    assert!(
        missing.is_empty(),
        "inputs without an output, e.g. {missing:?}"
    );
    let duplicates = got.len() - inputs.len();
    assert!(
        duplicates <= MAX_UNCOMMITTED,
        "{duplicates} duplicates exceed the uncommitted window of {MAX_UNCOMMITTED}"
    );
    let mut per_key: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (m, s, _) in sent {
        *per_key.entry((m.clone(), s.clone())).or_default() += 1;
    }
    for ((m, s), n) in per_key {
        let max = got
            .iter()
            .filter(|o| o.modem_id == m && o.sensor == s)
            .map(|o| o.count)
            .max()
            .unwrap_or(0) as usize;
        assert!(
            max >= n,
            "{m}/{s}: count reached {max} for {n} readings: the store was not restored"
        );
        assert!(
            max <= n + duplicates,
            "{m}/{s}: count {max} for {n} readings and {duplicates} duplicates"
        );
    }
}

#[test]
fn every_input_has_its_output_across_a_sigkill() {
    let stack = Stack::start().expect("stack");
    let mut sent = produce_readings(&stack, 0, 1500, 30);
    // Commits only at the uncommitted bound, so the group's offsets trail what it processed.
    let (mut first, _) = start_counter_committing_every(&stack, "counter-1", 60_000);
    // Kill it without warning once it is into the stream and its committed offsets are
    // behind what it has processed (outputs seen), checked while it is frozen so it cannot
    // commit between the check and the kill: the kill lands inside the window that
    // at-least-once has to cover.
    let bootstrap = stack.broker.bootstrap();
    first
        .kill_when(Duration::from_secs(120), || {
            let processed = kafka::read_to_end(&bootstrap, OUTPUT).map_or(0, |r| r.len());
            let committed = kafka::committed_total(&bootstrap, NAME, &SENSORS).unwrap_or(0);
            processed >= 300 && (committed as usize) < processed
        })
        .expect("a kill inside the uncommitted window");
    // What survived the kill: the outputs the broker has, and the group's offsets. The
    // inputs between the two are processed again, so they are the least duplicates there
    // can be; showing it above zero proves the kill landed behind the commits.
    let survived = kafka::read_to_end(&bootstrap, OUTPUT).map_or(0, |r| r.len());
    let committed = kafka::committed_total(&bootstrap, NAME, &SENSORS).expect("committed") as usize;
    eprintln!("killed with {survived} outputs and {committed} committed");
    let behind = survived
        .checked_sub(committed)
        .filter(|b| *b > 0)
        .expect("the kill left processed inputs behind the committed offsets");
    // ...let more arrive while it is down, and start a new instance right away, as an
    // orchestrator would.
    sent.extend(produce_readings(&stack, 1500, 3000, 30));
    let (second, metrics) = start_counter(&stack, "counter-2");
    let got = outputs_of(&stack, &sent, &[&first, &second]);
    check(&sent, &got);
    let duplicates = got.len() - sent.len();
    assert!(
        duplicates >= behind,
        "{duplicates} duplicates, but {behind} processed inputs were behind the committed offsets at the kill"
    );
    let text = http_get_text(metrics, "/metrics").expect("metrics");
    assert!(
        metric_sum(&text, "switchyard_restored_records_total") > 0.0,
        "the second instance restored its store:\n{text}"
    );
}

#[test]
fn sigterm_commits_so_a_restart_reprocesses_nothing() {
    let stack = Stack::start().expect("stack");
    let mut sent = produce_readings(&stack, 0, 600, 10);
    let (mut first, _) = start_counter(&stack, "counter-1");
    let _ = outputs(&stack, &sent);
    let status = first.terminate(Duration::from_secs(30)).expect("exits");
    assert!(status.success(), "graceful shutdown exits 0: {status}");
    assert!(
        first.log_text().contains("stopped cleanly"),
        "{}",
        first.log_text()
    );
    // The store's changelog is Avro of the store's registered schema: `switchyard tail`
    // decodes it through the registry like any topic, and its last value per key is the count.
    let tailed = std::process::Command::new(
        switchyard_testkit::workspace_binary("switchyard").expect("built"),
    )
    .args(["tail", "reading-counter-counts-changelog", "--exit-at-end"])
    .envs(stack.env())
    .output()
    .expect("switchyard runs");
    assert!(tailed.status.success(), "{tailed:?}");
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for line in String::from_utf8_lossy(&tailed.stdout).lines() {
        let record: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        assert!(record.get("error").is_none(), "{record}");
        let count = record["value"]
            .as_i64()
            .unwrap_or_else(|| panic!("a long: {record}"));
        last.insert(record["key"].as_str().expect("key").to_string(), count);
    }
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for (modem, sensor, _) in &sent {
        *expected.entry(format!("{modem}/{sensor}")).or_default() += 1;
    }
    assert_eq!(last, expected, "the changelog's latest count per key");

    let (_second, _) = start_counter(&stack, "counter-2");
    sent.extend(produce_readings(&stack, 600, 900, 10));
    let got = outputs(&stack, &sent);
    assert_eq!(got.len(), sent.len(), "no record was processed twice");
    check(&sent, &got);
}

#[test]
fn two_instances_share_the_partitions() {
    let stack = Stack::start().expect("stack");
    let (_a, metrics_a) = start_counter(&stack, "counter-a");
    let (_b, metrics_b) = start_counter(&stack, "counter-b");
    wait_for(
        "both instances to own partitions",
        Duration::from_secs(60),
        || {
            assigned_partitions(metrics_a) >= 1.0
                && assigned_partitions(metrics_b) >= 1.0
                && assigned_partitions(metrics_a) + assigned_partitions(metrics_b) == 3.0
        },
    )
    .expect("partitions shared");
    let sent = produce_readings(&stack, 0, 1500, 30);
    let got = outputs(&stack, &sent);
    check(&sent, &got);
    let handled = |addr| {
        metric_sum(
            &http_get_text(addr, "/metrics").unwrap_or_default(),
            "switchyard_records_in_total",
        )
    };
    assert!(
        handled(metrics_a) > 0.0 && handled(metrics_b) > 0.0,
        "both instances processed records"
    );
    assert_eq!(
        handled(metrics_a) + handled(metrics_b),
        sent.len() as f64,
        "each record was handled once"
    );
}

#[test]
fn a_poison_record_is_dead_lettered_and_processing_continues() {
    let stack = Stack::start().expect("stack");
    let (_counter, metrics) = start_counter(&stack, "counter");
    let mut sent = produce_readings(&stack, 0, 3, 1);
    produce(
        &stack.broker.bootstrap(),
        "imu",
        &[("m0".into(), b"not avro".to_vec(), 1_700_000_000_000)],
    )
    .expect("poison");
    sent.extend(produce_readings(&stack, 3, 6, 1));
    let got = outputs(&stack, &sent);
    check(&sent, &got);

    // Every input is committed (`outputs`), so its dead letter is there: read to the end.
    let dead = kafka::read_to_end(&stack.broker.bootstrap(), &format!("{NAME}-dlq")).expect("dlq");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].payload.as_deref(),
        Some(&b"not avro"[..]),
        "the record, as it was"
    );
    assert_eq!(dead[0].key.as_deref(), Some(&b"m0"[..]));
    assert_eq!(dead[0].headers[headers::TOPIC], "imu");
    assert_eq!(dead[0].headers[headers::PROCESSOR], NAME);
    assert_eq!(dead[0].headers[headers::REASON], "undecodable");
    assert!(
        dead[0].headers.contains_key(headers::OFFSET)
            && dead[0].headers.contains_key(headers::PARTITION)
    );
    assert!(
        dead[0].headers[headers::ERROR].contains("magic"),
        "{:?}",
        dead[0].headers
    );
    wait_for(
        "the dead letter to be counted",
        Duration::from_secs(10),
        || {
            metric_sum(
                &http_get_text(metrics, "/metrics").unwrap_or_default(),
                "switchyard_dead_letters_total{",
            ) == 1.0
        },
    )
    .expect("dead letter counted");

    // The data team's way back: list the dead letters, replay them to their topic. The
    // replayed record is the input as it was, without the dead-letter headers; still bad,
    // it is dead-lettered again, which shows it went round.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(
            switchyard_testkit::workspace_binary("switchyard").expect("built"),
        )
        .args(args)
        .envs(stack.env())
        .output()
        .expect("switchyard runs");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let listed = cli(&["dlq", "list", NAME]);
    let line: serde_json::Value =
        serde_json::from_str(listed.lines().next().expect("one line")).expect("JSON");
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert_eq!(
        (
            line["topic"].as_str(),
            line["reason"].as_str(),
            line["key"].as_str()
        ),
        (Some("imu"), Some("undecodable"), Some("m0")),
        "{line}"
    );
    let replayed = cli(&["dlq", "replay", NAME]);
    assert!(
        replayed.contains("replayed 1 dead letter(s) (imu: 1)"),
        "{replayed}"
    );
    assert!(replayed.contains("--from-offset 1"), "{replayed}");
    let imu = kafka::read_to_end(&stack.broker.bootstrap(), "imu").expect("imu");
    let copies: Vec<_> = imu
        .iter()
        .filter(|r| r.payload.as_deref() == Some(&b"not avro"[..]))
        .collect();
    assert_eq!(copies.len(), 2, "the original and the replayed copy");
    assert_eq!(copies[1].key.as_deref(), Some(&b"m0"[..]));
    assert_eq!(copies[1].timestamp_ms, Some(1_700_000_000_000));
    assert!(
        copies[1]
            .headers
            .keys()
            .all(|k| !headers::is_dead_letter_header(k)),
        "{:?}",
        copies[1].headers
    );
    wait_for(
        "the replayed record dead-lettered again",
        Duration::from_secs(60),
        || {
            kafka::read_to_end(&stack.broker.bootstrap(), &format!("{NAME}-dlq"))
                .is_ok_and(|d| d.len() == 2)
        },
    )
    .expect("replayed and processed again");
}

/// Issue 26 (4): the writer schema of an input record is looked up in the registry on the
/// processing loop, and the look-up retried without end: with the registry down, SIGTERM did
/// nothing and `/health` stayed 200. Now the wait says why in `/health` (503) and races the
/// shutdown.
#[test]
fn with_the_registry_down_an_unknown_schema_makes_the_runner_not_ready_and_sigterm_still_stops_it()
{
    let mut stack = Stack::start().expect("stack");
    let (mut counter, metrics) = start_counter(&stack, "reading-counter");
    stack.registry.service.kill();
    // A reading framed with a schema id the runner has never met: it must ask the registry.
    let framed = framed_with_unknown_schema(b"not read before the schema is known");
    produce(
        &stack.broker.bootstrap(),
        "imu",
        &[("m1".to_string(), framed, BASE_US / 1000)],
    )
    .expect("produce");
    stops_on_sigterm_once_health_says(&mut counter, metrics, "waiting for writer schema 999");
}

/// `body` framed as Confluent's wire format with schema id 999, which no test registers.
fn framed_with_unknown_schema(body: &[u8]) -> Vec<u8> {
    let mut framed = vec![0u8];
    framed.extend_from_slice(&999i32.to_be_bytes());
    framed.extend_from_slice(body);
    framed
}

/// Wait until the runner's `/health` contains `reason`, then SIGTERM it: it must exit
/// successfully within 20 s.
fn stops_on_sigterm_once_health_says(runner: &mut Service, metrics: SocketAddr, reason: &str) {
    let mut said = String::new();
    wait_for(
        &format!("/health to say {reason:?}"),
        Duration::from_secs(60),
        || {
            said = http_get_text(metrics, "/health").unwrap_or_default();
            said.contains(reason)
        },
    )
    .unwrap_or_else(|e| panic!("{e}: /health said {said:?}"));
    let status = runner
        .terminate(Duration::from_secs(20))
        .expect("SIGTERM stops the runner while it waits for the registry");
    assert!(status.success(), "{status}");
}

/// Issue 26 (5): a restore read each store partition and looked up its writers with no race
/// against shutdown, so SIGTERM did nothing until it ended. Here a restore cannot end: the
/// changelog holds a value framed with a writer schema the runner has never met, and the
/// registry is down. The restore must say so in `/health` and still stop on SIGTERM.
#[test]
fn a_restore_waiting_for_the_registry_still_stops_on_sigterm() {
    let mut stack = Stack::start().expect("stack");
    let (mut first, first_metrics) = start_counter(&stack, "counter-1");
    let (mut second, second_metrics) = start_counter(&stack, "counter-2");
    wait_for(
        "the second instance to own partitions",
        Duration::from_secs(60),
        || assigned_partitions(second_metrics) >= 1.0,
    )
    .expect("partitions shared");
    stack.registry.service.kill();
    // A value in every changelog partition framed with schema id 999, which no input record
    // carries: only a restore meets it.
    let changelog = format!("{NAME}-counts-changelog");
    let framed = framed_with_unknown_schema(b"a value of a schema the runner has to fetch");
    let unknown: Vec<_> = (0..64)
        .map(|k| (format!("m{k}/imu"), framed.clone(), BASE_US / 1000))
        .collect();
    produce(&stack.broker.bootstrap(), &changelog, &unknown).expect("produce");
    let partitions: BTreeSet<i32> = kafka::read_to_end(&stack.broker.bootstrap(), &changelog)
        .expect("changelog")
        .iter()
        .filter(|r| r.payload.as_deref() == Some(framed.as_slice()))
        .map(|r| r.partition)
        .collect();
    assert_eq!(
        partitions.len(),
        kafka::partition_count(&stack.broker.bootstrap(), &changelog).expect("partitions"),
        "every changelog partition holds a value of the unknown schema"
    );

    // The second instance leaves: the first takes its partitions and restores them.
    let status = second
        .terminate(Duration::from_secs(30))
        .expect("the second instance stops");
    assert!(status.success(), "{status}");
    stops_on_sigterm_once_health_says(&mut first, first_metrics, "waiting for writer schema 999");
}

//! The runner on a real broker (Apache Kafka) and registry, run in this process so the test can see
//! which instance handled what and when: rebalances, refused records, a stalled broker.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard_kafka::clients;

use switchyard_pipeline::{
    run_until, Context, Guarantee, ProcessError, Processor, Record, RunnerConfig, RunnerError,
    Timer, TimerKind, Topology,
};
use switchyard_schemas::records::{ReadingCount, SensorReading};
use switchyard_schemas::Catalog;
use switchyard_testkit::kafka::{committed_total, read_to_end, set_topic_config};
use switchyard_testkit::{
    free_port, http_get_status, http_get_text, imu_reading, metric_sum, wait_for, Stack,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The catalog names this processor's dead-letter topic.
const NAME: &str = "reading-counter";
const INPUT: &str = "imu";
const OUTPUT: &str = "reading-counts";
const STORE: &str = "counts";
/// A reading with this value makes an output too large for any broker to take (the
/// producer refuses it before sending).
const POISON: i32 = -1;
/// A reading with this value makes an output of 200 kB: the producer sends it, a broker
/// whose output topic takes at most 100 kB refuses it.
const POISON_AT_BROKER: i32 = -2;

/// What an instance did: (instance, task partition, when, was it a punctuation).
type Log = Arc<Mutex<Vec<(&'static str, i32, Instant, bool)>>>;

/// Counts readings per modem (outputs carry the instance in `sensor`); with `ticks`, every
/// task also sends a record on a 50 ms wall-clock timer.
struct Probe {
    instance: &'static str,
    ticks: bool,
    log: Log,
}

impl Probe {
    /// A probe without timer ticks, its log unread.
    fn plain(instance: &'static str) -> Probe {
        Probe {
            instance,
            ticks: false,
            log: Arc::default(),
        }
    }

    fn note(&self, partition: i32, tick: bool) {
        if let Ok(mut log) = self.log.lock() {
            log.push((self.instance, partition, Instant::now(), tick));
        }
    }
}

impl Processor for Probe {
    fn topology(&self) -> Topology {
        let t = Topology::new(NAME)
            .input::<SensorReading>(INPUT)
            .output::<ReadingCount>(OUTPUT)
            .store::<i64>(STORE);
        if self.ticks {
            t.timer("tick", TimerKind::WallClock, Duration::from_millis(50))
        } else {
            t
        }
    }

    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let reading: SensorReading = record.value()?;
        self.note(ctx.partition(), false);
        let counts = ctx.store(STORE)?;
        let count = counts.get::<i64>(&reading.modem_id)?.unwrap_or(0) + 1;
        counts.put(&reading.modem_id, &count)?;
        let modem_id = match reading.value {
            Some(POISON) => "x".repeat(2 << 20),
            Some(POISON_AT_BROKER) => "x".repeat(200_000),
            _ => reading.modem_id.clone(),
        };
        let out = ReadingCount {
            modem_id,
            sensor: self.instance.into(),
            count,
            last_sensor_time: reading.timestamp,
        };
        ctx.send(OUTPUT, &reading.modem_id, &out, None)
    }

    fn punctuate(&mut self, timer: &Timer, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        self.note(ctx.partition(), true);
        let out = ReadingCount {
            modem_id: format!("tick-{}", ctx.partition()),
            sensor: self.instance.into(),
            count: 0,
            last_sensor_time: timer.time_ms,
        };
        ctx.send(OUTPUT, &out.modem_id.clone(), &out, None)
    }
}

struct Instance {
    stop: oneshot::Sender<()>,
    done: JoinHandle<Result<(), RunnerError>>,
    metrics: SocketAddr,
}

fn start(stack: &Stack, probe: Probe, tune: impl FnOnce(&mut RunnerConfig)) -> Instance {
    let metrics: SocketAddr = ([127, 0, 0, 1], free_port().expect("port")).into();
    let mut config = RunnerConfig::new(&stack.broker.bootstrap(), &stack.registry.url());
    config.metrics_listen = Some(metrics);
    config.commit_interval_ms = 50;
    tune(&mut config);
    let (stop, stopped) = oneshot::channel::<()>();
    let catalog = Catalog::embedded().expect("catalog");
    let done = tokio::spawn(run_until(probe, catalog, config, async {
        let _ = stopped.await;
    }));
    Instance {
        stop,
        done,
        metrics,
    }
}

impl Instance {
    /// Stop it and return how long it took to end, and how it ended.
    async fn stop(self) -> (Duration, Result<(), RunnerError>) {
        let asked = Instant::now();
        let _ = self.stop.send(());
        let ended = tokio::time::timeout(Duration::from_secs(60), self.done)
            .await
            .expect("the runner ended within a minute of being asked to")
            .expect("runner task");
        (asked.elapsed(), ended)
    }

    fn metric(&self, prefix: &str) -> f64 {
        metric_at(self.metrics, prefix)
    }
}

/// The sum of the metrics starting with `prefix` that the instance at `metrics` serves.
fn metric_at(metrics: SocketAddr, prefix: &str) -> f64 {
    metric_sum(
        &http_get_text(metrics, "/metrics").unwrap_or_default(),
        prefix,
    )
}

fn base_us() -> i64 {
    static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| switchyard_schemas::records::now_us() - 3_600_000_000)
}

fn readings(modems: usize, from: usize, to: usize) -> Vec<(String, SensorReading, i64)> {
    (from..to)
        .map(|i| {
            let modem = format!("m{}", i % modems);
            // An hour ago, not years: under exactly-once a transaction marker (stamped now)
            // rolls a segment of older records, which retention (seven days) then deletes.
            let t = base_us() + i as i64 * 1000;
            (modem.clone(), imu_reading(&modem, i as i32, t), t / 1000)
        })
        .collect()
}

async fn produce_inputs(stack: &Arc<Stack>, records: Vec<(String, SensorReading, i64)>) {
    let s = Arc::clone(stack);
    blocking(move || s.produce(INPUT, &records))
        .await
        .expect("produce");
}

/// Blocking waits off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebalance_hands_tasks_over_without_late_output_or_duplicates() {
    let stack = Arc::new(blocking(Stack::start).await.expect("stack"));
    let log: Log = Arc::default();
    const MODEMS: usize = 30;
    let s = Arc::clone(&stack);
    blocking(move || s.produce(INPUT, &readings(MODEMS, 0, 600)))
        .await
        .expect("produce");
    let probe = |instance| Probe {
        instance,
        ticks: true,
        log: Arc::clone(&log),
    };
    let a = start(&stack, probe("a"), |_| {});
    let seen = |log: &Log, instance: &str, tick: bool| {
        log.lock()
            .map(|l| l.iter().filter(|e| e.0 == instance && e.3 == tick).count())
            .unwrap_or(0)
    };
    let l = Arc::clone(&log);
    blocking(move || {
        wait_for("a processed every reading", Duration::from_secs(90), || {
            seen(&l, "a", false) >= 600
        })
    })
    .await
    .expect("a processed");
    // When a's first revocation completed (it counts it at the end of the revoke callback),
    // seen within a few milliseconds: from then on a may not handle the tasks b takes.
    let a_metrics = a.metrics;
    let a_revoked = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if metric_at(a_metrics, "switchyard_revocations_total") >= 1.0 {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    });
    // The input is idle now: an instance that applied revocations only when a record
    // arrives would go on punctuating the partitions it lost.
    let b = start(&stack, probe("b"), |_| {});
    let l = Arc::clone(&log);
    blocking(move || {
        wait_for("b owns a task", Duration::from_secs(90), || {
            seen(&l, "b", true) > 0
        })
    })
    .await
    .expect("b joined");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = Arc::clone(&stack);
    blocking(move || s.produce(INPUT, &readings(MODEMS, 600, 1200)))
        .await
        .expect("produce");
    let l = Arc::clone(&log);
    blocking(move || {
        wait_for("every reading processed", Duration::from_secs(90), || {
            seen(&l, "a", false) + seen(&l, "b", false) >= 1200
        })
    })
    .await
    .expect("all processed");
    let a_revoked = blocking(move || a_revoked.join().expect("watcher"))
        .await
        .expect("b's joining took tasks from a");
    let a_stopping = Instant::now();
    let (_, a_ended) = a.stop().await;
    let (_, b_ended) = b.stop().await;
    a_ended.expect("a stopped cleanly");
    b_ended.expect("b stopped cleanly");

    // No record of a task from the instance that lost it, from its revocation on (the
    // window a punctuation after the revoke callback would fall in, before b even restored
    // the task) to the end of b's ownership while a ran.
    let log = log.lock().expect("log").clone();
    let b_tasks: BTreeSet<i32> = log
        .iter()
        .filter(|e| e.0 == "b" && e.2 < a_stopping)
        .map(|e| e.1)
        .collect();
    assert!(!b_tasks.is_empty());
    for p in &b_tasks {
        let late: Vec<_> = log
            .iter()
            .filter(|e| e.0 == "a" && e.1 == *p && e.2 > a_revoked && e.2 < a_stopping)
            .collect();
        assert!(
            late.is_empty(),
            "a handled task {p} {} times after losing it to b (e.g. punctuation: {})",
            late.len(),
            late.iter().any(|e| e.3)
        );
    }
    // The table converged: each modem's count reached its number of readings, and no
    // reading was processed twice (a graceful hand-over commits before the task moves).
    let s = Arc::clone(&stack);
    let outputs = blocking(move || s.read_to_end::<ReadingCount>(OUTPUT))
        .await
        .expect("read outputs");
    let counts: Vec<&ReadingCount> = outputs
        .iter()
        .map(|r| &r.value)
        .filter(|o| !o.modem_id.starts_with("tick-"))
        .collect();
    assert_eq!(counts.len(), 1200, "one output per reading, no duplicate");
    // The last value per key, as a compacted table keeps it (a modem's outputs are all in
    // its partition, read in order): a stale write landing last would show here.
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    for o in &counts {
        last.insert(o.modem_id.as_str(), o.count);
    }
    assert_eq!(last.len(), MODEMS);
    for (modem, count) in last {
        assert_eq!(count, (1200 / MODEMS) as i64, "{modem}'s last count");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_output_dead_letters_its_input_and_processing_goes_on() {
    let stack = Arc::new(blocking(Stack::start).await.expect("stack"));
    let mut records = readings(1, 0, 10);
    records[4].1.value = Some(POISON);
    produce_inputs(&stack, records).await;
    let instance = start(&stack, Probe::plain("a"), |_| {});
    let bootstrap = stack.broker.bootstrap();
    blocking(move || {
        wait_for("every offset committed", Duration::from_secs(90), || {
            committed_total(&bootstrap, NAME, &[INPUT]).unwrap_or(0) >= 10
        })
    })
    .await
    .expect("the runner went past the refused record");
    let text = http_get_text(instance.metrics, "/metrics").expect("metrics");
    let refused =
        switchyard_testkit::metric_sum_where(&text, "switchyard_dead_letters_total", "\"refused\"");
    assert_eq!(refused, 1.0, "{text}");
    assert!(instance.metric("switchyard_produce_failures_total") >= 1.0);
    let (_, ended) = instance.stop().await;
    ended.expect("stopped cleanly");

    let s = Arc::clone(&stack);
    let outputs = blocking(move || s.read_to_end::<ReadingCount>(OUTPUT))
        .await
        .expect("outputs");
    assert_eq!(outputs.len(), 9, "every other reading has its output");
    let bootstrap = stack.broker.bootstrap();
    let dead = blocking(move || read_to_end(&bootstrap, &format!("{NAME}-dlq")))
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 1, "exactly the poisoned input is dead-lettered");
    let headers = &dead[0].headers;
    assert_eq!(headers["switchyard.dlq.reason"], "refused");
    assert_eq!(headers["__streams.errors.topic"], INPUT);
    assert!(
        headers["__streams.errors.message"].contains(OUTPUT),
        "{headers:?}"
    );
    let original = stack.schema(INPUT).expect("schema");
    let value = switchyard_schemas::wire::decode_with(
        &std::collections::HashMap::from([original]),
        dead[0].payload.as_deref().unwrap_or_default(),
    )
    .and_then(|v| switchyard_schemas::wire::from_value::<SensorReading>(&v))
    .expect("the dead letter is the input as it was");
    assert_eq!(value.value, Some(POISON));
}

/// Issue 24 (2e): under exactly-once a record the broker refuses dooms the transaction
/// (librdkafka makes it abortable): the commit failed and the runner stopped, and restarted it
/// met the same record and stopped again, a crash loop. Now the runner aborts, goes back to
/// its last commit (stores restored from the changelog, inputs read again from the committed
/// offsets) and dead-letters the refused input instead of processing it. Every input ends
/// with exactly one committed output or one dead letter, the store never counted a
/// dead-lettered input (each output's count is one more than the last), and it goes on.
/// Both refusals are met: by the producer (too large to send) and by the broker (larger than
/// the output topic takes). A broker refuses a whole batch, so inputs whose outputs shared
/// the batch may be dead-lettered too (replayable, like any dead letter).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_exactly_once_a_refused_output_dead_letters_its_input_without_a_crash_loop() {
    const INPUTS: usize = 12;
    let stack = Arc::new(blocking(Stack::start).await.expect("stack"));
    let bootstrap = stack.broker.bootstrap();
    let b = bootstrap.clone();
    blocking(move || set_topic_config(&b, OUTPUT, "max.message.bytes", "100000"))
        .await
        .expect("output topic limited to 100 kB");
    let mut records = readings(1, 0, INPUTS);
    records[3].1.value = Some(POISON);
    records[8].1.value = Some(POISON_AT_BROKER);
    produce_inputs(&stack, records).await;
    let instance = start(&stack, Probe::plain("a"), |c| {
        c.processing_guarantee = Guarantee::ExactlyOnce
    });
    let b = bootstrap.clone();
    let metrics = instance.metrics;
    blocking(move || {
        wait_for("every offset committed", Duration::from_secs(90), || {
            committed_total(&b, NAME, &[INPUT]).unwrap_or(0) >= INPUTS as i64
        })
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}; metrics:\n{}",
            http_get_text(metrics, "/metrics").unwrap_or_default()
        )
    });
    assert!(
        instance.metric("switchyard_rewinds_total") >= 1.0,
        "a refusal under exactly-once goes back to the last commit"
    );
    let (_, ended) = instance.stop().await;
    ended.expect("running until stopped, then stopped cleanly");

    let s = Arc::clone(&stack);
    let outputs = blocking(move || s.read_to_end::<ReadingCount>(OUTPUT))
        .await
        .expect("outputs");
    let b = bootstrap.clone();
    let dead = blocking(move || read_to_end(&b, &format!("{NAME}-dlq")))
        .await
        .expect("dead letters");
    let original = stack.schema(INPUT).expect("schema");
    let schemas = std::collections::HashMap::from([original]);
    let dead_inputs: Vec<SensorReading> = dead
        .iter()
        .map(|d| {
            assert_eq!(
                d.headers["switchyard.dlq.reason"], "refused",
                "{:?}",
                d.headers
            );
            switchyard_schemas::wire::decode_with(
                &schemas,
                d.payload.as_deref().unwrap_or_default(),
            )
            .and_then(|v| switchyard_schemas::wire::from_value::<SensorReading>(&v))
            .expect("the dead letter is the input as it was")
        })
        .collect();
    let mut settled: BTreeMap<i64, usize> = BTreeMap::new();
    for t in outputs
        .iter()
        .map(|o| o.value.last_sensor_time)
        .chain(dead_inputs.iter().map(|d| d.timestamp))
    {
        *settled.entry(t).or_default() += 1;
    }
    let sent: BTreeSet<i64> = readings(1, 0, INPUTS)
        .iter()
        .map(|r| r.1.timestamp)
        .collect();
    assert_eq!(
        settled.keys().copied().collect::<BTreeSet<_>>(),
        sent,
        "every input has an output or a dead letter, nothing else is there"
    );
    assert!(
        settled.values().all(|n| *n == 1),
        "each input exactly once across outputs and dead letters: {settled:?}"
    );
    for poison in [POISON, POISON_AT_BROKER] {
        assert!(
            dead_inputs.iter().any(|d| d.value == Some(poison)),
            "the input whose output was refused ({poison}) is dead-lettered"
        );
    }
    let mut counts: Vec<i64> = outputs.iter().map(|o| o.value.count).collect();
    counts.sort_unstable();
    assert_eq!(
        counts,
        (1..=outputs.len() as i64).collect::<Vec<_>>(),
        "the store counted each processed input once and no dead-lettered one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_broker_gone_it_reports_a_stall_and_still_stops_in_bounded_time() {
    let mut stack = blocking(Stack::start).await.expect("stack");
    let instance = start(
        &stack,
        Probe {
            instance: "a",
            ticks: true,
            log: Arc::default(),
        },
        |c| {
            c.stall_timeout_ms = 1_000;
            c.shutdown_timeout_ms = 2_000;
        },
    );
    let metrics = instance.metrics;
    blocking(move || {
        wait_for("ready and ticking", Duration::from_secs(90), || {
            http_get_status(metrics, "/health").ok() == Some(200)
                && metric_sum(
                    &http_get_text(metrics, "/metrics").unwrap_or_default(),
                    "switchyard_records_out_total",
                ) > 0.0
        })
    })
    .await
    .expect("running");
    stack.broker.stop();
    // Ticks keep producing; nothing is acknowledged any more.
    blocking(move || {
        wait_for("not ready", Duration::from_secs(30), || {
            http_get_status(metrics, "/health").ok() == Some(503)
        })
    })
    .await
    .expect("a stall shows on /health");
    assert!(instance.metric("switchyard_records_in_flight") > 0.0);
    let (took, ended) = instance.stop().await;
    eprintln!("stopped after {took:?}: {ended:?}");
    // Shutdown timeout (2 s) + the final commit's bound (2 s) + leaving the group (2 s).
    assert!(
        took < Duration::from_secs(8),
        "stopping with the broker gone took {took:?}"
    );
}

/// Issue 26 (6): readiness looked only at records waiting for the broker. With every output
/// acknowledged and every commit refused by the group coordinator, nothing processed could
/// be committed any more, and `/health` still said 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commits_the_group_does_not_confirm_show_on_health() {
    let stack = blocking(Stack::start).await.expect("stack");
    let log: Log = Arc::default();
    let instance = start(
        &stack,
        Probe {
            instance: "a",
            ticks: false,
            log: Arc::clone(&log),
        },
        |c| {
            c.stall_timeout_ms = 1_000;
            c.shutdown_timeout_ms = 2_000;
            // The first commit after the inputs comes once commits are refused.
            c.commit_interval_ms = 30_000;
        },
    );
    let s = Arc::new(stack);
    let inputs = Arc::clone(&s);
    blocking(move || inputs.produce(INPUT, &readings(4, 0, 20)))
        .await
        .expect("produce");
    let metrics = instance.metrics;
    blocking(move || {
        wait_for(
            "every output acknowledged, nothing committed",
            Duration::from_secs(90),
            || {
                let text = http_get_text(metrics, "/metrics").unwrap_or_default();
                log.lock().map(|l| l.len()).unwrap_or(0) >= 20
                    && metric_sum(&text, "switchyard_records_in_flight") == 0.0
                    && metric_sum(&text, "switchyard_uncommitted_records") >= 20.0
                    && http_get_status(metrics, "/health").ok() == Some(200)
            },
        )
    })
    .await
    .expect("processed");
    // The group coordinator can take no more commits (each is a record in
    // __consumer_offsets, now larger than it accepts); fetching and the group go on.
    let bootstrap = s.broker.bootstrap();
    blocking(move || {
        switchyard_testkit::kafka::set_topic_config(
            &bootstrap,
            "__consumer_offsets",
            "max.message.bytes",
            "1",
        )
    })
    .await
    .expect("commits refused from now on");
    let mut said = String::new();
    let health = blocking(move || {
        let found = wait_for("not ready", Duration::from_secs(60), || {
            said = http_get_text(metrics, "/health").unwrap_or_default();
            http_get_status(metrics, "/health").ok() == Some(503)
        });
        (found, said)
    })
    .await;
    let (found, said) = health;
    found.unwrap_or_else(|e| panic!("{e}: /health said {said:?}"));
    assert!(said.contains("not committed"), "{said}");
    assert!(instance.metric("switchyard_commit_failures_total") >= 1.0);
    let (took, _) = instance.stop().await;
    assert!(took < Duration::from_secs(8), "stopping took {took:?}");
}

/// `count` readings on the input, then an instance under `guarantee` that commits only at
/// an uncommitted bound of 50: the stack, the instance, and the log of what it handled.
async fn committing_only_at_50(count: usize, guarantee: Guarantee) -> (Arc<Stack>, Instance, Log) {
    let stack = Arc::new(blocking(Stack::start).await.expect("stack"));
    let s = Arc::clone(&stack);
    blocking(move || s.produce(INPUT, &readings(10, 0, count)))
        .await
        .expect("produce");
    let log: Log = Arc::default();
    let instance = start(
        &stack,
        Probe {
            instance: "a",
            ticks: false,
            log: Arc::clone(&log),
        },
        |c| {
            c.processing_guarantee = guarantee;
            c.max_uncommitted = 50;
            // Only the bound makes it commit.
            c.commit_interval_ms = 600_000;
        },
    );
    (stack, instance, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_the_uncommitted_bound_consumption_pauses_and_resumes() {
    let (stack, instance, log) = committing_only_at_50(2000, Guarantee::AtLeastOnce).await;
    let metrics = instance.metrics;
    let peak = Arc::new(Mutex::new(0.0f64));
    let p = Arc::clone(&peak);
    let bootstrap = stack.broker.bootstrap();
    let finished = blocking(move || {
        wait_for("every reading processed", Duration::from_secs(120), || {
            let text = http_get_text(metrics, "/metrics").unwrap_or_default();
            let uncommitted = metric_sum(&text, "switchyard_uncommitted_records");
            if let Ok(mut peak) = p.lock() {
                *peak = peak.max(uncommitted);
            }
            log.lock().map(|l| l.len()).unwrap_or(0) >= 2000
                && committed_total(&bootstrap, NAME, &[INPUT]).unwrap_or(0) >= 1950
        })
    })
    .await;
    let pauses = instance.metric("switchyard_consumer_pauses_total");
    let text = http_get_text(metrics, "/metrics").unwrap_or_default();
    let (_, ended) = instance.stop().await;
    if let Err(e) = finished {
        panic!("the bound pauses consumption, it does not stop it: {e}\n{text}");
    }
    ended.expect("stopped cleanly");
    assert!(pauses >= 10.0, "it paused at the bound ({pauses} times)");
    let peak = *peak.lock().expect("peak");
    // The gauge is sampled every 100 ms; one fetch may land after the pause.
    assert!(peak <= 50.0 + 500.0, "uncommitted peaked at {peak}");
}

/// Exactly once, the commit at the bound is the transaction's, awaited: when it returns the
/// records are settled, so consumption goes on without pausing. After 9acd69b the runner
/// paused its partitions after every such commit (dropping what librdkafka had prefetched,
/// to fetch it again), and exactly-once throughput fell from about 100,000 records/s to
/// 15,000 (`make bench`: streams). This test failed then: a pause per bound crossing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_exactly_once_a_commit_at_the_bound_does_not_pause_consumption() {
    let (stack, instance, log) = committing_only_at_50(1000, Guarantee::ExactlyOnce).await;
    let bootstrap = stack.broker.bootstrap();
    let finished = blocking(move || {
        wait_for("every reading committed", Duration::from_secs(120), || {
            log.lock().map(|l| l.len()).unwrap_or(0) >= 1000
                && committed_total(&bootstrap, NAME, &[INPUT]).unwrap_or(0) >= 950
        })
    })
    .await;
    let pauses = instance.metric("switchyard_consumer_pauses_total");
    let commits = instance.metric("switchyard_commits_total");
    let (_, ended) = instance.stop().await;
    finished.expect("processed and committed");
    ended.expect("stopped cleanly");
    assert!(
        commits >= 15.0,
        "the bound made it commit ({commits} commits)"
    );
    assert_eq!(
        pauses, 0.0,
        "{commits} commits at the bound, {pauses} pauses"
    );
}

/// Reads `imu` and a second sensor topic with another partition count.
struct TwoInputs;

impl Processor for TwoInputs {
    fn topology(&self) -> Topology {
        Topology::new(NAME)
            .inputs::<SensorReading>([INPUT, "imu-two-partitions"])
            .output::<ReadingCount>(OUTPUT)
    }

    fn process(&mut self, _: &Record<'_>, _: &mut Context<'_>) -> Result<(), ProcessError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_with_different_partition_counts_are_refused_by_name() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let stack = blocking(Stack::start).await.expect("stack");
    let extra = "imu-two-partitions";
    let admin: AdminClient<DefaultClientContext> = clients::admin_config(&stack.broker.bootstrap())
        .create()
        .expect("admin");
    let created = admin
        .create_topics(
            &[NewTopic::new(extra, 2, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create");
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    // Kafka's controller answers before every broker's metadata has the topic.
    let bootstrap = stack.broker.bootstrap();
    blocking(move || {
        wait_for(
            "the new topic in the metadata",
            Duration::from_secs(30),
            || switchyard_testkit::kafka::partition_count(&bootstrap, extra).ok() == Some(2),
        )
    })
    .await
    .expect("topic visible");
    let catalog = Catalog::parse(&format!(
        "{}\n[[topic]]\nname = \"{extra}\"\nrole = \"table\"\nkey = \"modem_id\"\nvalue_schema = \"sensor-reading.avsc\"\npartitions = 2\ncleanup_policy = \"delete\"\nretention_ms = 604800000\nproducers = []\nconsumers = []\ndescription = \"A sensor topic with another partition count.\"\n",
        switchyard_schemas::CATALOG_TOML
    ))
    .expect("catalog");
    let config = RunnerConfig::new(&stack.broker.bootstrap(), &stack.registry.url());
    let refused = tokio::time::timeout(
        Duration::from_secs(60),
        run_until(TwoInputs, catalog, config, std::future::pending()),
    )
    .await
    .expect("it refuses at start-up instead of running");
    let err = refused.expect_err("different partition counts must be refused");
    let text = err.to_string();
    assert!(
        matches!(err, RunnerError::NotCoPartitioned { .. }),
        "{text}"
    );
    assert!(text.contains(INPUT) && text.contains(extra), "{text}");
    assert!(text.contains("3, 2") || text.contains("2, 3"), "{text}");
}

/// A processor whose one store holds `V`: the same store with another value type.
struct Keeper<V>(std::marker::PhantomData<V>);

impl<V: switchyard_schemas::records::StoreValue> Processor for Keeper<V> {
    fn topology(&self) -> Topology {
        Topology::new(NAME)
            .input::<SensorReading>(INPUT)
            .store::<V>("kept")
    }

    fn process(&mut self, _: &Record<'_>, _: &mut Context<'_>) -> Result<(), ProcessError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_type_changed_incompatibly_is_refused_at_start_up() {
    let stack = blocking(Stack::start).await.expect("stack");
    let subject = "reading-counter-kept-changelog-value";
    let first = RunnerConfig::new(&stack.broker.bootstrap(), &stack.registry.url());
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(run_until(
        Keeper::<i64>(Default::default()),
        Catalog::embedded().expect("catalog"),
        first,
        async {
            let _ = stopped.await;
        },
    ));
    // The store's schema is registered under its changelog's subject at start-up.
    let (registry, path) = (
        stack.registry.addr,
        format!("/subjects/{subject}/versions/latest"),
    );
    let registered = blocking(move || {
        let mut answer = String::new();
        wait_for(
            "the store schema is registered",
            Duration::from_secs(60),
            || {
                answer = http_get_text(registry, &path).unwrap_or_default();
                answer.contains("\"schema\"")
            },
        )
        .map(|()| answer)
    })
    .await
    .expect("registered");
    let latest: serde_json::Value = serde_json::from_str(&registered).expect("JSON");
    assert_eq!(latest["schema"], "\"long\"", "{registered}");
    let _ = stop.send(());
    running.await.expect("task").expect("first version ran");

    // The same store holding strings: not readable from the longs already in its changelog.
    let config = RunnerConfig::new(&stack.broker.bootstrap(), &stack.registry.url());
    let refused = tokio::time::timeout(
        Duration::from_secs(60),
        run_until(
            Keeper::<String>(Default::default()),
            Catalog::embedded().expect("catalog"),
            config,
            std::future::pending(),
        ),
    )
    .await
    .expect("it refuses at start-up instead of running");
    let text = refused.expect_err("an incompatible store type").to_string();
    assert!(text.contains(subject) && text.contains("String"), "{text}");
}

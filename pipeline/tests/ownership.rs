//! Issue 26 (1): nothing is produced for a partition after its revocation completes. The
//! revocation callback runs inside the consumer's poll; the loop applied it only at its top,
//! so when the poll returned nothing the next branch ready (a wall-clock tick) punctuated the
//! tasks just revoked. The test sees each instance's assignments through the runner's own
//! "partitions assigned" / "partitions revoked" events (each instance runs inside a span
//! naming it) and checks every handling against them.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use switchyard_pipeline::{
    default_partition, run_until, Context, ProcessError, Processor, Record, RunnerConfig, Timer,
    TimerKind, Topology,
};
use switchyard_schemas::records::{ReadingCount, SensorReading};
use switchyard_schemas::Catalog;
use switchyard_testkit::{
    free_port, http_get_status, http_get_text, imu_reading, wait_for, Stack, TypedRecord,
};
use tracing::field::{Field, Visit};
use tracing::Instrument;
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

const NAME: &str = "reading-counter";
const INPUT: &str = "imu";
const OUTPUT: &str = "reading-counts";

/// (instance, partition, when, a record (true) or a timer): a record processed or a timer
/// fired.
type Handled = Arc<Mutex<Vec<(String, i32, Instant, bool)>>>;
/// (instance, assigned (true) or revoked, partitions, when).
type Changes = Arc<Mutex<Vec<(String, bool, BTreeSet<i32>, Instant)>>>;

/// A reading with this value takes a [`Ticker`] its `slow` time to process.
const SLOW_VALUE: i32 = -7;

/// Sends a record per reading and one per task on a 50 ms wall-clock timer.
struct Ticker {
    instance: String,
    handled: Handled,
    slow: Duration,
}

impl Ticker {
    fn note(&self, partition: i32, record: bool) {
        if let Ok(mut h) = self.handled.lock() {
            h.push((self.instance.clone(), partition, Instant::now(), record));
        }
    }
}

impl Processor for Ticker {
    fn topology(&self) -> Topology {
        Topology::new(NAME)
            .input::<SensorReading>(INPUT)
            .output::<ReadingCount>(OUTPUT)
            .timer("tick", TimerKind::WallClock, Duration::from_millis(50))
    }

    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let reading: SensorReading = record.value()?;
        if reading.value == Some(SLOW_VALUE) {
            std::thread::sleep(self.slow);
        }
        self.note(ctx.partition(), true);
        let out = ReadingCount {
            modem_id: reading.modem_id.clone(),
            sensor: self.instance.clone(),
            count: 1,
            last_sensor_time: reading.timestamp,
        };
        ctx.send(OUTPUT, &reading.modem_id, &out, None)
    }

    fn punctuate(&mut self, timer: &Timer, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        self.note(ctx.partition(), false);
        let out = ReadingCount {
            modem_id: format!("tick-{}", ctx.partition()),
            sensor: self.instance.clone(),
            count: 0,
            last_sensor_time: timer.time_ms,
        };
        ctx.send(OUTPUT, &out.modem_id.clone(), &out, None)
    }
}

/// The `instance` field of the span an event happened in.
struct InstanceName(String);

#[derive(Default)]
struct Fields {
    message: String,
    partitions: String,
    instance: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "instance" {
            self.instance = Some(value.to_string());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "assigned" | "revoked" => self.partitions = format!("{value:?}"),
            "instance" => self.instance = Some(format!("{value:?}").trim_matches('"').to_string()),
            _ => {}
        }
    }
}

/// Records the runner's assignment changes, by the instance span they happened in.
struct Assignments(Changes);

impl<S> Layer<S> for Assignments
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: LayerContext<'_, S>,
    ) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let (Some(name), Some(span)) = (fields.instance, ctx.span(id)) {
            span.extensions_mut().insert(InstanceName(name));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: LayerContext<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let assigned = match fields.message.as_str() {
            "partitions assigned" => true,
            "partitions revoked" | "partitions lost" => false,
            _ => return,
        };
        let Some(instance) = ctx.event_scope(event).and_then(|scope| {
            scope
                .from_root()
                .find_map(|span| span.extensions().get::<InstanceName>().map(|n| n.0.clone()))
        }) else {
            return;
        };
        // `[("imu", 0), ("imu", 2)]`: the numbers before each ')'.
        let partitions: BTreeSet<i32> = fields
            .partitions
            .split(')')
            .filter_map(|part| part.rsplit(", ").next()?.trim().parse().ok())
            .collect();
        if let Ok(mut changes) = self.0.lock() {
            changes.push((instance, assigned, partitions, Instant::now()));
        }
    }
}

/// Every instance's assignment changes, from the one subscriber of the test process (the
/// tests run in one process; each names its own instances).
fn changes() -> Changes {
    static CHANGES: std::sync::OnceLock<Changes> = std::sync::OnceLock::new();
    Arc::clone(CHANGES.get_or_init(|| {
        let changes: Changes = Arc::default();
        let subscriber = tracing_subscriber::registry().with(Assignments(Arc::clone(&changes)));
        tracing::subscriber::set_global_default(subscriber).expect("the test's subscriber");
        changes
    }))
}

fn start(
    stack: &Stack,
    instance: &str,
    handled: &Handled,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    start_with(stack, instance, handled, |_| {})
}

fn start_with(
    stack: &Stack,
    instance: &str,
    handled: &Handled,
    adjust: impl FnOnce(&mut RunnerConfig),
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    start_slow(stack, instance, handled, Duration::ZERO, adjust)
}

/// [`start_with`] a ticker that takes `slow` over a reading of [`SLOW_VALUE`].
fn start_slow(
    stack: &Stack,
    instance: &str,
    handled: &Handled,
    slow: Duration,
    adjust: impl FnOnce(&mut RunnerConfig),
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let mut config = RunnerConfig::new(&stack.broker.bootstrap(), &stack.registry.url());
    // Commits rarely, so that after a revocation inside the poll the next branch to wake is
    // the wall-clock tick (every 100 ms), not a commit.
    config.commit_interval_ms = 5_000;
    adjust(&mut config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let processor = Ticker {
        instance: instance.to_string(),
        handled: Arc::clone(handled),
        slow,
    };
    let run = run_until(
        processor,
        Catalog::embedded().expect("catalog"),
        config,
        async {
            let _ = stopped.await;
        },
    )
    .instrument(tracing::info_span!("runner", instance = instance));
    let done = tokio::spawn(async move {
        run.await.expect("the runner ended cleanly");
    });
    (stop, done)
}

/// 60 readings of six modems, a millisecond apart.
fn sixty_readings() -> Vec<(String, SensorReading, i64)> {
    (0..60)
        .map(|i| {
            let modem = format!("m{}", i % 6);
            let t = 1_700_000_000_000_000 + i64::from(i) * 1000;
            (modem.clone(), imu_reading(&modem, i, t), t / 1000)
        })
        .collect()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_instance_handles_no_task_after_its_revocation() {
    let changes = changes();
    let stack = Arc::new(blocking(Stack::start).await.expect("stack"));
    let readings = sixty_readings();
    let s = Arc::clone(&stack);
    blocking(move || s.produce(INPUT, &readings))
        .await
        .expect("produce");
    let handled: Handled = Arc::default();
    let by = |handled: &Handled, instance: &str| {
        handled
            .lock()
            .map(|h| h.iter().filter(|e| e.0 == instance).count())
            .unwrap_or(0)
    };
    let (stop_a, a) = start(&stack, "a", &handled);
    let h = Arc::clone(&handled);
    blocking(move || wait_for("a ticking", Duration::from_secs(90), || by(&h, "a") > 100))
        .await
        .expect("a runs");
    // The input is idle from here: each rebalance's revocation happens inside a poll that
    // then returns nothing. Three of them: b joins, leaves, c joins.
    for (instance, stays) in [("b", false), ("c", true)] {
        let before = by(&handled, instance);
        let (stop, done) = start(&stack, instance, &handled);
        let h = Arc::clone(&handled);
        let name = instance.to_string();
        blocking(move || {
            wait_for("the new instance ticking", Duration::from_secs(90), || {
                by(&h, &name) > before + 40
            })
        })
        .await
        .expect("joined");
        if !stays {
            let _ = stop.send(());
            done.await.expect("stopped");
            let (h, since) = (Arc::clone(&handled), Instant::now());
            blocking(move || {
                wait_for(
                    "a ticking again on every task",
                    Duration::from_secs(90),
                    || {
                        h.lock().is_ok_and(|h| {
                            h.iter()
                                .filter(|e| e.0 == "a" && e.2 > since)
                                .map(|e| e.1)
                                .collect::<BTreeSet<_>>()
                                .len()
                                == 3
                        })
                    },
                )
            })
            .await
            .expect("a took the tasks back");
        } else {
            let _ = stop.send(());
            done.await.expect("stopped");
        }
    }
    let _ = stop_a.send(());
    a.await.expect("a stopped");

    let revocations = revocations_of(&changes, "a");
    assert!(revocations >= 2, "a was revoked at least twice");
    assert_no_strays(&changes, &handled, &["a", "b", "c"]);
}

fn revocations_of(changes: &Changes, instance: &str) -> usize {
    changes
        .lock()
        .map(|c| c.iter().filter(|c| c.0 == instance && !c.1).count())
        .unwrap_or(0)
}

/// Every handling by `instances` was of a task its instance owned at the time, by its own
/// assignment changes.
fn assert_no_strays(changes: &Changes, handled: &Handled, instances: &[&str]) {
    let changes = changes.lock().expect("changes").clone();
    let handled = handled.lock().expect("handled").clone();
    // Each instance's tasks at each moment, from its own assignment changes.
    let owned_at = |instance: &str, at: Instant| -> BTreeSet<i32> {
        let mut owned = BTreeSet::new();
        for (who, assigned, partitions, when) in &changes {
            if who != instance || *when > at {
                continue;
            }
            if *assigned {
                owned.extend(partitions);
            } else {
                owned.retain(|p| !partitions.contains(p));
            }
        }
        owned
    };
    let strays: Vec<_> = handled
        .iter()
        .filter(|(instance, ..)| instances.contains(&instance.as_str()))
        .filter(|(instance, partition, at, _)| !owned_at(instance, *at).contains(partition))
        .collect();
    assert!(
        strays.is_empty(),
        "{} handlings of tasks their instance did not own at the time, e.g. {:?}",
        strays.len(),
        strays.first()
    );
}

/// Issue 26 (1): an instance paused at its in-flight bounds stopped polling, so it did not
/// take part in a rebalance: the group waited for it until `max.poll.interval.ms` (5 min)
/// evicted it, and its wall-clock timers went on firing for tasks it no longer owned. Here
/// `pa`'s outputs wait two minutes in its producer (linger), so it pauses after 5 records,
/// and `pb` joins: `pa` must give its tasks up within the revocation's wait (2 s), and
/// handle none after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_instance_gives_its_tasks_up_at_a_rebalance_and_handles_none_after() {
    const BOUND: u64 = 5;
    let changes = changes();
    let stack = Arc::new(blocking(Stack::start).await.expect("stack"));
    let readings = sixty_readings();
    let s = Arc::clone(&stack);
    blocking(move || {
        append_times_on_output(&s)?;
        s.produce(INPUT, &readings)
    })
    .await
    .expect("produce");
    let handled: Handled = Arc::default();
    let config = |c: &mut RunnerConfig| {
        c.max_uncommitted = BOUND;
        c.shutdown_timeout_ms = 2_000;
    };
    // pa's outputs wait LINGER in its producer before they are sent, so none is
    // acknowledged meanwhile.
    const LINGER: Duration = Duration::from_secs(30);
    let (stop_a, a) = start_with(&stack, "pa", &handled, |c| {
        config(c);
        c.linger_ms = Some(LINGER.as_millis() as u64);
    });
    let started = Instant::now();
    // The records pa processed: at the bound it pauses (nothing it produced is acknowledged,
    // so nothing it read can be committed).
    let processed = |h: &Handled, instance: &str| {
        h.lock()
            .map(|h| h.iter().filter(|e| e.0 == instance && e.3).count())
            .unwrap_or(0)
    };
    let h = Arc::clone(&handled);
    blocking(move || {
        wait_for("pa at its bound", Duration::from_secs(90), || {
            processed(&h, "pa") >= BOUND as usize
        })
    })
    .await
    .expect("pa paused");
    let paused_at = Instant::now();
    let (stop_b, b) = start_with(&stack, "pb", &handled, config);
    let c = Arc::clone(&changes);
    blocking(move || {
        wait_for(
            "pa to give tasks up and pb to get them",
            Duration::from_secs(60),
            || revocations_of(&c, "pa") >= 1 && assigned_any(&c, "pb"),
        )
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: a paused instance held the group up"));
    // Issue 26 (2): what pa still had in flight when its revocation's wait ran out was
    // neither purged nor fenced, and landed after the new owner had taken over. Both keep
    // running past pa's linger; then no output of pa for a partition pb took may have been
    // appended after pa gave it up.
    let (revoked_at_ms, given_up) = changes
        .lock()
        .ok()
        .and_then(|c| {
            let revoked = c.iter().find(|c| c.0 == "pa" && !c.1)?;
            let to_b: BTreeSet<i32> = c
                .iter()
                .filter(|c| c.0 == "pb" && c.1)
                .flat_map(|c| c.2.iter().copied())
                .collect();
            Some((wall_ms(revoked.3), to_b))
        })
        .expect("pa's revocation");
    blocking(move || {
        wait_for("pa's linger to pass", LINGER * 2, || {
            started.elapsed() > LINGER + Duration::from_secs(10)
        })
    })
    .await
    .expect("waited");
    let late: Vec<_> = outputs_by_task(&stack)
        .await
        .into_iter()
        .filter(|(task, r)| r.value.sensor == "pa" && given_up.contains(task))
        .filter(|(_, r)| r.raw.timestamp_ms.is_some_and(|t| t > revoked_at_ms))
        .map(|(_, r)| (r.raw.partition, r.value.modem_id))
        .collect();
    assert!(
        late.is_empty(),
        "{} outputs of pa appended after it gave their partitions up, e.g. {:?}",
        late.len(),
        late.first()
    );
    let _ = (stop_a.send(()), stop_b.send(()));
    a.await.expect("pa stopped");
    b.await.expect("pb stopped");
    assert_no_strays(&changes, &handled, &["pa", "pb"]);
    // Issue 26 (7): paused, its timers wait (what they sent would only add to the records
    // in flight that paused it): no tick of pa from its pause to its revocation.
    let revoked = changes
        .lock()
        .ok()
        .and_then(|c| c.iter().find(|c| c.0 == "pa" && !c.1).map(|c| c.3))
        .expect("pa's revocation");
    let ticks_while_paused = handled
        .lock()
        .map(|h| {
            h.iter()
                .filter(|e| e.0 == "pa" && !e.3 && e.2 > paused_at && e.2 < revoked)
                .count()
        })
        .unwrap_or(0);
    assert_eq!(
        ticks_while_paused,
        0,
        "pa fired timers while paused ({:?} between its pause and its revocation)",
        revoked - paused_at
    );
}

fn assigned_any(changes: &Changes, instance: &str) -> bool {
    changes
        .lock()
        .is_ok_and(|c| c.iter().any(|c| c.0 == instance && c.1 && !c.2.is_empty()))
}

/// A member without partitions (more instances than partitions) is a quiet member. Before
/// Apache Kafka, the runner rejoined its group after owning nothing for 25 s (a workaround
/// for tansu, which could leave a joiner beside a crashed member with nothing): on Kafka
/// that made the idle instance rebalance the whole group every 25 s, then 50 s, up to every
/// 10 minutes, each time revoking every task of every instance. This test failed then: the
/// fourth instance's rejoin showed as new revocations and assignments within the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_without_partitions_never_makes_the_group_rebalance() {
    const INSTANCES: [&str; 4] = ["qa", "qb", "qc", "qd"];
    const WINDOW: Duration = Duration::from_secs(35);
    let changes = changes();
    let stack = Arc::new(blocking(Stack::start).await.expect("stack"));
    let handled: Handled = Arc::default();
    let running: Vec<_> = INSTANCES
        .iter()
        .map(|instance| start(&stack, instance, &handled))
        .collect();
    // Settled: every instance's last change is an assignment, those assignments share out
    // the three partitions, and nothing changed for five seconds.
    let ours = |c: &Changes| -> Vec<(String, bool, BTreeSet<i32>, Instant)> {
        c.lock()
            .map(|c| {
                c.iter()
                    .filter(|c| INSTANCES.contains(&c.0.as_str()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    let settled = |c: &[(String, bool, BTreeSet<i32>, Instant)]| {
        let lasts: Vec<_> = INSTANCES
            .iter()
            .filter_map(|i| c.iter().rev().find(|c| c.0 == *i))
            .collect();
        let owned: Vec<i32> = lasts.iter().flat_map(|c| c.2.iter().copied()).collect();
        let quiet = c
            .last()
            .is_some_and(|c| c.3.elapsed() > Duration::from_secs(5));
        lasts.len() == INSTANCES.len()
            && lasts.iter().all(|c| c.1)
            && owned.len() == 3
            && owned.iter().collect::<BTreeSet<_>>().len() == 3
            && quiet
    };
    let c = Arc::clone(&changes);
    blocking(move || {
        wait_for(
            "the four instances settled",
            Duration::from_secs(120),
            || settled(&ours(&c)),
        )
    })
    .await
    .expect("settled");
    let before = ours(&changes).len();
    let c = Arc::clone(&changes);
    let grew =
        blocking(move || wait_for("a change in the group", WINDOW, || ours(&c).len() > before))
            .await;
    let after = ours(&changes);
    for (stop, done) in running {
        let _ = stop.send(());
        done.await.expect("stopped");
    }
    assert!(
        grew.is_err(),
        "{} assignment changes within {WINDOW:?} of a settled group, e.g. {:?}",
        after.len() - before,
        after.get(before)
    );
    assert_no_strays(&changes, &handled, &INSTANCES);
}

/// The output topic stamps each record with the time the broker appended it.
fn append_times_on_output(stack: &Stack) -> anyhow::Result<()> {
    switchyard_testkit::kafka::set_topic_config(
        &stack.broker.bootstrap(),
        OUTPUT,
        "message.timestamp.type",
        "LogAppendTime",
    )
}

/// Every output, read to the end, with the task each came from (a tick names it, a
/// reading's key decides it).
async fn outputs_by_task(stack: &Arc<Stack>) -> Vec<(i32, TypedRecord<ReadingCount>)> {
    let s = Arc::clone(stack);
    let outputs = blocking(move || s.read_to_end::<ReadingCount>(OUTPUT))
        .await
        .expect("outputs");
    outputs
        .into_iter()
        .map(|r| {
            let task = match r.value.modem_id.strip_prefix("tick-") {
                Some(p) => p.parse().unwrap_or(-1),
                None => default_partition(r.value.modem_id.as_bytes(), 3),
            };
            (task, r)
        })
        .collect()
}

/// The wall-clock time, in ms since the epoch, of `at`.
fn wall_ms(at: Instant) -> i64 {
    (SystemTime::now() - at.elapsed())
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Issue 26 (1, 6): an instance that lost its membership stops its tasks before anything
/// else, and one whose loop is stuck says so on /health. `la` takes 15 s over one reading, longer than its max.poll.interval.ms (10 s): the
/// group gives its partitions to `lb` meanwhile. When the call returns, `la` must drop
/// what it produced and every task, and handle nothing until it is assigned partitions
/// again. Before, it sent the slow reading's output and went on punctuating the tasks `lb`
/// owned until its next poll, and stayed ready throughout; this test failed then.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_that_lost_its_partitions_produces_nothing_for_them() {
    const SLOW: Duration = Duration::from_secs(15);
    let changes = changes();
    let stack = Arc::new(blocking(Stack::start).await.expect("stack"));
    let s = Arc::clone(&stack);
    blocking(move || append_times_on_output(&s))
        .await
        .expect("output topic");
    let handled: Handled = Arc::default();
    let la_health: std::net::SocketAddr = ([127, 0, 0, 1], free_port().expect("port")).into();
    let (stop_a, a) = start_slow(&stack, "la", &handled, SLOW, |c| {
        c.max_poll_interval_ms = 10_000;
        c.metrics_listen = Some(la_health);
        c.stall_timeout_ms = 3_000;
    });
    let (stop_b, b) = start(&stack, "lb", &handled);
    let owned_by = |c: &Changes, instance: &str| -> BTreeSet<i32> {
        c.lock()
            .ok()
            .and_then(|c| c.iter().rev().find(|c| c.0 == instance).cloned())
            .filter(|c| c.1)
            .map(|c| c.2)
            .unwrap_or_default()
    };
    let c = Arc::clone(&changes);
    blocking(move || {
        wait_for(
            "la and lb share the partitions",
            Duration::from_secs(90),
            || {
                let (a, b) = (owned_by(&c, "la"), owned_by(&c, "lb"));
                !a.is_empty() && !b.is_empty() && a.len() + b.len() == 3
            },
        )
    })
    .await
    .expect("shared");
    let slow_partition = *owned_by(&changes, "la").first().expect("la's partition");
    let modem = (0..)
        .map(|i| format!("slow{i}"))
        .find(|m| default_partition(m.as_bytes(), 3) == slow_partition)
        .expect("a key");
    let t = 1_700_000_000_000_000;
    let slow_reading = vec![(modem.clone(), imu_reading(&modem, SLOW_VALUE, t), t / 1000)];
    let s = Arc::clone(&stack);
    blocking(move || s.produce(INPUT, &slow_reading))
        .await
        .expect("produce");
    // Issue 26 (6): while its loop is stuck in the call, la says it is not ready, and why.
    blocking(move || {
        wait_for(
            "la not ready while its loop is stuck",
            Duration::from_secs(30),
            || {
                http_get_status(la_health, "/health").is_ok_and(|s| s == 503)
                    && http_get_text(la_health, "/health")
                        .is_ok_and(|t| t.contains("processing loop has not turned"))
            },
        )
    })
    .await
    .expect("a stuck loop shows on /health");
    // The fault landed: lb took la's partition while la was inside the slow call, and la
    // learnt of it (a loss, not a revocation it answered) once the call returned.
    let c = Arc::clone(&changes);
    blocking(move || {
        wait_for(
            "la lost its partitions and rejoined",
            Duration::from_secs(90),
            || {
                c.lock().is_ok_and(|c| {
                    let Some(taken) = c
                        .iter()
                        .position(|c| c.0 == "lb" && c.1 && c.2.contains(&slow_partition))
                    else {
                        return false;
                    };
                    let lost = c[taken..].iter().position(|c| c.0 == "la" && !c.1);
                    lost.is_some_and(|l| c[taken + l..].iter().any(|c| c.0 == "la" && c.1))
                })
            },
        )
    })
    .await
    .expect("la lost its partitions while it was slow");
    let _ = (stop_a.send(()), stop_b.send(()));
    a.await.expect("la stopped");
    b.await.expect("lb stopped");

    // lb's ownership of each partition, in wall-clock ms: [from, to).
    let spans: Vec<(i32, i64, i64)> = {
        let c = changes.lock().expect("changes").clone();
        let mut spans = Vec::new();
        for (i, (who, assigned, parts, at)) in c.iter().enumerate() {
            if who != "lb" || !assigned {
                continue;
            }
            for p in parts {
                let until = c[i + 1..]
                    .iter()
                    .find(|c| c.0 == "lb" && !c.1 && c.2.contains(p))
                    .map_or(i64::MAX, |c| wall_ms(c.3));
                spans.push((*p, wall_ms(*at), until));
            }
        }
        spans
    };
    let outputs = outputs_by_task(&stack).await;
    let late: Vec<_> = outputs
        .iter()
        .filter(|(_, r)| r.value.sensor == "la")
        .filter(|(p, r)| {
            let t = r.raw.timestamp_ms.unwrap_or(0);
            spans
                .iter()
                .any(|(q, from, to)| q == p && (*from..*to).contains(&t))
        })
        .map(|(_, r)| r.value.modem_id.clone())
        .collect();
    assert!(
        late.is_empty(),
        "{} outputs of la for partitions lb owned at the time, e.g. {:?}",
        late.len(),
        late.first()
    );
    // Nothing lost: the slow reading has its output, from whichever owner processed it.
    assert!(
        outputs.iter().any(|(_, r)| r.value.modem_id == modem),
        "no output for the slow reading"
    );
}

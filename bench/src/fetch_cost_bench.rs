//! What one idle consumer costs the broker, and what a hop through it costs in latency, by
//! fetch wait: the two numbers every choice of `fetch.wait.max.ms` in this project trades.
//! tansu 0.6.0 reads a fetch's partitions, then holds the fetch for the rest of the wait even
//! when it found data (reading again at the end when it found none), so a consumer makes it
//! work every wait whether or not anything arrives, and a record that lands during a held
//! fetch with data waits up to two waits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::json;
use switchyard_kafka::clients;
use switchyard_testkit::Broker;

use crate::idle_bench::cpu_seconds;
use crate::Report;

const TOPICS: usize = 5;

/// One measured set-up: consumers, each with its fetch wait and number of partitions.
struct Setup {
    label: &'static str,
    consumers: Vec<(u64, usize)>,
}

fn setups() -> Vec<Setup> {
    let one = |label, wait, partitions| Setup {
        label,
        consumers: vec![(wait, partitions)],
    };
    vec![
        one("one consumer, 1 partition, 10 ms", 10, 1),
        one("one consumer, 1 partition, 20 ms", 20, 1),
        one("one consumer, 2 partitions, 20 ms", 20, 2),
        one("one consumer, 5 partitions, 20 ms", 20, 5),
        one("one consumer, 1 partition, 50 ms", 50, 1),
        one("one consumer, 1 partition, 100 ms", 100, 1),
        one("one consumer, 3 partitions, 100 ms", 100, 3),
        one("one consumer, 3 partitions, 500 ms", 500, 3),
        Setup {
            label: "three consumers, 1 partition each, 20 ms (the switch round trip's hops)",
            consumers: vec![(20, 1); 3],
        },
    ]
}

fn consumer(bootstrap: &str, wait_ms: u64, partitions: usize) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = clients::consumer_config(bootstrap)
        .set("group.id", "fetch-cost")
        .set("fetch.wait.max.ms", wait_ms.to_string())
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for topic in 0..partitions {
        assignment.add_partition_offset(&format!("fetch-cost-{topic}"), 0, Offset::End)?;
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// Polls `consumers` on their own threads until the returned guard is dropped.
struct Polling {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Polling {
    fn start(consumers: Vec<BaseConsumer>) -> Polling {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = consumers
            .into_iter()
            .map(|consumer| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let _ = consumer.poll(Duration::from_millis(100));
                    }
                })
            })
            .collect();
        Polling { stop, threads }
    }
}

impl Drop for Polling {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn tansu_percent(pid: u32, window: Duration) -> anyhow::Result<f64> {
    let before = cpu_seconds(pid)?;
    std::thread::sleep(window);
    Ok((cpu_seconds(pid)? - before) * 100.0 / window.as_secs_f64())
}

/// Records produced at uneven moments to a topic one consumer at `wait_ms` reads; per record,
/// its arrival at the consumer minus the moment it was handed to the producer (ms). With
/// `follow_up`, each is the second of two records 5 ms apart, the first of which started the
/// fetch that the broker then holds; the second's latency is reported.
fn hop_latencies(
    bootstrap: &str,
    wait_ms: u64,
    records: usize,
    follow_up: bool,
) -> anyhow::Result<Vec<f64>> {
    let consumer = consumer(bootstrap, wait_ms, 1)?;
    let producer: ThreadedProducer<DefaultProducerContext> = clients::producer_config(bootstrap)
        .set("linger.ms", "0")
        .create()?;
    // Let the assignment resolve its end offset before the first record.
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle {
        let _ = consumer.poll(Duration::from_millis(50));
    }
    let send = || {
        producer
            .send(BaseRecord::<str, str>::to("fetch-cost-0").payload("x"))
            .map_err(|(e, _)| e)
    };
    let mut latencies = Vec::with_capacity(records);
    for i in 0..records {
        // Spread sends over the fetch cycle: a prime step in ms, not a multiple of the wait.
        std::thread::sleep(Duration::from_millis(7 + (i as u64 * 37) % 53));
        let expected = if follow_up {
            send()?;
            std::thread::sleep(Duration::from_millis(5));
            2
        } else {
            1
        };
        let sent = Instant::now();
        send()?;
        let deadline = sent + Duration::from_secs(5);
        let mut arrived = 0;
        while arrived < expected {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) if message.topic() == "fetch-cost-0" => arrived += 1,
                Some(Err(e)) => return Err(e.into()),
                _ if Instant::now() > deadline => anyhow::bail!("record {i} not delivered in 5 s"),
                _ => {}
            }
        }
        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    producer.flush(Duration::from_secs(5))?;
    Ok(latencies)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub async fn run(window: Duration) -> anyhow::Result<Report> {
    let broker = Broker::start()?;
    let bootstrap = broker.bootstrap();
    let pid = broker.pid();
    let admin: AdminClient<DefaultClientContext> = clients::admin_config(&bootstrap).create()?;
    let topics: Vec<String> = (0..TOPICS).map(|i| format!("fetch-cost-{i}")).collect();
    let new_topics: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
        .collect();
    for r in admin
        .create_topics(&new_topics, &AdminOptions::new())
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    std::thread::sleep(Duration::from_secs(1));
    let idle = tansu_percent(pid, window)?;

    let mut rows = String::new();
    let mut json_rows = Vec::new();
    let mut three_hops_cpu = f64::NAN;
    for setup in setups() {
        let consumers = setup
            .consumers
            .iter()
            .map(|&(wait, partitions)| consumer(&bootstrap, wait, partitions))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let polling = Polling::start(consumers);
        std::thread::sleep(Duration::from_secs(3));
        let cpu = tansu_percent(pid, window)?;
        drop(polling);
        std::thread::sleep(Duration::from_secs(1));
        let fetches: f64 = setup
            .consumers
            .iter()
            .map(|&(wait, _)| 1000.0 / wait as f64)
            .sum();
        eprintln!("fetch-cost: {} -> {cpu:.1}%", setup.label);
        if setup.consumers == [(20, 1); 3] {
            three_hops_cpu = cpu;
        }
        rows.push_str(&format!("| {} | {fetches:.0} | {cpu:.1}% |\n", setup.label));
        json_rows.push(
            json!({ "setup": setup.label, "consumers": setup.consumers, "tansu_cpu_percent": cpu }),
        );
    }

    let mut hops = String::new();
    let mut json_hops = Vec::new();
    let (mut alone_p99_at_20, mut second_p99_at_20) = (f64::NAN, f64::NAN);
    for (wait, follow_up) in [10u64, 20, 50]
        .into_iter()
        .flat_map(|w| [(w, false), (w, true)])
    {
        let mut latencies = hop_latencies(&bootstrap, wait, 60, follow_up)?;
        latencies.sort_by(|a, b| a.total_cmp(b));
        let (min, p50, p99, max) = (
            latencies[0],
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies[latencies.len() - 1],
        );
        let record = if follow_up { "second of two" } else { "alone" };
        eprintln!("fetch-cost: hop at {wait} ms, {record}: p50 {p50:.0} max {max:.0}");
        match (wait, follow_up) {
            (20, false) => alone_p99_at_20 = p99,
            (20, true) => second_p99_at_20 = p99,
            _ => {}
        }
        hops.push_str(&format!(
            "| {wait} ms | {record} | {} | {min:.0} | {p50:.0} | {p99:.0} | {max:.0} |\n",
            latencies.len()
        ));
        json_hops.push(json!({ "fetch_wait_ms": wait, "follow_up": follow_up, "min_ms": min, "p50_ms": p50, "p99_ms": p99, "max_ms": max }));
    }
    let window_s = window.as_secs();
    Ok(Report {
        name: "fetch-cost",
        markdown: format!(
            "## What a consumer costs the broker, by fetch wait\n\n\
             A fresh tansu (SQLite), {TOPICS} empty one-partition topics; each set-up's consumers poll (assigned at the end, no group) for 3 s, then tansu's CPU is read over {window_s} s. tansu 0.6.0 (`service/fetch.rs`) reads the fetch's partitions, sleeps the rest of the wait, reads again if the first read found nothing, and answers; so an idle consumer costs it two rounds of reads per fetch wait, records or not.\n\n\
             | set-up | fetches/s | tansu, % of one core |\n|---|---|---|\n\
             | no consumer | 0 | {idle:.1}% |\n{rows}\n\
             One hop, by the consumer's fetch wait: a record produced (linger 0) at uneven moments, 60 times, until the consumer has it. Alone, it is found by the read that ends an empty fetch: at most one wait. As the second of two records 5 ms apart, it usually lands while the broker holds the fetch whose first read found the first record for the full wait, and is found by the next fetch's first read, which is held a full wait too: up to two waits. A switch's records come in such trains (the gateway's `sent`, then the ACK).\n\n\
             | fetch wait | record | records | min ms | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|\n{hops}\n\
             What follows for `make up`: the carrier switch round trip crosses three consumers in series (gateway on `downstream-request`, carrier-state on `carrier-switch-ack`, the API on `carrier-state`), so at 20 ms waits each of the three hops takes up to {alone_p99_at_20:.0} ms for a lone record and {second_p99_at_20:.0} ms for the second of a train, before the modem, the SIM and three produce acknowledgements; and those three idle consumers alone cost tansu {three_hops_cpu:.0}% of a core. A p99 under 100 ms needs shorter waits on all three, which cost more; an idle stack under 25% of a core needs longer ones. On this broker the two targets exclude each other.\n",
        ),
        json: json!({ "idle_tansu_cpu_percent": idle, "setups": json_rows, "hops": json_hops }),
    })
}

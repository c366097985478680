//! Prometheus metrics of one processor, labelled `processor="<name>"`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

type TopicCounters = HashMap<String, IntCounter>;

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub records_in: IntCounterVec,
    pub records_out: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub processing_seconds: Histogram,
    pub consumer_lag: IntGaugeVec,
    pub restore_seconds: prometheus::GaugeVec,
    pub restored_records: IntCounterVec,
    pub store_values_unreadable: IntCounterVec,
    pub commits: IntCounter,
    pub commit_failures: IntCounter,
    pub producer_retries: IntCounter,
    pub timer_failures: IntCounter,
    pub assigned_partitions: IntGauge,
    pub events: IntCounterVec,
    pub revocations: IntCounter,
    pub rewinds: IntCounter,
    pub produce_failures: IntCounter,
    pub pauses: IntCounter,
    pub records_in_flight: IntGauge,
    pub uncommitted_records: IntGauge,
    /// 1 while a commit (an offset commit or a transaction's) is with the broker.
    pub commit_in_progress: IntGauge,
    /// How long each commit (offsets, or the whole transaction commit) took.
    pub commit_seconds: Histogram,
    /// 1 while `/health` says ready (joined, restored, not stalled), else 0: what an alert
    /// can see, since Prometheus scrapes `/metrics`, not `/health`.
    pub ready: IntGauge,
    /// Per-topic counter handles, so counting a record is not a label lookup: inputs (the
    /// runner's loop counts them) and outputs (the producer's delivery thread does), each
    /// behind its own lock so the two threads never wait for each other.
    handles_in: Arc<Mutex<TopicCounters>>,
    handles_out: Arc<Mutex<TopicCounters>>,
}

impl Metrics {
    fn count(&self, incoming: bool, topic: &str) {
        let (handles, vec) = if incoming {
            (&self.handles_in, &self.records_in)
        } else {
            (&self.handles_out, &self.records_out)
        };
        let Ok(mut map) = handles.lock() else {
            return;
        };
        match map.get(topic) {
            Some(counter) => counter.inc(),
            None => {
                let counter = vec.with_label_values(&[topic]);
                counter.inc();
                map.insert(topic.to_string(), counter);
            }
        }
    }

    /// One input record handled from `topic`.
    pub fn count_in(&self, topic: &str) {
        self.count(true, topic);
    }

    /// One record acknowledged on `topic`.
    pub fn count_out(&self, topic: &str) {
        self.count(false, topic);
    }

    pub fn new(processor: &str) -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(
            Some("switchyard".into()),
            Some([("processor".to_string(), processor.to_string())].into()),
        )?;
        let counter_vec =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let records_in = counter_vec(
            "records_in_total",
            "Input records handled, by topic.",
            &["topic"],
        )?;
        let records_out = counter_vec(
            "records_out_total",
            "Records produced and acknowledged, by topic.",
            &["topic"],
        )?;
        let dead_letters = counter_vec(
            "dead_letters_total",
            "Records sent to the dead-letter topic, by reason.",
            &["reason"],
        )?;
        let processing_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "processing_seconds",
                "Time to decode and process one record.",
            )
            .buckets(vec![
                0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1,
            ]),
        )?;
        registry.register(Box::new(processing_seconds.clone()))?;
        let commit_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "commit_seconds",
                "Time each commit took: offsets to the group (at least once), or the transaction's flush, offsets and commit (exactly once, the time processing waits).",
            )
            .buckets(vec![0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0]),
        )?;
        registry.register(Box::new(commit_seconds.clone()))?;
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "consumer_lag",
                "Records behind the high watermark, by partition.",
            ),
            &["topic", "partition"],
        )?;
        registry.register(Box::new(consumer_lag.clone()))?;
        let restore_seconds = prometheus::GaugeVec::new(
            Opts::new("restore_seconds", "Time the last store restore took."),
            &["store"],
        )?;
        registry.register(Box::new(restore_seconds.clone()))?;
        let restored_records = counter_vec(
            "restored_records_total",
            "Changelog records applied while restoring.",
            &["store"],
        )?;
        let store_values_unreadable = counter_vec(
            "store_values_unreadable_total",
            "Changelog values restored that are in no schema the store can read (kept as they were; reading their key fails and dead-letters the record).",
            &["store"],
        )?;
        let events = counter_vec(
            "processor_events_total",
            "Events the processor counted (ctx.count), by event.",
            &["event"],
        )?;
        let assigned_partitions = IntGauge::new(
            "assigned_partitions",
            "Tasks (input partitions) this instance owns.",
        )?;
        registry.register(Box::new(assigned_partitions.clone()))?;
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let records_in_flight = gauge(
            "records_in_flight",
            "Output, changelog and dead-letter records handed to the producer and not yet acknowledged.",
        )?;
        let uncommitted_records = gauge(
            "uncommitted_records",
            "Input records processed whose offsets the group has not confirmed (processed again after a crash).",
        )?;
        let commit_in_progress = gauge(
            "commit_in_progress",
            "1 while a commit (offsets, or the transaction under exactly-once) waits for the broker, else 0.",
        )?;
        let ready = gauge(
            "ready",
            "1 while the instance is ready (joined its group, stores restored, not stalled), else 0.",
        )?;
        Ok(Metrics {
            ready,
            commit_in_progress,
            commit_seconds,
            records_in_flight,
            uncommitted_records,
            produce_failures: counter(
                "produce_failures_total",
                "Records the broker or producer refused for good (their inputs are dead-lettered, or the processor stops).",
            )?,
            pauses: counter(
                "consumer_pauses_total",
                "Times consumption paused at the bound on uncommitted records or bytes in flight.",
            )?,
            records_in,
            records_out,
            dead_letters,
            processing_seconds,
            consumer_lag,
            restore_seconds,
            restored_records,
            store_values_unreadable,
            commits: counter(
                "commits_total",
                "Offset commits confirmed by the group (each covers only acknowledged outputs).",
            )?,
            commit_failures: counter(
                "commit_failures_total",
                "Offset commits that failed (asked for again at the next commit).",
            )?,
            producer_retries: counter(
                "producer_retries_total",
                "Produce retries of retriable errors (librdkafka's own, in order).",
            )?,
            timer_failures: counter("timer_failures_total", "Timer callbacks that failed.")?,
            assigned_partitions,
            events,
            handles_in: Arc::new(Mutex::new(HashMap::new())),
            handles_out: Arc::new(Mutex::new(HashMap::new())),
            rewinds: counter(
                "rewinds_total",
                "Times every task went back to its last commit (stores restored, inputs read again): under exactly once after a refused record or an aborted commit (the open transaction aborted); at least once after a revocation whose wait ran out (the records in flight purged).",
            )?,
            revocations: counter(
                "revocations_total",
                "Rebalances that took partitions from this instance (each commits their offsets and drops their tasks).",
            )?,
            registry,
        })
    }
}

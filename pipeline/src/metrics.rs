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
    pub commits: IntCounter,
    pub commit_failures: IntCounter,
    pub producer_retries: IntCounter,
    pub timer_failures: IntCounter,
    pub assigned_partitions: IntGauge,
    pub events: IntCounterVec,
    pub rejoins: IntCounter,
    /// Per-topic counter handles (in, out), so counting a record is not a label lookup.
    handles: Arc<Mutex<(TopicCounters, TopicCounters)>>,
}

impl Metrics {
    fn count(&self, incoming: bool, topic: &str) {
        let Ok(mut handles) = self.handles.lock() else {
            return;
        };
        let (map, vec) = if incoming {
            (&mut handles.0, &self.records_in)
        } else {
            (&mut handles.1, &self.records_out)
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
        Ok(Metrics {
            records_in,
            records_out,
            dead_letters,
            processing_seconds,
            consumer_lag,
            restore_seconds,
            restored_records,
            commits: counter(
                "commits_total",
                "Offset commits (each after every output it covers was acknowledged).",
            )?,
            commit_failures: counter(
                "commit_failures_total",
                "Offset commits that failed (the records will be processed again).",
            )?,
            producer_retries: counter(
                "producer_retries_total",
                "Records re-sent after a delivery failed.",
            )?,
            timer_failures: counter("timer_failures_total", "Timer callbacks that failed.")?,
            assigned_partitions,
            events,
            handles: Arc::new(Mutex::new((HashMap::new(), HashMap::new()))),
            rejoins: counter("group_rejoins_total", "Times the instance left and rejoined its group after waiting too long for an assignment.")?,
            registry,
        })
    }
}

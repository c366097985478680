//! `anomaly-detector`: flag spikes, stuck sensors and silent sensors on Kafka.
switchyard_pipeline::processor_main!(
    "Flags spikes, stuck sensors and silent sensors per device",
    |config, catalog| Ok(anomaly_detector::AnomalyDetector::new(catalog, &config))
);

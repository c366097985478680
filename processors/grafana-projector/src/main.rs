//! `grafana-projector`: run the projector on Kafka.
switchyard_pipeline::processor_main!(
    "Republishes sensor readings for Grafana: no timestamp field, record time = sensor time",
    |catalog| Ok(grafana_projector::GrafanaProjector::new(catalog))
);

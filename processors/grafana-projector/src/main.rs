//! `grafana-projector`: run the projector on Kafka.
switchyard_pipeline::processor_main!(
    "Republishes sensor readings for Grafana: no timestamp field, record time = sensor time",
    |config, catalog| Ok(grafana_projector::GrafanaProjector::with_config(
        catalog, &config
    ))
);

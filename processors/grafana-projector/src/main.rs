//! `grafana-projector`: run the projector on Kafka.

use anyhow::Context;
use clap::Parser;
use grafana_projector::GrafanaProjector;
use switchyard_pipeline::RunnerConfig;
use switchyard_schemas::Catalog;

#[derive(Parser)]
#[command(
    version,
    about = "Republishes sensor readings for Grafana: no timestamp field, record time = sensor time"
)]
struct Args {
    #[command(flatten)]
    runner: RunnerConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    switchyard_telemetry::init_tracing("info,librdkafka=warn,rdkafka=warn");
    let args = Args::parse();
    let catalog = Catalog::embedded().context("the built-in catalog is invalid")?;
    switchyard_pipeline::run(GrafanaProjector::new(&catalog), args.runner)
        .await
        .context("grafana-projector stopped")
}

//! `anomaly-detector`: run the detector on Kafka.

use anomaly_detector::{AnomalyDetector, DetectorConfig};
use anyhow::Context;
use clap::Parser;
use switchyard_pipeline::RunnerConfig;
use switchyard_schemas::Catalog;

#[derive(Parser)]
#[command(
    version,
    about = "Flags spikes, stuck sensors and silent sensors per device"
)]
struct Args {
    #[command(flatten)]
    runner: RunnerConfig,
    #[command(flatten)]
    detector: DetectorConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    switchyard_telemetry::init_tracing("info,librdkafka=warn,rdkafka=warn");
    let args = Args::parse();
    let catalog = Catalog::embedded().context("the built-in catalog is invalid")?;
    switchyard_pipeline::run(AnomalyDetector::new(&catalog, &args.detector), args.runner)
        .await
        .context("anomaly-detector stopped")
}

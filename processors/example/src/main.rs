//! `reading-counter`: run the example processor on Kafka.

use anyhow::Context;
use clap::Parser;
use reading_counter::ReadingCounter;
use switchyard_pipeline::RunnerConfig;
use switchyard_schemas::Catalog;

#[derive(Parser)]
#[command(
    version,
    about = "Counts readings per modem and sensor (the example Switchyard processor)"
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
    switchyard_pipeline::run(ReadingCounter::new(&catalog), args.runner)
        .await
        .context("reading-counter stopped")
}

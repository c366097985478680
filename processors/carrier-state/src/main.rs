//! `carrier-state`: run the carrier state store on Kafka.

use anyhow::Context;
use carrier_state::{CarrierStateConfig, CarrierStateProcessor};
use clap::Parser;
use switchyard_pipeline::RunnerConfig;

#[derive(Parser)]
#[command(
    version,
    about = "The store of every modem's SIM carrier and its switch requests"
)]
struct Args {
    #[command(flatten)]
    runner: RunnerConfig,
    #[command(flatten)]
    carrier_state: CarrierStateConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    switchyard_telemetry::init_tracing("info,librdkafka=warn,rdkafka=warn");
    let args = Args::parse();
    switchyard_pipeline::run(CarrierStateProcessor::new(args.carrier_state), args.runner)
        .await
        .context("carrier-state stopped")
}

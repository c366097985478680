//! `switchyard-gateway`: device packets over UDP to Kafka and back.

use clap::Parser;
use switchyard_gateway::GatewayConfig;

#[derive(Parser)]
#[command(version, about = "UDP <-> Kafka gateway for Switchyard devices")]
struct Args {
    #[command(flatten)]
    gateway: GatewayConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    switchyard_telemetry::init_tracing("info,librdkafka=warn,rdkafka=warn");
    let args = Args::parse();
    switchyard_gateway::run(args.gateway, switchyard_telemetry::shutdown_signal()).await
}

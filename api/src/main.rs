//! `switchyard-api`: the operators' switch API and page.

use clap::Parser;
use switchyard_api::ApiConfig;

#[derive(Parser)]
#[command(
    version,
    about = "Switchyard's switch API: modems, carriers, switch requests"
)]
struct Args {
    #[command(flatten)]
    config: ApiConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    switchyard_telemetry::init_tracing("info");
    let args = Args::parse();
    switchyard_api::run(args.config, switchyard_telemetry::shutdown_signal()).await
}

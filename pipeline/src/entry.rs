//! What every processor binary's `main` does, so that a processor's `main.rs` is one macro
//! call: set up logging, parse the runner's flags and the processor's own (each with its
//! `SWITCHYARD_*` variable), build the processor from them and the catalog, run it on Kafka
//! until SIGTERM, and exit non-zero with the whole error chain if it stops on an error.
//!
//! ```ignore
//! // No flags of its own: the closure takes the catalog.
//! switchyard_pipeline::processor_main!("Counts readings per modem and sensor", |catalog| {
//!     Ok(reading_counter::ReadingCounter::new(catalog))
//! });
//! // Flags of its own (a `clap::Args` type) and the catalog.
//! switchyard_pipeline::processor_main!("Flags anomalies", |config, catalog| {
//!     Ok(anomaly_detector::AnomalyDetector::new(catalog, &config))
//! });
//! ```

use std::error::Error;
use std::process::ExitCode;

use clap::{Args, FromArgMatches};
use switchyard_schemas::Catalog;

use crate::{run, Processor, RunnerConfig};

/// For a processor with no flags of its own.
#[derive(Debug, Clone, Default, Args)]
pub struct NoFlags {}

/// Expands to `fn main()` for a processor binary: `about` is its `--help` line, `build`
/// makes the processor from its own flags (a `clap::Args` type, or [`NoFlags`]) and the
/// catalog. Name and version come from the binary's Cargo package.
#[macro_export]
macro_rules! processor_main {
    ($about:expr, |$catalog:ident| $body:expr $(,)?) => {
        $crate::processor_main!($about, |_: $crate::NoFlags, $catalog| $body);
    };
    ($about:expr, $build:expr $(,)?) => {
        fn main() -> ::std::process::ExitCode {
            $crate::entry::processor_main(
                env!("CARGO_PKG_NAME"),
                env!("CARGO_PKG_VERSION"),
                $about,
                $build,
            )
        }
    };
}

/// The body of [`processor_main!`].
pub fn processor_main<A, P, F>(
    name: &'static str,
    version: &'static str,
    about: &'static str,
    build: F,
) -> ExitCode
where
    A: Args + FromArgMatches,
    P: Processor,
    F: FnOnce(A, &Catalog) -> Result<P, Box<dyn Error + Send + Sync>>,
{
    switchyard_telemetry::init_tracing("info,librdkafka=warn,rdkafka=warn");
    let command = clap::Command::new(name).version(version);
    // The flag structs' doc comments would become the about text: ours goes last.
    let matches = RunnerConfig::augment_args(A::augment_args(command))
        .about(about)
        .long_about(None)
        .get_matches();
    let runner = RunnerConfig::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let own = A::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match start(own, runner, build) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut message = format!("error: {name} stopped: {e}");
            let mut source = e.source();
            while let Some(cause) = source {
                message.push_str(&format!("\n  caused by: {cause}"));
                source = cause.source();
            }
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn start<A, P, F>(
    own: A,
    runner: RunnerConfig,
    build: F,
) -> Result<(), Box<dyn Error + Send + Sync>>
where
    P: Processor,
    F: FnOnce(A, &Catalog) -> Result<P, Box<dyn Error + Send + Sync>>,
{
    let catalog = Catalog::embedded()?;
    let processor = build(own, &catalog)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(processor, runner))?;
    Ok(())
}

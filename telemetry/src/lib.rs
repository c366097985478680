//! Logging set-up shared by Switchyard's binaries: `tracing` to stderr, filtered by
//! `RUST_LOG` (else the binary's default), with colours only on a terminal so log files
//! stay plain text.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Install the global subscriber. `default_filter` applies when `RUST_LOG` is unset.
pub fn init_tracing(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
}

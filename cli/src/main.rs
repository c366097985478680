//! `switchyard`: the operator CLI.

mod avro_json;
mod brokers;
mod dlq;
mod grafana;
mod keys;
mod packet;
mod produce;
mod scaffold;
mod switch;
mod tail;
mod topics;
mod topics_doc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Operate a Switchyard deployment"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

pub use switchyard_kafka::Endpoints;

#[derive(Subcommand)]
enum Command {
    /// Decode and encode device packets.
    Packet {
        #[command(subcommand)]
        command: packet::PacketCommand,
    },
    /// The Kafka cluster: its brokers, and any partition without a leader or short of
    /// in-sync replicas.
    Brokers {
        #[command(flatten)]
        endpoints: Endpoints,
        #[command(flatten)]
        args: brokers::BrokersArgs,
    },
    /// The topic catalog: list it, or create its topics and register its schemas.
    Topics {
        #[command(flatten)]
        endpoints: Endpoints,
        #[command(subcommand)]
        command: topics::TopicsCommand,
    },
    /// Produce one record, given as JSON, encoded with the topic's schema through the registry.
    Produce {
        #[command(flatten)]
        endpoints: Endpoints,
        #[command(flatten)]
        args: produce::ProduceArgs,
    },
    /// Print a topic's records as JSON lines, decoded through the schema registry.
    Tail {
        #[command(flatten)]
        endpoints: Endpoints,
        #[command(flatten)]
        args: tail::TailArgs,
    },
    /// Scaffold a new processor: crate, output schema, catalog entries, workspace member.
    New {
        #[command(subcommand)]
        command: scaffold::NewCommand,
    },
    /// A processor's dead letters: list them, or replay them to their topics after a fix.
    Dlq {
        #[command(flatten)]
        endpoints: Endpoints,
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Modem keys: the file the gateway authenticates with and the simulator signs with.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Every modem the switch API knows: carrier, status, last seen, latest request.
    Modems {
        #[command(flatten)]
        api: switch::ApiArgs,
    },
    /// Ask a modem's SIM to switch carrier through the switch API.
    Switch {
        #[command(flatten)]
        api: switch::ApiArgs,
        #[command(flatten)]
        args: switch::SwitchArgs,
    },
}

/// Print one line to stdout. A closed pipe (`switchyard tail imu | head`) ends the
/// program quietly instead of panicking.
pub fn emit(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// A failure and the exit code it deserves: 2 for bad input, 1 for everything else.
pub enum Failure {
    BadInput(String),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    switchyard_telemetry::init_tracing("warn");
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Packet { command } => packet::run(command),
        Command::Brokers { endpoints, args } => brokers::run(&endpoints, args),
        Command::Topics { endpoints, command } => topics::run(&endpoints, command).await,
        Command::Produce { endpoints, args } => produce::run(&endpoints, args).await,
        Command::Tail { endpoints, args } => tail::run(&endpoints, args).await,
        Command::New { command } => scaffold::run(command),
        Command::Dlq { endpoints, command } => dlq::run(&endpoints, command).await,
        Command::Keys { command } => keys::run(command),
        Command::Modems { api } => switch::modems(&api).await,
        Command::Switch { api, args } => switch::switch(&api, args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::BadInput(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

//! `switchyard-sim`: the software SIM, inserted into vsmartcard's vpcd virtual reader so
//! that `pcscd` (and the modem simulator, through the `pcsc` crate) sees a real card.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use switchyard_protocol::Carrier;
use switchyard_sim::memory::{self, CounterFile};
use switchyard_sim::{Applet, SimConfig};

#[derive(Parser)]
#[command(
    version,
    about = "Software SIM (multi-carrier applet) behind the vpcd virtual reader"
)]
struct Args {
    /// vpcd's card port (35963 is its first slot, 35964 the second).
    #[arg(long, env = "SWITCHYARD_VPCD", default_value = "127.0.0.1:35963")]
    vpcd: SocketAddr,
    /// ICCID (19 or 20 digits).
    #[arg(
        long,
        env = "SWITCHYARD_SIM_ICCID",
        default_value = "8901260000000000042"
    )]
    iccid: String,
    /// The modem identity this SIM speaks for.
    #[arg(
        long,
        env = "SWITCHYARD_MODEM_ID",
        default_value_t = 356_938_035_643_809
    )]
    modem_id: u64,
    /// The modem's key (hex); with it, envelopes are signed and Performs must be.
    #[arg(long, env = "SWITCHYARD_MODEM_KEY")]
    key: Option<String>,
    /// Speak v1 (no envelope), like the original devices.
    #[arg(long, env = "SWITCHYARD_SIM_V1")]
    v1: bool,
    /// Carrier at power-on: at&t, t-mobile, verizon, disconnect.
    #[arg(long, env = "SWITCHYARD_SIM_CARRIER", default_value = "at&t")]
    carrier: String,
    /// The SIM's non-volatile memory: its counters are kept in DIR/MODEM_ID.counters, so
    /// that after a restart it never repeats a sequence number the gateway has seen.
    /// Default: $XDG_STATE_HOME/switchyard/sims (~/.local/state/switchyard/sims).
    #[arg(long, env = "SWITCHYARD_SIM_MEMORY")]
    sim_memory: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    switchyard_telemetry::init_tracing("info");
    let args = Args::parse();
    if !(19..=20).contains(&args.iccid.len()) || !args.iccid.bytes().all(|b| b.is_ascii_digit()) {
        anyhow::bail!("--iccid must be 19 or 20 digits");
    }
    let carrier: Carrier = args.carrier.parse().map_err(anyhow::Error::msg)?;
    let key = args
        .key
        .as_deref()
        .map(hex::decode)
        .transpose()
        .context("--key must be hex")?;
    let dir = args.sim_memory.unwrap_or_else(memory::default_dir);
    let memory = CounterFile::in_dir(&dir, args.modem_id)?;
    tracing::info!(memory = %memory.path().display(), "SIM counters kept here");
    let applet = Applet::with_memory(
        SimConfig {
            iccid: args.iccid,
            modem_id: args.modem_id,
            key,
            v1: args.v1,
            carrier,
        },
        Box::new(memory),
    )?;
    switchyard_sim::vpcd::run(args.vpcd, applet)
}

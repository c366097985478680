//! `switchyard-modem`: simulated modems. One modem with its SIM over PC/SC (the real stack,
//! e.g. `switchyard-sim` in vpcd's reader), or a fleet of modems with in-process SIMs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use switchyard_modem::{Dialogue, Faults, InProcess, Modem, PcscCard, Sensor, ValueRange};
use switchyard_protocol::Carrier;
use switchyard_sim::memory::{self, CounterFile};
use switchyard_sim::{Applet, SimConfig};
use tracing::{error, info};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SimKind {
    /// A card behind PC/SC (pcscd), e.g. switchyard-sim in vpcd's virtual reader.
    Pcsc,
    /// The software SIM inside this process (one per modem in a fleet).
    InProcess,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DialogueKind {
    Etsi,
    Original,
}

#[derive(Parser)]
#[command(
    version,
    about = "Simulated modems: sensors, SIM, UDP link to the gateway"
)]
struct Args {
    /// The gateway's UDP address, HOST:PORT (a name is resolved once at start).
    #[arg(long, env = "SWITCHYARD_GATEWAY", default_value = "127.0.0.1:6001")]
    gateway: String,
    /// Where the SIM is.
    #[arg(long, env = "SWITCHYARD_SIM", value_enum, default_value = "in-process")]
    sim: SimKind,
    /// PC/SC reader name (substring), with --sim pcsc.
    #[arg(long, env = "SWITCHYARD_READER", default_value = "Virtual PCD 00 00")]
    reader: String,
    /// Modems to simulate (in-process SIMs only); ids are --modem-id, +1, +2, …
    #[arg(long, env = "SWITCHYARD_FLEET", default_value_t = 1)]
    fleet: u64,
    /// First modem id (in-process SIMs).
    #[arg(
        long,
        env = "SWITCHYARD_MODEM_ID",
        default_value_t = 356_938_035_643_809
    )]
    modem_id: u64,
    /// Modem key (hex) for the in-process SIMs; the gateway must know it.
    #[arg(long, env = "SWITCHYARD_MODEM_KEY", conflicts_with = "keys")]
    key: Option<String>,
    /// A keys file (`MODEM_ID HEX_KEY` per line, the gateway's format): each in-process
    /// SIM signs with its own modem's key; a modem without a line in it is an error.
    #[arg(long, env = "SWITCHYARD_MODEM_KEYS")]
    keys: Option<std::path::PathBuf>,
    /// The in-process SIMs' non-volatile memory: each keeps its counters in
    /// DIR/MODEM_ID.counters, so that after a restart it never repeats a sequence number
    /// the gateway has seen. Default: $XDG_STATE_HOME/switchyard/sims
    /// (~/.local/state/switchyard/sims).
    #[arg(long, env = "SWITCHYARD_SIM_MEMORY")]
    sim_memory: Option<std::path::PathBuf>,
    /// In-process SIMs speak v1, like the original devices.
    #[arg(long, env = "SWITCHYARD_SIM_V1")]
    v1: bool,
    /// How the modem talks to its SIM: `etsi` (TS 102 223, every packet through the SIM) or
    /// `original` (the original modem client: readings straight to the gateway, no status
    /// packets, the SIM polled with `00 F3` every --poll-ms). An original device is
    /// `--v1 --dialogue original`.
    #[arg(
        long,
        env = "SWITCHYARD_SIM_DIALOGUE",
        value_enum,
        default_value = "etsi"
    )]
    dialogue: DialogueKind,
    /// Milliseconds between the original client's polls of the SIM.
    #[arg(long, env = "SWITCHYARD_SIM_POLL_MS", default_value_t = 1000)]
    poll_ms: u64,
    /// Sensor rates in Hz: imu,gyro,temp (device ids 1, 2, 3); the original devices' groups
    /// ran at 100, 10 and 1 Hz. 0 turns a sensor off.
    #[arg(long, env = "SWITCHYARD_RATES", value_delimiter = ',', default_values_t = [100.0, 10.0, 1.0])]
    rates: Vec<f64>,
    /// Sensor value spans, MIN:MAX each: imu,gyro,temp.
    #[arg(long, env = "SWITCHYARD_RANGES", value_delimiter = ',', allow_hyphen_values = true,
          default_values_t = [ValueRange::default_for(1), ValueRange::default_for(2), ValueRange::default_for(3)])]
    ranges: Vec<ValueRange>,
    /// Seconds between status reports.
    #[arg(long, env = "SWITCHYARD_STATUS_SECS", default_value_t = 10)]
    status_secs: u64,
    /// Fractions of packets to drop / duplicate / delay, each way.
    #[arg(long, default_value_t = 0.0)]
    drop: f64,
    #[arg(long, default_value_t = 0.0)]
    duplicate: f64,
    #[arg(long, default_value_t = 0.0)]
    delay: f64,
    /// How long a delayed packet waits (ms).
    #[arg(long, default_value_t = 500)]
    delay_ms: u64,
    /// Stop after this many seconds (default: run until killed).
    #[arg(long)]
    duration_secs: Option<u64>,
}

fn sensors(rates: &[f64], ranges: &[ValueRange]) -> Vec<Sensor> {
    rates
        .iter()
        .enumerate()
        .filter(|(_, r)| **r > 0.0)
        .map(|(i, r)| {
            let device_id = i as u32 + 1;
            let range = ranges
                .get(i)
                .copied()
                .unwrap_or_else(|| ValueRange::default_for(device_id));
            Sensor::with_range(device_id, *r, range)
        })
        .collect()
}

/// HOST:PORT to an address; retried for a while, since in a container the gateway's name
/// may not resolve until it has started.
fn resolve(gateway: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match gateway.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(addr)) => return Ok(addr),
            Ok(None) => bail!("--gateway {gateway:?} resolves to no address"),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput || Instant::now() > deadline => {
                return Err(e)
                    .with_context(|| format!("--gateway {gateway:?} (expected HOST:PORT)"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

fn main() -> anyhow::Result<()> {
    switchyard_telemetry::init_tracing("info");
    let args = Args::parse();
    for p in [args.drop, args.duplicate, args.delay] {
        if !(0.0..=1.0).contains(&p) {
            bail!("fault fractions are between 0 and 1");
        }
    }
    let faults = Faults {
        drop: args.drop,
        duplicate: args.duplicate,
        delay: args.delay,
        delay_by: Duration::from_millis(args.delay_ms),
    };
    let gateway = resolve(&args.gateway)?;
    let until = args
        .duration_secs
        .map(|s| Instant::now() + Duration::from_secs(s));
    let status_every = Duration::from_secs(args.status_secs.max(1));
    let dialogue = match args.dialogue {
        DialogueKind::Etsi => Dialogue::Etsi,
        DialogueKind::Original => Dialogue::Original {
            poll_every: Duration::from_millis(args.poll_ms.max(1)),
        },
    };
    match args.sim {
        SimKind::Pcsc => {
            if args.fleet != 1 {
                bail!("--sim pcsc drives one card; use --sim in-process for a fleet");
            }
            // The card may not be in the reader yet (the SIM connects to vpcd on its own).
            let wait_until = Instant::now() + Duration::from_secs(60);
            let card = loop {
                match PcscCard::connect(&args.reader) {
                    Ok(card) => break card,
                    Err(e) if Instant::now() < wait_until => {
                        info!(error = %e, reader = %args.reader, "waiting for the SIM");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    Err(e) => return Err(e),
                }
            };
            let mut modem = Modem::new(card, gateway, faults, 1)?.with_dialogue(dialogue);
            info!(%gateway, imsi = %modem.read_imsi().unwrap_or_default(), "modem running with its SIM over PC/SC");
            modem.run(&mut sensors(&args.rates, &args.ranges), status_every, until)
        }
        SimKind::InProcess => {
            let key = args
                .key
                .as_deref()
                .map(hex::decode)
                .transpose()
                .context("--key must be hex")?;
            let keys = match &args.keys {
                Some(path) => Some(
                    switchyard_protocol::keys::parse_keys(
                        &std::fs::read_to_string(path)
                            .with_context(|| format!("reading {}", path.display()))?,
                    )
                    .with_context(|| format!("parsing {}", path.display()))?,
                ),
                None => None,
            };
            let key_of = |modem_id: u64| -> anyhow::Result<Option<Vec<u8>>> {
                match &keys {
                    Some(keys) => keys
                        .get(modem_id)
                        .map(|k| Some(k.to_vec()))
                        .with_context(|| format!("no key for modem {modem_id} in the keys file")),
                    None => Ok(key.clone()),
                }
            };
            let modem_keys = (0..args.fleet.max(1))
                .map(|i| key_of(args.modem_id + i))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let memory_dir = args.sim_memory.clone().unwrap_or_else(memory::default_dir);
            info!(memory = %memory_dir.display(), "SIM counters kept here");
            let threads: Vec<_> = (0..args.fleet.max(1))
                .zip(modem_keys)
                .map(|(i, key)| {
                    let (gateway, rates, ranges, v1) =
                        (gateway, args.rates.clone(), args.ranges.clone(), args.v1);
                    let modem_id = args.modem_id + i;
                    let memory_dir = memory_dir.clone();
                    std::thread::spawn(move || -> anyhow::Result<()> {
                        let memory = CounterFile::in_dir(&memory_dir, modem_id)?;
                        let applet = Applet::with_memory(
                            SimConfig {
                                iccid: format!("89012600{:011}", modem_id % 100_000_000_000),
                                modem_id,
                                key,
                                v1,
                                carrier: Carrier::AtAndT,
                            },
                            Box::new(memory),
                        )?;
                        let mut modem = Modem::new(InProcess(applet), gateway, faults, modem_id)?
                            .with_dialogue(dialogue);
                        modem.run(&mut sensors(&rates, &ranges), status_every, until)
                    })
                })
                .collect();
            info!(fleet = threads.len(), %gateway, "modems running with in-process SIMs");
            for t in threads {
                match t.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => error!(error = %e, "a modem stopped"),
                    Err(_) => error!("a modem thread panicked"),
                }
            }
            Ok(())
        }
    }
}

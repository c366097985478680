//! The gateway's settings (flags with `SWITCHYARD_*` fallbacks) and its UDP socket.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use switchyard_kafka::Endpoints;
use tracing::{info, warn};

#[derive(Debug, Clone, Args)]
pub struct GatewayConfig {
    /// UDP address devices send to (and receive from: one socket).
    #[arg(
        long,
        env = "SWITCHYARD_GATEWAY_LISTEN",
        default_value = "0.0.0.0:6001"
    )]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub endpoints: Endpoints,
    /// Serve /metrics and /health here.
    #[arg(
        long,
        env = "SWITCHYARD_METRICS_LISTEN",
        default_value = "127.0.0.1:9104"
    )]
    pub metrics_listen: SocketAddr,
    /// Modem id that v1 packets (which carry no identity) are attributed to.
    #[arg(long, env = "SWITCHYARD_LEGACY_MODEM_ID", default_value = "0")]
    pub legacy_modem_id: String,
    /// Refuse v1 packets (once every device speaks the envelope).
    #[arg(long, env = "SWITCHYARD_REJECT_V1")]
    pub reject_v1: bool,
    /// Modem keys, one `MODEM_ID HEX_KEY` per line: envelopes must carry a valid tag and
    /// a fresh sequence number. Required, unless --insecure.
    #[arg(long, env = "SWITCHYARD_MODEM_KEYS")]
    pub modem_keys: Option<PathBuf>,
    /// Run without modem keys: every envelope is trusted as it comes, so anyone who can
    /// reach the socket can speak for any modem and move its downlink. For a closed lab
    /// only; logged at start and shown as `switchyard_gateway_insecure 1`.
    #[arg(
        long,
        env = "SWITCHYARD_INSECURE",
        conflicts_with = "modem_keys",
        value_parser = clap::builder::BoolishValueParser::new(),
        action = clap::ArgAction::SetTrue
    )]
    pub insecure: bool,
    /// First retransmission after this many milliseconds (then doubling).
    #[arg(long, env = "SWITCHYARD_RETRY_INITIAL_MS", default_value_t = 1000)]
    pub retry_initial_ms: u64,
    /// Longest wait between retransmissions.
    #[arg(long, env = "SWITCHYARD_RETRY_MAX_MS", default_value_t = 8000)]
    pub retry_max_ms: u64,
    /// Records each of the producers (readings, sessions and status, switch path) may hold
    /// while the broker is unreachable.
    #[arg(long, env = "SWITCHYARD_GATEWAY_BUFFER", default_value_t = 100_000)]
    pub buffer_records: u32,
    /// UDP receive buffer to ask the kernel for (bytes); bursts beyond it are dropped by
    /// the kernel before the gateway sees them. Linux caps it at net.core.rmem_max.
    #[arg(
        long,
        env = "SWITCHYARD_GATEWAY_UDP_BUFFER",
        default_value_t = 4 * 1024 * 1024
    )]
    pub udp_buffer_bytes: usize,
    /// How long the producer of readings, status and sessions waits to fill a batch
    /// (librdkafka `linger.ms`; ACKs and downlink deliveries are sent at once). Each produce
    /// request costs the broker far more than each record in it, so a longer wait trades
    /// latency for broker CPU.
    #[arg(long, env = "SWITCHYARD_GATEWAY_LINGER_MS", default_value_t = 5)]
    pub linger_ms: u64,
    /// While datagrams come less than half this apart (microseconds), the uplink thread
    /// lets them queue in the socket for this long between rounds and then takes them all,
    /// instead of sleeping and waking once per datagram; a reading may wait this much
    /// longer. 0: wake for every datagram.
    #[arg(long, env = "SWITCHYARD_GATEWAY_COALESCE_US", default_value_t = 1000)]
    pub coalesce_us: u64,
    /// This instance's name in `device-sessions`: the sessions it holds are those it reads
    /// back after a restart. Give each of N gateways its own, and keep it across restarts.
    #[arg(long, env = "SWITCHYARD_GATEWAY_ID", default_value = "gateway")]
    pub instance_id: String,
    /// A modem's session is re-written at most this often while nothing about it changes
    /// (its `last seen` has this resolution), whatever its packet rate.
    #[arg(long, env = "SWITCHYARD_SESSION_HEARTBEAT_SECS", default_value_t = 30)]
    pub session_heartbeat_secs: u64,
    /// A session this instance holds expires when its modem has not been heard for this
    /// long (seconds; 0: never): its downlink route is dropped, and the session of a modem
    /// without a key is deleted from `device-sessions` (a tombstone), so the table and the
    /// topic stay bounded. A keyed modem's record stays: it carries the replay floor.
    #[arg(long, env = "SWITCHYARD_SESSION_EXPIRY_SECS", default_value_t = 30 * 24 * 3600)]
    pub session_expiry_secs: u64,
}

impl GatewayConfig {
    /// v1 packets carry no identity and no tag: the legacy id they are given must be a
    /// modem id sessions can hold (a u64, as envelopes carry), and not one with a key, or
    /// unsigned packets would speak for a modem that signs.
    pub fn check_legacy_modem_id(
        &self,
        keys: &switchyard_protocol::keys::ModemKeys,
    ) -> anyhow::Result<()> {
        let id = &self.legacy_modem_id;
        let Ok(modem) = id.parse::<u64>() else {
            anyhow::bail!(
                "--legacy-modem-id {id:?} is not a modem id (an unsigned 64-bit number, as envelopes carry)"
            );
        };
        anyhow::ensure!(
            !keys.contains(modem),
            "--legacy-modem-id {modem} has a key in the modem keys file: v1 packets, which carry no tag, would speak for a modem that signs; give v1 devices an id of their own"
        );
        Ok(())
    }
}

/// The gateway's one UDP socket, with a receive buffer sized for bursts. It blocks (the
/// uplink thread sleeps in `recv_from`; downlink sends pass `MSG_DONTWAIT`).
pub fn bind_udp(listen: SocketAddr, recv_buffer: usize) -> anyhow::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )
    .context("creating the UDP socket")?;
    if let Err(e) = socket.set_recv_buffer_size(recv_buffer) {
        warn!(error = %e, bytes = recv_buffer, "cannot size the UDP receive buffer; using the default");
    }
    socket
        .bind(&listen.into())
        .with_context(|| format!("binding UDP {listen}"))?;
    let granted = socket.recv_buffer_size().unwrap_or_default();
    if granted < recv_buffer {
        info!(
            asked = recv_buffer,
            granted, "UDP receive buffer smaller than asked (net.core.rmem_max)"
        );
    }
    Ok(socket.into())
}

//! The gateway: UDP <-> Kafka and nothing else, on one socket for both directions (the
//! original system learned that a second socket breaks under carrier-grade NAT).
//!
//! * Uplink: each datagram is decoded; IoT Data becomes a `SensorReading` on the sensor topic
//!   the device-id catalog names, IoT Status goes to `iot-status`, an ACK to
//!   `carrier-switch-ack` with the request id it answers. Anything else (malformed,
//!   unauthenticated, replayed, a downlink packet sent uplink) is published whole to
//!   `gateway-rejects` with its reason, counted, and logged at a rate-limited level.
//! * Identity: an envelope names its modem; a v1 packet is attributed to the configured
//!   legacy modem id. The latest source address of each modem is its downlink address; with
//!   keys configured, only a packet with a valid tag and a fresh sequence number moves it.
//! * Sessions ([`sessions`]): each modem heard, v1 included, gets a record on the compacted
//!   `device-sessions` topic (this instance, address, protocol, first and last seen) on first
//!   sight, on a move and as a bounded heartbeat; carrier-state lists modems from it, and a
//!   restarted gateway reads its own sessions back, so downlink reaches modems at once.
//! * Scale-out ([`elsewhere`]): every instance reads every switch request; only the one
//!   holding the modem's session sends it, the others leave it (and its deadline) alone.
//! * Downlink: `downstream-request` becomes a Carrier Switch Perform (in an envelope with
//!   the request id, signed when the modem has a key; a bare v1 packet for the legacy
//!   modem), sent to the modem's address and re-sent with backoff until its ACK arrives or
//!   its deadline passes; each step is published to `downlink-delivery`.
//! * A broker that is down: records wait in the producer's bounded queue and go out when it
//!   returns; a full queue drops the record and counts it (`switchyard_gateway_backpressure_total`).
//!
//! Layout, one job per file: `config` (flags, socket), `service` (start-up, shared state,
//! shutdown), `receive` (uplink, on a thread of its own), `send` (the downlink task, sole
//! owner of the pending requests, the downlink numbers and the request offsets, told the
//! rest by message),
//! `publish` (records to Kafka and their accounting), `producer` (the three producers and
//! the broker's answers), with the pure rules beside them: `uplink` (packet to record),
//! `downlink` (when to send, retry, give up), `sessions`, `elsewhere`, `request_offsets`,
//! `replay`, `arbiter`; `restore` reads sessions back at start, `follow` keeps reading
//! them and `expiry` ends those of modems long silent; `socket_drops` reads the kernel's counters.

pub mod arbiter;
mod config;
pub mod downlink;
pub mod elsewhere;
mod ended;
mod expiry;
mod follow;
pub mod metrics;
mod producer;
mod publish;
mod receive;
pub mod replay;
pub mod request_offsets;
pub mod restore;
mod send;
mod service;
mod session_table;
pub mod sessions;
pub mod socket_drops;
pub mod uplink;

pub use config::{bind_udp, GatewayConfig};
pub use service::run;

pub const REQUEST_TOPIC: &str = switchyard_schemas::topics::DOWNSTREAM_REQUEST;
pub const DELIVERY_TOPIC: &str = switchyard_schemas::topics::DOWNLINK_DELIVERY;
pub const REJECT_TOPIC: &str = switchyard_schemas::topics::GATEWAY_REJECTS;
pub const SESSIONS_TOPIC: &str = switchyard_schemas::topics::DEVICE_SESSIONS;
pub const DEAD_LETTER_TOPIC: &str = switchyard_schemas::topics::GATEWAY_DLQ;
/// The name of the thread that receives and handles uplink datagrams.
pub const UPLINK_THREAD: &str = "uplink";

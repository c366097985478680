//! The gateway's Prometheus metrics.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

#[derive(Clone)]
pub struct GatewayMetrics {
    pub registry: Registry,
    pub packets: IntCounterVec,
    pub rejects: IntCounterVec,
    pub produce_seconds: Histogram,
    pub produce_failures: IntCounterVec,
    pub dead_lettered: IntCounterVec,
    pub receive_errors: IntCounter,
    pub backpressure: IntCounter,
    pub dropped: IntCounterVec,
    pub kernel_drops: IntGauge,
    pub downlink_sent: IntCounter,
    pub downlink_retries: IntCounter,
    pub undeliverable: IntCounterVec,
    pub known_modems: IntGauge,
    pub session_writes: IntCounter,
    pub sessions_restored: IntGauge,
    pub sessions_expired: IntCounterVec,
    pub performs_refused: IntCounter,
    pub buffered: IntGaugeVec,
    pub modems_elsewhere: IntGauge,
    pub modems_moved_away: IntCounter,
    pub stale_claims_refuted: IntCounter,
    pub insecure: IntGauge,
    pub requests_ended_before: IntCounter,
    pub left_to_holder: IntCounter,
    pub expired_requests: IntCounter,
    pub sequence_resyncs: IntCounterVec,
    pub withheld: IntCounterVec,
    pub waiting_for_the_log: IntGauge,
}

/// Upper bounds (seconds) of the `produce_seconds` histogram: fine below 100 ms, where a
/// healthy gateway lives, coarse above.
pub const PRODUCE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.01, 0.0125, 0.015, 0.02,
    0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
];

impl GatewayMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("switchyard_gateway".into()), None)?;
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m;
                registry.register(Box::new(m.clone()))?;
                m
            }};
        }
        Ok(GatewayMetrics {
            packets: reg!(IntCounterVec::new(
                Opts::new("packets_total", "Accepted packets, by type."),
                &["type"]
            )?),
            rejects: reg!(IntCounterVec::new(
                Opts::new("rejects_total", "Rejected datagrams, by reason."),
                &["reason"]
            )?),
            produce_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "produce_seconds",
                    "From the datagram's arrival to the broker's acknowledgement of its record."
                )
                .buckets(PRODUCE_BUCKETS.to_vec())
            )?),
            produce_failures: reg!(IntCounterVec::new(
                Opts::new(
                    "produce_failures_total",
                    "Records the broker did not take (refused, or unanswered within message.timeout.ms), by topic and librdkafka error code; each goes to gateway-dlq."
                ),
                &["topic", "reason"]
            )?),
            dead_lettered: reg!(IntCounterVec::new(
                Opts::new(
                    "dead_lettered_total",
                    "Refused records written to gateway-dlq, by their topic."
                ),
                &["topic"]
            )?),
            receive_errors: reg!(IntCounter::new(
                "receive_errors_total",
                "Errors reading the UDP socket (other than its timeout); the gateway keeps reading."
            )?),
            dropped: reg!(IntCounterVec::new(
                Opts::new(
                    "dropped_total",
                    "Records never handed to the producer, by topic and reason (no_schema, encode, queue_full, produce_error)."
                ),
                &["topic", "reason"]
            )?),
            kernel_drops: reg!(IntGauge::new(
                "udp_kernel_drops",
                "Datagrams the kernel dropped from the gateway's socket because its receive buffer was full (the socket's drops in /proc/net/udp)."
            )?),
            backpressure: reg!(IntCounter::new(
                "backpressure_total",
                "Records dropped because the producer's buffer was full."
            )?),
            downlink_sent: reg!(IntCounter::new(
                "downlink_sent_total",
                "Perform packets sent (first attempts)."
            )?),
            downlink_retries: reg!(IntCounter::new(
                "downlink_retries_total",
                "Perform packets re-sent."
            )?),
            undeliverable: reg!(IntCounterVec::new(
                Opts::new(
                    "undeliverable_total",
                    "Switch requests given up, by reason."
                ),
                &["reason"]
            )?),
            known_modems: reg!(IntGauge::new(
                "known_modems",
                "Modems this instance holds a session for (its address book)."
            )?),
            session_writes: reg!(IntCounter::new(
                "session_writes_total",
                "Records written to device-sessions (first sight, moves, heartbeats)."
            )?),
            sessions_restored: reg!(IntGauge::new(
                "sessions_restored",
                "Sessions read back from device-sessions at start."
            )?),
            sessions_expired: reg!(IntCounterVec::new(
                Opts::new(
                    "sessions_expired_total",
                    "Sessions ended because their modem was not heard for --session-expiry-secs, by what became of their record: deleted (a tombstone), or kept for a keyed modem's replay floor."
                ),
                &["record"]
            )?),
            performs_refused: reg!(IntCounter::new(
                "performs_refused_total",
                "Perform Refused packets: a SIM refused a Perform whose number was not above the last one it executed; the request ends NACKed with the reason, and the modem's next Perform is numbered above."
            )?),
            buffered: reg!(IntGaugeVec::new(
                Opts::new(
                    "buffered_records",
                    "Records handed to a producer and not yet answered by the broker, by producer (readings, sessions_status, switch_path)."
                ),
                &["producer"]
            )?),
            modems_elsewhere: reg!(IntGauge::new(
                "modems_elsewhere",
                "Modems whose session another gateway instance holds."
            )?),
            modems_moved_away: reg!(IntCounter::new(
                "modems_moved_away_total",
                "Sessions ended here because the modem moved to another instance (a newer sequence number there, or heard there after it was taken here)."
            )?),
            requests_ended_before: reg!(IntCounter::new(
                "requests_ended_before_total",
                "Switch requests read again after a restart that had already ended (acked or undeliverable): passed over, not sent again."
            )?),
            stale_claims_refuted: reg!(IntCounter::new(
                "stale_claims_refuted_total",
                "Another instance's session record for a modem held here, with a sequence number not newer than this one accepted (a packet replayed there): the modem stays, and this session is written as the answer."
            )?),
            insecure: reg!(IntGauge::new(
                "insecure",
                "1 when the gateway runs without modem keys (--insecure): envelopes are not authenticated."
            )?),
            left_to_holder: reg!(IntCounter::new(
                "requests_left_to_holder_total",
                "Switch requests past their deadline here that another instance held the modem for: not reported undeliverable by this one."
            )?),
            expired_requests: reg!(IntCounter::new(
                "expired_requests_total",
                "Switch requests already past their deadline when read (e.g. a new instance reading old requests): skipped."
            )?),
            sequence_resyncs: reg!(IntCounterVec::new(
                Opts::new(
                    "sequence_resyncs_total",
                    "Signed packets refused as not fresh (replayed_sequence) answered with a sequence resync: the number the modem's counter must pass (a device behind, e.g. a SIM whose memory was lost, or a replay). At most one a second per modem; by outcome (sent, send_failed)."
                ),
                &["outcome"]
            )?),
            withheld: reg!(IntCounterVec::new(
                Opts::new(
                    "packets_withheld_total",
                    "Packets accepted here but never published, by reason: reserved_elsewhere_first (another instance's session record had reserved their number first in the log: a replay here of a packet accepted there, or the same packet at both), unconfirmed (their own session record was not read back within 30 s), shutdown (still waiting when the gateway stopped)."
                ),
                &["reason"]
            )?),
            waiting_for_the_log: reg!(IntGauge::new(
                "packets_waiting_for_the_log",
                "Packets whose number only their own session record reserves, waiting to read it back from device-sessions before they are published."
            )?),
            registry,
        })
    }
}

//! Downlink, owned by one task: switch requests from `downstream-request` become Perform
//! packets sent to the modem's session address and re-sent until answered or given up;
//! offsets are committed only up to the oldest request still pending. The task owns the
//! pending requests, each modem's downlink numbers and the request offsets; the rest of
//! the gateway tells it what it learns ([`ToDownlink`]) and never touches them.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use switchyard_schemas::records::now_us;

use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use switchyard_kafka::{is_partition_eof, TracingContext};
use switchyard_protocol::json::parse_request_id;
use switchyard_protocol::{Envelope, Frame, Packet};
use switchyard_registry_client::RecordDecoder;
use switchyard_schemas::records::{CarrierSwitchRequest, DeliveryEvent};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::downlink::{Action, Answer, Downlink};
use crate::request_offsets::RequestOffsets;
use crate::service::{rate_limited, Gateway};
use crate::uplink::wire_carrier;
use crate::REQUEST_TOPIC;

/// Messages to the downlink task waiting at most; more are counted and dropped
/// (`switchyard_gateway_dropped_total{topic="downlink"}`): an answer dropped is answered
/// again by the SIM to the Perform's next retransmission, a resync is sent again with the
/// modem's next refused packet.
pub(crate) const DOWNLINK_QUEUE: usize = 65_536;

/// What the rest of the gateway tells the downlink task.
#[derive(Debug)]
pub(crate) enum ToDownlink {
    /// An ACK or NACK whose record the broker has acknowledged: the request it answers ends.
    Answered {
        request_id: Option<u64>,
        modem_id: String,
        answer: Answer,
        source: SocketAddr,
    },
    /// The modem's SIM refused a Perform numbered `executed` or below: number the next
    /// one above.
    NumberAbove { modem: u64, executed: u32 },
    /// A signed packet from `modem` was refused as not fresh: answer with a resync above
    /// `above`, to the address it came from.
    Resync {
        modem: u64,
        above: u32,
        to: SocketAddr,
    },
    /// These modems' sessions expired: their numbering starts again from the clock.
    Forget(Vec<u64>),
}

impl Gateway {
    /// Tell the downlink task something; counted if its queue is full.
    pub(crate) fn tell_downlink(&self, message: ToDownlink) {
        if let Err(e) = self.to_downlink.try_send(message) {
            let reason = match e {
                mpsc::error::TrySendError::Full(_) => "queue_full",
                mpsc::error::TrySendError::Closed(_) => "downlink_stopped",
            };
            let c = self
                .metrics
                .dropped
                .with_label_values(&["downlink", reason]);
            c.inc();
            if rate_limited(c.get()) {
                warn!(
                    reason,
                    dropped = c.get(),
                    "a message to the downlink task was dropped"
                );
            }
        }
    }
}

/// The downlink task's state: only it reads or writes these.
pub(crate) struct DownlinkTask {
    gateway: Arc<Gateway>,
    pending: Downlink,
    /// Each modem's last downlink number sent (or refused by its SIM).
    numbers: HashMap<u64, u32>,
    offsets: RequestOffsets,
    /// Requests read again after a restart that had already ended ([`crate::ended`]),
    /// passed over once each.
    ended: HashSet<(u64, String)>,
}

impl DownlinkTask {
    pub(crate) fn new(gateway: Arc<Gateway>, ended: HashSet<(u64, String)>) -> Self {
        let us = |ms: u64| i64::try_from(ms.saturating_mul(1000)).unwrap_or(i64::MAX);
        let pending = Downlink::new(
            us(gateway.config.retry_initial_ms),
            us(gateway.config.retry_max_ms),
        );
        DownlinkTask {
            gateway,
            pending,
            numbers: HashMap::new(),
            offsets: RequestOffsets::default(),
            ended,
        }
    }

    /// Read requests from `consumer` and messages from `told` until aborted: sends what is
    /// due after each, and every 100 ms for retries and deadlines.
    pub(crate) async fn run(
        mut self,
        consumer: StreamConsumer<TracingContext>,
        mut told: mpsc::Receiver<ToDownlink>,
    ) {
        let Some((id, codec)) = self.gateway.codecs.get(REQUEST_TOPIC).cloned() else {
            warn!("no schema for downstream-request; downlink is off");
            return;
        };
        // Requests written with a newer (compatible) schema are resolved to ours.
        let mut decoder = RecordDecoder::new(self.gateway.registry.clone(), id, codec);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut stored = Vec::new();
        loop {
            self.store_request_offsets(&consumer, &mut stored);
            tokio::select! {
                received = consumer.recv() => match received {
                    Ok(message) => self.take(&message, &mut decoder).await,
                    Err(e) if is_partition_eof(&e) => {}
                    Err(e) => {
                        warn!(error = %e, "reading downstream-request; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
                Some(message) = told.recv() => self.hear(message),
                _ = tick.tick() => {}
            }
            self.act(now_us());
        }
    }

    /// One request read from `downstream-request`.
    async fn take(&mut self, message: &BorrowedMessage<'_>, decoder: &mut RecordDecoder) {
        let (partition, offset) = (message.partition(), message.offset());
        let metrics = &self.gateway.metrics;
        let request = decoder
            .decode::<CarrierSwitchRequest>(message.payload())
            .await
            .and_then(|r| {
                parse_request_id(&r.request_id)
                    .map(|rid| (r, rid))
                    .map_err(|e| e.to_string())
            });
        match request {
            // Past its deadline before it was read (an instance reading old requests for
            // the first time): carrier-state has timed it out; nothing to send.
            Ok((request, _)) if request.deadline <= now_us() => {
                metrics.expired_requests.inc();
                self.offsets.read(partition, offset);
            }
            Ok((request, request_id))
                if self.ended.remove(&(request_id, request.modem_id.clone())) =>
            {
                metrics.requests_ended_before.inc();
                info!(request = %request.request_id, modem = %request.modem_id, "switch request read again after a restart had already ended; not sent again");
                self.offsets.read(partition, offset);
            }
            Ok((request, request_id)) => {
                let added = self.pending.add(
                    request_id,
                    &request.modem_id,
                    wire_carrier(request.carrier),
                    request.deadline,
                    now_us(),
                );
                if added {
                    self.offsets.pending(request_id, partition, offset);
                    info!(request = %request.request_id, modem = %request.modem_id, carrier = ?request.carrier, "switch request taken");
                } else {
                    self.offsets.read(partition, offset);
                }
            }
            Err(e) => {
                metrics
                    .rejects
                    .with_label_values(&["bad_request_record"])
                    .inc();
                warn!(error = %e, offset, "unreadable switch request skipped");
                self.offsets.read(partition, offset);
            }
        }
    }

    fn hear(&mut self, message: ToDownlink) {
        match message {
            ToDownlink::Answered {
                request_id,
                modem_id,
                answer,
                source,
            } => {
                if let Some(p) = self.pending.answered(request_id, &modem_id, answer) {
                    self.gateway.delivery(
                        p.request_id,
                        &modem_id,
                        DeliveryEvent::Acked,
                        p.attempts,
                        Some(source),
                        None,
                    );
                }
            }
            ToDownlink::NumberAbove { modem, executed } => {
                let n = self.numbers.entry(modem).or_insert(0);
                *n = (*n).max(executed);
            }
            ToDownlink::Resync { modem, above, to } => self.send_resync(modem, above, to),
            ToDownlink::Forget(modems) => {
                for modem in modems {
                    self.numbers.remove(&modem);
                }
            }
        }
    }

    /// Send, re-send and give up what is due at `now`.
    fn act(&mut self, now: i64) {
        let gateway = Arc::clone(&self.gateway);
        let actions = match gateway.modems.lock() {
            Ok(modems) => self
                .pending
                .due(now, |m| modems.sessions.address(m).is_some()),
            Err(_) => return,
        };
        for action in actions {
            match action {
                Action::Send {
                    request_id,
                    modem_id,
                    carrier,
                    attempt,
                } => self.send_perform(request_id, &modem_id, carrier, attempt),
                Action::GiveUp {
                    request_id,
                    modem_id,
                    attempts,
                    reason,
                } => gateway.give_up(request_id, &modem_id, attempts, reason),
            }
        }
    }

    fn send_perform(
        &mut self,
        request_id: u64,
        modem_id: &str,
        carrier: switchyard_protocol::Carrier,
        attempt: i32,
    ) {
        let gateway = Arc::clone(&self.gateway);
        let address = gateway
            .modems
            .lock()
            .ok()
            .and_then(|m| m.sessions.address(modem_id));
        let Some(address) = address else {
            return;
        };
        let packet = match self.perform_packet(modem_id, request_id, carrier) {
            Ok(p) => p,
            Err(e) => {
                warn!(modem = %modem_id, error = %e, "cannot build a Perform packet");
                return;
            }
        };
        if let Err(e) = gateway.send_datagram(&packet, address) {
            warn!(%address, error = %e, "UDP send failed");
        }
        let event = if attempt == 1 {
            gateway.metrics.downlink_sent.inc();
            DeliveryEvent::Sent
        } else {
            gateway.metrics.downlink_retries.inc();
            DeliveryEvent::Retried
        };
        gateway.delivery(request_id, modem_id, event, attempt, Some(address), None);
    }

    /// Store for the next background commit, per partition, the offset of the oldest request
    /// still pending (or the one after the last read), when it moved since `stored`.
    fn store_request_offsets(
        &mut self,
        consumer: &StreamConsumer<TracingContext>,
        stored: &mut Vec<(i32, i64)>,
    ) {
        let pending = &self.pending;
        self.offsets.retain(|id| pending.contains(id));
        let positions = self.offsets.positions();
        if positions == *stored {
            return;
        }
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (partition, offset) in &positions {
            if tpl
                .add_partition_offset(REQUEST_TOPIC, *partition, rdkafka::Offset::Offset(*offset))
                .is_err()
            {
                return;
            }
        }
        match consumer.store_offsets(&tpl) {
            Ok(()) => *stored = positions,
            // A partition no longer assigned (rebalance): tried again at the next tick.
            Err(e) => warn!(error = %e, "storing downstream-request offsets"),
        }
    }

    /// The Perform packet for a modem: bare v1 for the legacy modem, else an envelope with
    /// the request id, signed when the modem has a key.
    fn perform_packet(
        &mut self,
        modem_id: &str,
        request_id: u64,
        carrier: switchyard_protocol::Carrier,
    ) -> anyhow::Result<Vec<u8>> {
        let packet = Packet::CarrierSwitchPerform(carrier);
        if modem_id == self.gateway.config.legacy_modem_id {
            return Ok(packet.encode()?);
        }
        let modem: u64 = modem_id
            .parse()
            .with_context(|| format!("modem id {modem_id:?} is not a number"))?;
        self.enveloped_downlink(modem, Some(request_id), packet)
    }

    /// `packet` in an envelope for `modem` under its next downlink number, signed when the
    /// modem has a key.
    fn enveloped_downlink(
        &mut self,
        modem: u64,
        request_id: Option<u64>,
        packet: Packet,
    ) -> anyhow::Result<Vec<u8>> {
        let n = self.numbers.entry(modem).or_insert(0);
        *n = next_downlink_sequence(*n, now_us());
        let frame = Frame {
            envelope: Some(Envelope {
                modem_id: modem,
                sequence: *n,
                request_id,
                auth_tag: None,
            }),
            packet,
        };
        Ok(match self.gateway.keys.get(modem) {
            Some(key) => frame.encode_signed(key)?,
            None => frame.encode()?,
        })
    }

    /// A signed resync telling `modem`'s SIM to move its counter above `above`, to the
    /// address the refused packet came from. Nothing in it can harm the modem if a replayer
    /// receives it: it only moves a counter forward, to where the gateway already is.
    fn send_resync(&mut self, modem: u64, above: u32, to: SocketAddr) {
        let gateway = Arc::clone(&self.gateway);
        let outcome = match self
            .enveloped_downlink(modem, None, Packet::SequenceResync { above })
            .and_then(|packet| Ok(gateway.send_datagram(&packet, to)?))
        {
            Ok(_) => "sent",
            Err(e) => {
                warn!(modem, %to, error = %e, "cannot send a sequence resync");
                "send_failed"
            }
        };
        gateway
            .metrics
            .sequence_resyncs
            .with_label_values(&[outcome])
            .inc();
    }
}

impl Gateway {
    /// A request that reached its deadline (or found no address) here: reported, unless
    /// another instance holds the modem, which sent it and reports its end.
    fn give_up(&self, request_id: u64, modem_id: &str, attempts: i32, reason: &'static str) {
        let holder = self.modems.lock().ok().and_then(|m| {
            let s = &m.sessions;
            match s.address(modem_id) {
                Some(_) => None, // held here
                None => s.elsewhere().holder(modem_id).map(str::to_string),
            }
        });
        if let Some(holder) = holder {
            self.metrics.left_to_holder.inc();
            info!(request = format!("{request_id:016x}"), modem = %modem_id, %holder, "switch request left to the gateway holding the modem");
            return;
        }
        self.metrics
            .undeliverable
            .with_label_values(&[reason])
            .inc();
        warn!(request = format!("{request_id:016x}"), modem = %modem_id, reason, "switch request undeliverable");
        self.delivery(
            request_id,
            modem_id,
            DeliveryEvent::Undeliverable,
            attempts,
            None,
            Some(reason),
        );
    }

    /// Send one datagram from the gateway's socket without blocking: the socket blocks for
    /// the uplink thread's sake, so this passes `MSG_DONTWAIT`. A full send buffer is an
    /// error like any other; the retry schedule sends again.
    fn send_datagram(&self, packet: &[u8], to: SocketAddr) -> std::io::Result<usize> {
        socket2::SockRef::from(&self.socket).send_to_with_flags(
            packet,
            &to.into(),
            libc::MSG_DONTWAIT,
        )
    }
}

/// 2025-01-01T00:00:00Z, in µs: downlink numbers count from here.
const DOWNLINK_EPOCH_US: i64 = 1_735_689_600_000_000;
/// Downlink numbers per second of the clock.
const DOWNLINK_PER_SECOND: i64 = 4;

/// The sequence number of the next Perform to a modem, after `previous` (0: none in this
/// process). A keyed SIM refuses a Perform not above the last one it executed, so the
/// numbers must rise across gateway restarts and from one instance to the next, with
/// nothing shared but the clock: a number is at least the time since 2025 in quarter
/// seconds (u32: until 2059), and above the previous one in this process. Any instance
/// numbers above what any other sent more than a quarter second (plus their clocks'
/// difference) earlier; a modem sent more than four Performs a second for long would run
/// ahead of the clock, and a restart then could repeat numbers (the SIM refuses them,
/// and says so with a NACK).
pub(crate) fn next_downlink_sequence(previous: u32, now_us: i64) -> u32 {
    let by_clock = (now_us.saturating_sub(DOWNLINK_EPOCH_US) / (1_000_000 / DOWNLINK_PER_SECOND))
        .clamp(0, i64::from(u32::MAX));
    previous
        .saturating_add(1)
        .max(u32::try_from(by_clock).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downlink_numbers_rise_within_a_process_and_across_restarts() {
        let t = 1_800_000_000_000_000; // 2027
        let first = next_downlink_sequence(0, t);
        let second = next_downlink_sequence(first, t);
        assert!(second > first, "the same instant: one above");
        // A restarted process (nothing remembered) a second later numbers above both.
        assert!(next_downlink_sequence(0, t + 1_000_000) > second);
        // Another instance whose clock is 100 ms behind, a second later: above too.
        assert!(next_downlink_sequence(0, t + 900_000) > second);
    }
}

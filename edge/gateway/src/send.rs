//! Downlink: switch requests from `downstream-request` become Perform packets sent to the
//! modem's session address and re-sent until answered or given up; offsets are committed
//! only up to the oldest request still pending.

use std::sync::Arc;
use std::time::Duration;
use switchyard_schemas::records::now_us;

use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use switchyard_kafka::{is_partition_eof, TracingContext};
use switchyard_protocol::json::parse_request_id;
use switchyard_protocol::{Envelope, Frame, Packet};
use switchyard_registry_client::RecordDecoder;
use switchyard_schemas::records::{CarrierSwitchRequest, DeliveryEvent};
use tracing::{info, warn};

use crate::downlink::Action;
use crate::service::Gateway;
use crate::uplink::wire_carrier;
use crate::REQUEST_TOPIC;

impl Gateway {
    /// Take switch requests in as they are read; `ended`: those read again after a restart
    /// that already ended ([`crate::ended`]), passed over once each.
    pub(crate) async fn take_requests(
        self: Arc<Self>,
        consumer: Arc<StreamConsumer<TracingContext>>,
        mut ended: std::collections::HashSet<u64>,
    ) {
        let Some((id, codec)) = self.codecs.get(REQUEST_TOPIC).cloned() else {
            warn!("no schema for downstream-request; downlink is off");
            return;
        };
        // Requests written with a newer (compatible) schema are resolved to ours.
        let mut decoder = RecordDecoder::new(self.registry.clone(), id, codec);
        loop {
            let message = match consumer.recv().await {
                Ok(m) => m,
                Err(e) if is_partition_eof(&e) => continue,
                Err(e) => {
                    warn!(error = %e, "reading downstream-request; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let request = decoder
                .decode::<CarrierSwitchRequest>(message.payload())
                .await;
            match request.and_then(|r| {
                parse_request_id(&r.request_id)
                    .map(|rid| (r, rid))
                    .map_err(|e| e.to_string())
            }) {
                // Past its deadline before it was read (an instance reading old requests
                // for the first time): carrier-state has timed it out; nothing to send.
                Ok((request, _)) if request.deadline <= now_us() => {
                    self.metrics.expired_requests.inc();
                    if let Ok(mut offsets) = self.request_offsets.lock() {
                        offsets.read(message.partition(), message.offset());
                    }
                }
                Ok((request, request_id)) if ended.remove(&request_id) => {
                    self.metrics.requests_ended_before.inc();
                    info!(request = %request.request_id, modem = %request.modem_id, "switch request read again after a restart had already ended; not sent again");
                    if let Ok(mut offsets) = self.request_offsets.lock() {
                        offsets.read(message.partition(), message.offset());
                    }
                }
                Ok((request, request_id)) => {
                    // Added and recorded under one lock of the downlink, so the offset is
                    // never committed between the two.
                    let added = self.downlink.lock().map(|mut d| {
                        let added = d.add(
                            request_id,
                            &request.modem_id,
                            wire_carrier(request.carrier),
                            request.deadline,
                            now_us(),
                        );
                        if let Ok(mut offsets) = self.request_offsets.lock() {
                            if added {
                                offsets.pending(request_id, message.partition(), message.offset());
                            } else {
                                offsets.read(message.partition(), message.offset());
                            }
                        }
                        added
                    });
                    if added.unwrap_or(false) {
                        self.new_request.notify_one();
                        info!(request = %request.request_id, modem = %request.modem_id, carrier = ?request.carrier, "switch request taken");
                    }
                }
                Err(e) => {
                    self.metrics
                        .rejects
                        .with_label_values(&["bad_request_record"])
                        .inc();
                    warn!(error = %e, offset = message.offset(), "unreadable switch request skipped");
                    if let Ok(mut offsets) = self.request_offsets.lock() {
                        offsets.read(message.partition(), message.offset());
                    }
                }
            }
        }
    }

    pub(crate) async fn retransmit(self: Arc<Self>, consumer: Arc<StreamConsumer<TracingContext>>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut stored = Vec::new();
        loop {
            self.store_request_offsets(&consumer, &mut stored);
            // Every 100 ms for retries and deadlines, and at once for a new request.
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.new_request.notified() => {}
            }
            for (producer, held) in self.producers.in_flight() {
                self.metrics
                    .buffered
                    .with_label_values(&[producer])
                    .set(i64::from(held));
            }
            let actions = match (self.downlink.lock(), self.sessions.lock()) {
                (Ok(mut downlink), Ok(sessions)) => {
                    downlink.due(now_us(), |m| sessions.address(m).is_some())
                }
                _ => Vec::new(),
            };
            for action in actions {
                match action {
                    Action::Send {
                        request_id,
                        modem_id,
                        carrier,
                        attempt,
                    } => {
                        let address = self.sessions.lock().ok().and_then(|s| s.address(&modem_id));
                        let Some(address) = address else {
                            continue;
                        };
                        let packet = match self.perform_packet(&modem_id, request_id, carrier) {
                            Ok(p) => p,
                            Err(e) => {
                                warn!(modem = %modem_id, error = %e, "cannot build a Perform packet");
                                continue;
                            }
                        };
                        if let Err(e) = self.send_datagram(&packet, address) {
                            warn!(%address, error = %e, "UDP send failed");
                        }
                        let event = if attempt == 1 {
                            DeliveryEvent::Sent
                        } else {
                            DeliveryEvent::Retried
                        };
                        if attempt > 1 {
                            self.metrics.downlink_retries.inc();
                        } else {
                            self.metrics.downlink_sent.inc();
                        }
                        self.delivery(request_id, &modem_id, event, attempt, Some(address), None);
                    }
                    Action::GiveUp {
                        request_id,
                        modem_id,
                        attempts,
                        reason,
                    } => {
                        let holder = self
                            .elsewhere
                            .lock()
                            .ok()
                            .and_then(|e| e.holder(&modem_id).map(str::to_string));
                        let held_here = self
                            .sessions
                            .lock()
                            .is_ok_and(|s| s.address(&modem_id).is_some());
                        if let Some(holder) = holder.filter(|_| !held_here) {
                            // The instance holding the modem sent it and reports its end.
                            self.metrics.left_to_holder.inc();
                            info!(request = format!("{request_id:016x}"), modem = %modem_id, %holder, "switch request left to the gateway holding the modem");
                            continue;
                        }
                        self.metrics
                            .undeliverable
                            .with_label_values(&[reason])
                            .inc();
                        warn!(request = format!("{request_id:016x}"), modem = %modem_id, reason, "switch request undeliverable");
                        self.delivery(
                            request_id,
                            &modem_id,
                            DeliveryEvent::Undeliverable,
                            attempts,
                            None,
                            Some(reason),
                        );
                    }
                }
            }
        }
    }

    /// Store for the next background commit, per partition, the offset of the oldest request
    /// still pending (or the one after the last read), when it moved since `stored`.
    fn store_request_offsets(
        &self,
        consumer: &StreamConsumer<TracingContext>,
        stored: &mut Vec<(i32, i64)>,
    ) {
        let positions = match (self.downlink.lock(), self.request_offsets.lock()) {
            (Ok(downlink), Ok(mut offsets)) => {
                offsets.retain(|id| downlink.contains(id));
                offsets.positions()
            }
            _ => return,
        };
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
        &self,
        modem_id: &str,
        request_id: u64,
        carrier: switchyard_protocol::Carrier,
    ) -> anyhow::Result<Vec<u8>> {
        let packet = Packet::CarrierSwitchPerform(carrier);
        if modem_id == self.config.legacy_modem_id {
            return Ok(packet.encode()?);
        }
        let modem: u64 = modem_id
            .parse()
            .with_context(|| format!("modem id {modem_id:?} is not a number"))?;
        self.enveloped_downlink(modem, Some(request_id), packet)
    }

    /// The modem's SIM refused a Perform numbered `executed` or below: the next one to it
    /// is numbered above.
    pub(crate) fn number_downlink_above(&self, modem: u64, executed: u32) {
        if let Ok(mut numbers) = self.downlink_sequence.lock() {
            let n = numbers.entry(modem).or_insert(0);
            *n = (*n).max(executed);
        }
    }

    /// `packet` in an envelope for `modem` under its next downlink number, signed when the
    /// modem has a key.
    fn enveloped_downlink(
        &self,
        modem: u64,
        request_id: Option<u64>,
        packet: Packet,
    ) -> anyhow::Result<Vec<u8>> {
        let sequence = self
            .downlink_sequence
            .lock()
            .map(|mut s| {
                let n = s.entry(modem).or_insert(0);
                *n = next_downlink_sequence(*n, now_us());
                *n
            })
            .unwrap_or(0);
        let frame = Frame {
            envelope: Some(Envelope {
                modem_id: modem,
                sequence,
                request_id,
                auth_tag: None,
            }),
            packet,
        };
        Ok(match self.keys.get(modem) {
            Some(key) => frame.encode_signed(key)?,
            None => frame.encode()?,
        })
    }

    /// Answer a signed packet refused as not fresh: a signed resync telling `modem`'s SIM to
    /// move its counter above `above`, to the address the packet came from. Nothing in it
    /// can harm the modem if a replayer receives it: it only moves a counter forward, to
    /// where the gateway already is.
    pub(crate) fn send_resync(&self, modem: u64, above: u32, to: std::net::SocketAddr) {
        let outcome = match self
            .enveloped_downlink(modem, None, Packet::SequenceResync { above })
            .and_then(|packet| Ok(self.send_datagram(&packet, to)?))
        {
            Ok(_) => "sent",
            Err(e) => {
                warn!(modem, %to, error = %e, "cannot send a sequence resync");
                "send_failed"
            }
        };
        self.metrics
            .sequence_resyncs
            .with_label_values(&[outcome])
            .inc();
    }

    /// Send one datagram from the gateway's socket without blocking: the socket blocks for
    /// the uplink thread's sake, so this passes `MSG_DONTWAIT`. A full send buffer is an
    /// error like any other; the retry schedule sends again.
    fn send_datagram(&self, packet: &[u8], to: std::net::SocketAddr) -> std::io::Result<usize> {
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

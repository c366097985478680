//! Uplink: each datagram from a device is decoded, authenticated, attributed to a modem,
//! its session observed, and published; an ACK ends its switch once its record is on the
//! broker.
//!
//! It runs on a thread of its own that sleeps in a blocking `recv_from` while traffic is
//! sparse, and takes everything queued behind each datagram without sleeping. While
//! traffic is dense it lets datagrams gather in the socket for `--coalesce-us` between
//! rounds: sleeping and waking once per datagram was half of the thread's CPU at 20,000
//! datagrams/s. Nothing on this path awaits: records go to the producer's queue, their
//! acknowledgements come back on its thread.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::RecvFlags;
use switchyard_schemas::records::now_us;

use switchyard_protocol::json::parse_request_id;
use switchyard_protocol::{verify, AuthError, Envelope, Frame};
use switchyard_schemas::records::{AckStatus, DeviceSession, SessionProtocol};
use tracing::warn;

use crate::downlink::Answer;
use crate::send::ToDownlink;
use crate::service::{rate_limited, Gateway, Modems};
use crate::sessions::{record_reservation, Heard, Observed};
use crate::uplink::{to_record, wire_carrier, Uplink, ACK_TOPIC, STATUS_TOPIC};
use crate::SESSIONS_TOPIC;

impl Gateway {
    /// Receive until `stop` is set (seen within the socket's read timeout).
    pub(crate) fn receive(self: Arc<Self>, stop: &AtomicBool) {
        let mut buf = vec![0u8; 65_536];
        let coalesce = Duration::from_micros(self.config.coalesce_us);
        // When the thread last became ready for the next datagram.
        let mut ready_since = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            match self.socket.recv_from(&mut buf) {
                Ok((n, source)) => {
                    let waited = ready_since.elapsed();
                    self.uplink(&buf[..n], source);
                    self.take_queued(&mut buf, stop);
                    if gather(waited, coalesce) {
                        std::thread::sleep(coalesce);
                    }
                    ready_since = Instant::now();
                }
                // The read timeout: nothing arrived, look at `stop` again.
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => {
                    self.receive_failed(&e);
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// Every datagram already queued in the socket, without blocking; under a flood that
    /// never empties the queue, until `stop` is set.
    fn take_queued(self: &Arc<Self>, buf: &mut [u8], stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            match rustix::net::recvfrom(&self.socket, &mut *buf, RecvFlags::DONTWAIT) {
                Ok((_, n, from)) => match from.and_then(|a| SocketAddr::try_from(a).ok()) {
                    Some(source) => self.uplink(&buf[..n.min(buf.len())], source),
                    // Not seen on a UDP/IP socket; counted should it ever happen.
                    None => {
                        let counter = self.metrics.rejects.with_label_values(&["no_source"]);
                        counter.inc();
                        if rate_limited(counter.get()) {
                            warn!("datagram without an IP source address rejected");
                        }
                    }
                },
                Err(Errno::AGAIN) => return,
                Err(Errno::INTR) => {}
                Err(e) => {
                    self.receive_failed(&e);
                    return;
                }
            }
        }
    }

    /// A socket error: counted, logged at the 1st, 2nd, 4th… occurrence; reading goes on.
    fn receive_failed(&self, error: &dyn std::fmt::Display) {
        let errors = &self.metrics.receive_errors;
        errors.inc();
        if rate_limited(errors.get()) {
            warn!(%error, errors = errors.get(), "UDP receive failed; continuing");
        }
    }

    /// One datagram from a device.
    fn uplink(self: &Arc<Self>, datagram: &[u8], source: SocketAddr) {
        let arrived = std::time::Instant::now();
        let received_at = now_us();
        let frame = match Frame::decode(datagram) {
            Ok(frame) => frame,
            Err(e) => {
                return self.reject(
                    datagram,
                    source,
                    e.reason_code(),
                    &e.to_string(),
                    None,
                    arrived,
                )
            }
        };
        // The modems' lock, held from the window's acceptance until the packet's wait for
        // the log, if it needs one, is registered: a record read in between would otherwise
        // contest nothing. Taken only with keys.
        let mut accepted_under = None;
        let modem_id = match &frame.envelope {
            Some(envelope) => {
                match self.authenticate(datagram, envelope) {
                    Ok(accepted) => accepted_under = accepted,
                    Err(Refused {
                        reason,
                        detail,
                        resync_above,
                    }) => {
                        if let Some(above) = resync_above {
                            self.tell_downlink(ToDownlink::Resync {
                                modem: envelope.modem_id,
                                above,
                                to: source,
                            });
                        }
                        return self.reject(
                            datagram,
                            source,
                            reason,
                            &detail,
                            Some(envelope.modem_id.to_string()),
                            arrived,
                        );
                    }
                }
                envelope.modem_id.to_string()
            }
            None if self.config.reject_v1 => {
                return self.reject(
                    datagram,
                    source,
                    "v1_not_accepted",
                    "v1 packets are refused (--reject-v1)",
                    None,
                    arrived,
                )
            }
            None => self.config.legacy_modem_id.clone(),
        };
        let record = match to_record(&frame, &modem_id, received_at, &self.catalog) {
            Ok(record) => record,
            Err(reason) => {
                return self.reject(
                    datagram,
                    source,
                    reason,
                    "a device sent a downlink packet",
                    Some(modem_id),
                    arrived,
                )
            }
        };
        self.metrics
            .packets
            .with_label_values(&[frame.packet.kind()])
            .inc();
        let protocol = match frame.envelope {
            Some(_) => SessionProtocol::Envelope,
            None => SessionProtocol::V1,
        };
        let authenticated = frame.envelope.is_some() && !self.keys.is_empty();
        let sensor_time = match &record {
            Uplink::Reading { reading, .. } => Some(reading.timestamp),
            _ => None,
        };
        let keyed = accepted_under.is_some();
        let mut modems = match accepted_under {
            Some(held) => Some(held),
            None => self.modems.lock().ok(),
        };
        let observed = modems.as_mut().map(|modems| {
            let sessions = &mut modems.sessions;
            let observed = sessions.observe_packet(
                &modem_id,
                Heard {
                    address: source,
                    protocol,
                    authenticated,
                    at_us: received_at,
                    sensor_time_us: sensor_time,
                    // The number the replay window just accepted: kept in the session record.
                    sequence: frame
                        .envelope
                        .as_ref()
                        .filter(|_| authenticated)
                        .map(|e| e.sequence),
                },
            );
            self.metrics.known_modems.set(sessions.len() as i64);
            observed
        });
        let Some(Observed {
            record: Some(session),
            uncovered,
        }) = observed
        else {
            // No session record, so no wait: the modems are free before the publishing.
            drop(modems);
            return self.publish_uplink(record, modem_id, source, arrived);
        };
        self.metrics.session_writes.inc();
        let reserved = record_reservation(&session);
        // Uncovered: the packet's number is reserved only by this record, so what it
        // carries is published once this record is read back from the log, and only if no
        // other instance's record reserved the number first (`arbiter`). Registered before
        // the record is written, so the record cannot come back first.
        let now = match (uncovered && keyed, frame.envelope.as_ref(), modems) {
            (true, Some(envelope), Some(modems)) => {
                self.wait_for_the_log(modems, envelope, &session, record, source, arrived);
                None
            }
            _ => Some(record),
        };
        let gateway = Arc::clone(self);
        let modem = modem_id.clone();
        self.publish_then(SESSIONS_TOPIC, &modem_id, &session, arrived, move || {
            if let (Some(reserved), Ok(mut modems)) = (reserved, gateway.modems.lock()) {
                modems.sessions.acknowledged(&modem, reserved);
            }
        });
        if let Some(record) = now {
            self.publish_uplink(record, modem_id, source, arrived);
        }
    }

    /// Hold what `envelope`'s packet carries until the log decides ([`crate::arbiter`]).
    /// Registered under the lock its acceptance took, so every record read after the
    /// acceptance contests it.
    fn wait_for_the_log(
        self: &Arc<Self>,
        mut modems: MutexGuard<'_, Modems>,
        envelope: &Envelope,
        session: &DeviceSession,
        record: Uplink,
        source: SocketAddr,
        arrived: Instant,
    ) {
        let gateway = Arc::clone(self);
        let modem_id = session.modem_id.clone();
        let publish = Box::new(move || gateway.publish_uplink(record, modem_id, source, arrived));
        let arbiter = &mut modems.freshness.arbiter;
        arbiter.wait(
            &session.modem_id,
            envelope.sequence,
            Instant::now(),
            publish,
        );
        self.metrics.waiting_for_the_log.set(arbiter.len() as i64);
    }

    /// Publish what an accepted packet carries.
    fn publish_uplink(
        self: &Arc<Self>,
        record: Uplink,
        modem_id: String,
        source: SocketAddr,
        arrived: Instant,
    ) {
        match record {
            Uplink::Reading { topic, reading } => {
                self.publish(&topic, &modem_id, &reading, arrived)
            }
            Uplink::Status(status) => self.publish(STATUS_TOPIC, &modem_id, &status, arrived),
            Uplink::PerformRefused { ack, executed } => {
                self.metrics.performs_refused.inc();
                if let Ok(modem) = modem_id.parse() {
                    self.tell_downlink(ToDownlink::NumberAbove { modem, executed });
                }
                self.publish_uplink(Uplink::Ack(ack), modem_id, source, arrived);
            }
            Uplink::Ack(ack) => {
                let request_id = ack
                    .request_id
                    .as_deref()
                    .and_then(|id| parse_request_id(id).ok());
                let answer = match ack.status {
                    AckStatus::Ack => Answer::Ack(wire_carrier(ack.carrier)),
                    AckStatus::Nack => Answer::Nack,
                };
                // The pending downlink ends only once the ACK is on the broker: if its record
                // were lost, carrier-state would time out a switch the SIM made. Until then
                // the Perform may be re-sent, and the SIM answers it again.
                let gateway = Arc::clone(self);
                let modem = modem_id.clone();
                self.publish_then(ACK_TOPIC, &modem_id, &ack, arrived, move || {
                    gateway.tell_downlink(ToDownlink::Answered {
                        request_id,
                        modem_id: modem,
                        answer,
                        source,
                    });
                });
            }
        }
    }

    /// With keys configured: a known modem, a valid tag, a fresh sequence number. Returns
    /// the modems' lock it accepted the number under (none without keys).
    fn authenticate(
        &self,
        datagram: &[u8],
        envelope: &Envelope,
    ) -> Result<Option<MutexGuard<'_, Modems>>, Refused> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let (at, key) = self
            .keys
            .position(envelope.modem_id)
            .and_then(|at| Some((at, self.keys.key_at(at)?)))
            .ok_or_else(|| {
                Refused::new(
                    "unknown_modem",
                    format!("no key for modem {}", envelope.modem_id),
                )
            })?;
        verify(datagram, key).map_err(|e| {
            let reason = match e {
                AuthError::MissingTag => "missing_tag",
                _ => "bad_tag",
            };
            Refused::new(reason, e.to_string())
        })?;
        let Ok(mut modems) = self.modems.lock() else {
            return Err(Refused::new(
                "replayed_sequence",
                "replay windows unavailable".into(),
            ));
        };
        if modems.freshness.windows.accept(at, envelope.sequence) {
            return Ok(Some(modems));
        }
        // Signed by the modem's key, so the device (or a copy of its packet) is behind: tell
        // it where its counter must go.
        let now_s = u32::try_from(now_us() / 1_000_000).unwrap_or(u32::MAX);
        Err(Refused {
            resync_above: modems.freshness.windows.resync_due(at, now_s),
            ..Refused::new(
                "replayed_sequence",
                format!("sequence {} was seen or is too old", envelope.sequence),
            )
        })
    }
}

/// Why `authenticate` refused a datagram, and whether to answer it with a sequence resync.
struct Refused {
    reason: &'static str,
    detail: String,
    /// The number to resync the modem's counter above.
    resync_above: Option<u32>,
}

impl Refused {
    fn new(reason: &'static str, detail: String) -> Self {
        Refused {
            reason,
            detail,
            resync_above: None,
        }
    }
}

/// Whether to let datagrams gather before the next round: the datagram that started this
/// round came less than half a coalescing period after the thread was ready for it, so
/// several will arrive while it sleeps (at one per period, each would pay a sleep and a
/// wake). Sparse traffic, and a datagram after a pause, never waits.
fn gather(waited: Duration, coalesce: Duration) -> bool {
    waited < coalesce / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_traffic_closer_than_the_period_waits_to_gather() {
        let us = Duration::from_micros;
        assert!(gather(us(0), us(1000)), "datagrams were already queued");
        assert!(gather(us(400), us(1000)));
        assert!(
            !gather(us(900), us(1000)),
            "about one datagram per period would pay a sleep and a wake each"
        );
        assert!(!gather(us(0), Duration::ZERO), "0 turns it off");
    }
}

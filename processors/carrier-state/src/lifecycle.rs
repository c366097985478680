//! How one modem's state changes with each event. Pure functions over [`ModemRecord`]; the
//! processor only loads, applies and saves.
//!
//! A request goes REQUESTED → SENT (gateway delivery event) → ACKED or NACKED (the SIM's
//! answer), or ends TIMED_OUT (no answer by its deadline), SUPERSEDED (a newer request for
//! the modem) or UNDELIVERABLE (the gateway gave up). Facts beat bookkeeping: an ACK or NACK
//! that arrives after a request timed out or was superseded still records the SIM's answer.
//!
//! Input is at least once and comes from several topics, so events may repeat or arrive out
//! of order: a repeated request or answer changes nothing, and an answer or delivery event for
//! a request not seen yet is kept (bounded) and applied when the request arrives.

use switchyard_schemas::records::{
    AckStatus, CarrierState, CarrierSwitchAck, CarrierSwitchRequest, DeliveryEvent, DeviceSession,
    DownlinkDelivery, IotStatusReport, RequestState, SwitchRequestState,
};

/// Events for requests not seen yet, at most this many per modem.
const MAX_EARLY_EVENTS: usize = 32;

/// An answer or delivery event that arrived before its request.
#[derive(Debug, Clone, PartialEq)]
pub enum EarlyEvent {
    Ack(CarrierSwitchAck),
    Delivery(DownlinkDelivery),
}

/// What the processor knows of a modem: the published state, and early events (kept in
/// the stores `modems`, `early-acks` and `early-deliveries`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModemRecord {
    pub state: CarrierState,
    pub early: Vec<EarlyEvent>,
}

impl ModemRecord {
    pub fn new(modem_id: &str) -> Self {
        ModemRecord {
            state: CarrierState {
                modem_id: modem_id.to_string(),
                carrier: None,
                last_status: None,
                last_seen: None,
                updated_at: 0,
                clock_offset_ms: None,
                requests: Vec::new(),
            },
            early: Vec::new(),
        }
    }

    /// The earliest deadline of a pending request, if any.
    pub fn next_deadline(&self) -> Option<i64> {
        self.state
            .requests
            .iter()
            .filter(|r| is_pending(r.state))
            .map(|r| r.deadline)
            .min()
    }
}

pub fn is_pending(state: RequestState) -> bool {
    matches!(state, RequestState::Requested | RequestState::Sent)
}

fn request_mut<'a>(record: &'a mut ModemRecord, id: &str) -> Option<&'a mut SwitchRequestState> {
    record
        .state
        .requests
        .iter_mut()
        .find(|r| r.request_id == id)
}

fn keep_early(record: &mut ModemRecord, event: EarlyEvent) {
    if !record.early.contains(&event) {
        record.early.push(event);
        if record.early.len() > MAX_EARLY_EVENTS {
            record.early.remove(0);
        }
    }
}

/// A new switch request. `max_timeout_us` caps its deadline; `history` bounds the list.
pub fn apply_request(
    record: &mut ModemRecord,
    req: &CarrierSwitchRequest,
    max_timeout_us: i64,
    history: usize,
) -> bool {
    if record
        .state
        .requests
        .iter()
        .any(|r| r.request_id == req.request_id)
    {
        return false;
    }
    let deadline = req
        .deadline
        .min(req.requested_at.saturating_add(max_timeout_us));
    let mut new = SwitchRequestState {
        request_id: req.request_id.clone(),
        carrier: req.carrier,
        state: RequestState::Requested,
        requested_at: req.requested_at,
        deadline,
        sent_at: None,
        attempts: 0,
        completed_at: None,
        result_carrier: None,
        reason: None,
    };
    // Only the newest request for a modem stays pending.
    for other in record
        .state
        .requests
        .iter_mut()
        .filter(|r| is_pending(r.state))
    {
        if other.requested_at <= req.requested_at {
            other.state = RequestState::Superseded;
            other.completed_at = Some(req.requested_at);
            other.reason = Some(format!("superseded by request {}", req.request_id));
        } else {
            new.state = RequestState::Superseded;
            new.completed_at = Some(other.requested_at);
            new.reason = Some(format!("superseded by request {}", other.request_id));
        }
    }
    record.state.requests.push(new);
    record.state.requests.sort_by_key(|r| r.requested_at);
    // Events that came before the request.
    let (mine, rest): (Vec<EarlyEvent>, Vec<EarlyEvent>) = std::mem::take(&mut record.early)
        .into_iter()
        .partition(|e| match e {
            EarlyEvent::Ack(a) => a.request_id.as_deref() == Some(req.request_id.as_str()),
            EarlyEvent::Delivery(d) => d.request_id == req.request_id,
        });
    record.early = rest;
    for event in mine {
        match event {
            EarlyEvent::Ack(a) => apply_ack(record, &a),
            EarlyEvent::Delivery(d) => apply_delivery(record, &d),
        };
    }
    // Bounded history: drop the oldest finished requests.
    while record.state.requests.len() > history {
        match record
            .state
            .requests
            .iter()
            .position(|r| !is_pending(r.state))
        {
            Some(i) => {
                record.state.requests.remove(i);
            }
            None => break,
        }
    }
    true
}

/// The SIM's answer. Its carrier is the truth about the modem, whatever the request.
pub fn apply_ack(record: &mut ModemRecord, ack: &CarrierSwitchAck) -> bool {
    let mut changed = record.state.carrier != Some(ack.carrier);
    record.state.carrier = Some(ack.carrier);
    changed |= see(record, ack.received_at);
    let target = match &ack.request_id {
        Some(id) => match request_mut(record, id) {
            Some(r) => Some(r),
            None => {
                keep_early(record, EarlyEvent::Ack(ack.clone()));
                return true;
            }
        },
        // A v1 device cannot name the request: it answers the oldest pending one that the
        // answer fits (a NACK, or an ACK naming the carrier asked for). An ACK naming
        // another carrier is the SIM reporting its carrier (at power-on): carrier only.
        None => record
            .state
            .requests
            .iter_mut()
            .filter(|r| is_pending(r.state))
            .filter(|r| ack.status == AckStatus::Nack || r.carrier == ack.carrier)
            .min_by_key(|r| r.requested_at),
    };
    let Some(request) = target else {
        return changed;
    };
    if matches!(request.state, RequestState::Acked | RequestState::Nacked) {
        return changed;
    }
    let before = request.state;
    request.state = match ack.status {
        AckStatus::Ack => RequestState::Acked,
        AckStatus::Nack => RequestState::Nacked,
    };
    request.completed_at = Some(ack.received_at);
    request.result_carrier = Some(ack.carrier);
    request.reason = match (ack.status, before) {
        (AckStatus::Nack, _) => Some(
            ack.reason
                .clone()
                .unwrap_or_else(|| "the SIM refused the switch; carrier unchanged".into()),
        ),
        (AckStatus::Ack, RequestState::TimedOut) => Some("acknowledged after the deadline".into()),
        (AckStatus::Ack, RequestState::Superseded) => {
            Some("acknowledged after being superseded".into())
        }
        (AckStatus::Ack, _) if ack.carrier != request.carrier => {
            Some("the SIM reports another carrier than requested".into())
        }
        _ => None,
    };
    true
}

/// What the gateway did with a request.
pub fn apply_delivery(record: &mut ModemRecord, event: &DownlinkDelivery) -> bool {
    let Some(request) = request_mut(record, &event.request_id) else {
        keep_early(record, EarlyEvent::Delivery(event.clone()));
        return true;
    };
    let before = request.clone();
    match event.event {
        DeliveryEvent::Sent | DeliveryEvent::Retried => {
            if request.state == RequestState::Requested {
                request.state = RequestState::Sent;
            }
            if request.sent_at.is_none() {
                request.sent_at = Some(event.at);
            }
            request.attempts = request.attempts.max(event.attempt);
        }
        DeliveryEvent::Acked => {}
        DeliveryEvent::Undeliverable => {
            if is_pending(request.state) {
                request.state = RequestState::Undeliverable;
                request.completed_at = Some(event.at);
                request.reason = Some(
                    event
                        .reason
                        .clone()
                        .unwrap_or_else(|| "the gateway gave up".into()),
                );
            }
        }
    }
    *request != before
}

/// A status report.
pub fn apply_status(record: &mut ModemRecord, status: &IotStatusReport) -> bool {
    let changed = record.state.last_status != Some(status.status);
    record.state.last_status = Some(status.status);
    see(record, status.received_at) || changed
}

/// A gateway's session record: the modem is known (a v1 device that sends only readings is
/// known this way alone) and was last heard at its `last_seen`.
pub fn apply_session(record: &mut ModemRecord, session: &DeviceSession) -> bool {
    if session.last_seen < record.state.last_seen.unwrap_or(i64::MIN) {
        return false; // an older session record (input read again): nothing new
    }
    let offset_changed = record.state.clock_offset_ms != session.clock_offset_ms
        && session.clock_offset_ms.is_some();
    if offset_changed {
        record.state.clock_offset_ms = session.clock_offset_ms;
    }
    see(record, session.last_seen) || offset_changed
}

fn see(record: &mut ModemRecord, at: i64) -> bool {
    if record.state.last_seen.is_none_or(|seen| at > seen) {
        record.state.last_seen = Some(at);
        return true;
    }
    false
}

/// Time out the pending requests whose deadline has passed.
pub fn expire(record: &mut ModemRecord, now_us: i64) -> bool {
    let mut changed = false;
    for request in record
        .state
        .requests
        .iter_mut()
        .filter(|r| is_pending(r.state) && r.deadline <= now_us)
    {
        request.state = RequestState::TimedOut;
        request.completed_at = Some(now_us);
        request.reason = Some("no answer from the SIM by the deadline".into());
        changed = true;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_schemas::records::Carrier;

    const CAP: i64 = 120_000_000;

    fn request(id: &str, carrier: Carrier, at: i64) -> CarrierSwitchRequest {
        CarrierSwitchRequest {
            request_id: id.into(),
            modem_id: "m".into(),
            carrier,
            requested_at: at,
            deadline: at + 30_000_000,
            requested_by: None,
        }
    }

    fn ack(id: Option<&str>, status: AckStatus, carrier: Carrier, at: i64) -> CarrierSwitchAck {
        CarrierSwitchAck {
            modem_id: "m".into(),
            request_id: id.map(str::to_string),
            status,
            carrier,
            received_at: at,
            sequence: None,
            reason: None,
        }
    }

    fn delivery(id: &str, event: DeliveryEvent, attempt: i32, at: i64) -> DownlinkDelivery {
        DownlinkDelivery {
            request_id: id.into(),
            modem_id: "m".into(),
            event,
            attempt,
            address: None,
            reason: (event == DeliveryEvent::Undeliverable).then(|| "deadline".into()),
            at,
        }
    }

    fn states(r: &ModemRecord) -> Vec<(String, RequestState)> {
        r.state
            .requests
            .iter()
            .map(|q| (q.request_id.clone(), q.state))
            .collect()
    }

    #[test]
    fn requested_sent_acked() {
        let mut r = ModemRecord::new("m");
        assert!(apply_request(
            &mut r,
            &request("a", Carrier::Verizon, 10),
            CAP,
            20
        ));
        assert!(apply_delivery(
            &mut r,
            &delivery("a", DeliveryEvent::Sent, 1, 11)
        ));
        assert!(apply_delivery(
            &mut r,
            &delivery("a", DeliveryEvent::Retried, 2, 12)
        ));
        assert!(apply_ack(
            &mut r,
            &ack(Some("a"), AckStatus::Ack, Carrier::Verizon, 13)
        ));
        let q = &r.state.requests[0];
        assert_eq!(
            (q.state, q.sent_at, q.attempts, q.completed_at),
            (RequestState::Acked, Some(11), 2, Some(13))
        );
        assert_eq!(r.state.carrier, Some(Carrier::Verizon));
        assert_eq!(q.result_carrier, Some(Carrier::Verizon));
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn nack_keeps_the_carrier_the_sim_reports() {
        let mut r = ModemRecord::new("m");
        apply_ack(&mut r, &ack(None, AckStatus::Ack, Carrier::AtAndT, 1));
        apply_request(&mut r, &request("a", Carrier::TMobile, 10), CAP, 20);
        apply_ack(
            &mut r,
            &ack(Some("a"), AckStatus::Nack, Carrier::AtAndT, 12),
        );
        assert_eq!(states(&r), vec![("a".into(), RequestState::Nacked)]);
        assert_eq!(r.state.carrier, Some(Carrier::AtAndT));
        assert!(r.state.requests[0]
            .reason
            .as_deref()
            .is_some_and(|s| s.contains("refused")));
        // A NACK that says why (the SIM refused a stale Perform) ends with that reason.
        apply_request(&mut r, &request("b", Carrier::Verizon, 30), CAP, 40);
        let stale = CarrierSwitchAck {
            reason: Some("stale_perform: ...".into()),
            ..ack(Some("b"), AckStatus::Nack, Carrier::AtAndT, 32)
        };
        apply_ack(&mut r, &stale);
        let b = &r.state.requests[1];
        assert_eq!(
            (b.state, b.reason.as_deref()),
            (RequestState::Nacked, Some("stale_perform: ..."))
        );
    }

    #[test]
    fn duplicates_change_nothing() {
        let mut r = ModemRecord::new("m");
        apply_request(&mut r, &request("a", Carrier::Verizon, 10), CAP, 20);
        apply_delivery(&mut r, &delivery("a", DeliveryEvent::Sent, 1, 11));
        apply_ack(
            &mut r,
            &ack(Some("a"), AckStatus::Ack, Carrier::Verizon, 13),
        );
        let snapshot = r.clone();
        assert!(!apply_request(
            &mut r,
            &request("a", Carrier::Verizon, 10),
            CAP,
            20
        ));
        assert!(!apply_delivery(
            &mut r,
            &delivery("a", DeliveryEvent::Sent, 1, 11)
        ));
        assert!(!apply_ack(
            &mut r,
            &ack(Some("a"), AckStatus::Ack, Carrier::Verizon, 13)
        ));
        assert_eq!(r, snapshot);
    }

    #[test]
    fn answers_before_their_request_are_applied_when_it_arrives() {
        let mut r = ModemRecord::new("m");
        apply_delivery(&mut r, &delivery("a", DeliveryEvent::Sent, 1, 11));
        apply_ack(
            &mut r,
            &ack(Some("a"), AckStatus::Ack, Carrier::Verizon, 13),
        );
        assert_eq!(r.early.len(), 2);
        apply_request(&mut r, &request("a", Carrier::Verizon, 10), CAP, 20);
        assert!(r.early.is_empty());
        assert_eq!(states(&r), vec![("a".into(), RequestState::Acked)]);
        assert_eq!(r.state.requests[0].sent_at, Some(11));
    }

    #[test]
    fn a_newer_request_supersedes_a_pending_one_in_either_arrival_order() {
        let mut r = ModemRecord::new("m");
        apply_request(&mut r, &request("old", Carrier::Verizon, 10), CAP, 20);
        apply_request(&mut r, &request("new", Carrier::TMobile, 20), CAP, 20);
        assert_eq!(
            states(&r),
            vec![
                ("old".into(), RequestState::Superseded),
                ("new".into(), RequestState::Requested)
            ]
        );
        let mut r = ModemRecord::new("m");
        apply_request(&mut r, &request("new", Carrier::TMobile, 20), CAP, 20);
        apply_request(&mut r, &request("old", Carrier::Verizon, 10), CAP, 20);
        assert_eq!(
            states(&r),
            vec![
                ("old".into(), RequestState::Superseded),
                ("new".into(), RequestState::Requested)
            ]
        );
    }

    #[test]
    fn deadlines_time_requests_out_and_a_late_ack_still_counts() {
        let mut r = ModemRecord::new("m");
        apply_request(&mut r, &request("a", Carrier::Verizon, 10), CAP, 20);
        assert_eq!(r.next_deadline(), Some(10 + 30_000_000));
        assert!(!expire(&mut r, 30_000_009));
        assert!(expire(&mut r, 30_000_010));
        assert_eq!(states(&r), vec![("a".into(), RequestState::TimedOut)]);
        apply_ack(
            &mut r,
            &ack(Some("a"), AckStatus::Ack, Carrier::Verizon, 40_000_000),
        );
        assert_eq!(states(&r), vec![("a".into(), RequestState::Acked)]);
        assert_eq!(
            r.state.requests[0].reason.as_deref(),
            Some("acknowledged after the deadline")
        );
    }

    #[test]
    fn the_deadline_is_capped() {
        let mut r = ModemRecord::new("m");
        let mut req = request("a", Carrier::Verizon, 10);
        req.deadline = i64::MAX;
        apply_request(&mut r, &req, CAP, 20);
        assert_eq!(r.next_deadline(), Some(10 + CAP));
    }

    #[test]
    fn a_v1_ack_answers_the_oldest_pending_request() {
        let mut r = ModemRecord::new("m");
        apply_request(&mut r, &request("a", Carrier::Verizon, 10), CAP, 20);
        apply_ack(&mut r, &ack(None, AckStatus::Ack, Carrier::Verizon, 12));
        assert_eq!(states(&r), vec![("a".into(), RequestState::Acked)]);
    }

    #[test]
    fn undeliverable_ends_a_pending_request_and_history_is_bounded() {
        let mut r = ModemRecord::new("m");
        apply_request(&mut r, &request("a", Carrier::Verizon, 10), CAP, 20);
        apply_delivery(&mut r, &delivery("a", DeliveryEvent::Undeliverable, 5, 99));
        assert_eq!(states(&r), vec![("a".into(), RequestState::Undeliverable)]);
        assert_eq!(r.state.requests[0].reason.as_deref(), Some("deadline"));
        for i in 0..30 {
            apply_request(
                &mut r,
                &request(&format!("r{i}"), Carrier::Verizon, 100 + i),
                CAP,
                20,
            );
        }
        assert_eq!(r.state.requests.len(), 20);
        assert_eq!(
            r.state.requests.last().map(|q| q.request_id.as_str()),
            Some("r29")
        );
    }
}

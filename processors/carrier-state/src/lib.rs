//! carrier-state: the store of every modem's SIM. Consumes switch requests, the SIM's
//! answers, the gateway's delivery events and status reports, and publishes each modem's
//! state to the compacted `carrier-state` topic keyed by modem id: the table the switch API
//! reads. State lives in a changelogged store, so a restart resumes where it was; request
//! deadlines are enforced by a wall-clock timer, not by the next message.
//! The rules are in [`lifecycle`].

pub mod lifecycle;

use std::time::Duration;

use clap::Args;
use switchyard_pipeline::{Context, ProcessError, Processor, Record, Timer, TimerKind, Topology};
use switchyard_schemas::records::{
    CarrierState, CarrierSwitchAck, CarrierSwitchRequest, DeviceSession, DownlinkDelivery,
    IotStatusReport,
};
use switchyard_schemas::topics;

use crate::lifecycle::{EarlyEvent, ModemRecord};

pub const NAME: &str = "carrier-state";
pub const REQUESTS: &str = topics::DOWNSTREAM_REQUEST;
pub const ACKS: &str = topics::CARRIER_SWITCH_ACK;
pub const DELIVERIES: &str = topics::DOWNLINK_DELIVERY;
pub const STATUS: &str = topics::IOT_STATUS;
pub const SESSIONS: &str = topics::DEVICE_SESSIONS;
pub const OUTPUT: &str = topics::CARRIER_STATE;
/// Each modem's state, as published.
const MODEMS: &str = "modems";
/// Answers and delivery events that came before their request (see [`lifecycle`]).
const EARLY_ACKS: &str = "early-acks";
const EARLY_DELIVERIES: &str = "early-deliveries";
/// Modems with a pending request, and its earliest deadline: what the timer scans.
const PENDING: &str = "pending";
const DEADLINES: &str = "deadlines";

#[derive(Debug, Clone, Args)]
pub struct CarrierStateConfig {
    /// Longest a request may stay pending, whatever deadline it asks for (seconds).
    #[arg(
        long,
        env = "SWITCHYARD_MAX_REQUEST_TIMEOUT_SECS",
        default_value_t = 120
    )]
    pub max_request_timeout_secs: u64,
    /// How often deadlines are checked (milliseconds).
    #[arg(long, env = "SWITCHYARD_DEADLINE_CHECK_MS", default_value_t = 1000)]
    pub deadline_check_ms: u64,
    /// Requests kept per modem (finished ones beyond this are dropped, oldest first).
    #[arg(long, env = "SWITCHYARD_REQUEST_HISTORY", default_value_t = 20)]
    pub request_history: usize,
}

impl Default for CarrierStateConfig {
    fn default() -> Self {
        CarrierStateConfig {
            max_request_timeout_secs: 120,
            deadline_check_ms: 1000,
            request_history: 20,
        }
    }
}

pub struct CarrierStateProcessor {
    config: CarrierStateConfig,
}

impl CarrierStateProcessor {
    pub fn new(config: CarrierStateConfig) -> Self {
        CarrierStateProcessor { config }
    }

    fn max_timeout_us(&self) -> i64 {
        i64::try_from(
            self.config
                .max_request_timeout_secs
                .saturating_mul(1_000_000),
        )
        .unwrap_or(i64::MAX)
    }
}

/// Load a modem, apply `change`, and if anything changed save it, index its deadline and
/// publish its state.
fn update(
    ctx: &mut Context<'_>,
    modem_id: &str,
    change: impl FnOnce(&mut ModemRecord) -> bool,
) -> Result<(), ProcessError> {
    let mut record = load(ctx, modem_id)?;
    if !change(&mut record) {
        ctx.count("unchanged");
        return Ok(());
    }
    let now_ms = ctx.wall_clock_ms();
    record.state.updated_at = now_ms.saturating_mul(1000);
    save(ctx, modem_id, &record)?;
    match record.next_deadline() {
        Some(deadline) => ctx.store(PENDING)?.put(modem_id, &deadline)?,
        None => ctx.store(PENDING)?.delete(modem_id),
    }
    ctx.send::<CarrierState>(OUTPUT, modem_id, &record.state, Some(now_ms))
}

/// A `modems` value written before changelogs were Avro: JSON of the whole record,
/// `{"state": {...}, "early": [...]}`. The state is kept; the early events (answers for
/// requests never seen, a handful at most) are not carried over.
fn state_from_json(json: &[u8]) -> Result<CarrierState, String> {
    #[derive(serde::Deserialize)]
    struct Before {
        state: CarrierState,
    }
    serde_json::from_slice::<Before>(json)
        .map(|before| before.state)
        .map_err(|e| format!("not a carrier-state record of an older version: {e}"))
}

/// A modem's record from its three stores (a new one for a modem never seen). Early events
/// come back deliveries first: a delivery event comes before the answer it led to.
fn load(ctx: &mut Context<'_>, modem_id: &str) -> Result<ModemRecord, ProcessError> {
    let mut record = match ctx.store(MODEMS)?.get::<CarrierState>(modem_id)? {
        Some(state) => ModemRecord {
            state,
            early: Vec::new(),
        },
        None => ModemRecord::new(modem_id),
    };
    let deliveries = ctx
        .store(EARLY_DELIVERIES)?
        .get::<Vec<DownlinkDelivery>>(modem_id)?;
    let acks = ctx
        .store(EARLY_ACKS)?
        .get::<Vec<CarrierSwitchAck>>(modem_id)?;
    record
        .early
        .extend(deliveries.into_iter().flatten().map(EarlyEvent::Delivery));
    record
        .early
        .extend(acks.into_iter().flatten().map(EarlyEvent::Ack));
    Ok(record)
}

/// Write a modem's record back; an empty list of early events is deleted, not written.
fn save(ctx: &mut Context<'_>, modem_id: &str, record: &ModemRecord) -> Result<(), ProcessError> {
    ctx.store(MODEMS)?.put(modem_id, &record.state)?;
    let (mut acks, mut deliveries) = (Vec::new(), Vec::new());
    for event in &record.early {
        match event {
            EarlyEvent::Ack(a) => acks.push(a.clone()),
            EarlyEvent::Delivery(d) => deliveries.push(d.clone()),
        }
    }
    for (store, empty) in [
        (EARLY_ACKS, acks.is_empty()),
        (EARLY_DELIVERIES, deliveries.is_empty()),
    ] {
        if empty {
            ctx.store(store)?.delete(modem_id);
        }
    }
    if !acks.is_empty() {
        ctx.store(EARLY_ACKS)?.put(modem_id, &acks)?;
    }
    if !deliveries.is_empty() {
        ctx.store(EARLY_DELIVERIES)?.put(modem_id, &deliveries)?;
    }
    Ok(())
}

impl Processor for CarrierStateProcessor {
    fn topology(&self) -> Topology {
        Topology::new(NAME)
            // On the switch round trip an operator waits on, with a record or two per
            // switch: outputs go out at once instead of waiting to fill a batch.
            .linger(Duration::ZERO)
            .input::<CarrierSwitchRequest>(REQUESTS)
            .input::<CarrierSwitchAck>(ACKS)
            .input::<DownlinkDelivery>(DELIVERIES)
            .input::<IotStatusReport>(STATUS)
            .input::<DeviceSession>(SESSIONS)
            .output::<CarrierState>(OUTPUT)
            .store_upgrading_json::<CarrierState>(MODEMS, state_from_json)
            .store::<Vec<CarrierSwitchAck>>(EARLY_ACKS)
            .store::<Vec<DownlinkDelivery>>(EARLY_DELIVERIES)
            .store::<i64>(PENDING)
            .timer(
                DEADLINES,
                TimerKind::WallClock,
                Duration::from_millis(self.config.deadline_check_ms.max(1)),
            )
    }

    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let (cap, history) = (self.max_timeout_us(), self.config.request_history);
        match record.topic {
            REQUESTS => {
                let req: CarrierSwitchRequest = record.value()?;
                update(ctx, &req.modem_id, |m| {
                    lifecycle::apply_request(m, &req, cap, history)
                })
            }
            ACKS => {
                let ack: CarrierSwitchAck = record.value()?;
                update(ctx, &ack.modem_id, |m| lifecycle::apply_ack(m, &ack))
            }
            DELIVERIES => {
                let event: DownlinkDelivery = record.value()?;
                update(ctx, &event.modem_id, |m| {
                    lifecycle::apply_delivery(m, &event)
                })
            }
            STATUS => {
                let status: IotStatusReport = record.value()?;
                update(ctx, &status.modem_id, |m| {
                    lifecycle::apply_status(m, &status)
                })
            }
            SESSIONS if record.is_tombstone() => {
                // The gateway ended the session of a modem long silent (its route is gone);
                // what is known of the modem stays.
                ctx.count("session_expired");
                Ok(())
            }
            SESSIONS => {
                let session: DeviceSession = record.value()?;
                update(ctx, &session.modem_id, |m| {
                    lifecycle::apply_session(m, &session)
                })
            }
            other => Err(ProcessError::failed(format!(
                "unexpected input topic {other}"
            ))),
        }
    }

    fn punctuate(&mut self, timer: &Timer, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        if timer.name != DEADLINES {
            return Ok(());
        }
        let now_us = timer.time_ms.saturating_mul(1000);
        let due: Vec<String> = ctx
            .store(PENDING)?
            .entries::<i64>()?
            .into_iter()
            .filter(|(_, deadline)| *deadline <= now_us)
            .map(|(modem, _)| modem)
            .collect();
        for modem in due {
            let mut expired = false;
            update(ctx, &modem, |m| {
                expired = lifecycle::expire(m, now_us);
                expired
            })?;
            if expired {
                // switchyard_processor_events_total{event="requests_timed_out"}: alerted on.
                ctx.count("requests_timed_out");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_pipeline::TestDriver;
    use switchyard_schemas::records::{AckStatus, Carrier, DeliveryEvent, IotStatus, RequestState};

    const MODEM: &str = "356938035643809";

    fn driver() -> TestDriver<CarrierStateProcessor> {
        TestDriver::new(CarrierStateProcessor::new(CarrierStateConfig::default()))
            .expect("valid topology")
    }

    fn request(
        d: &TestDriver<CarrierStateProcessor>,
        id: &str,
        carrier: Carrier,
        timeout_s: i64,
    ) -> CarrierSwitchRequest {
        let now = d.wall_clock_ms() * 1000;
        CarrierSwitchRequest {
            request_id: id.into(),
            modem_id: MODEM.into(),
            carrier,
            requested_at: now,
            deadline: now + timeout_s * 1_000_000,
            requested_by: Some("test".into()),
        }
    }

    fn latest(d: &mut TestDriver<CarrierStateProcessor>) -> CarrierState {
        d.read_output::<CarrierState>(OUTPUT)
            .pop()
            .expect("a state was published")
            .value
    }

    #[test]
    fn a_switch_is_requested_sent_and_acknowledged() {
        let mut d = driver();
        let req = request(&d, "00000000000000aa", Carrier::Verizon, 30);
        d.pipe(REQUESTS, MODEM, &req, 1).expect("ok");
        let state = latest(&mut d);
        assert_eq!(state.requests[0].state, RequestState::Requested);
        let sent = DownlinkDelivery {
            request_id: req.request_id.clone(),
            modem_id: MODEM.into(),
            event: DeliveryEvent::Sent,
            attempt: 1,
            address: Some("127.0.0.1:5000".into()),
            reason: None,
            at: req.requested_at + 1000,
        };
        d.pipe(DELIVERIES, MODEM, &sent, 2).expect("ok");
        assert_eq!(latest(&mut d).requests[0].state, RequestState::Sent);
        let ack = CarrierSwitchAck {
            modem_id: MODEM.into(),
            request_id: Some(req.request_id.clone()),
            status: AckStatus::Ack,
            carrier: Carrier::Verizon,
            received_at: req.requested_at + 2000,
            sequence: Some(4),
            reason: None,
        };
        d.pipe(ACKS, MODEM, &ack, 3).expect("ok");
        let out = d.read_output::<CarrierState>(OUTPUT);
        let last = out.last().expect("published");
        assert_eq!(last.key.as_deref(), Some(MODEM), "keyed by modem id");
        assert_eq!(last.value.carrier, Some(Carrier::Verizon));
        assert_eq!(last.value.requests[0].state, RequestState::Acked);
        // The same ACK again (at-least-once input) publishes nothing new.
        d.pipe(ACKS, MODEM, &ack, 4).expect("ok");
        assert!(d.read_output::<CarrierState>(OUTPUT).is_empty());
        assert_eq!(d.count("unchanged"), 1);
    }

    #[test]
    fn a_sims_power_on_report_sets_the_carrier_and_answers_no_request() {
        let mut d = driver();
        let v1_ack = |status, carrier, at| CarrierSwitchAck {
            modem_id: MODEM.into(),
            request_id: None,
            status,
            carrier,
            received_at: at,
            sequence: None,
            reason: None,
        };
        // Power-on, nothing asked: the modem's carrier is known from its first packets.
        d.pipe(ACKS, MODEM, &v1_ack(AckStatus::Ack, Carrier::AtAndT, 1), 1)
            .expect("ok");
        let state = latest(&mut d);
        assert_eq!(state.carrier, Some(Carrier::AtAndT));
        assert!(state.requests.is_empty());

        // A switch to Verizon is pending when the modem reboots: its report (still AT&T) is
        // not the answer, the ACK naming Verizon is.
        let req = request(&d, "00000000000000ab", Carrier::Verizon, 30);
        d.pipe(REQUESTS, MODEM, &req, 2).expect("ok");
        let t = req.requested_at;
        d.pipe(
            ACKS,
            MODEM,
            &v1_ack(AckStatus::Ack, Carrier::AtAndT, t + 1),
            3,
        )
        .expect("ok");
        let state = latest(&mut d);
        assert_eq!(state.requests[0].state, RequestState::Requested);
        assert_eq!(state.carrier, Some(Carrier::AtAndT));
        d.pipe(
            ACKS,
            MODEM,
            &v1_ack(AckStatus::Ack, Carrier::Verizon, t + 2),
            4,
        )
        .expect("ok");
        let state = latest(&mut d);
        assert_eq!(state.requests[0].state, RequestState::Acked);
        assert_eq!(state.carrier, Some(Carrier::Verizon));
    }

    #[test]
    fn a_request_without_an_answer_times_out_from_the_timer() {
        let mut d = driver();
        let req = request(&d, "00000000000000bb", Carrier::TMobile, 5);
        d.pipe(REQUESTS, MODEM, &req, 1).expect("ok");
        let _ = d.read_output::<CarrierState>(OUTPUT);
        d.advance_wall_clock(Duration::from_secs(4)).expect("ok");
        assert!(d.read_output::<CarrierState>(OUTPUT).is_empty(), "not yet");
        d.advance_wall_clock(Duration::from_secs(2)).expect("ok");
        let state = latest(&mut d);
        assert_eq!(state.requests[0].state, RequestState::TimedOut);
        assert_eq!(d.count("requests_timed_out"), 1);
        // Nothing pending any more: further ticks publish nothing.
        d.advance_wall_clock(Duration::from_secs(10)).expect("ok");
        assert!(d.read_output::<CarrierState>(OUTPUT).is_empty());
    }

    #[test]
    fn status_reports_update_the_modem() {
        let mut d = driver();
        let status = IotStatusReport {
            modem_id: MODEM.into(),
            status: IotStatus::OffNominal,
            received_at: 1_700_000_000_000_000,
            sequence: None,
        };
        d.pipe(STATUS, MODEM, &status, 1).expect("ok");
        let state = latest(&mut d);
        assert_eq!(state.last_status, Some(IotStatus::OffNominal));
        assert_eq!(state.last_seen, Some(1_700_000_000_000_000));
    }

    #[test]
    fn a_modem_heard_only_through_its_session_is_listed_and_can_be_switched() {
        // A v1 device sends readings only: no status packet, so only its session names it.
        let mut d = driver();
        let session = DeviceSession {
            modem_id: MODEM.into(),
            gateway: "gateway".into(),
            address: "198.51.100.7:4000".into(),
            protocol: switchyard_schemas::records::SessionProtocol::V1,
            authenticated: false,
            first_seen: 1_700_000_000_000_000,
            last_seen: 1_700_000_030_000_000,
            address_changes: 0,
            clock_offset_ms: Some(-90_000),
            sequence: None,
            sequence_reserved: None,
        };
        d.pipe(SESSIONS, MODEM, &session, 1).expect("ok");
        let state = latest(&mut d);
        assert_eq!(state.modem_id, MODEM);
        assert_eq!(state.last_seen, Some(1_700_000_030_000_000));
        assert_eq!(
            state.clock_offset_ms,
            Some(-90_000),
            "the device clock's offset"
        );
        // An older session record (replayed input) does not move last seen back.
        let older = DeviceSession {
            last_seen: 1_700_000_000_000_000,
            ..session
        };
        d.pipe(SESSIONS, MODEM, &older, 2).expect("ok");
        assert!(d.read_output::<CarrierState>(OUTPUT).is_empty());

        // Switched: the request, the gateway's send, and the v1 device's ACK (no request id:
        // the original protocol has none) end it acked.
        let req = request(&d, "00000000000000ab", Carrier::TMobile, 30);
        d.pipe(REQUESTS, MODEM, &req, 3).expect("ok");
        assert_eq!(latest(&mut d).requests[0].state, RequestState::Requested);
        let sent = DownlinkDelivery {
            request_id: req.request_id.clone(),
            modem_id: MODEM.into(),
            event: DeliveryEvent::Sent,
            attempt: 1,
            address: Some("198.51.100.7:4000".into()),
            reason: None,
            at: req.requested_at + 1000,
        };
        d.pipe(DELIVERIES, MODEM, &sent, 4).expect("ok");
        let ack = CarrierSwitchAck {
            modem_id: MODEM.into(),
            request_id: None,
            status: AckStatus::Ack,
            carrier: Carrier::TMobile,
            received_at: req.requested_at + 2000,
            sequence: None,
            reason: None,
        };
        d.pipe(ACKS, MODEM, &ack, 5).expect("ok");
        let state = latest(&mut d);
        assert_eq!(
            (state.carrier, state.requests[0].state),
            (Some(Carrier::TMobile), RequestState::Acked)
        );

        // The session expires at the gateway (a tombstone): what carrier-state knows of the
        // modem stays, and the tombstone is neither an error nor a dead letter.
        d.pipe_raw(SESSIONS, Some(MODEM.as_bytes()), None, 6)
            .expect("a tombstone is handled");
        assert!(d.read_output::<CarrierState>(OUTPUT).is_empty());
        assert!(d.dead_letters().is_empty());
        assert_eq!(d.count("session_expired"), 1);
    }

    #[test]
    fn state_and_deadlines_survive_a_restart() {
        let mut d = driver();
        let req = request(&d, "00000000000000cc", Carrier::AtAndT, 5);
        d.pipe(REQUESTS, MODEM, &req, 1).expect("ok");
        let mut d = d
            .restart(CarrierStateProcessor::new(CarrierStateConfig::default()))
            .expect("restart");
        d.advance_wall_clock(Duration::from_secs(6)).expect("ok");
        let state = latest(&mut d);
        assert_eq!(state.requests[0].request_id, req.request_id);
        assert_eq!(
            state.requests[0].state,
            RequestState::TimedOut,
            "the restored pending index still drives the timer"
        );
    }

    #[test]
    fn a_modems_value_an_older_version_wrote_as_json_is_restored() {
        use switchyard_pipeline::engine::{Engine, Restored};
        let catalog = switchyard_schemas::Catalog::embedded().expect("catalog");
        let mut engine = Engine::new(
            CarrierStateProcessor::new(CarrierStateConfig::default()),
            &catalog,
        )
        .expect("topology");
        engine.set_store_id(MODEMS, 9);
        let mut stores = engine.empty_stores();
        let mut state = ModemRecord::new(MODEM).state;
        state.carrier = Some(Carrier::Verizon);
        state.last_status = Some(IotStatus::Nominal);
        // What the store held before changelogs were Avro: JSON of the whole record.
        let before = serde_json::json!({
            "state": serde_json::to_value(&state).expect("json"),
            "early": [{"Ack": {"modem_id": MODEM, "request_id": "00000000000000aa",
                "status": "ACK", "carrier": "T_MOBILE", "received_at": 1, "sequence": null}}],
        });
        let json = serde_json::to_vec(&before).expect("json");
        assert_eq!(
            engine.restore(&mut stores, MODEMS, MODEM.into(), Some(json)),
            Restored::Converted
        );
        // Something else is kept as it was and reported.
        assert!(matches!(
            engine.restore(
                &mut stores,
                MODEMS,
                "other".into(),
                Some(b"[1, 2]".to_vec())
            ),
            Restored::Unreadable(_)
        ));
        engine.assign(0, stores);
        let store = engine.store(0, MODEMS).expect("store");
        assert_eq!(store.get::<CarrierState>(MODEM), Ok(Some(state)));
    }
}

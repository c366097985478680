//! The API's view of the fleet: the compacted `carrier-state` table as read from Kafka, plus
//! the requests this instance accepted that the table does not show yet ("read your write").
//! Pure data; the Kafka follower and the handlers only call [`Table::apply`],
//! [`Table::accepted`] and the lookups.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use switchyard_schemas::records::{
    self, CarrierState, IotStatus, RequestState, SwitchRequestState,
};
use utoipa::ToSchema;

/// A carrier as operators write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum CarrierName {
    #[serde(rename = "at&t")]
    AtAndT,
    #[serde(rename = "t-mobile")]
    TMobile,
    #[serde(rename = "verizon")]
    Verizon,
    #[serde(rename = "disconnect")]
    Disconnect,
}

impl CarrierName {
    pub const ALL: [CarrierName; 4] = [
        CarrierName::AtAndT,
        CarrierName::TMobile,
        CarrierName::Verizon,
        CarrierName::Disconnect,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CarrierName::AtAndT => "at&t",
            CarrierName::TMobile => "t-mobile",
            CarrierName::Verizon => "verizon",
            CarrierName::Disconnect => "disconnect",
        }
    }

    /// Case-insensitive; `att` and `tmobile` are accepted too.
    pub fn parse(text: &str) -> Option<CarrierName> {
        match text.trim().to_ascii_lowercase().as_str() {
            "at&t" | "att" => Some(CarrierName::AtAndT),
            "t-mobile" | "tmobile" => Some(CarrierName::TMobile),
            "verizon" => Some(CarrierName::Verizon),
            "disconnect" => Some(CarrierName::Disconnect),
            _ => None,
        }
    }
}

impl From<records::Carrier> for CarrierName {
    fn from(c: records::Carrier) -> Self {
        match c {
            records::Carrier::AtAndT => CarrierName::AtAndT,
            records::Carrier::TMobile => CarrierName::TMobile,
            records::Carrier::Verizon => CarrierName::Verizon,
            records::Carrier::Disconnect => CarrierName::Disconnect,
        }
    }
}

impl From<CarrierName> for records::Carrier {
    fn from(c: CarrierName) -> Self {
        match c {
            CarrierName::AtAndT => records::Carrier::AtAndT,
            CarrierName::TMobile => records::Carrier::TMobile,
            CarrierName::Verizon => records::Carrier::Verizon,
            CarrierName::Disconnect => records::Carrier::Disconnect,
        }
    }
}

/// Where a switch request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestStateName {
    /// Accepted, not yet sent to the modem.
    Requested,
    /// Sent by the gateway; no answer yet.
    Sent,
    /// The SIM switched and acknowledged.
    Acked,
    /// The SIM refused; its carrier is unchanged.
    Nacked,
    /// No answer by the deadline.
    TimedOut,
    /// A newer request for the modem replaced it.
    Superseded,
    /// The gateway gave up (no known address, or the deadline passed while retrying).
    Undeliverable,
}

impl RequestStateName {
    pub fn is_pending(self) -> bool {
        matches!(self, RequestStateName::Requested | RequestStateName::Sent)
    }
}

impl From<RequestState> for RequestStateName {
    fn from(s: RequestState) -> Self {
        match s {
            RequestState::Requested => RequestStateName::Requested,
            RequestState::Sent => RequestStateName::Sent,
            RequestState::Acked => RequestStateName::Acked,
            RequestState::Nacked => RequestStateName::Nacked,
            RequestState::TimedOut => RequestStateName::TimedOut,
            RequestState::Superseded => RequestStateName::Superseded,
            RequestState::Undeliverable => RequestStateName::Undeliverable,
        }
    }
}

/// One switch request and its lifecycle. Times are RFC 3339 (UTC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RequestView {
    pub request_id: String,
    pub modem_id: String,
    /// The carrier requested.
    pub carrier: CarrierName,
    pub state: RequestStateName,
    pub requested_at: String,
    pub deadline: String,
    pub sent_at: Option<String>,
    /// Transmissions so far.
    pub attempts: i32,
    pub completed_at: Option<String>,
    /// The carrier the SIM reported in its answer.
    pub result_carrier: Option<CarrierName>,
    pub reason: Option<String>,
}

/// One step of a request's lifecycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StateChange {
    pub state: RequestStateName,
    /// RFC 3339 (UTC).
    pub at: String,
}

/// A request with every state it went through and when, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RequestHistory {
    #[serde(flatten)]
    pub request: RequestView,
    pub changes: Vec<StateChange>,
}

impl RequestHistory {
    fn of(modem_id: &str, r: &SwitchRequestState) -> Self {
        let mut changes = vec![StateChange {
            state: RequestStateName::Requested,
            at: rfc3339(r.requested_at),
        }];
        if let Some(sent) = r.sent_at {
            changes.push(StateChange {
                state: RequestStateName::Sent,
                at: rfc3339(sent),
            });
        }
        let state = RequestStateName::from(r.state);
        if let (false, Some(done)) = (state.is_pending(), r.completed_at) {
            changes.push(StateChange {
                state,
                at: rfc3339(done),
            });
        }
        RequestHistory {
            request: request_view(modem_id, r),
            changes,
        }
    }
}

/// One modem: its carrier, its last status, when it was last heard, its requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModemView {
    pub modem_id: String,
    /// As last reported by the SIM; null until the first answer.
    pub carrier: Option<CarrierName>,
    /// `nominal`, `idle` or `off_nominal`.
    pub last_status: Option<String>,
    pub last_seen: Option<String>,
    /// The device clock's offset as its gateway sees it: arrival minus sensor time of its
    /// readings, smoothed, in ms (network delay plus the clock's error); null before a reading.
    pub clock_offset_ms: Option<i64>,
    /// The request in flight, if any.
    pub pending: Option<RequestView>,
    /// Recent requests, oldest first.
    pub requests: Vec<RequestView>,
}

pub fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn request_view(modem_id: &str, r: &SwitchRequestState) -> RequestView {
    RequestView {
        request_id: r.request_id.clone(),
        modem_id: modem_id.to_string(),
        carrier: r.carrier.into(),
        state: r.state.into(),
        requested_at: rfc3339(r.requested_at),
        deadline: rfc3339(r.deadline),
        sent_at: r.sent_at.map(rfc3339),
        attempts: r.attempts,
        completed_at: r.completed_at.map(rfc3339),
        result_carrier: r.result_carrier.map(Into::into),
        reason: r.reason.clone(),
    }
}

fn status_name(s: IotStatus) -> &'static str {
    match s {
        IotStatus::Nominal => "nominal",
        IotStatus::Idle => "idle",
        IotStatus::OffNominal => "off_nominal",
    }
}

/// The table and this instance's accepted-but-not-yet-visible requests.
#[derive(Debug, Default)]
pub struct Table {
    modems: HashMap<String, CarrierState>,
    /// request id → modem id, for every request the table shows.
    index: HashMap<String, String>,
    /// Accepted here, not yet in the table: request id → (modem id, request).
    accepted: HashMap<String, (String, SwitchRequestState)>,
}

impl Table {
    /// A record of the `carrier-state` topic (None: a tombstone). Returns the modem's new view.
    pub fn apply(&mut self, modem_id: &str, state: Option<CarrierState>) -> Option<ModemView> {
        if let Some(old) = self.modems.remove(modem_id) {
            for r in &old.requests {
                self.index.remove(&r.request_id);
            }
        }
        let state = state?;
        for r in &state.requests {
            self.index
                .insert(r.request_id.clone(), modem_id.to_string());
            self.accepted.remove(&r.request_id);
        }
        self.modems.insert(modem_id.to_string(), state);
        self.modem(modem_id)
    }

    /// A request this instance produced: visible at once, until the table shows it.
    pub fn accepted(&mut self, modem_id: &str, request: SwitchRequestState) -> Option<ModemView> {
        if !self.index.contains_key(&request.request_id) {
            self.accepted
                .insert(request.request_id.clone(), (modem_id.to_string(), request));
        }
        self.modem(modem_id)
    }

    pub fn contains(&self, modem_id: &str) -> bool {
        self.modems.contains_key(modem_id)
    }

    pub fn modem(&self, modem_id: &str) -> Option<ModemView> {
        let state = self.modems.get(modem_id)?;
        let mut requests: Vec<RequestView> = state
            .requests
            .iter()
            .map(|r| request_view(modem_id, r))
            .collect();
        let mut mine: Vec<&SwitchRequestState> = self
            .accepted
            .values()
            .filter(|(m, _)| m == modem_id)
            .map(|(_, r)| r)
            .collect();
        mine.sort_by_key(|r| r.requested_at);
        requests.extend(mine.into_iter().map(|r| request_view(modem_id, r)));
        Some(ModemView {
            modem_id: modem_id.to_string(),
            carrier: state.carrier.map(Into::into),
            last_status: state.last_status.map(|s| status_name(s).to_string()),
            last_seen: state.last_seen.map(rfc3339),
            clock_offset_ms: state.clock_offset_ms,
            pending: requests
                .iter()
                .rev()
                .find(|r| r.state.is_pending())
                .cloned(),
            requests,
        })
    }

    /// Every modem, by id.
    pub fn modems(&self) -> Vec<ModemView> {
        let mut ids: Vec<&String> = self.modems.keys().collect();
        ids.sort();
        ids.into_iter().filter_map(|id| self.modem(id)).collect()
    }

    /// A modem's switch requests, newest first, each with its state changes: those the
    /// table holds (carrier-state keeps the last `--request-history`, 20 by default) and
    /// those accepted here and not yet in it. None for an unknown modem.
    pub fn history(&self, modem_id: &str) -> Option<Vec<RequestHistory>> {
        let state = self.modems.get(modem_id)?;
        let mut all: Vec<&SwitchRequestState> = state
            .requests
            .iter()
            .chain(
                self.accepted
                    .values()
                    .filter(|(m, _)| m == modem_id)
                    .map(|(_, r)| r),
            )
            .collect();
        // Newest first: by request time, the request id breaking ties.
        all.sort_by(|a, b| (b.requested_at, &b.request_id).cmp(&(a.requested_at, &a.request_id)));
        Some(
            all.into_iter()
                .map(|r| RequestHistory::of(modem_id, r))
                .collect(),
        )
    }

    pub fn request(&self, request_id: &str) -> Option<RequestView> {
        if let Some(modem_id) = self.index.get(request_id) {
            let state = self.modems.get(modem_id)?;
            let r = state.requests.iter().find(|r| r.request_id == request_id)?;
            return Some(request_view(modem_id, r));
        }
        let (modem_id, r) = self.accepted.get(request_id)?;
        Some(request_view(modem_id, r))
    }

    pub fn len(&self) -> usize {
        self.modems.len()
    }

    pub fn is_empty(&self) -> bool {
        self.modems.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_schemas::records::Carrier;

    fn request(id: &str, state: RequestState, at: i64) -> SwitchRequestState {
        SwitchRequestState {
            request_id: id.into(),
            carrier: Carrier::Verizon,
            state,
            requested_at: at,
            deadline: at + 60_000_000,
            sent_at: None,
            attempts: 0,
            completed_at: None,
            result_carrier: None,
            reason: None,
        }
    }

    fn state(modem: &str, requests: Vec<SwitchRequestState>) -> CarrierState {
        CarrierState {
            modem_id: modem.into(),
            carrier: Some(Carrier::AtAndT),
            last_status: Some(IotStatus::Nominal),
            last_seen: Some(1_700_000_000_000_000),
            updated_at: 1_700_000_000_000_000,
            clock_offset_ms: Some(1_500),
            requests,
        }
    }

    #[test]
    fn history_lists_requests_newest_first_with_each_state_change() {
        const T: i64 = 1_700_000_000_000_000;
        let mut table = Table::default();
        let acked = SwitchRequestState {
            sent_at: Some(T + 100_000),
            completed_at: Some(T + 400_000),
            attempts: 1,
            ..request("r1", RequestState::Acked, T)
        };
        let timed_out = SwitchRequestState {
            sent_at: Some(T + 60_100_000),
            completed_at: Some(T + 120_000_000),
            ..request("r2", RequestState::TimedOut, T + 60_000_000)
        };
        table.apply("7", Some(state("7", vec![acked, timed_out])));
        table.accepted("7", request("r3", RequestState::Requested, T + 200_000_000));

        let history = table.history("7").expect("known modem");
        let ids: Vec<&str> = history
            .iter()
            .map(|h| h.request.request_id.as_str())
            .collect();
        assert_eq!(ids, ["r3", "r2", "r1"]);
        let steps = |h: &RequestHistory| -> Vec<(RequestStateName, String)> {
            h.changes.iter().map(|c| (c.state, c.at.clone())).collect()
        };
        assert_eq!(
            steps(&history[2]),
            [
                (RequestStateName::Requested, rfc3339(T)),
                (RequestStateName::Sent, rfc3339(T + 100_000)),
                (RequestStateName::Acked, rfc3339(T + 400_000)),
            ]
        );
        assert_eq!(
            steps(&history[1]).last(),
            Some(&(RequestStateName::TimedOut, rfc3339(T + 120_000_000)))
        );
        assert_eq!(
            steps(&history[0]),
            [(RequestStateName::Requested, rfc3339(T + 200_000_000))]
        );
        assert!(table.history("unknown").is_none());
    }

    #[test]
    fn an_accepted_request_is_visible_until_the_table_shows_it() {
        let mut table = Table::default();
        table.apply("7", Some(state("7", vec![])));
        let view = table
            .accepted("7", request("r1", RequestState::Requested, 1))
            .expect("known modem");
        assert_eq!(
            view.pending.map(|p| p.request_id),
            Some("r1".to_string()),
            "read your write"
        );
        assert_eq!(
            table.request("r1").map(|r| r.state),
            Some(RequestStateName::Requested)
        );

        // The table catches up, then moves on: its version wins.
        table.apply(
            "7",
            Some(state("7", vec![request("r1", RequestState::Acked, 1)])),
        );
        let view = table.modem("7").expect("modem");
        assert_eq!(view.requests.len(), 1, "not shown twice");
        assert!(view.pending.is_none());
        assert_eq!(
            table.request("r1").map(|r| r.state),
            Some(RequestStateName::Acked)
        );
    }

    #[test]
    fn tombstones_remove_modems_and_their_requests() {
        let mut table = Table::default();
        table.apply(
            "7",
            Some(state("7", vec![request("r1", RequestState::Sent, 1)])),
        );
        table.apply("8", Some(state("8", vec![])));
        assert_eq!(
            table
                .modems()
                .iter()
                .map(|m| m.modem_id.as_str())
                .collect::<Vec<_>>(),
            vec!["7", "8"]
        );
        assert!(table.apply("7", None).is_none());
        assert!(!table.contains("7"));
        assert!(table.request("r1").is_none());
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn carriers_parse_as_operators_write_them() {
        for c in CarrierName::ALL {
            assert_eq!(CarrierName::parse(c.as_str()), Some(c));
            assert_eq!(
                serde_json::to_value(c).expect("json"),
                serde_json::json!(c.as_str())
            );
        }
        assert_eq!(CarrierName::parse(" AT&T "), Some(CarrierName::AtAndT));
        assert_eq!(CarrierName::parse("sprint"), None);
    }
}

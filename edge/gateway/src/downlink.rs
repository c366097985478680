//! Carrier switch requests on their way to a device: when to (re)send, when to give up.
//! Time is passed in, so the rules are tested without waiting.

use std::collections::HashMap;

use switchyard_protocol::Carrier;

/// What a device's ACK packet said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Switched, or (without a request id) on this carrier now.
    Ack(Carrier),
    Nack,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub request_id: u64,
    pub modem_id: String,
    pub carrier: Carrier,
    pub deadline_us: i64,
    /// Sends so far.
    pub attempts: i32,
    pub next_attempt_us: i64,
    pub backoff_us: i64,
    pub added_us: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send (attempt 1) or re-send (attempt > 1).
    Send {
        request_id: u64,
        modem_id: String,
        carrier: Carrier,
        attempt: i32,
    },
    /// Give up: `no_known_address` if it was never sent, `deadline` otherwise.
    GiveUp {
        request_id: u64,
        modem_id: String,
        attempts: i32,
        reason: &'static str,
    },
}

#[derive(Debug, Clone)]
pub struct Downlink {
    pending: HashMap<u64, Pending>,
    initial_backoff_us: i64,
    max_backoff_us: i64,
}

impl Downlink {
    pub fn new(initial_backoff_us: i64, max_backoff_us: i64) -> Self {
        Downlink {
            pending: HashMap::new(),
            initial_backoff_us: initial_backoff_us.max(1),
            max_backoff_us: max_backoff_us.max(initial_backoff_us.max(1)),
        }
    }

    /// A new request; a repeated request id (at-least-once input) is ignored. A newer
    /// request for the same modem replaces a pending one (the device acts on the latest).
    pub fn add(
        &mut self,
        request_id: u64,
        modem_id: &str,
        carrier: Carrier,
        deadline_us: i64,
        now_us: i64,
    ) -> bool {
        if self.pending.contains_key(&request_id) {
            return false;
        }
        self.pending.retain(|_, p| p.modem_id != modem_id);
        self.pending.insert(
            request_id,
            Pending {
                request_id,
                modem_id: modem_id.to_string(),
                carrier,
                deadline_us,
                attempts: 0,
                next_attempt_us: now_us,
                backoff_us: self.initial_backoff_us,
                added_us: now_us,
            },
        );
        true
    }

    /// What to do now; `reachable` says whether a modem's address is known.
    pub fn due(&mut self, now_us: i64, reachable: impl Fn(&str) -> bool) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut done = Vec::new();
        for p in self.pending.values_mut() {
            if p.deadline_us <= now_us {
                actions.push(Action::GiveUp {
                    request_id: p.request_id,
                    modem_id: p.modem_id.clone(),
                    attempts: p.attempts,
                    reason: if p.attempts == 0 {
                        "no_known_address"
                    } else {
                        "deadline"
                    },
                });
                done.push(p.request_id);
                continue;
            }
            if p.next_attempt_us > now_us || !reachable(&p.modem_id) {
                continue;
            }
            p.attempts += 1;
            actions.push(Action::Send {
                request_id: p.request_id,
                modem_id: p.modem_id.clone(),
                carrier: p.carrier,
                attempt: p.attempts,
            });
            p.next_attempt_us = now_us + p.backoff_us;
            p.backoff_us = (p.backoff_us * 2).min(self.max_backoff_us);
        }
        for id in done {
            self.pending.remove(&id);
        }
        actions.sort_by_key(|a| match a {
            Action::Send { request_id, .. } | Action::GiveUp { request_id, .. } => *request_id,
        });
        actions
    }

    /// The device answered: by request id, or (v1 devices) the modem's oldest pending request
    /// that the answer fits: a NACK, or an ACK naming the carrier asked for. An ACK without a
    /// request id naming another carrier answers nothing: it is the SIM reporting its carrier
    /// (as it does at power-on), and the Perform goes on being re-sent.
    pub fn answered(
        &mut self,
        request_id: Option<u64>,
        modem_id: &str,
        answer: Answer,
    ) -> Option<Pending> {
        let id = match request_id {
            Some(id) => id,
            None => {
                self.pending
                    .values()
                    .filter(|p| p.modem_id == modem_id)
                    .filter(|p| match answer {
                        Answer::Nack => true,
                        Answer::Ack(carrier) => p.carrier == carrier,
                    })
                    .min_by_key(|p| p.added_us)?
                    .request_id
            }
        };
        match self.pending.get(&id) {
            Some(p) if p.modem_id == modem_id => self.pending.remove(&id),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn contains(&self, request_id: u64) -> bool {
        self.pending.contains_key(&request_id)
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn sends_then_retries_with_backoff_until_answered() {
        let mut d = Downlink::new(S, 4 * S);
        d.add(1, "m", Carrier::Verizon, 100 * S, 0);
        let sends = |actions: Vec<Action>| {
            actions
                .iter()
                .filter(|a| matches!(a, Action::Send { .. }))
                .count()
        };
        assert_eq!(sends(d.due(0, |_| true)), 1);
        assert_eq!(sends(d.due(S / 2, |_| true)), 0);
        assert_eq!(
            d.due(S, |_| true),
            vec![Action::Send {
                request_id: 1,
                modem_id: "m".into(),
                carrier: Carrier::Verizon,
                attempt: 2
            }]
        );
        assert_eq!(sends(d.due(2 * S, |_| true)), 0, "backoff doubled to 2 s");
        assert_eq!(sends(d.due(3 * S, |_| true)), 1);
        assert_eq!(sends(d.due(7 * S, |_| true)), 1, "then 4 s, the maximum");
        assert_eq!(sends(d.due(11 * S, |_| true)), 1);
        assert!(d
            .answered(Some(1), "m", Answer::Ack(Carrier::Verizon))
            .is_some());
        assert!(d.due(20 * S, |_| true).is_empty());
    }

    #[test]
    fn gives_up_at_the_deadline_saying_why() {
        let mut d = Downlink::new(S, S);
        d.add(1, "known", Carrier::Verizon, 3 * S, 0);
        d.add(2, "unknown", Carrier::Verizon, 3 * S, 0);
        for t in 0..3 {
            let _ = d.due(t * S, |m| m == "known");
        }
        let actions = d.due(3 * S, |m| m == "known");
        assert!(
            actions.contains(&Action::GiveUp {
                request_id: 1,
                modem_id: "known".into(),
                attempts: 3,
                reason: "deadline"
            }),
            "{actions:?}"
        );
        assert!(actions.contains(&Action::GiveUp {
            request_id: 2,
            modem_id: "unknown".into(),
            attempts: 0,
            reason: "no_known_address"
        }));
        assert!(d.is_empty());
    }

    #[test]
    fn a_modem_that_appears_later_still_gets_its_request() {
        let mut d = Downlink::new(S, S);
        d.add(1, "m", Carrier::AtAndT, 10 * S, 0);
        assert!(d.due(0, |_| false).is_empty());
        assert_eq!(d.due(2 * S, |_| true).len(), 1);
    }

    #[test]
    fn duplicates_are_ignored_newer_requests_replace_older_and_v1_answers_match_by_modem() {
        let mut d = Downlink::new(S, S);
        assert!(d.add(1, "m", Carrier::AtAndT, 10 * S, 0));
        assert!(!d.add(1, "m", Carrier::AtAndT, 10 * S, 0));
        assert!(d.add(2, "m", Carrier::Verizon, 10 * S, 1));
        assert_eq!(d.len(), 1);
        assert!(
            d.answered(Some(2), "other", Answer::Ack(Carrier::Verizon))
                .is_none(),
            "an answer from another modem does not count"
        );
        assert!(
            d.answered(None, "m", Answer::Ack(Carrier::AtAndT))
                .is_none(),
            "a v1 ACK naming another carrier is a carrier report, not the answer"
        );
        assert_eq!(
            d.answered(None, "m", Answer::Ack(Carrier::Verizon))
                .map(|p| p.request_id),
            Some(2)
        );
        assert!(d.add(3, "m", Carrier::TMobile, 10 * S, 2));
        assert_eq!(
            d.answered(None, "m", Answer::Nack).map(|p| p.request_id),
            Some(3),
            "a NACK names the carrier kept: it answers whatever was asked"
        );
    }
}

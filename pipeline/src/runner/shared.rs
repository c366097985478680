//! State the runner shares with librdkafka's callbacks: the ledger, the rebalance events
//! waiting for the runner, and the ways to wake it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::config::{Guarantee, RunnerError};
use super::delivery::OutputProducer;
use super::ledger::Ledger;
use crate::metrics::Metrics;

/// A change of the group's assignment, applied by the runner before it does anything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GroupEvent {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
    /// At least once: a revocation's wait ran out and every record in flight was purged.
    InFlightPurged,
    /// The group gave this instance's partitions to others without a revocation it could
    /// answer (it did not poll for `max.poll.interval.ms`, or its session expired).
    Lost,
}

pub(crate) struct Shared {
    ledger: Mutex<Ledger>,
    /// Signalled whenever a record is acknowledged or refused (blocking waiters).
    settled: Condvar,
    /// Wakes the runner when a record is acknowledged (it listens only while paused).
    pub acknowledged: Notify,
    /// Wakes the runner when a record was refused for good.
    pub refusal: Notify,
    events: Mutex<Vec<GroupEvent>>,
    /// Errors raised inside callbacks, for the runner to stop with.
    fatal: Mutex<Option<RunnerError>>,
    pub metrics: Metrics,
    pub guarantee: Guarantee,
    /// How long a revocation waits for the revoked tasks' records in flight, in ms (0 once
    /// the runner is leaving: it has waited already).
    pub revoke_timeout_ms: AtomicU64,
    /// The output producer (exactly-once commits its transaction on a revocation).
    pub producer: OnceLock<Weak<OutputProducer>>,
    /// Whether a transaction is open (exactly-once only); see [`Shared::transaction`].
    in_transaction: Mutex<bool>,
    /// Turns of the runner's loop so far ([`super::watchdog`] watches them).
    pub loop_turns: AtomicU64,
    /// Threads blocked in [`Shared::wait_until`]: a settled record wakes them only when
    /// there are some (a condition variable's notify is a system call each time).
    waiters: AtomicUsize,
    /// Something was queued for the runner since it last looked (events, a fatal error, a
    /// refused record): the loop looks at each of them on every turn, and these keep the
    /// turns that find nothing free of locks.
    events_pending: AtomicBool,
    fatal_pending: AtomicBool,
    refusals_pending: AtomicBool,
}

impl Shared {
    pub fn new(
        ledger: Ledger,
        metrics: Metrics,
        guarantee: Guarantee,
        revoke_timeout: Duration,
    ) -> Shared {
        Shared {
            ledger: Mutex::new(ledger),
            settled: Condvar::new(),
            acknowledged: Notify::new(),
            refusal: Notify::new(),
            events: Mutex::new(Vec::new()),
            fatal: Mutex::new(None),
            metrics,
            guarantee,
            revoke_timeout_ms: AtomicU64::new(
                u64::try_from(revoke_timeout.as_millis()).unwrap_or(u64::MAX),
            ),
            producer: OnceLock::new(),
            in_transaction: Mutex::new(false),
            loop_turns: AtomicU64::new(0),
            waiters: AtomicUsize::new(0),
            events_pending: AtomicBool::new(false),
            fatal_pending: AtomicBool::new(false),
            refusals_pending: AtomicBool::new(false),
        }
    }

    pub fn revoke_timeout(&self) -> Duration {
        Duration::from_millis(self.revoke_timeout_ms.load(Ordering::Relaxed))
    }

    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wake everyone waiting for acknowledgements. Called after the ledger was updated
    /// under its lock: a waiter counted itself under that lock before it looked, so it is
    /// either counted here or saw the update.
    pub fn settled(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.settled.notify_all();
        }
        self.acknowledged.notify_one();
    }

    /// Block until `done` holds for the ledger or `timeout` passes; returns whether it held.
    pub fn wait_until(&self, timeout: Duration, done: impl Fn(&Ledger) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut ledger = self.ledger();
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let held = loop {
            if done(&ledger) {
                break true;
            }
            let now = Instant::now();
            if now >= deadline {
                break false;
            }
            ledger = self
                .settled
                .wait_timeout(ledger, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|e| e.into_inner().0);
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        held
    }

    /// Whether a transaction is open (exactly-once), held while it is begun or committed.
    pub fn transaction(&self) -> MutexGuard<'_, bool> {
        self.in_transaction
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub fn push_event(&self, event: GroupEvent) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
        self.events_pending.store(true, Ordering::Release);
    }

    pub fn take_events(&self) -> Vec<GroupEvent> {
        if !self.events_pending.load(Ordering::Relaxed)
            || !self.events_pending.swap(false, Ordering::Acquire)
        {
            return Vec::new();
        }
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn raise(&self, error: RunnerError) {
        let mut fatal = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
        fatal.get_or_insert(error);
        drop(fatal);
        self.fatal_pending.store(true, Ordering::Release);
        self.refusal.notify_one();
    }

    pub fn take_fatal(&self) -> Option<RunnerError> {
        if !self.fatal_pending.load(Ordering::Relaxed)
            || !self.fatal_pending.swap(false, Ordering::Acquire)
        {
            return None;
        }
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// A record was refused (entered in the ledger): wake the runner to settle it.
    pub fn note_refusal(&self) {
        self.refusals_pending.store(true, Ordering::Release);
        self.refusal.notify_one();
    }

    /// Whether a refusal was noted since the last call (the ledger holds it).
    pub fn take_refusal_note(&self) -> bool {
        self.refusals_pending.load(Ordering::Relaxed)
            && self.refusals_pending.swap(false, Ordering::Acquire)
    }
}

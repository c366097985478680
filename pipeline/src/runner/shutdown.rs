//! Stopping: wait (bounded) for records in flight, commit what was acknowledged, leave the
//! group and close the clients, even with the broker away.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use tracing::warn;

use super::commit;
use super::config::{Guarantee, RunnerError};
use super::service::Runner;
use crate::Processor;

impl<P: Processor> Runner<P> {
    /// After the loop: wait (bounded) for records in flight, commit what was acknowledged
    /// (exactly once: the transaction), leave the group. Never blocks longer than the
    /// shutdown timeout (plus the commit's own bound), even with the broker away.
    pub async fn finish(mut self) -> Result<(), RunnerError> {
        self.health.set_ready(false);
        self.shared.metrics.ready.set(0);
        let timeout = self.config.shutdown_timeout();
        let deadline = Instant::now() + timeout;
        // A revocation while leaving must not wait again.
        self.shared.revoke_timeout_ms.store(0, Ordering::Relaxed);
        // A transaction commit under way when the loop ended (the broker slow or away) owns
        // the transaction: nothing may be produced or committed before it ends.
        let mut outcome = match tokio::time::timeout_at(deadline.into(), self.committer.under_way())
            .await
        {
            Ok(result) => result,
            Err(_) => {
                warn!(
                        ?timeout,
                        "a transaction commit still waited for the broker at the shutdown timeout; the broker completes it if the commit reached it and aborts it otherwise; inputs not committed will be processed again"
                    );
                // Nothing of it may be committed by the revocation on the way out.
                self.shared.ledger().forget_all();
                return self.close(Ok(())).await;
            }
        };
        let mut abandoned = false;
        while outcome.is_ok() {
            match self.settle_refusals().await {
                Ok(false) => {}
                // Exactly once, a refused record doomed the transaction: abort it; its
                // inputs are processed again by whoever owns them next.
                Ok(true) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if let Ok(aborted) = tokio::time::timeout(left, self.committer.abort()).await {
                        outcome = aborted;
                    }
                    self.shared.ledger().forget_all();
                    abandoned = true;
                    break;
                }
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
            let in_flight = self.shared.ledger().records_in_flight();
            if in_flight == 0 {
                break;
            }
            if Instant::now() >= deadline {
                warn!(
                    in_flight,
                    ?timeout,
                    "records still unacknowledged at shutdown; their inputs will be processed again"
                );
                break;
            }
            tokio::select! {
                _ = self.shared.acknowledged.notified() => {}
                _ = self.shared.refusal.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        if outcome.is_ok() && !abandoned {
            outcome = self.last_commit(timeout.max(Duration::from_secs(1))).await;
        }
        let open = self.shared.ledger().open_entries(|_| true);
        if open > 0 {
            warn!(
                open,
                "inputs left uncommitted; they will be processed again"
            );
        }
        self.close(outcome).await
    }

    /// The last commit, bounded by `limit`, then leave the group.
    pub(super) async fn last_commit(&mut self, limit: Duration) -> Result<(), RunnerError> {
        let consumer = Arc::clone(&self.consumer);
        let committed = match self.config.processing_guarantee {
            Guarantee::ExactlyOnce => {
                let committed = tokio::time::timeout(limit, self.committer.transaction())
                    .await
                    .ok();
                let leaving = Arc::clone(&consumer);
                bounded(limit, move || leaving.unsubscribe()).await;
                committed
            }
            Guarantee::AtLeastOnce => {
                // Made here, on a bounded thread, and not by the committing thread: it must
                // include what that thread was asked for (`commit_now` waits for it).
                let shared = Arc::clone(&self.shared);
                bounded(limit, move || {
                    let result = commit::commit_now(&*consumer, &shared, |_| true);
                    consumer.unsubscribe();
                    result
                })
                .await
            }
        };
        committed.unwrap_or_else(|| {
            warn!("the final commit did not finish in time (broker away?)");
            Ok(())
        })
    }

    /// Close the clients: librdkafka's consumer close can wait long for an absent broker,
    /// so it is left to a thread of its own, bounded like the rest.
    pub(super) async fn close(self, outcome: Result<(), RunnerError>) -> Result<(), RunnerError> {
        let Runner {
            consumer,
            producer,
            committer,
            ..
        } = self;
        // Its thread ends with its queue (after a commit under way, if any).
        drop(committer);
        let _ = bounded(Duration::from_secs(2), move || {
            drop(consumer);
            drop(producer);
        })
        .await;
        outcome
    }
}

/// Run a blocking job on a thread of its own; `None` if it did not finish within `limit`
/// (the thread is left to finish or die with the process).
async fn bounded<T: Send + 'static>(
    limit: Duration,
    job: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("runner-finish".into())
        .spawn(move || {
            let _ = tx.send(job());
        });
    if spawned.is_err() {
        return None;
    }
    tokio::time::timeout(limit, rx).await.ok()?.ok()
}

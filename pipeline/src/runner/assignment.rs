//! Following the group's assignment: tasks dropped when their partitions go (the
//! revocation callback already waited for their records and committed them), and tasks
//! created once their stores are restored from the changelogs, when partitions come.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use rdkafka::consumer::Consumer;
use tracing::{debug, info, warn};

use super::config::{Guarantee, RunnerError};
use super::restore;
use super::service::Runner;
use crate::engine::Restored;
use crate::Processor;

impl<P: Processor> Runner<P> {
    /// Drop the tasks whose partitions went (the revocation callback already waited for
    /// their records and committed their offsets).
    pub(super) fn drop_tasks(&mut self, parts: &[(String, i32)]) {
        let still: BTreeSet<i32> = self
            .consumer
            .assignment()
            .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default();
        let mut ledger = self.shared.ledger();
        for partition in parts.iter().map(|(_, p)| *p).collect::<BTreeSet<i32>>() {
            if !still.contains(&partition) {
                self.engine.revoke(partition);
                ledger.forget(partition);
                debug!(partition, "task dropped");
            }
        }
    }

    /// Create tasks and fill their stores from the changelogs; not ready meanwhile.
    pub(super) async fn restore_tasks(
        &mut self,
        partitions: &[i32],
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), RunnerError> {
        if partitions.is_empty() {
            return Ok(());
        }
        self.health.set_ready(false);
        self.shared.metrics.ready.set(0);
        let read_committed = self.config.processing_guarantee == Guarantee::ExactlyOnce;
        for &partition in partitions {
            let mut stores = self.engine.empty_stores();
            for store in self.engine.topology().store_names().to_vec() {
                let topic = self.engine.topology().changelog_topic(&store);
                let started = Instant::now();
                let settings = restore::restore_settings(
                    &self.config.endpoints.bootstrap_servers,
                    &topic,
                    read_committed,
                );
                self.health.set_not_ready(format!(
                    "restoring store {store} of partition {partition} from {topic}"
                ));
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let reading = tokio::task::spawn_blocking({
                    let stop = Arc::clone(&stop);
                    move || restore::read_partition(&settings, &topic, partition, &stop)
                });
                let records = tokio::select! {
                    records = reading => records.map_err(|e| RunnerError::Catalog(e.to_string()))??,
                    _ = shutdown.as_mut() => {
                        stop.store(true, Ordering::Relaxed);
                        return Err(RunnerError::ShutdownRequested);
                    }
                };
                let count = records.len();
                let older = self
                    .engine
                    .unknown_store_writers(records.iter().filter_map(|(_, v)| v.as_deref()));
                for id in older {
                    self.writers
                        .ensure(&mut self.engine, id, &self.health, shutdown)
                        .await?;
                }
                let (mut converted, mut unreadable) = (0u64, 0u64);
                for (key, value) in records {
                    match self.engine.restore(&mut stores, &store, key.clone(), value) {
                        Restored::AsWritten => {}
                        Restored::Converted => converted += 1,
                        Restored::Unreadable(reason) => {
                            unreadable += 1;
                            warn!(%store, partition, %key, %reason, "changelog value kept unconverted: reading it will fail");
                        }
                    }
                }
                let seconds = started.elapsed().as_secs_f64();
                let metrics = &self.shared.metrics;
                metrics
                    .restore_seconds
                    .with_label_values(&[store.as_str()])
                    .set(seconds);
                metrics
                    .restored_records
                    .with_label_values(&[store.as_str()])
                    .inc_by(count as u64);
                metrics
                    .store_values_unreadable
                    .with_label_values(&[store.as_str()])
                    .inc_by(unreadable);
                info!(%store, partition, records = count, converted, unreadable, seconds, "store restored");
            }
            self.engine.assign(partition, stores);
        }
        self.report();
        Ok(())
    }
}

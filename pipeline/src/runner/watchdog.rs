//! Readiness when the loop itself is stuck. The loop sets readiness as it turns (at least
//! every 100 ms, on its wall-clock tick, idle or paused), so a loop that does not come back
//! — a processor call that blocks — could never say so. This task watches the loop's turns
//! from beside it and makes the instance not ready, with the reason, when none has come
//! for the stall timeout; the loop's next turn sets readiness again. Waits the loop knows
//! about (a restore, the registry, a transaction's commit) say their own reason, which this
//! leaves in place.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_telemetry::Health;
use tracing::warn;

use super::shared::Shared;

/// How often the turns are looked at.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Until dropped (the runner aborts it when its loop ends).
pub(crate) async fn watch_loop(shared: Arc<Shared>, health: Health, stall: Duration) {
    let mut seen = shared.loop_turns.load(Ordering::Relaxed);
    let mut since = Instant::now();
    let mut look = tokio::time::interval(LOOK_EVERY);
    loop {
        look.tick().await;
        let turns = shared.loop_turns.load(Ordering::Relaxed);
        if turns != seen {
            seen = turns;
            since = Instant::now();
            continue;
        }
        let waited = since.elapsed();
        if waited > stall && health.is_ready() {
            let why = format!(
                "the processing loop has not turned for {} s: a processor call (or a wait on the loop) has not returned",
                waited.as_secs()
            );
            warn!(why, "not ready");
            health.set_not_ready(why);
            shared.metrics.ready.set(0);
        }
    }
}

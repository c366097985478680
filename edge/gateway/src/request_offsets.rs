//! Which `downstream-request` offsets the gateway may commit: per partition, up to (not
//! including) the oldest request still pending, so a restarted gateway reads every switch it
//! had not finished again and sends it, instead of losing it with the process. Requests that
//! ended after a pending one are read again too, and passed over ([`crate::ended`]).

use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct RequestOffsets {
    /// The highest offset read, by partition.
    read: HashMap<i32, i64>,
    /// Where each pending request was read: request id -> (partition, offset).
    pending: HashMap<u64, (i32, i64)>,
}

impl RequestOffsets {
    /// A record of `downstream-request` was read (whatever became of it).
    pub fn read(&mut self, partition: i32, offset: i64) {
        let highest = self.read.entry(partition).or_insert(offset);
        *highest = (*highest).max(offset);
    }

    /// The record at (`partition`, `offset`) became pending request `request_id`.
    pub fn pending(&mut self, request_id: u64, partition: i32, offset: i64) {
        self.read(partition, offset);
        self.pending.insert(request_id, (partition, offset));
    }

    /// Forget the requests that are no longer pending.
    pub fn retain(&mut self, still_pending: impl Fn(u64) -> bool) {
        self.pending.retain(|id, _| still_pending(*id));
    }

    /// The position to commit for each partition read: the oldest pending request's offset,
    /// else the offset after the last one read. Sorted by partition.
    pub fn positions(&self) -> Vec<(i32, i64)> {
        let mut positions: Vec<(i32, i64)> = self
            .read
            .iter()
            .map(|(partition, highest)| {
                let oldest_pending = self
                    .pending
                    .values()
                    .filter(|(p, _)| p == partition)
                    .map(|(_, offset)| *offset)
                    .min();
                (*partition, oldest_pending.unwrap_or(highest + 1))
            })
            .collect();
        positions.sort_unstable();
        positions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_stop_at_the_oldest_pending_request_of_each_partition() {
        let mut o = RequestOffsets::default();
        o.pending(10, 0, 4);
        o.read(0, 5); // unreadable or a duplicate: ended at once
        o.pending(11, 0, 6);
        o.pending(20, 1, 9);
        assert_eq!(o.positions(), [(0, 4), (1, 9)]);
        // Request 10 acked: partition 0 may commit up to request 11.
        o.retain(|id| id != 10);
        assert_eq!(o.positions(), [(0, 6), (1, 9)]);
        // Everything ended: past the last record read.
        o.retain(|_| false);
        assert_eq!(o.positions(), [(0, 7), (1, 10)]);
    }
}

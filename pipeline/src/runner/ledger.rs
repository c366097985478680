//! What has been processed, what is still in flight, and what may be committed.
//!
//! Every input record a task handles, and every punctuation that sends something, opens an
//! *entry* in its task's queue, in processing order. Each record produced for the entry
//! (outputs, changelog and dead-letter records) is counted on it until the broker
//! acknowledges it. Entries complete in any order, but the committable offset of an input
//! partition only moves over a completed *prefix* of its task's queue: an offset is
//! committable when every record derived from it, and from everything the task did before
//! it (punctuations included), is acknowledged.
//!
//! The ledger is pure bookkeeping (no Kafka): the runner opens entries and counts sends, the
//! producer's delivery callback acknowledges, the rebalance callback waits for a task's
//! entries before it commits, and the commit callback confirms offsets.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// Identifies an entry: its task and its sequence number. Travels through librdkafka as a
/// delivery opaque (`usize`), so it costs no allocation per record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    pub partition: i32,
    pub seq: u64,
}

const SEQ_BITS: u32 = 40;

impl Token {
    pub fn to_opaque(self) -> usize {
        ((self.partition as u64) << SEQ_BITS | (self.seq & ((1 << SEQ_BITS) - 1))) as usize
    }

    pub fn from_opaque(opaque: usize) -> Token {
        let raw = opaque as u64;
        Token {
            partition: (raw >> SEQ_BITS) as i32,
            seq: raw & ((1 << SEQ_BITS) - 1),
        }
    }
}

/// The input record behind an entry, kept until its outputs are acknowledged so that it can
/// be dead-lettered if one of them is refused for good. One is made for every input that
/// produces, so it costs one allocation: the topic's name is shared, the key and the value
/// share one buffer (`make bench`, processor: four allocations here, made on the loop and
/// freed on the thread that hears the broker, were 2-3% of grafana-projector's CPU).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SourceRecord {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    /// The key's bytes, then the value's.
    bytes: Box<[u8]>,
    key_len: Option<usize>,
    has_payload: bool,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl SourceRecord {
    pub fn new(
        topic: Arc<str>,
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Vec<(String, Option<Vec<u8>>)>,
    ) -> SourceRecord {
        let key_bytes = key.unwrap_or_default();
        let payload_bytes = payload.unwrap_or_default();
        let mut bytes = Vec::with_capacity(key_bytes.len() + payload_bytes.len());
        bytes.extend_from_slice(key_bytes);
        bytes.extend_from_slice(payload_bytes);
        SourceRecord {
            topic,
            partition,
            offset,
            timestamp_ms,
            bytes: bytes.into_boxed_slice(),
            key_len: key.map(<[u8]>::len),
            has_payload: payload.is_some(),
            headers,
        }
    }

    pub fn key(&self) -> Option<&[u8]> {
        self.key_len.map(|n| &self.bytes[..n])
    }

    pub fn payload(&self) -> Option<&[u8]> {
        self.has_payload
            .then(|| &self.bytes[self.key_len.unwrap_or(0)..])
    }
}

/// A record the broker (or the producer) refused for good.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Refused {
    pub token: Token,
    /// The refused record's own topic, key and value.
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub error: String,
    pub blame: Blame,
    /// The input behind the refused record's entry (filled in by [`Ledger::refused`]):
    /// kept with the refusal, since the entry may be forgotten before the runner gets to it.
    pub source: Option<SourceRecord>,
}

/// Whose fault a refusal is, as far as the runner can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blame {
    /// The producer refused this record before sending it (too large, unknown topic, ...).
    Record,
    /// The broker refused the batch the record was sent in: the record, or one sent with it.
    Batch,
    /// Exactly once: refused only because another refusal had doomed its transaction.
    Transaction,
}

#[derive(Debug)]
struct Entry {
    /// Input topic index and offset; `None` for a punctuation.
    input: Option<(usize, i64)>,
    /// Records not yet acknowledged, plus one while the runner is still sending.
    remaining: u32,
    /// Of `remaining`, records the broker refused, waiting for the runner to deal with them
    /// (not in flight any more).
    refused: u32,
    opened: Instant,
    source: Option<SourceRecord>,
}

#[derive(Debug, Default)]
struct TaskQueue {
    /// Sequence number of `entries[0]`; sequence numbers are contiguous.
    first_seq: u64,
    entries: VecDeque<Entry>,
}

/// Offsets of one input partition: the next to process, the next whose whole past is
/// acknowledged, the last asked to be committed, and the last the group confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Offsets {
    pub position: i64,
    pub committable: i64,
    pub requested: i64,
    pub confirmed: i64,
}

#[derive(Debug)]
pub(crate) struct Ledger {
    /// Input topics' names, shared with [`SourceRecord`]s.
    topics: Vec<Arc<str>>,
    tasks: HashMap<i32, TaskQueue>,
    inputs: HashMap<(usize, i32), Offsets>,
    records_in_flight: usize,
    bytes_in_flight: usize,
    refused: Vec<Refused>,
    /// The next sequence number of each task forgotten: a task that comes back continues
    /// from there, so a late acknowledgement for an entry of its past finds no entry.
    next_after_forget: HashMap<i32, u64>,
    /// Since when a commit asked for has not been confirmed (failing, or unanswered).
    unconfirmed_since: Option<Instant>,
}

impl Ledger {
    /// A ledger over these input topics (indexes into this list name them).
    pub fn new(topics: Vec<String>) -> Ledger {
        Ledger {
            topics: topics.iter().map(|t| Arc::from(t.as_str())).collect(),
            tasks: HashMap::new(),
            inputs: HashMap::new(),
            records_in_flight: 0,
            bytes_in_flight: 0,
            refused: Vec::new(),
            next_after_forget: HashMap::new(),
            unconfirmed_since: None,
        }
    }

    pub fn topic_index(&self, topic: &str) -> Option<usize> {
        self.topics.iter().position(|t| &**t == topic)
    }

    /// The index of input topic `topic`, and its name to share.
    pub fn input_topic(&self, topic: &str) -> Option<(usize, Arc<str>)> {
        let index = self.topic_index(topic)?;
        Some((index, Arc::clone(&self.topics[index])))
    }

    /// Open an entry for an input record (`input`: topic index and offset) or a punctuation
    /// (`None`) of task `partition`. Close it with [`Ledger::close`] once everything it
    /// produced has been counted with [`Ledger::sending`].
    pub fn open(
        &mut self,
        partition: i32,
        input: Option<(usize, i64)>,
        source: Option<SourceRecord>,
    ) -> Token {
        if let Some((topic, offset)) = input {
            let offsets = self.inputs.entry((topic, partition)).or_insert(Offsets {
                position: offset,
                committable: offset,
                requested: offset,
                confirmed: offset,
            });
            offsets.position = offset + 1;
        }
        let next_after_forget = &mut self.next_after_forget;
        let queue = self.tasks.entry(partition).or_insert_with(|| TaskQueue {
            first_seq: next_after_forget.remove(&partition).unwrap_or(0),
            entries: VecDeque::new(),
        });
        let seq = queue.first_seq + queue.entries.len() as u64;
        queue.entries.push_back(Entry {
            input,
            remaining: 1,
            refused: 0,
            opened: Instant::now(),
            source,
        });
        Token { partition, seq }
    }

    fn entry(&mut self, token: Token) -> Option<&mut Entry> {
        let queue = self.tasks.get_mut(&token.partition)?;
        let index = token.seq.checked_sub(queue.first_seq)?;
        queue.entries.get_mut(usize::try_from(index).ok()?)
    }

    /// A record of `bytes` is about to be handed to the producer for this entry.
    pub fn sending(&mut self, token: Token, bytes: usize) {
        if let Some(entry) = self.entry(token) {
            entry.remaining += 1;
            self.records_in_flight += 1;
            self.bytes_in_flight += bytes;
        }
    }

    /// Everything the entry produces has been counted.
    pub fn close(&mut self, token: Token) {
        if let Some(entry) = self.entry(token) {
            entry.remaining = entry.remaining.saturating_sub(1);
        }
        self.advance(token.partition);
    }

    /// The broker acknowledged a record of this entry.
    pub fn acknowledged(&mut self, token: Token, bytes: usize) {
        self.settle(token, bytes);
    }

    /// A record of this entry was purged (its transaction aborted): no longer in flight.
    pub fn purged(&mut self, token: Token, bytes: usize) {
        self.settle(token, bytes);
    }

    fn settle(&mut self, token: Token, bytes: usize) {
        self.records_in_flight = self.records_in_flight.saturating_sub(1);
        self.bytes_in_flight = self.bytes_in_flight.saturating_sub(bytes);
        if let Some(entry) = self.entry(token) {
            entry.remaining = entry.remaining.saturating_sub(1);
        }
        self.advance(token.partition);
    }

    /// A record of this entry was refused for good. The entry stays open (the record still
    /// counts on it) until the runner has dealt with the refusal and calls
    /// [`Ledger::close`] for it.
    pub fn refused(&mut self, mut refused: Refused, bytes: usize) {
        self.records_in_flight = self.records_in_flight.saturating_sub(1);
        self.bytes_in_flight = self.bytes_in_flight.saturating_sub(bytes);
        if let Some(entry) = self.entry(refused.token) {
            entry.refused += 1;
            refused.source = entry.source.clone();
            self.refused.push(refused);
        }
    }

    /// The runner dealt with a refused record of this entry (its input dead-lettered).
    pub fn refusal_settled(&mut self, token: Token) {
        if let Some(entry) = self.entry(token) {
            entry.refused = entry.refused.saturating_sub(1);
        }
        self.close(token);
    }

    /// Refusals the runner has not dealt with yet.
    pub fn take_refused(&mut self) -> Vec<Refused> {
        std::mem::take(&mut self.refused)
    }

    /// Pop completed entries from the front of a task's queue, moving committable offsets.
    fn advance(&mut self, partition: i32) {
        let Some(queue) = self.tasks.get_mut(&partition) else {
            return;
        };
        while queue.entries.front().is_some_and(|e| e.remaining == 0) {
            if let Some(Entry {
                input: Some((topic, offset)),
                ..
            }) = queue.entries.pop_front()
            {
                if let Some(offsets) = self.inputs.get_mut(&(topic, partition)) {
                    offsets.committable = offsets.committable.max(offset + 1);
                }
            }
            queue.first_seq += 1;
        }
    }

    /// Offsets that may be committed and were not asked for yet, for the tasks `wanted`
    /// selects; they are marked as asked for.
    pub fn take_committable(&mut self, wanted: impl Fn(i32) -> bool) -> Vec<(String, i32, i64)> {
        self.take(wanted, |o| o.requested)
    }

    /// Offsets that may be committed and are not confirmed, asked for or not (a commit that
    /// must land before it returns, e.g. on a revocation, cannot count on one in flight).
    pub fn take_unconfirmed(&mut self, wanted: impl Fn(i32) -> bool) -> Vec<(String, i32, i64)> {
        self.take(wanted, |o| o.confirmed)
    }

    fn take(
        &mut self,
        wanted: impl Fn(i32) -> bool,
        since: impl Fn(&Offsets) -> i64,
    ) -> Vec<(String, i32, i64)> {
        let mut out = Vec::new();
        for ((topic, partition), offsets) in self.inputs.iter_mut() {
            if wanted(*partition) && offsets.committable > since(offsets) {
                offsets.requested = offsets.committable;
                out.push((
                    self.topics[*topic].to_string(),
                    *partition,
                    offsets.committable,
                ));
            }
        }
        out.sort();
        if !out.is_empty() && self.unconfirmed_since.is_none() {
            self.unconfirmed_since = Some(Instant::now());
        }
        out
    }

    /// Since when a commit asked for has waited for its confirmation (its failures are
    /// asked again; nothing confirmed them meanwhile), if one waits.
    pub fn unconfirmed_since(&self) -> Option<Instant> {
        self.unconfirmed_since
    }

    /// Next offsets to process, for the tasks `wanted` selects (a transaction's offsets:
    /// the transaction itself holds every record they produced).
    pub fn positions(&self, wanted: impl Fn(i32) -> bool) -> Vec<(String, i32, i64)> {
        let mut out: Vec<_> = self
            .inputs
            .iter()
            .filter(|((_, p), o)| wanted(*p) && o.position > o.confirmed)
            .map(|((t, p), o)| (self.topics[*t].to_string(), *p, o.position))
            .collect();
        out.sort();
        out
    }

    /// The group confirmed a commit of `offset` for an input partition.
    pub fn confirmed(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(index) = self.topic_index(topic) {
            if let Some(offsets) = self.inputs.get_mut(&(index, partition)) {
                offsets.confirmed = offsets.confirmed.max(offset);
                offsets.requested = offsets.requested.max(offset);
                offsets.committable = offsets.committable.max(offset);
            }
        }
        self.settle_unconfirmed();
    }

    /// Nothing committable left unconfirmed: no commit waits.
    fn settle_unconfirmed(&mut self) {
        if self.inputs.values().all(|o| o.committable <= o.confirmed) {
            self.unconfirmed_since = None;
        }
    }

    /// A commit asked for failed: ask again next time.
    pub fn commit_failed(&mut self, topic: &str, partition: i32) {
        if let Some(index) = self.topic_index(topic) {
            if let Some(offsets) = self.inputs.get_mut(&(index, partition)) {
                offsets.requested = offsets.confirmed;
            }
        }
    }

    pub fn offsets(&self, topic: &str, partition: i32) -> Option<Offsets> {
        let index = self.topic_index(topic)?;
        self.inputs.get(&(index, partition)).copied()
    }

    /// Input records processed whose offsets the group has not confirmed: what a crash now
    /// would process again.
    pub fn uncommitted(&self) -> i64 {
        self.inputs.values().map(|o| o.position - o.confirmed).sum()
    }

    pub fn records_in_flight(&self) -> usize {
        self.records_in_flight
    }

    pub fn bytes_in_flight(&self) -> usize {
        self.bytes_in_flight
    }

    /// Entries not yet complete for the tasks `wanted` selects.
    pub fn open_entries(&self, wanted: impl Fn(i32) -> bool) -> usize {
        self.tasks
            .iter()
            .filter(|(p, _)| wanted(**p))
            .map(|(_, q)| q.entries.len())
            .sum()
    }

    /// Entries of the tasks `wanted` selects that still wait for the broker (or for the
    /// runner to finish sending): what a revocation waits for. An entry held open only by a
    /// refusal the runner has not dealt with yet is not waiting for anyone's answer.
    pub fn awaiting_broker(&self, wanted: impl Fn(i32) -> bool) -> usize {
        self.tasks
            .iter()
            .filter(|(p, _)| wanted(**p))
            .flat_map(|(_, q)| q.entries.iter())
            .filter(|e| e.remaining > e.refused)
            .count()
    }

    /// When the oldest incomplete entry was opened.
    pub fn oldest_open(&self) -> Option<Instant> {
        self.tasks
            .values()
            .filter_map(|q| q.entries.front().map(|e| e.opened))
            .min()
    }

    /// Forget every task (an aborted transaction: nothing processed since the last commit
    /// may be committed now). Refusals not dealt with yet are kept, with their inputs: the
    /// runner still has to learn from them which input to dead-letter.
    pub fn forget_all(&mut self) {
        let refused = std::mem::take(&mut self.refused);
        let partitions: std::collections::BTreeSet<i32> = self
            .tasks
            .keys()
            .copied()
            .chain(self.inputs.keys().map(|(_, p)| *p))
            .collect();
        for partition in partitions {
            self.forget(partition);
        }
        self.refused = refused;
    }

    /// Forget a task: its partitions belong to another instance now.
    pub fn forget(&mut self, partition: i32) {
        if let Some(queue) = self.tasks.remove(&partition) {
            self.next_after_forget
                .insert(partition, queue.first_seq + queue.entries.len() as u64);
        }
        self.inputs.retain(|(_, p), _| *p != partition);
        self.refused.retain(|r| r.token.partition != partition);
        self.settle_unconfirmed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_asked_for_waits_until_confirmed_through_failures_and_not_after_a_revocation() {
        let mut l = ledger();
        assert_eq!(l.unconfirmed_since(), None);
        let t = l.open(0, Some((0, 4)), None);
        l.close(t);
        assert_eq!(l.take_committable(|_| true), vec![("a".into(), 0, 5)]);
        let asked = l.unconfirmed_since().expect("a commit waits");
        l.commit_failed("a", 0);
        assert_eq!(l.take_committable(|_| true).len(), 1, "asked again");
        assert_eq!(
            l.unconfirmed_since(),
            Some(asked),
            "waiting since the first ask"
        );
        l.confirmed("a", 0, 5);
        assert_eq!(l.unconfirmed_since(), None);
        // Asked, then the partition revoked: nothing of it waits any more.
        let t = l.open(0, Some((0, 5)), None);
        l.close(t);
        assert_eq!(l.take_committable(|_| true).len(), 1);
        l.forget(0);
        assert_eq!(l.unconfirmed_since(), None);
    }

    fn ledger() -> Ledger {
        Ledger::new(vec!["a".into(), "b".into()])
    }

    /// An output of entry `token` the broker refused (the ledger fills in its source).
    fn refused_output(token: Token) -> Refused {
        Refused {
            token,
            topic: "out".into(),
            key: None,
            payload: None,
            error: "too large".into(),
            blame: Blame::Batch,
            source: None,
        }
    }

    #[test]
    fn tokens_survive_the_opaque_round_trip() {
        for token in [
            Token {
                partition: 0,
                seq: 0,
            },
            Token {
                partition: 11,
                seq: 123_456_789,
            },
            Token {
                partition: 65_535,
                seq: (1 << 40) - 1,
            },
        ] {
            assert_eq!(Token::from_opaque(token.to_opaque()), token);
        }
    }

    #[test]
    fn an_offset_is_committable_only_when_everything_before_it_is_acknowledged() {
        let mut l = ledger();
        let first = l.open(0, Some((0, 10)), None);
        l.sending(first, 100);
        l.sending(first, 50);
        l.close(first);
        let second = l.open(0, Some((0, 11)), None);
        l.sending(second, 10);
        l.close(second);
        assert_eq!(l.records_in_flight(), 3);
        assert_eq!(l.bytes_in_flight(), 160);
        // The second input's output comes back first: nothing may be committed yet.
        l.acknowledged(second, 10);
        assert_eq!(l.take_committable(|_| true), vec![]);
        l.acknowledged(first, 100);
        assert_eq!(l.take_committable(|_| true), vec![]);
        l.acknowledged(first, 50);
        assert_eq!(l.take_committable(|_| true), vec![("a".into(), 0, 12)]);
        // Asked for once only.
        assert_eq!(l.take_committable(|_| true), vec![]);
        assert_eq!((l.records_in_flight(), l.bytes_in_flight()), (0, 0));
    }

    #[test]
    fn a_pending_punctuation_holds_back_later_inputs_of_its_task_only() {
        let mut l = ledger();
        let tick = l.open(0, None, None);
        l.sending(tick, 1);
        l.close(tick);
        let on_0 = l.open(0, Some((1, 5)), None);
        l.close(on_0);
        let on_1 = l.open(1, Some((1, 7)), None);
        l.close(on_1);
        assert_eq!(l.take_committable(|_| true), vec![("b".into(), 1, 8)]);
        l.acknowledged(tick, 1);
        assert_eq!(l.take_committable(|_| true), vec![("b".into(), 0, 6)]);
    }

    #[test]
    fn an_acknowledgement_before_close_does_not_complete_the_entry() {
        let mut l = ledger();
        let t = l.open(3, Some((0, 0)), None);
        l.sending(t, 1);
        l.acknowledged(t, 1);
        assert_eq!(l.take_committable(|_| true), vec![]);
        l.close(t);
        assert_eq!(l.take_committable(|_| true), vec![("a".into(), 3, 1)]);
    }

    #[test]
    fn a_source_record_gives_back_its_key_and_value_absent_empty_or_present() {
        for (key, payload) in [
            (None, None),
            (Some(&b""[..]), Some(&b""[..])),
            (Some(&b"key"[..]), None),
            (None, Some(&b"value"[..])),
            (Some(&b"key"[..]), Some(&b"value"[..])),
        ] {
            let source = SourceRecord::new("a".into(), 0, 1, None, key, payload, vec![]);
            assert_eq!((source.key(), source.payload()), (key, payload));
        }
    }

    #[test]
    fn a_refused_record_keeps_its_entry_open_until_dealt_with() {
        let mut l = ledger();
        let source = SourceRecord::new("a".into(), 0, 4, Some(1), Some(b"k"), Some(b"v"), vec![]);
        let t = l.open(0, Some((0, 4)), Some(source.clone()));
        l.sending(t, 9);
        l.close(t);
        l.refused(refused_output(t), 9);
        assert_eq!(l.records_in_flight(), 0);
        assert_eq!(l.take_committable(|_| true), vec![]);
        let refused = l.take_refused();
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].source, Some(source));
        // Held open only by the refusal: nothing of it waits for the broker (a revocation
        // does not wait for it).
        assert_eq!(
            (l.open_entries(|_| true), l.awaiting_broker(|_| true)),
            (1, 0)
        );
        // The runner dead-letters the input: one more record on the same entry, then the
        // refused one is settled.
        l.sending(t, 1);
        assert_eq!(
            l.awaiting_broker(|_| true),
            1,
            "the dead letter is in flight"
        );
        l.refusal_settled(t);
        assert_eq!(l.take_committable(|_| true), vec![]);
        l.acknowledged(t, 1);
        assert_eq!(l.take_committable(|_| true), vec![("a".into(), 0, 5)]);
    }

    #[test]
    fn uncommitted_counts_processed_records_until_the_group_confirms() {
        let mut l = ledger();
        for offset in 100..110 {
            let t = l.open(0, Some((0, offset)), None);
            l.close(t);
        }
        assert_eq!(l.uncommitted(), 10);
        assert_eq!(l.take_committable(|_| true), vec![("a".into(), 0, 110)]);
        assert_eq!(l.uncommitted(), 10, "asked for, not yet confirmed");
        l.confirmed("a", 0, 110);
        assert_eq!(l.uncommitted(), 0);
        // A failed commit is asked for again.
        let t = l.open(0, Some((0, 110)), None);
        l.close(t);
        assert_eq!(l.take_committable(|_| true).len(), 1);
        l.commit_failed("a", 0);
        assert_eq!(l.take_committable(|_| true), vec![("a".into(), 0, 111)]);
        // Asked for but unconfirmed: a commit that must land includes it again.
        assert_eq!(l.take_committable(|_| true), vec![]);
        assert_eq!(l.take_unconfirmed(|_| true), vec![("a".into(), 0, 111)]);
    }

    #[test]
    fn forgetting_a_task_drops_its_entries_and_offsets() {
        let mut l = ledger();
        let t = l.open(2, Some((0, 1)), None);
        l.sending(t, 1);
        l.close(t);
        assert_eq!(l.open_entries(|p| p == 2), 1);
        assert!(l.oldest_open().is_some());
        l.forget(2);
        assert_eq!(l.open_entries(|_| true), 0);
        assert_eq!(l.offsets("a", 2), None);
        // A late acknowledgement for the forgotten task is harmless.
        l.acknowledged(t, 1);
        assert_eq!(l.take_committable(|_| true), vec![]);
    }

    /// An aborted transaction forgets every task; a refusal heard while its commit flushed
    /// must survive that with its input, or the runner, going back, would process the
    /// refused input again, be refused again, and go back again without end.
    #[test]
    fn forgetting_every_task_keeps_the_refusals_with_their_inputs() {
        let mut l = ledger();
        let source = SourceRecord::new("a".into(), 1, 7, None, None, Some(b"v"), vec![]);
        let t = l.open(1, Some((0, 7)), Some(source.clone()));
        l.sending(t, 3);
        l.close(t);
        l.refused(refused_output(t), 3);
        l.forget_all();
        assert_eq!(l.open_entries(|_| true), 0);
        assert_eq!(l.positions(|_| true), vec![], "nothing left to commit");
        let refused = l.take_refused();
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].source, Some(source));
    }

    /// Issue 26 (3): sequence numbers restarted at 0 after `forget`, so when a partition
    /// came back while the old owner's acknowledgements were still arriving, a late one
    /// completed the new entry with the same token, and its offset became committable
    /// before its own output was acknowledged.
    #[test]
    fn a_late_acknowledgement_from_before_a_forget_does_not_complete_a_new_entry() {
        let mut l = ledger();
        let old = l.open(2, Some((0, 1)), None);
        l.sending(old, 1);
        l.close(old);
        l.forget(2);
        // The partition comes back; its next input is processed, its output in flight.
        let new = l.open(2, Some((0, 1)), None);
        l.sending(new, 1);
        l.close(new);
        assert_ne!(new, old, "a token is never reused");
        l.acknowledged(old, 1);
        assert_eq!(
            l.take_committable(|_| true),
            vec![],
            "nothing committable before the new output is acknowledged"
        );
        l.acknowledged(new, 1);
        assert_eq!(l.take_committable(|_| true), vec![("a".into(), 2, 2)]);
    }

    #[test]
    fn transaction_positions_cover_processed_records_not_yet_confirmed() {
        let mut l = ledger();
        let t = l.open(0, Some((1, 20)), None);
        l.sending(t, 1);
        l.close(t);
        assert_eq!(l.positions(|_| true), vec![("b".into(), 0, 21)]);
        l.confirmed("b", 0, 21);
        assert_eq!(l.positions(|_| true), vec![]);
    }
}

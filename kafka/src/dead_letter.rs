//! Header names on dead-lettered records: Kafka Streams' (KIP-1034) where it has one, so
//! tools made for Kafka Streams' dead letters read ours, and `switchyard.dlq.*` for the
//! rest. The input record's own headers come first, unchanged.

/// Where the input was: topic, partition, offset (KIP-1034).
pub const TOPIC: &str = "__streams.errors.topic";
pub const PARTITION: &str = "__streams.errors.partition";
pub const OFFSET: &str = "__streams.errors.offset";
/// The error's kind, `switchyard.<reason>` (KIP-1034 puts the exception class here).
pub const EXCEPTION: &str = "__streams.errors.exception";
/// The error message (KIP-1034).
pub const ERROR: &str = "__streams.errors.message";
/// The input's record timestamp (ms), the processor's name, and the reason
/// (`undecodable`, `failed`, `refused`, `invalid`) as counted in metrics.
pub const TIMESTAMP: &str = "switchyard.dlq.timestamp";
pub const PROCESSOR: &str = "switchyard.dlq.processor";
pub const REASON: &str = "switchyard.dlq.reason";

/// Whether a header was added by dead-lettering (so a replay leaves it out).
pub fn is_dead_letter_header(name: &str) -> bool {
    name.starts_with("__streams.errors.") || name.starts_with("switchyard.dlq.")
}

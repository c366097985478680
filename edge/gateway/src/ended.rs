//! Switch requests that ended before a restart. The gateway commits `downstream-request`
//! only up to its oldest pending request ([`crate::request_offsets`]), so a restarted
//! instance reads again every request after that one, finished or not. How each ended is
//! in `downlink-delivery` (`ACKED`, `UNDELIVERABLE`, written by whichever instance held the
//! modem) and, first, in `carrier-switch-ack`: the gateway writes the SIM's answer there
//! before it ends the request, so a crash between the two leaves only the answer. Both,
//! read from the time of the oldest request to be read again, say which of them to pass
//! over, so a SIM that switched is not switched again.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use switchyard_kafka::clients;
use switchyard_protocol::json::parse_request_id;
use switchyard_registry_client::RecordDecoder;
use switchyard_schemas::records::{CarrierSwitchAck, DeliveryEvent, DownlinkDelivery};
use tracing::warn;

use crate::uplink::ACK_TOPIC;
use crate::{DELIVERY_TOPIC, REQUEST_TOPIC};

const CLOCK_MARGIN_MS: i64 = 60_000;

/// The decoders of the two topics that say a request ended.
pub struct EndDecoders {
    pub delivery: RecordDecoder,
    pub ack: RecordDecoder,
}

/// The requests `group` will read again that have already ended, by request id and modem,
/// and how many records saying how requests ended could not be read (skipped: a request
/// only they ended would be sent again).
#[derive(Debug, Default)]
pub struct Ended {
    /// An answer ends a request only when its modem gave it, as on the running gateway
    /// ([`crate::downlink::Downlink::answered`]): another modem naming the request does not.
    pub requests: HashSet<(u64, String)>,
    pub unreadable: u64,
}

/// What [`Ended`] says, read from the log. `timeout` bounds each metadata request; the
/// reading itself takes as long as it takes.
pub async fn ended_requests(
    bootstrap: &str,
    group: &str,
    decoders: &mut EndDecoders,
    timeout: Duration,
) -> anyhow::Result<Ended> {
    let reader: BaseConsumer = clients::consumer_config(bootstrap)
        .set("group.id", group)
        .set("fetch.wait.max.ms", "50")
        // An offset that retention removed meanwhile: read on from the oldest left, never
        // from the end (the last record of each partition must be read to finish).
        .set("auto.offset.reset", "earliest")
        .create()
        .context("creating the reader of ended requests")?;
    let Some(oldest_ms) = oldest_to_read_again(&reader, timeout).await? else {
        return Ok(Ended::default());
    };
    // A minute earlier: the API's and the gateways' clocks stamp the topics.
    let since_ms = oldest_ms.saturating_sub(CLOCK_MARGIN_MS);
    let mut from = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for topic in [DELIVERY_TOPIC, ACK_TOPIC] {
        for (partition, (start, end)) in since(&reader, topic, since_ms, timeout)? {
            from.add_partition_offset(topic, partition, Offset::Offset(start))?;
            ends.insert((topic, partition), end);
        }
    }
    let mut ended = Ended::default();
    if ends.is_empty() {
        return Ok(ended);
    }
    reader.assign(&from)?;
    while !ends.is_empty() {
        // However long it takes; a shutdown raced against it ends it between records.
        tokio::task::yield_now().await;
        let Some(message) = reader.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.context("reading the ends of switch requests")?;
        let (partition, offset) = (message.partition(), message.offset());
        let topic = if message.topic() == ACK_TOPIC {
            ACK_TOPIC
        } else {
            DELIVERY_TOPIC
        };
        if ends
            .get(&(topic, partition))
            .is_some_and(|end| offset + 1 >= *end)
        {
            ends.remove(&(topic, partition));
        }
        let request_id = if topic == ACK_TOPIC {
            // A SIM's answer, ACK or NACK, ends its request; a v1 ACK names none.
            decoders
                .ack
                .decode::<CarrierSwitchAck>(message.payload())
                .await
                .map(|ack| ack.request_id.map(|id| (id, ack.modem_id)))
        } else {
            decoders
                .delivery
                .decode::<DownlinkDelivery>(message.payload())
                .await
                .map(|delivery| {
                    matches!(
                        delivery.event,
                        DeliveryEvent::Acked | DeliveryEvent::Undeliverable
                    )
                    .then_some((delivery.request_id, delivery.modem_id))
                })
        };
        match request_id {
            Ok(Some((id, modem_id))) => {
                if let Ok(id) = parse_request_id(&id) {
                    ended.requests.insert((id, modem_id));
                }
            }
            Ok(None) => {}
            Err(e) => {
                ended.unreadable += 1;
                warn!(topic, partition, offset, error = %e, "unreadable record skipped");
            }
        }
    }
    Ok(ended)
}

/// For each partition of `topic` with records at or after `since_ms`: the offset of the
/// first of them and the partition's end as of now.
fn since(
    reader: &BaseConsumer,
    topic: &str,
    since_ms: i64,
    timeout: Duration,
) -> anyhow::Result<Vec<(i32, (i64, i64))>> {
    let partitions = switchyard_kafka::partitions(reader, topic, timeout)?;
    let mut at_time = TopicPartitionList::new();
    for p in &partitions {
        at_time.add_partition_offset(topic, *p, Offset::Offset(since_ms))?;
    }
    let starts = switchyard_kafka::retry_passing(timeout, |left| {
        reader.offsets_for_times(at_time.clone(), left)
    })
    .with_context(|| format!("finding {topic}'s records since the oldest request"))?;
    let mut out = Vec::new();
    for element in starts.elements() {
        let p = element.partition();
        let (_, high) = switchyard_kafka::watermarks(reader, topic, p, timeout)?;
        if let Offset::Offset(start) = element.offset() {
            if start < high {
                out.push((p, (start, high)));
            }
        }
    }
    Ok(out)
}

/// The time (ms) of the oldest `downstream-request` record the group will read again: the
/// one at its committed offset (or the first, with none committed), over partitions with
/// records left to read. None when there is nothing to read again.
async fn oldest_to_read_again(
    reader: &BaseConsumer,
    timeout: Duration,
) -> anyhow::Result<Option<i64>> {
    let partitions = switchyard_kafka::partitions(reader, REQUEST_TOPIC, timeout)?;
    let mut all = TopicPartitionList::new();
    for p in &partitions {
        all.add_partition(REQUEST_TOPIC, *p);
    }
    let committed = switchyard_kafka::retry_passing(timeout, |left| {
        reader.committed_offsets(all.clone(), left)
    })
    .context("reading the gateway's committed request offsets")?;
    let mut first_left = TopicPartitionList::new();
    let mut left = 0;
    for element in committed.elements() {
        let p = element.partition();
        let (low, high) = switchyard_kafka::watermarks(reader, REQUEST_TOPIC, p, timeout)?;
        let from = match element.offset() {
            Offset::Offset(o) => o.max(low),
            _ => low,
        };
        if from < high {
            first_left.add_partition_offset(REQUEST_TOPIC, p, Offset::Offset(from))?;
            left += 1;
        }
    }
    if left == 0 {
        return Ok(None);
    }
    reader.assign(&first_left)?;
    let mut oldest: Option<i64> = None;
    let mut seen = HashSet::new();
    while seen.len() < left {
        tokio::task::yield_now().await;
        let Some(message) = reader.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.context("reading downstream-request")?;
        if seen.insert(message.partition()) {
            let at = message.timestamp().to_millis().unwrap_or(0);
            oldest = Some(oldest.map_or(at, |o| o.min(at)));
        }
    }
    Ok(oldest)
}

//! Switch requests that ended before a restart. The gateway commits `downstream-request`
//! only up to its oldest pending request ([`crate::request_offsets`]), so a restarted
//! instance reads again every request after that one, finished or not. How each ended is
//! in `downlink-delivery` (`ACKED`, `UNDELIVERABLE`, written by whichever instance held the
//! modem): read from the time of the oldest request to be read again, it says which of them
//! to pass over, so a SIM that switched is not switched again.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use switchyard_kafka::clients;
use switchyard_protocol::json::parse_request_id;
use switchyard_registry_client::RecordDecoder;
use switchyard_schemas::records::{DeliveryEvent, DownlinkDelivery};
use tracing::warn;

use crate::{DELIVERY_TOPIC, REQUEST_TOPIC};

const CLOCK_MARGIN_MS: i64 = 60_000;

/// The ids of the requests that `group` will read again and that have already ended.
/// `timeout` bounds each metadata request; the reading itself takes as long as it takes.
pub async fn ended_requests(
    bootstrap: &str,
    group: &str,
    delivery_decoder: &mut RecordDecoder,
    timeout: Duration,
) -> anyhow::Result<HashSet<u64>> {
    let reader: BaseConsumer = clients::consumer_config(bootstrap)
        .set("group.id", group)
        .set("fetch.wait.max.ms", "50")
        .create()
        .context("creating the reader of ended requests")?;
    let Some(oldest_ms) = oldest_to_read_again(&reader, timeout).await? else {
        return Ok(HashSet::new());
    };
    // A minute earlier: the API's and the gateways' clocks stamp the two topics.
    let since_ms = oldest_ms.saturating_sub(CLOCK_MARGIN_MS);
    // Where downlink-delivery reaches `since_ms`, to its end as of now.
    let partitions = switchyard_kafka::partitions(&reader, DELIVERY_TOPIC, timeout)?;
    let mut at_time = TopicPartitionList::new();
    for p in &partitions {
        at_time.add_partition_offset(DELIVERY_TOPIC, *p, Offset::Offset(since_ms))?;
    }
    let starts = switchyard_kafka::retry_passing(timeout, |left| {
        reader.offsets_for_times(at_time.clone(), left)
    })
    .context("finding downlink-delivery's records since the oldest request")?;
    let mut from = TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for element in starts.elements() {
        let p = element.partition();
        let (_, high) = switchyard_kafka::watermarks(&reader, DELIVERY_TOPIC, p, timeout)?;
        if let Offset::Offset(start) = element.offset() {
            if start < high {
                from.add_partition_offset(DELIVERY_TOPIC, p, Offset::Offset(start))?;
                ends.insert(p, high);
            }
        }
    }
    let mut ended = HashSet::new();
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
        let message = message.context("reading downlink-delivery")?;
        let (partition, offset) = (message.partition(), message.offset());
        if ends.get(&partition).is_some_and(|end| offset + 1 >= *end) {
            ends.remove(&partition);
        }
        match delivery_decoder
            .decode::<DownlinkDelivery>(message.payload())
            .await
        {
            Ok(delivery)
                if matches!(
                    delivery.event,
                    DeliveryEvent::Acked | DeliveryEvent::Undeliverable
                ) =>
            {
                if let Ok(id) = parse_request_id(&delivery.request_id) {
                    ended.insert(id);
                }
            }
            Ok(_) => {}
            Err(e) => {
                warn!(partition, offset, error = %e, "unreadable delivery record skipped");
            }
        }
    }
    Ok(ended)
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

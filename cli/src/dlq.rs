//! `switchyard dlq list|replay PROCESSOR`: a processor's dead letters (`<processor>-dlq`),
//! and putting them back on the topics they came from once the cause is fixed.
//!
//! A replayed record is the input as it was (key, value, record timestamp, its own
//! headers), produced again to the topic named by its `__streams.errors.topic` header; the
//! dead-letter headers are left out. Replaying is at least once: run it twice and the
//! records are processed twice, so it prints where the next replay should start.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use switchyard_kafka::clients;
use switchyard_kafka::dead_letter as headers;

use crate::{Endpoints, Failure};

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Print each dead letter as a JSON line: where it came from, why, its key.
    List(DlqArgs),
    /// Produce each dead letter back to the topic it came from.
    Replay {
        #[command(flatten)]
        args: DlqArgs,
        /// Print what would be replayed, produce nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Args)]
pub struct DlqArgs {
    /// The processor (its dead-letter topic is `<processor>-dlq`).
    processor: String,
    /// Start at this offset of the dead-letter topic (each partition), not its beginning.
    #[arg(long)]
    from_offset: Option<i64>,
    /// Only dead letters with this reason (`undecodable`, `failed`, `refused`, `invalid`).
    #[arg(long)]
    reason: Option<String>,
}

/// One dead letter as read back.
struct DeadLetter {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    timestamp_ms: Option<i64>,
    /// Every header, in order.
    headers: Vec<(String, Vec<u8>)>,
}

impl DeadLetter {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

pub async fn run(endpoints: &Endpoints, command: DlqCommand) -> Result<(), Failure> {
    match command {
        DlqCommand::List(args) => {
            let (letters, _) = read(endpoints, &args)?;
            for d in &letters {
                crate::emit(json!({
                    "partition": d.partition,
                    "offset": d.offset,
                    "topic": d.header(headers::TOPIC),
                    "topic_partition": d.header(headers::PARTITION),
                    "topic_offset": d.header(headers::OFFSET),
                    "reason": d.header(headers::REASON),
                    "error": d.header(headers::ERROR),
                    "key": d.key.as_deref().map(String::from_utf8_lossy),
                    "timestamp_ms": d.timestamp_ms,
                }));
            }
            Ok(())
        }
        DlqCommand::Replay { args, dry_run } => replay(endpoints, &args, dry_run).await,
    }
}

async fn replay(endpoints: &Endpoints, args: &DlqArgs, dry_run: bool) -> Result<(), Failure> {
    let (letters, ends) = read(endpoints, args)?;
    let producer: FutureProducer = clients::producer_config(&endpoints.bootstrap_servers)
        .create()
        .context("creating the Kafka producer")?;
    let mut replayed: BTreeMap<String, usize> = BTreeMap::new();
    let mut skipped = 0usize;
    for d in &letters {
        let Some(topic) = d.header(headers::TOPIC) else {
            skipped += 1;
            eprintln!(
                "skipped: offset {} of partition {} has no {} header",
                d.offset,
                d.partition,
                headers::TOPIC
            );
            continue;
        };
        if !dry_run {
            let mut own = OwnedHeaders::new();
            for (k, v) in d
                .headers
                .iter()
                .filter(|(k, _)| !headers::is_dead_letter_header(k))
            {
                own = own.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
            let mut record = FutureRecord::<[u8], [u8]>::to(&topic).headers(own);
            if let Some(key) = &d.key {
                record = record.key(key.as_slice());
            }
            if let Some(payload) = &d.payload {
                record = record.payload(payload.as_slice());
            }
            if let Some(ts) = d.timestamp_ms {
                record = record.timestamp(ts);
            }
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| anyhow!("producing to {topic}: {e}"))?;
        }
        *replayed.entry(topic).or_default() += 1;
    }
    let verb = if dry_run { "would replay" } else { "replayed" };
    let total: usize = replayed.values().sum();
    let by_topic: Vec<String> = replayed.iter().map(|(t, n)| format!("{t}: {n}")).collect();
    crate::emit(format!(
        "{verb} {total} dead letter(s) ({}){}",
        if by_topic.is_empty() {
            "none".into()
        } else {
            by_topic.join(", ")
        },
        if skipped > 0 {
            format!("; {skipped} skipped")
        } else {
            String::new()
        }
    ));
    if !dry_run {
        if let Some(next) = ends.values().max() {
            crate::emit(format!(
                "next replay of newer dead letters: --from-offset {next}"
            ));
        }
    }
    Ok(())
}

/// Every dead letter of `<processor>-dlq` from the start (or `--from-offset`) to the end as
/// of now, with the reason filter applied; and each partition's end.
fn read(
    endpoints: &Endpoints,
    args: &DlqArgs,
) -> Result<(Vec<DeadLetter>, BTreeMap<i32, i64>), Failure> {
    let topic = format!("{}-dlq", args.processor);
    let consumer: BaseConsumer = clients::consumer_config(&endpoints.bootstrap_servers)
        .set("group.id", "switchyard-dlq")
        .create()
        .context("creating the Kafka consumer")?;
    let partitions = switchyard_kafka::partitions(&consumer, &topic, Duration::from_secs(10))
        .with_context(|| format!("broker {} unreachable", endpoints.bootstrap_servers))?;
    if partitions.is_empty() {
        return Err(Failure::BadInput(format!(
            "no topic {topic}: is {:?} a processor?",
            args.processor
        )));
    }
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let (low, high) =
            switchyard_kafka::watermarks(&consumer, &topic, p, Duration::from_secs(10))
                .context("reading the dead-letter topic's offsets")?;
        let start = args.from_offset.unwrap_or(low).max(low);
        ends.insert(p, high);
        if high > start {
            tpl.add_partition_offset(&topic, p, Offset::Offset(start))
                .context("assigning")?;
        }
    }
    let mut left: BTreeMap<i32, i64> = tpl
        .elements()
        .iter()
        .map(|e| (e.partition(), ends[&e.partition()]))
        .collect();
    let mut letters = Vec::new();
    if left.is_empty() {
        return Ok((letters, ends));
    }
    consumer.assign(&tpl).context("assigning")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !left.is_empty() {
        if std::time::Instant::now() > deadline {
            return Err(anyhow!("{topic} not read to its end within 60 s").into());
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = message.with_context(|| format!("reading {topic}"))?;
        let letter = DeadLetter {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            timestamp_ms: m.timestamp().to_millis(),
            headers: m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        };
        if left
            .get(&m.partition())
            .is_some_and(|end| m.offset() + 1 >= *end)
        {
            left.remove(&m.partition());
        }
        let wanted = args
            .reason
            .as_deref()
            .is_none_or(|r| letter.header(headers::REASON).as_deref() == Some(r));
        if wanted {
            letters.push(letter);
        }
    }
    Ok((letters, ends))
}

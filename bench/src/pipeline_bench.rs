//! Framework overhead: a pass-through processor (decode, resolve, encode, batch, commit after
//! acks) vs a hand-written rdkafka loop with the same delivery guarantee (acks=all,
//! idempotent producer, commit after every output of a batch is acknowledged) that copies
//! bytes without decoding. Both read the same input topic on the same broker; each is timed
//! from its first consumed record until all its outputs are on the broker.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard_kafka::clients;

use anyhow::{bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use switchyard_pipeline::{
    Context, ErrorPolicy, ProcessError, Processor, Record, RunnerConfig, Topology,
};
use switchyard_registry_client::RegistryClient;
use switchyard_schemas::records::{now_us, GrafanaReading};
use switchyard_schemas::{value_subject, Catalog, CATALOG_TOML};
use switchyard_testkit::{kafka, Broker, Registry};

use crate::Report;

const INPUT: &str = "bench-in";
const OUTPUT: &str = "bench-out";
/// The pass-through processor's topics, for the Kafka Streams comparison too.
pub(crate) const PASS_INPUT: &str = INPUT;
pub(crate) const PASS_OUTPUT: &str = OUTPUT;
const RAW_OUTPUT: &str = "bench-out-raw";
const BATCH: usize = 5000;

fn catalog() -> anyhow::Result<Catalog> {
    let extra = format!(
        r#"
[[topic]]
name = "{INPUT}"
role = "table"
key = "modem_id"
value_schema = "grafana-reading.avsc"
partitions = 3
cleanup_policy = "delete"
description = "bench input"

[[topic]]
name = "{OUTPUT}"
role = "table"
key = "modem_id"
value_schema = "grafana-reading.avsc"
partitions = 3
cleanup_policy = "delete"
description = "bench framework output"
"#
    );
    Ok(Catalog::parse(&format!("{CATALOG_TOML}{extra}"))?)
}

/// Copies each reading to the output, decoded and re-encoded.
struct PassThrough {
    name: String,
    first: Arc<Mutex<Option<Instant>>>,
}

impl Processor for PassThrough {
    fn topology(&self) -> Topology {
        Topology::new(self.name.clone())
            .input::<GrafanaReading>(INPUT)
            .output::<GrafanaReading>(OUTPUT)
            .on_error(ErrorPolicy::Stop)
            .on_undecodable(ErrorPolicy::Stop)
    }

    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        if let Ok(mut first) = self.first.lock() {
            first.get_or_insert_with(Instant::now);
        }
        let reading: GrafanaReading = record.value()?;
        ctx.send(OUTPUT, &reading.modem_id, &reading, record.timestamp_ms)
    }
}

/// The pass-through processor in a process of its own (`switchyard-bench serve-pass-through`),
/// on [`PASS_INPUT`] → [`PASS_OUTPUT`], as `group` (its topology's name), until SIGTERM.
pub(crate) async fn serve_pass_through(config: RunnerConfig, group: &str) -> anyhow::Result<()> {
    let processor = PassThrough {
        name: group.to_string(),
        first: Arc::default(),
    };
    switchyard_pipeline::run_until(
        processor,
        catalog()?,
        config,
        switchyard_telemetry::shutdown_signal(),
    )
    .await?;
    Ok(())
}

/// Write `records` to [`PASS_INPUT`] with its schema registered in `stack`'s registry.
pub(crate) fn produce_pass_input(
    stack: &switchyard_testkit::Stack,
    records: &[(String, GrafanaReading, i64)],
) -> anyhow::Result<()> {
    let catalog = catalog()?;
    let text = catalog.value_schema(INPUT).context("bench schema")?;
    let id = tokio::runtime::Runtime::new()?.block_on(
        RegistryClient::new(&stack.registry.url()).register(&value_subject(INPUT), text),
    )?;
    let schema = apache_avro::Schema::parse_str(text)?;
    let encoded = records
        .iter()
        .map(|(key, value, t)| {
            let payload = switchyard_pipeline::codec::encode(id, &schema, value)
                .map_err(anyhow::Error::msg)?;
            Ok((key.clone(), payload, *t))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    kafka::produce(&stack.broker.bootstrap(), INPUT, &encoded)
}

/// Records on every partition of `topic` (the sum of the high watermarks).
pub(crate) fn watermark_sum(probe: &BaseConsumer, topic: &str) -> anyhow::Result<i64> {
    Ok(switchyard_kafka::end_offset_total(
        probe,
        topic,
        Duration::from_secs(10),
    )?)
}

async fn wait_until_output(bootstrap: &str, topic: &str, target: i64) -> anyhow::Result<Instant> {
    let probe: BaseConsumer = clients::admin_config(bootstrap).create()?;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if watermark_sum(&probe, topic)? >= target {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("{topic} never reached {target} records");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How the raw loop's producer is set up: as the processor it is compared with produces.
#[derive(Clone, Copy)]
pub(crate) enum RawProducer {
    /// `clients::producer_config` (idempotent), lingering 5 ms: what a processor gets by
    /// default.
    Ordered,
    /// `clients::unordered_producer_config`, sending at once (linger 0): grafana-projector,
    /// whose outputs stand alone and whose topology lingers 0.
    Unordered,
}

impl RawProducer {
    fn linger_ms(self) -> u64 {
        match self {
            RawProducer::Ordered => 5,
            RawProducer::Unordered => 0,
        }
    }
}

/// The baseline: consume `input`, produce the same bytes to `output`, await the batch's
/// acks, commit; `first` gets the time the first record was consumed.
pub(crate) async fn raw_loop(
    bootstrap: String,
    group: String,
    (input, output): (&str, &str),
    records: usize,
    first: Arc<Mutex<Option<Instant>>>,
    producer_kind: RawProducer,
) -> anyhow::Result<()> {
    let consumer: StreamConsumer = clients::consumer_config(&bootstrap)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set(
            "fetch.wait.max.ms",
            switchyard_kafka::FETCH_WAIT_MS.to_string(),
        )
        .create()?;
    let producer: FutureProducer = match producer_kind {
        RawProducer::Ordered => clients::producer_config(&bootstrap),
        RawProducer::Unordered => clients::unordered_producer_config(&bootstrap),
    }
    .set("linger.ms", producer_kind.linger_ms().to_string())
    .create()?;
    consumer.subscribe(&[input])?;
    let mut done = 0;
    let mut pending = Vec::with_capacity(BATCH);
    let mut offsets = TopicPartitionList::new();
    while done < records {
        let m = consumer.recv().await?;
        if let Ok(mut f) = first.lock() {
            f.get_or_insert_with(Instant::now);
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(output);
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        if let Some(p) = m.payload() {
            record = record.payload(p);
        }
        if let Some(ts) = m.timestamp().to_millis() {
            record = record.timestamp(ts);
        }
        let future = loop {
            match producer.send_result(record) {
                Ok(f) => break f,
                Err((_, r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        pending.push(future);
        offsets.add_partition_offset(m.topic(), m.partition(), Offset::Offset(m.offset() + 1))?;
        done += 1;
        if pending.len() >= BATCH || done == records {
            for f in pending.drain(..) {
                f.await.context("delivery canceled")?.map_err(|(e, _)| e)?;
            }
            consumer.commit(&offsets, CommitMode::Sync)?;
            offsets = TopicPartitionList::new();
        }
    }
    Ok(())
}

pub async fn run(records: usize, rounds: usize) -> anyhow::Result<Report> {
    let broker = Broker::start()?;
    let registry = Registry::start(&broker, "registry")?;
    let bootstrap = broker.bootstrap();
    let catalog = catalog()?;

    let admin: AdminClient<DefaultClientContext> = clients::admin_config(&bootstrap).create()?;
    let topics = [
        NewTopic::new(INPUT, 3, TopicReplication::Fixed(1)),
        NewTopic::new(OUTPUT, 3, TopicReplication::Fixed(1)),
        NewTopic::new(RAW_OUTPUT, 3, TopicReplication::Fixed(1)),
    ];
    for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    let schema_text = catalog.value_schema(INPUT).context("bench schema")?;
    let id = RegistryClient::new(&registry.url())
        .register(&value_subject(INPUT), schema_text)
        .await?;
    let schema = apache_avro::Schema::parse_str(schema_text)?;

    eprintln!("producing {records} input records");
    // Record times within the last hour: times years old would have the broker's 7-day
    // retention delete whole segments as soon as they roll, under the rounds' feet.
    let first_ms = now_us() / 1000 - 3_600_000;
    let input: Vec<(String, Vec<u8>, i64)> = (0..records)
        .map(|i| {
            let modem = format!("{}", 356_938_035_000_000u64 + (i % 500) as u64);
            let reading = GrafanaReading {
                modem_id: modem.clone(),
                device_id: (i % 3) as i64 + 1,
                value: i as i32,
            };
            let payload = switchyard_pipeline::codec::encode(id, &schema, &reading)
                .map_err(anyhow::Error::msg)?;
            Ok((modem, payload, first_ms + i as i64))
        })
        .collect::<anyhow::Result<_>>()?;
    let produce_started = Instant::now();
    kafka::produce(&bootstrap, INPUT, &input)?;
    let produce_rate = records as f64 / produce_started.elapsed().as_secs_f64();

    let probe: BaseConsumer = clients::admin_config(&bootstrap).create()?;
    let mut raw_rates = Vec::new();
    let mut framework_rates = Vec::new();
    for round in 1..=rounds {
        // Raw loop.
        let base = watermark_sum(&probe, RAW_OUTPUT)?;
        let first = Arc::new(Mutex::new(None));
        let task = tokio::spawn(raw_loop(
            bootstrap.clone(),
            format!("bench-raw-{round}"),
            (INPUT, RAW_OUTPUT),
            records,
            Arc::clone(&first),
            RawProducer::Ordered,
        ));
        let end = wait_until_output(&bootstrap, RAW_OUTPUT, base + records as i64).await?;
        task.await??;
        let start = first
            .lock()
            .ok()
            .and_then(|f| *f)
            .context("raw loop saw no record")?;
        let rate = records as f64 / (end - start).as_secs_f64();
        eprintln!("round {round}: raw loop {rate:.0} records/s");
        raw_rates.push(rate);

        // The framework.
        let base = watermark_sum(&probe, OUTPUT)?;
        let first = Arc::new(Mutex::new(None));
        let processor = PassThrough {
            name: format!("bench-passthrough-{round}"),
            first: Arc::clone(&first),
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let config = RunnerConfig::new(&bootstrap, &registry.url());
        let cat = catalog.clone();
        let task = tokio::spawn(async move {
            switchyard_pipeline::run_until(processor, cat, config, async {
                let _ = stop_rx.await;
            })
            .await
        });
        let end = wait_until_output(&bootstrap, OUTPUT, base + records as i64).await?;
        let _ = stop_tx.send(());
        task.await??;
        let start = first
            .lock()
            .ok()
            .and_then(|f| *f)
            .context("processor saw no record")?;
        let rate = records as f64 / (end - start).as_secs_f64();
        eprintln!("round {round}: framework {rate:.0} records/s");
        framework_rates.push(rate);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let raw = median(&mut raw_rates.clone());
    let framework = median(&mut framework_rates.clone());
    // Rounds alternate raw, framework on the same broker: pair them.
    let ratios: Vec<f64> = framework_rates
        .iter()
        .zip(&raw_rates)
        .map(|(f, r)| f / r)
        .collect();
    let ratio = median(&mut ratios.clone());
    let verdict = if ratio >= 0.95 { "meets" } else { "misses" };
    let fetch_wait = switchyard_kafka::FETCH_WAIT_MS;
    let markdown = format!(
        "## Pipeline: pass-through processor vs raw rdkafka loop\n\n\
         {records} records (GrafanaReading, Confluent-framed Avro, ~30 bytes) per round, {rounds} rounds alternating raw then framework.\n\
         Both: acks=all, idempotent producer, fetch.wait.max.ms {fetch_wait}, offsets committed only once the outputs they cover are acknowledged (the raw loop per batch, the framework per acknowledged prefix while it keeps consuming).\n\
         The raw loop copies bytes; the framework decodes and re-encodes each record (resolving it first when its writer schema is not the catalog's).\n\n\
         | | records/s (median) | rounds |\n|---|---|---|\n\
         | raw rdkafka consume→produce | {raw:.0} | {} |\n\
         | framework pass-through | {framework:.0} | {} |\n\
         | **framework / raw** (median of the per-round ratios {}) | **{:.0}%** | target ≥ 95%: {verdict} |\n\n\
         Producing the input (baseline for the broker's write speed): {produce_rate:.0} records/s.\n",
        raw_rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", "),
        framework_rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", "),
        ratios.iter().map(|r| format!("{:.0}%", r * 100.0)).collect::<Vec<_>>().join(", "),
        ratio * 100.0
    );
    Ok(Report {
        name: "pipeline",
        markdown,
        json: serde_json::json!({
            "records_per_round": records,
            "rounds": rounds,
            "raw_records_per_second": raw_rates,
            "framework_records_per_second": framework_rates,
            "raw_median": raw,
            "framework_median": framework,
            "ratio": ratio,
            "ratios_by_round": ratios,
            "target_ratio": 0.95,
            "produce_records_per_second": produce_rate,
        }),
    })
}

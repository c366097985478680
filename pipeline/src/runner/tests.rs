//! The transactional path on librdkafka's mock cluster: what the mock can show. It cannot
//! show exactly-once itself (its transactions do not hide aborted records and do not fence
//! zombies), so these check that the runner's calls run and that failures are errors.

use std::sync::Arc;
use std::time::Duration;
use switchyard_kafka::clients;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};

use super::commit;
use super::config::{Guarantee, RunnerConfig, RunnerError};
use super::delivery;
use super::ledger::Ledger;
use super::restore;
use super::shared::Shared;
use crate::context::Output;
use crate::metrics::Metrics;

const TOPIC: &str = "in";
const OUT: &str = "out";

fn shared() -> Arc<Shared> {
    Arc::new(Shared::new(
        Ledger::new(vec![TOPIC.into()]),
        Metrics::new("eos-test").expect("metrics"),
        Guarantee::ExactlyOnce,
        Duration::from_secs(1),
    ))
}

fn cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 1, 1).expect("topic");
    cluster.create_topic(OUT, 1, 1).expect("topic");
    cluster
}

fn config(bootstrap: &str) -> RunnerConfig {
    let mut config = RunnerConfig::new(bootstrap, "http://127.0.0.1:1");
    config.processing_guarantee = Guarantee::ExactlyOnce;
    config.instance_id = Some("test".into());
    config
}

fn group_consumer(bootstrap: &str) -> BaseConsumer {
    let consumer: BaseConsumer = clients::consumer_config(bootstrap)
        .set("group.id", "eos-test")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Beginning)
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");
    consumer
}

fn output() -> Output {
    Output {
        topic: OUT.into(),
        partition: Some(0),
        key: Some(b"k".to_vec()),
        payload: Some(b"v".to_vec()),
        timestamp_ms: None,
        headers: Vec::new(),
    }
}

/// The runner's transactional producer for `config`, not yet initialised. Asked for as a
/// topology whose outputs stand alone would ask: transactions keep it idempotent (without,
/// librdkafka refuses a transactional id, and these tests would fail).
fn transactional_producer(
    config: &RunnerConfig,
    shared: &Arc<Shared>,
) -> Arc<delivery::OutputProducer> {
    let id = delivery::transactional_id(config, "eos-test");
    let stand_alone = crate::Topology::new("eos-test").outputs_stand_alone();
    delivery::output_producer(config, id, &stand_alone, Arc::clone(shared)).expect("producer")
}

/// Send one output on a ledger entry of task 0, as the runner does for a record.
async fn send_one(
    producer: &delivery::OutputProducer,
    shared: &Shared,
    input: Option<(usize, i64)>,
) {
    let token = shared.ledger().open(0, input, None);
    delivery::send(producer, shared, token, &output(), None).await;
    shared.ledger().close(token);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_commits_outputs_with_the_processed_offsets_and_can_abort() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let config = config(&bootstrap);
    let shared = shared();
    assert_eq!(
        delivery::transactional_id(&config, "eos-test").as_deref(),
        Some("eos-test-test")
    );
    let producer = transactional_producer(&config, &shared);
    producer
        .init_transactions(Duration::from_secs(10))
        .expect("init");
    let consumer = group_consumer(&bootstrap);

    // Process input offsets 0..3 of `in`, each with one output, in one transaction.
    commit::begin_transaction(&producer, &shared).expect("begin");
    for offset in 0..3 {
        send_one(&producer, &shared, Some((0, offset))).await;
    }
    commit::commit_transaction(&consumer, &shared, &producer).expect("commit");
    assert_eq!(shared.ledger().records_in_flight(), 0, "commit flushed");
    assert_eq!(shared.ledger().uncommitted(), 0, "offsets confirmed");
    // (The mock keeps no transactional offset commits, so the group's offsets cannot be
    // read back here: that part needs a real broker.)

    // Abort runs without error.
    commit::begin_transaction(&producer, &shared).expect("begin again");
    send_one(&producer, &shared, Some((0, 3))).await;
    producer
        .abort_transaction(Duration::from_secs(10))
        .expect("abort");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_that_cannot_begin_is_an_error_not_a_fallback() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let config = config(&bootstrap);
    let shared = shared();
    let producer = transactional_producer(&config, &shared);
    // init_transactions was never called: begin must fail, and say so.
    let err = commit::begin_transaction(&producer, &shared).expect_err("begin must fail");
    assert!(matches!(err, RunnerError::Transaction(_)), "{err}");
    assert!(!*shared.transaction(), "no transaction is believed open");
}

#[test]
fn restores_read_committed_data_only_under_exactly_once() {
    let eos = restore::restore_settings("127.0.0.1:1", "x-changelog", true);
    assert_eq!(eos.get("isolation.level"), Some("read_committed"));
    let alos = restore::restore_settings("127.0.0.1:1", "x-changelog", false);
    assert_eq!(alos.get("isolation.level"), Some("read_uncommitted"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_reads_a_committed_transaction_back() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let config = config(&bootstrap);
    let shared = shared();
    let producer = transactional_producer(&config, &shared);
    producer
        .init_transactions(Duration::from_secs(10))
        .expect("init");
    commit::begin_transaction(&producer, &shared).expect("begin");
    send_one(&producer, &shared, None).await;
    producer
        .commit_transaction(Duration::from_secs(10))
        .expect("commit");
    let settings = restore::restore_settings(&bootstrap, OUT, true);
    let records = tokio::task::spawn_blocking(move || {
        restore::read_partition(&settings, OUT, 0, &Default::default())
    })
    .await
    .expect("join")
    .expect("read");
    assert_eq!(records, vec![("k".to_string(), Some(b"v".to_vec()))]);
}

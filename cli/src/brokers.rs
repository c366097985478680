//! `switchyard brokers`: the Kafka cluster the bootstrap servers lead to, from one metadata
//! request: each broker, and each partition whose leader is missing or whose in-sync replicas
//! are fewer than its replicas. `make up` waits on it to know the broker is ready.

use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use switchyard_kafka::clients;

use crate::{Endpoints, Failure};

#[derive(clap::Args)]
pub struct BrokersArgs {
    /// How long to wait for the cluster's answer, in seconds.
    #[arg(long, default_value_t = 5)]
    timeout_secs: u64,
}

pub fn run(endpoints: &Endpoints, args: BrokersArgs) -> Result<(), Failure> {
    let consumer: BaseConsumer = clients::admin_config(&endpoints.bootstrap_servers)
        .create()
        .context("creating a Kafka client")?;
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(args.timeout_secs))
        .with_context(|| {
            format!(
                "no answer from the Kafka cluster at {} within {} s",
                endpoints.bootstrap_servers, args.timeout_secs
            )
        })?;
    for broker in metadata.brokers() {
        crate::emit(format!(
            "broker {} {}:{}",
            broker.id(),
            broker.host(),
            broker.port()
        ));
    }
    for topic in metadata.topics() {
        for partition in topic.partitions() {
            let leaderless = partition.leader() < 0;
            let under_replicated = partition.isr().len() < partition.replicas().len();
            if leaderless || under_replicated {
                crate::emit(format!(
                    "partition {}[{}] leader {} replicas {:?} in-sync {:?}",
                    topic.name(),
                    partition.id(),
                    partition.leader(),
                    partition.replicas(),
                    partition.isr()
                ));
            }
        }
    }
    Ok(())
}

//! The schema store: state folded from the compacted `_schemas` topic, and writes that
//! append to it and wait until they are read back.
//!
//! Write protocol (one writer at a time per instance; instances coordinate through the log):
//! 1. catch up to the partition's high watermark, so decisions use everything written so far;
//! 2. decide (id, version) from the state and append the record;
//! 3. wait until the record is read back and applied, then look at the state: if the record
//!    won, done; if another instance's record for the same key or id came first, re-append
//!    the winner's record (so compaction keeps the winner) or a tombstone, and go to 1.

use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use switchyard_kafka::{clients, TracingContext};
use tokio::sync::{watch, Mutex};
use tracing::{debug, info, warn};

use crate::compat::{self, Level};
use crate::error::ApiError;
use crate::state::{normalize, Applied, RecordKey, SchemaValue, State};

/// How many times a write retries after losing a race to another instance.
const MAX_WRITE_ATTEMPTS: usize = 8;

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub bootstrap_servers: String,
    pub topic: String,
    pub default_level: Level,
    /// Limit for one broker round trip (produce, watermark query, catch-up).
    pub timeout: Duration,
    /// The follower's `fetch.wait.max.ms`. A write answers once its record is read back;
    /// Kafka answers a fetch as soon as the record is there, so this bounds only how often
    /// an idle follower fetches.
    pub fetch_wait: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create or reach the {topic} topic on {bootstrap}: {source}")]
    Topic {
        topic: String,
        bootstrap: String,
        source: KafkaError,
    },
    #[error("kafka client: {0}")]
    Kafka(#[from] KafkaError),
    #[error("could not read {0} to its end: {1}")]
    CatchUp(String, ApiError),
}

pub struct SchemaStore {
    state: Arc<RwLock<State>>,
    producer: FutureProducer,
    applied: watch::Receiver<i64>,
    write_lock: Mutex<()>,
    config: StoreConfig,
}

impl SchemaStore {
    /// Create the topic if needed, read it to its end, and keep following it.
    pub async fn open(config: StoreConfig) -> Result<Arc<SchemaStore>, StoreError> {
        ensure_topic(&config).await?;
        let producer: FutureProducer = clients::producer_config(&config.bootstrap_servers)
            .set("message.timeout.ms", config.timeout.as_millis().to_string())
            .create()?;
        let consumer: StreamConsumer<TracingContext> =
            clients::consumer_config(&config.bootstrap_servers)
                .set("group.id", "switchyard-registry")
                .set("enable.partition.eof", "true")
                .set("auto.offset.reset", "earliest")
                .set(
                    "fetch.wait.max.ms",
                    config.fetch_wait.as_millis().to_string(),
                )
                .create_with_context(TracingContext)?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&config.topic, 0, Offset::Beginning)?;
        consumer.assign(&assignment)?;

        let state = Arc::new(RwLock::new(State::default()));
        let (applied_tx, applied) = watch::channel(0i64);
        tokio::spawn(follow(
            consumer,
            config.topic.clone(),
            Arc::clone(&state),
            applied_tx,
        ));

        let store = Arc::new(SchemaStore {
            state,
            producer,
            applied,
            write_lock: Mutex::new(()),
            config,
        });
        store
            .catch_up()
            .await
            .map_err(|e| StoreError::CatchUp(store.config.topic.clone(), e))?;
        info!(topic = %store.config.topic, "schema store caught up");
        Ok(store)
    }

    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock is a bug elsewhere; the state itself stays usable.
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn default_level(&self) -> Level {
        self.config.default_level
    }

    /// The level that governs a subject: its own, else the global one, else the default.
    pub fn effective_level(&self, state: &State, subject: &str) -> Level {
        state
            .subject_level(subject)
            .or(state.global_level())
            .unwrap_or(self.config.default_level)
    }

    /// Wait until everything written to the topic so far has been applied.
    pub async fn catch_up(&self) -> Result<(), ApiError> {
        let producer = self.producer.clone();
        let topic = self.config.topic.clone();
        let timeout = self.config.timeout;
        let (low, high) = tokio::task::spawn_blocking(move || {
            switchyard_kafka::retry_passing(timeout, |left| {
                producer.client().fetch_watermarks(&topic, 0, left)
            })
        })
        .await
        .map_err(ApiError::store)?
        .map_err(|e| {
            ApiError::store(format!(
                "cannot read the {} watermarks: {e}",
                self.config.topic
            ))
        })?;
        if high <= low {
            return Ok(());
        }
        self.wait_applied(high).await
    }

    async fn wait_applied(&self, next_offset: i64) -> Result<(), ApiError> {
        let mut applied = self.applied.clone();
        let reached = tokio::time::timeout(self.config.timeout, async {
            applied.wait_for(|a| *a >= next_offset).await.map(|_| ())
        })
        .await;
        match reached {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ApiError::store("the _schemas reader stopped")),
            Err(_) => Err(ApiError::timeout(format!(
                "reading {} up to offset {next_offset}",
                self.config.topic
            ))),
        }
    }

    async fn append(&self, key: &RecordKey, value: Option<Vec<u8>>) -> Result<i64, ApiError> {
        let key = serde_json::to_vec(key).map_err(ApiError::store)?;
        let mut record = FutureRecord::<Vec<u8>, Vec<u8>>::to(&self.config.topic)
            .key(&key)
            .partition(0);
        if let Some(v) = &value {
            record = record.payload(v);
        }
        match self
            .producer
            .send(record, Timeout::After(self.config.timeout))
            .await
        {
            Ok(delivery) => Ok(delivery.offset),
            Err((e, _)) => Err(ApiError::store(format!(
                "cannot write to {}: {e}",
                self.config.topic
            ))),
        }
    }

    async fn append_and_apply(
        &self,
        key: &RecordKey,
        value: Option<Vec<u8>>,
    ) -> Result<(), ApiError> {
        let offset = self.append(key, value).await?;
        self.wait_applied(offset + 1).await
    }

    /// Register a schema under a subject; returns (id, version). Registering a schema the
    /// subject already has returns the existing registration.
    pub async fn register(&self, subject: &str, text: &str) -> Result<(i32, i32), ApiError> {
        let (schema, normalized) = normalize(text)?;
        let _writer = self.write_lock.lock().await;
        for attempt in 1..=MAX_WRITE_ATTEMPTS {
            self.catch_up().await?;
            let (id, version) = {
                let st = self.read();
                if let Some((version, id)) = st.find(subject, &normalized, false) {
                    return Ok((id, version));
                }
                let level = self.effective_level(&st, subject);
                let previous = live_schemas(&st, subject);
                compat::check(level, &schema, &previous)
                    .map_err(|problems| ApiError::incompatible(&problems))?;
                let id = st.id_of(&normalized).unwrap_or_else(|| st.next_id());
                let version = st
                    .versions(subject)
                    .and_then(|vs| vs.keys().next_back().copied())
                    .unwrap_or(0)
                    + 1;
                (id, version)
            };
            let key = RecordKey::schema(subject, version);
            let value = SchemaValue {
                subject: subject.to_string(),
                version,
                id,
                schema: text.to_string(),
                deleted: false,
            };
            self.append_and_apply(&key, Some(to_json(&value)?)).await?;
            let now = self.read().schema_value(subject, version);
            match now {
                Some(v) if v.id == id && !v.deleted => return Ok((id, version)),
                // Another instance took this version first: make its record the key's latest again.
                Some(winner) => self.append_and_apply(&key, Some(to_json(&winner)?)).await?,
                // Our id was taken by another schema first: clear the key before retrying.
                None => self.append_and_apply(&key, None).await?,
            }
            debug!(%subject, attempt, "lost a registration race to another registry instance; retrying");
        }
        Err(ApiError::store(format!(
            "could not register under '{subject}' after {MAX_WRITE_ATTEMPTS} attempts (concurrent writers)"
        )))
    }

    /// Soft-delete (or, once soft-deleted, permanently delete) one version.
    pub async fn delete_version(
        &self,
        subject: &str,
        version: i32,
        permanent: bool,
    ) -> Result<i32, ApiError> {
        let _writer = self.write_lock.lock().await;
        self.catch_up().await?;
        let key = RecordKey::schema(subject, version);
        let value = {
            let st = self.read();
            if st.versions(subject).is_none() {
                return Err(ApiError::subject_not_found(subject));
            }
            let mut v = st
                .schema_value(subject, version)
                .ok_or_else(|| ApiError::version_not_found(subject, version))?;
            match (permanent, v.deleted) {
                (false, true) => return Err(ApiError::version_soft_deleted(subject, version)),
                (true, false) => return Err(ApiError::version_not_soft_deleted(subject, version)),
                (false, false) => {
                    v.deleted = true;
                    Some(to_json(&v)?)
                }
                (true, true) => None,
            }
        };
        self.append_and_apply(&key, value).await?;
        Ok(version)
    }

    /// Soft-delete every live version of a subject, or permanently delete a soft-deleted subject.
    pub async fn delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<Vec<i32>, ApiError> {
        let _writer = self.write_lock.lock().await;
        self.catch_up().await?;
        let (writes, deleted_versions, had_level) = {
            let st = self.read();
            let versions = st
                .versions(subject)
                .ok_or_else(|| ApiError::subject_not_found(subject))?;
            let live: Vec<i32> = versions
                .iter()
                .filter(|(_, e)| !e.deleted)
                .map(|(v, _)| *v)
                .collect();
            let mut writes = Vec::new();
            if permanent {
                if !live.is_empty() {
                    return Err(ApiError::subject_not_soft_deleted(subject));
                }
                for v in versions.keys() {
                    writes.push((RecordKey::schema(subject, *v), None));
                }
                (
                    writes,
                    versions.keys().copied().collect(),
                    st.subject_level(subject).is_some(),
                )
            } else {
                if live.is_empty() {
                    return Err(ApiError::subject_soft_deleted(subject));
                }
                for v in &live {
                    if let Some(mut value) = st.schema_value(subject, *v) {
                        value.deleted = true;
                        writes.push((RecordKey::schema(subject, *v), Some(to_json(&value)?)));
                    }
                }
                (writes, live, false)
            }
        };
        for (key, value) in writes {
            self.append_and_apply(&key, value).await?;
        }
        if had_level {
            self.append_and_apply(&RecordKey::config(Some(subject)), None)
                .await?;
        }
        Ok(deleted_versions)
    }

    /// Set the global (`None`) or a subject's compatibility level.
    pub async fn set_level(&self, subject: Option<&str>, level: Level) -> Result<(), ApiError> {
        let _writer = self.write_lock.lock().await;
        let value = serde_json::json!({"compatibilityLevel": level.as_str()});
        self.append_and_apply(&RecordKey::config(subject), Some(to_json(&value)?))
            .await
    }

    /// Unset a level; returns the level that was set.
    pub async fn delete_level(&self, subject: Option<&str>) -> Result<Level, ApiError> {
        let _writer = self.write_lock.lock().await;
        self.catch_up().await?;
        let previous = {
            let st = self.read();
            match subject {
                Some(s) => st
                    .subject_level(s)
                    .ok_or_else(|| ApiError::subject_compatibility_not_configured(s))?,
                None => st.global_level().unwrap_or(self.config.default_level),
            }
        };
        self.append_and_apply(&RecordKey::config(subject), None)
            .await?;
        Ok(previous)
    }
}

/// The parsed schemas of a subject's live versions, oldest first.
pub fn live_schemas(state: &State, subject: &str) -> Vec<(i32, apache_avro::Schema)> {
    let Some(versions) = state.versions(subject) else {
        return Vec::new();
    };
    versions
        .iter()
        .filter(|(_, e)| !e.deleted)
        .filter_map(|(v, e)| {
            let text = &state.schema(e.id)?.text;
            Some((*v, normalize(text).ok()?.0))
        })
        .collect()
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(ApiError::store)
}

async fn ensure_topic(config: &StoreConfig) -> Result<(), StoreError> {
    let topic_error = |source| StoreError::Topic {
        topic: config.topic.clone(),
        bootstrap: config.bootstrap_servers.clone(),
        source,
    };
    let admin: AdminClient<DefaultClientContext> = clients::admin_config(&config.bootstrap_servers)
        .create()
        .map_err(topic_error)?;
    let topic = NewTopic::new(
        &config.topic,
        1,
        TopicReplication::Fixed(switchyard_kafka::BROKER_DEFAULT_REPLICATION),
    )
    .set("cleanup.policy", "compact");
    let options = AdminOptions::new().request_timeout(Some(config.timeout));
    let results = admin
        .create_topics([&topic], &options)
        .await
        .map_err(topic_error)?;
    for result in results {
        match result {
            Ok(_) => info!(topic = %config.topic, "created the schemas topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(topic_error(KafkaError::AdminOp(code))),
        }
    }
    Ok(())
}

/// Apply every record of the topic, forever, publishing the next offset to read.
async fn follow(
    consumer: StreamConsumer<TracingContext>,
    topic: String,
    state: Arc<RwLock<State>>,
    applied: watch::Sender<i64>,
) {
    loop {
        match consumer.recv().await {
            Ok(message) => {
                let outcome = state
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .apply(message.key().unwrap_or_default(), message.payload());
                if outcome == Applied::Rejected {
                    debug!(
                        offset = message.offset(),
                        "record lost a race to an earlier one; ignored"
                    );
                }
                let next = message.offset() + 1;
                applied.send_if_modified(|a| std::mem::replace(a, next.max(*a)) != *a);
            }
            Err(KafkaError::PartitionEOF(_)) => {
                // At the end: the position is the high watermark, even when compaction or
                // removed tombstones left no record at the last offsets.
                let position = consumer
                    .position()
                    .ok()
                    .and_then(|tpl| {
                        tpl.find_partition(&topic, 0)
                            .and_then(|p| p.offset().to_raw())
                    })
                    .filter(|o| *o >= 0);
                if let Some(next) = position {
                    applied.send_if_modified(|a| std::mem::replace(a, next.max(*a)) != *a);
                }
            }
            Err(e) => {
                warn!(error = %e, %topic, "reading the schemas topic failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

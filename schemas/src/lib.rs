//! The topic catalog (`schemas/topics.toml`) and the Avro schema of every topic
//! (`schemas/avro/*.avsc`), embedded in every binary so a service needs no files at run time.
//!
//! The catalog is the single place that names topics: producers, consumers, `switchyard
//! topics apply` and the dashboards all read it from here.

pub mod records;
pub mod topics;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;
use thiserror::Error;

/// The catalog as shipped in the repository.
pub const CATALOG_TOML: &str = include_str!("../topics.toml");

include!(concat!(env!("OUT_DIR"), "/schema_files.rs"));

/// Suffix of the topic that carries a sensor's readings projected for Grafana.
pub const GRAFANA_SUFFIX: &str = "-grafana";

#[derive(Debug, Error)]
pub enum CatalogError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("topics.toml: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("topic {topic}: schema file {file} is not in the catalog's schema folder")]
    MissingSchema { topic: String, file: String },
    #[error("schema {file} is not valid Avro: {message}")]
    InvalidSchema { file: String, message: String },
    #[error("catalog is inconsistent: {0}")]
    Inconsistent(String),
}

/// What a topic is for; lets code find "all sensor topics" without naming them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Sensor,
    Grafana,
    Status,
    Ack,
    Request,
    Delivery,
    Session,
    Table,
    Anomaly,
    Reject,
    DeadLetter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ValueFormat {
    /// Avro in the Confluent wire format, schema registered as `<topic>-value`.
    #[default]
    Avro,
    /// Bytes kept exactly as they were (dead-letter topics).
    Raw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CleanupPolicy {
    Delete,
    Compact,
}

impl CleanupPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
        }
    }
}

/// One topic of the catalog.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topic {
    pub name: String,
    pub role: Role,
    /// What the (UTF-8 string) record key is: `modem_id`, `source_address`, `original`.
    pub key: String,
    #[serde(default)]
    pub value_format: ValueFormat,
    /// File name under `schemas/avro/` for Avro topics.
    pub value_schema: Option<String>,
    pub partitions: i32,
    pub cleanup_policy: CleanupPolicy,
    pub retention_ms: Option<i64>,
    #[serde(default)]
    pub producers: Vec<String>,
    #[serde(default)]
    pub consumers: Vec<String>,
    pub description: String,
}

impl Topic {
    /// Subject of the value schema under TopicNameStrategy.
    pub fn value_subject(&self) -> String {
        value_subject(&self.name)
    }

    /// Broker-side topic configuration.
    pub fn broker_config(&self) -> Vec<(&'static str, String)> {
        let mut config = vec![("cleanup.policy", self.cleanup_policy.as_str().to_string())];
        if let Some(ms) = self.retention_ms {
            config.push(("retention.ms", ms.to_string()));
        }
        config
    }
}

/// Subject of a topic's value schema under TopicNameStrategy.
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorDevice {
    pub device_id: u32,
    pub nickname: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sensors {
    /// Nickname (and topic) for device ids not listed.
    pub unknown: String,
    #[serde(default)]
    pub device: Vec<SensorDevice>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    sensors: Sensors,
    topic: Vec<Topic>,
}

/// The validated catalog with the text of every schema it names.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub sensors: Sensors,
    pub topics: Vec<Topic>,
    schemas: BTreeMap<String, String>,
}

impl Catalog {
    /// The catalog built into this binary.
    pub fn embedded() -> Result<Catalog, CatalogError> {
        let schemas = SCHEMA_FILES
            .iter()
            .map(|(file, text)| (file.to_string(), text.to_string()))
            .collect();
        Catalog::from_parts(CATALOG_TOML, schemas)
    }

    /// A catalog from TOML text whose topics use the built-in schema files (tests and
    /// benchmarks extend [`CATALOG_TOML`] with topics of their own this way).
    pub fn parse(toml_text: &str) -> Result<Catalog, CatalogError> {
        let schemas = SCHEMA_FILES
            .iter()
            .map(|(file, text)| (file.to_string(), text.to_string()))
            .collect();
        Catalog::from_parts(toml_text, schemas)
    }

    /// A catalog from a folder laid out like `schemas/`: `topics.toml` and `avro/*.avsc`.
    pub fn from_dir(dir: &Path) -> Result<Catalog, CatalogError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| CatalogError::Io {
                path: path.display().to_string(),
                source,
            })
        };
        let toml_text = read(&dir.join("topics.toml"))?;
        let file: CatalogFile = toml::from_str(&toml_text)?;
        let mut schemas = BTreeMap::new();
        for name in file.topic.iter().filter_map(|t| t.value_schema.as_ref()) {
            if !schemas.contains_key(name) {
                let path = dir.join("avro").join(name);
                if path.exists() {
                    schemas.insert(name.clone(), read(&path)?);
                }
            }
        }
        Catalog::from_parts(&toml_text, schemas)
    }

    fn from_parts(
        toml_text: &str,
        schemas: BTreeMap<String, String>,
    ) -> Result<Catalog, CatalogError> {
        let file: CatalogFile = toml::from_str(toml_text)?;
        let catalog = Catalog {
            sensors: file.sensors,
            topics: file.topic,
            schemas,
        };
        catalog.validate()?;
        Ok(catalog)
    }

    fn validate(&self) -> Result<(), CatalogError> {
        let inconsistent = |msg: String| Err(CatalogError::Inconsistent(msg));
        let mut names = BTreeSet::new();
        for t in &self.topics {
            if !names.insert(t.name.as_str()) {
                return inconsistent(format!("topic {} is listed twice", t.name));
            }
            if t.partitions < 1 {
                return inconsistent(format!("topic {} needs at least one partition", t.name));
            }
            match (t.value_format, &t.value_schema) {
                (ValueFormat::Avro, Some(file)) => {
                    let text =
                        self.schemas
                            .get(file)
                            .ok_or_else(|| CatalogError::MissingSchema {
                                topic: t.name.clone(),
                                file: file.clone(),
                            })?;
                    apache_avro::Schema::parse_str(text).map_err(|e| {
                        CatalogError::InvalidSchema {
                            file: file.clone(),
                            message: e.to_string(),
                        }
                    })?;
                }
                (ValueFormat::Avro, None) => {
                    return inconsistent(format!("Avro topic {} names no value_schema", t.name))
                }
                (ValueFormat::Raw, Some(_)) => {
                    return inconsistent(format!(
                        "raw topic {} must not name a value_schema",
                        t.name
                    ))
                }
                (ValueFormat::Raw, None) => {}
            }
        }
        let mut ids = BTreeSet::new();
        let mut nicknames: Vec<&str> = vec![self.sensors.unknown.as_str()];
        for d in &self.sensors.device {
            if !ids.insert(d.device_id) {
                return inconsistent(format!("device id {} is listed twice", d.device_id));
            }
            nicknames.push(&d.nickname);
        }
        for nick in &nicknames {
            match self.topic(nick) {
                Some(t) if t.role == Role::Sensor => {}
                _ => {
                    return inconsistent(format!(
                        "sensor {nick} needs a topic {nick} with role sensor"
                    ))
                }
            }
            let projected = format!("{nick}{GRAFANA_SUFFIX}");
            match self.topic(&projected) {
                Some(t) if t.role == Role::Grafana => {}
                _ => {
                    return inconsistent(format!(
                        "sensor {nick} needs a topic {projected} with role grafana"
                    ))
                }
            }
        }
        for t in self.topics.iter().filter(|t| t.role == Role::Sensor) {
            if !nicknames.contains(&t.name.as_str()) {
                return inconsistent(format!(
                    "sensor topic {} names no sensor in [sensors]",
                    t.name
                ));
            }
        }
        Ok(())
    }

    pub fn topic(&self, name: &str) -> Option<&Topic> {
        self.topics.iter().find(|t| t.name == name)
    }

    /// Topics with a role, in catalog order.
    pub fn topics_with_role(&self, role: Role) -> impl Iterator<Item = &Topic> {
        self.topics.iter().filter(move |t| t.role == role)
    }

    /// The sensor nickname (= topic) for a device id.
    pub fn sensor_for_device(&self, device_id: u32) -> &str {
        self.sensors
            .device
            .iter()
            .find(|d| d.device_id == device_id)
            .map_or(self.sensors.unknown.as_str(), |d| d.nickname.as_str())
    }

    /// The projected topic for a sensor topic.
    pub fn grafana_topic(sensor_topic: &str) -> String {
        format!("{sensor_topic}{GRAFANA_SUFFIX}")
    }

    /// The Avro schema text of a topic's values, if it is an Avro topic.
    pub fn value_schema(&self, topic: &str) -> Option<&str> {
        let file = self.topic(topic)?.value_schema.as_ref()?;
        self.schemas.get(file).map(String::as_str)
    }

    /// The schema file a topic's values use, if it is an Avro topic.
    pub fn schema_file(&self, topic: &str) -> Option<&str> {
        self.topic(topic)?.value_schema.as_deref()
    }

    /// Every subject to register and its schema text, in catalog order.
    pub fn subjects(&self) -> Vec<(String, &str)> {
        self.topics
            .iter()
            .filter_map(|t| Some((t.value_subject(), self.value_schema(&t.name)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_catalog_is_valid_and_names_the_seed_topics() {
        let catalog = Catalog::embedded().expect("embedded catalog is valid");
        for name in [
            "imu",
            "gyro",
            "temp",
            "unknown",
            "imu-grafana",
            "gyro-grafana",
            "temp-grafana",
            "unknown-grafana",
            "iot-status",
            "downstream-request",
            "carrier-switch-ack",
            "carrier-state",
            "anomalies",
            "gateway-rejects",
        ] {
            assert!(catalog.topic(name).is_some(), "catalog lacks {name}");
        }
        assert_eq!(
            catalog.topic("carrier-state").map(|t| t.cleanup_policy),
            Some(CleanupPolicy::Compact)
        );
        assert!(catalog.topics_with_role(Role::DeadLetter).count() >= 3);
    }

    #[test]
    fn device_ids_map_to_sensor_nicknames() {
        let catalog = Catalog::embedded().expect("valid");
        assert_eq!(catalog.sensor_for_device(1), "imu");
        assert_eq!(catalog.sensor_for_device(2), "gyro");
        assert_eq!(catalog.sensor_for_device(3), "temp");
        assert_eq!(catalog.sensor_for_device(0xDEAD_BEEF), "unknown");
    }

    #[test]
    fn every_avro_topic_has_a_subject_and_raw_topics_have_none() {
        let catalog = Catalog::embedded().expect("valid");
        let subjects: BTreeMap<_, _> = catalog.subjects().into_iter().collect();
        assert!(subjects.contains_key("imu-value"));
        assert!(subjects.contains_key("imu-grafana-value"));
        assert!(!subjects.contains_key("carrier-state-dlq-value"));
        let avro = catalog
            .topics
            .iter()
            .filter(|t| t.value_format == ValueFormat::Avro)
            .count();
        assert_eq!(subjects.len(), avro);
    }

    #[test]
    fn every_schema_file_in_the_folder_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("avro");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("avro dir")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.ends_with(".avsc"))
            .collect();
        on_disk.sort();
        let embedded: Vec<String> = SCHEMA_FILES.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(on_disk, embedded);
    }

    #[test]
    fn the_folder_loads_like_the_embedded_catalog() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let from_dir = Catalog::from_dir(dir).expect("loads from the folder");
        let embedded = Catalog::embedded().expect("valid");
        assert_eq!(from_dir.subjects(), embedded.subjects());
    }

    #[test]
    fn a_sensor_without_its_grafana_topic_is_refused() {
        let toml_text = CATALOG_TOML.replace("name = \"gyro-grafana\"", "name = \"gyro-graphs\"");
        let schemas = SCHEMA_FILES
            .iter()
            .map(|(f, t)| (f.to_string(), t.to_string()))
            .collect();
        let err = Catalog::from_parts(&toml_text, schemas).expect_err("inconsistent");
        assert!(err.to_string().contains("gyro-grafana"), "{err}");
    }

    #[test]
    fn a_topic_naming_a_missing_schema_is_refused() {
        let toml_text = CATALOG_TOML.replace(
            "value_schema = \"anomaly.avsc\"",
            "value_schema = \"nope.avsc\"",
        );
        let schemas = SCHEMA_FILES
            .iter()
            .map(|(f, t)| (f.to_string(), t.to_string()))
            .collect();
        let err = Catalog::from_parts(&toml_text, schemas).expect_err("missing schema");
        assert!(matches!(err, CatalogError::MissingSchema { .. }), "{err}");
    }
}

//! The registry's state: a deterministic fold over the `_schemas` log.
//!
//! Records use Confluent's key/value JSON shapes:
//! * `{"keytype":"SCHEMA","subject":S,"version":V,"magic":1}` →
//!   `{"subject":S,"version":V,"id":I,"schema":"…","deleted":false}` (null value: hard delete)
//! * `{"keytype":"CONFIG","subject":S|null,"magic":0}` → `{"compatibilityLevel":"FULL"}` (null: unset)
//!
//! Every instance applies the same records in the same (log) order, so every instance
//! reaches the same state. Two instances may race to write: the first record in the log to
//! claim a (subject, version) or an id wins, and a later conflicting record is ignored.
//! The losing writer sees that after reading its own record back, re-appends the winner's
//! record (so the latest value per key — all that compaction keeps — is again the winner)
//! and retries. See `store.rs`.

use std::collections::{BTreeMap, HashMap};

use apache_avro::Schema;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::compat::Level;
use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "keytype", rename_all = "UPPERCASE")]
pub enum RecordKey {
    Schema {
        subject: String,
        version: i32,
        magic: i32,
    },
    Config {
        subject: Option<String>,
        magic: i32,
    },
    #[serde(other)]
    Other,
}

impl RecordKey {
    pub fn schema(subject: &str, version: i32) -> Self {
        RecordKey::Schema {
            subject: subject.to_string(),
            version,
            magic: 1,
        }
    }
    pub fn config(subject: Option<&str>) -> Self {
        RecordKey::Config {
            subject: subject.map(str::to_string),
            magic: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaValue {
    pub subject: String,
    pub version: i32,
    pub id: i32,
    pub schema: String,
    #[serde(default)]
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigValue {
    #[serde(rename = "compatibilityLevel")]
    pub compatibility_level: String,
}

/// A schema as registered: the text as submitted, and its normalized form used for identity.
#[derive(Debug, Clone)]
pub struct StoredSchema {
    pub text: String,
    normalized: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionEntry {
    pub id: i32,
    pub deleted: bool,
}

/// Parse an Avro schema and give its normalized JSON: equal for schemas that differ only in
/// whitespace, key order or documentation.
pub fn normalize(text: &str) -> Result<(Schema, String), ApiError> {
    let schema = Schema::parse_str(text).map_err(ApiError::invalid_schema)?;
    let normalized = serde_json::to_string(&schema).map_err(ApiError::invalid_schema)?;
    Ok((schema, normalized))
}

#[derive(Debug, Default)]
pub struct State {
    schemas: BTreeMap<i32, StoredSchema>,
    ids_by_normalized: HashMap<String, i32>,
    subjects: BTreeMap<String, BTreeMap<i32, VersionEntry>>,
    global_level: Option<Level>,
    subject_levels: BTreeMap<String, Level>,
    max_id: i32,
}

/// What applying one record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Accepted,
    /// Conflicts with an earlier record (a lost race); ignored.
    Rejected,
    /// Not a record this registry understands; ignored.
    Ignored,
}

impl State {
    /// Apply one record of the log.
    pub fn apply(&mut self, key: &[u8], value: Option<&[u8]>) -> Applied {
        let Ok(key) = serde_json::from_slice::<RecordKey>(key) else {
            warn!(key = %String::from_utf8_lossy(key), "ignoring _schemas record with an unreadable key");
            return Applied::Ignored;
        };
        match key {
            RecordKey::Schema {
                subject, version, ..
            } => match value {
                None => {
                    self.remove_version(&subject, version);
                    Applied::Accepted
                }
                Some(bytes) => match serde_json::from_slice::<SchemaValue>(bytes) {
                    Ok(v) if v.subject == subject && v.version == version => self.apply_schema(v),
                    _ => {
                        warn!(%subject, version, "ignoring _schemas record with an unreadable value");
                        Applied::Ignored
                    }
                },
            },
            RecordKey::Config { subject, .. } => {
                let level = match value {
                    None => None,
                    Some(bytes) => match serde_json::from_slice::<ConfigValue>(bytes)
                        .ok()
                        .and_then(|c| c.compatibility_level.parse::<Level>().ok())
                    {
                        Some(level) => Some(level),
                        None => return Applied::Ignored,
                    },
                };
                match (subject, level) {
                    (None, level) => self.global_level = level,
                    (Some(s), Some(level)) => {
                        self.subject_levels.insert(s, level);
                    }
                    (Some(s), None) => {
                        self.subject_levels.remove(&s);
                    }
                }
                Applied::Accepted
            }
            RecordKey::Other => Applied::Ignored,
        }
    }

    fn apply_schema(&mut self, v: SchemaValue) -> Applied {
        let Ok((_, normalized)) = normalize(&v.schema) else {
            warn!(subject = %v.subject, version = v.version, "ignoring _schemas record whose schema does not parse");
            return Applied::Ignored;
        };
        if let Some(existing) = self.schemas.get(&v.id) {
            if existing.normalized != normalized {
                return Applied::Rejected;
            }
        }
        if let Some(&id) = self.ids_by_normalized.get(&normalized) {
            if id != v.id {
                return Applied::Rejected;
            }
        }
        if let Some(entry) = self
            .subjects
            .get(&v.subject)
            .and_then(|vs| vs.get(&v.version))
        {
            if entry.id != v.id {
                return Applied::Rejected;
            }
        }
        self.ids_by_normalized.insert(normalized.clone(), v.id);
        self.schemas.entry(v.id).or_insert(StoredSchema {
            text: v.schema,
            normalized,
        });
        self.max_id = self.max_id.max(v.id);
        self.subjects.entry(v.subject).or_default().insert(
            v.version,
            VersionEntry {
                id: v.id,
                deleted: v.deleted,
            },
        );
        Applied::Accepted
    }

    fn remove_version(&mut self, subject: &str, version: i32) {
        let Some(versions) = self.subjects.get_mut(subject) else {
            return;
        };
        let removed = versions.remove(&version);
        if versions.is_empty() {
            self.subjects.remove(subject);
        }
        if let Some(entry) = removed {
            let still_used = self
                .subjects
                .values()
                .any(|vs| vs.values().any(|e| e.id == entry.id));
            if !still_used {
                if let Some(s) = self.schemas.remove(&entry.id) {
                    self.ids_by_normalized.remove(&s.normalized);
                }
            }
        }
    }

    // ---- queries -------------------------------------------------------------------------

    pub fn schema(&self, id: i32) -> Option<&StoredSchema> {
        self.schemas.get(&id)
    }

    pub fn id_of(&self, normalized: &str) -> Option<i32> {
        self.ids_by_normalized.get(normalized).copied()
    }

    pub fn next_id(&self) -> i32 {
        self.max_id + 1
    }

    /// All versions of a subject (soft-deleted ones included).
    pub fn versions(&self, subject: &str) -> Option<&BTreeMap<i32, VersionEntry>> {
        self.subjects.get(subject)
    }

    pub fn entry(&self, subject: &str, version: i32) -> Option<VersionEntry> {
        self.subjects.get(subject)?.get(&version).copied()
    }

    /// The record that states (subject, version) as it is now, for re-appending.
    pub fn schema_value(&self, subject: &str, version: i32) -> Option<SchemaValue> {
        let entry = self.entry(subject, version)?;
        Some(SchemaValue {
            subject: subject.to_string(),
            version,
            id: entry.id,
            schema: self.schemas.get(&entry.id)?.text.clone(),
            deleted: entry.deleted,
        })
    }

    /// Subjects with at least one live version (or any version, with `deleted`).
    pub fn subjects(&self, deleted: bool) -> Vec<String> {
        self.subjects
            .iter()
            .filter(|(_, vs)| deleted || vs.values().any(|e| !e.deleted))
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// The version of `subject` holding a schema, if any.
    pub fn find(&self, subject: &str, normalized: &str, deleted: bool) -> Option<(i32, i32)> {
        let id = self.id_of(normalized)?;
        self.subjects
            .get(subject)?
            .iter()
            .filter(|(_, e)| e.id == id && (deleted || !e.deleted))
            .map(|(v, e)| (*v, e.id))
            .next_back()
    }

    /// Subject-versions using a schema id.
    pub fn usages(&self, id: i32, deleted: bool) -> Vec<(String, i32)> {
        self.subjects
            .iter()
            .flat_map(|(s, vs)| {
                vs.iter()
                    .filter(move |(_, e)| e.id == id && (deleted || !e.deleted))
                    .map(move |(v, _)| (s.clone(), *v))
            })
            .collect()
    }

    pub fn global_level(&self) -> Option<Level> {
        self.global_level
    }

    pub fn subject_level(&self, subject: &str) -> Option<Level> {
        self.subject_levels.get(subject).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = r#"{"type":"record","name":"A","fields":[{"name":"x","type":"int"}]}"#;
    const A_SPACED: &str =
        r#"{ "type": "record", "name": "A", "fields": [ {"name": "x", "type": "int"} ] }"#;
    const B: &str = r#"{"type":"record","name":"B","fields":[{"name":"y","type":"int"}]}"#;

    fn key(subject: &str, version: i32) -> Vec<u8> {
        serde_json::to_vec(&RecordKey::schema(subject, version)).expect("json")
    }

    fn value(subject: &str, version: i32, id: i32, schema: &str, deleted: bool) -> Vec<u8> {
        serde_json::to_vec(&SchemaValue {
            subject: subject.into(),
            version,
            id,
            schema: schema.into(),
            deleted,
        })
        .expect("json")
    }

    #[test]
    fn keys_use_confluents_json_shape() {
        let k = String::from_utf8(key("t-value", 3)).expect("utf8");
        assert_eq!(
            k,
            r#"{"keytype":"SCHEMA","subject":"t-value","version":3,"magic":1}"#
        );
        let c = serde_json::to_string(&RecordKey::config(None)).expect("json");
        assert_eq!(c, r#"{"keytype":"CONFIG","subject":null,"magic":0}"#);
    }

    #[test]
    fn the_first_claim_on_a_subject_version_wins() {
        let mut st = State::default();
        assert_eq!(
            st.apply(&key("s", 1), Some(&value("s", 1, 1, A, false))),
            Applied::Accepted
        );
        assert_eq!(
            st.apply(&key("s", 1), Some(&value("s", 1, 2, B, false))),
            Applied::Rejected
        );
        assert_eq!(
            st.entry("s", 1),
            Some(VersionEntry {
                id: 1,
                deleted: false
            })
        );
        // The winner's record re-appended (as a losing writer does) changes nothing.
        assert_eq!(
            st.apply(&key("s", 1), Some(&value("s", 1, 1, A, false))),
            Applied::Accepted
        );
        assert_eq!(
            st.entry("s", 1),
            Some(VersionEntry {
                id: 1,
                deleted: false
            })
        );
    }

    #[test]
    fn the_first_claim_on_an_id_wins_and_equal_schemas_share_an_id() {
        let mut st = State::default();
        st.apply(&key("s1", 1), Some(&value("s1", 1, 1, A, false)));
        assert_eq!(
            st.apply(&key("s2", 1), Some(&value("s2", 1, 1, B, false))),
            Applied::Rejected
        );
        assert_eq!(
            st.apply(&key("s2", 1), Some(&value("s2", 1, 2, A, false))),
            Applied::Rejected,
            "A already has id 1"
        );
        assert_eq!(
            st.apply(&key("s2", 1), Some(&value("s2", 1, 1, A_SPACED, false))),
            Applied::Accepted
        );
        assert_eq!(
            st.usages(1, false),
            vec![("s1".into(), 1), ("s2".into(), 1)]
        );
        assert_eq!(st.next_id(), 2);
    }

    #[test]
    fn soft_and_hard_deletes() {
        let mut st = State::default();
        st.apply(&key("s", 1), Some(&value("s", 1, 1, A, false)));
        st.apply(&key("s", 1), Some(&value("s", 1, 1, A, true)));
        assert_eq!(st.subjects(false), Vec::<String>::new());
        assert_eq!(st.subjects(true), vec!["s".to_string()]);
        st.apply(&key("s", 1), None);
        assert!(st.versions("s").is_none());
        assert!(st.schema(1).is_none(), "an id no version uses is gone");
    }

    #[test]
    fn config_records_set_and_unset_levels() {
        let mut st = State::default();
        let global = serde_json::to_vec(&RecordKey::config(None)).expect("json");
        let subj = serde_json::to_vec(&RecordKey::config(Some("s"))).expect("json");
        st.apply(&global, Some(br#"{"compatibilityLevel":"FULL"}"#));
        st.apply(&subj, Some(br#"{"compatibilityLevel":"NONE"}"#));
        assert_eq!(st.global_level(), Some(Level::Full));
        assert_eq!(st.subject_level("s"), Some(Level::None));
        st.apply(&subj, None);
        assert_eq!(st.subject_level("s"), None);
    }

    #[test]
    fn unreadable_records_are_ignored() {
        let mut st = State::default();
        assert_eq!(st.apply(b"not json", Some(b"{}")), Applied::Ignored);
        assert_eq!(
            st.apply(br#"{"keytype":"NOOP","magic":0}"#, None),
            Applied::Ignored
        );
        assert_eq!(st.apply(&key("s", 1), Some(b"{broken")), Applied::Ignored);
    }
}

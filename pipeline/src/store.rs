//! Key-value state stores. Each task (input partition) has its own copy of each store; every
//! write is also a record on the store's compacted changelog topic, from which the store is
//! restored when the partition is assigned.
//!
//! Keys are strings. Values are of the type the topology declares for the store
//! ([`crate::Topology::store`]), kept exactly as the changelog carries them: Avro in the
//! Confluent wire format, with the id of the store's schema as registered under
//! `<changelog topic>-value`. So Confluent's deserializer reads a changelog like any topic,
//! and the registry checks a change of the store's type for compatibility.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use switchyard_schemas::wire::{split_frame, SchemaCodec};

use crate::ProcessError;

/// How one store's values are written: the declared type, its schema and registered id.
#[derive(Debug, Clone)]
pub(crate) struct StoreCodec {
    pub name: String,
    pub type_name: &'static str,
    pub id: i32,
    pub codec: Arc<SchemaCodec>,
}

/// One store of one task.
#[derive(Debug, Clone)]
pub struct KeyValueStore {
    codec: Arc<StoreCodec>,
    data: BTreeMap<String, Vec<u8>>,
    /// Writes made by the record being processed; applied only if it succeeds.
    staged: HashMap<String, Option<Vec<u8>>>,
}

impl KeyValueStore {
    pub(crate) fn new(codec: Arc<StoreCodec>) -> Self {
        KeyValueStore {
            codec,
            data: BTreeMap::new(),
            staged: HashMap::new(),
        }
    }

    fn raw(&self, key: &str) -> Option<&[u8]> {
        match self.staged.get(key) {
            Some(staged) => staged.as_deref(),
            None => self.data.get(key).map(Vec::as_slice),
        }
    }

    fn check_type<V>(&self) -> Result<(), ProcessError> {
        let asked = std::any::type_name::<V>();
        if asked == self.codec.type_name {
            return Ok(());
        }
        Err(ProcessError::failed(format!(
            "store {} holds {}, not {asked}",
            self.codec.name, self.codec.type_name
        )))
    }

    pub fn get<V: DeserializeOwned>(&self, key: &str) -> Result<Option<V>, ProcessError> {
        self.check_type::<V>()?;
        let Some(bytes) = self.raw(key) else {
            return Ok(None);
        };
        let unreadable = |e: String| {
            ProcessError::failed(format!(
                "store {} value for {key:?} unreadable: {e}",
                self.codec.name
            ))
        };
        let (id, body) = split_frame(bytes).map_err(unreadable)?;
        if id != self.codec.id {
            return Err(unreadable(format!(
                "written with schema id {id}, the store's is {}",
                self.codec.id
            )));
        }
        self.codec.codec.decode(body).map(Some).map_err(unreadable)
    }

    pub fn put<V: Serialize>(&mut self, key: &str, value: &V) -> Result<(), ProcessError> {
        self.check_type::<V>()?;
        let bytes = self
            .codec
            .codec
            .encode(self.codec.id, value)
            .map_err(|e| ProcessError::failed(format!("store {}: {e}", self.codec.name)))?;
        self.staged.insert(key.to_string(), Some(bytes));
        Ok(())
    }

    /// Delete `key`. Deleting a key the store does not hold writes nothing (no tombstone).
    pub fn delete(&mut self, key: &str) {
        if self.data.contains_key(key) {
            self.staged.insert(key.to_string(), None);
        } else {
            self.staged.remove(key);
        }
    }

    /// Every entry, in key order (staged writes included).
    pub fn entries<V: DeserializeOwned>(&self) -> Result<Vec<(String, V)>, ProcessError> {
        let mut keys: Vec<&String> = self.data.keys().chain(self.staged.keys()).collect();
        keys.sort();
        keys.dedup();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(v) = self.get::<V>(key)? {
                out.push((key.clone(), v));
            }
        }
        Ok(out)
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Apply the staged writes; returns them as changelog entries.
    pub(crate) fn commit(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        let mut changes: Vec<(String, Option<Vec<u8>>)> = self.staged.drain().collect();
        changes.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, value) in &changes {
            match value {
                Some(v) => self.data.insert(key.clone(), v.clone()),
                None => self.data.remove(key),
            };
        }
        changes
    }

    pub(crate) fn discard(&mut self) {
        self.staged.clear();
    }

    /// Apply one changelog record while restoring (already in the store's current schema).
    pub(crate) fn restore(&mut self, key: String, value: Option<Vec<u8>>) {
        match value {
            Some(v) => self.data.insert(key, v),
            None => self.data.remove(&key),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_schemas::records::StoreValue;

    fn store_of<V: StoreValue>(id: i32) -> KeyValueStore {
        KeyValueStore::new(Arc::new(StoreCodec {
            name: "s".into(),
            type_name: std::any::type_name::<V>(),
            id,
            codec: SchemaCodec::parse(V::avro_schema()).expect("schema"),
        }))
    }

    #[test]
    fn staged_writes_are_visible_and_apply_only_on_commit() {
        let mut store = store_of::<i32>(7);
        store.put("a", &1).expect("put");
        assert_eq!(store.get::<i32>("a"), Ok(Some(1)));
        store.discard();
        assert_eq!(store.get::<i32>("a"), Ok(None));
        store.put("a", &2).expect("put");
        store.put("b", &3).expect("put");
        store.delete("b");
        store.delete("never-written");
        let changes = store.commit();
        // Values are Confluent frames: magic byte, schema id 7, Avro int 2 (zig-zag 4).
        assert_eq!(
            changes,
            vec![("a".into(), Some(vec![0, 0, 0, 0, 7, 4]))],
            "b was written and deleted within one record: nothing to log; nor for a key never held"
        );
        store.delete("a");
        assert_eq!(store.commit(), vec![("a".into(), None)]);
        assert_eq!(store.entries::<i32>(), Ok(vec![]));
    }

    #[test]
    fn restore_replays_a_changelog() {
        let mut store = store_of::<i32>(7);
        store.restore("x".into(), Some(vec![0, 0, 0, 0, 7, 2]));
        store.restore("y".into(), Some(vec![0, 0, 0, 0, 7, 4]));
        store.restore("x".into(), None);
        assert_eq!(store.entries::<i32>(), Ok(vec![("y".into(), 2)]));
    }

    #[test]
    fn another_type_than_the_declared_one_is_refused() {
        let mut store = store_of::<i64>(1);
        let err = store.put("a", &"text".to_string()).expect_err("wrong type");
        assert!(
            err.to_string()
                .contains("holds i64, not alloc::string::String"),
            "{err}"
        );
        assert!(store.get::<i32>("a").is_err());
    }
}

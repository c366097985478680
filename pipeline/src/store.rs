//! Key-value state stores. Each task (input partition) has its own copy of each store; every
//! write is also a record on the store's compacted changelog topic, from which the store is
//! restored when the partition is assigned.
//!
//! Values are JSON (internal topics, read only by the framework); keys are strings.

use std::collections::{BTreeMap, HashMap};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ProcessError;

/// One store of one task.
#[derive(Debug, Default, Clone)]
pub struct KeyValueStore {
    data: BTreeMap<String, Vec<u8>>,
    /// Writes made by the record being processed; applied only if it succeeds.
    staged: HashMap<String, Option<Vec<u8>>>,
}

impl KeyValueStore {
    fn raw(&self, key: &str) -> Option<&[u8]> {
        match self.staged.get(key) {
            Some(staged) => staged.as_deref(),
            None => self.data.get(key).map(Vec::as_slice),
        }
    }

    pub fn get<V: DeserializeOwned>(&self, key: &str) -> Result<Option<V>, ProcessError> {
        self.raw(key)
            .map(|bytes| {
                serde_json::from_slice(bytes).map_err(|e| {
                    ProcessError::failed(format!("store value for {key:?} unreadable: {e}"))
                })
            })
            .transpose()
    }

    pub fn put<V: Serialize>(&mut self, key: &str, value: &V) -> Result<(), ProcessError> {
        let bytes = serde_json::to_vec(value).map_err(ProcessError::failed)?;
        self.staged.insert(key.to_string(), Some(bytes));
        Ok(())
    }

    pub fn delete(&mut self, key: &str) {
        self.staged.insert(key.to_string(), None);
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

    /// Apply one changelog record while restoring.
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

    #[test]
    fn staged_writes_are_visible_and_apply_only_on_commit() {
        let mut store = KeyValueStore::default();
        store.put("a", &1).expect("put");
        assert_eq!(store.get::<i32>("a"), Ok(Some(1)));
        store.discard();
        assert_eq!(store.get::<i32>("a"), Ok(None));
        store.put("a", &2).expect("put");
        store.put("b", &3).expect("put");
        store.delete("b");
        let changes = store.commit();
        assert_eq!(
            changes,
            vec![("a".into(), Some(b"2".to_vec())), ("b".into(), None)]
        );
        assert_eq!(store.entries::<i32>(), Ok(vec![("a".into(), 2)]));
    }

    #[test]
    fn restore_replays_a_changelog() {
        let mut store = KeyValueStore::default();
        store.restore("x".into(), Some(b"1".to_vec()));
        store.restore("y".into(), Some(b"2".to_vec()));
        store.restore("x".into(), None);
        assert_eq!(store.entries::<i32>(), Ok(vec![("y".into(), 2)]));
    }
}

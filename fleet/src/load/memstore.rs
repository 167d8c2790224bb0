//! An in-memory [`Store`] for simulated agents: the real outbox and link run on it, without ten thousand sled
//! databases (each with its own files and flusher thread) on the load generator's machine.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Mutex;

use outpost_common::store::{Entry, Store, StoreError, Write};

type Tree = BTreeMap<Vec<u8>, Vec<u8>>;

/// Named ordered trees in memory; `flush` has nothing to make durable.
#[derive(Debug, Default)]
pub struct MemStore {
    trees: Mutex<HashMap<String, Tree>>,
}

impl MemStore {
    fn with<T>(&self, tree: &str, f: impl FnOnce(&mut Tree) -> T) -> T {
        let mut trees = self.trees.lock().unwrap_or_else(|p| p.into_inner());
        f(trees.entry(tree.to_string()).or_default())
    }
}

fn range(tree: &Tree, start: Bound<Vec<u8>>, prefix: &[u8], limit: usize) -> Vec<Entry> {
    tree.range((start, Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(prefix))
        .take(limit)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl Store for MemStore {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.with(tree, |t| t.get(key).cloned()))
    }

    fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.with(tree, |t| t.insert(key.to_vec(), value.to_vec()));
        Ok(())
    }

    fn remove(&self, tree: &str, key: &[u8]) -> Result<(), StoreError> {
        self.with(tree, |t| t.remove(key));
        Ok(())
    }

    fn scan(&self, tree: &str, after: Option<&[u8]>, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let start = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_vec()));
        Ok(self.with(tree, |t| range(t, start, &[], limit)))
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn compare_and_swap(
        &self,
        tree: &str,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        Ok(self.with(tree, |t| {
            if t.get(key).map(Vec::as_slice) != old {
                return false;
            }
            match new {
                Some(v) => t.insert(key.to_vec(), v.to_vec()),
                None => t.remove(key),
            };
            true
        }))
    }

    fn scan_prefix(
        &self,
        tree: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after.to_vec()),
            _ => Bound::Included(prefix.to_vec()),
        };
        Ok(self.with(tree, |t| range(t, start, prefix, limit)))
    }

    /// Atomic: every write happens under the one lock.
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        let mut trees = self.trees.lock().unwrap_or_else(|p| p.into_inner());
        for w in writes {
            let tree = trees.entry(w.tree.to_string()).or_default();
            match &w.value {
                Some(v) => tree.insert(w.key.clone(), v.clone()),
                None => tree.remove(&w.key),
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_and_swaps_like_the_sled_store() {
        let s = MemStore::default();
        for k in [b"a1", b"a2", b"b1"] {
            s.put("t", k, b"v").expect("put");
        }
        let keys = |e: Vec<Entry>| e.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(keys(s.scan("t", Some(b"a1"), 10).expect("scan")), vec![b"a2".to_vec(), b"b1".to_vec()]);
        assert_eq!(keys(s.scan_prefix("t", b"a", None, 10).expect("scan")), vec![b"a1".to_vec(), b"a2".to_vec()]);
        assert_eq!(keys(s.scan_prefix("t", b"a", Some(b"a1"), 10).expect("scan")), vec![b"a2".to_vec()]);
        assert!(!s.compare_and_swap("t", b"a1", None, Some(b"w")).expect("cas"));
        assert!(s.compare_and_swap("t", b"a1", Some(b"v"), None).expect("cas"));
        assert_eq!(s.get("t", b"a1").expect("get"), None);
    }
}

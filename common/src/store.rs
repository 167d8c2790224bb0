//! Local state: named trees of ordered byte keys, behind the [`Store`] trait — the agent's outbox and the fleet's
//! registry, time series and queues.
//!
//! Design: the rest of the code sees only [`Store`] (get/put/remove/scan per tree, plus an explicit durable
//! [`Store::flush`]); [`SledStore`] is the default implementation and this is the only file that imports `sled`.
//! Writes are buffered in memory until `flush` returns (sled flushes on its own every 500 ms too); callers that need
//! durability group their writes and flush once (see the outbox's group commit). Keys are compared as bytes, so
//! big-endian integers keep numeric order.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sled::Transactional;

/// Why the store refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {detail} (is another process using it?)")]
    Open { path: PathBuf, detail: String },
    #[error("store I/O failed: {0}")]
    Io(String),
}

/// One key/value pair read from a tree.
pub type Entry = (Vec<u8>, Vec<u8>);

/// One write of an atomic batch ([`Store::apply`]): set `key` of `tree` to `value`, or remove it for `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub tree: &'static str,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// Ordered key/value trees with explicit durability.
pub trait Store: Send + Sync + fmt::Debug + 'static {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Removes a key; removing an absent key is not an error.
    fn remove(&self, tree: &str, key: &[u8]) -> Result<(), StoreError>;
    /// Up to `limit` entries in key order, starting strictly after `after` (or at the first key).
    fn scan(&self, tree: &str, after: Option<&[u8]>, limit: usize) -> Result<Vec<Entry>, StoreError>;
    /// Makes every write so far durable (fsync). Blocking: call it from a blocking context in async code.
    fn flush(&self) -> Result<(), StoreError>;
    /// Sets `key` to `new` (or removes it, for `None`) only if its value is `old` (`None`: absent). Returns whether
    /// it did: the building block for leases and claims that two callers must not both win.
    fn compare_and_swap(
        &self,
        tree: &str,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StoreError>;
    /// Up to `limit` entries whose keys start with `prefix`, in key order, strictly after `after` when given.
    fn scan_prefix(
        &self,
        tree: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError>;
    /// Applies every write, in order, over any number of trees, atomically: after a crash either all of them are
    /// in the store or none is (once durable, as any write: see [`Store::flush`]).
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError>;
}

/// The sled-backed store. One process per path: a second open of the same path fails.
pub struct SledStore {
    db: sled::Db,
    path: PathBuf,
    trees: RwLock<HashMap<String, sled::Tree>>,
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (or creates) the store in the directory `path`.
    pub fn open(path: &Path) -> Result<Arc<SledStore>, StoreError> {
        let open_error = |e: &dyn fmt::Display| StoreError::Open { path: path.to_path_buf(), detail: e.to_string() };
        std::fs::create_dir_all(path).map_err(|e| open_error(&e))?;
        // sled's own background flush stays on (500 ms) as a backstop; durability points are explicit flushes.
        let db = sled::Config::new().path(path).open().map_err(|e| open_error(&e))?;
        if db.was_recovered() {
            tracing::debug!(path = %path.display(), "store reopened");
        }
        Ok(Arc::new(SledStore { db, path: path.to_path_buf(), trees: RwLock::new(HashMap::new()) }))
    }

    fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        if let Some(tree) = self.trees.read().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Ok(tree.clone());
        }
        let tree = self.db.open_tree(name).map_err(io)?;
        self.trees.write().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), tree.clone());
        Ok(tree)
    }
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

impl Store for SledStore {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree(tree)?.get(key).map_err(io)?.map(|v| v.to_vec()))
    }

    fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.tree(tree)?.insert(key, value).map_err(io)?;
        Ok(())
    }

    fn remove(&self, tree: &str, key: &[u8]) -> Result<(), StoreError> {
        self.tree(tree)?.remove(key).map_err(io)?;
        Ok(())
    }

    fn scan(&self, tree: &str, after: Option<&[u8]>, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let tree = self.tree(tree)?;
        let iter = match after {
            Some(after) => tree.range::<&[u8], _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => tree.iter(),
        };
        iter.take(limit).map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(io)).collect()
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(io)?;
        Ok(())
    }

    fn compare_and_swap(
        &self,
        tree: &str,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        Ok(self.tree(tree)?.compare_and_swap(key, old, new).map_err(io)?.is_ok())
    }

    fn scan_prefix(
        &self,
        tree: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let tree = self.tree(tree)?;
        let start = match after {
            Some(after) if after >= prefix => std::ops::Bound::Excluded(after.to_vec()),
            _ => std::ops::Bound::Included(prefix.to_vec()),
        };
        tree.range((start, std::ops::Bound::Unbounded))
            .take_while(|r| r.as_ref().map_or(true, |(k, _)| k.starts_with(prefix)))
            .take(limit)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(io))
            .collect()
    }

    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        if writes.is_empty() {
            // sled's transaction over no trees panics.
            return Ok(());
        }
        let mut names: Vec<&str> = writes.iter().map(|w| w.tree).collect();
        names.sort_unstable();
        names.dedup();
        let trees = names.iter().map(|n| self.tree(n)).collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&sled::Tree> = trees.iter().collect();
        let result = refs.as_slice().transaction(|trees| {
            for w in writes {
                // `names` holds every write's tree, so the search always finds it.
                let Ok(i) = names.binary_search(&w.tree) else { continue };
                match &w.value {
                    Some(v) => trees[i].insert(w.key.as_slice(), v.as_slice())?,
                    None => trees[i].remove(w.key.as_slice())?,
                };
            }
            Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
        });
        result.map_err(|e| StoreError::Io(format!("{e:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_scan_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = SledStore::open(dir.path()).expect("open");
            for n in [3u64, 1, 2, 10] {
                store.put("t", &n.to_be_bytes(), format!("v{n}").as_bytes()).expect("put");
            }
            store.put("other", b"k", b"x").expect("put");
            store.remove("t", &2u64.to_be_bytes()).expect("remove");
            store.remove("t", &99u64.to_be_bytes()).expect("absent remove is fine");
            store.flush().expect("flush");
        }
        let store = SledStore::open(dir.path()).expect("reopen");
        let all = store.scan("t", None, 10).expect("scan");
        let values: Vec<&[u8]> = all.iter().map(|(_, v)| v.as_slice()).collect();
        assert_eq!(values, [b"v1".as_slice(), b"v3", b"v10"]);
        let after = store.scan("t", Some(&1u64.to_be_bytes()), 1).expect("scan");
        assert_eq!(after, vec![(3u64.to_be_bytes().to_vec(), b"v3".to_vec())]);
        assert_eq!(store.get("other", b"k").expect("get"), Some(b"x".to_vec()));
        assert_eq!(store.get("t", b"missing").expect("get"), None);
    }

    #[test]
    fn compare_and_swap_lets_one_caller_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        assert!(store.compare_and_swap("t", b"k", None, Some(b"a")).expect("cas"));
        assert!(!store.compare_and_swap("t", b"k", None, Some(b"b")).expect("cas"), "already set");
        assert!(store.compare_and_swap("t", b"k", Some(b"a"), Some(b"c")).expect("cas"));
        assert!(store.compare_and_swap("t", b"k", Some(b"c"), None).expect("cas"));
        assert_eq!(store.get("t", b"k").expect("get"), None);
    }

    #[test]
    fn prefix_scans_stay_inside_the_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        for k in ["a/1", "a/2", "a/3", "b/1", "a"] {
            store.put("t", k.as_bytes(), b"").expect("put");
        }
        let keys = |v: Vec<Entry>| v.into_iter().map(|(k, _)| String::from_utf8(k).expect("utf-8")).collect::<Vec<_>>();
        assert_eq!(keys(store.scan_prefix("t", b"a/", None, 10).expect("scan")), ["a/1", "a/2", "a/3"]);
        assert_eq!(keys(store.scan_prefix("t", b"a/", Some(b"a/1"), 1).expect("scan")), ["a/2"]);
        assert_eq!(keys(store.scan_prefix("t", b"c/", None, 10).expect("scan")), Vec::<String>::new());
    }

    #[test]
    fn a_batch_over_several_trees_is_applied_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = SledStore::open(dir.path()).expect("open");
            store.put("b", b"gone", b"x").expect("put");
            let w = |tree, key: &[u8], value: Option<&[u8]>| Write {
                tree,
                key: key.to_vec(),
                value: value.map(<[u8]>::to_vec),
            };
            let batch = [
                w("a", b"k1", Some(b"1")),
                w("b", b"k2", Some(b"2")),
                w("b", b"gone", None),
                w("a", b"k1", Some(b"3")),
            ];
            store.apply(&batch).expect("apply");
            store.apply(&[]).expect("an empty batch");
            store.flush().expect("flush");
        }
        let store = SledStore::open(dir.path()).expect("reopen");
        assert_eq!(store.get("a", b"k1").expect("get"), Some(b"3".to_vec()), "the later write of a key wins");
        assert_eq!(store.get("b", b"k2").expect("get"), Some(b"2".to_vec()));
        assert_eq!(store.get("b", b"gone").expect("get"), None);
    }

    #[test]
    fn second_open_of_the_same_path_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = SledStore::open(dir.path()).expect("open");
        let second = SledStore::open(dir.path());
        assert!(matches!(second, Err(StoreError::Open { .. })), "{second:?}");
    }
}

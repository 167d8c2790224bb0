//! JSON records in the store: read, write, update under compare-and-swap, and paged prefix scans.
//!
//! Design: every read-modify-write goes through [`update`], a compare-and-swap loop, so concurrent `ingest` calls
//! (several MQTT tasks, or replicas sharing a store that supports it) never lose an update and need no lock.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::IngestError;
use outpost_common::store::Store;

/// Attempts before an update gives up (each failed attempt means another writer changed the record meanwhile).
const ATTEMPTS: usize = 64;
/// Entries read per scan page.
pub(crate) const PAGE: usize = 256;

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, IngestError> {
    serde_json::from_slice(bytes).map_err(|e| IngestError::Corrupt { what, detail: e.to_string() })
}

pub(crate) fn encode<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>, IngestError> {
    serde_json::to_vec(value).map_err(|e| IngestError::Corrupt { what, detail: format!("cannot encode: {e}") })
}

pub(crate) fn get<T: DeserializeOwned>(
    store: &dyn Store,
    tree: &str,
    key: &[u8],
    what: &'static str,
) -> Result<Option<T>, IngestError> {
    store.get(tree, key)?.map(|b| decode(&b, what)).transpose()
}

pub(crate) fn put<T: Serialize>(
    store: &dyn Store,
    tree: &str,
    key: &[u8],
    value: &T,
    what: &'static str,
) -> Result<(), IngestError> {
    Ok(store.put(tree, key, &encode(value, what)?)?)
}

/// What an update does to the record.
pub(crate) enum Change<T> {
    Keep,
    Put(T),
}

/// Reads the record, lets `f` decide, and writes the decision only if nobody changed the record meanwhile
/// (otherwise reads again and asks `f` again: `f` must not have effects outside its return value).
pub(crate) fn update<T, R>(
    store: &dyn Store,
    tree: &str,
    key: &[u8],
    what: &'static str,
    mut f: impl FnMut(Option<T>) -> Result<(Change<T>, R), IngestError>,
) -> Result<R, IngestError>
where
    T: Serialize + DeserializeOwned,
{
    for _ in 0..ATTEMPTS {
        let old = store.get(tree, key)?;
        let current = old.as_deref().map(|b| decode(b, what)).transpose()?;
        let (change, result) = f(current)?;
        let Change::Put(value) = change else {
            return Ok(result);
        };
        let new = encode(&value, what)?;
        if store.compare_and_swap(tree, key, old.as_deref(), Some(&new))? {
            return Ok(result);
        }
    }
    Err(IngestError::Contention(what))
}

/// Visits the entries under `prefix` in key order, strictly after `after` when given, a page at a time, until
/// `visit` returns false.
pub(crate) fn scan(
    store: &dyn Store,
    tree: &str,
    prefix: &[u8],
    after: Option<Vec<u8>>,
    mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool, IngestError>,
) -> Result<(), IngestError> {
    let mut after = after;
    loop {
        let page = store.scan_prefix(tree, prefix, after.as_deref(), PAGE)?;
        let full = page.len() == PAGE;
        for (key, value) in &page {
            if !visit(key, value)? {
                return Ok(());
            }
        }
        match page.into_iter().last() {
            Some((key, _)) if full => after = Some(key),
            _ => return Ok(()),
        }
    }
}

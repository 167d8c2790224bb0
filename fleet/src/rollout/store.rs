//! Rollouts in the fleet's store: each header and each device record as JSON, the latest rollout of each device,
//! and the id counter. Every change the state machine reports is written here (and flushed) before the engine
//! acts on it.

use std::collections::BTreeMap;

use outpost_common::store::{Store, StoreError};

use super::machine::{DeviceRollout, Header, Rollout};

const HEADERS: &str = "rollouts/headers";
const DEVICES: &str = "rollouts/devices";
const LATEST: &str = "rollouts/latest";
const COUNTER: &str = "rollouts/counter";

#[derive(Debug, thiserror::Error)]
pub enum RolloutStoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored rollout record `{key}` is unreadable: {detail}")]
    Corrupt { key: String, detail: String },
}

fn device_key(rollout: &str, device: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(rollout.len() + device.len() + 1);
    k.extend_from_slice(rollout.as_bytes());
    k.push(0);
    k.extend_from_slice(device.as_bytes());
    k
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Our own plain data types (strings, numbers, maps with string keys): serialising cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn parse<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, RolloutStoreError> {
    serde_json::from_slice(bytes).map_err(|e| RolloutStoreError::Corrupt {
        key: String::from_utf8_lossy(key).replace('\0', "/"),
        detail: e.to_string(),
    })
}

/// The next rollout id (`r1`, `r2`, …), never reused.
pub fn next_id(store: &dyn Store) -> Result<String, RolloutStoreError> {
    loop {
        let old = store.get(COUNTER, b"next")?;
        let n = old.as_deref().and_then(|b| <[u8; 8]>::try_from(b).ok()).map_or(1, u64::from_be_bytes);
        if store.compare_and_swap(COUNTER, b"next", old.as_deref(), Some(&(n + 1).to_be_bytes()))? {
            return Ok(format!("r{n}"));
        }
    }
}

pub fn put_header(store: &dyn Store, header: &Header) -> Result<(), RolloutStoreError> {
    Ok(store.put(HEADERS, header.id.as_bytes(), &json(header))?)
}

pub fn put_device(store: &dyn Store, rollout: &str, device: &str, d: &DeviceRollout) -> Result<(), RolloutStoreError> {
    Ok(store.put(DEVICES, &device_key(rollout, device), &json(d))?)
}

pub fn set_latest(store: &dyn Store, device: &str, rollout: &str) -> Result<(), RolloutStoreError> {
    Ok(store.put(LATEST, device.as_bytes(), rollout.as_bytes())?)
}

/// Writes a whole new rollout: header, devices, and each device's latest rollout.
pub fn put_new(store: &dyn Store, rollout: &Rollout) -> Result<(), RolloutStoreError> {
    for (id, d) in &rollout.devices {
        put_device(store, rollout.id(), id, d)?;
        set_latest(store, id, rollout.id())?;
    }
    put_header(store, &rollout.header)
}

/// Writes what `changes` names.
pub fn put_changes(store: &dyn Store, rollout: &Rollout, changes: &super::Changes) -> Result<(), RolloutStoreError> {
    for id in &changes.devices {
        if let Some(d) = rollout.devices.get(id) {
            put_device(store, rollout.id(), id, d)?;
        }
    }
    if changes.header {
        put_header(store, &rollout.header)?;
    }
    Ok(())
}

const PAGE: usize = 1024;

/// Every stored rollout with its devices.
pub fn load_all(store: &dyn Store) -> Result<Vec<Rollout>, RolloutStoreError> {
    let mut headers = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.scan(HEADERS, after.as_deref(), PAGE)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (k, v) in &page {
            headers.push(parse::<Header>(k, v)?);
        }
    }
    let mut out = Vec::with_capacity(headers.len());
    for header in headers {
        let mut prefix = header.id.as_bytes().to_vec();
        prefix.push(0);
        let mut devices = BTreeMap::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = store.scan_prefix(DEVICES, &prefix, after.as_deref(), PAGE)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (k, v) in &page {
                let device = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                devices.insert(device, parse::<DeviceRollout>(k, v)?);
            }
        }
        out.push(Rollout { header, devices });
    }
    Ok(out)
}

/// Each device's latest rollout.
pub fn load_latest(store: &dyn Store) -> Result<BTreeMap<String, String>, RolloutStoreError> {
    let mut out = BTreeMap::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.scan(LATEST, after.as_deref(), PAGE)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (k, v) in page {
            out.insert(String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&v).into_owned());
        }
    }
    Ok(out)
}

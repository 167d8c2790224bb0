//! What ingest needs to know about devices, and from whom: their keys and tags, through [`DeviceDirectory`] (the
//! device registry implements it), so ingest holds no secret and no enrollment state of its own.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::RwLock;

use outpost_common::protocol::auth::{DeviceKey, derive_device_key};
use outpost_common::topics::DeviceId;

/// Device tags, `key=value`, used for grouping (drift, aggregates).
pub type Tags = BTreeMap<String, String>;

/// The device registry, as ingest sees it. Called once per message: keep it cheap (in memory).
pub trait DeviceDirectory: Send + Sync + fmt::Debug {
    /// The device's message-authentication key; `None` for an unknown or revoked device (its messages are dropped).
    fn key(&self, device: &DeviceId) -> Option<DeviceKey>;
    /// The device's tags; empty for an unknown device.
    fn tags(&self, device: &DeviceId) -> Tags;
}

/// A directory in memory, with keys derived from one master secret as enrollment does
/// (`HMAC-SHA256(master, "outpost-device-key:" + id)`): for tests, demos and single-process set-ups.
pub struct MasterKeyDirectory {
    master: Vec<u8>,
    devices: RwLock<BTreeMap<DeviceId, Tags>>,
}

impl fmt::Debug for MasterKeyDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.devices.read().map_or(0, |d| d.len());
        f.debug_struct("MasterKeyDirectory").field("devices", &count).finish_non_exhaustive()
    }
}

impl MasterKeyDirectory {
    pub fn new(master: &[u8]) -> MasterKeyDirectory {
        MasterKeyDirectory { master: master.to_vec(), devices: RwLock::new(BTreeMap::new()) }
    }

    /// Enrolls (or re-tags) a device.
    pub fn enroll(&self, device: DeviceId, tags: Tags) {
        self.devices.write().unwrap_or_else(|p| p.into_inner()).insert(device, tags);
    }

    /// Revokes a device: its messages are dropped as `unknown_device` from now on.
    pub fn revoke(&self, device: &DeviceId) {
        self.devices.write().unwrap_or_else(|p| p.into_inner()).remove(device);
    }
}

impl DeviceDirectory for MasterKeyDirectory {
    fn key(&self, device: &DeviceId) -> Option<DeviceKey> {
        let known = self.devices.read().unwrap_or_else(|p| p.into_inner()).contains_key(device);
        known.then(|| derive_device_key(&self.master, device))
    }

    fn tags(&self, device: &DeviceId) -> Tags {
        self.devices.read().unwrap_or_else(|p| p.into_inner()).get(device).cloned().unwrap_or_default()
    }
}

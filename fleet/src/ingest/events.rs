//! The per-device event log: events by `device | seq`, the newest [`super::IngestConfig::event_log`] kept.
//!
//! Design: the key is the seq, so storing a redelivered event again is a no-op. The log's length lives in the
//! device's tally (counted once per seq, with the de-duplication mark); when it passes the cap, the oldest events
//! (lowest seqs) are deleted right away, so the log stays bounded between compactions.

use outpost_common::protocol::Event;
use outpost_common::store::Store;
use outpost_common::topics::DeviceId;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::error::IngestError;
use super::record;
use super::{EVENTS, keys};

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredEvent {
    pub device: DeviceId,
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    pub event: Event,
}

pub(crate) fn put(store: &dyn Store, stored: &StoredEvent) -> Result<(), IngestError> {
    record::put(store, EVENTS, &keys::event(&stored.device, stored.seq), stored, "event")
}

/// Deletes the `count` oldest events of the device; returns how many it deleted.
pub(crate) fn trim(store: &dyn Store, device: &DeviceId, count: u64) -> Result<u64, IngestError> {
    let prefix = keys::device(device);
    let mut removed = 0u64;
    while removed < count {
        let want = usize::try_from(count - removed).unwrap_or(usize::MAX).min(record::PAGE);
        let page = store.scan_prefix(EVENTS, &prefix, None, want)?;
        if page.is_empty() {
            break;
        }
        for (key, _) in page {
            store.remove(EVENTS, &key)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The device's events with a seq above `after`, oldest first, at most `limit`.
pub(crate) fn list(
    store: &dyn Store,
    device: &DeviceId,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<StoredEvent>, IngestError> {
    let prefix = keys::device(device);
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    record::scan(store, EVENTS, &prefix, after.map(|seq| keys::event(device, seq)), |_, value| {
        match record::decode::<StoredEvent>(value, "event") {
            Ok(e) => out.push(e),
            Err(e) => tracing::warn!(device = %device, error = %e, "skipping an unreadable event"),
        }
        Ok(out.len() < limit)
    })?;
    Ok(out)
}

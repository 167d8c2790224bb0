//! Per-device state: the de-duplication window with the device's totals (one record, so a seq is marked and
//! counted in the same atomic write; kept up to date by [`super::hot`]), and the last status (online/offline, agent
//! version, models, health).
//!
//! Status ordering: a status is applied in arrival order unless it is older, by its own `at`, than the newest status
//! applied so far — a replayed old status. A last will is the exception: the agent registers it at connect, so its
//! `at` is the connect-time status's and usually older than later status changes; an `offline` status is therefore
//! always applied, but when it is older than the newest status it only changes the state: the models, agent version
//! and family stay those of the newer status (a device that swapped to v2 and then lost its connection still shows
//! v2, not the v1 its will was written with). (A device whose clock jumps back has its statuses refused until its clock passes the newest `at`
//! again; its telemetry is unaffected.)

use std::collections::BTreeMap;

use outpost_common::protocol::{AgentState, Status, WindowSummary};
use outpost_common::store::Store;
use outpost_common::topics::DeviceId;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::dedupe::SeqWindow;
use super::error::{DropReason, IngestError};
use super::record::{self, Change};
use super::{STATUS, TALLIES, keys};

/// What a device has sent, counted once per `(device, seq)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Totals {
    /// Window summaries stored.
    pub windows: u64,
    /// Frames processed, as the windows report them.
    pub frames: u64,
    /// Frames dropped on the device, as the windows report them.
    pub drops: u64,
    /// Frames flagged for review, as the windows report them.
    pub flagged: u64,
    /// Per-frame result batches received (counted, not stored: the window summary covers them).
    pub frame_batches: u64,
    /// Events stored.
    pub events: u64,
}

impl Totals {
    pub(crate) fn add_window(&mut self, w: &WindowSummary) {
        self.windows = self.windows.saturating_add(1);
        self.frames = self.frames.saturating_add(w.frames);
        self.drops = self.drops.saturating_add(w.drops);
        self.flagged = self.flagged.saturating_add(w.flagged);
    }
}

/// The de-duplication window and totals of one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Tally {
    pub(crate) seqs: SeqWindow,
    #[serde(with = "time::serde::rfc3339::option")]
    pub(crate) last_seen: Option<OffsetDateTime>,
    pub(crate) totals: Totals,
    /// Events in the device's log (kept at most `event_log`).
    pub(crate) event_log_len: u64,
}

impl Tally {
    pub(crate) fn new(width: u32) -> Tally {
        Tally { seqs: SeqWindow::new(width), last_seen: None, totals: Totals::default(), event_log_len: 0 }
    }
}

/// The last status of a device, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatusRecord {
    status: Status,
    /// The newest `at` of any status applied (a last will's `at` is older than the statuses before it).
    #[serde(with = "time::serde::rfc3339")]
    newest_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    received_at: OffsetDateTime,
    /// When the last status that was not `offline` arrived: the device's own (a will is the broker's).
    #[serde(with = "time::serde::rfc3339::option")]
    seen_at: Option<OffsetDateTime>,
    /// When the device last went online or offline (fleet clock).
    #[serde(with = "time::serde::rfc3339")]
    since: OffsetDateTime,
}

/// What a status message changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusApplied {
    pub state: AgentState,
    pub online: bool,
    /// Whether the device went online or offline with this message.
    pub changed: bool,
}

pub(crate) fn apply_status(
    store: &dyn Store,
    device: &DeviceId,
    status: Status,
    received_at: OffsetDateTime,
) -> Result<Result<StatusApplied, DropReason>, IngestError> {
    record::update(store, STATUS, &keys::device(device), "status", |old: Option<StatusRecord>| {
        let online = status.state != AgentState::Offline;
        if let Some(old) = &old {
            if online && status.at < old.newest_at {
                return Ok((Change::Keep, Err(DropReason::StaleStatus)));
            }
        }
        let was_online = old.as_ref().map(|o| o.status.state != AgentState::Offline);
        let changed = was_online != Some(online);
        let since = match &old {
            Some(o) if !changed => o.since,
            _ => received_at,
        };
        let newest_at = old.as_ref().map_or(status.at, |o| o.newest_at.max(status.at));
        let seen_at = if online { Some(received_at) } else { old.as_ref().and_then(|o| o.seen_at) };
        let status = match &old {
            // A last will was written at connect: what the device reported since (a swap) is newer.
            Some(o) if !online && status.at < o.newest_at => {
                Status { state: AgentState::Offline, health: None, at: status.at, ..o.status.clone() }
            }
            _ => status.clone(),
        };
        let record = StatusRecord { status: status.clone(), newest_at, received_at, seen_at, since };
        let applied = StatusApplied { state: status.state, online, changed };
        Ok((Change::Put(record), Ok(applied)))
    })
}

/// A device as the API lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceView {
    pub device: DeviceId,
    /// From the last status: online unless it said `offline` (or its last will did). False before any status.
    pub online: bool,
    pub state: Option<AgentState>,
    /// Since when the device is online (or offline), fleet clock.
    #[serde(with = "time::serde::rfc3339::option")]
    pub since: Option<OffsetDateTime>,
    /// The last message received from the device itself (a last will, sent by the broker, does not count).
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_seen: Option<OffsetDateTime>,
    /// The last status: agent version, family, models served, health.
    pub status: Option<Status>,
    pub totals: Totals,
}

fn view(device: DeviceId, status: Option<StatusRecord>, tally: Option<Tally>) -> DeviceView {
    let online = status.as_ref().is_some_and(|s| s.status.state != AgentState::Offline);
    let status_seen = status.as_ref().and_then(|s| s.seen_at);
    let tally_seen = tally.as_ref().and_then(|t| t.last_seen);
    DeviceView {
        device,
        online,
        state: status.as_ref().map(|s| s.status.state),
        since: status.as_ref().map(|s| s.since),
        last_seen: status_seen.max(tally_seen),
        totals: tally.as_ref().map(|t| t.totals).unwrap_or_default(),
        status: status.map(|s| s.status),
    }
}

/// One device; `tally` is its tally when the caller holds a newer one than the store's.
pub(crate) fn one(
    store: &dyn Store,
    device: &DeviceId,
    tally: Option<Tally>,
) -> Result<Option<DeviceView>, IngestError> {
    let key = keys::device(device);
    let status: Option<StatusRecord> = record::get(store, STATUS, &key, "status")?;
    let tally = match tally {
        Some(t) => Some(t),
        None => record::get(store, TALLIES, &key, "tally")?,
    };
    if status.is_none() && tally.is_none() {
        return Ok(None);
    }
    Ok(Some(view(device.clone(), status, tally)))
}

/// A device's status and tally records, as found.
type Joined<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// Devices that sent a status or a stored message, in id order, after `after`, at most `limit`.
pub(crate) fn list(store: &dyn Store, after: Option<&DeviceId>, limit: usize) -> Result<Vec<DeviceView>, IngestError> {
    let after = after.map(keys::device);
    // The first `limit` of the union are among the first `limit` of each tree.
    let statuses = store.scan(STATUS, after.as_deref(), limit)?;
    let tallies = store.scan(TALLIES, after.as_deref(), limit)?;
    let mut joined: BTreeMap<&[u8], Joined<'_>> = BTreeMap::new();
    for (k, v) in &statuses {
        joined.entry(k).or_default().0 = Some(v);
    }
    for (k, v) in &tallies {
        joined.entry(k).or_default().1 = Some(v);
    }
    let mut out = Vec::new();
    for (key, (status, tally)) in joined.into_iter().take(limit) {
        let id = key.strip_suffix(&[0]).and_then(|k| std::str::from_utf8(k).ok()).and_then(|s| DeviceId::new(s).ok());
        let Some(id) = id else {
            tracing::warn!(key = ?key, "skipping a device record with an unreadable key");
            continue;
        };
        let status = status.map(|v| record::decode(v, "status")).transpose();
        let tally = tally.map(|v| record::decode(v, "tally")).transpose();
        match (status, tally) {
            (Ok(status), Ok(tally)) => out.push(view(id, status, tally)),
            (Err(e), _) | (_, Err(e)) => tracing::warn!(device = %id, error = %e, "skipping an unreadable device"),
        }
    }
    Ok(out)
}

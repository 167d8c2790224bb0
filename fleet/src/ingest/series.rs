//! The time series: raw window summaries per device and model version, their hourly roll-ups, and the queries
//! over both.
//!
//! Layout (see `keys.rs`): raw windows at `device | model | start | seq`, roll-ups at `device | model | hour`, and an
//! index of series at `model | device`, which aggregates by model version scan and compaction walks.
//!
//! Design: the hourly roll-up is kept up to date as windows arrive (each window is added to the roll-up of the hour
//! its `start` falls in), so an aggregate over months reads one record per device and hour and compaction only
//! deletes. Every write is idempotent, so a message redelivered after a crash between two writes is harmless: the
//! raw window's key is its seq, and a roll-up remembers the last [`RECENT`] seqs added to it and skips them again
//! (only the message in flight at a crash can be redelivered after some of its writes landed).

use std::collections::BTreeMap;

use outpost_common::protocol::{ModelRef, WindowSummary};
use outpost_common::store::Store;
use outpost_common::topics::DeviceId;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::directory::{DeviceDirectory, Tags};
use super::error::IngestError;
use super::keys::{self, HOUR_MS};
use super::record::{self, Change};
use super::rollup::Rollup;
use super::{ROLLUPS, SERIES, WINDOWS};
use crate::drift::DriftGroup;

/// Seqs a roll-up remembers, to add a redelivered window only once.
const RECENT: usize = 32;

/// A half-open time range `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub from: OffsetDateTime,
    pub to: OffsetDateTime,
}

impl TimeRange {
    pub fn new(from: OffsetDateTime, to: OffsetDateTime) -> TimeRange {
        TimeRange { from, to }
    }

    fn ms(&self) -> (i64, i64) {
        (keys::ms(self.from), keys::ms(self.to))
    }
}

/// A window summary as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredWindow {
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    pub window: WindowSummary,
}

/// One hour of one device and model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HourlyRollup {
    #[serde(with = "time::serde::rfc3339")]
    pub hour: OffsetDateTime,
    pub rollup: Rollup,
    /// The hour's raw windows were deleted (older than the raw retention).
    pub raw_expired: bool,
    /// The last seqs added, so a redelivered window is added once. Cleared when the raw windows expire.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    recent: Vec<u64>,
}

impl HourlyRollup {
    /// The hour's raw windows are gone: queries use this roll-up for the hour, and the seqs are no longer needed
    /// (de-duplication itself remembers them).
    pub(crate) fn mark_raw_expired(&mut self) {
        self.raw_expired = true;
        self.recent.clear();
    }
}

/// One entry of the index of series: this device has data of this model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SeriesEntry {
    pub(crate) device: DeviceId,
    pub(crate) model: ModelRef,
}

/// Everything a model version did over a range, over the devices that match the filter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Aggregate {
    pub model: ModelRef,
    /// Devices that contributed at least one window.
    pub devices: u64,
    pub rollup: Rollup,
}

/// Which series an aggregate adds up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AggregateFilter {
    /// One model version; `None`: every version, one aggregate each.
    pub model: Option<ModelRef>,
    /// Only devices in this group (a tag, or the whole fleet).
    pub group: Option<DriftGroup>,
}

/// Stores one window: the raw record, the index entry, the hour's roll-up.
pub(crate) fn store_window(
    store: &dyn Store,
    device: &DeviceId,
    seq: u64,
    window: &WindowSummary,
    received_at: OffsetDateTime,
) -> Result<(), IngestError> {
    let prefix = keys::series(device, &window.model);
    let start = keys::ms(window.start);
    let stored = StoredWindow { seq, received_at, window: window.clone() };
    record::put(store, WINDOWS, &keys::window(&prefix, start, seq), &stored, "window")?;
    let entry = SeriesEntry { device: device.clone(), model: window.model.clone() };
    let index = record::encode(&entry, "series")?;
    // Put-if-absent: the entry never changes once written.
    store.compare_and_swap(SERIES, &keys::series_index(&window.model, device), None, Some(&index))?;
    let hour = keys::hour_of(start);
    record::update(store, ROLLUPS, &keys::timed(&prefix, hour), "rollup", |old: Option<HourlyRollup>| {
        let mut r = old.unwrap_or_else(|| HourlyRollup {
            hour: keys::at(hour),
            rollup: Rollup::default(),
            raw_expired: false,
            recent: Vec::new(),
        });
        if r.recent.contains(&seq) {
            return Ok((Change::Keep, ()));
        }
        r.rollup.add(window);
        if r.recent.len() >= RECENT {
            r.recent.remove(0);
        }
        r.recent.push(seq);
        Ok((Change::Put(r), ()))
    })
}

/// Raw windows of one device and model version whose start lies in the range, oldest first, at most `limit`.
pub(crate) fn windows(
    store: &dyn Store,
    device: &DeviceId,
    model: &ModelRef,
    range: TimeRange,
    limit: usize,
) -> Result<Vec<StoredWindow>, IngestError> {
    let prefix = keys::series(device, model);
    let (from, to) = range.ms();
    let mut out = Vec::new();
    if from >= to || limit == 0 {
        return Ok(out);
    }
    record::scan(store, WINDOWS, &prefix, Some(keys::timed(&prefix, from)), |key, value| {
        if keys::time_after(key, prefix.len()).is_none_or(|t| t >= to) {
            return Ok(false);
        }
        match record::decode::<StoredWindow>(value, "window") {
            Ok(w) => out.push(w),
            Err(e) => tracing::warn!(device = %device, error = %e, "skipping an unreadable window"),
        }
        Ok(out.len() < limit)
    })?;
    Ok(out)
}

/// Hourly roll-ups of one device and model version for the hours that start in `[hour of from, to)`.
pub(crate) fn hourly(
    store: &dyn Store,
    device: &DeviceId,
    model: &ModelRef,
    range: TimeRange,
) -> Result<Vec<HourlyRollup>, IngestError> {
    let prefix = keys::series(device, model);
    let (from, to) = range.ms();
    let mut out = Vec::new();
    // Roll-up keys end with their hour, so the exclusive scan start is the millisecond before the first hour.
    let start = keys::timed(&prefix, keys::hour_of(from).saturating_sub(1));
    record::scan(store, ROLLUPS, &prefix, Some(start), |key, value| {
        if keys::time_after(key, prefix.len()).is_none_or(|t| t >= to) {
            return Ok(false);
        }
        match record::decode::<HourlyRollup>(value, "rollup") {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!(device = %device, error = %e, "skipping an unreadable roll-up"),
        }
        Ok(true)
    })?;
    Ok(out)
}

/// The sum of one device and model version over the range: whole hours from their roll-ups, the partial hours at
/// the edges from the raw windows — or, once those expired, from the roll-up of an edge hour that starts inside
/// the range (old ranges are rounded to whole hours).
pub(crate) fn sum(
    store: &dyn Store,
    device: &DeviceId,
    model: &ModelRef,
    range: TimeRange,
) -> Result<Rollup, IngestError> {
    let (from, to) = range.ms();
    let mut total = Rollup::default();
    if from >= to {
        return Ok(total);
    }
    for hour in hourly(store, device, model, range)? {
        let start = keys::ms(hour.hour);
        let end = start.saturating_add(HOUR_MS);
        if start >= from && (end <= to || hour.raw_expired) {
            total.merge(&hour.rollup);
        } else if !hour.raw_expired {
            let edge = TimeRange::new(keys::at(from.max(start)), keys::at(to.min(end)));
            for w in windows(store, device, model, edge, usize::MAX)? {
                total.add(&w.window);
            }
        }
    }
    Ok(total)
}

/// Per model version, the sum over the range of every device that matches the filter.
pub(crate) fn aggregate(
    store: &dyn Store,
    directory: &dyn DeviceDirectory,
    range: TimeRange,
    filter: &AggregateFilter,
) -> Result<Vec<Aggregate>, IngestError> {
    let prefix = filter.model.as_ref().map(keys::model).unwrap_or_default();
    let mut entries = Vec::new();
    record::scan(store, SERIES, &prefix, None, |_, value| {
        match record::decode::<SeriesEntry>(value, "series") {
            Ok(e) => entries.push(e),
            Err(e) => tracing::warn!(error = %e, "skipping an unreadable series entry"),
        }
        Ok(true)
    })?;
    let mut tags: BTreeMap<DeviceId, Tags> = BTreeMap::new();
    let mut out: BTreeMap<ModelRef, Aggregate> = BTreeMap::new();
    for entry in entries {
        if let Some(group) = &filter.group {
            let device_tags = tags.entry(entry.device.clone()).or_insert_with(|| directory.tags(&entry.device));
            if !group.contains(device_tags) {
                continue;
            }
        }
        let rollup = sum(store, &entry.device, &entry.model, range)?;
        if rollup.is_empty() {
            continue;
        }
        let agg = out.entry(entry.model.clone()).or_insert_with(|| Aggregate {
            model: entry.model.clone(),
            devices: 0,
            rollup: Rollup::default(),
        });
        agg.devices += 1;
        agg.rollup.merge(&rollup);
    }
    Ok(out.into_values().collect())
}

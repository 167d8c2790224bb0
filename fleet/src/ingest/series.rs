//! The time series: raw window summaries per device and model version, their hourly roll-ups, and the queries
//! over both.
//!
//! Layout (see `keys.rs`): raw windows in chunks at `device | model | hour | first seq` (windows starting in that
//! hour, packed: `raw.rs`; an hour may have several chunks, their windows in any order; stores written before
//! chunks hold single windows at `device | model | start | seq`, read the same way), roll-ups at `device | model | hour`, and an index of series
//! at `model | device`, which aggregates by model version scan and compaction walks.
//!
//! Design: the hourly roll-up is kept up to date as windows arrive (each window is added to the roll-up of the hour
//! its `start` falls in), so an aggregate over months reads one record per device and hour and compaction only
//! deletes. Windows, roll-ups and the index are written by [`super::hot`], in one atomic batch per flush with the
//! de-duplication window that counted them; this module reads them.

use std::collections::BTreeMap;

use outpost_common::protocol::{ModelRef, WindowSummary, timestamp};
use outpost_common::store::Store;
use outpost_common::topics::DeviceId;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::directory::{DeviceDirectory, Tags};
use super::error::IngestError;
use super::keys::{self, HOUR_MS};
use super::raw;
use super::record;
use super::rollup::Rollup;
use super::{ROLLUPS, SERIES, WINDOWS};
use crate::drift::DriftGroup;

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
    #[serde(with = "timestamp")]
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
    /// Written by versions that made each window's writes separately, to add a redelivered window once; now
    /// read and dropped (the atomic flush makes it unneeded).
    #[serde(default, skip_serializing)]
    recent: Vec<u64>,
}

impl HourlyRollup {
    pub(crate) fn new(hour: OffsetDateTime) -> HourlyRollup {
        HourlyRollup { hour, rollup: Rollup::default(), raw_expired: false, recent: Vec::new() }
    }

    pub(crate) fn add(&mut self, window: &WindowSummary) {
        self.rollup.add(window);
        self.recent.clear();
    }

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

/// Raw windows of one device and model version whose start lies in the range, oldest first (by start, then seq),
/// at most `limit`.
pub(crate) fn windows(
    store: &dyn Store,
    device: &DeviceId,
    model: &ModelRef,
    range: TimeRange,
    limit: usize,
) -> Result<Vec<StoredWindow>, IngestError> {
    let prefix = keys::series(device, model);
    let (from, to) = range.ms();
    let mut out: Vec<StoredWindow> = Vec::new();
    if from >= to || limit == 0 {
        return Ok(out);
    }
    // Chunks are keyed by their hour, and one hour's windows may lie in several chunks in any order: read whole
    // hours, and stop at the first hour after the limit was reached.
    let mut last_hour = None;
    record::scan(store, WINDOWS, &prefix, Some(keys::timed(&prefix, keys::hour_of(from))), |key, value| {
        let Some(t) = keys::time_after(key, prefix.len()) else {
            return Ok(false);
        };
        let hour = keys::hour_of(t);
        if t >= to || (out.len() >= limit && last_hour.is_some_and(|h| h < hour)) {
            return Ok(false);
        }
        last_hour = Some(hour);
        match raw::read(value) {
            Ok(windows) => out.extend(windows.into_iter().filter(|w| in_range(w, from, to))),
            Err(e) => tracing::warn!(device = %device, error = %e, "skipping unreadable windows"),
        }
        Ok(true)
    })?;
    out.sort_by_key(|w| (keys::ms(w.window.start), w.seq));
    out.truncate(limit);
    Ok(out)
}

fn in_range(w: &StoredWindow, from: i64, to: i64) -> bool {
    (from..to).contains(&keys::ms(w.window.start))
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

#[cfg(test)]
mod tests {
    use outpost_common::protocol::{ConfidenceHistogram, Latency};

    use super::*;
    use crate::load::MemStore;

    const T0: OffsetDateTime = time::macros::datetime!(2026-11-22 10:00 UTC);

    fn stored(seq: u64, minute: i64) -> StoredWindow {
        let start = T0 + time::Duration::minutes(minute);
        let window = WindowSummary {
            start,
            end: start + time::Duration::minutes(1),
            camera: "line-1".into(),
            model: ModelRef { name: "defect".into(), version: 1 },
            frames: 10,
            drops: 0,
            confidence: ConfidenceHistogram::default(),
            classes: BTreeMap::new(),
            latency_ms: Latency { p50: 1.0, p95: 2.0, p99: 3.0 },
            flagged: 0,
        };
        StoredWindow { seq, received_at: start, window }
    }

    #[test]
    fn packed_chunks_and_the_json_records_of_older_stores_read_as_one_ordered_series() {
        let store = MemStore::default();
        let device = DeviceId::new("cam-1").expect("id");
        let model = ModelRef { name: "defect".into(), version: 1 };
        let prefix = keys::series(&device, &model);
        let hour = keys::ms(T0);
        // An older store's single windows, at their start.
        for w in [stored(1, 5), stored(2, 65)] {
            let key = keys::window(&prefix, keys::ms(w.window.start), w.seq);
            store.put(WINDOWS, &key, &record::encode(&w, "window").expect("encodes")).expect("put");
        }
        // Chunks of the first hour, out of order within and across them (a replay after an outage): JSON ones, as
        // earlier versions wrote them, and packed ones, as this one does.
        let json = |windows: &[StoredWindow]| record::encode(&windows, "window").expect("encodes");
        let packed = |windows: &[StoredWindow]| {
            let mut chunk = raw::Chunk::default();
            for w in windows {
                chunk.push(w.seq, w.received_at, &w.window).expect("packs");
            }
            chunk.record()
        };
        store.put(WINDOWS, &keys::window(&prefix, hour, 3), &packed(&[stored(4, 30), stored(3, 2)])).expect("put");
        store.put(WINDOWS, &keys::window(&prefix, hour, 5), &json(&[stored(5, 1)])).expect("put");
        store.put(WINDOWS, &keys::window(&prefix, hour + HOUR_MS, 6), &packed(&[stored(6, 61)])).expect("put");
        let read = |from: i64, to: i64, limit: usize| {
            let range = TimeRange::new(T0 + time::Duration::minutes(from), T0 + time::Duration::minutes(to));
            windows(&store, &device, &model, range, limit).expect("reads").iter().map(|w| w.seq).collect::<Vec<_>>()
        };
        assert_eq!(read(0, 120, 100), [5, 3, 1, 4, 6, 2], "by start");
        assert_eq!(read(2, 62, 100), [3, 1, 4, 6], "the range cuts inside chunks");
        assert_eq!(read(0, 120, 2), [5, 3], "the limit takes the earliest");
        assert_eq!(read(64, 120, 1), [2]);
        assert_eq!(read(120, 180, 10), Vec::<u64>::new());
        assert_eq!(raw::count(&json(&[stored(7, 0), stored(8, 0)])), 2);
    }
}

//! Retention: raw windows older than `raw_days` and roll-ups older than `rollup_days` are deleted, by whole hours.
//!
//! Design: roll-ups are maintained as windows arrive (see `series.rs`), so compaction never has to build one: it
//! deletes the expired raw windows of each series, marks their hours' roll-ups `raw_expired` (queries then use the
//! roll-up for those hours), deletes expired roll-ups, and drops index entries of series left empty. It works on
//! one series at a time under its device's lock in the ingest's working set (`hot.rs`), changing the cached
//! roll-ups as it changes the stored ones, so a late window can neither undo a change nor lose its index entry.
//! Each step is idempotent, so a compaction interrupted by a crash is simply run again.

use std::collections::BTreeSet;

use outpost_common::store::Store;
use serde::Serialize;
use time::OffsetDateTime;

use super::error::IngestError;
use super::hot::{DeviceHot, Hot};
use super::keys::{self, DAY_MS};
use super::raw;
use super::record::{self, Change};
use super::series::{HourlyRollup, SeriesEntry};
use super::{ROLLUPS, SERIES, WINDOWS};

/// What one compaction deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CompactReport {
    pub windows_deleted: u64,
    pub rollups_deleted: u64,
    pub series_deleted: u64,
    pub alerts_deleted: u64,
    pub trackers_forgotten: u64,
}

/// The cut-offs for `now`: raw windows starting before the first, roll-ups of hours before the second, go.
pub(crate) fn cutoffs(now: OffsetDateTime, raw_days: u32, rollup_days: u32) -> (i64, i64) {
    let now = keys::ms(now);
    let cut = |days: u32| keys::hour_of(now.saturating_sub(i64::from(days).saturating_mul(DAY_MS)));
    (cut(raw_days), cut(rollup_days))
}

/// Compacts every series of the index. `store` must hold what `hot` held when the compaction began (flushed).
pub(crate) fn series(
    store: &dyn Store,
    hot: &Hot,
    raw_cut: i64,
    rollup_cut: i64,
    report: &mut CompactReport,
) -> Result<(), IngestError> {
    let mut entries = Vec::new();
    record::scan(store, SERIES, &[], None, |key, value| {
        match record::decode::<SeriesEntry>(value, "series") {
            Ok(e) => entries.push((key.to_vec(), e)),
            Err(e) => tracing::warn!(error = %e, "skipping an unreadable series entry"),
        }
        Ok(true)
    })?;
    for (index_key, entry) in entries {
        let dropped = hot.locked(&entry.device, |device| {
            one_series(store, device, &index_key, &entry, raw_cut, rollup_cut, report)
        })?;
        hot.no_longer_pending(dropped);
    }
    Ok(())
}

/// Deletes the leading keys of `tree` under `prefix` whose time is before `cut`; returns the times deleted, each
/// with what `count` says of its value.
fn delete_before(
    store: &dyn Store,
    tree: &str,
    prefix: &[u8],
    cut: i64,
    count: impl Fn(&[u8]) -> u64,
) -> Result<Vec<(i64, u64)>, IngestError> {
    let mut deleted = Vec::new();
    loop {
        let page = store.scan_prefix(tree, prefix, None, record::PAGE)?;
        let full = page.len() == record::PAGE;
        let mut stopped = false;
        for (key, value) in page {
            match keys::time_after(&key, prefix.len()) {
                Some(t) if t < cut => {
                    store.remove(tree, &key)?;
                    deleted.push((t, count(&value)));
                }
                _ => {
                    stopped = true;
                    break;
                }
            }
        }
        if stopped || !full {
            return Ok(deleted);
        }
    }
}

/// One series, under its device's lock; `device` is the device's state in memory, if it is there. Returns the
/// unwritten windows past retention it dropped from memory.
fn one_series(
    store: &dyn Store,
    device: Option<&mut DeviceHot>,
    index_key: &[u8],
    entry: &SeriesEntry,
    raw_cut: i64,
    rollup_cut: i64,
    report: &mut CompactReport,
) -> Result<usize, IngestError> {
    let prefix = keys::series(&entry.device, &entry.model);
    let expired = delete_before(store, WINDOWS, &prefix, raw_cut, raw::count)?;
    report.windows_deleted += expired.iter().map(|(_, n)| n).sum::<u64>();
    let hours: BTreeSet<i64> =
        expired.into_iter().map(|(t, _)| keys::hour_of(t)).filter(|h| *h >= rollup_cut).collect();
    for hour in hours {
        record::update(store, ROLLUPS, &keys::timed(&prefix, hour), "rollup", |old: Option<HourlyRollup>| {
            Ok(match old {
                Some(mut r) => {
                    r.mark_raw_expired();
                    (Change::Put(r), ())
                }
                None => (Change::Keep, ()),
            })
        })?;
    }
    report.rollups_deleted += delete_before(store, ROLLUPS, &prefix, rollup_cut, |_| 1)?.len() as u64;
    let mut cached = None;
    let mut dropped = 0;
    if let Some(device) = device {
        let version = device.change();
        if let Some(series) = device.series_mut(&entry.model) {
            series.mark_raw_expired_before(raw_cut, version);
            series.forget_rollups_before(rollup_cut);
            dropped = series.forget_chunks_before(raw_cut);
            cached = Some(series);
        }
    }
    if cached.as_ref().is_some_and(|s| s.has_unwritten()) {
        return Ok(dropped);
    }
    let empty = |tree: &str| store.scan_prefix(tree, &prefix, None, 1).map(|p| p.is_empty());
    if empty(WINDOWS)? && empty(ROLLUPS)? {
        store.remove(SERIES, index_key)?;
        if let Some(series) = cached {
            series.unindexed();
        }
        report.series_deleted += 1;
    }
    Ok(dropped)
}

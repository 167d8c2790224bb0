//! Retention: raw windows older than `raw_days` and roll-ups older than `rollup_days` are deleted, by whole hours.
//!
//! Design: roll-ups are maintained as windows arrive (see `series.rs`), so compaction never has to build one and
//! never races a late window: it deletes the expired raw windows of each series, marks their hours' roll-ups
//! `raw_expired` (queries then use the roll-up for those hours), deletes expired roll-ups, and drops index entries
//! of series left empty. Each step is idempotent, so a compaction interrupted by a crash is simply run again.

use std::collections::BTreeSet;

use outpost_common::store::Store;
use serde::Serialize;
use time::OffsetDateTime;

use super::error::IngestError;
use super::keys::{self, DAY_MS};
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

pub(crate) fn series(
    store: &dyn Store,
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
        one_series(store, &index_key, &entry, raw_cut, rollup_cut, report)?;
    }
    Ok(())
}

/// Deletes the leading keys of `tree` under `prefix` whose time is before `cut`; returns the times deleted.
fn delete_before(store: &dyn Store, tree: &str, prefix: &[u8], cut: i64) -> Result<Vec<i64>, IngestError> {
    let mut deleted = Vec::new();
    loop {
        let page = store.scan_prefix(tree, prefix, None, record::PAGE)?;
        let full = page.len() == record::PAGE;
        let mut stopped = false;
        for (key, _) in page {
            match keys::time_after(&key, prefix.len()) {
                Some(t) if t < cut => {
                    store.remove(tree, &key)?;
                    deleted.push(t);
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

fn one_series(
    store: &dyn Store,
    index_key: &[u8],
    entry: &SeriesEntry,
    raw_cut: i64,
    rollup_cut: i64,
    report: &mut CompactReport,
) -> Result<(), IngestError> {
    let prefix = keys::series(&entry.device, &entry.model);
    let expired = delete_before(store, WINDOWS, &prefix, raw_cut)?;
    report.windows_deleted += expired.len() as u64;
    let hours: BTreeSet<i64> = expired.into_iter().map(keys::hour_of).filter(|h| *h >= rollup_cut).collect();
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
    report.rollups_deleted += delete_before(store, ROLLUPS, &prefix, rollup_cut)?.len() as u64;
    let empty = |tree: &str| store.scan_prefix(tree, &prefix, None, 1).map(|p| p.is_empty());
    if empty(WINDOWS)? && empty(ROLLUPS)? {
        store.remove(SERIES, index_key)?;
        // A window stored meanwhile must stay reachable: put its index entry back.
        if !empty(WINDOWS)? {
            record::put(store, SERIES, index_key, entry, "series")?;
        } else {
            report.series_deleted += 1;
        }
    }
    Ok(())
}

//! Drift wired into ingest: one [`Tracker`] per (model version, group) in memory, persisted; reference baselines;
//! the alert log the API lists.
//!
//! Design: the trackers live behind one mutex (an observation is a few vector additions). A tracker is written to
//! the store when its baseline completes or an alert is raised or cleared, and every changed tracker at
//! [`DriftBook::persist`] (the service's periodic compaction and shutdown), so a restart keeps the baselines and
//! alert states and loses at most the sliding-window data since the last persist. Alerts are stored under a rising
//! id, which is the API's cursor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use outpost_common::manifest::ConfidenceBaseline;
use outpost_common::protocol::ModelRef;
use outpost_common::store::Store;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::error::IngestError;
use super::record;
use super::{ALERTS, REFERENCES, TRACKERS, keys};
use crate::drift::{BaselineSource, DriftAlert, DriftConfig, DriftGroup, DriftStatus, Sample, Tracker};

/// A drift alert with its id (rising; the API's cursor).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredAlert {
    pub id: u64,
    pub alert: DriftAlert,
}

#[derive(Debug)]
struct Slot {
    tracker: Tracker,
    dirty: bool,
}

#[derive(Debug, Default)]
struct Book {
    trackers: HashMap<(ModelRef, DriftGroup), Slot>,
    references: HashMap<ModelRef, Sample>,
    next_alert: u64,
}

#[derive(Debug)]
pub(crate) struct DriftBook {
    store: Arc<dyn Store>,
    config: DriftConfig,
    book: Mutex<Book>,
}

fn tracker_key(model: &ModelRef, group: &DriftGroup) -> Vec<u8> {
    let mut key = keys::model(model);
    key.extend_from_slice(group.to_string().as_bytes());
    key
}

impl DriftBook {
    /// Loads the persisted trackers, references and the alert counter.
    pub(crate) fn load(store: Arc<dyn Store>, config: DriftConfig) -> Result<DriftBook, IngestError> {
        let mut book = Book::default();
        record::scan(store.as_ref(), TRACKERS, &[], None, |_, value| {
            match record::decode::<Tracker>(value, "drift tracker") {
                Ok(t) => {
                    let key = (t.model().clone(), t.group().clone());
                    book.trackers.insert(key, Slot { tracker: t, dirty: false });
                }
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable drift tracker"),
            }
            Ok(true)
        })?;
        record::scan(store.as_ref(), REFERENCES, &[], None, |_, value| {
            match record::decode::<(ModelRef, Sample)>(value, "drift reference") {
                Ok((model, sample)) => {
                    book.references.insert(model, sample);
                }
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable drift reference"),
            }
            Ok(true)
        })?;
        book.next_alert = last_alert_id(store.as_ref())?.map_or(1, |id| id.saturating_add(1));
        Ok(DriftBook { store, config, book: Mutex::new(book) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds one window to the trackers of its model version in each of the device's groups; returns the alerts.
    pub(crate) fn observe(
        &self,
        model: &ModelRef,
        groups: Vec<DriftGroup>,
        sample: &Sample,
        data_time: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Vec<DriftAlert>, IngestError> {
        let mut book = self.lock();
        let book = &mut *book;
        let mut alerts = Vec::new();
        for group in groups {
            let reference = book.references.get(model);
            let slot = book.trackers.entry((model.clone(), group.clone())).or_insert_with(|| {
                tracing::debug!(model = %model.name, version = model.version, group = %group, "drift tracking starts");
                Slot { tracker: Tracker::new(model.clone(), group.clone(), reference, now), dirty: true }
            });
            let before = slot.tracker.baseline_source();
            let alert = slot.tracker.observe(sample, data_time, now, &self.config);
            slot.dirty = true;
            let learned = before == BaselineSource::Learning && slot.tracker.baseline_source() != before;
            if learned || alert.is_some() {
                record::put(self.store.as_ref(), TRACKERS, &tracker_key(model, &group), &slot.tracker, "tracker")?;
                slot.dirty = false;
            }
            if learned {
                tracing::info!(model = %model.name, version = model.version, group = %group, "drift baseline learned");
            }
            if let Some(alert) = alert {
                let id = book.next_alert;
                book.next_alert = id.saturating_add(1);
                let stored = StoredAlert { id, alert };
                record::put(self.store.as_ref(), ALERTS, &id.to_be_bytes(), &stored, "alert")?;
                let a = &stored.alert;
                tracing::warn!(
                    model = %a.model.name, version = a.model.version, group = %a.group, kind = ?a.kind, psi = a.psi,
                    mean_shift = ?a.mean_shift, flagged_share = ?a.flagged_share, id, "drift alert"
                );
                alerts.push(stored.alert);
            }
        }
        Ok(alerts)
    }

    /// Sets a stored reference for a model version (e.g. its manifest's `ConfidenceBaseline`): its trackers compare
    /// against it from now on, in every group.
    pub(crate) fn set_reference(&self, model: &ModelRef, reference: &ConfidenceBaseline) -> Result<(), IngestError> {
        let sample = Sample::from_reference(reference);
        let mut book = self.lock();
        record::put(self.store.as_ref(), REFERENCES, &keys::model(model), &(model, sample), "reference")?;
        book.references.insert(model.clone(), sample);
        for ((m, group), slot) in book.trackers.iter_mut().filter(|((m, _), _)| m == model) {
            slot.tracker.set_reference(&sample);
            record::put(self.store.as_ref(), TRACKERS, &tracker_key(m, group), &slot.tracker, "tracker")?;
            slot.dirty = false;
        }
        Ok(())
    }

    /// Where every tracker stands (of one model version, when given), by model then group.
    pub(crate) fn statuses(&self, model: Option<&ModelRef>) -> Vec<DriftStatus> {
        let book = self.lock();
        let mut out: Vec<DriftStatus> = book
            .trackers
            .values()
            .filter(|s| model.is_none_or(|m| s.tracker.model() == m))
            .map(|s| s.tracker.status(&self.config))
            .collect();
        out.sort_by(|a, b| (&a.model, &a.group).cmp(&(&b.model, &b.group)));
        out
    }

    /// Alerts with an id above `after`, oldest first.
    pub(crate) fn alerts(&self, after: Option<u64>, limit: usize) -> Result<Vec<StoredAlert>, IngestError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        record::scan(self.store.as_ref(), ALERTS, &[], after.map(|id| id.to_be_bytes().to_vec()), |_, value| {
            match record::decode::<StoredAlert>(value, "alert") {
                Ok(a) => out.push(a),
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable drift alert"),
            }
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    /// Writes every tracker changed since the last write.
    pub(crate) fn persist(&self) -> Result<(), IngestError> {
        let mut book = self.lock();
        for ((model, group), slot) in book.trackers.iter_mut().filter(|(_, s)| s.dirty) {
            record::put(self.store.as_ref(), TRACKERS, &tracker_key(model, group), &slot.tracker, "tracker")?;
            slot.dirty = false;
        }
        Ok(())
    }

    /// Forgets trackers without data for `idle_days`, and alerts beyond `keep` or older than `alerts_before`.
    /// Returns (trackers forgotten, alerts deleted).
    pub(crate) fn compact(
        &self,
        now: OffsetDateTime,
        keep: u64,
        alerts_before: OffsetDateTime,
    ) -> Result<(u64, u64), IngestError> {
        let idle_before = now - time::Duration::days(i64::from(self.config.idle_days));
        let mut book = self.lock();
        let idle: Vec<(ModelRef, DriftGroup)> = book
            .trackers
            .iter()
            .filter(|(_, s)| s.tracker.updated_at() < idle_before)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &idle {
            self.store.remove(TRACKERS, &tracker_key(&key.0, &key.1))?;
            book.trackers.remove(key);
        }
        let first_kept = book.next_alert.saturating_sub(keep);
        drop(book);
        let mut doomed = Vec::new();
        record::scan(self.store.as_ref(), ALERTS, &[], None, |key, value| {
            let id = key.try_into().map(u64::from_be_bytes).unwrap_or(0);
            let old = record::decode::<StoredAlert>(value, "alert").map_or(true, |a| a.alert.at < alerts_before);
            if id < first_kept || old {
                doomed.push(key.to_vec());
                return Ok(true);
            }
            Ok(false)
        })?;
        for key in &doomed {
            self.store.remove(ALERTS, key)?;
        }
        Ok((idle.len() as u64, doomed.len() as u64))
    }
}

fn last_alert_id(store: &dyn Store) -> Result<Option<u64>, IngestError> {
    // Ids are big-endian, so the last key is the largest; walk the pages to it.
    let mut last = None;
    record::scan(store, ALERTS, &[], None, |key, _| {
        last = key.try_into().ok().map(u64::from_be_bytes);
        Ok(true)
    })?;
    Ok(last)
}

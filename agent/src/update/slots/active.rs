//! The store's `active` records: reading them (and recovering from unusable ones), writing them atomically, and
//! the transitions of [`ActiveRecord`] applied under the store's lock.

use std::fs;
use std::path::Path;

use super::{ACTIVE_FILE, COMMITTED_FILE, MAX_RECORD_BYTES, Slot, SlotError, SlotStore, Start, check_name, io};
use crate::update::fsutil;
use crate::update::record::{ActiveRecord, Reverted};

impl SlotStore {
    /// The record of `name` (an empty one when nothing was ever activated). A corrupt record is an error here;
    /// [`SlotStore::on_start`] and [`SlotStore::activate`] recover from it.
    pub fn record(&self, name: &str) -> Result<ActiveRecord, SlotError> {
        check_name(name)?;
        self.read_record(&self.root.join(name).join(ACTIVE_FILE))
    }

    pub(super) fn read_record(&self, path: &Path) -> Result<ActiveRecord, SlotError> {
        let corrupt = |reason: String| SlotError::CorruptRecord { path: path.to_path_buf(), reason };
        let bytes = match fsutil::read_capped(path, MAX_RECORD_BYTES) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ActiveRecord::default()),
            Err(e) => return Err(corrupt(e.to_string())),
        };
        let record: ActiveRecord = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        match record.problems() {
            Some(problem) => Err(corrupt(problem)),
            None => Ok(record),
        }
    }

    /// The record, or when `active.json` is unusable: the last committed record (`committed.json`), else an empty
    /// one; the unusable file is kept beside as `active.json.corrupt` and the rebuilt record written.
    fn record_or_recover(&self, name: &str) -> Result<(ActiveRecord, Option<String>), SlotError> {
        let name_dir = self.root.join(name);
        let active = name_dir.join(ACTIVE_FILE);
        let committed = name_dir.join(COMMITTED_FILE);
        let error = match self.read_record(&active) {
            // A missing record with a committed one beside it was deleted, not never written.
            Ok(_) if !active.exists() && committed.exists() => {
                SlotError::CorruptRecord { path: active.clone(), reason: "missing".into() }
            }
            Ok(record) => return Ok((record, None)),
            Err(error) => error,
        };
        let fallback = match self.read_record(&committed) {
            Ok(record) => record,
            Err(e) => {
                tracing::error!(model = name, error = %e, "no usable committed record either; serving no slot");
                ActiveRecord::default()
            }
        };
        tracing::error!(model = name, error = %error, active = ?fallback.active,
            "active record unusable; falling back to the last committed record");
        // Copied, not moved: if writing the rebuilt record fails, the next start finds the same state and recovers
        // again instead of reading a missing record as an empty one.
        let _ = fs::copy(&active, fsutil::with_suffix(&active, ".corrupt"));
        self.write_record(name, &fallback)?;
        Ok((fallback, Some(error.to_string())))
    }

    fn write_record(&self, name: &str, record: &ActiveRecord) -> Result<(), SlotError> {
        let name_dir = self.root.join(name);
        fs::create_dir_all(&name_dir).map_err(io(&name_dir))?;
        // Serialising a struct of numbers, strings and a map cannot fail.
        let bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
        let active = name_dir.join(ACTIVE_FILE);
        fsutil::write_atomic(&active, &bytes).map_err(io(&active))?;
        if record.committed {
            let committed = name_dir.join(COMMITTED_FILE);
            fsutil::write_atomic(&committed, &bytes).map_err(io(&committed))?;
        }
        Ok(())
    }

    /// Applies a transition to the stored record under the lock and persists the result if it changed.
    fn update<T>(
        &self,
        name: &str,
        recover: bool,
        change: impl FnOnce(&ActiveRecord) -> Result<(ActiveRecord, T), SlotError>,
    ) -> Result<T, SlotError> {
        check_name(name)?;
        let _lock = self.lock()?;
        let record = if recover {
            self.record_or_recover(name)?.0
        } else {
            self.read_record(&self.root.join(name).join(ACTIVE_FILE))?
        };
        let (next, out) = change(&record)?;
        if next != record {
            self.write_record(name, &next)?;
        }
        Ok(out)
    }

    /// Makes an installed, not-bad version active on trial; the committed version stays as the fallback.
    pub fn begin_trial(&self, name: &str, version: u64) -> Result<ActiveRecord, SlotError> {
        let record = self.update(name, false, |r| {
            self.slot(name, version)?;
            let next = r.begin_trial(version)?;
            Ok((next.clone(), next))
        })?;
        tracing::info!(model = name, version, previous = ?record.previous, "model on trial");
        Ok(record)
    }

    /// An operator's activation: like [`SlotStore::begin_trial`], but also for a version marked bad (the mark is
    /// lifted) and over a corrupt record.
    pub fn activate(&self, name: &str, version: u64) -> Result<ActiveRecord, SlotError> {
        let record = self.update(name, true, |r| {
            self.slot(name, version)?;
            let next = r.activate(version);
            Ok((next.clone(), next))
        })?;
        tracing::info!(model = name, version, previous = ?record.previous, "model activated by the operator");
        Ok(record)
    }

    /// Commits the active `version` after its health window.
    pub fn commit(&self, name: &str, version: u64) -> Result<ActiveRecord, SlotError> {
        let record = self.update(name, false, |r| {
            let next = r.commit(version)?;
            Ok((next.clone(), next))
        })?;
        tracing::info!(model = name, version, "model committed");
        Ok(record)
    }

    /// Reverts the active `version` to the previous committed one and marks it bad on this device.
    pub fn revert(&self, name: &str, version: u64, reason: &str) -> Result<Reverted, SlotError> {
        let reverted = self.update(name, false, |r| Ok(r.revert(version, reason)?))?;
        tracing::warn!(model = name, from = reverted.from, to = ?reverted.to, reason, "model reverted");
        Ok(reverted)
    }

    /// The start-up step, before anything is loaded: counts a start of an uncommitted version on disk, reverts one
    /// started too often or whose slot is gone, recovers from a corrupt record, and says which slot to load.
    pub fn on_start(&self, name: &str) -> Result<Start, SlotError> {
        check_name(name)?;
        let _lock = self.lock()?;
        let (record, recovered) = self.record_or_recover(name)?;
        let (next, plan) = record.on_start(self.max_trial_starts, |v| self.is_complete(name, v));
        if next != record {
            // Durable before the caller loads anything: a crash while loading still counts this start.
            self.write_record(name, &next)?;
        }
        for r in &plan.reverted {
            tracing::warn!(model = name, from = r.from, to = ?r.to, reason = %r.reason, "model reverted at start");
        }
        match (plan.serve, plan.trial_start) {
            (Some(version), Some(start)) => {
                tracing::info!(model = name, version, start, max = self.max_trial_starts, "starting a model on trial")
            }
            (Some(version), None) => tracing::info!(model = name, version, "starting the committed model"),
            (None, _) => tracing::info!(model = name, "no installed version serves"),
        }
        Ok(Start {
            name: name.to_string(),
            serve: plan.serve.map(|version| Slot {
                name: name.to_string(),
                version,
                dir: self.version_dir(name, version),
            }),
            committed: plan.committed,
            trial_start: plan.trial_start,
            max_trial_starts: self.max_trial_starts,
            reverted: plan.reverted,
            recovered,
        })
    }
}

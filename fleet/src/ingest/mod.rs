//! Telemetry ingest: every message an agent publishes, checked, de-duplicated and stored; the queries the API
//! needs over what was stored.
//!
//! The MQTT side calls [`Ingest::ingest`] with each received message (topic, payload bytes, the time it arrived);
//! the service calls [`Ingest::flush`] about every second, to make what was ingested since durable,
//! [`Ingest::compact`] periodically, and [`Ingest::checkpoint`] at shutdown. [`Ingest::open`] replays what a crash
//! left in the journal.
//!
//! Per message, in order: the topic names a device and a channel (`outpost_common::topics::parse`); the device has
//! a key in the [`DeviceDirectory`] (unknown and revoked devices have none); the sealed envelope opens with that key
//! and names that device (`protocol::auth::open` — so device A's connection cannot publish for device B); the
//! payload decodes (`protocol::decode`: size cap, schema, unknown fields, checks). A failure at any step drops the
//! message and counts it by [`DropReason`]. Then, by channel:
//!
//! - `status`: the device's state (online/offline, incl. the last will), agent version, models and health;
//! - `telemetry`: a window summary is stored in the device's time series for its model version, added to its hour's
//!   roll-up and to the drift trackers of its model version and groups; a per-frame batch is only counted;
//! - `events`: appended to the device's bounded event log and returned, for the service to route (flagged samples,
//!   update progress for rollouts).
//!
//! Telemetry and events are de-duplicated by `(device, seq)` with a persisted window per device (see `dedupe.rs`),
//! and the device's totals (frames processed, …) are updated with the seq's mark, so they count each message once.
//! Design: a pure core (`dedupe`, `rollup`, `keys`, [`crate::drift`]) and storage through the [`Store`] trait. The
//! per-window state (de-duplication window and totals, roll-ups, raw windows) lives in memory under per-device
//! locks, journaled every flush and written to its records at checkpoints (`hot.rs`); statuses and events are
//! written as they come, each read-modify-write a compare-and-swap. So `ingest` may be called from several threads
//! at once, and every query first writes what is in memory, so it sees every message ingested before it. Store
//! failures are errors ([`IngestError`]); a message whose handling failed may be redelivered safely.

mod compact;
mod config;
mod dedupe;
mod devices;
mod directory;
mod drift_book;
mod error;
mod events;
mod hot;
mod journal;
mod keys;
mod raw;
mod record;
mod rollup;
mod series;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use outpost_common::manifest::ConfidenceBaseline;
use outpost_common::protocol::auth::{self, AuthError};
use outpost_common::protocol::{
    self, Event, Message, ModelRef, ProtocolError, Status, Telemetry, TelemetryBody, WindowSummary,
};
use outpost_common::store::Store;
use outpost_common::topics::{self, Channel, DeviceId};
use time::OffsetDateTime;

pub use compact::CompactReport;
pub use config::IngestConfig;
pub use dedupe::{Seen, SeqWindow};
pub use devices::{DeviceView, StatusApplied, Totals};
pub use directory::{DeviceDirectory, MasterKeyDirectory, Tags};
pub use drift_book::StoredAlert;
pub use error::{DropReason, IngestError};
pub use events::StoredEvent;
/// The stable hash that spreads devices over shards here and over the service's workers.
pub(crate) use keys::fnv1a;
/// The millisecond a window is keyed under (its start), which is what a [`TimeRange`] compares.
pub(crate) use keys::ms as key_ms;
pub use rollup::{MAX_CLASSES, OTHER_CLASSES, RolledLatency, Rollup};
pub use series::{Aggregate, AggregateFilter, HourlyRollup, StoredWindow, TimeRange};

use crate::drift::{DriftAlert, DriftGroup, DriftStatus, Sample};
use drift_book::DriftBook;
use error::DropCounters;
use hot::Hot;

// The store's trees.
pub(crate) const WINDOWS: &str = "ingest/windows";
pub(crate) const ROLLUPS: &str = "ingest/rollups";
pub(crate) const SERIES: &str = "ingest/series";
pub(crate) const STATUS: &str = "ingest/status";
pub(crate) const TALLIES: &str = "ingest/tallies";
pub(crate) const EVENTS: &str = "ingest/events";
pub(crate) const TRACKERS: &str = "drift/trackers";
pub(crate) const REFERENCES: &str = "drift/references";
pub(crate) const ALERTS: &str = "drift/alerts";
pub(crate) const JOURNAL: &str = "ingest/journal";
/// Journal records that could not be read at a replay, kept for inspection.
pub(crate) const JOURNAL_DAMAGED: &str = "ingest/journal-damaged";

/// What became of one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Ingested {
    /// The device of the topic, when it was a device topic (even if the message was then dropped).
    pub device: Option<DeviceId>,
    pub outcome: Outcome,
    /// Drift alerts raised or cleared by this message (also kept for [`Ingest::drift_alerts`]).
    pub alerts: Vec<DriftAlert>,
}

impl Ingested {
    pub fn dropped(&self) -> Option<DropReason> {
        match self.outcome {
            Outcome::Dropped(reason) => Some(reason),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A status was applied.
    Status(StatusApplied),
    /// A window summary was stored.
    Window {
        seq: u64,
        frames: u64,
        /// The summary as stored (model, camera, figures), for the rollout engine's window cache.
        window: Box<WindowSummary>,
    },
    /// A per-frame batch was accepted and counted (not stored: its window summary follows).
    Frames {
        seq: u64,
        frames: usize,
    },
    /// An event was stored in the device's log.
    Event(Box<StoredEvent>),
    Dropped(DropReason),
}

/// The ingest service's core: see the module documentation.
#[derive(Debug)]
pub struct Ingest {
    store: Arc<dyn Store>,
    directory: Arc<dyn DeviceDirectory>,
    config: IngestConfig,
    drops: DropCounters,
    stored: AtomicU64,
    drift: DriftBook,
    hot: Hot,
}

impl Ingest {
    /// Validates the configuration and loads the persisted drift state.
    pub fn open(
        store: Arc<dyn Store>,
        directory: Arc<dyn DeviceDirectory>,
        config: IngestConfig,
    ) -> Result<Ingest, IngestError> {
        config.validate()?;
        let drift = DriftBook::load(store.clone(), config.drift.clone())?;
        let hot = Hot::new(config.dedupe_window);
        let replayed = hot.replay(store.as_ref())?;
        if replayed.records > 0 {
            tracing::info!(
                records = replayed.records,
                windows = replayed.windows,
                duplicates = replayed.duplicates,
                damaged = replayed.damaged,
                "ingest journal replayed"
            );
        }
        Ok(Ingest { store, directory, config, drops: DropCounters::default(), stored: AtomicU64::new(0), drift, hot })
    }

    pub fn config(&self) -> &IngestConfig {
        &self.config
    }

    /// Handles one received message. `Ok` whether it was stored or dropped (see [`Ingested::outcome`]); `Err` only
    /// when the store failed, in which case the message may be delivered again: it is stored and counted at most
    /// once either way (a failure after its seq was marked makes the redelivery a duplicate).
    pub fn ingest(&self, topic: &str, payload: &[u8], received_at: OffsetDateTime) -> Result<Ingested, IngestError> {
        let (device, channel) = match topics::parse(topic) {
            Ok(parsed) => parsed,
            Err(e) => return Ok(self.drop(None, DropReason::BadTopic, &e)),
        };
        if !channel.from_agent() {
            return Ok(self.drop(Some(device), DropReason::WrongChannel, &"agents do not publish commands"));
        }
        let Some(key) = self.directory.key(&device) else {
            return Ok(self.drop(Some(device), DropReason::UnknownDevice, &"not enrolled, or revoked"));
        };
        let bytes = match auth::open(payload, &device, &key) {
            Ok(bytes) => bytes,
            Err(e) => {
                let reason = match e {
                    AuthError::TooLarge { .. } => DropReason::TooLarge,
                    AuthError::DeviceMismatch { .. } | AuthError::BadMac(_) => DropReason::Forged,
                    AuthError::Malformed(_) | AuthError::Key(_) => DropReason::Malformed,
                };
                return Ok(self.drop(Some(device), reason, &e));
            }
        };
        match channel {
            Channel::Status => self.status(device, &bytes, received_at),
            Channel::Telemetry => self.telemetry(device, &bytes, received_at),
            Channel::Events => self.event(device, &bytes, received_at),
            Channel::Commands => Ok(self.drop(Some(device), DropReason::WrongChannel, &"commands")),
        }
    }

    /// Counts and logs a dropped message. Suspicious reasons are logged at WARN at the 1st, 2nd, 4th, 8th, …
    /// occurrence of each reason (so a flood cannot flood the log), everything else at DEBUG.
    fn drop(&self, device: Option<DeviceId>, reason: DropReason, detail: &dyn fmt::Display) -> Ingested {
        let count = self.drops.add(reason);
        let id = device.as_ref().map_or("-", DeviceId::as_str);
        let quiet = matches!(reason, DropReason::Duplicate | DropReason::Stale | DropReason::StaleStatus);
        if quiet || !count.is_power_of_two() {
            tracing::debug!(device = id, reason = reason.as_str(), count, detail = %detail, "message dropped");
        } else {
            tracing::warn!(device = id, reason = reason.as_str(), count, detail = %detail, "message dropped");
        }
        Ingested { device, outcome: Outcome::Dropped(reason), alerts: Vec::new() }
    }

    fn accepted(&self, device: DeviceId, outcome: Outcome, alerts: Vec<DriftAlert>) -> Ingested {
        self.stored.fetch_add(1, Ordering::Relaxed);
        Ingested { device: Some(device), outcome, alerts }
    }

    fn decode<M: Message>(&self, device: &DeviceId, bytes: &[u8]) -> Result<M, Ingested> {
        protocol::decode(bytes).map_err(|e| {
            let reason = match e {
                ProtocolError::TooLarge { .. } => DropReason::TooLarge,
                ProtocolError::UnsupportedSchema { .. } => DropReason::UnsupportedSchema,
                ProtocolError::UnknownField(_) | ProtocolError::Malformed(_) | ProtocolError::Invalid(_) => {
                    DropReason::Malformed
                }
            };
            self.drop(Some(device.clone()), reason, &e)
        })
    }

    /// The drop for a seq that is not new.
    fn not_new(&self, device: DeviceId, seq: u64, seen: Seen) -> Ingested {
        let reason = if seen == Seen::Stale { DropReason::Stale } else { DropReason::Duplicate };
        self.drop(Some(device), reason, &format_args!("seq {seq}"))
    }

    fn status(&self, device: DeviceId, bytes: &[u8], received_at: OffsetDateTime) -> Result<Ingested, IngestError> {
        let status: Status = match self.decode(&device, bytes) {
            Ok(s) => s,
            Err(dropped) => return Ok(dropped),
        };
        match devices::apply_status(self.store.as_ref(), &device, status, received_at)? {
            Ok(applied) => {
                if applied.changed {
                    let state = format!("{:?}", applied.state).to_lowercase();
                    tracing::info!(device = %device, online = applied.online, state, "device online state changed");
                }
                Ok(self.accepted(device, Outcome::Status(applied), Vec::new()))
            }
            Err(reason) => Ok(self.drop(Some(device), reason, &"older than the stored status")),
        }
    }

    fn telemetry(&self, device: DeviceId, bytes: &[u8], received_at: OffsetDateTime) -> Result<Ingested, IngestError> {
        let message: Telemetry = match self.decode(&device, bytes) {
            Ok(m) => m,
            Err(dropped) => return Ok(dropped),
        };
        let seq = message.seq;
        let store = self.store.as_ref();
        let seen = self.hot.check(store, &device, seq)?;
        if seen != Seen::New {
            return Ok(self.not_new(device, seq, seen));
        }
        match message.body {
            TelemetryBody::Window(window) => self.window(device, seq, window, received_at),
            TelemetryBody::Frames(batch) => {
                let (seen, _) = self.hot.mark(store, &device, seq, received_at, |t| {
                    t.totals.frame_batches = t.totals.frame_batches.saturating_add(1);
                })?;
                if seen != Seen::New {
                    return Ok(self.not_new(device, seq, seen));
                }
                Ok(self.accepted(device, Outcome::Frames { seq, frames: batch.frames.len() }, Vec::new()))
            }
        }
    }

    fn window(
        &self,
        device: DeviceId,
        seq: u64,
        window: Box<WindowSummary>,
        received_at: OffsetDateTime,
    ) -> Result<Ingested, IngestError> {
        let skew = time::Duration::seconds(i64::from(self.config.max_clock_skew_secs));
        if window.end > received_at + skew {
            let detail = format_args!("window ends at {} but arrived at {received_at}", window.end);
            return Ok(self.drop(Some(device), DropReason::FutureWindow, &detail));
        }
        let seen = self.hot.window(self.store.as_ref(), &device, seq, &window, received_at)?;
        if seen != Seen::New {
            return Ok(self.not_new(device, seq, seen));
        }
        let groups = DriftGroup::of(&self.directory.tags(&device), self.config.drift.group_tags.as_deref());
        let sample = Sample { frames: window.frames, histogram: window.confidence, flagged: window.flagged };
        let alerts = self.drift.observe(&window.model, groups, &sample, window.end, received_at)?;
        let outcome = Outcome::Window { seq, frames: window.frames, window };
        Ok(self.accepted(device, outcome, alerts))
    }

    fn event(&self, device: DeviceId, bytes: &[u8], received_at: OffsetDateTime) -> Result<Ingested, IngestError> {
        let message: Event = match self.decode(&device, bytes) {
            Ok(m) => m,
            Err(dropped) => return Ok(dropped),
        };
        let seq = message.seq;
        let store = self.store.as_ref();
        let seen = self.hot.check(store, &device, seq)?;
        if seen != Seen::New {
            return Ok(self.not_new(device, seq, seen));
        }
        // The event is written before its seq is marked (the mark is written with the next flush): after a crash
        // in between, a redelivery writes the same key again.
        let stored = StoredEvent { device: device.clone(), seq, received_at, event: message };
        events::put(store, &stored)?;
        let (seen, log_len) = self.hot.mark(store, &device, seq, received_at, |t| {
            t.totals.events = t.totals.events.saturating_add(1);
            t.event_log_len = t.event_log_len.saturating_add(1);
        })?;
        if seen != Seen::New {
            return Ok(self.not_new(device, seq, seen));
        }
        let cap = u64::from(self.config.event_log);
        if log_len > cap {
            let removed = events::trim(store, &device, log_len - cap)?;
            self.hot.trimmed(store, &device, removed)?;
        }
        Ok(self.accepted(device, Outcome::Event(Box::new(stored)), Vec::new()))
    }

    /// Makes what was ingested since the last flush durable (windows in the journal, see `hot.rs`; a checkpoint
    /// when one is due), drift trackers included.
    pub fn flush(&self) -> Result<(), IngestError> {
        self.hot.flush(self.store.as_ref())?;
        self.drift.persist()?;
        Ok(self.store.flush()?)
    }

    /// Writes everything in memory to its records, empties the journal and makes it durable: for a shutdown, so
    /// the next start has nothing to replay.
    pub fn checkpoint(&self) -> Result<(), IngestError> {
        self.hot.checkpoint(self.store.as_ref())?;
        self.drift.persist()?;
        Ok(self.store.flush()?)
    }

    /// Writes what is in memory to its records, for a query to see every message ingested before it.
    fn written(&self) -> Result<&dyn Store, IngestError> {
        self.hot.checkpoint(self.store.as_ref())?;
        Ok(self.store.as_ref())
    }

    /// Deletes what is past retention (raw windows, roll-ups, alerts, idle drift trackers), persists the drift
    /// state and flushes. Call it periodically (e.g. every few minutes) with the current time.
    pub fn compact(&self, now: OffsetDateTime) -> Result<CompactReport, IngestError> {
        let (raw_cut, rollup_cut) = compact::cutoffs(now, self.config.raw_days, self.config.rollup_days);
        let mut report = CompactReport::default();
        compact::series(self.written()?, &self.hot, raw_cut, rollup_cut, &mut report)?;
        let (forgotten, alerts) = self.drift.compact(now, u64::from(self.config.alerts_kept), keys::at(rollup_cut))?;
        report.trackers_forgotten = forgotten;
        report.alerts_deleted = alerts;
        // What compaction changed in memory (roll-ups marked, chunks dropped) is not in the journal.
        self.checkpoint()?;
        tracing::info!(
            windows = report.windows_deleted,
            rollups = report.rollups_deleted,
            series = report.series_deleted,
            alerts = report.alerts_deleted,
            trackers = report.trackers_forgotten,
            "ingest compacted"
        );
        Ok(report)
    }

    /// Messages dropped since start, per reason (every reason listed, zero or not).
    pub fn drop_counts(&self) -> BTreeMap<DropReason, u64> {
        DropReason::ALL.into_iter().map(|r| (r, self.drops.get(r))).collect()
    }

    /// Messages accepted (stored or counted) since start.
    pub fn accepted_count(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// One device: state, last status, last seen, totals (frames processed, …). `None` if it never sent anything.
    pub fn device(&self, device: &DeviceId) -> Result<Option<DeviceView>, IngestError> {
        // The rollout engine asks on every status message: the tally in memory answers, without a flush.
        devices::one(self.store.as_ref(), device, self.hot.tally(device))
    }

    /// Devices in id order, after `after`, at most `limit`.
    pub fn devices(&self, after: Option<&DeviceId>, limit: usize) -> Result<Vec<DeviceView>, IngestError> {
        devices::list(self.written()?, after, limit)
    }

    /// Raw window summaries of a device and model version starting in the range, oldest first, at most `limit`.
    pub fn windows(
        &self,
        device: &DeviceId,
        model: &ModelRef,
        range: TimeRange,
        limit: usize,
    ) -> Result<Vec<StoredWindow>, IngestError> {
        series::windows(self.written()?, device, model, range, limit)
    }

    /// Hourly roll-ups of a device and model version (hours starting in `[hour of from, to)`).
    pub fn hourly(
        &self,
        device: &DeviceId,
        model: &ModelRef,
        range: TimeRange,
    ) -> Result<Vec<HourlyRollup>, IngestError> {
        series::hourly(self.written()?, device, model, range)
    }

    /// One device and model version summed over the range (whole hours from roll-ups, the edges from raw windows).
    pub fn summary(&self, device: &DeviceId, model: &ModelRef, range: TimeRange) -> Result<Rollup, IngestError> {
        series::sum(self.written()?, device, model, range)
    }

    /// Per model version, everything the matching devices reported over the range.
    pub fn aggregate(&self, range: TimeRange, filter: &AggregateFilter) -> Result<Vec<Aggregate>, IngestError> {
        series::aggregate(self.written()?, self.directory.as_ref(), range, filter)
    }

    /// A device's events with a seq above `after`, oldest first, at most `limit`.
    pub fn events(&self, device: &DeviceId, after: Option<u64>, limit: usize) -> Result<Vec<StoredEvent>, IngestError> {
        events::list(self.written()?, device, after, limit)
    }

    /// Where drift stands per (model version, group), for one version or all.
    pub fn drift_status(&self, model: Option<&ModelRef>) -> Vec<DriftStatus> {
        self.drift.statuses(model)
    }

    /// Drift alerts with an id above `after`, oldest first, at most `limit`.
    pub fn drift_alerts(&self, after: Option<u64>, limit: usize) -> Result<Vec<StoredAlert>, IngestError> {
        self.drift.alerts(after, limit)
    }

    /// Compares a model version against a stored reference (e.g. its manifest's `baseline`) instead of the
    /// baseline learned from its first windows.
    pub fn set_drift_reference(&self, model: &ModelRef, reference: &ConfidenceBaseline) -> Result<(), IngestError> {
        self.drift.set_reference(model, reference)
    }
}

impl Drop for Ingest {
    /// Writes what is still in memory (the service checkpoints at shutdown; this covers every other owner).
    fn drop(&mut self) {
        if let Err(e) = self.hot.checkpoint(self.store.as_ref()) {
            tracing::warn!(error = %e, "ingest state not written at drop");
        }
    }
}

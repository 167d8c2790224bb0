//! The telemetry a tick judges a stage on: the windows of the canaries (new version, since the stage started) and
//! of the control devices (previous version, same period; or, at the last stage, the stage's own devices before it
//! started), reduced to [`WindowPoint`]s.
//!
//! Design: reading every canary's windows from the store at every tick costs O(devices × windows in the stage)
//! per tick, which grows through a stage and dominated the tick at 10,000 devices. [`WindowCache`] keeps the points
//! of each (device, model version) a tick asked for in memory, and learns new ones from the ingest
//! ([`WindowCache::observe`], fed with every stored window), so a tick reads the store only for what it has never
//! read. The answer is the store's, point for point and in the same order, because:
//! - an entry accepts observed windows from the moment it is created, *before* its first store read, and that read
//!   covers everything from the requested start onwards (no upper bound): a window stored before the entry existed
//!   is in the read, one stored after it is observed, one in both is the same key and kept once;
//! - a request starting earlier than what an entry holds reads only the missing stretch from the store;
//! - points are kept under the store's own key (window start in ms, seq), so they come out in the store's order,
//!   with the same 10,000-window limit per read.
//!
//! An entry nobody asked for in a tick is dropped at its end ([`WindowCache::sweep`]); it is read again if it is
//! asked for later. Forward-moving requests (the stage's period) prune what falls before their start. Ticks run
//! one at a time (the engine's run loop); observations come from any thread.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use outpost_common::protocol::{ModelRef, WindowSummary};
use outpost_common::topics::DeviceId;
use time::OffsetDateTime;

use super::engine::RolloutError;
use super::gates::{ControlKind, Telemetry, WindowPoint};
use crate::ingest::{Ingest, StoredWindow, TimeRange};

/// The most windows of one device read per request (as the store read always did).
pub const MAX_WINDOWS_PER_DEVICE: usize = 10_000;

/// A window's figures, without the device (the entry's key says it).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Figures {
    frames: u64,
    mean_confidence: Option<f64>,
    flagged_share: f64,
    p95_ms: f64,
}

impl Figures {
    fn of(w: &WindowSummary) -> Figures {
        Figures {
            frames: w.frames,
            mean_confidence: w.confidence.mean(),
            flagged_share: if w.frames == 0 { 0.0 } else { w.flagged as f64 / w.frames as f64 },
            p95_ms: f64::from(w.latency_ms.p95),
        }
    }

    fn point(self, device: &str) -> WindowPoint {
        WindowPoint {
            device: device.to_string(),
            frames: self.frames,
            mean_confidence: self.mean_confidence,
            flagged_share: self.flagged_share,
            p95_ms: self.p95_ms,
        }
    }
}

/// The store's key order of a device's windows of one version: start (ms), then seq.
type WindowKey = (i64, u64);

fn key(w: &WindowSummary, seq: u64) -> WindowKey {
    (crate::ingest::key_ms(w.start), seq)
}

#[derive(Debug, Default)]
struct Entry {
    /// Every window starting at or after this is held (read, or observed since the entry exists); `None` until the
    /// first read.
    loaded_from: Option<OffsetDateTime>,
    points: BTreeMap<WindowKey, Figures>,
    used: bool,
}

/// Reads a device's stored windows of one version starting in a range, oldest first, at most `limit`.
pub trait WindowSource {
    fn windows(
        &self,
        device: &DeviceId,
        model: &ModelRef,
        range: TimeRange,
        limit: usize,
    ) -> Result<Vec<StoredWindow>, RolloutError>;
}

impl WindowSource for Ingest {
    fn windows(
        &self,
        device: &DeviceId,
        model: &ModelRef,
        range: TimeRange,
        limit: usize,
    ) -> Result<Vec<StoredWindow>, RolloutError> {
        Ok(Ingest::windows(self, device, model, range, limit)?)
    }
}

/// Window points per (device, model version) in memory: see the module documentation.
#[derive(Debug, Default)]
pub struct WindowCache {
    entries: Mutex<HashMap<(String, ModelRef), Entry>>,
    /// Windows read from the store, and window points handed to ticks (what reading the store at every tick read).
    read: AtomicU64,
    served: AtomicU64,
}

/// What the cache saved: windows read from the store vs window points served to ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub read: u64,
    pub served: u64,
}

/// The end of time as the store's keys know it: a first read covers every window from its start onwards.
fn forever() -> OffsetDateTime {
    time::Date::MAX.midnight().assume_utc()
}

impl WindowCache {
    fn lock(&self) -> MutexGuard<'_, HashMap<(String, ModelRef), Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A window the ingest stored: kept if its (device, version) has an entry.
    pub fn observe(&self, device: &str, seq: u64, window: &WindowSummary) {
        let mut entries = self.lock();
        // Called for every stored window: nothing to allocate while no tick reads windows (no active rollout).
        if entries.is_empty() {
            return;
        }
        if let Some(entry) = entries.get_mut(&(device.to_string(), window.model.clone())) {
            entry.points.insert(key(window, seq), Figures::of(window));
        }
    }

    /// The points of `device`'s windows of `model` starting in `range`, oldest first, at most
    /// [`MAX_WINDOWS_PER_DEVICE`]: what the store holds, read from it only where this cache does not hold it yet.
    /// `forward`: later requests for this entry never start before `range.from`, so what lies before is dropped.
    pub fn points(
        &self,
        source: &dyn WindowSource,
        device: &str,
        model: &ModelRef,
        range: TimeRange,
        forward: bool,
    ) -> Result<Vec<WindowPoint>, RolloutError> {
        let Ok(id) = DeviceId::new(device) else { return Ok(Vec::new()) };
        let entry_key = (device.to_string(), model.clone());
        // Register first, so every window stored from now on is observed; then read what is missing.
        let missing = {
            let mut entries = self.lock();
            let entry = entries.entry(entry_key.clone()).or_default();
            entry.used = true;
            match entry.loaded_from {
                None => Some(TimeRange::new(range.from, forever())),
                Some(from) if range.from < from => Some(TimeRange::new(range.from, from)),
                Some(_) => None,
            }
        };
        let read = match missing {
            Some(gap) => Some(source.windows(&id, model, gap, usize::MAX)?),
            None => None,
        };
        let mut entries = self.lock();
        let entry = entries.entry(entry_key).or_default();
        entry.used = true;
        if let Some(read) = read {
            self.read.fetch_add(read.len() as u64, Ordering::Relaxed);
            for w in &read {
                entry.points.insert(key(&w.window, w.seq), Figures::of(&w.window));
            }
            entry.loaded_from = Some(entry.loaded_from.map_or(range.from, |f| f.min(range.from)));
        }
        let (from, to) = (crate::ingest::key_ms(range.from), crate::ingest::key_ms(range.to));
        if forward && let Some(loaded) = entry.loaded_from.filter(|l| *l < range.from) {
            entry.points = entry.points.split_off(&(from, 0));
            entry.loaded_from = Some(range.from.max(loaded));
        }
        if from >= to {
            return Ok(Vec::new());
        }
        let points: Vec<WindowPoint> =
            entry.points.range((from, 0)..(to, 0)).take(MAX_WINDOWS_PER_DEVICE).map(|(_, f)| f.point(device)).collect();
        self.served.fetch_add(points.len() as u64, Ordering::Relaxed);
        Ok(points)
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats { read: self.read.load(Ordering::Relaxed), served: self.served.load(Ordering::Relaxed) }
    }

    /// Ends a tick: drops the entries it did not ask for, and marks the others unasked for the next one.
    pub fn sweep(&self) {
        let mut entries = self.lock();
        entries.retain(|_, e| std::mem::take(&mut e.used));
    }

    /// Held points over every entry (for tests and the bench's curiosity).
    pub fn len(&self) -> usize {
        self.lock().values().map(|e| e.points.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a tick reads telemetry for, copied out of the engine's lock.
#[derive(Debug)]
pub struct Snapshot {
    pub id: String,
    pub model: String,
    pub version: u64,
    pub stage_started_at: OffsetDateTime,
    pub canaries: Vec<String>,
    pub controls: Vec<(String, u64)>,
    pub joined: Vec<(String, u64)>,
}

/// The telemetry a rollout's current stage is judged on.
pub fn gather(
    cache: &WindowCache,
    ingest: &Ingest,
    plan: &Snapshot,
    now: OffsetDateTime,
) -> Result<Telemetry, RolloutError> {
    let stage = TimeRange::new(plan.stage_started_at, now);
    let new = ModelRef { name: plan.model.clone(), version: plan.version };
    let mut canary = Vec::new();
    for d in &plan.canaries {
        canary.extend(cache.points(ingest, d, &new, stage, true)?);
    }
    let mut control = Vec::new();
    let kind = if plan.controls.is_empty() { ControlKind::BeforeAfter } else { ControlKind::Concurrent };
    let (devices, range) = match kind {
        ControlKind::Concurrent => (&plan.controls, stage),
        ControlKind::BeforeAfter => {
            (&plan.joined, TimeRange::new(plan.stage_started_at - (now - plan.stage_started_at), plan.stage_started_at))
        }
    };
    for (d, previous) in devices {
        let old = ModelRef { name: plan.model.clone(), version: *previous };
        control.extend(cache.points(ingest, d, &old, range, kind == ControlKind::Concurrent)?);
    }
    let drift_alert =
        ingest.drift_status(Some(&new)).into_iter().find(|s| s.alerting).map(|s| {
            format!("{} v{} drifting in {:?} (psi {:.3})", new.name, new.version, s.group, s.psi.unwrap_or(0.0))
        });
    Ok(Telemetry { canary, control, control_kind: kind, drift_alert })
}

#[cfg(test)]
mod tests;

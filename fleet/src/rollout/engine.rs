//! The rollout engine: the state machines of every rollout, fed by the ingest (device status and update events)
//! and by a periodic tick (gates from stored telemetry, install timeouts), persisted before any command leaves.
//!
//! Design: one mutex guards the rollouts in memory; the store is written under it (small records) and flushed once
//! per tick, before the tick's commands are sent. Commands carry a per-(rollout, version) id, so a resend after a
//! lost message or a fleet restart is acted on once. Devices get commands only while online; one that was offline
//! converges when it returns (its status arrives, its target is sent), or through its periodic assignment check.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use outpost_common::manifest::Envelope;
use outpost_common::protocol::{self, AgentState, AssignModel, Command, CommandBody, EventBody, Status};
use outpost_common::store::Store;
use outpost_common::topics::DeviceId;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::machine::{Changes, Header, Member, NotNow, Report, Rollout};
use super::plan::RolloutPlan;
/// The engine's loop (`runner.rs`), where `serve` has always found it.
pub use super::runner::run;
use super::store::{self as rstore, RolloutStoreError};
use super::telemetry::{self, Snapshot, WindowCache};
use crate::error::ErrorKind;
use crate::ingest::{DeviceDirectory, Ingest, Ingested, Outcome};
use crate::registry::Registry;

/// A version as the model registry holds it: what an assignment needs.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredVersion {
    pub manifest: Envelope,
    pub artifact_url: String,
    /// The manifest's anti-rollback floor: devices that commit this version refuse anything older.
    pub min_version: u64,
    pub deprecated: bool,
    /// After this, devices refuse the manifest.
    pub expires_at: OffsetDateTime,
}

/// Where signed versions come from: the model registry.
pub trait VersionSource: Send + Sync + std::fmt::Debug {
    fn version(&self, name: &str, version: u64) -> Result<Option<StoredVersion>, String>;
}

/// `[rollouts]` in fleet.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// How often gates are evaluated and commands sent.
    pub tick_secs: u64,
    /// A device that was sent its target and does not run it yet is sent it again after this long.
    pub resend_secs: u64,
    /// At most this many control devices' windows are read per evaluation (the ones joining last).
    pub max_control_devices: usize,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig { tick_secs: 2, resend_secs: 60, max_control_devices: 200 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("no rollout `{0}`")]
    NotFound(String),
    #[error(transparent)]
    NotNow(#[from] NotNow),
    #[error(transparent)]
    Store(#[from] RolloutStoreError),
    #[error("reading telemetry: {0}")]
    Ingest(#[from] crate::ingest::IngestError),
    #[error("the model registry failed: {0}")]
    Registry(String),
}

impl RolloutError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            RolloutError::Invalid(_) => ErrorKind::Invalid,
            RolloutError::Conflict(_) | RolloutError::NotNow(_) => ErrorKind::Conflict,
            RolloutError::NotFound(_) => ErrorKind::NotFound,
            RolloutError::Store(_) | RolloutError::Ingest(_) | RolloutError::Registry(_) => ErrorKind::Internal,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            RolloutError::Invalid(_) => "invalid_plan",
            RolloutError::Conflict(_) => "conflict",
            RolloutError::NotNow(_) => "not_now",
            RolloutError::NotFound(_) => "not_found",
            RolloutError::Store(_) | RolloutError::Ingest(_) | RolloutError::Registry(_) => "internal",
        }
    }
}

/// An operator action on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Approve,
    Abort,
}

/// A command to send, prepared by a tick.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub rollout: String,
    pub device: String,
    pub version: u64,
    pub command: Command,
}

#[derive(Debug, Default)]
struct Book {
    rollouts: BTreeMap<String, Rollout>,
    /// Each device's latest rollout: the one that decides its target.
    latest: HashMap<String, String>,
}

/// What ticks cost, for `/metrics` and the rollout bench.
#[derive(Debug, Default)]
struct TickTimes {
    count: AtomicU64,
    nanos: AtomicU64,
    max_nanos: AtomicU64,
}

/// Ticks so far: how many, their total and longest wall time, and the windows they judged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickStats {
    pub count: u64,
    pub total: Duration,
    pub max: Duration,
    /// Windows read from the store vs window points judged (which a tick reading the store every time would read).
    pub windows: telemetry::CacheStats,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    ingest: Arc<Ingest>,
    registry: Registry,
    versions: Arc<dyn VersionSource>,
    config: RolloutConfig,
    book: Mutex<Book>,
    ticks: TickTimes,
    /// The windows ticks judge, kept between ticks (see `telemetry.rs`).
    windows: WindowCache,
}

/// The rollout engine; cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// A device's report for one model, from its stored status. With `offline_served` false, an offline status says
/// nothing about versions (see [`served`]).
fn report(ingest: &Ingest, device: &str, model: &str, offline_served: bool) -> Result<Option<Report>, RolloutError> {
    let Ok(id) = DeviceId::new(device) else { return Ok(None) };
    let Some(view) = ingest.device(&id)? else { return Ok(None) };
    let served = view.status.as_ref().and_then(|s| served(s, model, offline_served));
    Ok(Some(Report { online: view.online, served }))
}

/// The version of `model` a status says is active, and whether it is committed; for an offline status only with
/// `offline_too`.
///
/// A rollout must not read this from an offline status: the last will is the status the agent had when it
/// connected (so a device that committed the new version since then would look as if it went back), and the
/// status an agent publishes when it stops cleanly lists no served models, only the configured one. Only creation
/// reads them, to know what an offline device ran.
fn served(status: &Status, model: &str, offline_too: bool) -> Option<(u64, bool)> {
    if status.state == AgentState::Offline && !offline_too {
        return None;
    }
    status
        .models
        .iter()
        .find(|m| m.name == model)
        .map(|m| (m.active, m.committed))
        .or_else(|| status.model.as_ref().filter(|m| m.name == model).map(|m| (m.version, true)))
}

impl Engine {
    /// Loads every stored rollout.
    pub fn open(
        store: Arc<dyn Store>,
        ingest: Arc<Ingest>,
        registry: Registry,
        versions: Arc<dyn VersionSource>,
        config: RolloutConfig,
    ) -> Result<Engine, RolloutError> {
        let rollouts = rstore::load_all(store.as_ref())?;
        let latest = rstore::load_latest(store.as_ref())?.into_iter().collect();
        let book = Book { rollouts: rollouts.into_iter().map(|r| (r.id().to_string(), r)).collect(), latest };
        let active = book.rollouts.values().filter(|r| r.header.state.is_active()).count();
        tracing::info!(rollouts = book.rollouts.len(), active, "rollouts loaded");
        let book = Mutex::new(book);
        let ticks = TickTimes::default();
        let windows = WindowCache::default();
        Ok(Engine { inner: Arc::new(Inner { store, ingest, registry, versions, config, book, ticks, windows }) })
    }

    pub fn config(&self) -> &RolloutConfig {
        &self.inner.config
    }

    /// What the ticks so far cost (wall time of [`Engine::tick`], sending excluded).
    pub fn tick_stats(&self) -> TickStats {
        let t = &self.inner.ticks;
        TickStats {
            count: t.count.load(Ordering::Relaxed),
            total: Duration::from_nanos(t.nanos.load(Ordering::Relaxed)),
            max: Duration::from_nanos(t.max_nanos.load(Ordering::Relaxed)),
            windows: self.inner.windows.stats(),
        }
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.inner.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn version(&self, name: &str, version: u64) -> Result<Option<StoredVersion>, RolloutError> {
        self.inner.versions.version(name, version).map_err(RolloutError::Registry)
    }

    /// Creates a rollout and starts its first stage (its commands leave with the next tick).
    pub fn create(&self, plan: RolloutPlan, by: &str, now: OffsetDateTime) -> Result<Header, RolloutError> {
        plan.validate().map_err(RolloutError::Invalid)?;
        let target = self.version(&plan.model, plan.version)?.ok_or_else(|| {
            RolloutError::Invalid(format!("{} v{} is not in the model registry", plan.model, plan.version))
        })?;
        if target.deprecated {
            return Err(RolloutError::Invalid(format!("{} v{} is deprecated", plan.model, plan.version)));
        }
        if target.expires_at <= now {
            return Err(RolloutError::Invalid(format!(
                "{} v{}'s manifest expired at {}; devices would refuse it",
                plan.model, plan.version, target.expires_at
            )));
        }
        let devices = self.inner.registry.list().map_err(|e| RolloutError::Registry(e.to_string()))?;
        let known: BTreeMap<&str, _> = devices.iter().filter(|d| !d.revoked).map(|d| (d.id.as_str(), d)).collect();
        if let Some(missing) = plan.target.devices.iter().find(|d| !known.contains_key(d.as_str())) {
            return Err(RolloutError::Invalid(format!("device `{missing}` is not enrolled (or revoked)")));
        }
        let mut members = Vec::new();
        let mut rollback_to: HashMap<u64, bool> = HashMap::new();
        let mut already = 0usize;
        let mut problems = Vec::new();
        for (id, record) in &known {
            if !(plan.target.devices.iter().any(|d| d == id) || plan.target.matches_tags(&record.tags)) {
                continue;
            }
            let Some(Report { online, served: Some((version, _)) }) =
                report(&self.inner.ingest, id, &plan.model, true)?
            else {
                problems.push(format!("`{id}` has not reported running {}", plan.model));
                continue;
            };
            if version == plan.version {
                already += 1;
                continue;
            }
            // One registry lookup per version, not per device (10,000 devices on v1 are one lookup).
            let stored = match rollback_to.get(&version) {
                Some(&known) => known,
                None => {
                    let known = self.version(&plan.model, version)?.is_some();
                    rollback_to.insert(version, known);
                    known
                }
            };
            if !stored {
                problems.push(format!(
                    "`{id}` runs {} v{version}, which is not in the registry to roll back to",
                    plan.model
                ));
                continue;
            }
            if version < target.min_version {
                problems.push(format!(
                    "`{id}` runs v{version}, below v{}'s anti-rollback floor {}: it could not roll back",
                    plan.version, target.min_version
                ));
                continue;
            }
            let site = record.tags.get(&plan.spread_tag).cloned();
            members.push(Member { id: id.to_string(), site, version, online });
        }
        if !problems.is_empty() {
            let more = problems.len().saturating_sub(5);
            let mut text = problems.into_iter().take(5).collect::<Vec<_>>().join("; ");
            if more > 0 {
                text.push_str(&format!("; and {more} more"));
            }
            return Err(RolloutError::Invalid(text));
        }
        if members.is_empty() {
            return Err(RolloutError::Invalid(format!(
                "no targeted device needs {} v{} ({already} already run it)",
                plan.model, plan.version
            )));
        }
        let mut book = self.book();
        let busy: Vec<String> = members
            .iter()
            .filter_map(|m| {
                let r = book.latest.get(&m.id)?;
                book.rollouts.get(r).filter(|r| r.header.state.is_active()).map(|r| format!("`{}` ({})", m.id, r.id()))
            })
            .take(5)
            .collect();
        if !busy.is_empty() {
            return Err(RolloutError::Conflict(format!(
                "devices already in an active rollout: {}; one rollout per device at a time",
                busy.join(", ")
            )));
        }
        let id = rstore::next_id(self.inner.store.as_ref())?;
        let mut rollout = Rollout::start(id.clone(), plan, &members, by, now);
        if already > 0 {
            rollout.header.history.push(super::machine::HistoryEntry {
                at: now,
                what: format!("{already} targeted devices already run this version and are left out"),
            });
        }
        rstore::put_new(self.inner.store.as_ref(), &rollout)?;
        self.inner.store.flush().map_err(RolloutStoreError::from)?;
        for m in &members {
            book.latest.insert(m.id.clone(), id.clone());
        }
        let header = rollout.header.clone();
        book.rollouts.insert(id, rollout);
        Ok(header)
    }

    /// Every rollout's header, newest first.
    pub fn list(&self) -> Vec<Header> {
        let book = self.book();
        let mut out: Vec<Header> = book.rollouts.values().map(|r| r.header.clone()).collect();
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
        out
    }

    pub fn get(&self, id: &str) -> Option<Rollout> {
        self.book().rollouts.get(id).cloned()
    }

    /// Pause, resume, approve or abort.
    pub fn act(
        &self,
        id: &str,
        action: Action,
        by: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<Header, RolloutError> {
        let mut book = self.book();
        let rollout = book.rollouts.get_mut(id).ok_or_else(|| RolloutError::NotFound(id.to_string()))?;
        let changes = match action {
            Action::Pause => rollout.pause(by, now)?,
            Action::Resume => rollout.resume(by, now)?,
            Action::Approve => rollout.approve(by, now)?,
            Action::Abort => rollout.abort(if reason.is_empty() { "operator abort" } else { reason }, by, now)?,
        };
        rstore::put_changes(self.inner.store.as_ref(), rollout, &changes)?;
        self.inner.store.flush().map_err(RolloutStoreError::from)?;
        Ok(rollout.header.clone())
    }

    /// What `device` should run: its latest rollout's target for it, as an `assign_model`.
    pub fn assignment(&self, device: &str) -> Result<Option<AssignModel>, RolloutError> {
        let (model, version, rollout) = {
            let book = self.book();
            let Some(r) = book.latest.get(device).and_then(|r| book.rollouts.get(r)) else { return Ok(None) };
            let Some(target) = r.devices.get(device).and_then(|d| d.target(r.version())) else { return Ok(None) };
            (r.header.plan.model.clone(), target, r.id().to_string())
        };
        Ok(self.version(&model, version)?.map(|v| AssignModel {
            manifest: v.manifest,
            artifact_url: v.artifact_url,
            rollout: Some(rollout),
        }))
    }

    /// Whether any rollout refers to this version (as its target, or as a device's version to go back to).
    pub fn in_use(&self, name: &str, version: u64) -> bool {
        self.book().rollouts.values().any(|r| {
            r.header.plan.model == name && (r.version() == version || r.devices.values().any(|d| d.previous == version))
        })
    }

    /// Feeds one ingested message: a status or an update event of a device in a rollout, or a stored window (kept
    /// if a tick reads that device's windows of that version).
    pub fn observe(&self, ingested: &Ingested, now: OffsetDateTime) {
        let Some(device) = &ingested.device else { return };
        let id = device.as_str();
        if let Outcome::Window { seq, window, .. } = &ingested.outcome {
            self.inner.windows.observe(id, *seq, window);
            return;
        }
        let Some((rollout_id, model)) = ({
            let book = self.book();
            book.latest
                .get(id)
                .and_then(|r| book.rollouts.get(r))
                .map(|r| (r.id().to_string(), r.header.plan.model.clone()))
        }) else {
            return;
        };
        let result = match &ingested.outcome {
            Outcome::Status(_) => match report(&self.inner.ingest, id, &model, false) {
                Ok(Some(report)) => self.apply(&rollout_id, |r| r.observe(id, report, now)),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            },
            Outcome::Event(stored) => match &stored.event.body {
                EventBody::UpdateRejected(e) => {
                    let version = e.model.as_ref().map(|m| m.version);
                    self.apply(&rollout_id, |r| r.rejected(id, version, &e.command_id, &e.code, &e.reason, now))
                }
                EventBody::SwapReverted(e) => {
                    let reason = format!("reverted in its health window: {}", e.reason);
                    self.apply(&rollout_id, |r| r.failed(id, Some(e.model.version), &e.command_id, &reason, now))
                }
                _ => Ok(()),
            },
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(device = id, rollout = %rollout_id, error = %e, "rollout observation not recorded");
        }
    }

    fn apply(&self, id: &str, f: impl FnOnce(&mut Rollout) -> Changes) -> Result<(), RolloutError> {
        let mut book = self.book();
        let Some(rollout) = book.rollouts.get_mut(id) else { return Ok(()) };
        let changes = f(rollout);
        rstore::put_changes(self.inner.store.as_ref(), rollout, &changes)?;
        Ok(())
    }

    /// One round: gates and timeouts for each active rollout, everything persisted and flushed, then the commands
    /// that are due (for the caller to send, then report with [`Engine::sent`]). Blocking (store reads).
    pub fn tick(&self, now: OffsetDateTime) -> Result<Vec<Outgoing>, RolloutError> {
        let started = std::time::Instant::now();
        let result = self.tick_inner(now);
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let t = &self.inner.ticks;
        t.count.fetch_add(1, Ordering::Relaxed);
        t.nanos.fetch_add(nanos, Ordering::Relaxed);
        t.max_nanos.fetch_max(nanos, Ordering::Relaxed);
        result
    }

    fn tick_inner(&self, now: OffsetDateTime) -> Result<Vec<Outgoing>, RolloutError> {
        let snapshots: Vec<Snapshot> = {
            let book = self.book();
            book.rollouts.values().filter(|r| r.header.state.is_active()).map(|r| self.snapshot(r)).collect()
        };
        let cache = &self.inner.windows;
        for snap in &snapshots {
            let telemetry = match telemetry::gather(cache, &self.inner.ingest, snap, now) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(rollout = %snap.id, error = %e, "rollout telemetry unreadable; gates not evaluated");
                    continue;
                }
            };
            self.apply(&snap.id, |r| r.tick(&telemetry, now))?;
        }
        cache.sweep();
        self.inner.store.flush().map_err(RolloutStoreError::from)?;

        let resend = time::Duration::seconds(i64::try_from(self.inner.config.resend_secs).unwrap_or(i64::MAX));
        let due: Vec<(String, String, String, u64)> = {
            let book = self.book();
            book.rollouts
                .values()
                .flat_map(|r| {
                    r.due(now, resend)
                        .into_iter()
                        // Only a device's latest rollout speaks for it.
                        .filter(|(d, _)| book.latest.get(d).is_some_and(|l| l == r.id()))
                        .map(|(d, v)| (r.id().to_string(), r.header.plan.model.clone(), d, v))
                })
                .collect()
        };
        let mut versions: HashMap<u64, Option<StoredVersion>> = HashMap::new();
        let mut out = Vec::with_capacity(due.len());
        for (rollout, model, device, version) in due {
            let stored = match versions.get(&version) {
                Some(v) => v.clone(),
                None => {
                    let v = self.version(&model, version)?;
                    versions.insert(version, v.clone());
                    v
                }
            };
            let Some(stored) = stored else {
                tracing::warn!(rollout = %rollout, model = %model, version, "version gone from the registry; not sent");
                continue;
            };
            let command = Command {
                schema: protocol::SCHEMA,
                id: format!("{rollout}.v{version}"),
                issued_at: now,
                body: CommandBody::AssignModel(AssignModel {
                    manifest: stored.manifest,
                    artifact_url: stored.artifact_url,
                    rollout: Some(rollout.clone()),
                }),
            };
            out.push(Outgoing { rollout, device, version, command });
        }
        Ok(out)
    }

    /// Records that a command was handed to the broker.
    pub fn sent(&self, rollout: &str, device: &str, version: u64, now: OffsetDateTime) -> Result<(), RolloutError> {
        self.apply(rollout, |r| r.sent(device, version, now))
    }

    /// The key sealing a device's commands; `None` once it is revoked.
    pub(super) fn device_key(&self, device: &DeviceId) -> Option<outpost_common::protocol::auth::DeviceKey> {
        self.inner.registry.key(device)
    }

    /// Records many handed commands: (rollout, device, version, when), one lock and one store write per rollout.
    pub fn sent_all(&self, sent: &[(String, String, u64, OffsetDateTime)]) -> Result<(), RolloutError> {
        let mut by_rollout: BTreeMap<&str, Vec<(&str, u64, OffsetDateTime)>> = BTreeMap::new();
        for (rollout, device, version, at) in sent {
            by_rollout.entry(rollout).or_default().push((device, *version, *at));
        }
        for (rollout, sends) in by_rollout {
            self.apply(rollout, |r| {
                let mut changes = Changes::default();
                for (device, version, at) in sends {
                    changes.merge(r.sent(device, version, at));
                }
                changes
            })?;
        }
        Ok(())
    }

    fn snapshot(&self, r: &Rollout) -> Snapshot {
        let max = self.inner.config.max_control_devices;
        let mut controls: Vec<(&String, u32, u64)> = r
            .devices
            .iter()
            .filter(|(_, d)| d.phase == super::Phase::Control)
            .map(|(id, d)| (id, d.position, d.previous))
            .collect();
        // The devices joining last stay control longest: read those.
        controls.sort_by_key(|c| std::cmp::Reverse(c.1));
        controls.truncate(max);
        let joined: Vec<(String, u64)> =
            r.joined_this_stage().filter_map(|id| r.devices.get(id).map(|d| (id.to_string(), d.previous))).collect();
        Snapshot {
            id: r.id().to_string(),
            model: r.header.plan.model.clone(),
            version: r.version(),
            stage_started_at: r.header.stage_started_at,
            canaries: r.canaries().map(String::from).collect(),
            controls: controls.into_iter().map(|(id, _, prev)| (id.clone(), prev)).collect(),
            joined,
        }
    }
}

impl crate::models::VersionsInUse for Engine {
    fn in_use(&self, name: &str, version: u64) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Engine::in_use(self, name, version))
    }
}

#[cfg(test)]
mod tests;

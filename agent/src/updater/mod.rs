//! Signed model updates on a running agent: commands in, a new version swapped in with no dropped frame, judged
//! in a health window, then committed or reverted — with every step reported as an event.
//!
//! Flow of one `assign_model` (each step can end it with an `update_rejected` event, the old version serving on):
//! verify the manifest (trusted keys, family, floor) → download (resumable, capped, hashed) → install into its slot
//! → check memory → load one session per camera beside the serving ones, checked against the manifest, warmed up
//! on the camera's latest frame → record the trial on disk → swap every camera between two frames → health window
//! → commit (slot record, version floor) or swap back and mark the version bad.
//!
//! The slot store's start count makes a version that crashes the process revert after `max_trial_starts` starts
//! with no network; [`serving::choose`] applies it at start-up.

pub mod config;
pub mod memory;
pub mod seen;
pub mod serving;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_common::manifest::{FloorStore, Policy, TrustedKeys, VerifiedManifest};
use outpost_common::protocol::{
    AgentState, AssignModel, Command, CommandAck, CommandBody, EventBody, ModelRef, Status, SwapCommitted,
    SwapReverted, UpdateProgress, UpdateRejected, UpdateStage,
};
use outpost_common::vision::Vision;
use outpost_common::vision::engine::Runtime;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::config::{SwapMode, UpdatesConfig};
use self::seen::SeenCommands;
use self::serving::{Serving, Shared};
use crate::link::LinkHandle;
use crate::pipeline::Served;
use crate::trial::{Trial, Verdict};
use crate::update::{DownloadRequest, Downloader, SlotStore};

/// An update that ended without a swap: the code for the event and why.
#[derive(Debug)]
struct Rejection {
    code: &'static str,
    reason: String,
}

fn reject(code: &'static str, reason: impl std::fmt::Display) -> Rejection {
    Rejection { code, reason: reason.to_string() }
}

/// Everything the updater works with.
pub struct Updater {
    pub config: UpdatesConfig,
    pub trusted: Option<TrustedKeys>,
    pub family: String,
    pub rt: &'static Runtime,
    pub slots: SlotStore,
    pub floors: FloorStore,
    pub serving: BTreeMap<String, Serving>,
    pub shared: Arc<Shared>,
    pub link: LinkHandle,
    /// The running status; the updater keeps its state and model list current.
    pub status: Arc<Mutex<Status>>,
    pub downloader: Downloader,
    /// For the fleet check.
    pub http: reqwest::Client,
    /// `(base URL, device token)` of the fleet's HTTP API.
    pub fleet: Option<(String, String)>,
    pub device: String,
    pub seen: SeenCommands,
    /// Trials of versions started uncommitted (after a restart mid-trial), judged like any other.
    pub boot_trials: Vec<ModelRef>,
}

impl std::fmt::Debug for Updater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater").field("serving", &self.serving.keys().collect::<Vec<_>>()).finish_non_exhaustive()
    }
}

impl Updater {
    /// Handles commands and the fleet check until `shutdown`.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        self.publish_status(AgentState::Running);
        for model in std::mem::take(&mut self.boot_trials) {
            self.judge("startup", model, None, &shutdown).await;
        }
        let interval = Duration::from_secs(self.config.check_interval_secs.max(1));
        let mut check = tokio::time::interval(interval);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let polling = self.config.check_interval_secs > 0 && self.fleet.is_some();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                c = commands.recv() => match c {
                    Some(c) => self.handle(c, &shutdown).await,
                    None => break,
                },
                _ = check.tick(), if polling => self.check_fleet(&shutdown).await,
            }
        }
    }

    fn event(&self, body: EventBody) {
        if let Err(e) = self.link.publish_event(body) {
            tracing::warn!(error = %e, "update event not queued");
        }
    }

    fn publish_status(&self, state: AgentState) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.state = state;
        status.at = OffsetDateTime::now_utc();
        status.models = self.serving.values().map(Serving::status).collect();
        status.model = self.serving.values().next().map(Serving::active_ref);
        self.link.set_status(status.clone());
    }

    async fn handle(&mut self, command: Command, shutdown: &CancellationToken) {
        if !self.seen.first_time(&command.id) {
            tracing::info!(command = %command.id, "command seen before; ignored (replay)");
            return;
        }
        match command.body {
            CommandBody::AssignModel(assign) => {
                self.ack(&command.id, true, None);
                self.update(&command.id, assign, shutdown).await;
            }
            CommandBody::SetConfig(_) => {
                self.ack(&command.id, false, Some("set_config is not supported by this agent version".into()));
            }
            CommandBody::RotateKeys { key_set } => {
                let result = match &self.trusted {
                    Some(t) => t.rotate_envelope(&key_set).map_err(|e| e.to_string()),
                    None => Err("no trusted keys configured".into()),
                };
                match result {
                    Ok(next) => {
                        tracing::info!(
                            version = next.version(),
                            "trusted keys rotated (until restart; update the config)"
                        );
                        self.trusted = Some(next);
                        self.ack(&command.id, true, None);
                    }
                    Err(reason) => self.ack(&command.id, false, Some(reason)),
                }
            }
        }
    }

    fn ack(&self, id: &str, accepted: bool, reason: Option<String>) {
        self.event(EventBody::CommandAck(CommandAck { command_id: id.to_string(), accepted, reason }));
    }

    /// Asks the fleet for this device's assignment (`GET /api/v1/devices/{id}/assignment`: 200 with an
    /// `assign_model` body, or 204), so a device that missed a command converges.
    async fn check_fleet(&mut self, shutdown: &CancellationToken) {
        let Some((base, token)) = self.fleet.clone() else { return };
        let url = format!("{}/api/v1/devices/{}/assignment", base.trim_end_matches('/'), self.device);
        let response = match self.http.get(&url).bearer_auth(&token).send().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "fleet assignment check failed");
                return;
            }
        };
        if response.status() != reqwest::StatusCode::OK {
            return;
        }
        let Ok(bytes) = response.bytes().await else { return };
        let assign: AssignModel = match serde_json::from_slice(&bytes) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "fleet assignment unreadable");
                return;
            }
        };
        // Only act on a valid assignment of a version that is not active here and did not fail here: the check
        // repeats every interval, and must not repeat a rejection each time.
        let Some(trusted) = &self.trusted else { return };
        let policy =
            Policy { now: OffsetDateTime::now_utc(), family: Some(&self.family), floors: self.floors.floors() };
        let verified = match outpost_common::manifest::verify_envelope(&assign.manifest, trusted, &policy) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "the fleet's assignment does not verify; ignored");
                return;
            }
        };
        let (name, version) = (verified.manifest().name.as_str(), verified.manifest().version);
        if self.serving.get(name).is_none_or(|s| s.active == version) {
            return;
        }
        if self.slots.record(name).is_ok_and(|r| r.bad.contains_key(&version)) {
            return;
        }
        let id = format!("check-{name}-{version}");
        self.update(&id, assign, shutdown).await;
    }

    fn progress(&self, id: &str, model: &ModelRef, stage: UpdateStage, bytes: Option<(u64, u64)>) {
        self.event(EventBody::UpdateProgress(UpdateProgress {
            command_id: id.to_string(),
            model: model.clone(),
            stage,
            bytes: bytes.map(|b| b.0),
            total: bytes.map(|b| b.1),
        }));
    }

    async fn update(&mut self, id: &str, assign: AssignModel, shutdown: &CancellationToken) {
        let now = OffsetDateTime::now_utc();
        let verified = match &self.trusted {
            None => Err(reject("no_trusted_keys", "this agent trusts no signing keys ([updates] trusted_keys)")),
            Some(trusted) => {
                let policy = Policy { now, family: Some(&self.family), floors: self.floors.floors() };
                outpost_common::manifest::verify_envelope(&assign.manifest, trusted, &policy)
                    .map_err(|e| reject(e.code(), e))
            }
        };
        let verified = match verified {
            Ok(v) => v,
            Err(r) => return self.rejected(id, None, r),
        };
        let model = ModelRef { name: verified.manifest().name.clone(), version: verified.manifest().version };
        tracing::info!(command = id, model = %model.name, version = model.version, "model update verified");
        self.publish_status(AgentState::Updating);
        let outcome = self.install_and_swap(id, &assign, &verified, shutdown).await;
        match outcome {
            Ok(olds) => self.judge(id, model, Some((verified, olds)), shutdown).await,
            Err(r) => self.rejected(id, Some(model), r),
        }
        self.publish_status(AgentState::Running);
    }

    fn rejected(&self, id: &str, model: Option<ModelRef>, r: Rejection) {
        tracing::warn!(command = id, code = r.code, reason = %r.reason, "model update rejected");
        self.event(EventBody::UpdateRejected(UpdateRejected {
            command_id: id.to_string(),
            model,
            code: r.code.to_string(),
            reason: r.reason,
        }));
    }

    /// Download, install, load, warm up and swap. Returns the models swapped out (to swap back on a failed trial;
    /// `None` per camera when they were unloaded first).
    async fn install_and_swap(
        &mut self,
        id: &str,
        assign: &AssignModel,
        verified: &VerifiedManifest,
        shutdown: &CancellationToken,
    ) -> Result<Vec<Option<Served>>, Rejection> {
        let m = verified.manifest();
        let model = ModelRef { name: m.name.clone(), version: m.version };
        let Some(serving) = self.serving.get(&m.name) else {
            return Err(reject("unknown_model", format!("no camera on this device runs model `{}`", m.name)));
        };
        if serving.active == m.version {
            return Err(reject("already_active", format!("{} is already serving", m.display_name())));
        }
        if let Some(reason) = self.slots.record(&m.name).ok().and_then(|r| r.bad.get(&m.version).cloned()) {
            return Err(reject("marked_bad", format!("{} failed on this device before: {reason}", m.display_name())));
        }

        // Download (or find it installed already).
        let slot = match self.slots.slot(&m.name, m.version) {
            Ok(slot) => slot,
            Err(_) => {
                let url = self.artifact_url(&assign.artifact_url);
                let request = DownloadRequest {
                    url,
                    bearer_token: self.fleet.as_ref().map(|f| f.1.clone()),
                    expected: m.artifact.clone(),
                    dir: self.slots.staging_dir(),
                };
                self.progress(id, &model, UpdateStage::Downloading, Some((0, m.artifact.length)));
                let mut last = 0u8;
                let link = self.link.clone();
                let (cid, mref) = (id.to_string(), model.clone());
                let artifact = self
                    .downloader
                    .fetch(&request, shutdown, move |p| {
                        let pct = p.percent();
                        if pct / 10 != last / 10 {
                            last = pct;
                            let _ = link.publish_event(EventBody::UpdateProgress(UpdateProgress {
                                command_id: cid.clone(),
                                model: mref.clone(),
                                stage: UpdateStage::Downloading,
                                bytes: Some(p.done),
                                total: Some(p.total),
                            }));
                        }
                    })
                    .await
                    .map_err(|e| reject(e.kind(), e))?;
                self.progress(id, &model, UpdateStage::Verifying, None);
                self.slots.install(verified, artifact).map_err(|e| reject(e.kind(), e))?
            }
        };

        // Read and check the bytes once more: only verified bytes reach ONNX Runtime.
        let bytes = tokio::fs::read(slot.model_path()).await.map_err(|e| reject("io", e))?;
        verified.check_artifact_bytes(&bytes).map_err(|e| reject(e.code(), e))?;

        let sessions = serving.cameras.len();
        let extra = memory::session_estimate(bytes.len() as u64).saturating_mul(sessions as u64);
        let budget = (self.config.memory_budget_mb > 0).then_some(self.config.memory_budget_mb << 20);
        let room = memory::check_room(extra, memory::rss_bytes(), budget, memory::available_bytes());
        let unload_first = match (room, self.config.swap_mode) {
            (Ok(()), _) => false,
            (Err(_), SwapMode::UnloadFirst) => true,
            (Err(reason), SwapMode::SideBySide) => return Err(reject("memory", reason)),
        };

        self.progress(id, &model, UpdateStage::Loading, None);
        let pipelines: Vec<_> = serving.cameras.iter().map(|(_, p)| p.clone()).collect();
        let mut olds: Vec<Option<Served>> = Vec::new();
        if unload_first {
            tracing::warn!(model = %m.name, "not enough memory for both versions: unloading the old one first");
            for p in &pipelines {
                olds.push(swap_blocking(p.clone(), None).await?);
            }
        }
        let frames: Vec<_> = {
            let last = self.shared.last_frames();
            serving.cameras.iter().filter_map(|(c, _)| last.get(c).cloned()).collect()
        };
        let (rt, options) = (self.rt, serving.options.clone());
        let verified_for_load = verified.clone();
        let loaded = tokio::task::spawn_blocking(move || -> Result<Vec<Vision>, crate::candidate::CandidateError> {
            let mut visions = serving::load_sessions(rt, &bytes, Some(&verified_for_load), &options, sessions)?;
            for v in &mut visions {
                crate::candidate::warm_up(v, &frames)?;
            }
            Ok(visions)
        })
        .await
        .map_err(|e| reject("load_failed", e))?;
        self.progress(id, &model, UpdateStage::WarmingUp, None);
        let visions = match loaded {
            Ok(v) => v,
            Err(e) => {
                let reason = e.to_string();
                // Never started: mark it bad so no later assignment retries it here.
                if self.slots.begin_trial(&m.name, m.version).is_ok() {
                    let _ = self.slots.revert(&m.name, m.version, &reason);
                }
                if unload_first {
                    self.swap_back(&m.name, olds).await;
                }
                return Err(reject(e.code(), reason));
            }
        };

        self.slots.begin_trial(&m.name, m.version).map_err(|e| reject(e.kind(), e))?;
        self.shared
            .lock_trials()
            .insert(model.clone(), Trial::new(self.config.trial.clone(), m.baseline.clone(), clock()));
        for (p, vision) in pipelines.iter().zip(visions) {
            let old = swap_blocking(p.clone(), Some(Served { model: model.clone(), vision })).await?;
            if !unload_first {
                olds.push(old);
            }
        }
        if let Some(s) = self.serving.get_mut(&m.name) {
            s.previous = Some(s.active);
            s.active = m.version;
            s.committed = false;
        }
        self.progress(id, &model, UpdateStage::Swapped, None);
        self.publish_status(AgentState::Updating);
        Ok(olds)
    }

    fn artifact_url(&self, url: &str) -> String {
        match (&self.fleet, url.starts_with('/')) {
            (Some((base, _)), true) => format!("{}{url}", base.trim_end_matches('/')),
            _ => url.to_string(),
        }
    }

    /// Waits out the health window of `model` (already serving), then commits it or swaps back.
    async fn judge(
        &mut self,
        id: &str,
        model: ModelRef,
        swapped: Option<(VerifiedManifest, Vec<Option<Served>>)>,
        shutdown: &CancellationToken,
    ) {
        self.progress(id, &model, UpdateStage::HealthCheck, None);
        self.shared
            .lock_trials()
            .entry(model.clone())
            .or_insert_with(|| Trial::new(self.config.trial.clone(), None, clock()));
        let verdict = loop {
            let verdict = self.shared.lock_trials().get(&model).map_or(Verdict::Pending, |t| t.verdict(clock()));
            if verdict != Verdict::Pending {
                break verdict;
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    tracing::info!(model = %model.name, version = model.version, "shutting down mid-trial; it resumes at the next start");
                    return;
                }
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        };
        self.shared.lock_trials().remove(&model);
        let previous = self
            .serving
            .get(&model.name)
            .and_then(|s| s.previous)
            .map(|v| ModelRef { name: model.name.clone(), version: v });
        match verdict {
            Verdict::Pass => {
                if let Err(e) = self.slots.commit(&model.name, model.version) {
                    tracing::error!(error = %e, "commit not recorded");
                }
                if let Some((verified, _)) = &swapped
                    && let Err(e) = self.floors.commit(verified)
                {
                    tracing::error!(error = %e, "version floor not raised");
                }
                let _ = self.slots.gc(&model.name);
                if let Some(s) = self.serving.get_mut(&model.name) {
                    s.committed = true;
                }
                tracing::info!(model = %model.name, version = model.version, "model committed");
                self.event(EventBody::SwapCommitted(SwapCommitted { command_id: id.to_string(), model, previous }));
            }
            Verdict::Fail(reason) => {
                tracing::warn!(model = %model.name, version = model.version, reason = %reason, "model failed its health window; reverting");
                match swapped {
                    Some((_, olds)) => self.swap_back(&model.name, olds).await,
                    None => self.restore_previous(&model.name).await,
                }
                let restored = match self.slots.revert(&model.name, model.version, &reason) {
                    Ok(r) => r.to.map(|v| ModelRef { name: model.name.clone(), version: v }),
                    Err(e) => {
                        tracing::error!(error = %e, "revert not recorded");
                        previous.clone()
                    }
                };
                if let Some(s) = self.serving.get_mut(&model.name) {
                    s.active = previous.as_ref().map_or(s.configured.version, |p| p.version);
                    s.previous = None;
                    s.committed = true;
                }
                self.event(EventBody::SwapReverted(SwapReverted {
                    command_id: id.to_string(),
                    model,
                    restored: restored.or(previous),
                    reason,
                }));
            }
            Verdict::Pending => {}
        }
        self.publish_status(AgentState::Running);
    }

    /// Puts the models swapped out back on their cameras; reloads from disk where they were unloaded.
    async fn swap_back(&mut self, name: &str, olds: Vec<Option<Served>>) {
        if olds.iter().any(Option::is_none) || olds.is_empty() {
            return self.restore_previous(name).await;
        }
        let Some(serving) = self.serving.get(name) else { return };
        let pipelines: Vec<_> = serving.cameras.iter().map(|(_, p)| p.clone()).collect();
        for (p, old) in pipelines.into_iter().zip(olds) {
            if let Err(e) = swap_blocking(p, old).await {
                tracing::error!(reason = %e.reason, "swapping back failed");
            }
        }
    }

    /// Loads the version a revert goes back to (the previous installed one, or the configured model) and swaps it in.
    async fn restore_previous(&mut self, name: &str) {
        let Some(serving) = self.serving.get(name) else { return };
        let record = self.slots.record(name).ok();
        let previous = record.and_then(|r| r.previous);
        let source = match previous.map(|v| self.slots.slot(name, v)) {
            Some(Ok(slot)) => slot.model_path(),
            _ => serving.configured_path.clone(),
        };
        let version = previous.unwrap_or(serving.configured.version);
        let (rt, options, count) = (self.rt, serving.options.clone(), serving.cameras.len());
        let loaded = tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&source).map_err(|e| e.to_string())?;
            serving::load_sessions(rt, &bytes, None, &options, count).map_err(|e| e.to_string())
        })
        .await;
        let visions = match loaded {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return tracing::error!(error = %e, "the previous model could not be loaded again"),
            Err(e) => return tracing::error!(error = %e, "the previous model could not be loaded again"),
        };
        let model = ModelRef { name: name.to_string(), version };
        let pipelines: Vec<_> = serving.cameras.iter().map(|(_, p)| p.clone()).collect();
        for (p, vision) in pipelines.into_iter().zip(visions) {
            let _ = swap_blocking(p, Some(Served { model: model.clone(), vision })).await;
        }
    }
}

/// Seconds on a monotonic clock, for trials.
pub(crate) fn clock() -> f64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64()
}

/// Swaps (or, with `None`, unloads) between two frames without blocking an async worker.
async fn swap_blocking(
    pipeline: Arc<crate::pipeline::Pipeline>,
    next: Option<Served>,
) -> Result<Option<Served>, Rejection> {
    let rx = tokio::task::spawn_blocking(move || match next {
        Some(s) => pipeline.swap(s),
        None => pipeline.unload(),
    })
    .await
    .map_err(|e| reject("swap_failed", e))?
    .map_err(|e| reject("swap_failed", e))?;
    rx.await.map_err(|e| reject("swap_failed", e))
}

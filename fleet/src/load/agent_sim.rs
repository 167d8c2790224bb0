//! How a simulated device answers the fleet's commands: the model-update half of the agent
//! (`agent/src/updater/`), replayed as the messages it produces, without inference and without the artifact.
//!
//! For an `assign_model` the simulated device does what the agent's updater does, in the same order and with the
//! same event bodies: a replayed command id is ignored; otherwise `command_ack`, manifest verification against the
//! trusted keys (a failure is `update_rejected` without a model), status `updating`, `already_active` /
//! `marked_bad` rejections, `update_progress` downloading and verifying (only when the version is not installed
//! yet), loading, warming up (a load failure is `update_rejected` `load_failed` and marks the version bad), swapped
//! with a status naming the new version uncommitted, health check, then `swap_committed` and a committed status, or
//! `swap_reverted` with the previous version restored and marked bad. A rollback is an `assign_model` of the old
//! version and is answered the same way (installed already, so no download events).
//!
//! What it does not do: run a model (windows come from the synthetic frames in `device.rs`, their confidence and
//! latency shifted per version by [`VersionBehaviour`]), download the artifact (that is the registry's and the
//! agent downloader's work, measured elsewhere; 10,000 downloads of even a small model would measure the bench
//! machine's loopback and disk, not the rollout engine), or poll the fleet's assignment endpoint (the devices stay
//! connected, so commands reach them; polling would add HTTP load that the engine does not see). The install time
//! is a configured delay instead.
//!
//! Design: a device's serving state ([`Serving`]) is a plain value behind the device's mutex; the decisions about
//! a command are pure functions of it ([`Serving::plan`]), and [`answer`] is the thin async shell that publishes
//! the plan's messages with the configured delays between them.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use outpost_common::manifest::{Floors, Policy, TrustedKeys, verify_envelope};
use outpost_common::protocol::{
    AgentState, AssignModel, Command, CommandAck, CommandBody, EventBody, ModelRef, ServedModel, SwapCommitted,
    SwapReverted, UpdateProgress, UpdateRejected, UpdateStage,
};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::device::Sim;

/// How one model version behaves on the simulated devices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VersionBehaviour {
    /// Added to every frame's detection confidence (clamped to 0..1): negative simulates a worse version.
    pub confidence_shift: f32,
    /// Multiplies every frame's inference latency.
    pub latency_factor: f32,
    /// Share of devices (0..1) that fail to load this version: `update_rejected` `load_failed`.
    pub load_failure_share: f64,
    /// Share of devices (0..1) that load it but revert it in their health window: `swap_reverted`.
    pub revert_share: f64,
}

impl Default for VersionBehaviour {
    fn default() -> Self {
        VersionBehaviour { confidence_shift: 0.0, latency_factor: 1.0, load_failure_share: 0.0, revert_share: 0.0 }
    }
}

/// How the simulated devices answer updates.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// The model every device serves (on one camera).
    pub model: String,
    /// The version every device starts on, committed and installed.
    pub initial_version: u64,
    /// Keys manifests must be signed with; `None` reads the manifest body without checking signatures.
    pub trusted: Option<TrustedKeys>,
    /// From the command to the swap: what download, install, load and warm-up take on a real device.
    pub install_delay: Duration,
    /// From the swap to the commit (or revert): the agent's health window.
    pub health_window: Duration,
    /// Per version; versions not listed behave like [`VersionBehaviour::default`].
    pub versions: BTreeMap<u64, VersionBehaviour>,
}

impl Behaviour {
    pub fn new(model: &str, initial_version: u64) -> Behaviour {
        Behaviour {
            model: model.to_string(),
            initial_version,
            trusted: None,
            install_delay: Duration::from_secs(1),
            health_window: Duration::from_secs(2),
            versions: BTreeMap::new(),
        }
    }

    pub fn version(&self, version: u64) -> VersionBehaviour {
        self.versions.get(&version).copied().unwrap_or_default()
    }
}

/// Whether the device at `index` is in the first `share` of devices for `version`: a deterministic draw, so a run
/// is repeatable and a version's failing devices are the same ones at every resend.
pub fn drawn(index: u64, version: u64, salt: u64, share: f64) -> bool {
    if share <= 0.0 {
        return false;
    }
    let mut rng = fastrand::Rng::with_seed(index.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ version.rotate_left(17) ^ salt);
    rng.f64() < share
}

/// What a device serves, as the agent's updater keeps it (`Serving`, the slot store's installed and bad versions,
/// the version floor, the seen command ids).
#[derive(Debug, Clone, PartialEq)]
pub struct Serving {
    pub model: String,
    pub active: u64,
    pub previous: Option<u64>,
    pub committed: bool,
    pub installed: BTreeSet<u64>,
    /// Versions that failed here, with why: never tried again.
    pub bad: BTreeMap<u64, String>,
    pub floors: Floors,
    pub seen: HashSet<String>,
}

/// How an update will end, decided when it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A command seen before: nothing is published.
    Replay,
    /// Refused before any work: `update_rejected` (with the model when the manifest was readable).
    Reject { model: Option<ModelRef>, code: String, reason: String },
    /// Installed (downloaded first unless `installed`), then loaded: fails with `load_failed`, or swaps and is
    /// judged: `revert` swaps back.
    Install { model: ModelRef, length: u64, installed: bool, load_fails: bool, revert: bool, min_version: u64 },
}

impl Serving {
    pub fn new(model: &str, version: u64) -> Serving {
        Serving {
            model: model.to_string(),
            active: version,
            previous: None,
            committed: true,
            installed: BTreeSet::from([version]),
            bad: BTreeMap::new(),
            floors: Floors::default(),
            seen: HashSet::new(),
        }
    }

    /// The status's model list entry.
    pub fn served(&self) -> ServedModel {
        ServedModel {
            name: self.model.clone(),
            active: self.active,
            previous: self.previous,
            committed: self.committed,
        }
    }

    pub fn active_ref(&self) -> ModelRef {
        ModelRef { name: self.model.clone(), version: self.active }
    }

    /// Decides how `assign` (command `id`) ends on this device; records the id as seen. `index` is the device's
    /// draw for the failure shares. Pure apart from `now` (the manifest's expiry).
    pub fn plan(
        &mut self,
        id: &str,
        assign: &AssignModel,
        behaviour: &Behaviour,
        index: u64,
        now: OffsetDateTime,
    ) -> Plan {
        if !self.seen.insert(id.to_string()) {
            return Plan::Replay;
        }
        let manifest = match &behaviour.trusted {
            Some(trusted) => {
                let policy = Policy { now, family: Some(super::device::FAMILY), floors: &self.floors };
                match verify_envelope(&assign.manifest, trusted, &policy) {
                    Ok(v) => v.manifest().clone(),
                    Err(e) => return Plan::Reject { model: None, code: e.code().into(), reason: e.to_string() },
                }
            }
            None => match serde_json::from_slice::<outpost_common::manifest::Manifest>(&assign.manifest.body) {
                Ok(m) => m,
                Err(e) => return Plan::Reject { model: None, code: "malformed".into(), reason: e.to_string() },
            },
        };
        let model = ModelRef { name: manifest.name.clone(), version: manifest.version };
        if manifest.name != self.model {
            let reason = format!("no camera on this device runs model `{}`", manifest.name);
            return Plan::Reject { model: Some(model), code: "unknown_model".into(), reason };
        }
        if manifest.version == self.active {
            let reason = format!("{} v{} is already serving", model.name, model.version);
            return Plan::Reject { model: Some(model), code: "already_active".into(), reason };
        }
        if let Some(reason) = self.bad.get(&manifest.version) {
            let reason = format!("{} v{} failed on this device before: {reason}", model.name, model.version);
            return Plan::Reject { model: Some(model), code: "marked_bad".into(), reason };
        }
        let v = behaviour.version(manifest.version);
        Plan::Install {
            length: manifest.artifact.length,
            installed: self.installed.contains(&manifest.version),
            load_fails: drawn(index, manifest.version, 1, v.load_failure_share),
            revert: drawn(index, manifest.version, 2, v.revert_share),
            min_version: manifest.min_version.unwrap_or(0),
            model,
        }
    }

    /// The version is swapped in and on trial.
    pub fn swap(&mut self, version: u64) {
        self.installed.insert(version);
        self.previous = Some(self.active);
        self.active = version;
        self.committed = false;
    }

    /// The trial passed.
    pub fn commit(&mut self, min_version: u64) {
        self.committed = true;
        self.floors.raise(&self.model.clone(), min_version);
    }

    /// The trial failed: back to the previous version, this one marked bad. Returns the restored version.
    pub fn revert(&mut self, reason: &str) -> u64 {
        self.bad.insert(self.active, reason.to_string());
        self.active = self.previous.take().unwrap_or(self.active);
        self.committed = true;
        self.active
    }
}

/// Answers the device's commands until `shutdown`, one at a time as the agent's updater does.
pub async fn answer(
    sim: Arc<Sim>,
    mut commands: mpsc::Receiver<Command>,
    behaviour: Arc<Behaviour>,
    shutdown: CancellationToken,
) {
    loop {
        let command = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = commands.recv() => match c {
                Some(c) => c,
                None => return,
            },
        };
        sim.counts.commands.fetch_add(1, Ordering::Relaxed);
        sim.note_command(&command.id);
        match command.body {
            CommandBody::AssignModel(assign) => {
                if update(&sim, &command.id, &assign, &behaviour, &shutdown).await.is_err() {
                    return;
                }
            }
            CommandBody::SetConfig(_) => {
                if sim.state().serving.seen.insert(command.id.clone()) {
                    let reason = Some("set_config is not supported by this agent version".into());
                    sim.event(EventBody::CommandAck(CommandAck { command_id: command.id, accepted: false, reason }));
                }
            }
            CommandBody::RotateKeys { .. } => {
                if sim.state().serving.seen.insert(command.id.clone()) {
                    let reason = Some("the simulated device does not rotate keys".into());
                    sim.event(EventBody::CommandAck(CommandAck { command_id: command.id, accepted: false, reason }));
                }
            }
        }
    }
}

/// Shutdown came during an update.
struct Stopped;

async fn pause(d: Duration, shutdown: &CancellationToken) -> Result<(), Stopped> {
    tokio::select! {
        _ = shutdown.cancelled() => Err(Stopped),
        _ = tokio::time::sleep(d) => Ok(()),
    }
}

async fn update(
    sim: &Sim,
    id: &str,
    assign: &AssignModel,
    behaviour: &Behaviour,
    shutdown: &CancellationToken,
) -> Result<(), Stopped> {
    let plan = sim.state().serving.plan(id, assign, behaviour, sim.index, OffsetDateTime::now_utc());
    let progress = |model: &ModelRef, stage: UpdateStage, bytes: Option<(u64, u64)>| {
        sim.event(EventBody::UpdateProgress(UpdateProgress {
            command_id: id.to_string(),
            model: model.clone(),
            stage,
            bytes: bytes.map(|b| b.0),
            total: bytes.map(|b| b.1),
        }));
    };
    let rejected = |model: Option<ModelRef>, code: &str, reason: String| {
        sim.event(EventBody::UpdateRejected(UpdateRejected {
            command_id: id.to_string(),
            model,
            code: code.to_string(),
            reason,
        }));
    };
    let (model, length, installed, load_fails, revert, min_version) = match plan {
        Plan::Replay => return Ok(()),
        Plan::Reject { model: None, code, reason } => {
            sim.event(EventBody::CommandAck(CommandAck { command_id: id.to_string(), accepted: true, reason: None }));
            rejected(None, &code, reason);
            return Ok(());
        }
        Plan::Reject { model, code, reason } => {
            sim.event(EventBody::CommandAck(CommandAck { command_id: id.to_string(), accepted: true, reason: None }));
            sim.publish_status(AgentState::Updating);
            rejected(model, &code, reason);
            sim.publish_status(AgentState::Running);
            return Ok(());
        }
        Plan::Install { model, length, installed, load_fails, revert, min_version } => {
            (model, length, installed, load_fails, revert, min_version)
        }
    };
    sim.event(EventBody::CommandAck(CommandAck { command_id: id.to_string(), accepted: true, reason: None }));
    tracing::debug!(device = %sim.device, command = id, version = model.version, "simulated update verified");
    sim.publish_status(AgentState::Updating);
    if !installed {
        progress(&model, UpdateStage::Downloading, Some((0, length)));
        progress(&model, UpdateStage::Verifying, None);
    }
    pause(behaviour.install_delay, shutdown).await?;
    progress(&model, UpdateStage::Loading, None);
    progress(&model, UpdateStage::WarmingUp, None);
    if load_fails {
        let reason = "simulated load failure".to_string();
        sim.state().serving.bad.insert(model.version, reason.clone());
        rejected(Some(model), "load_failed", reason);
        sim.publish_status(AgentState::Running);
        return Ok(());
    }
    sim.state().serving.swap(model.version);
    progress(&model, UpdateStage::Swapped, None);
    sim.publish_status(AgentState::Updating);
    progress(&model, UpdateStage::HealthCheck, None);
    pause(behaviour.health_window, shutdown).await?;
    if revert {
        let reason = "simulated health window failure".to_string();
        let restored = {
            let mut state = sim.state();
            let restored = state.serving.revert(&reason);
            state.commits.push((restored, OffsetDateTime::now_utc()));
            restored
        };
        let restored = Some(ModelRef { name: model.name.clone(), version: restored });
        sim.event(EventBody::SwapReverted(SwapReverted { command_id: id.to_string(), model, restored, reason }));
    } else {
        let previous = {
            let mut state = sim.state();
            state.serving.commit(min_version);
            state.commits.push((model.version, OffsetDateTime::now_utc()));
            state.serving.previous.map(|v| ModelRef { name: model.name.clone(), version: v })
        };
        sim.event(EventBody::SwapCommitted(SwapCommitted { command_id: id.to_string(), model, previous }));
    }
    sim.publish_status(AgentState::Running);
    Ok(())
}

#[cfg(test)]
mod tests {
    use outpost_common::manifest::{self, Artifact, MANIFEST_SCHEMA, Manifest, SecretKey, Sha256Sum};
    use outpost_common::vision::spec::{ColorOrder, InputSpec, Layout, Normalization, ResizeMode, Task};

    use super::*;

    fn assign(key: &SecretKey, version: u64) -> AssignModel {
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).expect("whole seconds");
        let m = Manifest {
            schema: MANIFEST_SCHEMA,
            name: "defect".into(),
            version,
            label: None,
            artifact: Artifact { sha256: Sha256Sum::of(b"model"), length: 5 },
            task: Task::Detect,
            input: InputSpec {
                width: 320,
                height: 320,
                layout: Layout::Nchw,
                color: ColorOrder::Rgb,
                resize: ResizeMode::Stretch,
                normalization: Normalization::UNIT,
            },
            labels: vec!["scratch".into()],
            family: None,
            created_at: now,
            expires_at: now + time::Duration::days(1),
            min_version: None,
            baseline: None,
        };
        AssignModel { manifest: manifest::sign_manifest(&m, &[key]), artifact_url: String::new(), rollout: None }
    }

    fn install(model: u64, installed: bool, load_fails: bool, revert: bool) -> Plan {
        let model = ModelRef { name: "defect".into(), version: model };
        Plan::Install { model, length: 5, installed, load_fails, revert, min_version: 0 }
    }

    fn code(plan: &Plan) -> Option<&str> {
        match plan {
            Plan::Reject { code, .. } => Some(code),
            _ => None,
        }
    }

    #[test]
    fn updates_end_as_the_agents_do() {
        let key = SecretKey::from_seed(&[3; 32]);
        let mut b = Behaviour::new("defect", 1);
        b.trusted = Some(TrustedKeys::new([key.public()], 1).expect("keys"));
        b.versions.insert(3, VersionBehaviour { load_failure_share: 1.0, ..Default::default() });
        let now = OffsetDateTime::now_utc();
        let mut s = Serving::new("defect", 1);
        assert_eq!(s.plan("r1.v2", &assign(&key, 2), &b, 0, now), install(2, false, false, false));
        assert_eq!(s.plan("r1.v2", &assign(&key, 2), &b, 0, now), Plan::Replay);
        s.swap(2);
        s.commit(0);
        assert_eq!(s.served(), ServedModel { name: "defect".into(), active: 2, previous: Some(1), committed: true });
        // The rollback: installed already, so no download.
        assert_eq!(s.plan("r1.v1", &assign(&key, 1), &b, 0, now), install(1, true, false, false));
        assert_eq!(code(&s.plan("c.v2", &assign(&key, 2), &b, 0, now)), Some("already_active"));
        assert_eq!(s.plan("r2.v3", &assign(&key, 3), &b, 0, now), install(3, false, true, false));
        s.bad.insert(3, "load".into());
        assert_eq!(code(&s.plan("r3.v3", &assign(&key, 3), &b, 0, now)), Some("marked_bad"));
        // Signed by a key the device does not trust.
        let stranger = SecretKey::from_seed(&[4; 32]);
        let plan = s.plan("r4.v4", &assign(&stranger, 4), &b, 0, now);
        assert!(matches!(plan, Plan::Reject { model: None, .. }), "{plan:?}");
    }

    #[test]
    fn a_revert_restores_the_previous_version_and_marks_it_bad() {
        let mut s = Serving::new("defect", 1);
        s.swap(2);
        assert_eq!((s.active, s.committed), (2, false));
        assert_eq!(s.revert("worse"), 1);
        assert_eq!((s.active, s.committed, s.previous), (1, true, None));
        assert!(s.bad.contains_key(&2));
    }

    #[test]
    fn failure_shares_are_drawn_per_device_and_repeatable() {
        let count = |share| (0..10_000).filter(|&i| drawn(i, 2, 1, share)).count();
        assert_eq!(count(0.0), 0);
        assert_eq!(count(1.0), 10_000);
        let tenth = count(0.1);
        assert!((800..1200).contains(&tenth), "{tenth} of 10,000 at 10%");
        assert_eq!(drawn(7, 2, 1, 0.5), drawn(7, 2, 1, 0.5));
    }
}

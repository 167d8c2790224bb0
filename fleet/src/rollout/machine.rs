//! A rollout as a state machine: stages, each device's phase, operator actions, and the gates' verdicts turned into
//! transitions. Pure: time comes in as `now`, observations and telemetry come in as values, and every method says
//! what changed so the caller can persist exactly that before acting on it (sending commands).
//!
//! A device's *target* (the version the fleet wants it to run) follows from its phase alone, so it is persisted with
//! the phase and a restart cannot invent a second one: assigned or committed → the new version; failed, rolling back
//! or rolled back → the version it ran before; still waiting for its stage (control) → none.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use super::gates::{self, GateReport, InstallCounts, Telemetry, Verdict};
use super::plan::RolloutPlan;

/// The rollout as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    Running,
    /// The stage's gates passed and the plan wants an operator's approval before the next stage.
    AwaitingApproval,
    /// An operator paused it: no stage starts and no gate promotes; devices already assigned still converge.
    Paused {
        awaiting_approval: bool,
    },
    Completed {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    Aborted {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        reason: String,
        by: String,
    },
}

impl State {
    pub fn is_active(&self) -> bool {
        !matches!(self, State::Completed { .. } | State::Aborted { .. })
    }

    pub fn name(&self) -> &'static str {
        match self {
            State::Running => "running",
            State::AwaitingApproval => "awaiting_approval",
            State::Paused { .. } => "paused",
            State::Completed { .. } => "completed",
            State::Aborted { .. } => "aborted",
        }
    }
}

/// Where one device is in the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Not in a stage yet: still on its previous version, and part of the control group.
    Control,
    /// Told to run the new version; not committed yet.
    Assigned,
    Committed,
    /// Rejected the version, reverted it in its health window, went back from it, or did not commit in time.
    Failed,
    /// The rollout was aborted: told to go back to its previous version.
    RollingBack,
    RolledBack,
}

/// The last command sent for a device's target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    pub version: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub first_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_at: OffsetDateTime,
}

/// One device of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRollout {
    /// Its place in the canary order: it joins at the first stage whose cutoff is above this.
    pub position: u32,
    /// The version it ran when the rollout was created: where it goes back to.
    pub previous: u64,
    pub phase: Phase,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// Why it failed, or what it last reported about the update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// As last reported: online, the version active and whether it is committed.
    pub online: bool,
    pub active: Option<u64>,
    pub committed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<Sent>,
}

impl DeviceRollout {
    /// The version the fleet wants this device to run (see the module documentation).
    pub fn target(&self, version: u64) -> Option<u64> {
        match self.phase {
            Phase::Control => None,
            Phase::Assigned | Phase::Committed => Some(version),
            Phase::Failed | Phase::RollingBack | Phase::RolledBack => Some(self.previous),
        }
    }
}

/// A line of the rollout's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub what: String,
}

/// History entries kept per rollout (the oldest go first).
pub const MAX_HISTORY: usize = 256;

/// The rollout record without its devices (they are stored one by one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub id: String,
    pub plan: RolloutPlan,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub created_by: String,
    #[serde(flatten)]
    pub state: State,
    /// The current stage (index into `plan.stages`).
    pub stage: usize,
    #[serde(with = "time::serde::rfc3339")]
    pub stage_started_at: OffsetDateTime,
    /// The cumulative device count of each stage.
    pub cutoffs: Vec<usize>,
    pub history: Vec<HistoryEntry>,
    /// The last gate evaluation (recomputed on the first tick after a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gates: Option<GateReport>,
}

/// A rollout: its header and its devices.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub header: Header,
    pub devices: BTreeMap<String, DeviceRollout>,
}

/// What a call changed, for the caller to persist before acting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub header: bool,
    /// A set: an abort or a stage touches thousands of devices, each once.
    pub devices: std::collections::BTreeSet<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        !self.header && self.devices.is_empty()
    }

    fn device(&mut self, id: &str) {
        self.devices.insert(id.to_string());
    }

    pub fn merge(&mut self, other: Changes) {
        self.header |= other.header;
        self.devices.extend(other.devices);
    }
}

/// An operator action that does not apply in the rollout's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the rollout is {state}: cannot {action}")]
pub struct NotNow {
    pub state: &'static str,
    pub action: &'static str,
}

/// A device as the rollout starts: its id, site and the version of the model it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub site: Option<String>,
    pub version: u64,
    pub online: bool,
}

/// A device's report, reduced to the rolled-out model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub online: bool,
    /// The active version of the model and whether it is committed; `None` when the device does not say.
    pub served: Option<(u64, bool)>,
}

impl Rollout {
    /// A new rollout whose first stage starts now. `members` is every targeted device (validated by the caller:
    /// none is in another active rollout, each reported its version).
    pub fn start(id: String, plan: RolloutPlan, members: &[Member], by: &str, now: OffsetDateTime) -> Rollout {
        let sites: Vec<(String, Option<String>)> = members.iter().map(|m| (m.id.clone(), m.site.clone())).collect();
        let order = super::select::spread(&sites, &id);
        let cutoffs = plan.cutoffs(order.len());
        let by_id: BTreeMap<&str, &Member> = members.iter().map(|m| (m.id.as_str(), m)).collect();
        let devices = order
            .iter()
            .enumerate()
            .filter_map(|(i, id)| {
                let m = by_id.get(id.as_str())?;
                Some((
                    id.clone(),
                    DeviceRollout {
                        position: u32::try_from(i).unwrap_or(u32::MAX),
                        previous: m.version,
                        phase: Phase::Control,
                        since: now,
                        detail: None,
                        online: m.online,
                        active: Some(m.version),
                        committed: true,
                        sent: None,
                    },
                ))
            })
            .collect();
        let what = format!(
            "created by {by}: {} v{} to {} devices in stages of {}",
            plan.model,
            plan.version,
            order.len(),
            cutoffs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        );
        let header = Header {
            id,
            plan,
            created_at: now,
            created_by: by.to_string(),
            state: State::Running,
            stage: 0,
            stage_started_at: now,
            cutoffs,
            history: vec![HistoryEntry { at: now, what }],
            gates: None,
        };
        let mut rollout = Rollout { header, devices };
        rollout.enter_stage(0, now);
        rollout
    }

    pub fn id(&self) -> &str {
        &self.header.id
    }

    pub fn version(&self) -> u64 {
        self.header.plan.version
    }

    fn log(&mut self, now: OffsetDateTime, what: String) {
        tracing::info!(rollout = %self.header.id, what = %what, "rollout");
        self.header.history.push(HistoryEntry { at: now, what });
        let excess = self.header.history.len().saturating_sub(MAX_HISTORY);
        self.header.history.drain(..excess);
    }

    /// The command id for sending `version` to a device: the same for every resend, so the device acts once.
    pub fn command_id(&self, version: u64) -> String {
        format!("{}.v{version}", self.header.id)
    }

    fn enter_stage(&mut self, stage: usize, now: OffsetDateTime) -> Changes {
        let mut changes = Changes { header: true, devices: Default::default() };
        self.header.stage = stage;
        self.header.stage_started_at = now;
        let cutoff = self.header.cutoffs.get(stage).copied().unwrap_or(0);
        let mut joined = 0;
        for (id, d) in &mut self.devices {
            if d.phase == Phase::Control && (d.position as usize) < cutoff {
                d.phase = Phase::Assigned;
                d.since = now;
                joined += 1;
                changes.device(id);
            }
        }
        let size = self.header.plan.stages.get(stage).map(|s| s.size.to_string()).unwrap_or_default();
        self.log(now, format!("stage {} ({size}) started: {joined} devices join, {cutoff} in total", stage + 1));
        changes
    }

    /// Counts over the devices in the rollout so far.
    pub fn install_counts(&self) -> InstallCounts {
        let mut c = InstallCounts::default();
        for d in self.devices.values() {
            match d.phase {
                Phase::Control => continue,
                Phase::Committed => c.committed += 1,
                Phase::Failed => c.failed += 1,
                _ => {}
            }
            c.devices += 1;
        }
        c
    }

    /// Devices on the new version (assigned or committed) and the control devices.
    pub fn canaries(&self) -> impl Iterator<Item = &str> {
        self.devices
            .iter()
            .filter(|(_, d)| matches!(d.phase, Phase::Assigned | Phase::Committed))
            .map(|(id, _)| id.as_str())
    }

    pub fn controls(&self) -> impl Iterator<Item = &str> {
        self.devices.iter().filter(|(_, d)| d.phase == Phase::Control).map(|(id, _)| id.as_str())
    }

    /// Devices that joined in the current stage (the before/after control when no control device is left).
    pub fn joined_this_stage(&self) -> impl Iterator<Item = &str> {
        let stage = self.header.stage;
        let from = if stage == 0 { 0 } else { self.header.cutoffs.get(stage - 1).copied().unwrap_or(0) };
        let to = self.header.cutoffs.get(stage).copied().unwrap_or(0);
        self.devices.iter().filter(move |(_, d)| (from..to).contains(&(d.position as usize))).map(|(id, _)| id.as_str())
    }

    /// Applies a device's report. Returns whether the device's record changed.
    pub fn observe(&mut self, device: &str, report: Report, now: OffsetDateTime) -> Changes {
        let version = self.version();
        let active = self.header.state.is_active();
        let Some(d) = self.devices.get_mut(device) else { return Changes::default() };
        let before = d.clone();
        d.online = report.online;
        if let Some((v, committed)) = report.served {
            d.active = Some(v);
            d.committed = committed;
            let next = match d.phase {
                Phase::Assigned if v == version && committed => Some((Phase::Committed, None)),
                // A device that timed out and committed after all counts again, while the rollout runs.
                Phase::Failed if active && v == version && committed => Some((Phase::Committed, None)),
                Phase::Committed if v != version => Some((Phase::Failed, Some(format!("went back to v{v}")))),
                Phase::RollingBack if v == d.previous && committed => Some((Phase::RolledBack, None)),
                _ => None,
            };
            if let Some((phase, detail)) = next {
                d.phase = phase;
                d.since = now;
                d.detail = detail;
            }
        }
        let mut changes = Changes::default();
        if *d != before {
            changes.device(device);
        }
        changes
    }

    /// Applies an `update_rejected` the device reported. `already_active` is no failure: the device already serves
    /// that version (it found the assignment through its own check with the fleet before the command arrived, or a
    /// resend crossed its commit), and its status says whether it committed it.
    pub fn rejected(
        &mut self,
        device: &str,
        version: Option<u64>,
        command_id: &str,
        code: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Changes {
        if code == "already_active" {
            return Changes::default();
        }
        self.failed(device, version, command_id, &format!("rejected ({code}): {reason}"), now)
    }

    /// Applies an update failure the device reported (`update_rejected`, `swap_reverted`) for `version` (`None`:
    /// the manifest was unreadable; then the command id must be this rollout's).
    pub fn failed(
        &mut self,
        device: &str,
        version: Option<u64>,
        command_id: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Changes {
        let ours = match version {
            Some(v) => v == self.version(),
            None => command_id == self.command_id(self.version()),
        };
        let mut changes = Changes::default();
        if let Some(d) = self.devices.get_mut(device)
            && ours
            && d.phase == Phase::Assigned
        {
            d.phase = Phase::Failed;
            d.since = now;
            d.detail = Some(reason.chars().take(512).collect());
            changes.device(device);
        }
        changes
    }

    /// Install timeouts, then the gates: a failure aborts, a pass promotes (or waits for approval). `telemetry` is
    /// what the engine gathered for the current stage.
    pub fn tick(&mut self, telemetry: &Telemetry, now: OffsetDateTime) -> Changes {
        let mut changes = Changes::default();
        let timeout = Duration::seconds(i64::try_from(self.header.plan.gates.install.timeout_secs).unwrap_or(i64::MAX));
        for (id, d) in &mut self.devices {
            if d.phase == Phase::Assigned
                && let Some(sent) = d.sent.filter(|s| s.version == self.header.plan.version)
                && now - sent.first_at > timeout
            {
                d.phase = Phase::Failed;
                d.since = now;
                d.detail = Some(format!("not committed {} s after the version was sent", timeout.whole_seconds()));
                changes.device(id);
            }
        }
        if !matches!(self.header.state, State::Running | State::AwaitingApproval) {
            return changes;
        }
        let stage = self.header.stage;
        let Some(plan) = self.header.plan.stages.get(stage).cloned() else { return changes };
        let dwell = Duration::seconds(i64::try_from(plan.min_dwell_secs).unwrap_or(i64::MAX));
        let dwell_done = now - self.header.stage_started_at >= dwell;
        let report = gates::evaluate(&self.header.plan.gates, &plan, self.install_counts(), telemetry, dwell_done);
        let verdict = report.verdict.clone();
        let verdict_changed = self.header.gates.as_ref().is_none_or(|g| g.verdict != verdict);
        self.header.gates = Some(report);
        changes.header |= verdict_changed;
        match verdict {
            Verdict::Fail(reason) => {
                changes.merge(self.abort_inner(format!("gate failed at stage {}: {reason}", stage + 1), "gates", now));
            }
            Verdict::Pass if self.header.state == State::Running => {
                if plan.approval {
                    self.header.state = State::AwaitingApproval;
                    self.log(now, format!("stage {} passed its gates; awaiting approval", stage + 1));
                    changes.header = true;
                } else {
                    changes.merge(self.promote(now));
                }
            }
            _ => {}
        }
        changes
    }

    fn promote(&mut self, now: OffsetDateTime) -> Changes {
        let stage = self.header.stage;
        if stage + 1 < self.header.plan.stages.len() {
            self.header.state = State::Running;
            self.log(now, format!("stage {} passed its gates", stage + 1));
            self.enter_stage(stage + 1, now)
        } else {
            self.header.state = State::Completed { at: now };
            let c = self.install_counts();
            self.log(now, format!("completed: {} of {} devices committed", c.committed, c.devices));
            Changes { header: true, devices: Default::default() }
        }
    }

    fn abort_inner(&mut self, reason: String, by: &str, now: OffsetDateTime) -> Changes {
        let mut changes = Changes { header: true, devices: Default::default() };
        let mut back = 0;
        for (id, d) in &mut self.devices {
            if matches!(d.phase, Phase::Assigned | Phase::Committed) {
                d.phase = Phase::RollingBack;
                d.since = now;
                back += 1;
                changes.device(id);
            }
        }
        self.log(now, format!("aborted by {by}: {reason}; {back} devices go back to their previous version"));
        self.header.state = State::Aborted { at: now, reason, by: by.to_string() };
        changes
    }

    pub fn abort(&mut self, reason: &str, by: &str, now: OffsetDateTime) -> Result<Changes, NotNow> {
        if !self.header.state.is_active() {
            return Err(NotNow { state: self.header.state.name(), action: "abort" });
        }
        Ok(self.abort_inner(reason.to_string(), by, now))
    }

    pub fn pause(&mut self, by: &str, now: OffsetDateTime) -> Result<Changes, NotNow> {
        let awaiting_approval = match self.header.state {
            State::Running => false,
            State::AwaitingApproval => true,
            _ => return Err(NotNow { state: self.header.state.name(), action: "pause" }),
        };
        self.header.state = State::Paused { awaiting_approval };
        self.log(now, format!("paused by {by}"));
        Ok(Changes { header: true, devices: Default::default() })
    }

    pub fn resume(&mut self, by: &str, now: OffsetDateTime) -> Result<Changes, NotNow> {
        let State::Paused { awaiting_approval } = self.header.state else {
            return Err(NotNow { state: self.header.state.name(), action: "resume" });
        };
        self.header.state = if awaiting_approval { State::AwaitingApproval } else { State::Running };
        self.log(now, format!("resumed by {by}"));
        Ok(Changes { header: true, devices: Default::default() })
    }

    pub fn approve(&mut self, by: &str, now: OffsetDateTime) -> Result<Changes, NotNow> {
        if self.header.state != State::AwaitingApproval {
            return Err(NotNow { state: self.header.state.name(), action: "approve (nothing awaits approval)" });
        }
        self.log(now, format!("stage {} approved by {by}", self.header.stage + 1));
        Ok(self.promote(now))
    }

    /// Devices that should be sent their target now: online, not running it, and not sent it in the last
    /// `resend` (a resend carries the same command id, so the device acts once).
    pub fn due(&self, now: OffsetDateTime, resend: Duration) -> Vec<(String, u64)> {
        let version = self.version();
        self.devices
            .iter()
            .filter_map(|(id, d)| {
                let target = d.target(version)?;
                let recent = d.sent.is_some_and(|s| s.version == target && now - s.last_at < resend);
                (d.online && d.active != Some(target) && !recent).then(|| (id.clone(), target))
            })
            .collect()
    }

    /// Records that `version` was sent to `device` now.
    pub fn sent(&mut self, device: &str, version: u64, now: OffsetDateTime) -> Changes {
        let mut changes = Changes::default();
        if let Some(d) = self.devices.get_mut(device) {
            let first_at = d.sent.filter(|s| s.version == version).map_or(now, |s| s.first_at);
            d.sent = Some(Sent { version, first_at, last_at: now });
            changes.device(device);
        }
        changes
    }
}

#[cfg(test)]
mod tests;

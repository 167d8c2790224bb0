//! `status`: the device's retained state, also its MQTT last will.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Message, ModelRef, SCHEMA, check_len};
use crate::topics::Channel;

/// What the agent is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Connected, no model serving yet (first start, or loading).
    Starting,
    /// Serving a model.
    Running,
    /// Serving, with a model update in progress.
    Updating,
    /// Running but unhealthy (source down, inference errors, outbox backing up).
    Degraded,
    /// Set by the last will when the connection drops, or by a clean shutdown.
    Offline,
}

/// Health counters since the agent started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub uptime_secs: u64,
    /// Frames processed per second over the last window.
    pub fps: f32,
    /// Telemetry and events waiting in the durable outbox.
    pub outbox_pending: u64,
    /// Telemetry and events dropped oldest-first at the outbox cap (a long outage), over the device's life.
    pub outbox_dropped: u64,
    /// Frames the pipeline dropped or rejected since start (backpressure on live cameras, unreadable frames).
    pub frames_dropped: u64,
    /// Errors since start (failed frames, failed uploads).
    pub errors: u64,
}

/// Published retained on `status` at connect and on every change; a copy with `state: offline` is the last will.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub schema: u32,
    pub state: AgentState,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub agent_version: String,
    /// The device's model family / hardware id, matched against manifests.
    pub family: String,
    /// The active model, if one is serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelRef>,
    /// Every model name the agent serves: the active version, the one kept to fall back to, and whether the active
    /// one is committed or still in its health window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ServedModel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

/// One model name as the agent serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServedModel {
    pub name: String,
    pub active: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<u64>,
    pub committed: bool,
}

impl Status {
    /// The last will, registered at connect: the same identity with `state: offline` and no health.
    pub fn last_will(&self) -> Status {
        Status { schema: SCHEMA, state: AgentState::Offline, health: None, ..self.clone() }
    }
}

impl Message for Status {
    const CHANNEL: Channel = Channel::Status;

    fn schema(&self) -> u32 {
        self.schema
    }

    fn validate(&self) -> Result<(), String> {
        check_len("agent_version", &self.agent_version, 64)?;
        if self.models.len() > 64 {
            return Err(format!("{} models; at most 64", self.models.len()));
        }
        self.models.iter().try_for_each(|m| check_len("model name", &m.name, 128))?;
        check_len("family", &self.family, 128)?;
        if let Some(model) = &self.model {
            check_len("model name", &model.name, 128)?;
        }
        Ok(())
    }
}

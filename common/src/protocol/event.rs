//! `events`: things that happened on the device, each with the device's `seq`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Message, ModelRef, check_len};
use crate::manifest::Sha256Sum;
use crate::topics::Channel;
use crate::vision::confidence::Confidence;

/// One event. `seq` is shared with telemetry (see [`super::Telemetry`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub schema: u32,
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub body: EventBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum EventBody {
    AgentReady(AgentReady),
    SampleFlagged(SampleFlagged),
    CommandAck(CommandAck),
    UpdateProgress(UpdateProgress),
    UpdateRejected(UpdateRejected),
    SwapCommitted(SwapCommitted),
    SwapReverted(SwapReverted),
    Error { code: String, message: String },
}

/// Why a frame was flagged for review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagReason {
    /// The confidence fell in the uncertainty band (a classifier's top-1 score, or any detection score).
    LowConfidence,
    /// A classifier hesitated: top-1 minus top-2 below the configured margin.
    SmallMargin,
    /// A classifier's normalised entropy above the configured level.
    HighEntropy,
    /// The frame predicted one of the classes selected for review.
    SelectedClass,
    /// No prediction at all where one was expected.
    NoPrediction,
    /// Randomly sampled for an unbiased review set.
    Random,
}

/// Sent once per start, when every camera's source and model are up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentReady {
    pub agent_version: String,
    pub cameras: Vec<CameraInfo>,
}

/// One camera as the agent runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraInfo {
    pub name: String,
    /// The source kind: `dir`, `http`, `v4l2` or `replay`.
    pub source: String,
    pub model: ModelRef,
}

/// A frame was flagged; its image is uploaded to `PUT /api/v1/samples/{sample}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleFlagged {
    /// SHA-256 of the encoded image, which names the upload.
    pub sample: Sha256Sum,
    /// The camera (as named in the agent's config) that produced the frame.
    pub camera: String,
    pub frame: u64,
    pub model: ModelRef,
    pub reason: FlagReason,
    /// The frame's confidence summary, as in per-frame telemetry.
    pub confidence: Confidence,
}

/// A command was received: accepted (work starts) or rejected (with the reason).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandAck {
    pub command_id: String,
    pub accepted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A stage of a model update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateStage {
    Downloading,
    Verifying,
    Loading,
    WarmingUp,
    Swapped,
    HealthCheck,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateProgress {
    pub command_id: String,
    pub model: ModelRef,
    pub stage: UpdateStage,
    /// Bytes downloaded so far, while downloading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

/// A manifest or artifact failed verification; `code` is [`crate::manifest::VerifyError::code`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRejected {
    pub command_id: String,
    /// The model, when the manifest was readable enough to say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelRef>,
    pub code: String,
    pub reason: String,
}

/// The new model passed its health window and is now the committed one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwapCommitted {
    pub command_id: String,
    pub model: ModelRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<ModelRef>,
}

/// The new model was swapped out again; `restored` serves instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwapReverted {
    pub command_id: String,
    pub model: ModelRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<ModelRef>,
    pub reason: String,
}

impl Message for Event {
    const CHANNEL: Channel = Channel::Events;

    fn schema(&self) -> u32 {
        self.schema
    }

    fn validate(&self) -> Result<(), String> {
        let (id, text) = match &self.body {
            EventBody::AgentReady(r) => {
                check_len("agent_version", &r.agent_version, 64)?;
                if r.cameras.len() > 256 {
                    return Err(format!("{} cameras; at most 256", r.cameras.len()));
                }
                for c in &r.cameras {
                    check_len("camera", &c.name, 128)?;
                    check_len("source", &c.source, 32)?;
                    check_len("model name", &c.model.name, 128)?;
                }
                (None, None)
            }
            EventBody::SampleFlagged(f) => {
                check_len("camera", &f.camera, 128)?;
                (None, None)
            }
            EventBody::CommandAck(a) => (Some(&a.command_id), a.reason.as_ref()),
            EventBody::UpdateProgress(p) => (Some(&p.command_id), None),
            EventBody::UpdateRejected(r) => (Some(&r.command_id), Some(&r.reason)),
            EventBody::SwapCommitted(c) => (Some(&c.command_id), None),
            EventBody::SwapReverted(r) => (Some(&r.command_id), Some(&r.reason)),
            EventBody::Error { message, .. } => (None, Some(message)),
        };
        if let Some(id) = id {
            check_len("command_id", id, super::command::MAX_COMMAND_ID_LEN)?;
        }
        text.map_or(Ok(()), |t| check_len("reason", t, 4096))
    }
}

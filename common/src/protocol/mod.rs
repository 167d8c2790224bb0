//! The v1 MQTT messages: status, telemetry, events and commands (see docs/PROTOCOL.md).
//!
//! Design: each topic has one message type with a `schema` field; messages with variants carry them in `body`,
//! tagged by `kind`. Every type denies unknown fields, so a field added without a schema bump is caught at the
//! boundary. [`decode`] checks the size cap before parsing, tells a newer sender (another `schema`) apart from a
//! broken one, and validates. On the wire every payload is wrapped in the authenticated envelope of [`auth`].

pub mod auth;
mod command;
mod confidence;
mod event;
mod sample;
mod status;
mod tagged;
mod telemetry;
pub mod timestamp;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use command::{AssignModel, Command, CommandBody, SetConfig};
pub use confidence::{ConfidenceHistogram, Latency, ModelRef};
pub use event::{
    AgentReady, CameraInfo, CommandAck, Event, EventBody, FlagReason, SampleFlagged, SwapCommitted, SwapReverted,
    UpdateProgress, UpdateRejected, UpdateStage,
};
pub use sample::{MAX_SAMPLE_META_BYTES, SampleMeta};
pub use status::{AgentState, Health, ServedModel, Status};
pub use telemetry::{
    FrameBatch, FrameReport, MAX_FRAMES_PER_BATCH, Prediction, Telemetry, TelemetryBody, WindowSummary,
};

use crate::topics::Channel;

/// The message schema this code writes and accepts.
pub const SCHEMA: u32 = 1;
/// The largest message payload, checked before parsing. Fits a manifest envelope inside a command.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("{size} bytes is over the {max}-byte message limit")]
    TooLarge { size: usize, max: usize },
    #[error("schema {got} is not supported (this build speaks schema {SCHEMA})")]
    UnsupportedSchema { got: u32 },
    #[error("unknown field: {0}")]
    UnknownField(String),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("invalid message: {0}")]
    Invalid(String),
}

impl ProtocolError {
    fn from_json(error: &serde_json::Error) -> ProtocolError {
        let detail = error.to_string();
        if detail.starts_with("unknown field") {
            ProtocolError::UnknownField(detail)
        } else {
            ProtocolError::Malformed(detail)
        }
    }
}

/// A v1 message: the channel it travels on, and the checks serde cannot express.
pub trait Message: Serialize + DeserializeOwned {
    const CHANNEL: Channel;

    fn schema(&self) -> u32;

    /// Checks beyond the types (lengths, ranges). The default accepts everything that parsed.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Compact JSON bytes for the wire; refuses a message over [`MAX_PAYLOAD_BYTES`] so the sender can split it.
pub fn encode<M: Message>(message: &M) -> Result<Vec<u8>, ProtocolError> {
    let bytes = serde_json::to_vec(message).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(ProtocolError::TooLarge { size: bytes.len(), max: MAX_PAYLOAD_BYTES });
    }
    Ok(bytes)
}

/// Parses a payload: size cap, then the message and its schema, then its own checks.
///
/// The message is parsed once; only when that fails is `schema` read on its own, so that a newer sender is still
/// told apart from a broken one (the outcome is the same as reading `schema` first).
pub fn decode<M: Message>(bytes: &[u8]) -> Result<M, ProtocolError> {
    #[derive(serde::Deserialize)]
    struct Schema {
        schema: u32,
    }
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(ProtocolError::TooLarge { size: bytes.len(), max: MAX_PAYLOAD_BYTES });
    }
    let message: M = match serde_json::from_slice(bytes) {
        Ok(message) => message,
        Err(e) => {
            let schema: Schema = serde_json::from_slice(bytes).map_err(|e| ProtocolError::from_json(&e))?;
            if schema.schema != SCHEMA {
                return Err(ProtocolError::UnsupportedSchema { got: schema.schema });
            }
            return Err(ProtocolError::from_json(&e));
        }
    };
    if message.schema() != SCHEMA {
        return Err(ProtocolError::UnsupportedSchema { got: message.schema() });
    }
    message.validate().map_err(ProtocolError::Invalid)?;
    Ok(message)
}

/// Shared checks for free-text and id fields.
pub(crate) fn check_len(what: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!("{what} is {} bytes; at most {max}", value.len()));
    }
    Ok(())
}

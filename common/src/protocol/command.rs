//! `commands`: what the fleet asks a device to do. Each command has an id the device acknowledges in events.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Message, check_len};
use crate::manifest::Envelope;
use crate::topics::Channel;

/// Command ids are at most this long, of `[A-Za-z0-9._-]`.
pub const MAX_COMMAND_ID_LEN: usize = 64;

/// One command. The device remembers the ids it has handled and acknowledges a repeated id without acting again,
/// so QoS 1 redelivery is harmless.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    pub schema: u32,
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    pub body: CommandBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CommandBody {
    AssignModel(AssignModel),
    SetConfig(SetConfig),
    /// A signed key set; the device verifies it against the keys it trusts now before adopting it.
    RotateKeys {
        key_set: Envelope,
    },
}

/// Run this model. The manifest travels inline and signed; the URL is only where to fetch bytes the manifest
/// already pins, so the fleet (or whoever controls the URL) cannot change what runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignModel {
    pub manifest: Envelope,
    pub artifact_url: String,
    /// The rollout this assignment belongs to, for the fleet's bookkeeping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
}

/// Change runtime settings; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetConfig {
    /// Telemetry window length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_secs: Option<u32>,
    /// Send per-frame results for this many seconds (0 stops them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_frame_secs: Option<u32>,
    /// Flag frames whose top confidence is below this (0..1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag_below: Option<f32>,
    /// Upload flagged samples' images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_samples: Option<bool>,
}

impl Message for Command {
    const CHANNEL: Channel = Channel::Commands;

    fn schema(&self) -> u32 {
        self.schema
    }

    fn validate(&self) -> Result<(), String> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= MAX_COMMAND_ID_LEN
            && self.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !id_ok {
            return Err(format!("command id must be 1-{MAX_COMMAND_ID_LEN} characters of [A-Za-z0-9._-]"));
        }
        match &self.body {
            CommandBody::AssignModel(a) => {
                check_len("artifact_url", &a.artifact_url, 2048)?;
                if !(a.artifact_url.starts_with("https://") || a.artifact_url.starts_with("http://")) {
                    return Err("artifact_url must be an http(s) URL".into());
                }
                a.rollout.as_ref().map_or(Ok(()), |r| check_len("rollout", r, 128))
            }
            CommandBody::SetConfig(c) => match c.flag_below {
                Some(f) if !(0.0..=1.0).contains(&f) => Err(format!("flag_below {f} is outside 0..1")),
                _ => Ok(()),
            },
            CommandBody::RotateKeys { .. } => Ok(()),
        }
    }
}

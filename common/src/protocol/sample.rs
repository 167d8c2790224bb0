//! The metadata of a flagged sample, uploaded with its image over HTTPS (`PUT /api/v1/samples/{sha256}`).
//!
//! Not an MQTT message: it travels as the `meta` part of a multipart body next to the `image` part, whose bytes are
//! the frame exactly as the camera encoded it (never re-encoded) and whose sha256 names the upload.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{FlagReason, ModelRef, Prediction, check_len};
use crate::manifest::Sha256Sum;
use crate::vision::confidence::Confidence;

/// The largest `meta` part a server needs to accept.
pub const MAX_SAMPLE_META_BYTES: usize = 64 * 1024;

/// What the fleet needs to queue a sample for annotation: where it came from, what the model said (to become
/// pre-annotations), and why it was flagged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleMeta {
    pub schema: u32,
    /// SHA-256 of the image bytes; equals the `{sha256}` of the URL.
    pub sample: Sha256Sum,
    pub device: String,
    pub camera: String,
    pub model: ModelRef,
    #[serde(with = "time::serde::rfc3339")]
    pub captured_at: OffsetDateTime,
    pub reason: FlagReason,
    pub confidence: Confidence,
    pub predictions: Vec<Prediction>,
    pub width: u32,
    pub height: u32,
    /// `image/jpeg` or `image/png`.
    pub content_type: String,
}

impl SampleMeta {
    /// Checks beyond the types, as the server does.
    pub fn validate(&self) -> Result<(), String> {
        check_len("device", &self.device, 64)?;
        check_len("camera", &self.camera, 128)?;
        check_len("model name", &self.model.name, 128)?;
        if !matches!(self.content_type.as_str(), "image/jpeg" | "image/png") {
            return Err(format!("content_type `{}` is not image/jpeg or image/png", self.content_type));
        }
        if self.predictions.len() > 1000 {
            return Err(format!("{} predictions; at most 1000", self.predictions.len()));
        }
        self.predictions.iter().try_for_each(|p| check_len("label", &p.label, 128))
    }

    /// Parses and validates a `meta` part.
    pub fn from_json(bytes: &[u8]) -> Result<SampleMeta, String> {
        if bytes.len() > MAX_SAMPLE_META_BYTES {
            return Err(format!("meta is {} bytes; at most {MAX_SAMPLE_META_BYTES}", bytes.len()));
        }
        let meta: SampleMeta = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if meta.schema != super::SCHEMA {
            return Err(format!("meta schema {} is not supported (this side speaks {})", meta.schema, super::SCHEMA));
        }
        meta.validate()?;
        Ok(meta)
    }
}

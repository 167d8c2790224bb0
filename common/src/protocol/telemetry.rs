//! `telemetry`: window summaries (the default) and per-frame results (on request), each with the device's `seq`.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;

use super::{ConfidenceHistogram, Latency, Message, ModelRef, check_len, tagged};
use crate::topics::Channel;
use crate::vision::confidence::Confidence;

/// Per-frame batches larger than this are split by the sender.
pub const MAX_FRAMES_PER_BATCH: usize = 500;

/// One telemetry message. `seq` is the device's message sequence number, shared with events: it rises by at least
/// one per message and survives restarts, so the fleet drops duplicates by `(device, seq)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    pub schema: u32,
    pub seq: u64,
    pub body: TelemetryBody,
}

/// Tagged by `kind` (`window` or `frames`) next to the variant's fields; deserialized without buffering
/// ([`tagged`]), since every telemetry message passes through it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TelemetryBody {
    // Boxed: a window summary is several times the size of a batch header.
    Window(Box<WindowSummary>),
    Frames(FrameBatch),
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TelemetryKind {
    Window,
    Frames,
}

impl<'de> tagged::Tagged<'de> for TelemetryBody {
    type Kind = TelemetryKind;
    const WHAT: &'static str = "a telemetry body";

    fn variant<D: Deserializer<'de>>(kind: TelemetryKind, fields: D) -> Result<Self, D::Error> {
        Ok(match kind {
            TelemetryKind::Window => TelemetryBody::Window(Box::new(WindowSummary::deserialize(fields)?)),
            TelemetryKind::Frames => TelemetryBody::Frames(FrameBatch::deserialize(fields)?),
        })
    }
}

impl<'de> Deserialize<'de> for TelemetryBody {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        tagged::deserialize(deserializer)
    }
}

/// What one model saw over one window of time.
///
/// The histogram bins one value per frame, the frame's headline confidence ([`Confidence::headline`]: top-1
/// probability for a classifier, mean detection score for a detector); a detector frame with no detection adds
/// nothing to it. `classes` counts predictions per label (every detection, or each frame's top-1 class).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSummary {
    #[serde(with = "super::timestamp")]
    pub start: OffsetDateTime,
    #[serde(with = "super::timestamp")]
    pub end: OffsetDateTime,
    /// The camera (as named in the agent's config) the frames came from.
    pub camera: String,
    pub model: ModelRef,
    /// Frames processed.
    pub frames: u64,
    /// Frames the source produced but the pipeline dropped (backpressure, decode errors).
    pub drops: u64,
    pub confidence: ConfidenceHistogram,
    pub classes: BTreeMap<String, u64>,
    pub latency_ms: Latency,
    /// Frames flagged for review.
    pub flagged: u64,
}

/// Per-frame results, one batch per camera and model per window, sent when the agent's config turns them on
/// (`[telemetry] per_frame`) or while the fleet has asked for them (`set_config` `per_frame_secs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameBatch {
    /// The camera (as named in the agent's config) the frames came from.
    pub camera: String,
    pub model: ModelRef,
    pub frames: Vec<FrameReport>,
}

/// One frame's outcome. `confidence` is the vision library's per-frame summary, the same value a window bins, so a
/// batch of reports reduces to the [`WindowSummary`] shape ([`FrameBatch::summarize`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameReport {
    /// The device's frame counter.
    pub frame: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub latency_ms: f32,
    pub flagged: bool,
    pub confidence: Confidence,
    pub predictions: Vec<Prediction>,
}

/// One detection, or one of a classifier's top classes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prediction {
    pub class: u32,
    pub label: String,
    pub score: f32,
    /// `[x1, y1, x2, y2]` in source-frame pixels, for detections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bbox: Option<[f32; 4]>,
}

impl FrameBatch {
    /// The confidence histogram and per-class counts of these frames, as a window would report them.
    pub fn summarize(&self) -> (ConfidenceHistogram, BTreeMap<String, u64>) {
        let mut histogram = ConfidenceHistogram::default();
        let mut classes = BTreeMap::new();
        for frame in &self.frames {
            if let Some(headline) = frame.confidence.headline() {
                histogram.add(headline);
            }
            for p in &frame.predictions {
                let count = classes.entry(p.label.clone()).or_insert(0u64);
                *count = count.saturating_add(1);
            }
        }
        (histogram, classes)
    }
}

impl Message for Telemetry {
    const CHANNEL: Channel = Channel::Telemetry;

    fn schema(&self) -> u32 {
        self.schema
    }

    fn validate(&self) -> Result<(), String> {
        match &self.body {
            TelemetryBody::Window(w) => {
                if w.end < w.start {
                    return Err("window end is before its start".into());
                }
                check_len("model name", &w.model.name, 128)?;
                check_len("camera", &w.camera, 128)?;
                w.classes.keys().try_for_each(|label| check_len("label", label, 128))
            }
            TelemetryBody::Frames(b) => {
                if b.frames.len() > MAX_FRAMES_PER_BATCH {
                    return Err(format!("{} frames in one batch; at most {MAX_FRAMES_PER_BATCH}", b.frames.len()));
                }
                check_len("camera", &b.camera, 128)?;
                check_len("model name", &b.model.name, 128)
            }
        }
    }
}

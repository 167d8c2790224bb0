//! The annotators' queue over the stored samples: claims with leases, least-confident-first ordering balanced over
//! classes and sites, labels, skips, rejections and an optional review step.
//!
//! Design: each sample's [`SampleState`] is one value in the store, changed only by compare-and-swap from the bytes
//! just read, so two annotators (or an annotator and a reviewer, or two fleet threads) can never both win a
//! transition: the loser re-reads and decides again, and a claim that loses simply moves on to the next sample.
//! Transitions are pure ([`state`]), the order of a claim is pure ([`order`]), and [`Queue`] is the store edge.
//! Indexes (the queue in uncertainty order, the review list) are hints kept beside the states; see [`keys`] for why
//! a crash can only leave a stale entry, never lose a queued sample.
//!
//! Time is an argument (`now`) everywhere: leases expire when a caller's `now` passes them, never by a timer.
//! Store calls are blocking (sled; each change ends with a flush): call these from a blocking context in async code.
//! Only [`Queue::fetch`] and [`Queue::image`] are async (they read the object store).

mod catalog;
mod error;
mod keys;
mod label;
mod order;
mod queue;
mod state;
mod work;

use outpost_common::manifest::Sha256Sum;
use outpost_common::protocol::{FlagReason, ModelRef, Prediction};
use outpost_common::vision::confidence::Confidence;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use catalog::{Catalog, StaticCatalog};
pub use error::QueueError;
pub use label::{BoxLabel, Label, LabelRecord, LabelSource, MAX_BOXES};
pub use order::{Bucket, Candidate, plan};
pub use queue::Queue;
pub use state::{ReviewDecision, SampleState, Skip, StateName, Status};

pub(crate) use queue::enqueue;

use crate::samples::{Image, SampleRecord, Task};

/// How the queue behaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// How long a claim lasts before the sample goes back to the queue.
    pub lease_secs: u64,
    /// How long a skipped sample is kept from the annotator who skipped it.
    pub skip_cooldown_secs: u64,
    /// Labels wait for a reviewer's accept before they are exported.
    pub review: bool,
    /// How many of a model's least confident queue entries one claim considers (bounds a claim's work).
    pub window: usize,
    /// Most samples one claim hands out (at most 1000).
    pub max_claim: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig { lease_secs: 15 * 60, skip_cooldown_secs: 24 * 3600, review: false, window: 5000, max_claim: 100 }
    }
}

/// Who holds a claim, until when.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lease {
    pub annotator: String,
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

/// A sample as the annotators' API shows it: where it came from, the agent's predictions as pre-annotations, and
/// where it is in the flow.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleView {
    pub sample: Sha256Sum,
    pub model: ModelRef,
    pub task: Task,
    pub device: String,
    pub camera: String,
    #[serde(with = "time::serde::rfc3339")]
    pub captured_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    pub reason: FlagReason,
    pub confidence: Confidence,
    pub width: u32,
    pub height: u32,
    pub content_type: String,
    /// The agent's predictions (boxes in image pixels for detectors; top classes for classifiers).
    pub pre_annotations: Vec<Prediction>,
    pub state: StateName,
    /// The current claim, while it lasts.
    pub lease: Option<Lease>,
    /// The latest label (the previous attempt, when a reviewer sent it back).
    pub label: Option<LabelRecord>,
    /// A reviewer's note, or the reason of a rejection.
    pub note: Option<String>,
}

impl SampleView {
    pub(crate) fn new(record: &SampleRecord, state: &SampleState, now: OffsetDateTime) -> SampleView {
        let meta = &record.meta;
        let name = state.name(now);
        let lease = match &state.status {
            Status::Claimed { annotator, until } if name == StateName::Claimed => {
                Some(Lease { annotator: annotator.clone(), until: *until })
            }
            _ => None,
        };
        SampleView {
            sample: meta.sample,
            model: meta.model.clone(),
            task: record.task(),
            device: meta.device.clone(),
            camera: meta.camera.clone(),
            captured_at: meta.captured_at,
            received_at: record.received_at,
            reason: meta.reason,
            confidence: meta.confidence,
            width: meta.width,
            height: meta.height,
            content_type: meta.content_type.clone(),
            pre_annotations: meta.predictions.clone(),
            state: name,
            lease,
            label: state.label.clone(),
            note: state.note.clone(),
        }
    }
}

/// A claimed sample with its image, for the lease holder.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub view: SampleView,
    pub image: Image,
}

/// How many samples are in each state (an expired claim counts as queued).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub queued: u64,
    pub claimed: u64,
    pub review: u64,
    pub labelled: u64,
    pub accepted: u64,
    pub rejected: u64,
}

impl Counts {
    pub(crate) fn add(&mut self, name: StateName) {
        let slot = match name {
            StateName::Queued => &mut self.queued,
            StateName::Claimed => &mut self.claimed,
            StateName::Review => &mut self.review,
            StateName::Labelled => &mut self.labelled,
            StateName::Accepted => &mut self.accepted,
            StateName::Rejected => &mut self.rejected,
        };
        *slot = slot.saturating_add(1);
    }
}

//! What the fleet keeps about a stored sample: its meta as uploaded, when it arrived and where its image is.

use outpost_common::manifest::Sha256Sum;
use outpost_common::protocol::SampleMeta;
use outpost_common::store::Store;
use outpost_common::vision::confidence::Confidence;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::SampleError;

/// The store tree of sample records, keyed by the 32 raw bytes of the sample id.
pub(crate) const SAMPLES: &str = "samples";

/// What a model does, as far as labelling cares: one class per image, or boxes with classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Classify,
    Detect,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Classify => "classify",
            Task::Detect => "detect",
        }
    }
}

/// One stored sample. Written once, never changed (the annotation state lives beside it, in `annotate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleRecord {
    pub meta: SampleMeta,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// Size of the image.
    pub bytes: u64,
    /// The image's location in the object store.
    pub blob: String,
}

impl SampleRecord {
    pub fn sample(&self) -> Sha256Sum {
        self.meta.sample
    }

    /// The task of the model that flagged the sample, from the kind of its confidence summary.
    pub fn task(&self) -> Task {
        match self.meta.confidence {
            Confidence::Classify { .. } => Task::Classify,
            Confidence::Detect { .. } => Task::Detect,
        }
    }

    /// The file extension of the image, from its (checked) content type.
    pub fn extension(&self) -> &'static str {
        extension(&self.meta.content_type)
    }

    /// The label of the model's most confident prediction: the class a sample counts under for balancing.
    pub fn predicted_class(&self) -> Option<&str> {
        self.meta
            .predictions
            .iter()
            .filter(|p| p.score.is_finite())
            .max_by(|a, b| a.score.total_cmp(&b.score))
            .map(|p| p.label.as_str())
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>, SampleError> {
        serde_json::to_vec(self).map_err(|e| SampleError::Corrupt { sample: self.sample(), detail: e.to_string() })
    }

    pub(crate) fn decode(sample: &Sha256Sum, bytes: &[u8]) -> Result<SampleRecord, SampleError> {
        serde_json::from_slice(bytes).map_err(|e| SampleError::Corrupt { sample: *sample, detail: e.to_string() })
    }

    /// Reads a record from the store.
    pub(crate) fn load(store: &dyn Store, sample: &Sha256Sum) -> Result<Option<SampleRecord>, SampleError> {
        store.get(SAMPLES, &sample.0)?.map(|bytes| SampleRecord::decode(sample, &bytes)).transpose()
    }
}

/// `jpg` for JPEG, `png` for PNG (the only two content types intake lets in).
pub(crate) fn extension(content_type: &str) -> &'static str {
    if content_type == "image/png" { "png" } else { "jpg" }
}

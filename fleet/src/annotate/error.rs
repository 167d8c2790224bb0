//! Why a queue operation was refused or failed.

use outpost_common::manifest::Sha256Sum;
use outpost_common::protocol::ModelRef;
use outpost_common::store::StoreError;

use super::StateName;
use crate::error::ErrorKind;
use crate::samples::SampleError;

/// A refused or failed queue operation. [`QueueError::kind`] gives the HTTP status (see [`ErrorKind`]):
///
/// | variant | code | status |
/// | --- | --- | --- |
/// | `Invalid` (bad annotator id, count, note), `InvalidLabel`, `UnknownModel` | `invalid`, `invalid_label`, `unknown_model` | 422 |
/// | `NotFound` | `not_found` | 404 |
/// | `LeaseLost` (not the holder: never claimed, expired and taken, or someone else's) | `lease_lost` | 409 |
/// | `WrongState` (already labelled, not in review, …), `Busy` | `wrong_state`, `busy` | 409 |
/// | `SelfReview` | `self_review` | 403 |
/// | `Sample(e)` | `e.code()` | `e.kind()` |
/// | `Store`, `Corrupt` | `store`, `corrupt` | 500 |
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("{0}")]
    Invalid(String),
    #[error("no sample {0}")]
    NotFound(Sha256Sum),
    #[error("`{annotator}` does not hold the lease{}", holder.as_ref().map(|h| format!(" (`{h}` does)")).unwrap_or_default())]
    LeaseLost { annotator: String, holder: Option<String> },
    #[error("the sample is {state}; cannot {action} it")]
    WrongState { state: StateName, action: &'static str },
    #[error("the sample changed under {attempts} attempts in a row; try again")]
    Busy { attempts: usize },
    #[error("`{reviewer}` gave this label and may not review it")]
    SelfReview { reviewer: String },
    #[error("invalid label: {0}")]
    InvalidLabel(String),
    #[error("the classes of model {}@{} are unknown to the registry", model.name, model.version)]
    UnknownModel { model: ModelRef },
    #[error(transparent)]
    Sample(#[from] SampleError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored annotation state is unreadable: {0}")]
    Corrupt(String),
}

impl QueueError {
    pub fn kind(&self) -> ErrorKind {
        use QueueError::*;
        match self {
            Invalid(_) | InvalidLabel(_) | UnknownModel { .. } => ErrorKind::Invalid,
            NotFound(_) => ErrorKind::NotFound,
            LeaseLost { .. } | WrongState { .. } | Busy { .. } => ErrorKind::Conflict,
            SelfReview { .. } => ErrorKind::Forbidden,
            Sample(e) => e.kind(),
            Store(_) | Corrupt(_) => ErrorKind::Internal,
        }
    }

    /// A stable machine-readable name (JSON error bodies, logs, metric labels).
    pub fn code(&self) -> &'static str {
        use QueueError::*;
        match self {
            Invalid(_) => "invalid",
            NotFound(_) => "not_found",
            LeaseLost { .. } => "lease_lost",
            WrongState { .. } => "wrong_state",
            Busy { .. } => "busy",
            SelfReview { .. } => "self_review",
            InvalidLabel(_) => "invalid_label",
            UnknownModel { .. } => "unknown_model",
            Sample(e) => e.code(),
            Store(_) => "store",
            Corrupt(_) => "corrupt",
        }
    }
}

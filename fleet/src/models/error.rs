//! Why a push was refused, or a stored model could not be read or changed.

use outpost_common::manifest::VerifyError;
use outpost_common::store::StoreError;
use outpost_common::vision::candidate::CandidateError;

use crate::error::ErrorKind;

/// A refused push or a failed registry operation. [`ModelError::kind`] gives the HTTP status (see [`ErrorKind`]):
///
/// | variant | code | status |
/// | --- | --- | --- |
/// | `Verify` | the verification code (`bad_signature`, `unknown_key`, `threshold_not_met`, `expired`, `artifact_hash`, `artifact_length`, `model_mismatch`, … — docs/PROTOCOL.md) | 422 |
/// | `Load` | `load_failed` | 422 |
/// | `Golden` | `non_finite_output`, `golden_failed` | 422 |
/// | `GoldenLabel` | `golden_mismatch` | 422 |
/// | `BadGolden`, `BadPush`, `BadName` | `bad_golden`, `bad_push`, `bad_name` | 422 |
/// | `ArtifactTooLarge`, `GoldenTooLarge` | `artifact_too_large`, `golden_too_large` | 413 |
/// | `VersionExists` | `version_exists` | 409 |
/// | `VersionNotAbove` | `version_not_above` | 409 |
/// | `InUse` | `in_use` | 409 |
/// | `NotFound` | `not_found` | 404 |
/// | `NoTrustedKeys`, `Runtime` | `no_trusted_keys`, `runtime_unavailable` | 503 |
/// | `Store`, `Blob`, `Corrupt`, `Internal` | `store`, `blob`, `corrupt`, `internal` | 500 |
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("the fleet trusts no signing keys: set `[models] trusted_keys` in fleet.toml to accept pushes")]
    NoTrustedKeys,
    #[error("the manifest or artifact is refused: {0}")]
    Verify(#[from] VerifyError),
    #[error("{0}")]
    Load(String),
    #[error("golden image `{image}`: {reason}")]
    Golden { image: String, reason: String, non_finite: bool },
    #[error("golden image `{image}`: expected {expected}, the model said {actual}")]
    GoldenLabel { image: String, expected: String, actual: String },
    #[error("golden images: {0}")]
    BadGolden(String),
    #[error("{0}")]
    BadPush(String),
    #[error("`{0}` is not a model name ([A-Za-z0-9._-], 1–128 characters)")]
    BadName(String),
    #[error("the artifact is over the fleet's {max}-byte limit")]
    ArtifactTooLarge { max: u64 },
    #[error("golden images are over the fleet's limit: {0}")]
    GoldenTooLarge(String),
    #[error("{name} v{version} is stored with a different {what}; push a new version instead")]
    VersionExists { name: String, version: u64, what: &'static str },
    #[error("{name} v{version} is not above v{latest}, the highest version ever stored under this name")]
    VersionNotAbove { name: String, version: u64, latest: u64 },
    #[error("{name} v{version} is part of a rollout and cannot be deleted")]
    InUse { name: String, version: u64 },
    #[error("no model {name} v{version}")]
    NotFound { name: String, version: u64 },
    #[error("ONNX Runtime is not available to check models: {0}")]
    Runtime(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("object store: {0}")]
    Blob(#[from] object_store::Error),
    #[error("stored record of {key} is unreadable: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("{0}")]
    Internal(String),
}

impl From<CandidateError> for ModelError {
    fn from(e: CandidateError) -> ModelError {
        match e {
            CandidateError::Load(e) => ModelError::Load(format!("the model does not load: {e}")),
            CandidateError::Mismatch(e) => ModelError::Verify(e),
            CandidateError::WarmUp { frame, error } => ModelError::Golden {
                image: format!("neutral frame {frame}"),
                non_finite: error.kind() == "non_finite",
                reason: error.to_string(),
            },
        }
    }
}

impl ModelError {
    pub fn kind(&self) -> ErrorKind {
        use ModelError::*;
        match self {
            Verify(_) | Load(_) | Golden { .. } | GoldenLabel { .. } | BadGolden(_) | BadPush(_) | BadName(_) => {
                ErrorKind::Invalid
            }
            ArtifactTooLarge { .. } | GoldenTooLarge(_) => ErrorKind::TooLarge,
            VersionExists { .. } | VersionNotAbove { .. } | InUse { .. } => ErrorKind::Conflict,
            NotFound { .. } => ErrorKind::NotFound,
            NoTrustedKeys | Runtime(_) => ErrorKind::Unavailable,
            Store(_) | Blob(_) | Corrupt { .. } | Internal(_) => ErrorKind::Internal,
        }
    }

    /// A stable machine-readable name (JSON error bodies, logs, metric labels).
    pub fn code(&self) -> &'static str {
        use ModelError::*;
        match self {
            NoTrustedKeys => "no_trusted_keys",
            Verify(e) => e.code(),
            Load(_) => "load_failed",
            Golden { non_finite: true, .. } => "non_finite_output",
            Golden { .. } => "golden_failed",
            GoldenLabel { .. } => "golden_mismatch",
            BadGolden(_) => "bad_golden",
            BadPush(_) => "bad_push",
            BadName(_) => "bad_name",
            ArtifactTooLarge { .. } => "artifact_too_large",
            GoldenTooLarge(_) => "golden_too_large",
            VersionExists { .. } => "version_exists",
            VersionNotAbove { .. } => "version_not_above",
            InUse { .. } => "in_use",
            NotFound { .. } => "not_found",
            Runtime(_) => "runtime_unavailable",
            Store(_) => "store",
            Blob(_) => "blob",
            Corrupt { .. } => "corrupt",
            Internal(_) => "internal",
        }
    }
}

//! Why a manifest, an artifact or a key set was rejected: one variant per check.

use time::OffsetDateTime;

use super::body::Sha256Sum;
use super::keys::{KeyError, KeyId};

/// Why verification failed. Each attack the verifier defends against has its own variant, and [`VerifyError::code`]
/// gives a stable snake_case name for events and metrics.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{size} bytes is over the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("unknown field in the {what}: {detail}")]
    UnknownField { what: &'static str, detail: String },
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("schema {got} is not supported (this build reads schema {supported})")]
    UnsupportedSchema { got: u32, supported: u32 },
    #[error("key {key_id} signed more than once")]
    DuplicateSignature { key_id: KeyId },
    #[error("key {key_id} is the same key as {first}; one key counts once")]
    DuplicateKey { key_id: KeyId, first: KeyId },
    #[error("signed only by unknown key(s) {}", join(key_ids))]
    UnknownKey { key_ids: Vec<KeyId> },
    #[error("signed by revoked key {key_id}")]
    RevokedKey { key_id: KeyId },
    #[error("the signature by {key_id} is not canonical (S is not below the group order)")]
    NonCanonicalSignature { key_id: KeyId },
    #[error("the signature by {key_id} does not match the signed bytes")]
    BadSignature { key_id: KeyId },
    #[error("signed by {valid} trusted key(s), {required} required")]
    ThresholdNotMet { valid: usize, required: usize },
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    #[error("expired at {expires_at} (now {now})")]
    Expired { expires_at: OffsetDateTime, now: OffsetDateTime },
    #[error("made for model family `{manifest}`, this device is `{device}`")]
    WrongFamily { manifest: String, device: String },
    #[error("version {version} is below this device's floor {floor} for `{name}`")]
    BelowFloor { name: String, version: u64, floor: u64 },
    #[error("the artifact is {actual} bytes, {} than the {declared} the manifest states", if actual > declared { "longer" } else { "shorter" })]
    ArtifactLength { declared: u64, actual: u64 },
    #[error("the artifact's sha256 is {actual}, the manifest states {declared}")]
    ArtifactHash { declared: Sha256Sum, actual: Sha256Sum },
    #[error("the artifact is not the model the manifest describes: {0}")]
    ModelMismatch(String),
    #[error("the key set rotation is signed by {valid} of the current keys, {required} required")]
    RotationNotAuthorized { valid: usize, required: usize },
    #[error("key set version {got} is not above the current version {current}")]
    KeySetRollback { current: u64, got: u64 },
    #[error("invalid key set: {0}")]
    InvalidKeySet(String),
    #[error(transparent)]
    Key(#[from] KeyError),
}

fn join(ids: &[KeyId]) -> String {
    ids.iter().map(KeyId::as_str).collect::<Vec<_>>().join(", ")
}

impl VerifyError {
    /// A stable name for the failed check, for `update_rejected` events, metrics and tests.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::TooLarge { .. } => "too_large",
            VerifyError::UnknownField { .. } => "unknown_field",
            VerifyError::Malformed(_) => "malformed",
            VerifyError::UnsupportedSchema { .. } => "unsupported_schema",
            VerifyError::DuplicateSignature { .. } => "duplicate_signature",
            VerifyError::DuplicateKey { .. } => "duplicate_key",
            VerifyError::UnknownKey { .. } => "unknown_key",
            VerifyError::RevokedKey { .. } => "revoked_key",
            VerifyError::NonCanonicalSignature { .. } => "non_canonical_signature",
            VerifyError::BadSignature { .. } => "bad_signature",
            VerifyError::ThresholdNotMet { .. } => "threshold_not_met",
            VerifyError::InvalidManifest(_) => "invalid_manifest",
            VerifyError::Expired { .. } => "expired",
            VerifyError::WrongFamily { .. } => "wrong_family",
            VerifyError::BelowFloor { .. } => "below_floor",
            VerifyError::ArtifactLength { .. } => "artifact_length",
            VerifyError::ArtifactHash { .. } => "artifact_hash",
            VerifyError::ModelMismatch(_) => "model_mismatch",
            VerifyError::RotationNotAuthorized { .. } => "rotation_not_authorized",
            VerifyError::KeySetRollback { .. } => "key_set_rollback",
            VerifyError::InvalidKeySet(_) => "invalid_key_set",
            VerifyError::Key(KeyError::WeakKey) => "weak_key",
            VerifyError::Key(KeyError::NonCanonical) => "non_canonical_key",
            VerifyError::Key(_) => "malformed_key",
        }
    }

    /// Classifies a serde_json error: unknown fields get their own kind, everything else is malformed.
    pub(crate) fn from_json(what: &'static str, error: &serde_json::Error) -> VerifyError {
        let detail = error.to_string();
        if detail.starts_with("unknown field") {
            VerifyError::UnknownField { what, detail }
        } else {
            VerifyError::Malformed(format!("{what}: {detail}"))
        }
    }
}

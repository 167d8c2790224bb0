//! Signed model manifests: what a model is, which bytes it is, and who vouches for it.
//!
//! Design: a manifest travels as an [`Envelope`]: the manifest *body* (JSON bytes, base64 in the envelope) and a list
//! of ed25519 signatures, each naming the [`KeyId`] of its key. Signatures cover a fixed context string followed by
//! the body bytes exactly as received, so nothing is ever re-serialised before verification, and whitespace or key
//! order cannot matter. Verification ([`verify_manifest`]) is pure: it takes the envelope bytes, the device's
//! [`TrustedKeys`] and a [`Policy`] (now, the device's model family, its version floors) and returns a
//! [`VerifiedManifest`] — the only way to obtain one — or a [`VerifyError`] naming the one check that failed.
//! The artifact is checked against the verified manifest afterwards, whole ([`VerifiedManifest::check_artifact`]) or
//! streamed ([`VerifiedManifest::artifact_check`]), so a download can start only after its manifest is trusted.
//!
//! The shell around it lives in [`keys`] (key files) and [`floor`] (the persisted anti-rollback floors).

pub(crate) mod b64;
mod body;
mod envelope;
mod error;
pub mod floor;
pub mod keys;
mod keyset;
mod sign;
mod verify;

pub use body::{Artifact, ConfidenceBaseline, MANIFEST_SCHEMA, Manifest, Sha256Sum};
pub use envelope::{Envelope, MAX_ENVELOPE_BYTES, Purpose, SignatureEntry};
pub use error::VerifyError;
pub use floor::{FloorStore, FloorStoreError, Floors};
pub use keys::{KeyError, KeyFiles, KeyId, PublicKey, SecretKey};
pub use keyset::{KEY_SET_SCHEMA, KeySet, TrustedKeys};
pub use sign::{sign_body, sign_key_set, sign_manifest};
pub use verify::{
    ArtifactCheck, ArtifactDigest, Policy, VerifiedManifest, verify_envelope, verify_manifest,
    verify_manifest_with_artifact,
};

/// A signed manifest as it travels (HTTP, the `assign_model` command, files named `*.manifest.json`).
pub type SignedManifest = Envelope;

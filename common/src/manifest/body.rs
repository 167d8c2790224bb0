//! The manifest body: the signed statement about one model artifact.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;

use crate::protocol::ConfidenceHistogram;
use crate::vision::spec::{InputSpec, ModelSpec, SpecHints, Task};

/// The manifest body format this code writes and accepts.
pub const MANIFEST_SCHEMA: u32 = 1;

/// What the signer states about one model artifact.
///
/// Design: everything a device needs to run the model is here (task, input spec, labels), so a model without
/// Ultralytics metadata is fully described; these fields reuse the vision library's types rather than copies.
/// `version` only rises per `name` (the registry refuses anything else); a device refuses versions below its stored
/// floor for `name`, and committing a manifest raises that floor to `min_version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: u32,
    pub name: String,
    pub version: u64,
    /// A human label such as "2.1.0"; informational only, never compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub artifact: Artifact,
    pub task: Task,
    pub input: InputSpec,
    pub labels: Vec<String>,
    /// The model family / hardware id a device must match; absent means any device may run it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// The anti-rollback floor a device raises to when it commits this manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<u64>,
    /// Confidence distribution measured at release, for the agent's post-swap health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<ConfidenceBaseline>,
}

impl Manifest {
    /// A manifest for `artifact` as `name` v`version`, describing the model as `spec` resolved it (task, input,
    /// labels), created at `created_at` (whole seconds: the RFC 3339 form signed is the one verified) and valid for
    /// `valid_for`. No label, family, floor or baseline: set them on the result.
    pub fn describing(
        name: &str,
        version: u64,
        artifact: &[u8],
        spec: &ModelSpec,
        created_at: OffsetDateTime,
        valid_for: time::Duration,
    ) -> Manifest {
        let created_at = created_at.replace_nanosecond(0).unwrap_or(created_at);
        Manifest {
            schema: MANIFEST_SCHEMA,
            name: name.to_string(),
            version,
            label: None,
            artifact: Artifact { sha256: Sha256Sum::of(artifact), length: artifact.len() as u64 },
            task: spec.task,
            input: spec.input.clone(),
            labels: spec.labels.clone(),
            family: None,
            created_at,
            expires_at: created_at.saturating_add(valid_for),
            min_version: None,
            baseline: None,
        }
    }

    /// The manifest's description of the model, as hints for [`crate::vision::spec::resolve`].
    pub fn spec_hints(&self) -> SpecHints {
        SpecHints { task: Some(self.task), input: Some(self.input.clone()), labels: Some(self.labels.clone()) }
    }

    /// `name v7 (2.1.0)`, for logs and CLI output.
    pub fn display_name(&self) -> String {
        match &self.label {
            Some(label) => format!("{} v{} ({label})", self.name, self.version),
            None => format!("{} v{}", self.name, self.version),
        }
    }

    /// Internal consistency, checked after the signature and before any policy check.
    pub(crate) fn problems(&self) -> Option<String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 128
            && self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !name_ok {
            return Some(format!("name `{}` is not 1-128 characters of [A-Za-z0-9._-]", self.name.escape_debug()));
        }
        if self.version == 0 {
            return Some("version must be at least 1".into());
        }
        if let Some(min) = self.min_version
            && min > self.version
        {
            return Some(format!("min_version {min} is above the version {}", self.version));
        }
        if self.expires_at <= self.created_at {
            return Some("expires_at is not after created_at".into());
        }
        if self.artifact.length == 0 {
            return Some("the artifact length is 0".into());
        }
        if self.input.width == 0 || self.input.height == 0 {
            return Some("the input size is 0".into());
        }
        if matches!(&self.family, Some(f) if f.is_empty()) {
            return Some("family is empty (omit it to allow any family)".into());
        }
        None
    }
}

/// The model file a manifest vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub sha256: Sha256Sum,
    /// Exact length in bytes; a download that runs past it is cut off.
    pub length: u64,
}

/// A SHA-256 digest, written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Sum(pub [u8; 32]);

impl Sha256Sum {
    pub fn of(bytes: &[u8]) -> Sha256Sum {
        use sha2::Digest;
        Sha256Sum(sha2::Sha256::digest(bytes).into())
    }
}

impl fmt::Display for Sha256Sum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Sum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Sum({self})")
    }
}

impl FromStr for Sha256Sum {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let mut out = [0u8; 32];
        match hex::decode_to_slice(s, &mut out) {
            Ok(()) if lower => Ok(Sha256Sum(out)),
            _ => Err(format!("`{}` is not 64 lowercase hex digits", s.escape_debug())),
        }
    }
}

impl Serialize for Sha256Sum {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256Sum {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The confidence distribution a model showed on its validation data when it was released.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfidenceBaseline {
    /// How many frames the histogram was measured on.
    pub frames: u64,
    pub histogram: ConfidenceHistogram,
    /// Fraction of frames the default flagging rule flagged, 0..1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flagged_rate: Option<f32>,
}

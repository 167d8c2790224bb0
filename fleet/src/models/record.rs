//! What the registry keeps about a stored version, and the store's key layout.
//!
//! Trees: `models` holds one [`StoredModel`] per version, keyed `<name> 0x00 <version as big-endian u64>` so a
//! name's versions are adjacent and in order; `model_names` holds per name the highest version ever stored (kept
//! after a delete, so a deleted version number is never reused for other bytes).

use outpost_common::manifest::{Envelope, KeyId, Manifest};
use outpost_common::store::Store;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::ModelError;

pub(crate) const MODELS: &str = "models";
pub(crate) const NAMES: &str = "model_names";

/// The key of one version.
pub(crate) fn key(name: &str, version: u64) -> Vec<u8> {
    let mut key = prefix(name);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// The prefix of every version of `name` (names never contain a zero byte).
pub(crate) fn prefix(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 9);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key
}

/// Whether `name` is a model name as manifests allow it (docs/PROTOCOL.md): 1–128 of `[A-Za-z0-9._-]`.
pub fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// When and why a version was deprecated: it stays downloadable (devices may run it), but no new rollout should
/// target it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deprecation {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub by: String,
    pub reason: Option<String>,
}

/// What the golden-image check found at push time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenReport {
    /// Images run (all with finite outputs).
    pub images: usize,
    /// Of those, images with an expected label, all of which matched.
    pub labelled: usize,
}

/// One stored version: the signed manifest exactly as verified, what was checked, where the bytes are.
///
/// Design: written once by a push after every check passed; afterwards only `deprecated` changes (compare and
/// swap). The envelope is kept whole so it can be forwarded to devices (`assign_model`) and re-verified by them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredModel {
    /// The signed manifest as pushed.
    pub envelope: Envelope,
    /// Its body, parsed (as verified at push time).
    pub manifest: Manifest,
    /// The trusted keys whose signatures counted at push time.
    pub signers: Vec<KeyId>,
    #[serde(with = "time::serde::rfc3339")]
    pub pushed_at: OffsetDateTime,
    pub pushed_by: String,
    pub golden: GoldenReport,
    /// The artifact's location in the object store.
    pub artifact_blob: String,
    /// The manifest's location in the object store (a copy of `envelope`).
    pub manifest_blob: String,
    pub deprecated: Option<Deprecation>,
}

impl StoredModel {
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    pub fn version(&self) -> u64 {
        self.manifest.version
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>, ModelError> {
        serde_json::to_vec(self)
            .map_err(|e| ModelError::Corrupt { key: self.manifest.display_name(), detail: e.to_string() })
    }

    pub(crate) fn decode(key: &[u8], bytes: &[u8]) -> Result<StoredModel, ModelError> {
        serde_json::from_slice(bytes)
            .map_err(|e| ModelError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), detail: e.to_string() })
    }

    pub(crate) fn load(
        store: &dyn Store,
        name: &str,
        version: u64,
    ) -> Result<Option<(Vec<u8>, StoredModel)>, ModelError> {
        let key = key(name, version);
        match store.get(MODELS, &key)? {
            Some(bytes) => Ok(Some((bytes.clone(), StoredModel::decode(&key, &bytes)?))),
            None => Ok(None),
        }
    }
}

/// The highest version ever stored under `name` (0: none).
pub(crate) fn latest(store: &dyn Store, name: &str) -> Result<(Option<Vec<u8>>, u64), ModelError> {
    let raw = store.get(NAMES, name.as_bytes())?;
    let version = match &raw {
        Some(bytes) => {
            let bytes: [u8; 8] = bytes.as_slice().try_into().map_err(|_| ModelError::Corrupt {
                key: name.to_string(),
                detail: format!("{} bytes for a version", bytes.len()),
            })?;
            u64::from_be_bytes(bytes)
        }
        None => 0,
    };
    Ok((raw, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_versions_of_a_name_together_and_in_order() {
        assert!(key("defect", 2) < key("defect", 10));
        assert!(key("defect", u64::MAX) < key("defect-cls", 1));
        assert!(key("defect", 7).starts_with(&prefix("defect")));
        assert!(!key("defect-cls", 7).starts_with(&prefix("defect")));
    }

    #[test]
    fn names_are_checked() {
        for (name, ok) in
            [("defect", true), ("a.b_c-1", true), ("", false), ("a/b", false), ("a\0", false), ("é", false)]
        {
            assert_eq!(valid_name(name), ok, "{name:?}");
        }
        assert!(valid_name(&"a".repeat(128)) && !valid_name(&"a".repeat(129)));
    }
}

//! The keys a device trusts, and their rotation.
//!
//! Design: a device starts from a root it was configured with (keys, threshold). A rotation is a new [`KeySet`]
//! with a higher version, signed by a threshold of the keys the device trusts now; revocations only accumulate, so
//! a rotation can never bring a revoked key back.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::VerifyError;
use super::envelope::{Envelope, Purpose, check_signatures};
use super::keys::{KeyId, PublicKey};

/// The key set body format this code writes and accepts.
pub const KEY_SET_SCHEMA: u32 = 1;

/// A key set as signed during a rotation (and as a device may persist it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeySet {
    pub schema: u32,
    /// Rises with every rotation; a device refuses a key set whose version is not above its current one.
    pub version: u64,
    /// How many distinct keys must sign a manifest or the next rotation.
    pub threshold: usize,
    pub keys: Vec<PublicKey>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked: Vec<KeyId>,
}

/// The wire form, parsed before the keys are checked one by one so a bad key gets its own error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeySet {
    schema: u32,
    version: u64,
    threshold: usize,
    keys: Vec<String>,
    #[serde(default)]
    revoked: Vec<KeyId>,
}

impl KeySet {
    /// Parses a key set body (not an envelope), checking each key.
    pub fn from_json(bytes: &[u8]) -> Result<KeySet, VerifyError> {
        let raw: RawKeySet = serde_json::from_slice(bytes).map_err(|e| VerifyError::from_json("key set", &e))?;
        if raw.schema != KEY_SET_SCHEMA {
            return Err(VerifyError::UnsupportedSchema { got: raw.schema, supported: KEY_SET_SCHEMA });
        }
        let keys = raw.keys.iter().map(|k| PublicKey::parse(k)).collect::<Result<Vec<_>, _>>()?;
        Ok(KeySet { schema: raw.schema, version: raw.version, threshold: raw.threshold, keys, revoked: raw.revoked })
    }

    pub fn to_json_pretty(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// The keys a device trusts: a threshold over distinct keys, and the ids it has revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: BTreeMap<KeyId, PublicKey>,
    revoked: BTreeSet<KeyId>,
    threshold: usize,
    version: u64,
}

impl TrustedKeys {
    /// A root of trust: `threshold` (at least 1) distinct keys out of `keys` must sign.
    pub fn new(keys: impl IntoIterator<Item = PublicKey>, threshold: usize) -> Result<TrustedKeys, VerifyError> {
        TrustedKeys::build(keys, threshold, BTreeSet::new(), 0)
    }

    /// The same keys with `ids` revoked: signatures by them reject a manifest outright.
    pub fn with_revoked(self, ids: impl IntoIterator<Item = KeyId>) -> Result<TrustedKeys, VerifyError> {
        let mut revoked = self.revoked.clone();
        revoked.extend(ids);
        TrustedKeys::build(self.keys.into_values(), self.threshold, revoked, self.version)
    }

    /// Trusts a key set as a root (from configuration or the device's own persisted state).
    pub fn from_key_set(set: &KeySet) -> Result<TrustedKeys, VerifyError> {
        TrustedKeys::build(set.keys.iter().cloned(), set.threshold, set.revoked.iter().cloned().collect(), set.version)
    }

    fn build(
        keys: impl IntoIterator<Item = PublicKey>,
        threshold: usize,
        revoked: BTreeSet<KeyId>,
        version: u64,
    ) -> Result<TrustedKeys, VerifyError> {
        let mut map = BTreeMap::new();
        for key in keys {
            if revoked.contains(key.id()) {
                return Err(VerifyError::InvalidKeySet(format!("key {} is both trusted and revoked", key.id())));
            }
            let id = key.id().clone();
            if map.insert(id.clone(), key).is_some() {
                return Err(VerifyError::DuplicateKey { first: id.clone(), key_id: id });
            }
        }
        if threshold == 0 || threshold > map.len() {
            return Err(VerifyError::InvalidKeySet(format!(
                "threshold {threshold} with {} key(s); it must be between 1 and the number of keys",
                map.len()
            )));
        }
        Ok(TrustedKeys { keys: map, revoked, threshold, version })
    }

    pub fn threshold(&self) -> usize {
        self.threshold
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn keys(&self) -> impl Iterator<Item = &PublicKey> {
        self.keys.values()
    }

    pub fn revoked(&self) -> impl Iterator<Item = &KeyId> {
        self.revoked.iter()
    }

    pub fn get(&self, id: &KeyId) -> Option<&PublicKey> {
        self.keys.get(id)
    }

    pub fn is_revoked(&self, id: &KeyId) -> bool {
        self.revoked.contains(id)
    }

    /// The set as a [`KeySet`], to persist it or to start a rotation from it.
    pub fn to_key_set(&self) -> KeySet {
        KeySet {
            schema: KEY_SET_SCHEMA,
            version: self.version,
            threshold: self.threshold,
            keys: self.keys.values().cloned().collect(),
            revoked: self.revoked.iter().cloned().collect(),
        }
    }

    /// Verifies a signed key set (envelope bytes) against the keys trusted now and returns the keys to trust next.
    pub fn rotate(&self, envelope: &[u8]) -> Result<TrustedKeys, VerifyError> {
        let envelope = Envelope::from_slice(envelope)?;
        self.rotate_envelope(&envelope)
    }

    /// [`TrustedKeys::rotate`] for an already parsed envelope.
    pub fn rotate_envelope(&self, envelope: &Envelope) -> Result<TrustedKeys, VerifyError> {
        check_signatures(envelope, Purpose::KeySet, self).map_err(|e| match e {
            VerifyError::ThresholdNotMet { valid, required } => VerifyError::RotationNotAuthorized { valid, required },
            VerifyError::UnknownKey { .. } => VerifyError::RotationNotAuthorized { valid: 0, required: self.threshold },
            other => other,
        })?;
        let next = KeySet::from_json(&envelope.body)?;
        if next.version <= self.version {
            return Err(VerifyError::KeySetRollback { current: self.version, got: next.version });
        }
        let mut revoked = self.revoked.clone();
        revoked.extend(next.revoked.iter().cloned());
        TrustedKeys::build(next.keys, next.threshold, revoked, next.version)
    }
}

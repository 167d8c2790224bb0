//! Signing: what `outpost model sign` and `outpost keys rotate` do with offline keys.

use super::body::Manifest;
use super::envelope::{Envelope, Purpose, SignatureEntry};
use super::keys::SecretKey;
use super::keyset::KeySet;

/// Signs `body` exactly as given with each key.
pub fn sign_body(purpose: Purpose, body: Vec<u8>, keys: &[&SecretKey]) -> Envelope {
    let message = purpose.message(&body);
    let signatures = keys
        .iter()
        .map(|key| SignatureEntry { key_id: key.public().id().clone(), sig: key.sign(&message).to_vec() })
        .collect();
    Envelope { body, signatures }
}

/// Serialises the manifest (pretty, so the decoded body is readable) and signs those bytes.
pub fn sign_manifest(manifest: &Manifest, keys: &[&SecretKey]) -> Envelope {
    sign_body(Purpose::Manifest, to_pretty(manifest), keys)
}

/// Signs a key set for a rotation; `keys` must reach the threshold of the set the devices trust now.
pub fn sign_key_set(set: &KeySet, keys: &[&SecretKey]) -> Envelope {
    sign_body(Purpose::KeySet, set.to_json_pretty(), keys)
}

fn to_pretty<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // These types are plain data with string map keys; serialising them cannot fail.
    let mut out = serde_json::to_vec_pretty(value).unwrap_or_default();
    out.push(b'\n');
    out
}

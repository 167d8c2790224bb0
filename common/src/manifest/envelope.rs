//! The signed envelope shared by manifests and key sets, and the threshold signature check.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::Signature;
use serde::{Deserialize, Serialize};

use super::keys::KeyId;
use super::keyset::TrustedKeys;
use super::{VerifyError, b64};

/// The largest envelope accepted, checked before any parsing.
pub const MAX_ENVELOPE_BYTES: usize = 192 * 1024;
/// The largest body: what fits in [`MAX_ENVELOPE_BYTES`] once base64-encoded.
pub(crate) const MAX_BODY_BYTES: usize = MAX_ENVELOPE_BYTES / 4 * 3;
/// More signatures than this is not a real key set; refusing them bounds the work an attacker can cause.
const MAX_SIGNATURES: usize = 32;

/// What a signature is for. Each purpose has its own context string, so a signature over a key set can never be
/// presented as a signature over a manifest, or the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Manifest,
    KeySet,
}

impl Purpose {
    pub fn context(self) -> &'static [u8] {
        match self {
            Purpose::Manifest => b"outpost manifest v1\n",
            Purpose::KeySet => b"outpost key-set v1\n",
        }
    }

    /// The exact message that is signed: the context string, then the body bytes as they are.
    pub fn message(self, body: &[u8]) -> Vec<u8> {
        let mut message = Vec::with_capacity(self.context().len() + body.len());
        message.extend_from_slice(self.context());
        message.extend_from_slice(body);
        message
    }
}

/// A body and the signatures over it.
///
/// Design: the body travels as base64 bytes, not as a JSON object, so that the envelope itself may be re-encoded
/// (pretty-printed, embedded in a command, re-ordered) without touching the bytes that were signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    #[serde(with = "b64")]
    pub body: Vec<u8>,
    pub signatures: Vec<SignatureEntry>,
}

/// One signature and the id of the key that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureEntry {
    pub key_id: KeyId,
    #[serde(with = "b64")]
    pub sig: Vec<u8>,
}

impl Envelope {
    /// Parses envelope bytes, checking the size cap first.
    pub fn from_slice(bytes: &[u8]) -> Result<Envelope, VerifyError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(VerifyError::TooLarge { size: bytes.len(), max: MAX_ENVELOPE_BYTES });
        }
        serde_json::from_slice(bytes).map_err(|e| VerifyError::from_json("envelope", &e))
    }

    /// Pretty JSON with a trailing newline, as written to `*.manifest.json` files.
    pub fn to_json_pretty(&self) -> Vec<u8> {
        // Serialising a struct of strings and lists cannot fail.
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// Ed25519's group order L, little-endian. A signature's S must be below it.
const ORDER_L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// True when the little-endian scalar `s` is below L.
fn scalar_is_canonical(s: &[u8]) -> bool {
    for (a, l) in s.iter().rev().zip(ORDER_L.iter().rev()) {
        if a != l {
            return a < l;
        }
    }
    false
}

/// Checks the envelope's signatures against `trusted`, returning the ids of the distinct keys that signed.
///
/// Strict by design: a duplicate entry, a revoked key, a malformed, non-canonical or wrong signature by a trusted
/// key rejects the whole envelope even if enough other signatures are good. Signatures by keys the device does not
/// know are skipped (a manifest signed during a rotation may carry a newer key), but never count.
pub(crate) fn check_signatures(
    envelope: &Envelope,
    purpose: Purpose,
    trusted: &TrustedKeys,
) -> Result<Vec<KeyId>, VerifyError> {
    if envelope.body.len() > MAX_BODY_BYTES {
        return Err(VerifyError::TooLarge { size: envelope.body.len(), max: MAX_BODY_BYTES });
    }
    if envelope.signatures.len() > MAX_SIGNATURES {
        return Err(VerifyError::Malformed(format!(
            "{} signatures; at most {MAX_SIGNATURES} are accepted",
            envelope.signatures.len()
        )));
    }
    let message = purpose.message(&envelope.body);
    let mut seen = BTreeSet::new();
    let mut counted: BTreeMap<[u8; 32], KeyId> = BTreeMap::new();
    let mut unknown = Vec::new();
    for entry in &envelope.signatures {
        let key_id = &entry.key_id;
        if !seen.insert(key_id) {
            return Err(VerifyError::DuplicateSignature { key_id: key_id.clone() });
        }
        if trusted.is_revoked(key_id) {
            return Err(VerifyError::RevokedKey { key_id: key_id.clone() });
        }
        let Some(key) = trusted.get(key_id) else {
            unknown.push(key_id.clone());
            continue;
        };
        let sig: [u8; 64] = entry.sig.as_slice().try_into().map_err(|_| {
            VerifyError::Malformed(format!("the signature by {key_id} is {} bytes, expected 64", entry.sig.len()))
        })?;
        if !scalar_is_canonical(&sig[32..]) {
            return Err(VerifyError::NonCanonicalSignature { key_id: key_id.clone() });
        }
        key.verifying_key()
            .verify_strict(&message, &Signature::from_bytes(&sig))
            .map_err(|_| VerifyError::BadSignature { key_id: key_id.clone() })?;
        // Ids are derived from keys, so this cannot happen with keys built by this crate; counting keys rather
        // than ids keeps it true whatever the key set looks like.
        if let Some(first) = counted.insert(key.to_bytes(), key_id.clone()) {
            return Err(VerifyError::DuplicateKey { key_id: key_id.clone(), first });
        }
    }
    let required = trusted.threshold();
    if counted.len() >= required {
        Ok(counted.into_values().collect())
    } else if counted.is_empty() && !unknown.is_empty() {
        Err(VerifyError::UnknownKey { key_ids: unknown })
    } else {
        Err(VerifyError::ThresholdNotMet { valid: counted.len(), required })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_bound() {
        let check = |s: [u8; 32], expected: bool| assert_eq!(scalar_is_canonical(&s), expected, "{s:02x?}");
        check([0; 32], true);
        check(ORDER_L, false);
        let mut below = ORDER_L;
        below[0] -= 1;
        check(below, true);
        let mut above = ORDER_L;
        above[1] += 1;
        check(above, false);
        check([0xff; 32], false);
    }
}

//! The authenticated envelope every v1 payload travels in: HMAC-SHA256 over the payload's exact bytes.
//!
//! Design: the embedded broker has no topic ACLs, so the topic alone proves nothing. Each device has its own key,
//! derived from one fleet master secret (`HMAC-SHA256(master, "outpost-device-key:" + device id)`), so the fleet
//! stores no per-device secret. The receiver checks the size cap, that the envelope names the device of the topic,
//! then the MAC in constant time, and only then hands the payload bytes to [`super::decode`].
//!
//! ```json
//! {"device":"cam-01","mac":"<64 hex>","payload":"<base64 of the message bytes>"}
//! ```

use std::fmt;

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};

use super::MAX_PAYLOAD_BYTES;
use crate::manifest::b64;
use crate::topics::DeviceId;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The largest sealed envelope: a full payload in base64 plus the other fields.
pub const MAX_SEALED_BYTES: usize = MAX_PAYLOAD_BYTES.div_ceil(3) * 4 + 1024;
/// Prefix of the key-derivation message.
pub const DEVICE_KEY_CONTEXT: &str = "outpost-device-key:";

/// Why a sealed payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("{size} bytes is over the {max}-byte limit for a sealed message")]
    TooLarge { size: usize, max: usize },
    #[error("not an authenticated envelope: {0}")]
    Malformed(String),
    #[error("the envelope names device `{envelope}` but arrived on the topic of `{topic}`")]
    DeviceMismatch { topic: String, envelope: String },
    #[error("the MAC does not match the payload for device `{0}`")]
    BadMac(String),
    #[error("not a device key: {0}")]
    Key(String),
}

/// A device's 32-byte message-authentication key.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceKey([u8; 32]);

impl DeviceKey {
    pub fn from_bytes(bytes: [u8; 32]) -> DeviceKey {
        DeviceKey(bytes)
    }

    /// Reads the 64-hex-digit form used in agent config files.
    pub fn from_hex(text: &str) -> Result<DeviceKey, AuthError> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut key).map_err(|e| AuthError::Key(e.to_string()))?;
        Ok(DeviceKey(key))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length; a 32-byte key cannot be refused.
        <HmacSha256 as KeyInit>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!("HMAC accepts any key"))
    }
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceKey(redacted)")
    }
}

/// The device key for `device`: `HMAC-SHA256(master, "outpost-device-key:" + device id)`.
pub fn derive_device_key(master: &[u8], device: &DeviceId) -> DeviceKey {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(master).unwrap_or_else(|_| unreachable!("any key"));
    mac.update(DEVICE_KEY_CONTEXT.as_bytes());
    mac.update(device.as_str().as_bytes());
    DeviceKey(mac.finalize().into_bytes().into())
}

/// The envelope on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    pub device: DeviceId,
    /// HMAC-SHA256 of the payload bytes, 64 lowercase hex digits.
    pub mac: String,
    #[serde(with = "b64")]
    pub payload: Vec<u8>,
}

/// The MAC of `payload` under `key`, as 64 lowercase hex digits.
pub fn mac_hex(key: &DeviceKey, payload: &[u8]) -> String {
    let mut mac = key.mac();
    mac.update(payload);
    hex::encode(mac.finalize().into_bytes())
}

/// Wraps payload bytes (an encoded message) for `device`, ready to publish.
pub fn seal(key: &DeviceKey, device: &DeviceId, payload: &[u8]) -> Vec<u8> {
    let sealed = Sealed { device: device.clone(), mac: mac_hex(key, payload), payload: payload.to_vec() };
    // A struct of strings serialises infallibly.
    serde_json::to_vec(&sealed).unwrap_or_default()
}

/// Checks a sealed payload that arrived on `topic_device`'s topic and returns the payload bytes.
pub fn open(sealed: &[u8], topic_device: &DeviceId, key: &DeviceKey) -> Result<Vec<u8>, AuthError> {
    if sealed.len() > MAX_SEALED_BYTES {
        return Err(AuthError::TooLarge { size: sealed.len(), max: MAX_SEALED_BYTES });
    }
    let envelope: Sealed = serde_json::from_slice(sealed).map_err(|e| AuthError::Malformed(e.to_string()))?;
    if &envelope.device != topic_device {
        return Err(AuthError::DeviceMismatch {
            topic: topic_device.to_string(),
            envelope: envelope.device.to_string(),
        });
    }
    let mut tag = [0u8; 32];
    hex::decode_to_slice(&envelope.mac, &mut tag).map_err(|e| AuthError::Malformed(format!("mac: {e}")))?;
    let mut mac = key.mac();
    mac.update(&envelope.payload);
    mac.verify_slice(&tag).map_err(|_| AuthError::BadMac(topic_device.to_string()))?;
    Ok(envelope.payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeviceId {
        DeviceId::new(s).expect("valid id")
    }

    #[test]
    fn derivation_is_per_device_and_stable() {
        let master = b"fleet master secret, 32+ bytes long";
        let a = derive_device_key(master, &id("cam-01"));
        assert_eq!(a, derive_device_key(master, &id("cam-01")));
        assert_ne!(a, derive_device_key(master, &id("cam-02")));
        assert_ne!(a, derive_device_key(b"another master", &id("cam-01")));
        assert_eq!(DeviceKey::from_hex(&a.to_hex()), Ok(a.clone()));
        assert_eq!(format!("{a:?}"), "DeviceKey(redacted)");
        // RFC 4231-style check of the construction itself: HMAC-SHA256(key, "outpost-device-key:cam-01").
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(master).expect("key");
        mac.update(b"outpost-device-key:cam-01");
        assert_eq!(a.to_hex(), hex::encode(mac.finalize().into_bytes()));
    }

    fn check(sealed: &[u8], topic: &str, key: &DeviceKey, expected: Result<&[u8], &str>) {
        match (open(sealed, &id(topic), key), expected) {
            (Ok(payload), Ok(want)) => assert_eq!(payload, want),
            (Err(e), Err(fragment)) => {
                assert!(e.to_string().contains(fragment), "`{e}` lacks `{fragment}`")
            }
            (got, expected) => panic!("got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn seal_and_open() {
        let master = [7u8; 32];
        let key1 = derive_device_key(&master, &id("cam-01"));
        let key2 = derive_device_key(&master, &id("cam-02"));
        let payload = br#"{"schema":1,"seq":1}"#;
        let sealed = seal(&key1, &id("cam-01"), payload);
        check(&sealed, "cam-01", &key1, Ok(payload));
        // cam-02 forging cam-01's data with its own key, on cam-01's topic or its own.
        let forged = seal(&key2, &id("cam-01"), payload);
        check(&forged, "cam-01", &key1, Err("MAC does not match"));
        check(&sealed, "cam-02", &key2, Err("names device `cam-01`"));
        // One payload bit flipped.
        let mut envelope: Sealed = serde_json::from_slice(&sealed).expect("parses");
        envelope.payload[3] ^= 1;
        let flipped = serde_json::to_vec(&envelope).expect("serialises");
        check(&flipped, "cam-01", &key1, Err("MAC does not match"));
        check(br#"{"device":"cam-01","mac":"00","payload":""}"#, "cam-01", &key1, Err("mac"));
        check(br#"{"device":"cam-01","mac":"","payload":"","x":1}"#, "cam-01", &key1, Err("unknown field"));
        check(&vec![b' '; MAX_SEALED_BYTES + 1], "cam-01", &key1, Err("over the"));
    }
}

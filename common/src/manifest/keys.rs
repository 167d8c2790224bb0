//! Ed25519 keys: ids, the one-line and PEM public forms, PKCS#8 secret keys, and key files.
//!
//! Design: a [`KeyId`] is derived from the public key (the first 16 hex digits of the SHA-256 of its 32 bytes), so
//! a key has exactly one id; public keys are only accepted in their canonical encoding and never with small order,
//! so one key cannot appear under two ids and a weak key that "verifies" every message cannot be trusted.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::b64;

/// Prefix of the one-line public key form: `ed25519:<base64 of the 32 key bytes>`.
pub const PUBLIC_KEY_PREFIX: &str = "ed25519:";

/// Why a key could not be read, made or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not an ed25519 public key: {0}")]
    Malformed(String),
    #[error("the public key has small order (a weak key that verifies almost any message)")]
    WeakKey,
    #[error("the public key is not in canonical encoding")]
    NonCanonical,
    #[error("not a valid key id `{0}` (expected 16 lowercase hex digits)")]
    KeyId(String),
    #[error("not a PKCS#8 ed25519 secret key: {0}")]
    SecretKey(String),
    #[error("{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: String, mode: u32 },
    #[error("{path} already exists; refusing to overwrite a key")]
    Exists { path: String },
    #[error("no randomness for key generation: {0}")]
    Random(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io { path: path.display().to_string(), source }
}

/// A key's id: the first 16 hex digits of the SHA-256 of its 32 public key bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    fn of(key: &VerifyingKey) -> KeyId {
        let digest = super::Sha256Sum::of(key.as_bytes());
        KeyId(hex::encode(&digest.0[..8]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

impl FromStr for KeyId {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(KeyId(s.to_string()))
        } else {
            Err(KeyError::KeyId(s.chars().take(40).collect::<String>().escape_debug().to_string()))
        }
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A trusted-able ed25519 public key: canonical, not of small order, with its derived id.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    id: KeyId,
}

impl PublicKey {
    /// Accepts only canonical encodings of points that are not of small order.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PublicKey, KeyError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::Malformed("not a curve point".into()))?;
        if key.is_weak() {
            return Err(KeyError::WeakKey);
        }
        if key.to_edwards().compress().to_bytes() != *bytes {
            return Err(KeyError::NonCanonical);
        }
        Ok(PublicKey { id: KeyId::of(&key), key })
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The one-line form `ed25519:<base64>`, for config files and command lines.
    pub fn to_line(&self) -> String {
        format!("{PUBLIC_KEY_PREFIX}{}", b64::encode(self.key.as_bytes()))
    }

    /// SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`), for other tools.
    pub fn to_pem(&self) -> Result<String, KeyError> {
        self.key.to_public_key_pem(LineEnding::LF).map_err(|e| KeyError::Malformed(e.to_string()))
    }

    /// Reads either form: the one-line `ed25519:<base64>` or a PEM public key.
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        let text = text.trim();
        if text.starts_with("-----BEGIN") {
            let key = VerifyingKey::from_public_key_pem(text).map_err(|e| KeyError::Malformed(e.to_string()))?;
            return PublicKey::from_bytes(key.as_bytes());
        }
        let encoded = text
            .strip_prefix(PUBLIC_KEY_PREFIX)
            .ok_or_else(|| KeyError::Malformed(format!("expected `{PUBLIC_KEY_PREFIX}<base64>` or a PEM key")))?;
        let bytes = b64::decode(encoded).map_err(|e| KeyError::Malformed(format!("invalid base64: {e}")))?;
        let bytes: [u8; 32] =
            bytes.try_into().map_err(|b: Vec<u8>| KeyError::Malformed(format!("{} bytes, expected 32", b.len())))?;
        PublicKey::from_bytes(&bytes)
    }

    pub(crate) fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_line())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} {})", self.id, self.to_line())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PublicKey::parse(s)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_line())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        PublicKey::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// An ed25519 signing key. Kept offline; the fleet never holds one.
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<SecretKey, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        let key = SecretKey(SigningKey::from_bytes(&seed));
        seed.fill(0);
        Ok(key)
    }

    /// A key from a 32-byte seed: deterministic keys for tests.
    pub fn from_seed(seed: &[u8; 32]) -> SecretKey {
        SecretKey(SigningKey::from_bytes(seed))
    }

    pub fn public(&self) -> PublicKey {
        let key = self.0.verifying_key();
        PublicKey { id: KeyId::of(&key), key }
    }

    pub fn from_pkcs8_pem(pem: &str) -> Result<SecretKey, KeyError> {
        SigningKey::from_pkcs8_pem(pem).map(SecretKey).map_err(|e| KeyError::SecretKey(e.to_string()))
    }

    /// PKCS#8 v2 PEM (`-----BEGIN PRIVATE KEY-----`), readable by OpenSSL.
    pub fn to_pkcs8_pem(&self) -> Result<String, KeyError> {
        let pem = self.0.to_pkcs8_pem(LineEnding::LF).map_err(|e| KeyError::SecretKey(e.to_string()))?;
        Ok(pem.as_str().to_owned())
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}, redacted)", self.public().id())
    }
}

/// Writes `key` as PKCS#8 PEM to a new file readable only by its owner (mode 0600). Never overwrites.
pub fn write_secret_key(path: &Path, key: &SecretKey) -> Result<(), KeyError> {
    let pem = key.to_pkcs8_pem()?;
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => KeyError::Exists { path: path.display().to_string() },
        _ => KeyError::Io { path: path.display().to_string(), source: e },
    })?;
    file.write_all(pem.as_bytes()).and_then(|()| file.sync_all()).map_err(io_err(path))
}

/// Reads a PKCS#8 PEM secret key, refusing files that other users can read.
pub fn read_secret_key(path: &Path) -> Result<SecretKey, KeyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path).map_err(io_err(path))?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions { path: path.display().to_string(), mode });
        }
    }
    let pem = fs::read_to_string(path).map_err(io_err(path))?;
    SecretKey::from_pkcs8_pem(&pem)
}

/// Reads a public key file in either form (one line or PEM).
pub fn read_public_key(path: &Path) -> Result<PublicKey, KeyError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    PublicKey::parse(&text)
}

/// The files `keygen` writes for a key called `name` in `dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFiles {
    /// `NAME.key`: PKCS#8 PEM, mode 0600.
    pub secret: PathBuf,
    /// `NAME.pub`: the one-line form.
    pub public: PathBuf,
    /// `NAME.pub.pem`: the PEM form.
    pub public_pem: PathBuf,
}

impl KeyFiles {
    pub fn in_dir(dir: &Path, name: &str) -> KeyFiles {
        KeyFiles {
            secret: dir.join(format!("{name}.key")),
            public: dir.join(format!("{name}.pub")),
            public_pem: dir.join(format!("{name}.pub.pem")),
        }
    }

    /// Writes all three files; fails without touching anything if the secret key file exists.
    pub fn write(&self, key: &SecretKey) -> Result<(), KeyError> {
        for path in [&self.secret, &self.public, &self.public_pem] {
            if path.exists() {
                return Err(KeyError::Exists { path: path.display().to_string() });
            }
        }
        write_secret_key(&self.secret, key)?;
        let public = key.public();
        fs::write(&self.public, format!("{}\n", public.to_line())).map_err(io_err(&self.public))?;
        fs::write(&self.public_pem, public.to_pem()?).map_err(io_err(&self.public_pem))
    }
}

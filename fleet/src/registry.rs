//! Who may talk to the fleet: enrolled devices (MQTT username/password, HTTP token, message-authentication key) and
//! API users (admin, operator, annotator tokens).
//!
//! Design: secrets are 256-bit random values shown once, at enrollment; the store keeps only their SHA-256 (a slow
//! password hash buys nothing for secrets with this much entropy). Device message-authentication keys are not
//! stored at all: each is derived from the fleet's master secret and the device id
//! ([`outpost_common::protocol::auth::derive_device_key`]), so a copy of the store alone forges nothing.
//!
//! Ingest asks for a device's key and tags on every message, so those of active devices are kept in memory
//! ([`Registry::active_key`], [`Registry::tags`]): filled on first use, forgotten by enroll and revoke, which are
//! the only writers of device records. Every clone of a registry shares that cache; the registry must be the only
//! writer of its store's device records (one fleet process per store, as sled enforces).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};

use outpost_common::protocol::auth::{DeviceKey, derive_device_key};
use outpost_common::store::{Store, StoreError};
use outpost_common::topics::DeviceId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

const DEVICES: &str = "registry.devices";
const TOKENS: &str = "registry.tokens";

/// What a caller of the API may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Device,
    Annotator,
    Operator,
    Admin,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Device(DeviceId),
    User { name: String, role: Role },
}

impl Principal {
    pub fn role(&self) -> Role {
        match self {
            Principal::Device(_) => Role::Device,
            Principal::User { role, .. } => *role,
        }
    }

    /// Users hold their role and every role below it (an admin may do what an operator may); devices only theirs.
    pub fn may(&self, role: Role) -> bool {
        match self {
            Principal::Device(_) => role == Role::Device,
            Principal::User { role: held, .. } => *held >= role && role != Role::Device,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("invalid device name: {0}")]
    InvalidName(String),
    #[error("device `{0}` is already enrolled")]
    Exists(String),
    #[error("no device `{0}`")]
    NotFound(String),
    #[error("invalid tag `{0}` (expected key=value)")]
    InvalidTag(String),
    #[error("stored record unreadable: {0}")]
    Corrupt(String),
    #[error("the OS gave no randomness: {0}")]
    Random(String),
    #[error("cannot read or create the master secret {path}: {detail}")]
    Master { path: String, detail: String },
}

impl RegistryError {
    /// The HTTP status the API answers with.
    pub fn status(&self) -> u16 {
        match self {
            RegistryError::InvalidName(_) | RegistryError::InvalidTag(_) => 422,
            RegistryError::Exists(_) => 409,
            RegistryError::NotFound(_) => 404,
            _ => 500,
        }
    }
}

/// One enrolled device as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRecord {
    pub id: String,
    pub tags: BTreeMap<String, String>,
    #[serde(with = "time::serde::rfc3339")]
    pub enrolled_at: OffsetDateTime,
    pub revoked: bool,
    /// SHA-256 (hex) of the MQTT password.
    pub mqtt_password_sha256: String,
    /// The MQTT password in Mosquitto's password-file format, for deployments on Mosquitto.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mosquitto_password: Option<String>,
}

/// What enrollment hands out, once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub device: String,
    pub mqtt_username: String,
    pub mqtt_password: String,
    pub http_token: String,
    /// The message-authentication key, 64 hex digits (`[device] key` / `OUTPOST_DEVICE_KEY`).
    pub device_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenRecord {
    /// `device:<id>` or `user:<name>`.
    subject: String,
    role: Role,
}

/// The registry over the fleet's store.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
    master: Arc<[u8; 32]>,
    /// Enrolled, unrevoked devices looked up so far: their key and tags (see the module documentation).
    active: Arc<RwLock<HashMap<DeviceId, Arc<Active>>>>,
}

/// What ingest needs of an active device.
struct Active {
    key: DeviceKey,
    tags: BTreeMap<String, String>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new 256-bit secret, as 64 hex digits.
pub fn new_secret() -> Result<String, RegistryError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| RegistryError::Random(e.to_string()))?;
    Ok(hex::encode(bytes))
}

/// Reads the master secret at `path`, creating it (0600) on first start.
pub fn load_master(path: &Path) -> Result<[u8; 32], RegistryError> {
    let err = |detail: String| RegistryError::Master { path: path.display().to_string(), detail };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut key = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut key).map_err(|e| err(e.to_string()))?;
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = new_secret()?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            }
            write_private(path, &secret).map_err(|e| err(e.to_string()))?;
            let mut key = [0u8; 32];
            hex::decode_to_slice(&secret, &mut key).map_err(|e| err(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Parses `key=value` tags.
pub fn parse_tags(tags: &[String]) -> Result<BTreeMap<String, String>, RegistryError> {
    tags.iter()
        .map(|t| match t.split_once('=') {
            Some((k, v)) if !k.is_empty() && k.len() <= 64 && v.len() <= 128 => Ok((k.to_string(), v.to_string())),
            _ => Err(RegistryError::InvalidTag(t.clone())),
        })
        .collect()
}

impl Registry {
    pub fn new(store: Arc<dyn Store>, master: [u8; 32]) -> Registry {
        Registry { store, master: Arc::new(master), active: Arc::default() }
    }

    /// The message-authentication key of `device` (derived, never stored).
    pub fn device_key(&self, device: &DeviceId) -> DeviceKey {
        derive_device_key(self.master.as_slice(), device)
    }

    /// Enrolls a device; the returned credentials are the only copy of its secrets.
    pub fn enroll(&self, name: &str, tags: BTreeMap<String, String>) -> Result<Credentials, RegistryError> {
        let id = DeviceId::new(name).map_err(|e| RegistryError::InvalidName(e.to_string()))?;
        let (password, token) = (new_secret()?, new_secret()?);
        let record = DeviceRecord {
            id: id.to_string(),
            tags,
            enrolled_at: OffsetDateTime::now_utc(),
            revoked: false,
            mqtt_password_sha256: sha256_hex(&password),
            mosquitto_password: Some(crate::mosquitto::hash_password(&password).map_err(RegistryError::Random)?),
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        if !self.store.compare_and_swap(DEVICES, id.as_str().as_bytes(), None, Some(&bytes))? {
            return Err(RegistryError::Exists(id.to_string()));
        }
        self.forget(&id);
        self.put_token(&token, &format!("device:{id}"), Role::Device)?;
        self.store.flush()?;
        tracing::info!(device = %id, "device enrolled");
        Ok(Credentials {
            device: id.to_string(),
            mqtt_username: id.to_string(),
            mqtt_password: password,
            http_token: token,
            device_key: self.device_key(&id).to_hex(),
        })
    }

    fn put_token(&self, token: &str, subject: &str, role: Role) -> Result<(), RegistryError> {
        let record = TokenRecord { subject: subject.to_string(), role };
        let bytes = serde_json::to_vec(&record).map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        self.store.put(TOKENS, sha256_hex(token).as_bytes(), &bytes)?;
        Ok(())
    }

    /// Creates an API user token with `role`; returns the token (shown once).
    pub fn create_user(&self, name: &str, role: Role) -> Result<String, RegistryError> {
        if name.is_empty() || name.len() > 64 {
            return Err(RegistryError::InvalidName(name.to_string()));
        }
        let token = new_secret()?;
        self.put_token(&token, &format!("user:{name}"), role)?;
        self.store.flush()?;
        Ok(token)
    }

    pub fn device(&self, id: &str) -> Result<DeviceRecord, RegistryError> {
        let bytes = self.store.get(DEVICES, id.as_bytes())?.ok_or_else(|| RegistryError::NotFound(id.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| RegistryError::Corrupt(e.to_string()))
    }

    pub fn list(&self) -> Result<Vec<DeviceRecord>, RegistryError> {
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.store.scan(DEVICES, after.as_deref(), 256)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (_, v) in &page {
                out.push(serde_json::from_slice(v).map_err(|e| RegistryError::Corrupt(e.to_string()))?);
            }
        }
        Ok(out)
    }

    /// Revokes a device: it can no longer connect to the embedded broker, upload, or be trusted in ingest.
    pub fn revoke(&self, id: &str) -> Result<DeviceRecord, RegistryError> {
        let mut record = self.device(id)?;
        record.revoked = true;
        let bytes = serde_json::to_vec(&record).map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        self.store.put(DEVICES, id.as_bytes(), &bytes)?;
        if let Ok(device) = DeviceId::new(id) {
            self.forget(&device);
        }
        self.store.flush()?;
        tracing::warn!(device = id, "device revoked");
        Ok(record)
    }

    /// `(device, Mosquitto password hash)` of every unrevoked device, for Mosquitto's password file.
    pub fn mosquitto_users(&self) -> Result<Vec<(String, String)>, RegistryError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|d| !d.revoked)
            .filter_map(|d| d.mosquitto_password.map(|h| (d.id, h)))
            .collect())
    }

    /// Whether an enrolled, unrevoked device presented its MQTT password.
    pub fn check_mqtt(&self, username: &str, password: &str) -> bool {
        match self.device(username) {
            Ok(d) => !d.revoked && constant_time_eq(&d.mqtt_password_sha256, &sha256_hex(password)),
            Err(_) => false,
        }
    }

    /// The caller a bearer token belongs to; `None` for an unknown token or a revoked device.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        let bytes = self.store.get(TOKENS, sha256_hex(token).as_bytes()).ok()??;
        let record: TokenRecord = serde_json::from_slice(&bytes).ok()?;
        match record.subject.split_once(':')? {
            ("device", id) => {
                let device = self.device(id).ok()?;
                if device.revoked {
                    return None;
                }
                Some(Principal::Device(DeviceId::new(id).ok()?))
            }
            ("user", name) => Some(Principal::User { name: name.to_string(), role: record.role }),
            _ => None,
        }
    }

    /// The key of an enrolled, unrevoked device, for checking its messages.
    pub fn active_key(&self, device: &DeviceId) -> Option<DeviceKey> {
        self.active(device).map(|a| a.key.clone())
    }

    /// A device's tags (a revoked device keeps its own, for grouping its past data); none for an unknown one.
    pub fn tags(&self, device: &DeviceId) -> BTreeMap<String, String> {
        match self.active(device) {
            Some(a) => a.tags.clone(),
            None => self.device(device.as_str()).map(|d| d.tags).unwrap_or_default(),
        }
    }

    /// The cached key and tags of an active device, read from the store on first use. An unknown or revoked device
    /// is answered from the store without the write lock (messages naming made-up devices never queue on it); an
    /// active one is read again under the write lock before it is cached, and enroll and revoke forget an entry
    /// after writing the record, so a lookup never caches what a revocation has already replaced.
    fn active(&self, device: &DeviceId) -> Option<Arc<Active>> {
        if let Some(a) = self.active.read().unwrap_or_else(|p| p.into_inner()).get(device) {
            return Some(a.clone());
        }
        let is_active = || self.device(device.as_str()).ok().filter(|d| !d.revoked);
        is_active()?;
        let mut cache = self.active.write().unwrap_or_else(|p| p.into_inner());
        let record = is_active()?;
        let active = Arc::new(Active { key: self.device_key(device), tags: record.tags });
        cache.insert(device.clone(), active.clone());
        Some(active)
    }

    fn forget(&self, device: &DeviceId) {
        self.active.write().unwrap_or_else(|p| p.into_inner()).remove(device);
    }
}

impl crate::ingest::DeviceDirectory for Registry {
    fn key(&self, device: &DeviceId) -> Option<DeviceKey> {
        self.active_key(device)
    }

    fn tags(&self, device: &DeviceId) -> BTreeMap<String, String> {
        Registry::tags(self, device)
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use outpost_common::store::SledStore;

    use super::*;

    fn registry() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(&dir.path().join("db")).expect("store");
        let master = load_master(&dir.path().join("master.key")).expect("master");
        (dir, Registry::new(store, master))
    }

    #[test]
    fn enrolled_devices_authenticate_until_revoked() {
        let (_dir, r) = registry();
        let tags = parse_tags(&["site=plant-a".into()]).expect("tags");
        let c = r.enroll("press-7", tags).expect("enroll");
        assert!(r.check_mqtt("press-7", &c.mqtt_password));
        assert!(!r.check_mqtt("press-7", "wrong"));
        assert!(!r.check_mqtt("nobody", &c.mqtt_password));
        let id = DeviceId::new("press-7").expect("id");
        assert_eq!(r.authenticate(&c.http_token), Some(Principal::Device(id.clone())));
        assert_eq!(r.device_key(&id).to_hex(), c.device_key, "the key is derived, the same every time");
        assert_eq!(r.tags(&id).get("site").map(String::as_str), Some("plant-a"));
        assert!(matches!(r.enroll("press-7", BTreeMap::new()), Err(RegistryError::Exists(_))));
        // Ingest's lookups are cached; revoking through any clone of the registry ends them.
        let ingest_view = r.clone();
        assert!(ingest_view.active_key(&id).is_some());
        r.revoke("press-7").expect("revoke");
        assert!(!r.check_mqtt("press-7", &c.mqtt_password));
        assert_eq!(r.authenticate(&c.http_token), None);
        assert!(r.active_key(&id).is_none());
        assert!(ingest_view.active_key(&id).is_none());
        assert_eq!(r.tags(&id).get("site").map(String::as_str), Some("plant-a"), "a revoked device keeps its tags");
        assert_eq!(r.list().expect("list").len(), 1);
    }

    #[test]
    fn roles_nest_for_users_and_not_for_devices() {
        let (_dir, r) = registry();
        let token = r.create_user("alice", Role::Operator).expect("user");
        let alice = r.authenticate(&token).expect("known");
        assert!(alice.may(Role::Operator) && alice.may(Role::Annotator));
        assert!(!alice.may(Role::Admin) && !alice.may(Role::Device));
        let device = Principal::Device(DeviceId::new("d").expect("id"));
        assert!(device.may(Role::Device) && !device.may(Role::Annotator));
        assert_eq!(r.authenticate("not a token"), None);
    }

    #[test]
    fn bad_names_and_tags_are_refused() {
        let (_dir, r) = registry();
        assert!(matches!(r.enroll("a/b", BTreeMap::new()), Err(RegistryError::InvalidName(_))));
        assert!(matches!(parse_tags(&["novalue".into()]), Err(RegistryError::InvalidTag(_))));
    }

    #[test]
    fn the_master_secret_persists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.key");
        let a = load_master(&path).expect("create");
        assert_eq!(load_master(&path).expect("read"), a);
        std::fs::write(&path, "zz").expect("write");
        assert!(load_master(&path).is_err(), "a damaged secret is an error, never silently replaced");
    }
}

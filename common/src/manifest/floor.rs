//! Anti-rollback floors: the lowest version per model name a device still accepts, kept across restarts.
//!
//! Design: [`Floors`] is a plain value that verification reads; [`FloorStore`] is the thin shell that persists it.
//! A floor only rises, and only from a [`VerifiedManifest`] (its `min_version`), so a rejected manifest can never
//! leave state behind. Writes are atomic: a temporary file in the same directory, fsync, rename, fsync the directory.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::VerifiedManifest;

/// The largest floor file read; a floor per model name is tiny.
const MAX_FLOOR_FILE_BYTES: u64 = 1024 * 1024;

/// Version floors per model name; a name without one has floor 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Floors {
    /// A floor for every name (the CLI's `--floor`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub all: u64,
    #[serde(default)]
    pub by_name: BTreeMap<String, u64>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Floors {
    /// One floor for every model name.
    pub fn uniform(floor: u64) -> Floors {
        Floors { all: floor, by_name: BTreeMap::new() }
    }

    pub fn get(&self, name: &str) -> u64 {
        self.by_name.get(name).copied().unwrap_or(0).max(self.all)
    }

    /// Raises `name`'s floor to `floor`; returns whether it rose.
    pub fn raise(&mut self, name: &str, floor: u64) -> bool {
        if floor <= self.get(name) {
            return false;
        }
        self.by_name.insert(name.to_string(), floor);
        true
    }
}

/// Why the floor file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FloorStoreError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a floor file: {reason}")]
    Corrupt { path: String, reason: String },
}

/// [`Floors`] persisted in one JSON file.
#[derive(Debug)]
pub struct FloorStore {
    path: PathBuf,
    floors: Floors,
}

impl FloorStore {
    /// Opens the store at `path`; a missing file is an empty store (nothing is written until a floor rises).
    pub fn open(path: impl Into<PathBuf>) -> Result<FloorStore, FloorStoreError> {
        let path = path.into();
        let io = |source| FloorStoreError::Io { path: path.display().to_string(), source };
        let floors = match fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Floors::default(),
            Err(e) => return Err(io(e)),
            Ok(meta) if meta.len() > MAX_FLOOR_FILE_BYTES => {
                return Err(FloorStoreError::Corrupt {
                    path: path.display().to_string(),
                    reason: format!("{} bytes is over the {MAX_FLOOR_FILE_BYTES}-byte limit", meta.len()),
                });
            }
            Ok(_) => {
                let bytes = fs::read(&path).map_err(io)?;
                serde_json::from_slice(&bytes)
                    .map_err(|e| FloorStoreError::Corrupt { path: path.display().to_string(), reason: e.to_string() })?
            }
        };
        Ok(FloorStore { path, floors })
    }

    pub fn floors(&self) -> &Floors {
        &self.floors
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Raises the floor for the verified manifest's model to its `min_version`, durably, before returning.
    /// Call it when the model is committed (after the health window), not when it is merely verified.
    pub fn commit(&mut self, verified: &VerifiedManifest) -> Result<bool, FloorStoreError> {
        let manifest = verified.manifest();
        let Some(min) = manifest.min_version else {
            return Ok(false);
        };
        let mut next = self.floors.clone();
        if !next.raise(&manifest.name, min) {
            return Ok(false);
        }
        write_atomic(&self.path, &serde_json::to_vec_pretty(&next).unwrap_or_default())?;
        self.floors = next;
        Ok(true)
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new file, never a torn one.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FloorStoreError> {
    let io = |source| FloorStoreError::Io { path: path.display().to_string(), source };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "floors".into());
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename is durable only once the directory entry is.
        fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io)
}

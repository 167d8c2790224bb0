//! The on-disk model store: one slot per (name, version), and per name the record of what serves.
//!
//! Design: a slot is `<root>/<name>/<version>/` holding `model.onnx` and `manifest.json` (the signed envelope). It is
//! built in `<root>/<name>/.<version>.tmp/` (files fsynced, folder fsynced) and renamed into place, and the parent
//! folder is fsynced: a slot folder with a version for a name exists only once it is whole, so completeness needs no
//! marker and a crash mid-install leaves only a `.tmp` folder that [`SlotStore::open`] removes. Deleting goes the
//! other way (rename to a `.tmp` name, then remove), so a half-deleted slot never looks complete either.
//! `<root>/<name>/active.json` holds the [`ActiveRecord`], replaced atomically (temporary file, fsync, rename, fsync
//! the folder); whenever the record is committed it is also copied to `committed.json`, the fallback when
//! `active.json` is corrupt. Every operation that changes the store holds an exclusive `flock` on `<root>/.lock`, so
//! the daemon and an operator's `outpost-agent models activate` cannot interleave. All methods block on disk I/O:
//! async callers use `spawn_blocking`.

use std::fs;
use std::path::{Path, PathBuf};

use outpost_common::manifest::{Artifact, MAX_ENVELOPE_BYTES, Sha256Sum, VerifiedManifest};
use serde::Serialize;

use super::artifact::{ArtifactError, VerifiedArtifact};
use super::fsutil;
use super::record::{ActiveRecord, Reverted, TransitionError};

mod active;

const MODEL_FILE: &str = "model.onnx";
const MANIFEST_FILE: &str = "manifest.json";
const ACTIVE_FILE: &str = "active.json";
const COMMITTED_FILE: &str = "committed.json";
const STAGING_DIR: &str = ".staging";
const LOCK_FILE: &str = ".lock";
const MAX_RECORD_BYTES: u64 = 1 << 20;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model name `{0}` cannot name a slot (1-128 of [A-Za-z0-9._-], not starting with `.`)")]
    InvalidName(String),
    #[error("the artifact does not match its manifest: {0}")]
    ArtifactMismatch(String),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error("not enough disk space in {}: {needed} bytes needed, {free} free", dir.display())]
    DiskFull { dir: PathBuf, needed: u64, free: u64 },
    #[error("{name} v{version} is already installed with a different manifest")]
    Conflict { name: String, version: u64 },
    #[error("{name} v{version} is not installed")]
    NotInstalled { name: String, version: u64 },
    #[error("the active record {} is unreadable: {reason}", path.display())]
    CorruptRecord { path: PathBuf, reason: String },
    #[error(transparent)]
    Transition(#[from] TransitionError),
}

impl SlotError {
    /// A short, stable label for events and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SlotError::Io { .. } => "io",
            SlotError::InvalidName(_) => "invalid_name",
            SlotError::ArtifactMismatch(_) => "artifact_mismatch",
            SlotError::Artifact(e) => e.kind(),
            SlotError::DiskFull { .. } => "disk_full",
            SlotError::Conflict { .. } => "conflict",
            SlotError::NotInstalled { .. } => "not_installed",
            SlotError::CorruptRecord { .. } => "corrupt_record",
            SlotError::Transition(e) => e.kind(),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SlotError + '_ {
    move |source| SlotError::Io { path: path.to_path_buf(), source }
}

/// A complete slot: paths to hand to the loader, and the envelope to verify again before loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub name: String,
    pub version: u64,
    pub dir: PathBuf,
}

impl Slot {
    pub fn model_path(&self) -> PathBuf {
        self.dir.join(MODEL_FILE)
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join(MANIFEST_FILE)
    }

    /// The stored envelope bytes, for `outpost_common::manifest::verify_manifest` (read with its size cap).
    pub fn envelope_bytes(&self) -> Result<Vec<u8>, SlotError> {
        let path = self.manifest_path();
        fsutil::read_capped(&path, MAX_ENVELOPE_BYTES as u64).map_err(io(&path))
    }

    /// Hashes the model file against the (re-verified) manifest's artifact: proof for the loader that the bytes on
    /// disk are still the ones installed. Blocking: reads the whole file.
    pub fn verify_model(&self, expected: &Artifact) -> Result<VerifiedArtifact, SlotError> {
        Ok(VerifiedArtifact::from_file(self.model_path(), expected)?)
    }
}

/// What a slot is to its model name, as `models list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SlotState {
    Active {
        committed: bool,
        trial_starts: u32,
    },
    Previous,
    Bad {
        reason: String,
    },
    /// Installed and not in use: a candidate, or an old version the next collection removes.
    Installed,
    /// A version folder without both files: damaged by hand or by the disk, never served.
    Incomplete,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotInfo {
    pub version: u64,
    pub dir: PathBuf,
    /// Size of the model file, when it is there.
    pub bytes: Option<u64>,
    #[serde(flatten)]
    pub state: SlotState,
}

/// One model name on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelEntry {
    pub name: String,
    pub record: Option<ActiveRecord>,
    /// Why the record could not be read, when it could not.
    pub record_error: Option<String>,
    pub slots: Vec<SlotInfo>,
}

/// The outcome of [`SlotStore::on_start`]: what to load, and what the start changed on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub name: String,
    /// The slot to load; `None`: no installed version serves (the configured model does).
    pub serve: Option<Slot>,
    pub committed: bool,
    /// For an uncommitted slot: this start's number (1-based) out of `max_trial_starts`.
    pub trial_start: Option<u32>,
    pub max_trial_starts: u32,
    pub reverted: Vec<Reverted>,
    /// Why `active.json` was unusable, when the record was rebuilt from `committed.json` (or emptied).
    pub recovered: Option<String>,
}

/// The model store under one root folder.
#[derive(Debug, Clone)]
pub struct SlotStore {
    root: PathBuf,
    max_trial_starts: u32,
}

impl SlotStore {
    /// Opens (creating) the store and removes what interrupted installs, deletions and record writes left behind.
    /// An uncommitted version is started at most `max_trial_starts` times (at least once) before it is reverted.
    pub fn open(root: impl Into<PathBuf>, max_trial_starts: u32) -> Result<SlotStore, SlotError> {
        let store = SlotStore { root: root.into(), max_trial_starts: max_trial_starts.max(1) };
        let staging = store.staging_dir();
        fs::create_dir_all(&staging).map_err(io(&staging))?;
        let _lock = store.lock()?;
        for name in store.names()? {
            store.remove_debris(&store.root.join(name))?;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where downloads go: on the same file system as the slots, so installing moves the file instead of copying.
    pub fn staging_dir(&self) -> PathBuf {
        self.root.join(STAGING_DIR)
    }

    pub fn max_trial_starts(&self) -> u32 {
        self.max_trial_starts
    }

    fn lock(&self) -> Result<fs::File, SlotError> {
        let path = self.root.join(LOCK_FILE);
        let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| SlotError::Io { path, source: e.into() })?;
        Ok(file)
    }

    fn names(&self) -> Result<Vec<String>, SlotError> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io(&self.root))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if check_name(&name).is_ok() && entry.path().is_dir() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// `.tmp` folders and files in a name's folder: interrupted installs, deletions and record writes.
    fn remove_debris(&self, name_dir: &Path) -> Result<(), SlotError> {
        for entry in fs::read_dir(name_dir).map_err(io(name_dir))?.flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if !file_name.ends_with(".tmp") {
                continue;
            }
            let path = entry.path();
            tracing::info!(path = %path.display(), "removing what an interrupted update left");
            let removed = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            removed.map_err(io(&path))?;
        }
        Ok(())
    }

    fn version_dir(&self, name: &str, version: u64) -> PathBuf {
        self.root.join(name).join(version.to_string())
    }

    fn is_complete(&self, name: &str, version: u64) -> bool {
        let dir = self.version_dir(name, version);
        dir.join(MODEL_FILE).is_file() && dir.join(MANIFEST_FILE).is_file()
    }

    /// The complete slot for (name, version).
    pub fn slot(&self, name: &str, version: u64) -> Result<Slot, SlotError> {
        check_name(name)?;
        if !self.is_complete(name, version) {
            return Err(SlotError::NotInstalled { name: name.to_string(), version });
        }
        Ok(Slot { name: name.to_string(), version, dir: self.version_dir(name, version) })
    }

    /// Installs a verified artifact with its manifest as the slot (manifest name, version). An artifact in the
    /// staging folder is moved; one elsewhere is copied (hashed again on the way) and left where it was.
    /// Installing the same manifest again is a no-op; another manifest for an installed version is refused.
    /// A staged artifact is consumed even when the install fails after moving it (download it again).
    pub fn install(&self, verified: &VerifiedManifest, artifact: VerifiedArtifact) -> Result<Slot, SlotError> {
        let manifest = verified.manifest();
        let (name, version) = (manifest.name.as_str(), manifest.version);
        check_name(name)?;
        verified.check_artifact(&artifact.digest()).map_err(|e| SlotError::ArtifactMismatch(e.to_string()))?;
        let envelope = stored_envelope(verified);
        let in_staging = self.is_staged(artifact.path());

        let _lock = self.lock()?;
        let name_dir = self.root.join(name);
        fs::create_dir_all(&name_dir).map_err(io(&name_dir))?;
        let final_dir = self.version_dir(name, version);
        if final_dir.exists() {
            if self.is_complete(name, version) {
                let slot = Slot { name: name.to_string(), version, dir: final_dir };
                if slot.envelope_bytes()? != envelope {
                    return Err(SlotError::Conflict { name: name.to_string(), version });
                }
                if in_staging {
                    let _ = fs::remove_file(artifact.path());
                }
                tracing::debug!(model = name, version, "slot already installed");
                return Ok(slot);
            }
            tracing::warn!(model = name, version, "replacing an incomplete slot");
            discard(&name_dir, &final_dir, version)?;
        }

        let tmp = name_dir.join(format!(".{version}.tmp"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        let result = self.build_slot(&tmp, &final_dir, &name_dir, &envelope, &artifact, in_staging);
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result?;
        tracing::info!(model = name, version, bytes = artifact.len(), sha256 = %artifact.sha256(), "slot installed");
        Ok(Slot { name: name.to_string(), version, dir: final_dir })
    }

    fn is_staged(&self, path: &Path) -> bool {
        let canonical = |p: &Path| fs::canonicalize(p).ok();
        match (path.parent().and_then(canonical), canonical(&self.staging_dir())) {
            (Some(parent), Some(staging)) => parent == staging,
            _ => false,
        }
    }

    fn build_slot(
        &self,
        tmp: &Path,
        final_dir: &Path,
        name_dir: &Path,
        envelope: &[u8],
        artifact: &VerifiedArtifact,
        in_staging: bool,
    ) -> Result<(), SlotError> {
        fs::create_dir(tmp).map_err(io(tmp))?;
        let model = tmp.join(MODEL_FILE);
        let moved = in_staging && fs::rename(artifact.path(), &model).is_ok();
        if moved {
            fs::File::open(&model).and_then(|f| f.sync_all()).map_err(io(&model))?;
        } else {
            // Copying needs room for a second copy.
            let free = fsutil::free_bytes(name_dir).map_err(io(name_dir))?;
            if free < artifact.len() {
                return Err(SlotError::DiskFull { dir: name_dir.to_path_buf(), needed: artifact.len(), free });
            }
            let (sha256, len) = fsutil::copy_hashed(artifact.path(), &model).map_err(io(&model))?;
            super::artifact::check(&Artifact { sha256: artifact.sha256(), length: artifact.len() }, sha256, len)?;
            if in_staging {
                let _ = fs::remove_file(artifact.path());
            }
        }
        fsutil::write_new_synced(&tmp.join(MANIFEST_FILE), envelope).map_err(io(tmp))?;
        fsutil::sync_dir(tmp).map_err(io(tmp))?;
        fs::rename(tmp, final_dir).map_err(io(final_dir))?;
        fsutil::sync_dir(name_dir).map_err(io(name_dir))
    }

    /// Removes the slots of `name` that neither serve nor are the fallback. Call it after a commit or revert, not
    /// between installing a version and starting its trial. Returns the versions removed.
    pub fn gc(&self, name: &str) -> Result<Vec<u64>, SlotError> {
        check_name(name)?;
        let _lock = self.lock()?;
        let name_dir = self.root.join(name);
        if !name_dir.is_dir() {
            return Ok(Vec::new());
        }
        let record = self.read_record(&name_dir.join(ACTIVE_FILE))?;
        let mut removed = Vec::new();
        for (version, dir) in versions(&name_dir)? {
            if !record.keeps(version) {
                discard(&name_dir, &dir, version)?;
                removed.push(version);
            }
        }
        self.remove_debris(&name_dir)?;
        if !removed.is_empty() {
            tracing::info!(model = name, ?removed, "old model slots removed");
        }
        Ok(removed)
    }

    /// What is on disk, by name, with each slot's state.
    pub fn list(&self) -> Result<Vec<ModelEntry>, SlotError> {
        let mut entries = Vec::new();
        for name in self.names()? {
            let name_dir = self.root.join(&name);
            let (record, record_error) = match self.read_record(&name_dir.join(ACTIVE_FILE)) {
                Ok(record) => (Some(record), None),
                Err(e) => (None, Some(e.to_string())),
            };
            let mut slots = Vec::new();
            for (version, dir) in versions(&name_dir)? {
                let bytes = fs::metadata(dir.join(MODEL_FILE)).ok().map(|m| m.len());
                let state = match &record {
                    _ if !self.is_complete(&name, version) => SlotState::Incomplete,
                    Some(r) if r.active == Some(version) => {
                        SlotState::Active { committed: r.committed, trial_starts: r.trial_starts }
                    }
                    Some(r) if r.previous == Some(version) => SlotState::Previous,
                    Some(r) if r.bad.contains_key(&version) => {
                        SlotState::Bad { reason: r.bad_reason(version).unwrap_or_default().to_string() }
                    }
                    _ => SlotState::Installed,
                };
                slots.push(SlotInfo { version, dir, bytes, state });
            }
            entries.push(ModelEntry { name, record, record_error, slots });
        }
        Ok(entries)
    }

    /// Removes files in the staging folder except the downloads of `keep` (part files and verified artifacts named
    /// by their sha256). Call it when no download is running. Returns how many files were removed.
    pub fn prune_staging(&self, keep: &[Sha256Sum]) -> Result<usize, SlotError> {
        let staging = self.staging_dir();
        let keep: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
        let mut removed = 0;
        for entry in fs::read_dir(&staging).map_err(io(&staging))?.flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let stem = file_name.split('.').next().unwrap_or_default();
            if !keep.iter().any(|k| k == stem) && entry.path().is_file() {
                fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The envelope as stored: pretty JSON for people reading the folder, unless that no longer fits the size cap that
/// verification applies when the slot is loaded again; compact JSON is never larger than the bytes that verified.
fn stored_envelope(verified: &VerifiedManifest) -> Vec<u8> {
    let pretty = verified.envelope().to_json_pretty();
    if pretty.len() <= MAX_ENVELOPE_BYTES {
        return pretty;
    }
    // Serialising a struct of strings and lists cannot fail.
    serde_json::to_vec(verified.envelope()).unwrap_or(pretty)
}

/// The version folders of a name, ascending. Only canonical decimal names count (`7`, not `07`).
fn versions(name_dir: &Path) -> Result<Vec<(u64, PathBuf)>, SlotError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(name_dir).map_err(io(name_dir))?.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if let Ok(version) = file_name.parse::<u64>()
            && version.to_string() == file_name
            && entry.path().is_dir()
        {
            out.push((version, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Deletes a slot folder so that no crash leaves it looking complete: renamed to a `.tmp` name first.
fn discard(name_dir: &Path, dir: &Path, version: u64) -> Result<(), SlotError> {
    let trash = name_dir.join(format!(".{version}.trash.tmp"));
    if trash.exists() {
        fs::remove_dir_all(&trash).map_err(io(&trash))?;
    }
    fs::rename(dir, &trash).map_err(io(dir))?;
    fsutil::sync_dir(name_dir).map_err(io(name_dir))?;
    fs::remove_dir_all(&trash).map_err(io(&trash))
}

/// A model name that is safe as one folder name and cannot collide with the store's own dot-files.
fn check_name(name: &str) -> Result<(), SlotError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(SlotError::InvalidName(name.escape_debug().to_string())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_be_slots() {
        for good in ["defect", "yolo11n.v2", "a-b_c", "x"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        let long = "a".repeat(129);
        for bad in ["", ".", "..", ".staging", "a/b", "a\\b", "é", long.as_str()] {
            assert_eq!(check_name(bad).map_err(|e| e.kind()), Err("invalid_name"), "{bad:?}");
        }
    }

    #[test]
    fn only_canonical_version_folders_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["7", "12", "007", ".8.tmp", "x", "3"] {
            fs::create_dir(dir.path().join(name)).expect("mkdir");
        }
        fs::write(dir.path().join("5"), b"a file").expect("file");
        let found: Vec<u64> = versions(dir.path()).expect("versions").into_iter().map(|(v, _)| v).collect();
        assert_eq!(found, [3, 7, 12]);
    }
}

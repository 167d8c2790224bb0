//! The model registry: signed versions pushed by operators, checked, stored once, listed, deprecated, deleted, and
//! downloaded by devices (docs/PROTOCOL.md, "Model registry").
//!
//! Design: a push runs every check before it writes anything ([`check`]: signature against the fleet's trusted
//! keys — the fleet holds no signing key —, artifact hash and length, the model loaded and compared with its
//! manifest, a neutral frame and the golden images with finite outputs and the expected labels). Then the artifact
//! object (named by its hash, `PutMode::Create`), the manifest object, the record by compare-and-swap from absent,
//! the name's highest version, one flush. A crash between two steps leaves at most unreferenced objects, never a
//! record without its bytes. Versions only rise per name, and a version number is never reused for other bytes,
//! even after a delete; a re-push of the same manifest body and artifact is answered "already stored".
//!
//! Pushes are serialised by one lock: they are rare, each holds a model in memory, and one at a time keeps the
//! version rules free of races within a process. Store calls are blocking but short (sled); model checks and
//! flushes run on the blocking pool.

mod blobs;
pub mod check;
mod config;
mod error;
pub mod golden;
pub mod range;
mod record;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use object_store::ObjectStore;
use outpost_common::manifest::TrustedKeys;
use outpost_common::store::Store;
use outpost_common::vision::engine::Runtime;
use time::OffsetDateTime;

pub use config::ModelsConfig;
pub use error::ModelError;
pub use golden::{Expected, GoldenImage, GoldenSet};
pub use record::{Deprecation, GoldenReport, StoredModel, valid_name};

use record::{MODELS, NAMES};

/// Answers whether a version is part of a rollout (any state but deleted), so it must not be deleted.
///
/// Design: a trait so the registry does not depend on the rollout engine, which depends on the registry (it reads
/// [`Models::get`] to send a version's manifest). The API state holds one.
pub trait VersionsInUse: Send + Sync + std::fmt::Debug {
    fn in_use(&self, name: &str, version: u64) -> Result<bool, Box<dyn std::error::Error + Send + Sync>>;
}

/// Where devices fetch a version's artifact, relative to the fleet's base URL. Agents resolve an `artifact_url`
/// starting with `/` against their `[fleet] url`, so this form survives a change of the fleet's public address.
pub fn artifact_path(name: &str, version: u64) -> String {
    format!("/api/v1/models/{name}/{version}/artifact")
}

/// The absolute artifact URL under the fleet's public HTTP base (`AppState::public.http`, `FleetConfig::public_http`).
pub fn artifact_url(public_http: &str, name: &str, version: u64) -> String {
    format!("{}{}", public_http.trim_end_matches('/'), artifact_path(name, version))
}

/// Where a version's signed manifest is served, relative to the fleet's base URL.
pub fn manifest_path(name: &str, version: u64) -> String {
    format!("/api/v1/models/{name}/{version}/manifest")
}

/// Size caps of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelLimits {
    pub max_artifact_bytes: u64,
    pub max_golden_images: usize,
    pub max_golden_bytes: u64,
}

impl ModelLimits {
    pub fn from_config(config: &ModelsConfig) -> ModelLimits {
        ModelLimits {
            max_artifact_bytes: config.max_artifact_bytes(),
            max_golden_images: config.max_golden_images,
            max_golden_bytes: config.max_golden_bytes(),
        }
    }

    /// The largest push body: artifact, golden images, manifest and labels, plus multipart framing.
    pub fn max_body(&self) -> usize {
        let bytes = self.max_artifact_bytes.saturating_add(self.max_golden_bytes).saturating_add(2 << 20);
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }
}

/// A push as received: the manifest envelope's bytes, the artifact in a file (streamed there by the API), golden
/// images, and who pushed.
#[derive(Debug)]
pub struct Push<'a> {
    pub manifest: &'a [u8],
    pub artifact: &'a Path,
    pub golden: GoldenSet,
    pub by: &'a str,
}

/// Whether a push stored something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Stored now: `201`.
    New,
    /// The same manifest body and artifact were stored before; nothing was written: `200`.
    Already,
}

impl Pushed {
    pub fn http_status(self) -> u16 {
        match self {
            Pushed::New => 201,
            Pushed::Already => 200,
        }
    }
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    blobs: Arc<dyn ObjectStore>,
    trusted: Option<TrustedKeys>,
    limits: ModelLimits,
    ort_lib: Option<PathBuf>,
    tmp_dir: PathBuf,
    push_lock: tokio::sync::Mutex<()>,
}

/// The registry: records in the [`Store`], artifacts and manifests in the object store.
#[derive(Debug, Clone)]
pub struct Models {
    inner: Arc<Inner>,
}

/// Runs blocking work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ModelError> + Send + 'static,
) -> Result<T, ModelError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ModelError::Internal(format!("blocking task: {e}")))?
}

impl Models {
    /// `trusted: None` refuses every push with [`ModelError::NoTrustedKeys`]. Uploads are staged in `tmp_dir`
    /// (created when missing), best on the same disk as the store rather than a small tmpfs.
    pub fn new(
        store: Arc<dyn Store>,
        blobs: Arc<dyn ObjectStore>,
        trusted: Option<TrustedKeys>,
        limits: ModelLimits,
        ort_lib: Option<PathBuf>,
        tmp_dir: PathBuf,
    ) -> Models {
        Models {
            inner: Arc::new(Inner {
                store,
                blobs,
                trusted,
                limits,
                ort_lib,
                tmp_dir,
                push_lock: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The registry as `[models]` configures it.
    pub fn from_config(
        store: Arc<dyn Store>,
        blobs: Arc<dyn ObjectStore>,
        config: &ModelsConfig,
        tmp_dir: PathBuf,
    ) -> Result<Models, String> {
        let trusted = config.trusted()?;
        // Staged uploads left by a process that died mid-push: nothing refers to them.
        if let Ok(entries) = std::fs::read_dir(&tmp_dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with("push-") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        if trusted.is_none() {
            tracing::warn!("no [models] trusted_keys: model pushes are refused");
        }
        Ok(Models::new(store, blobs, trusted, ModelLimits::from_config(config), config.ort_lib.clone(), tmp_dir))
    }

    pub fn limits(&self) -> &ModelLimits {
        &self.inner.limits
    }

    /// Whether pushes can succeed at all (trusted keys are configured).
    pub fn accepts_pushes(&self) -> bool {
        self.inner.trusted.is_some()
    }

    /// A new file to stage an upload in, removed when dropped.
    pub fn staging_file(&self) -> Result<tempfile::NamedTempFile, ModelError> {
        let dir = &self.inner.tmp_dir;
        std::fs::create_dir_all(dir)
            .and_then(|()| tempfile::Builder::new().prefix("push-").suffix(".onnx").tempfile_in(dir))
            .map_err(|e| ModelError::Internal(format!("staging file in {}: {e}", dir.display())))
    }

    fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    /// Checks a pushed version and stores it once every check passed.
    pub async fn push(&self, push: Push<'_>, now: OffsetDateTime) -> Result<(Pushed, StoredModel), ModelError> {
        let result = self.push_inner(push, now).await;
        if let Err(e) = &result {
            tracing::info!(code = e.code(), error = %e, "model push refused");
        }
        result
    }

    async fn push_inner(&self, push: Push<'_>, now: OffsetDateTime) -> Result<(Pushed, StoredModel), ModelError> {
        let trusted = self.inner.trusted.clone().ok_or(ModelError::NoTrustedKeys)?;
        let golden = push.golden;
        if golden.images.len() > self.inner.limits.max_golden_images {
            return Err(ModelError::GoldenTooLarge(format!(
                "{} images, at most {}",
                golden.images.len(),
                self.inner.limits.max_golden_images
            )));
        }
        // The signature first: an untrusted push costs one verification, nothing is read or loaded.
        let verified = check::verify(push.manifest, &trusted, now)?;
        let manifest = verified.manifest().clone();
        let (name, version) = (manifest.name.clone(), manifest.version);
        if !valid_name(&name) || name == "." || name == ".." {
            return Err(ModelError::BadName(name));
        }
        let max = self.inner.limits.max_artifact_bytes;
        if manifest.artifact.length > max {
            return Err(ModelError::ArtifactTooLarge { max });
        }
        let _one_at_a_time = self.inner.push_lock.lock().await;

        let existing = StoredModel::load(self.store(), &name, version)?;
        if let Some((_, stored)) = &existing {
            if stored.manifest.artifact != manifest.artifact {
                return Err(ModelError::VersionExists { name, version, what: "artifact" });
            }
            if stored.envelope.body != verified.envelope().body {
                return Err(ModelError::VersionExists { name, version, what: "manifest" });
            }
        } else {
            let (_, latest) = record::latest(self.store(), &name)?;
            if version <= latest {
                return Err(ModelError::VersionNotAbove { name, version, latest });
            }
        }

        // The bytes: read from the staging file (no more than the declared length plus one, to notice a longer
        // file), hashed and compared; then the model checks, all on the blocking pool.
        let path = push.artifact.to_path_buf();
        let declared = manifest.artifact.length;
        let artifact = blocking(move || {
            use std::io::Read as _;
            let file = std::fs::File::open(&path).map_err(|e| ModelError::Internal(format!("staged artifact: {e}")))?;
            let mut bytes = Vec::new();
            file.take(declared.saturating_add(1))
                .read_to_end(&mut bytes)
                .map_err(|e| ModelError::Internal(format!("staged artifact: {e}")))?;
            Ok(Bytes::from(bytes))
        })
        .await?;
        if let Some((_, stored)) = existing {
            verified.check_artifact_bytes(&artifact)?;
            tracing::info!(model = %name, version, by = push.by, "model already stored");
            return Ok((Pushed::Already, stored));
        }
        let report = {
            let (verified, artifact, ort_lib) = (verified.clone(), artifact.clone(), self.inner.ort_lib.clone());
            blocking(move || {
                let rt = Runtime::init(ort_lib.as_deref()).map_err(|e| ModelError::Runtime(e.to_string()))?;
                check::check_model(rt, &verified, &artifact, &golden)
            })
            .await?
        };

        let record = StoredModel {
            envelope: verified.envelope().clone(),
            manifest: manifest.clone(),
            signers: verified.signers().to_vec(),
            pushed_at: now,
            pushed_by: push.by.to_string(),
            golden: report,
            artifact_blob: blobs::artifact_path(&name, version, &manifest.artifact.sha256),
            manifest_blob: blobs::manifest_path(&name, version),
            deprecated: None,
        };
        let blob_store = self.inner.blobs.as_ref();
        blobs::put_artifact(blob_store, &record.artifact_blob, artifact).await?;
        blobs::put_manifest(blob_store, &record.manifest_blob, record.envelope.to_json_pretty()).await?;
        let key = record::key(&name, version);
        if !self.store().compare_and_swap(MODELS, &key, None, Some(&record.encode()?))? {
            // Another fleet process stored this version meanwhile: decide as for a re-push.
            return match StoredModel::load(self.store(), &name, version)? {
                Some((_, stored)) if stored.envelope.body == record.envelope.body => Ok((Pushed::Already, stored)),
                _ => Err(ModelError::VersionExists { name, version, what: "artifact" }),
            };
        }
        self.raise_latest(&name, version)?;
        self.flush().await?;
        tracing::info!(
            model = %name,
            version,
            sha256 = %manifest.artifact.sha256,
            bytes = manifest.artifact.length,
            golden = record.golden.images,
            by = push.by,
            "model stored"
        );
        Ok((Pushed::New, record))
    }

    /// Raises the name's highest-ever version to `version` (compare and swap; never lowers it).
    fn raise_latest(&self, name: &str, version: u64) -> Result<(), ModelError> {
        loop {
            let (raw, latest) = record::latest(self.store(), name)?;
            if latest >= version {
                return Ok(());
            }
            let new = version.to_be_bytes();
            if self.store().compare_and_swap(NAMES, name.as_bytes(), raw.as_deref(), Some(&new))? {
                return Ok(());
            }
        }
    }

    /// A stored version: its signed envelope, parsed manifest, what was checked and where its bytes are. What the
    /// rollout engine sends in `assign_model` (with [`artifact_path`] or [`artifact_url`]).
    pub fn get(&self, name: &str, version: u64) -> Result<Option<StoredModel>, ModelError> {
        if !valid_name(name) {
            return Ok(None);
        }
        Ok(StoredModel::load(self.store(), name, version)?.map(|(_, m)| m))
    }

    /// [`Models::get`], or [`ModelError::NotFound`].
    pub fn require(&self, name: &str, version: u64) -> Result<StoredModel, ModelError> {
        self.get(name, version)?.ok_or_else(|| ModelError::NotFound { name: name.to_string(), version })
    }

    /// Stored versions in (name, version) order, of one name or all, at most `limit`.
    pub fn list(&self, name: Option<&str>, limit: usize) -> Result<Vec<StoredModel>, ModelError> {
        let entries = match name {
            Some(name) if !valid_name(name) => return Ok(Vec::new()),
            Some(name) => self.store().scan_prefix(MODELS, &record::prefix(name), None, limit)?,
            None => self.store().scan(MODELS, None, limit)?,
        };
        entries.iter().map(|(key, value)| StoredModel::decode(key, value)).collect()
    }

    /// Marks a version deprecated (idempotent: the first deprecation is kept). It stays downloadable.
    pub async fn deprecate(
        &self,
        name: &str,
        version: u64,
        by: &str,
        reason: Option<String>,
        now: OffsetDateTime,
    ) -> Result<StoredModel, ModelError> {
        loop {
            let (raw, mut stored) = StoredModel::load(self.store(), name, version)?
                .ok_or_else(|| ModelError::NotFound { name: name.to_string(), version })?;
            if stored.deprecated.is_some() {
                return Ok(stored);
            }
            stored.deprecated = Some(Deprecation { at: now, by: by.to_string(), reason: reason.clone() });
            let key = record::key(name, version);
            if self.store().compare_and_swap(MODELS, &key, Some(&raw), Some(&stored.encode()?))? {
                self.flush().await?;
                tracing::info!(model = %name, version, by, "model deprecated");
                return Ok(stored);
            }
        }
    }

    /// Deletes a version that no rollout uses: the record first (the version is gone at once), then its objects.
    /// The name's highest version stays, so the number is never reused.
    pub async fn delete(&self, name: &str, version: u64, in_use: &dyn VersionsInUse) -> Result<(), ModelError> {
        let used = in_use
            .in_use(name, version)
            .map_err(|e| ModelError::Internal(format!("asking the rollouts whether {name} v{version} is used: {e}")))?;
        let stored = loop {
            let (raw, stored) = StoredModel::load(self.store(), name, version)?
                .ok_or_else(|| ModelError::NotFound { name: name.to_string(), version })?;
            if used {
                return Err(ModelError::InUse { name: name.to_string(), version });
            }
            // A deprecation may land between the read and the swap: read again and retry.
            if self.store().compare_and_swap(MODELS, &record::key(name, version), Some(&raw), None)? {
                break stored;
            }
        };
        self.flush().await?;
        for path in [&stored.artifact_blob, &stored.manifest_blob] {
            if let Err(e) = blobs::remove(self.inner.blobs.as_ref(), path).await {
                tracing::warn!(path, error = %e, "object of a deleted model not removed");
            }
        }
        tracing::info!(model = %name, version, "model deleted");
        Ok(())
    }

    /// Bytes `range` (within the artifact's length) of a stored artifact, streamed from the object store.
    pub async fn artifact(
        &self,
        model: &StoredModel,
        range: Range<u64>,
    ) -> Result<BoxStream<'static, Result<Bytes, object_store::Error>>, ModelError> {
        Ok(blobs::read(self.inner.blobs.as_ref(), &model.artifact_blob, range).await?)
    }

    async fn flush(&self) -> Result<(), ModelError> {
        let store = Arc::clone(&self.inner.store);
        blocking(move || Ok(store.flush()?)).await
    }
}

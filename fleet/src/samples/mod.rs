//! Sample intake: the bodies of `PUT /api/v1/samples/{sha256}` (docs/PROTOCOL.md, "Sample upload"), checked,
//! stored once and queued for annotation.
//!
//! Design: [`check`](check::check) is pure (hashes and image headers, no I/O); [`Samples::ingest`] is the I/O
//! edge. The order of writes makes every crash point safe to retry: the image first (`PutMode::Create`), then the
//! record (compare-and-swap from absent, so of two racing uploads exactly one reports "stored"), then the queue
//! entry, then one flush. A repeat of a complete upload stores nothing and reports [`Stored::Already`]; a repeat
//! after a crash between two steps finishes the missing ones. A stored record is never changed: the first meta
//! uploaded for an image is the one kept.
//!
//! Store calls are blocking but short (sled, in memory until the flush); the flush runs on the blocking pool.

mod blobs;
mod check;
mod error;
mod record;

use std::sync::Arc;

use bytes::Bytes;
use object_store::ObjectStore;
use outpost_common::manifest::Sha256Sum;
use outpost_common::store::Store;
use time::OffsetDateTime;

pub use blobs::local_dir;
pub use check::{IntakeLimits, Upload};
pub use error::SampleError;
pub use record::{SampleRecord, Task};

pub(crate) use record::SAMPLES;

/// Whether an accepted upload was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored now: answer `201 Created`.
    New,
    /// The same image was stored before; nothing was written: answer `200 OK`.
    Already,
}

impl Stored {
    pub fn http_status(self) -> u16 {
        match self {
            Stored::New => 201,
            Stored::Already => 200,
        }
    }
}

/// An image and its content type, as uploaded.
#[derive(Debug, Clone)]
pub struct Image {
    pub bytes: Bytes,
    pub content_type: String,
}

/// The sample store: records in the [`Store`], images in the object store.
#[derive(Debug, Clone)]
pub struct Samples {
    store: Arc<dyn Store>,
    blobs: Arc<dyn ObjectStore>,
    limits: IntakeLimits,
}

impl Samples {
    pub fn new(store: Arc<dyn Store>, blobs: Arc<dyn ObjectStore>, limits: IntakeLimits) -> Samples {
        Samples { store, blobs, limits }
    }

    pub fn limits(&self) -> &IntakeLimits {
        &self.limits
    }

    pub(crate) fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// Checks an upload, then stores its image and record once and queues it for annotation.
    pub async fn ingest(&self, upload: Upload<'_>, now: OffsetDateTime) -> Result<Stored, SampleError> {
        let checked = match check::check(&upload, &self.limits) {
            Ok(checked) => checked,
            Err(e) => {
                tracing::info!(device = %upload.device, code = e.code(), error = %e, "sample refused");
                return Err(e);
            }
        };
        let sample = checked.sample;
        if let Some(existing) = SampleRecord::load(self.store(), &sample)? {
            // A repeat: make sure the steps after the record happened (a crash may have cut them off).
            let queued = crate::annotate::enqueue(self.store(), &existing, now)?;
            if queued {
                self.flush().await?;
            }
            tracing::debug!(sample = %sample, device = %upload.device, "sample already stored");
            return Ok(Stored::Already);
        }
        let record = SampleRecord {
            blob: blobs::image_path(&sample, record::extension(&checked.meta.content_type)),
            bytes: upload.image.len() as u64,
            received_at: now,
            meta: checked.meta,
        };
        blobs::put_once(self.blobs.as_ref(), &record.blob, upload.image).await?;
        let won = self.store.compare_and_swap(SAMPLES, &sample.0, None, Some(&record.encode()?))?;
        if !won {
            tracing::debug!(sample = %sample, device = %upload.device, "sample stored concurrently");
            return Ok(Stored::Already);
        }
        crate::annotate::enqueue(self.store(), &record, now)?;
        self.flush().await?;
        tracing::info!(
            sample = %sample,
            device = %record.meta.device,
            camera = %record.meta.camera,
            model = %record.meta.model.name,
            version = record.meta.model.version,
            bytes = record.bytes,
            "sample stored"
        );
        Ok(Stored::New)
    }

    /// The record of a stored sample.
    pub fn get(&self, sample: &Sha256Sum) -> Result<Option<SampleRecord>, SampleError> {
        SampleRecord::load(self.store(), sample)
    }

    /// The record of a stored sample, or [`SampleError::NotFound`].
    pub fn require(&self, sample: &Sha256Sum) -> Result<SampleRecord, SampleError> {
        self.get(sample)?.ok_or(SampleError::NotFound(*sample))
    }

    /// Up to `limit` records in sample-id order, strictly after `after`.
    pub fn list(&self, after: Option<&Sha256Sum>, limit: usize) -> Result<Vec<SampleRecord>, SampleError> {
        let entries = self.store.scan(SAMPLES, after.map(|s| s.0.as_slice()), limit)?;
        entries
            .into_iter()
            .map(|(key, value)| {
                let sample = Sha256Sum(key.as_slice().try_into().unwrap_or([0; 32]));
                SampleRecord::decode(&sample, &value)
            })
            .collect()
    }

    /// The image of a stored sample, as uploaded.
    pub async fn image(&self, sample: &Sha256Sum) -> Result<Image, SampleError> {
        let record = self.require(sample)?;
        self.image_of(&record).await
    }

    pub(crate) async fn image_of(&self, record: &SampleRecord) -> Result<Image, SampleError> {
        let bytes = blobs::get(self.blobs.as_ref(), &record.blob).await?;
        Ok(Image { bytes, content_type: record.meta.content_type.clone() })
    }

    /// Makes every write so far durable, on the blocking pool.
    pub(crate) async fn flush(&self) -> Result<(), SampleError> {
        let store = Arc::clone(&self.store);
        match tokio::task::spawn_blocking(move || store.flush()).await {
            Ok(result) => Ok(result?),
            Err(e) => Err(SampleError::Store(outpost_common::store::StoreError::Io(format!("flush task: {e}")))),
        }
    }
}

//! Model artifacts and manifests in the object store: `models/<name>/<version>/<sha256>.onnx` and
//! `models/<name>/<version>/manifest.json`.
//!
//! Design: the artifact's object is named by its hash and written with `PutMode::Create`, so a push that crashed
//! after writing it and a later push of the same bytes meet the same object, and no two pushes can tear it. The
//! manifest object is a copy of what the record holds (the record is the truth), overwritten by the push that
//! stores the record.

use std::ops::Range;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use object_store::path::Path as BlobPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use outpost_common::manifest::Sha256Sum;

pub(crate) fn artifact_path(name: &str, version: u64, sha256: &Sha256Sum) -> String {
    format!("models/{name}/{version}/{sha256}.onnx")
}

pub(crate) fn manifest_path(name: &str, version: u64) -> String {
    format!("models/{name}/{version}/manifest.json")
}

/// Writes the artifact unless it is there already (same path, same hash, same bytes).
pub(crate) async fn put_artifact(blobs: &dyn ObjectStore, path: &str, bytes: Bytes) -> Result<(), object_store::Error> {
    let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
    match blobs.put_opts(&BlobPath::from(path), PutPayload::from(bytes), options).await {
        Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

pub(crate) async fn put_manifest(
    blobs: &dyn ObjectStore,
    path: &str,
    bytes: Vec<u8>,
) -> Result<(), object_store::Error> {
    blobs.put(&BlobPath::from(path), PutPayload::from(bytes)).await.map(|_| ())
}

/// Bytes `range` of a blob, streamed.
pub(crate) async fn read(
    blobs: &dyn ObjectStore,
    path: &str,
    range: Range<u64>,
) -> Result<BoxStream<'static, Result<Bytes, object_store::Error>>, object_store::Error> {
    let options = GetOptions { range: Some(GetRange::Bounded(range)), ..GetOptions::default() };
    Ok(blobs.get_opts(&BlobPath::from(path), options).await?.into_stream())
}

/// Removes a blob; an absent one is not an error.
pub(crate) async fn remove(blobs: &dyn ObjectStore, path: &str) -> Result<(), object_store::Error> {
    match blobs.delete(&BlobPath::from(path)).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

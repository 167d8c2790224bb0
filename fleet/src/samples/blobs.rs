//! Sample images in the object store: where each one lives, written once.
//!
//! Design: the fleet talks to `object_store`'s trait directly (`Arc<dyn ObjectStore>`): it already is the small
//! trait with a local-directory, an in-memory and S3-compatible implementations, so a wrapper of ours would add
//! nothing. Images are written with `PutMode::Create`, so two concurrent uploads of the same sample cannot tear a
//! file, and a repeat finds the first one in place.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path as BlobPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use outpost_common::manifest::Sha256Sum;

/// An object store in a local directory (created when missing), with each write fsynced before it is reported.
pub fn local_dir(dir: &Path) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
    std::fs::create_dir_all(dir).map_err(|e| object_store::Error::Generic { store: "local", source: Box::new(e) })?;
    Ok(Arc::new(LocalFileSystem::new_with_prefix(dir)?.with_fsync(true)))
}

/// `samples/<first two hex digits>/<sha256>.<jpg|png>`: the fan-out keeps directories small on a local disk.
pub(crate) fn image_path(sample: &Sha256Sum, extension: &str) -> String {
    let hex = sample.to_string();
    let fan = hex.get(..2).unwrap_or("00");
    format!("samples/{fan}/{hex}.{extension}")
}

/// Writes `bytes` at `path` unless something is there already. Returns whether it wrote.
pub(crate) async fn put_once(blobs: &dyn ObjectStore, path: &str, bytes: &[u8]) -> Result<bool, object_store::Error> {
    let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
    let payload = PutPayload::from(Bytes::copy_from_slice(bytes));
    match blobs.put_opts(&BlobPath::from(path), payload, options).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads a whole blob.
pub(crate) async fn get(blobs: &dyn ObjectStore, path: &str) -> Result<Bytes, object_store::Error> {
    blobs.get(&BlobPath::from(path)).await?.bytes().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fan_out_by_the_first_byte() {
        let sample = Sha256Sum([0xab; 32]);
        assert_eq!(image_path(&sample, "jpg"), format!("samples/ab/{}.jpg", "ab".repeat(32)));
    }
}

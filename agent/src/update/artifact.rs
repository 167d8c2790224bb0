//! A model artifact on disk whose bytes were checked against what its manifest declares.

use std::path::{Path, PathBuf};

use outpost_common::manifest::{Artifact, ArtifactDigest, Sha256Sum};

use super::fsutil;

/// Why a file is not the artifact a manifest declares.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("artifact is {actual} bytes, the manifest declares {expected}")]
    Length { expected: u64, actual: u64 },
    #[error("artifact sha256 is {actual}, the manifest declares {expected}")]
    Hash { expected: Sha256Sum, actual: Sha256Sum },
}

impl ArtifactError {
    /// A short, stable label for events and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ArtifactError::Io { .. } => "io",
            ArtifactError::Length { .. } => "length_mismatch",
            ArtifactError::Hash { .. } => "hash_mismatch",
        }
    }
}

/// Compares a measured digest with the declared one; length first, as the cheaper and clearer message.
pub(crate) fn check(expected: &Artifact, sha256: Sha256Sum, len: u64) -> Result<(), ArtifactError> {
    if len != expected.length {
        return Err(ArtifactError::Length { expected: expected.length, actual: len });
    }
    if sha256 != expected.sha256 {
        return Err(ArtifactError::Hash { expected: expected.sha256, actual: sha256 });
    }
    Ok(())
}

/// A file whose sha256 and length matched a manifest's declaration when it was checked.
///
/// Design: fields are private and the constructors are the checks themselves ([`VerifiedArtifact::from_file`] and
/// the downloader), so holding one means the bytes were hashed. It is not `Clone`: installing a slot consumes it,
/// because the file is moved into the slot.
#[derive(Debug, PartialEq, Eq)]
pub struct VerifiedArtifact {
    path: PathBuf,
    sha256: Sha256Sum,
    len: u64,
}

impl VerifiedArtifact {
    /// Hashes the file at `path` and checks it against `expected`. Blocking: reads the whole file.
    pub fn from_file(path: impl Into<PathBuf>, expected: &Artifact) -> Result<VerifiedArtifact, ArtifactError> {
        let path = path.into();
        let (sha256, len) =
            fsutil::hash_file(&path).map_err(|source| ArtifactError::Io { path: path.clone(), source })?;
        check(expected, sha256, len)?;
        Ok(VerifiedArtifact { path, sha256, len })
    }

    /// For the downloader, which hashed the bytes as they arrived and compared them itself.
    pub(crate) fn hashed_while_written(path: PathBuf, sha256: Sha256Sum, len: u64) -> VerifiedArtifact {
        VerifiedArtifact { path, sha256, len }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn sha256(&self) -> Sha256Sum {
        self.sha256
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest in the form `VerifiedManifest::check_artifact` takes.
    pub fn digest(&self) -> ArtifactDigest {
        ArtifactDigest { sha256: self.sha256, length: self.len }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(bytes: &[u8]) -> Artifact {
        Artifact { sha256: Sha256Sum::of(bytes), length: bytes.len() as u64 }
    }

    #[test]
    fn check_names_the_first_difference() {
        let check_kind = |expected: &Artifact, bytes: &[u8]| {
            check(expected, Sha256Sum::of(bytes), bytes.len() as u64).map_err(|e| e.kind())
        };
        let model = b"model bytes".as_slice();
        assert_eq!(check_kind(&declared(model), model), Ok(()));
        assert_eq!(check_kind(&declared(model), b"model byteS"), Err("hash_mismatch"));
        assert_eq!(check_kind(&declared(model), b"model bytes!"), Err("length_mismatch"));
        assert_eq!(check_kind(&declared(model), b""), Err("length_mismatch"));
    }

    #[test]
    fn from_file_checks_the_bytes_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.onnx");
        std::fs::write(&path, b"abc").expect("write");
        let verified = VerifiedArtifact::from_file(&path, &declared(b"abc")).expect("matches");
        assert_eq!((verified.path(), verified.len(), verified.sha256()), (path.as_path(), 3, Sha256Sum::of(b"abc")));
        let err = VerifiedArtifact::from_file(&path, &declared(b"abd")).expect_err("other bytes");
        assert_eq!(err.kind(), "hash_mismatch");
        let err = VerifiedArtifact::from_file(dir.path().join("missing"), &declared(b"abc")).expect_err("missing");
        assert_eq!(err.kind(), "io");
    }
}

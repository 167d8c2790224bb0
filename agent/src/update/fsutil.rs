//! The few file-system operations updates need to be crash-safe: atomic replace, directory fsync, hashing a file,
//! free space. Blocking: async callers run them in `spawn_blocking`.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use outpost_common::manifest::Sha256Sum;
use sha2::Digest;

const CHUNK: usize = 64 * 1024;

/// The folder a path lives in (`.` for a bare name).
pub(crate) fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `path` with `suffix` appended to its file name: `active.json` → `active.json.tmp`.
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// Makes a rename or a new entry in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Replaces `path` with `bytes` so that a crash leaves the old or the new content, never a torn file: a temporary
/// file beside it, fsync, rename over it, fsync the folder.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = with_suffix(path, ".tmp");
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(&parent_of(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes a new file and fsyncs it (the caller syncs the folder).
pub(crate) fn write_new_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Reads a small file, refusing one larger than `cap` before reading it.
pub(crate) fn read_capped(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let file = fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len > cap {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{len} bytes is over the {cap}-byte limit")));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(cap).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Feeds everything `reader` yields to `hasher`, optionally copying it to `out`; returns the byte count.
pub(crate) fn hash_stream(
    mut reader: impl Read,
    hasher: &mut sha2::Sha256,
    mut out: Option<&mut dyn Write>,
) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &buf[..n];
        hasher.update(chunk);
        if let Some(out) = out.as_mut() {
            out.write_all(chunk)?;
        }
        total += n as u64;
    }
}

/// The sha256 and length of a file.
pub(crate) fn hash_file(path: &Path) -> io::Result<(Sha256Sum, u64)> {
    let mut hasher = sha2::Sha256::new();
    let len = hash_stream(fs::File::open(path)?, &mut hasher, None)?;
    Ok((Sha256Sum(hasher.finalize().into()), len))
}

/// Copies `from` to a new file `to`, fsynced, hashing what was copied.
pub(crate) fn copy_hashed(from: &Path, to: &Path) -> io::Result<(Sha256Sum, u64)> {
    let mut hasher = sha2::Sha256::new();
    let mut out = fs::File::create(to)?;
    let len = hash_stream(fs::File::open(from)?, &mut hasher, Some(&mut out))?;
    out.sync_all()?;
    Ok((Sha256Sum(hasher.finalize().into()), len))
}

/// Bytes an unprivileged process can still write on the file system holding `dir`.
pub(crate) fn free_bytes(dir: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(dir).map_err(io::Error::from)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("active.json");
        write_atomic(&path, b"one").expect("first");
        write_atomic(&path, b"two").expect("second");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        assert!(!with_suffix(&path, ".tmp").exists());
    }

    #[test]
    fn hashing_and_copying_agree_with_the_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let from = dir.path().join("a");
        fs::write(&from, &bytes).expect("write");
        let expected = (Sha256Sum::of(&bytes), bytes.len() as u64);
        assert_eq!(hash_file(&from).expect("hash"), expected);
        let to = dir.path().join("b");
        assert_eq!(copy_hashed(&from, &to).expect("copy"), expected);
        assert_eq!(fs::read(&to).expect("read"), bytes);
    }

    #[test]
    fn capped_reads_refuse_large_files_and_free_space_is_known() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big");
        fs::write(&path, vec![0u8; 100]).expect("write");
        assert_eq!(read_capped(&path, 100).expect("at the cap").len(), 100);
        assert_eq!(read_capped(&path, 99).expect_err("over").kind(), io::ErrorKind::InvalidData);
        assert!(free_bytes(dir.path()).expect("statvfs") > 0);
        assert!(free_bytes(&dir.path().join("missing")).is_err());
    }
}

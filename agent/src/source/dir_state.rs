//! The dir source's memory of processed files, persisted so a restart does not process them again.
//!
//! Written atomically: a temporary file beside the real one, fsync, rename over it, fsync the folder. A crash leaves
//! either the old or the new state, never half of one.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SourceError;
use super::dir_scan::Fingerprint;

const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    /// The folder the names belong to; a state file for another folder is not reused.
    folder: PathBuf,
    processed: HashMap<String, Fingerprint>,
}

/// The state file's path for a camera: `<state_dir>/dir-source-<camera>.json`, the camera name reduced to safe
/// characters.
pub fn path_for(state_dir: &Path, camera: &str) -> PathBuf {
    let safe: String =
        camera.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    state_dir.join(format!("dir-source-{safe}.json"))
}

/// Loads the processed set; a missing file is an empty set. A file written for another folder is ignored (the
/// camera was pointed elsewhere), with the set starting empty.
pub fn load(path: &Path, folder: &Path) -> Result<HashMap<String, Fingerprint>, SourceError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(SourceError::io(path, e)),
    };
    let state: StateFile = serde_json::from_slice(&bytes).map_err(|e| SourceError::State {
        path: path.to_owned(),
        reason: format!("{e}; delete the file to process the folder's files again"),
    })?;
    if state.version != VERSION {
        return Err(SourceError::State {
            path: path.to_owned(),
            reason: format!("version {} is not the supported {VERSION}", state.version),
        });
    }
    if state.folder != folder {
        tracing::warn!(state = %path.display(), was = %state.folder.display(), now = %folder.display(),
            "dir source state belongs to another folder; starting afresh");
        return Ok(HashMap::new());
    }
    Ok(state.processed)
}

/// Replaces the state file atomically. Blocking: run it in `spawn_blocking`.
pub fn save(path: &Path, folder: &Path, processed: &HashMap<String, Fingerprint>) -> Result<(), SourceError> {
    let state = StateFile { version: VERSION, folder: folder.to_owned(), processed: processed.clone() };
    let json =
        serde_json::to_vec(&state).map_err(|e| SourceError::State { path: path.to_owned(), reason: e.to_string() })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| SourceError::io(dir, e))?;
    let tmp = path.with_extension("json.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename is durable only once the folder itself is synced.
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| SourceError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_and_foreign_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = path_for(dir.path(), "line 1/top");
        assert!(path.ends_with("dir-source-line_1_top.json"));
        let folder = Path::new("/srv/ftp/line1");
        assert!(load(&path, folder).expect("missing is empty").is_empty());

        let processed: HashMap<String, Fingerprint> =
            [("a.jpg".to_owned(), Fingerprint { len: 3, mtime_ns: 42 })].into_iter().collect();
        save(&path, folder, &processed).expect("save");
        assert_eq!(load(&path, folder).expect("load"), processed);
        assert!(load(&path, Path::new("/elsewhere")).expect("foreign").is_empty());
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn a_corrupt_state_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.json");
        fs::write(&path, b"{not json").expect("write");
        let err = load(&path, Path::new("/x")).expect_err("corrupt");
        assert_eq!(err.kind(), "state");
        assert!(err.to_string().contains("delete the file"), "{err}");
    }
}
